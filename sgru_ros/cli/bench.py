"""``sgru-stereo bench``: per-stage milliseconds, frames per second and peak memory of the network."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.base import SelectiveStereo
from .common import CommandError, add_model_arguments, estimator_from_args, int_type, iterations


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="per-stage milliseconds, frames per second and peak memory of the network")
    add_model_arguments(bench)
    bench.add_argument("--random-weights", action="store_true",
                       help="time the released architecture of --variant with random weights (no checkpoint)")
    bench.add_argument("--size", type=int_type(32, multiple=32), nargs=2, action="append", metavar=("H", "W"),
                       help="input size, multiples of 32 (repeatable; default 256 384)")
    bench.add_argument("--iters", type=iterations, nargs="+", default=[8], help="GRU iterations (default 8)")
    bench.add_argument("--repeats", type=int_type(1), default=3, help="timed passes per configuration (default 3)")
    bench.add_argument("--warmup", type=int_type(0), default=1, help="untimed passes first (default 1)")
    bench.add_argument("--profiled", type=int_type(1), default=3,
                       help="passes under the profiler for the stage (and on CUDA kernel) figures (default 3)")
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.set_defaults(func=run)


def _bench_model(args: argparse.Namespace) -> tuple[SelectiveStereo | None, str]:
    """--random-weights: the released architecture of --variant, seeded; else None (--checkpoint)."""
    if not args.random_weights:
        return None, Path(args.checkpoint).name if args.checkpoint else "bundled"
    from ..model import released_model

    if args.variant is None or args.checkpoint:
        raise CommandError("--random-weights needs --variant raft|igev and no --checkpoint")
    return released_model(args.variant), f"selective-{args.variant} (random weights)"


def run(args: argparse.Namespace) -> None:
    import json

    from ..bench import BenchConfig, format_result, run_bench

    model, name = _bench_model(args)
    estimator = estimator_from_args(args, model)
    results = []
    for height, width in args.size or [(256, 384)]:
        for iters in args.iters:
            config = BenchConfig(height=height, width=width, iters=iters, repeats=args.repeats, warmup=args.warmup,
                                 profiled=args.profiled)
            results.append(run_bench(estimator, config, model_name=name))
            print(format_result(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=1) + "\n")
        print(f"wrote {args.json}")
