"""``sgru-stereo demo``: the sample source and the stereo node over real rclpy; writes PNG, PFM and PLY."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inference import MAX_ITERATIONS
from ..options import OPTION_HELP
from .common import CommandError, check_folder, int_type, iterations, positive_float


def add_parser(sub) -> None:
    demo = sub.add_parser("demo", help="sample source + stereo node over real rclpy; writes PNG, PFM and PLY")
    demo.add_argument("--out", default="sgru_demo", help="output folder (default sgru_demo)")
    demo.add_argument("--frames", type=int_type(1), default=3, help="frames to wait for (default 3)")
    demo.add_argument("--iters", type=iterations, default=8, help=f"GRU iterations, 1..{MAX_ITERATIONS} (default 8)")
    demo.add_argument("--checkpoint", help=OPTION_HELP["model"])
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    demo.add_argument("--rate", type=positive_float, default=1.0, help="sample source frame rate (default 1 Hz)")
    demo.add_argument("--timeout", type=positive_float, default=300.0, help="give up after this many seconds")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..ros.demo import run_demo

    check_folder("--out", Path(args.out), Path(args.out), create=True)
    status = run_demo(Path(args.out), frames=args.frames, iterations=args.iters, checkpoint=args.checkpoint,
                      device=args.device, rate=args.rate, timeout_s=args.timeout)
    if status:
        raise CommandError("the demo did not complete")
