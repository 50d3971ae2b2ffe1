"""Distil a Selective-RAFT's encoders into narrower ones: a cheaper network with the same GRU.

Everything after the encoders (correlation pyramid, context attention, GRU, upsampling, edge
refinement) sees only what the encoders return: per image B x feature_dim matching features at the
working resolution, and per GRU level the hidden state and the context. A student whose residual stages
are narrower (``RaftConfig.encoder_dims``) but whose outputs have the same widths can therefore take every
other weight from the teacher unchanged and learn to return what the teacher's encoders return. No
disparity and no recurrent backward pass are needed, so a step costs three encoder passes forward and
backward instead of the whole network's: this is a CPU stage.

The student's encoder weights start as the teacher's cut to their shapes (the first channels of every
tensor: a residual stage keeps the same channels on both sides of each addition), and learn the
relative squared error of each output: the matching features as they enter the correlation, the hidden
state after its tanh and the context after its ReLU, as the GRU reads them. Batch norm stays frozen
(eval), as in ``train.Trainer``. Validation runs the whole student on ``train.Trainer``'s 48 held-out
scenes (bad-2 at 8, 16 and 32 iterations, and from SGBM's map at 1 and 2); best.pth is the one with
the lowest worst bad-2 over 8/16/32. The run folder gets best.pth, state.pt (the latest state: a
second call with the same options resumes from it), val_log.csv and config.json.

    python -m sgru_ros.training.distill --teacher sgru_ros/weights/sgru_raft_compact.pth --out runs/fast
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..device import keep_freed_memory
from ..model import build_model, load_model, save_checkpoint
from ..model.base import normalize_image
from ..model.config import RaftConfig
from ..model.raft import SelectiveRAFT
from .synthetic import DEFAULT_PHOTO_DIRS, SyntheticStereo
from .train import (SyntheticBatches, TrainConfig, _option, add_config_options, config_from_options, sgbm_batch_prior,
                    validate, worst_bad2, write_val_log)

#: The student modules that learn; everything else is the teacher's.
ENCODERS = ("fnet.", "cnet.")


@dataclass
class DistillConfig:
    """The stage's recipe (``python -m sgru_ros.training.distill`` makes an option of each field)."""

    teacher: str = _option("", "Selective-RAFT checkpoint whose encoders are distilled")
    encoder_dims: tuple[int, int, int] = _option((16, 24, 32), "the student's residual stage widths")
    steps: int = _option(2500, "optimisation steps (one AdamW cycle)")
    batch_size: int = _option(8, "scenes per step")
    lr: float = _option(5e-4, "peak learning rate")
    first_sample: int = _option(400_000, "index of the first training scene (past the other stages' scenes)")
    val_every: int = _option(500, "validate and save the state every N steps")
    val_samples: int = _option(48, "validation scenes (train.Trainer's: another seed)")
    seed: int = _option(1234, "data seed (train.Trainer's)")
    photo_dir: str = _option(DEFAULT_PHOTO_DIRS[0], "folder of texture photographs beside scikit-image's (Debian: "
                                                    "apt-get install mate-backgrounds); '' for none")


def make_student(teacher: SelectiveRAFT, encoder_dims: tuple[int, int, int]) -> SelectiveRAFT:
    """The teacher's network with encoders of ``encoder_dims``: every weight outside them copied, every
    encoder tensor the teacher's cut to its shape (its first channels along each dimension)."""
    if not isinstance(teacher.config, RaftConfig):
        raise ValueError("the teacher must be a Selective-RAFT")
    if any(s > t for s, t in zip(encoder_dims, teacher.config.encoder_dims)):
        raise ValueError(f"the student's encoder_dims {tuple(encoder_dims)} must not exceed the teacher's "
                         f"{teacher.config.encoder_dims}")
    student = build_model(replace(teacher.config, encoder_dims=tuple(encoder_dims)))
    source = teacher.state_dict()
    differ = sorted(set(source) ^ set(student.state_dict()))
    if differ:
        # A residual block projects its shortcut only where its widths differ, so not every cut keeps the layout.
        raise ValueError(f"encoder_dims {tuple(encoder_dims)} change the encoders' layout (e.g. {differ[0]} in one "
                         f"network only); keep each stage's width equal to the previous one's where the teacher's are")
    student.load_state_dict({key: source[key][tuple(slice(0, n) for n in value.shape)].clone()
                             for key, value in student.state_dict().items()})
    return student


def encoder_outputs(model: SelectiveRAFT, left: torch.Tensor, right: torch.Tensor) -> list[torch.Tensor]:
    """What the rest of the network reads from the encoders: the matching features of both images
    (2B x feature_dim x H/f x W/f) and, per GRU level, tanh(hidden) and relu(context) (B x hidden x H_l x W_l).
    left, right: B x 3 x H x W in 0..255."""
    features = model.fnet(normalize_image(torch.cat([left, right])))
    levels = model.cnet(normalize_image(left))
    return [features] + [f(x) for hidden, context in levels for f, x in ((torch.tanh, hidden), (torch.relu, context))]


def distillation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the outputs of each one's squared error relative to the teacher's mean square."""
    terms = [(s - t).square().mean() / t.square().mean().clamp(min=1e-6) for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


def run(config: DistillConfig, out_dir: Path, log=functools.partial(print, flush=True),
        time_budget_s: float | None = None) -> dict[str, float]:
    """The stage, or what is left of it (resumed from out_dir/state.pt), until it ends or ``time_budget_s``
    has passed (stopping at a validation, with the state saved). Returns the best validation so far
    (``validate``'s keys, sgbm_* from SGBM's map, and its step)."""
    keep_freed_memory()  # a CPU stage: see device.keep_freed_memory
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = json.loads(json.dumps(asdict(config)))
    config_path, state_path = out_dir / "config.json", out_dir / "state.pt"
    if state_path.is_file() and (not config_path.is_file() or json.loads(config_path.read_text()) != recipe):
        raise ValueError(f"{out_dir} holds a run of another recipe (its config.json); use another folder")
    config_path.write_text(json.dumps(recipe, indent=2))
    teacher = load_model(config.teacher)
    student = make_student(teacher, config.encoder_dims)
    if config.photo_dir and not Path(config.photo_dir).is_dir():
        raise ValueError(f"photo folder {config.photo_dir} does not exist (Debian: apt-get install mate-backgrounds; "
                         "--photo-dir '' for none)")
    train_config = TrainConfig(seed=config.seed, photo_dirs=(config.photo_dir,) if config.photo_dir else ())
    scene = train_config.scene()
    val = SyntheticBatches(SyntheticStereo(scene, seed=config.seed + 1_000_003), 0, config.val_samples)
    val_batches = list(DataLoader(val, batch_size=train_config.batch_size))
    val_priors = [sgbm_batch_prior(left, right, student.downsample_factor, train_config.data_max_disparity)
                  for left, right, _ in val_batches]

    def evaluate(step: int) -> dict[str, float]:
        metrics = validate(student, val_batches, 8, train_config.max_disp, (1, 2, 4))
        metrics.update(validate(student, val_batches, 1, train_config.max_disp, (1, 2), val_priors, "sgbm"))
        return {"step": step, **metrics}

    params = [p for name, p in student.named_parameters() if name.startswith(ENCODERS)]
    for name, p in student.named_parameters():
        p.requires_grad_(name.startswith(ENCODERS))
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, config.steps + 10, pct_start=0.05,
                                                    cycle_momentum=False, anneal_strategy="linear")
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, log_rows, best = state["step"], state["log"], state["best"]
        log(f"resumed at step {step}")
    else:
        step, best = 0, evaluate(0)
        log_rows = [best]
        save_checkpoint(student, out_dir / "best.pth")
        log(f"step 0 (the teacher's encoders cut): {_scores(best)}")
    start = time.monotonic()
    teacher.eval()
    student.eval()  # frozen batch norm; nothing else differs between the modes
    data = SyntheticBatches(SyntheticStereo(scene, seed=config.seed), config.first_sample + step * config.batch_size,
                            (config.steps - step) * config.batch_size)
    losses = []
    for left, right, _ in DataLoader(data, batch_size=config.batch_size):
        with torch.no_grad():
            targets = encoder_outputs(teacher, left, right)
        loss = distillation_loss(encoder_outputs(student, left, right), targets)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss became {loss.item()} at step {step + 1}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(loss.item())
        if step % config.val_every == 0 or step == config.steps:
            metrics = {**evaluate(step), "loss": sum(losses) / len(losses)}
            losses = []
            log_rows.append(metrics)
            if worst_bad2(metrics) < worst_bad2(best):
                best = metrics
                save_checkpoint(student, out_dir / "best.pth")
            torch.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step, "log": log_rows, "best": best},
                       state_path.with_suffix(".partial"))
            state_path.with_suffix(".partial").replace(state_path)
            log(f"step {step} ({time.monotonic() - start:.0f} s): {_scores(metrics)}")
            if time_budget_s is not None and time.monotonic() - start > time_budget_s and step < config.steps:
                log(f"time budget spent at step {step}; the same command resumes")
                break
    write_val_log(out_dir / "val_log.csv", log_rows)
    log(f"best at step {best['step']}: worst bad-2 over 8/16/32 iterations {worst_bad2(best):.2f} % "
        f"(step 0: {worst_bad2(log_rows[0]):.2f} %) -> {out_dir / 'best.pth'}")
    return best


def _scores(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" if k == "loss" else f"{k} {v:.2f}" for k, v in metrics.items() if k != "step")


def main(argv: list[str] | None = None) -> None:
    from ..cli.common import duration

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    add_config_options(parser, DistillConfig, required=("teacher",))
    parser.add_argument("--time-budget", type=duration, default=None, help="stop at the first validation past "
                        "this time (seconds, or like 90m, 2h), the state saved (the same command resumes)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(config_from_options(args, DistillConfig), args.out, time_budget_s=args.time_budget)


if __name__ == "__main__":
    main()
