"""Train ``model.edges.EdgeRefinement`` on a frozen Selective-RAFT (the edge stage of the bundled model).

The refinement only sees the network's upsampled disparity and the two images, so with the rest of
the network frozen its inputs can be computed once: the network runs on ``scenes`` fresh training
scenes (a quarter from SGBM's map at 2/4/8 iterations, a quarter from a noisy prior at 4/8/16, half
from nothing at 8/16/32 - the ways it runs in the node) and the refinement trains on random crops
of those outputs, many passes over them, at a small fraction of what training through the network
costs. Validation uses the same 48 held-out scenes as ``train.Trainer`` (bad-2 at 8, 16 and 32
iterations, and from SGBM's map at 4), keeping the weights with the lowest worst bad-2 over 8/16/32.
The result is the network's checkpoint with the refinement's weights added.

    python -m sgru_ros.training.edges --backbone runs/bundled_stage3/best.pth --out runs/bundled_edges
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..model import build_model, load_model, save_checkpoint
from ..model.base import normalize_image
from ..model.config import RaftConfig
from ..model.edges import EdgeRefinement
from .step import edge_band
from .synthetic import SyntheticStereo
from .train import SyntheticBatches, TrainConfig, sgbm_batch_prior, validate, warm_start_prior

#: (iterations returned, how the network starts) for each kind of batch, in turn.
CACHE_MODES = (((8, 16, 32), "none"), ((8, 16, 32), "none"), ((2, 4, 8), "sgbm"), ((4, 8, 16), "prior"))


@dataclass
class EdgeStageConfig:
    backbone: str
    width: int = 8
    window: int = 5
    scenes: int = 768
    first_sample: int = 300_000
    steps: int = 2000
    batch_size: int = 16
    crop: tuple[int, int] = (64, 128)
    lr: float = 1e-3
    val_every: int = 250
    val_samples: int = 48
    seed: int = 1234


def cache_outputs(model, data: SyntheticBatches, batch_size: int, max_disparity: float) -> dict[str, torch.Tensor]:
    """The network's upsampled disparities on ``data``, one row per (scene, returned iteration count):
    left, right (N x 3 x H x W uint8), target (N x 1 x H x W, NaN = unknown), disparity (N x 1 x H x W)."""
    rows: dict[str, list[torch.Tensor]] = {"left": [], "right": [], "target": [], "disparity": []}
    factor = model.downsample_factor
    generator = torch.Generator().manual_seed(data.start)
    with torch.inference_mode():
        for i, (left, right, target) in enumerate(DataLoader(data, batch_size=batch_size)):
            iters, start = CACHE_MODES[i % len(CACHE_MODES)]
            init = {"none": lambda: None, "sgbm": lambda: sgbm_batch_prior(left, right, factor, max_disparity),
                    "prior": lambda: warm_start_prior(target, factor, generator)}[start]()
            for disparity in model(left, right, iters=iters[-1], output_iters=iters, disp_init=init).disparities:
                rows["left"].append(left.byte())
                rows["right"].append(right.byte())
                rows["target"].append(target)
                rows["disparity"].append(disparity)
    return {k: torch.cat(v) for k, v in rows.items()}


def validation_outputs(model, batches: list, priors: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The network's disparities on the validation batches, by metric name: "val" (8 iterations), "val_x2",
    "val_x4" and "sgbm" (4 iterations from SGBM's map), each like ``cache_outputs``."""
    groups: dict[str, dict[str, list[torch.Tensor]]] = {}
    with torch.inference_mode():
        for (left, right, target), prior in zip(batches, priors):
            outputs = model(left, right, iters=32, output_iters=(8, 16, 32)).disparities
            outputs.append(model(left, right, iters=4, disp_init=prior).final)
            for name, disparity in zip(("val", "val_x2", "val_x4", "sgbm"), outputs):
                group = groups.setdefault(name, {"left": [], "right": [], "target": [], "disparity": []})
                for key, value in zip(group, (left.byte(), right.byte(), target, disparity)):
                    group[key].append(value)
    return {name: {k: torch.cat(v) for k, v in group.items()} for name, group in groups.items()}


def refine(refinement: EdgeRefinement, rows: dict[str, torch.Tensor]) -> torch.Tensor:
    """The refinement applied to cached rows (uint8 images as the network normalises them)."""
    return refinement(rows["disparity"], normalize_image(rows["left"].float()), normalize_image(rows["right"].float()))


@torch.no_grad()
def evaluate(refinement: EdgeRefinement, groups: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """bad-2 (%) of each validation group after the refinement, and at depth edges at 8 iterations
    (keys as ``train.validate``: val_bad2, val_bad2_x2, val_bad2_x4, val_bad2_edges, sgbm_bad2)."""
    refinement.eval()
    metrics = {}
    for name, rows in groups.items():
        target = rows["target"]
        error = torch.cat([(refine(refinement, {k: v[i:i + 16] for k, v in rows.items()}) - target[i:i + 16]).abs()
                           for i in range(0, len(target), 16)])
        prefix, _, multiple = name.partition("_")
        metrics[f"{prefix}_bad2{'_' + multiple if multiple else ''}"] = \
            100.0 * (error[torch.isfinite(target)] > 2).float().mean().item()
        if name == "val":
            metrics["val_bad2_edges"] = 100.0 * (error[edge_band(target)] > 2).float().mean().item()
    refinement.train()
    return metrics


def score(metrics: dict[str, float]) -> float:
    """What the stage minimises: the worst bad-2 over 8, 16 and 32 iterations (stages 3 and 4's criterion)."""
    return max(metrics["val_bad2"], metrics["val_bad2_x2"], metrics["val_bad2_x4"])


def run(config: EdgeStageConfig, out_dir: Path, log=functools.partial(print, flush=True)) -> dict[str, float]:
    """The whole stage; writes out_dir/best.pth (network + refinement), val_log.csv and config.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
    model = load_model(config.backbone)
    if not isinstance(model.config, RaftConfig) or model.config.edge_width:
        raise ValueError(f"{config.backbone} must hold a Selective-RAFT without an edge refinement")
    train_config = TrainConfig(seed=config.seed)
    scene = train_config.scene()
    if scene.height < config.crop[0] or scene.width < config.crop[1]:
        raise ValueError(f"crop {config.crop} is larger than the scenes ({scene.height} x {scene.width})")
    val = SyntheticBatches(SyntheticStereo(scene, seed=config.seed + 1_000_003), 0, config.val_samples)
    val_batches = list(DataLoader(val, batch_size=train_config.batch_size))
    # The outputs are a function of the network's weights and of the scenes: reused only if both are the same.
    made_from = {"backbone_sha256": hashlib.sha256(Path(config.backbone).read_bytes()).hexdigest(),
                 **{k: getattr(config, k) for k in ("scenes", "first_sample", "val_samples", "seed")}}
    cache_path = out_dir / "outputs.pt"
    tick = time.perf_counter()
    cache = torch.load(cache_path, weights_only=True) if cache_path.is_file() else {}
    if cache.get("made_from") == made_from:
        log(f"network outputs on {config.scenes} scenes reused from {cache_path}")
    else:
        how = "remade (another network or other scenes)" if cache else "made"
        priors = [sgbm_batch_prior(left, right, model.downsample_factor, train_config.data_max_disparity)
                  for left, right, _ in val_batches]
        train = SyntheticBatches(SyntheticStereo(scene, seed=config.seed), config.first_sample, config.scenes)
        cache = {"train": cache_outputs(model, train, 8, train_config.data_max_disparity),
                 "val": validation_outputs(model, val_batches, priors), "made_from": made_from}
        torch.save(cache, cache_path)
        log(f"network outputs on {config.scenes} scenes {how} ({time.perf_counter() - tick:.0f} s)")

    torch.manual_seed(config.seed)
    refinement = EdgeRefinement(config.width, config.window)
    optimizer = torch.optim.AdamW(refinement.parameters(), lr=config.lr, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, config.steps + 10, pct_start=0.05,
                                                    anneal_strategy="linear")
    rows, generator = cache["train"], torch.Generator().manual_seed(config.seed)
    (n, _, h, w), (ch, cw) = rows["target"].shape, config.crop
    best = {"step": 0, **evaluate(refinement, cache["val"])}
    log_rows = [best]
    log(f"step 0: {best}")
    state = {k: v.clone() for k, v in refinement.state_dict().items()}
    for step in range(1, config.steps + 1):
        pick = torch.randint(0, n, (config.batch_size,), generator=generator)
        y, x = (int(torch.randint(0, size + 1, (1,), generator=generator)) for size in (h - ch, w - cw))
        batch = {k: v[pick, :, y:y + ch, x:x + cw] for k, v in rows.items()}
        target = batch["target"]
        valid = torch.isfinite(target) & (target < train_config.max_disp)
        loss = (refine(refinement, batch) - target)[valid].abs().mean()
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss became {loss.item()} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(refinement.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % config.val_every == 0 or step == config.steps:
            metrics = {"step": step, **evaluate(refinement, cache["val"])}
            log_rows.append(metrics)
            if score(metrics) < score(best):
                best, state = metrics, {k: v.clone() for k, v in refinement.state_dict().items()}
            scores = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != "step")
            log(f"step {step}: loss {loss.item():.3f}, {scores}")
    with open(out_dir / "val_log.csv", "w") as f:
        f.write(",".join(log_rows[0]) + "\n")
        f.writelines(",".join(f"{row[k]:.4f}" if k != "step" else str(row[k]) for k in row) + "\n"
                     for row in log_rows)
    combined = build_model(RaftConfig(**{**asdict(model.config), "edge_width": config.width,
                                         "edge_window": config.window}))
    combined.load_state_dict({**model.state_dict(), **{f"edge_refine.{k}": v for k, v in state.items()}})
    save_checkpoint(combined, out_dir / "best.pth")
    # The same figures through the whole network, as ``train.Trainer`` validates.
    check = validate(load_model(out_dir / "best.pth"), val_batches, 8, train_config.max_disp, (1, 2, 4))
    log(f"best at step {best['step']}: worst bad-2 over 8/16/32 iterations {score(best):.2f} % "
        f"(at step 0, nearly without it: {score(log_rows[0]):.2f} %) -> {out_dir / 'best.pth'}; through the network: "
        + ", ".join(f"{k} {v:.2f}" for k, v in check.items()))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = EdgeStageConfig(backbone="")
    parser.add_argument("--backbone", required=True, help="Selective-RAFT checkpoint without an edge refinement")
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    for name in ("width", "window", "scenes", "first_sample", "steps", "batch_size", "val_every", "val_samples",
                 "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--crop", type=int, nargs=2, default=defaults.crop)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    values = {k: v for k, v in vars(args).items() if k not in ("out", "threads")}
    run(EdgeStageConfig(**{**values, "crop": tuple(values["crop"])}), args.out)


if __name__ == "__main__":
    main()
