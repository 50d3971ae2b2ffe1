#!/usr/bin/env python3
"""Stereo node throughput and per-stage latency at 640x480, over real rclpy.

    python scripts/benchmark_node.py [--frames 10 --iters 12 --rate 10 --checkpoint CKPT --threads 2]

The sample source streams the Motorcycle pair resized to 640x480 (folder source, its calibration
scaled) faster than the node can keep up; the node always takes the newest set. Prints per-stage
medians (conversion in, inference, cloud, publish), end-to-end latency and output frame rate.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from sgru_ros.calibration import MOTORCYCLE, motorcycle_pair
from sgru_ros.demo import run_pipeline
from sgru_ros.io import write_image_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--rate", type=float, default=10.0, help="source frame rate (Hz)")
    parser.add_argument("--checkpoint", default=None, help="default: the bundled weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import cv2

    left, right, _ = motorcycle_pair()
    sx, sy = 640 / left.shape[1], 480 / left.shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for side, image in (("left", left), ("right", right)):
            (folder / side).mkdir()
            write_image_rgb(folder / side / "000.png", cv2.resize(image, (640, 480), interpolation=cv2.INTER_AREA))
        calib = MOTORCYCLE.scaled(sx)  # x scale; cy scaled by y below
        (folder / "calibration.yaml").write_text(yaml.safe_dump({
            "focal_length": calib.focal_length, "cx": calib.cx, "cy": MOTORCYCLE.cy * sy,
            "cx_right": calib.cx_right, "baseline": calib.baseline}))
        run = run_pipeline(args.frames + 1, args.iters, args.checkpoint, args.device,
                           {"source": "folder", "path": str(folder), "calibration": str(folder / "calibration.yaml"),
                            "rate": args.rate}, timeout_s=900, verbose=False)
    if run is None:
        raise SystemExit("benchmark timed out")
    stages = [s for s in run.stages_ms[1:] if "total" in s]  # skip the warm-up frame and any read mid-publish
    print(f"640x480, {args.iters} iterations, device {args.device}, {args.threads} threads, "
          f"checkpoint {args.checkpoint or 'bundled'}; {len(stages)} frames after 1 warm-up")
    for key in ("convert_in", "inference", "cloud", "publish", "total"):
        values = [s[key] for s in stages]
        print(f"  {key:11s} median {np.median(values):8.1f} ms   min {np.min(values):8.1f} ms")
    print(f"  end-to-end latency (stamp -> cloud received) median {np.median(run.latencies_ms[1:]):.1f} ms")
    print(f"  throughput {(len(run.latencies_ms) - 1) / run.first_to_last_s:.2f} frames/s with the source at "
          f"{args.rate:g} Hz ({run.dropped} stale sets dropped, none queued)")


if __name__ == "__main__":
    main()
