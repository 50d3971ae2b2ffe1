#!/usr/bin/env python3
"""Sample source and stereo node as separate processes (as the launch file starts them): the share
of published frames the node answers, and their latency.

    python scripts/answer_rate.py [--frames 30 --rate 0.5 --iters 2 -- <more stereo node --ros-args>]

Both run through `sgru-stereo source|run`; this process only listens (disparity and points2, like
rviz). DDS stays on this machine (localhost discovery, domain SGRU_BENCH_DOMAIN_ID or 44).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30, help="frames the source publishes (default 30)")
    parser.add_argument("--rate", type=float, default=0.5, help="source frame rate, Hz (default 0.5)")
    parser.add_argument("--iters", type=int, default=2, help="GRU iterations of the node (default 2)")
    parser.add_argument("node_args", nargs="*", help="further stereo node ROS arguments (after --)")
    args = parser.parse_args()
    if args.frames < 1 or not args.rate > 0:
        parser.error("--frames must be at least 1 and --rate positive")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = os.environ.get("SGRU_BENCH_DOMAIN_ID", "44")
    import numpy as np
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import PointCloud2
    from stereo_msgs.msg import DisparityImage

    from sgru_ros.ros.conversions import stamp_ns

    command = [sys.executable, "-m", "sgru_ros.cli"]
    node = subprocess.Popen([*command, "run", "--ros-args", "-p", f"iterations:={args.iters}", *args.node_args])
    rclpy.init()
    listener = Node("answer_rate_listener")
    answered: dict[int, float] = {}
    diagnostics: list[dict[str, str]] = []
    listener.create_subscription(DisparityImage, "disparity",
                                 lambda m: answered.setdefault(stamp_ns(m.header), time.time()), QoSProfile(depth=10))
    listener.create_subscription(PointCloud2, "points2", lambda m: None, QoSProfile(depth=2))
    listener.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.extend(
        {kv.key: kv.value for kv in s.values} for s in m.status if "sgru_stereo" in s.name), 10)
    source = None
    try:
        while not diagnostics and node.poll() is None:  # the node is up
            rclpy.spin_once(listener, timeout_sec=0.2)
        source = subprocess.Popen([*command, "source", "--ros-args", "-p", f"rate:={args.rate}",
                                   "-p", f"frames:={args.frames}"])
        while source.poll() is None:
            rclpy.spin_once(listener, timeout_sec=0.2)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            rclpy.spin_once(listener, timeout_sec=0.2)
    finally:
        for proc in (source, node):
            if proc is not None and proc.poll() is None:
                proc.send_signal(2)
                proc.wait(timeout=20)
        listener.destroy_node()
        rclpy.try_shutdown()
    if not diagnostics:
        print("the stereo node never published diagnostics (see its log above)")
        return 1
    stats = diagnostics[-1]
    latencies = np.array([arrival - stamp / 1e9 for stamp, arrival in answered.items()])
    latency = f"latency median {np.median(latencies):.2f} s, max {latencies.max():.2f} s" if answered else "no answers"
    print(f"published {args.frames} frames at {args.rate:g} Hz; answered {len(answered)} "
          f"({100 * len(answered) / args.frames:.1f} %); {latency}; node: sets {stats['sets_formed']}, processed "
          f"{stats['frames_processed']}, dropped stale {stats['frames_dropped_stale']}, failed {stats['frames_failed']}, "
          f"frame {stats.get('total_ms', '-')} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
