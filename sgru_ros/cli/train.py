"""``sgru-stereo train``: train a network on procedural stereo scenes (CPU or GPU), resumable.

The recipe's options are made from ``TrainConfig``: each field an option of the same name
(``batch_size`` -> ``--batch-size``), its help text and default from the field, so the two cannot drift.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CommandError, duration

#: Option names that differ from their field's: a repeatable option names one item.
_FLAGS = {"photo_dirs": "--photo-dir"}


def add_parser(sub) -> None:
    from ..training.train import PRESETS, TrainConfig, add_config_options

    train = sub.add_parser("train", help="train a network on procedural stereo scenes (CPU or GPU)")
    train.add_argument("--out", required=True, help="run folder: logs, train_state.pt, model.pth")
    add_config_options(train, TrainConfig, flags=_FLAGS, choices={"preset": list(PRESETS)})
    train.add_argument("--time-budget", type=duration,
                       help="stop cleanly (state saved) before this much time has passed: seconds, or 90m, 2h")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..training.train import TrainConfig, Trainer, config_from_options

    trainer = Trainer(config_from_options(args, TrainConfig), Path(args.out))
    if args.resume and trainer.resume():
        print(f"resumed {args.out} at step {trainer.step}")
    elif (Path(args.out) / "train_state.pt").exists() and not args.resume:
        raise CommandError(f"{args.out} already holds a run; pass --resume or choose another --out")
    else:
        start = trainer.initialise()
        if start:
            print(f"{trainer.config.init} at step 0: " + ", ".join(f"{k} {v:.3f}" for k, v in start.items()))
    print(f"training {trainer.config.preset} on {trainer.device} for {trainer.config.steps} steps -> {args.out}")
    metrics = trainer.run(progress=not args.no_progress, time_budget=args.time_budget)
    state = "stopped for the time budget" if trainer.stopped_early else "done"
    print(f"{state}: step {trainer.step} of {trainer.config.steps}, {trainer.elapsed / 60:.1f} min in total, " +
          ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()) +
          f"; weights: {Path(args.out) / 'model.pth'}, best so far: {Path(args.out) / 'best.pth'} "
          f"(score {trainer.score(trainer.best) if trainer.best else float('nan'):.2f} at step "
          f"{trainer.best.get('step', '-')})")
