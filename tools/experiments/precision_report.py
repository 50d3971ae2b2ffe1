#!/usr/bin/env python3
"""Speed and disparity drift of reduced precision against fp32 on the Motorcycle pair (741x500).

    python tools/experiments/precision_report.py [--checkpoint C] [--iters 8] [--device cpu] [--precisions fp32 bf16]
                                       [--max-width 384]

For each precision: milliseconds for one pass (after an untimed pass on a 96 x 128 crop, which sets up
the kernels), the end-point error against the ground truth, and the drift against the fp32 output
(mean and largest |difference|, px). --max-width runs the network on a downscaled pair (the
disparity is scaled back), for CPUs where a reduced-precision pass takes minutes. fp16
needs CUDA; bf16 runs on CPUs too, where it was slower than fp32 on both CPUs measured (83x without bf16
instructions, 1.3x with AVX512-BF16 but no AMX; docs/performance.md). Evaluation only: nothing is chosen by
these numbers.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sgru_ros.calibration import motorcycle_pair
from sgru_ros.evaluation import disparity_metrics
from sgru_ros.inference import StereoEstimator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="default: the bundled weights")
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--max-width", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    left, right, truth = motorcycle_pair()
    outputs = {}
    print(f"{args.checkpoint or 'bundled'}, Motorcycle 741x500 (network at max width {args.max_width or 741}), "
          f"{args.iters} iterations, {args.device}, {torch.get_num_threads()} threads")
    print("| precision | ms/frame | EPE vs truth (px) | drift vs fp32: mean (px) | drift: max (px) |")
    print("| --- | --- | --- | --- | --- |")
    for precision in ["fp32"] + [p for p in args.precisions if p != "fp32"]:
        estimator = StereoEstimator.from_checkpoint(args.checkpoint, device=args.device, precision=precision,
                                                    max_width=args.max_width)
        estimator.estimate(left[:96, :128], right[:96, :128], iters=1)
        if estimator.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs[precision] = estimator.estimate(left, right, iters=args.iters).disparity
        ms = (time.perf_counter() - start) * 1e3
        drift = np.abs(outputs[precision] - outputs["fp32"])
        print(f"| {precision} | {ms:.0f} | {disparity_metrics(outputs[precision], truth).epe:.3f} | "
              f"{drift.mean():.4f} | {drift.max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
