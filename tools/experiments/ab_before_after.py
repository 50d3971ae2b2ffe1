#!/usr/bin/env python3
"""Before/after speed of the network code, interleaved in one process (steadier than separate runs).

    git worktree add /tmp/before db58fcc
    python tools/experiments/ab_before_after.py --before-tree /tmp/before --variant igev [--size 256 384 --iters 8 --rounds 3]

The older tree's ``sgru_ros`` is copied to a temporary folder as ``sgru_ros_before`` and imported beside
this checkout's; both networks get the same weights (the bundled ones, or random ones at the released
width for raft/igev) and run the Motorcycle pair resized to the size, alternately, ``--rounds`` times.
Prints min and median of each, the speed-up, and the largest difference between their outputs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import sgru_ros.model as now
from sgru_ros.bench import bench_pair
from sgru_ros.inference import to_image_tensor
from sgru_ros.weights import default_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-tree", required=True, help="checkout of the older commit")
    parser.add_argument("--variant", choices=("bundled", "raft", "igev"), default="bundled")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 384], metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(Path(args.before_tree) / "sgru_ros", Path(tmp) / "sgru_ros_before")
        sys.path.insert(0, tmp)
        import sgru_ros_before.model as before

        def build(module):
            torch.manual_seed(0)
            if args.variant == "bundled":
                return module.load_model(default_checkpoint()).eval()
            return module.build_model(module.IGEVConfig() if args.variant == "igev" else module.RaftConfig()).eval()

        old, new = build(before), build(now)
        new.load_state_dict(old.state_dict())
    height, width = args.size
    left, right = (to_image_tensor(image) for image in bench_pair(height, width))
    kwargs = {"max_disp": 192} if args.variant == "igev" else {}
    times: dict[str, list[float]] = {"before": [], "now": []}
    with torch.inference_mode():
        difference = (old(left, right, iters=args.iters, **kwargs).final
                      - new(left, right, iters=args.iters, **kwargs).final).abs().max().item()
        for _ in range(args.rounds):
            for name, model in (("before", old), ("now", new)):
                start = time.perf_counter()
                model(left, right, iters=args.iters, **kwargs)
                times[name].append((time.perf_counter() - start) * 1e3)
    lo = {name: min(t) for name, t in times.items()}
    mid = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.variant} {width}x{height}, {args.iters} iterations, {args.threads} threads: "
          f"before min {lo['before']:.0f} median {mid['before']:.0f} ms | now min {lo['now']:.0f} median "
          f"{mid['now']:.0f} ms | speed-up {lo['before'] / lo['now']:.2f}x (min) {mid['before'] / mid['now']:.2f}x "
          f"(median) | largest |difference| {difference:.1e} px")


if __name__ == "__main__":
    main()
