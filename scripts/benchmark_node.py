#!/usr/bin/env python3
"""The stereo node's own stage times at 640x480, as deployed: three processes over real rclpy.

    python scripts/benchmark_node.py [--frames 10 --iters 8 --rate 10 --checkpoint CKPT --threads 2 --rectify
                                      --params-file my_robot.yaml]

Process 1, the sample source, streams the Motorcycle pair resized to 640x480 (folder source, its
calibration scaled) at --rate Hz, faster than the node keeps up with on a CPU. Process 2 is the
stereo node (``sgru-stereo run``). This process subscribes to ``disparity``, ``disparity/color``
and ``points2`` as rviz would, and reads the node's per-frame stage times (convert_in, inference,
geometry, publish) from /diagnostics. Prints their medians after one warm-up frame, the time outside
inference, the rate at which the node answered (its frames_processed count) and the rate at which
this consumer received clouds. --params-file runs the node with a parameters file (as the launch
file's params_file), for example to time other settings. With --rectify the source publishes a raw, distorted stream
(``distort``) and the node rectifies it (``rectify``). Localhost DDS only, in its own ROS_DOMAIN_ID
(--domain).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from sgru_ros.ros.processes import node_command, stop_node


def write_input(folder: Path) -> None:
    """The Motorcycle pair at 640x480 with its calibration scaled, as the folder source reads it."""
    from sgru_ros.bench import bench_pair
    from sgru_ros.calibration import MOTORCYCLE, StereoCalibration, motorcycle_pair
    from sgru_ros.ros.sample_source import write_folder_source

    full_height, full_width = motorcycle_pair()[0].shape[:2]
    sx, sy = 640 / full_width, 480 / full_height
    calib = MOTORCYCLE.scaled(sx)  # x scale; cy scaled by y
    write_folder_source(folder, [bench_pair(480, 640)], StereoCalibration(
        calib.focal_length, calib.cx, MOTORCYCLE.cy * sy, calib.cx_right, calib.baseline))


def collect(frames: int, timeout_s: float,
            processes: list[subprocess.Popen]) -> tuple[list[dict[str, float]], list[float], int, float]:
    """Subscribe like rviz and read /diagnostics until ``frames`` frames were processed, or one of
    ``processes`` ended. Returns the stage times per frame (in processing order), the clouds'
    arrival times, the stale sets the node dropped, and the node's answered frames per second (its
    frames_processed count over the time between the second and the last /diagnostics: the first
    frame warms the model up). /diagnostics comes
    once a second: every frame is seen when frames take longer than that (as on a CPU), a sample of
    them otherwise."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image, PointCloud2
    from stereo_msgs.msg import DisparityImage

    rclpy.init(args=[])
    try:
        node = Node("benchmark_consumer")
        per_frame: dict[int, dict[str, float]] = {}
        arrivals: list[float] = []
        dropped = [0]
        counts: list[tuple[float, int]] = []  # (arrival, frames_processed) of each /diagnostics

        def on_diagnostics(msg: DiagnosticArray) -> None:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if "total_ms" in values:
                    per_frame[int(values["frames_processed"])] = {k.removesuffix("_ms"): float(v)
                                                                  for k, v in values.items() if k.endswith("_ms")}
                    counts.append((time.monotonic(), int(values["frames_processed"])))
                    dropped[0] = int(values["frames_dropped_stale"])

        qos = QoSProfile(depth=5)
        node.create_subscription(DisparityImage, "disparity", lambda msg: None, qos)
        node.create_subscription(Image, "disparity/color", lambda msg: None, qos)
        node.create_subscription(PointCloud2, "points2", lambda msg: arrivals.append(time.monotonic()), qos)
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        deadline = time.monotonic() + timeout_s
        while (len(per_frame) < frames and time.monotonic() < deadline
               and all(process.poll() is None for process in processes)):
            rclpy.spin_once(node, timeout_sec=0.2)
        node.destroy_node()
        # From the second report on: the first frame warms the model up.
        rate = ((counts[-1][1] - counts[1][1]) / (counts[-1][0] - counts[1][0])
                if len(counts) > 2 and counts[-1][0] > counts[1][0] else float("nan"))
        return [per_frame[k] for k in sorted(per_frame)], arrivals, dropped[0], rate
    finally:
        rclpy.try_shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10, help="frames after the warm-up frame")
    parser.add_argument("--iters", type=int, default=None, help="GRU iterations (default: the parameters "
                        "file's, else 8)")
    parser.add_argument("--params-file", default=None, help="the node's parameters from this file, as "
                        "params_file:= in the launch file; --iters and --device override it when given")
    parser.add_argument("--rate", type=float, default=10.0, help="source frame rate (Hz)")
    parser.add_argument("--checkpoint", default=None, help="default: the bundled weights")
    parser.add_argument("--device", default=None, help="default: the parameters file's, else cpu")
    parser.add_argument("--threads", type=int, default=2, help="the node's torch threads")
    parser.add_argument("--domain", default="61", help="ROS_DOMAIN_ID of the three processes")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--rectify", action="store_true", help="a raw, distorted stream rectified in the node")
    parser.add_argument("--code", default=str(Path(__file__).resolve().parents[1]),
                        help="run the source and the node from this checkout of the package (for example a "
                             "worktree of an older commit, to compare; default: this one)")
    args = parser.parse_args()
    # The node's settings: the parameters file's, overridden by the options given (without a file: 8, cpu).
    overrides = {"iterations": args.iters, "device": args.device}
    if not args.params_file:
        overrides = {"iterations": 8 if args.iters is None else args.iters, "device": args.device or "cpu"}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=args.domain)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_input(folder)
        source_args = ["-p", "source:=folder", "-p", f"path:={folder}",
                       "-p", f"calibration:={folder / 'calibration.yaml'}", "-p", f"rate:={args.rate}"]
        node_args = ["--params-file", str(Path(args.params_file).resolve())] if args.params_file else []
        for name, value in overrides.items():
            node_args += ["-p", f"{name}:={value}"]
        if args.checkpoint:
            node_args += ["-p", f"model:={args.checkpoint}"]
        if args.rectify:
            source_args += ["-p", "distort:=true"]
            node_args += ["-p", "rectify:=true"]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        logs = {command: open(folder / f"{command}.log", "w+") for command in ("source", "run")}
        processes = [subprocess.Popen(node_command(command, *ros_args), cwd=args.code, env=env,
                                      stdout=logs[command], stderr=subprocess.STDOUT)
                     for command, ros_args in (("source", source_args), ("run", node_args))]
        try:
            stages, arrivals, dropped, answered = collect(args.frames + 1, args.timeout, processes)
            for (command, log), process in zip(logs.items(), processes):
                if process.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"sgru-stereo {command} ended (status {process.returncode}):\n"
                                     + "".join(log.readlines()[-10:]))
        finally:
            for process in processes:
                stop_node(process, timeout=20)
            for log in logs.values():
                log.close()
    if len(stages) < args.frames + 1:
        raise SystemExit(f"timed out after {args.timeout:.0f} s with {len(stages)} of {args.frames + 1} frames")
    stages = stages[1:]  # the first frame warms the model up
    settings = ([f"parameters {args.params_file}"] if args.params_file else []) + [
        f"{name} {value}" for name, value in overrides.items()]
    print(f"640x480{' raw, rectified in the node' if args.rectify else ''}, {', '.join(settings)}, "
          f"{args.threads} threads, checkpoint "
          f"{args.checkpoint or 'bundled'}, code {args.code}; source, node and consumer in three processes; "
          f"{len(stages)} frames after 1 warm-up")
    for key in stages[0]:  # the node's stages in its order, total last
        values = [s[key] for s in stages]
        print(f"  {key:11s} median {np.median(values):8.1f} ms   min {np.min(values):8.1f} ms")
    outside = [s["total"] - s["inference"] for s in stages]
    print(f"  outside inference (total - inference) median {np.median(outside):.1f} ms, "
          f"min {np.min(outside):.1f} ms, max {np.max(outside):.1f} ms")
    if math.isfinite(answered):
        print(f"  the node answered {answered:.2f} frames/s (frames_processed on /diagnostics) with the source at "
              f"{args.rate:g} Hz")
    else:
        print("  the node's answered rate needs three /diagnostics reports (one a second): more --frames")
    if len(arrivals) > 1:
        print(f"  clouds received by this consumer at {(len(arrivals) - 1) / (arrivals[-1] - arrivals[0]):.2f} "
              f"frames/s ({dropped} stale sets dropped by the node)")


if __name__ == "__main__":
    main()
