#!/usr/bin/env python3
"""Winograd (NNPACK) against direct convolutions: the whole network, or single convolution shapes.

    python tools/experiments/winograd_ab.py --variant igev [--checkpoint official_igev.pth] [--size 256 384 --iters 8
        --rounds 4]
    python tools/experiments/winograd_ab.py --shapes

The first form runs ``StereoEstimator.estimate`` on the Motorcycle pair resized to the size with the Winograd
path on and off (``sgru_ros.model.layers.winograd_convolutions``), alternately (who goes first alternates
too), after one untimed pass of each, and prints the median seconds of each, their ratio and the largest and
mean difference between the disparities. Without --checkpoint: the bundled model (--variant bundled) or the
released architecture with random weights. The second prints, for 3x3 convolutions of C -> C channels on
maps of several sizes and batches of one and two, NNPACK's time over oneDNN's (fastest of 3; "*": faster),
the measurements behind ``layers._takes_winograd``. Import order matters: sgru_ros before torch (see
sgru_ros/__init__.py), which this script does.
"""

from __future__ import annotations

import argparse
import statistics
import time

import sgru_ros  # noqa: F401 -- first: lets OpenMP threads sleep before torch loads OpenMP
import numpy as np
import torch
import torch.nn.functional as F

from sgru_ros.bench import bench_pair
from sgru_ros.inference import StereoEstimator
from sgru_ros.model import released_model
from sgru_ros.model.layers import winograd_convolutions


def fastest_ms(run, repeats: int = 3) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def shapes() -> None:
    channels = (32, 48, 64, 96, 128, 256, 384)
    print("NNPACK / oneDNN time, 3x3 convolution C -> C, stride 1 ('*': NNPACK faster)")
    print("batch  H x W     " + " ".join(f"C={c:<5d}" for c in channels))
    for batch in (1, 2):
        for height, width in ((16, 24), (32, 48), (64, 96), (128, 192), (256, 384)):
            cells = []
            for c in channels:
                if height * width * c * c > 64 * 96 * 384 * 384:  # larger than the networks' largest
                    cells.append("  -    ")
                    continue
                x, weight, bias = torch.randn(batch, c, height, width), torch.randn(c, c, 3, 3) * 0.05, torch.randn(c)
                direct = fastest_ms(lambda: F.conv2d(x, weight, bias, padding=1))
                winograd = fastest_ms(lambda: torch._nnpack_spatial_convolution(x, weight, bias, [1, 1], [1, 1]))
                cells.append(f"{winograd / direct:5.2f}{'*' if winograd < direct else ' '} ")
            print(f"{batch:5d}  {height:3d} x {width:<4d} " + " ".join(cells), flush=True)


def network(args: argparse.Namespace) -> None:
    if args.checkpoint or args.variant == "bundled":
        estimator = StereoEstimator.from_checkpoint(args.checkpoint, variant=None if args.variant == "bundled"
                                                    else args.variant, device="cpu")
    else:
        estimator = StereoEstimator(released_model(args.variant),
                                    device="cpu")
    left, right = bench_pair(*args.size)

    def run(winograd: bool) -> tuple[float, np.ndarray]:
        with winograd_convolutions(winograd):
            start = time.perf_counter()
            disparity = estimator.estimate(left, right, iters=args.iters).disparity
            return time.perf_counter() - start, np.asarray(disparity)

    run(False)  # warm-up, untimed
    run(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    outputs: dict[bool, np.ndarray] = {}
    for round_ in range(args.rounds):
        for winograd in ((False, True) if round_ % 2 == 0 else (True, False)):
            seconds, outputs[winograd] = run(winograd)
            times[winograd].append(seconds)
    direct, winograd = statistics.median(times[False]), statistics.median(times[True])
    difference = np.abs(outputs[True] - outputs[False])
    print(f"{args.variant}, {args.size[1]}x{args.size[0]}, {args.iters} iterations, {torch.get_num_threads()} "
          f"threads, {args.rounds} rounds: direct {direct:.3f} s, Winograd {winograd:.3f} s (medians), "
          f"ratio {winograd / direct:.3f}; disparities differ by at most {difference.max():.2e} px "
          f"(mean {difference.mean():.2e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", action="store_true", help="time single convolution shapes instead")
    parser.add_argument("--variant", choices=("bundled", "raft", "igev"), default="bundled")
    parser.add_argument("--checkpoint", help="a checkpoint of --variant (default: bundled or random weights)")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 384], metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not torch._nnpack_available():
        raise SystemExit("this PyTorch build has no NNPACK: every convolution runs direct")
    if args.shapes:
        shapes()
    else:
        network(args)


if __name__ == "__main__":
    main()
