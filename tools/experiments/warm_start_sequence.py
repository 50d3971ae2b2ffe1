#!/usr/bin/env python3
"""Warm start on a moving synthetic sequence: accuracy against iterations and time, cold and warm.

    python tools/experiments/warm_start_sequence.py [--checkpoint C] [--frames 10 --step 4 --iters 1 2 4 8 16]
                                          [--png docs/warm_start.png]

The sequence is one procedural scene (``training.synthetic``, seed 90210, no photometric changes,
never used for training) seen by a camera that moves ``--step`` px per frame along the baseline:
frame k is the 256 x 384 window starting ``k * step`` px to the right, so the image (and the
disparity field) slides by that much between frames. For each iteration count N per frame, the
sequence is run twice: cold (every frame from the model's own start) and warm (every frame from the
previous frame's output, without motion compensation, as a robot would have it). Prints the mean
end-point error and bad-2 over frames 2..n and the median time per frame; draws both curves.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from sgru_ros.evaluation import disparity_metrics
from sgru_ros.inference import StereoEstimator
from sgru_ros.training.synthetic import SceneConfig, SyntheticStereo

SEED = 90210


def sequence(frames: int, step: int, height: int = 256, width: int = 384):
    wide = width + step * (frames - 1)
    scene = SyntheticStereo(SceneConfig(height=height, width=wide, max_disparity=64.0, photometric=False),
                            seed=SEED)[0]
    for k in range(frames):
        x = k * step
        yield (scene.left[:, x:x + width], scene.right[:, x:x + width], scene.disparity[:, x:x + width])


def run(estimator: StereoEstimator, frames: list, iters: int, warm: bool) -> tuple[float, float, float]:
    """Mean EPE and bad-2 (%) over frames 2.., median ms per frame."""
    previous, epes, bads, times = None, [], [], []
    for i, (left, right, truth) in enumerate(frames):
        start = time.perf_counter()
        result = estimator.estimate(left, right, iters=iters, disp_init=previous if warm else None)
        times.append((time.perf_counter() - start) * 1e3)
        previous = result.disparity
        valid = truth < np.arange(truth.shape[1])[None, :]  # the match lies inside the right image
        if i >= 1:
            metrics = disparity_metrics(result.disparity, np.where(valid, truth, np.nan))
            epes.append(metrics.epe)
            bads.append(metrics.bad2)
    return float(np.mean(epes)), float(np.mean(bads)), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="default: the bundled weights")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--step", type=int, default=4, help="camera motion per frame, px")
    parser.add_argument("--iters", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--png", help="write the plot here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    estimator = StereoEstimator.from_checkpoint(args.checkpoint, device="cpu")
    frames = list(sequence(args.frames, args.step))
    rows = {mode: [run(estimator, frames, n, mode == "warm") for n in args.iters] for mode in ("cold", "warm")}
    print(f"{args.checkpoint or 'bundled'}, {len(frames)} frames 384x256, camera {args.step} px/frame; "
          "mean over frames 2..n")
    print("| iterations | EPE cold (px) | EPE warm (px) | bad-2 cold (%) | bad-2 warm (%) | ms/frame cold | ms/frame warm |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, cold, warm in zip(args.iters, rows["cold"], rows["warm"]):
        print(f"| {n} | {cold[0]:.2f} | {warm[0]:.2f} | {cold[1]:.1f} | {warm[1]:.1f} | {cold[2]:.0f} | {warm[2]:.0f} |")
    for n, warm in zip(args.iters, rows["warm"]):
        cold_iters = [m for m, cold in zip(args.iters, rows["cold"]) if cold[0] <= warm[0]]
        print(f"warm with {n} iterations: EPE {warm[0]:.2f}; cold needs "
              + (f"{cold_iters[0]} iterations for as good" if cold_iters else f"more than {args.iters[-1]}"))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (by_iters, by_time) = plt.subplots(1, 2, figsize=(9, 3.5))
        for mode, style in (("cold", "o-"), ("warm", "s-")):
            by_iters.plot(args.iters, [r[0] for r in rows[mode]], style, label=mode)
            by_time.plot([r[2] for r in rows[mode]], [r[0] for r in rows[mode]], style, label=mode)
        by_iters.set(xscale="log", xlabel="GRU iterations per frame", ylabel="EPE (px)", xticks=args.iters,
                     xticklabels=[str(n) for n in args.iters])
        by_time.set(xlabel="ms per frame (CPU, 2 threads)", ylabel="EPE (px)")
        for ax in (by_iters, by_time):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"Warm start on a moving synthetic sequence ({args.step} px/frame)")
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
