"""Train ``model.edges.EdgeRefinement`` on a frozen Selective-RAFT (the edge stage of the bundled model).

The refinement only sees the network's upsampled disparity and the two images, so with the rest of
the network frozen its inputs can be computed once: the network runs on ``scenes`` fresh training
scenes (a quarter from SGBM's map at 2/4/8 iterations, a quarter from a noisy prior at 4/8/16, half
from nothing at 8/16/32 - the ways it runs in the node) and the refinement trains on random bands of
rows of those outputs, many passes over them, at a small fraction of what training through the network
costs. Validation uses the same 48 held-out scenes as ``train.Trainer`` (bad-2 at 8, 16 and 32
iterations, and from SGBM's map at 4), keeping the weights with the lowest worst bad-2 over 8/16/32.
The run folder gets best.pth (the network's checkpoint with the refinement's weights added),
val_log.csv, config.json, and the network's outputs (outputs.pt, about 1.3 GB for 768 scenes, with
outputs.json saying what they were made from: a later run with the same network and scenes reuses them).

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

from ..device import keep_freed_memory
from ..evaluation import PRIOR_VERSION
from ..model import build_model, load_model, save_checkpoint
from ..model.base import normalize_image
from ..model.config import RaftConfig
from ..model.edges import EdgeRefinement
from .step import edge_band
from .synthetic import SyntheticStereo
from .train import (SyntheticBatches, TrainConfig, _option, add_config_options, config_from_options, sgbm_batch_config,
                    sgbm_batch_prior, validate, warm_start_prior, worst_bad2, write_val_log)

#: (iterations returned, how the network starts) for each kind of batch, in turn.
CACHE_MODES = (((8, 16, 32), "none"), ((8, 16, 32), "none"), ((2, 4, 8), "sgbm"), ((4, 8, 16), "prior"))


@dataclass
class EdgeStageConfig:
    """The edge stage's recipe (``python -m sgru_ros.training.edges`` makes an option of each field)."""

    backbone: str = _option("", "Selective-RAFT checkpoint without an edge refinement; it stays frozen")
    width: int = _option(8, "hidden channels of the refinement")
    window: int = _option(5, "odd side of the neighbourhood a pixel mixes")
    scenes: int = _option(768, "training scenes the network runs on once")
    first_sample: int = _option(300_000, "index of the first training scene (past every scene of stages 1-4)")
    steps: int = _option(2000, "optimisation steps (one AdamW cycle)")
    batch_size: int = _option(16, "bands of rows per step")
    # Bands of whole rows, not square crops: the right image must keep the columns the disparity points
    # at (up to the scenes' 96 px), or the photometric-error input is wrong near the crop's left edge.
    crop_height: int = _option(64, "rows per training band (whole rows of the scenes)")
    lr: float = _option(1e-3, "peak learning rate")
    val_every: int = _option(250, "validate every N steps")
    val_samples: int = _option(48, "validation scenes (train.Trainer's: another seed)")
    seed: int = _option(1234, "data seed (train.Trainer's)")


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


def run(config: EdgeStageConfig, out_dir: Path, log=functools.partial(print, flush=True)) -> dict[str, float]:
    """The whole stage; writes out_dir/best.pth (network + refinement), val_log.csv, config.json and the network's
    cached outputs (outputs.pt, outputs.json). Returns the best validation (``evaluate``'s keys and its step)."""
    keep_freed_memory()  # a CPU stage: see device.keep_freed_memory
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
    model = load_model(config.backbone)
    if not isinstance(model.config, RaftConfig) or model.config.edge_width:
        raise ValueError(f"{config.backbone} must hold a Selective-RAFT without an edge refinement")
    train_config = TrainConfig(seed=config.seed)
    scene = train_config.scene()
    missing = [d for d in scene.photo_dirs if not Path(d).is_dir()]
    if missing:
        raise ValueError(f"photo folder {missing[0]} does not exist (Debian: apt-get install mate-backgrounds)")
    if not 0 < config.crop_height <= scene.height:
        raise ValueError(f"crop_height must lie in 1..{scene.height}, got {config.crop_height}")
    val = SyntheticBatches(SyntheticStereo(scene, seed=config.seed + 1_000_003), 0, config.val_samples)
    val_batches = list(DataLoader(val, batch_size=train_config.batch_size))
    tick = time.perf_counter()
    cache, how = _network_outputs(model, config, scene, val_batches, train_config.data_max_disparity, out_dir)
    log(f"network outputs on {config.scenes} scenes {how} ({time.perf_counter() - tick:.0f} s)")

    torch.manual_seed(config.seed)
    refinement = EdgeRefinement(config.width, config.window)
    optimizer = torch.optim.AdamW(refinement.parameters(), lr=config.lr, weight_decay=1e-5)
    # One cycle as in train.Trainer (5 % warm-up here: a fresh module), a few steps of slack.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, config.steps + 10, pct_start=0.05,
                                                    cycle_momentum=False, anneal_strategy="linear")
    rows, generator = cache["train"], torch.Generator().manual_seed(config.seed)
    n, _, h, _ = rows["target"].shape
    best = {"step": 0, **evaluate(refinement, cache["val"])}
    log_rows = [best]
    log(f"step 0: {best}")
    state = {k: v.clone() for k, v in refinement.state_dict().items()}
    for step in range(1, config.steps + 1):
        pick = torch.randint(0, n, (config.batch_size,), generator=generator)
        y = int(torch.randint(0, h - config.crop_height + 1, (1,), generator=generator))
        batch = {k: v[pick, :, y:y + config.crop_height] for k, v in rows.items()}
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
            if worst_bad2(metrics) < worst_bad2(best):
                best, state = metrics, {k: v.clone() for k, v in refinement.state_dict().items()}
            scores = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != "step")
            log(f"step {step}: loss {loss.item():.3f}, {scores}")
    write_val_log(out_dir / "val_log.csv", log_rows)
    combined = build_model(RaftConfig(**{**asdict(model.config), "edge_width": config.width,
                                         "edge_window": config.window}))
    combined.load_state_dict({**model.state_dict(), **{f"edge_refine.{k}": v for k, v in state.items()}})
    save_checkpoint(combined, out_dir / "best.pth")
    # The same figures through the whole network, as ``train.Trainer`` validates.
    check = validate(load_model(out_dir / "best.pth"), val_batches, 8, train_config.max_disp, (1, 2, 4))
    start = worst_bad2(log_rows[0])
    log(f"best at step {best['step']}: worst bad-2 over 8/16/32 iterations {worst_bad2(best):.2f} % "
        f"(at step 0, nearly without it: {start:.2f} %) -> {out_dir / 'best.pth'}; through the network: "
        + ", ".join(f"{k} {v:.2f}" for k, v in check.items()))
    return best


def _network_outputs(model, config: EdgeStageConfig, scene, val_batches: list, max_disparity: float,
                     out_dir: Path) -> tuple[dict, str]:
    """The cached outputs (``cache_outputs`` of the training scenes, ``validation_outputs``) from out_dir when
    they were made from the same network and scenes, else made and saved. Returns them and how they came."""
    made_from = {"backbone_sha256": hashlib.sha256(Path(config.backbone).read_bytes()).hexdigest(),
                 "scene": json.loads(json.dumps(asdict(scene))), "modes": json.loads(json.dumps(CACHE_MODES)),
                 "sgbm": {**asdict(sgbm_batch_config(max_disparity)), "prior_version": PRIOR_VERSION},
                 **{k: getattr(config, k) for k in ("scenes", "first_sample", "val_samples", "seed")}}
    path, key_path = out_dir / "outputs.pt", out_dir / "outputs.json"
    saved = json.loads(key_path.read_text()) if key_path.is_file() and path.is_file() else None
    if saved == made_from:
        return torch.load(path, weights_only=True), f"reused from {path}"
    priors = [sgbm_batch_prior(left, right, model.downsample_factor, max_disparity) for left, right, _ in val_batches]
    train = SyntheticBatches(SyntheticStereo(scene, seed=config.seed), config.first_sample, config.scenes)
    cache = {"train": cache_outputs(model, train, 8, max_disparity),
             "val": validation_outputs(model, val_batches, priors)}
    key_path.unlink(missing_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(cache, partial)
    partial.replace(path)  # a cut-off write never passes for a whole one
    key_path.write_text(json.dumps(made_from, indent=2))
    return cache, "remade (another network or other scenes)" if saved is not None else "made"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    add_config_options(parser, EdgeStageConfig, required=("backbone",))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(config_from_options(args, EdgeStageConfig), args.out)


if __name__ == "__main__":
    main()
