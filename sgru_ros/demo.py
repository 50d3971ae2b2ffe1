"""The embedded default, end to end: sample source -> stereo node -> outputs, over real rclpy.

Runs the sample source (Motorcycle pair, real calibration), the stereo node
(bundled weights unless a checkpoint is given) and a collector node that
subscribes like rviz would, for N frames. Prints the latency of each frame
and writes the colorized disparity (PNG), the disparity (PFM) and the point
cloud (PLY) of the last frame.

DDS stays on this machine: the demo sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
and its own ROS_DOMAIN_ID (SGRU_DEMO_DOMAIN_ID, default 42) before rclpy starts.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np


def run_demo(out_dir: Path, frames: int, iterations: int, checkpoint: str | None, device: str,
             rate: float, timeout_s: float) -> int:
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = os.environ.get("SGRU_DEMO_DOMAIN_ID", "42")
    import cv2
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image, PointCloud2
    from stereo_msgs.msg import DisparityImage

    from .geometry import write_ply
    from .io import write_disparity
    from .node import StereoNode
    from .ros_conversions import stamp_ns
    from .sample_source import SampleSource

    out_dir.mkdir(parents=True, exist_ok=True)
    rclpy.init(args=[])
    received: dict[str, dict[int, object]] = {"disparity": {}, "color": {}, "points2": {}}
    latencies: list[tuple[int, float]] = []
    done = threading.Event()
    try:
        source = SampleSource(parameter_overrides=[Parameter("rate", value=rate)])
        overrides = [Parameter("iterations", value=iterations), Parameter("device", value=device)]
        if checkpoint:
            overrides.append(Parameter("model", value=checkpoint))
        stereo = StereoNode(parameter_overrides=overrides)
        collector = Node("demo_collector")
        qos = QoSProfile(depth=5)

        def keep(kind: str):
            def callback(msg) -> None:
                stamp = stamp_ns(msg.header)
                received[kind][stamp] = msg
                if kind == "points2":
                    latency = (collector.get_clock().now().nanoseconds - stamp) / 1e6
                    latencies.append((stamp, latency))
                    stages = ", ".join(f"{k} {v:.0f} ms" for k, v in stereo.stats.stages_ms.items()
                                       if k not in ("iterations", "total"))
                    print(f"frame {len(latencies)}: latency {latency:.0f} ms (stamp to cloud received; {stages})",
                          flush=True)
                    if len(latencies) >= frames:
                        done.set()
            return callback

        collector.create_subscription(DisparityImage, "disparity", keep("disparity"), qos)
        collector.create_subscription(Image, "disparity/color", keep("color"), qos)
        collector.create_subscription(PointCloud2, "points2", keep("points2"), qos)
        executor = MultiThreadedExecutor(num_threads=3)
        for node in (source, stereo, collector):
            executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        finished = done.wait(timeout=timeout_s)
        time.sleep(0.2)  # let the other outputs of the last frame arrive
        executor.shutdown(timeout_sec=2.0)
        if not finished:
            print(f"timed out after {timeout_s:.0f} s with {len(latencies)} of {frames} frames")
            return 1
        stamp = latencies[-1][0]
        color_msg, disparity_msg, cloud_msg = (received[k].get(stamp) for k in ("color", "disparity", "points2"))
        color = np.frombuffer(color_msg.data, np.uint8).reshape(color_msg.height, color_msg.width, 3)
        cv2.imwrite(str(out_dir / "disparity_color.png"), color)
        image = disparity_msg.image
        disparity = np.frombuffer(image.data, np.float32).reshape(image.height, image.width).copy()
        disparity[disparity < disparity_msg.min_disparity] = np.nan
        write_disparity(out_dir / "disparity.pfm", disparity)
        points, rgb = _cloud_arrays(cloud_msg)
        count = write_ply(str(out_dir / "cloud.ply"), points, rgb)
        values = [lat for _, lat in latencies]
        print(f"{len(values)} frames, latency median {np.median(values):.0f} ms, min {min(values):.0f} ms; "
              f"dropped stale sets {stereo.stats.dropped}; wrote {out_dir / 'disparity_color.png'}, "
              f"{out_dir / 'disparity.pfm'}, {out_dir / 'cloud.ply'} ({count} points, "
              f"f {disparity_msg.f:.3f} px, baseline {disparity_msg.t:.6f} m)")
        for node in (source, stereo, collector):
            node.destroy_node()
        return 0
    finally:
        rclpy.try_shutdown()


def _cloud_arrays(msg) -> tuple[np.ndarray, np.ndarray | None]:
    """PointCloud2 (x, y, z [, rgb] float32 fields) -> H x W x 3 points and RGB."""
    raw = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, msg.point_step)
    offsets = {f.name: f.offset for f in msg.fields}
    points = np.stack([raw[..., offsets[c]:offsets[c] + 4].copy().view("<f4")[..., 0] for c in "xyz"], axis=-1)
    rgb = None
    if "rgb" in offsets:
        o = offsets["rgb"]
        rgb = raw[..., o:o + 3][..., ::-1].copy()  # bytes B, G, R -> RGB
    return points, rgb
