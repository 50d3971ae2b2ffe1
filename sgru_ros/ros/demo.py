"""The embedded default, end to end: sample source -> stereo node -> outputs, over real rclpy.

Runs the sample source (Motorcycle pair, real calibration), the stereo node
(bundled weights unless a checkpoint is given) and a collector node that
subscribes like rviz would, for N frames. Prints the latency and the node's
stage times of each frame and writes, for the last frame, the colorized
disparity (PNG), the disparity in Middlebury's convention (PFM: x_left - x_right
in pixels, as the data set's disp0.pfm) and the point cloud (PLY).

DDS stays on this machine: the demo sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
and ROS_DOMAIN_ID 42 (or SGRU_DEMO_DOMAIN_ID) before rclpy starts, and says so.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class PipelineRun:
    """What the collector saw: per frame the latency (source stamp to cloud received, ms) and the
    node's stage times (ms); the last frame's messages (and the cameras' principal-point offset);
    sets the node skipped as stale."""

    latencies_ms: list[float] = field(default_factory=list)
    stages_ms: list[dict[str, float]] = field(default_factory=list)
    last: dict[str, object] = field(default_factory=dict)
    principal_offset: float = 0.0  # cx_left - cx_right of the rectified cameras (P[0,2])
    dropped: int = 0


def _collector(run: PipelineRun, stereo, frames: int, done: threading.Event):
    """A node subscribing like rviz would: disparity, its colour map, points2 and the camera_infos. Each
    cloud closes a frame: its latency, and the node's stage times once the node has recorded that frame."""
    from rclpy.node import Node
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from stereo_msgs.msg import DisparityImage

    from .conversions import stamp_ns

    collector = Node("demo_collector")
    received: dict[str, dict[int, object]] = {"disparity": {}, "color": {}, "points2": {}}
    infos: dict[str, CameraInfo] = {}

    def keep(kind: str):
        def callback(msg) -> None:
            stamp = stamp_ns(msg.header)
            received[kind][stamp] = msg
            if kind != "points2" or done.is_set():
                return
            run.latencies_ms.append((collector.get_clock().now().nanoseconds - stamp) / 1e6)
            # The cloud goes out before the node records the frame's times: wait (briefly) until it has.
            deadline = time.monotonic() + 2.0
            while stereo.stats.processed < len(run.latencies_ms) and time.monotonic() < deadline:
                time.sleep(0.002)
            run.stages_ms.append(dict(stereo.stats.stages_ms))
            run.last = {"stamp": stamp}
            stages = ", ".join(f"{k} {v:.0f} ms" for k, v in run.stages_ms[-1].items() if k != "total")
            print(f"frame {len(run.latencies_ms)}: latency {run.latencies_ms[-1]:.0f} ms "
                  f"(stamp to cloud received; {stages})", flush=True)
            if len(run.latencies_ms) >= frames:
                done.set()
        return callback

    qos = QoSProfile(depth=5)
    collector.create_subscription(DisparityImage, "disparity", keep("disparity"), qos)
    collector.create_subscription(Image, "disparity/color", keep("color"), qos)
    collector.create_subscription(PointCloud2, "points2", keep("points2"), qos)
    for side in ("left", "right"):
        collector.create_subscription(CameraInfo, f"{side}/camera_info",
                                      lambda msg, side=side: infos.__setitem__(side, msg), qos)
    return collector, received, infos


def run_pipeline(frames: int, iterations: int, checkpoint: str | None, device: str,
                 source_parameters: dict, timeout_s: float) -> PipelineRun | None:
    """Sample source -> stereo node -> collector in one process (one rclpy context, DDS on
    localhost, domain SGRU_DEMO_DOMAIN_ID or 42) until ``frames`` clouds arrived; None on time-out."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = os.environ.get("SGRU_DEMO_DOMAIN_ID", "42")
    print(f"demo: DDS on this machine only, ROS_DOMAIN_ID {os.environ['ROS_DOMAIN_ID']} (SGRU_DEMO_DOMAIN_ID "
          "sets another)", flush=True)
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from .node import StereoNode
    from .sample_source import SampleSource

    rclpy.init(args=[])
    run = PipelineRun()
    done = threading.Event()
    try:
        source = SampleSource(parameter_overrides=[Parameter(k, value=v) for k, v in source_parameters.items()])
        overrides = [Parameter("iterations", value=iterations), Parameter("device", value=device)]
        if checkpoint:
            overrides.append(Parameter("model", value=checkpoint))
        stereo = StereoNode(parameter_overrides=overrides)
        collector, received, infos = _collector(run, stereo, frames, done)
        executor = MultiThreadedExecutor(num_threads=3)
        for node in (source, stereo, collector):
            executor.add_node(node)
        threading.Thread(target=executor.spin, daemon=True).start()
        finished = done.wait(timeout=timeout_s)
        time.sleep(0.3)  # let the other outputs of the last frame arrive
        executor.shutdown(timeout_sec=2.0)
        run.dropped = stereo.stats.dropped
        for node in (source, stereo, collector):
            node.destroy_node()
        if not finished:
            print(f"timed out after {timeout_s:.0f} s with {len(run.latencies_ms)} of {frames} frames")
            return None
        run.principal_offset = infos["left"].p[2] - infos["right"].p[2]
        run.last = {kind: received[kind].get(run.last["stamp"]) for kind in received}
        return run
    finally:
        rclpy.try_shutdown()


def run_demo(out_dir: Path, frames: int, iterations: int, checkpoint: str | None, device: str,
             rate: float, timeout_s: float) -> int:
    import cv2

    from ..geometry import write_ply
    from ..io import write_disparity

    run = run_pipeline(frames, iterations, checkpoint, device, {"rate": rate}, timeout_s)
    if run is None:
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    color_msg, disparity_msg, cloud_msg = (run.last[k] for k in ("color", "disparity", "points2"))
    color = np.frombuffer(color_msg.data, np.uint8).reshape(color_msg.height, color_msg.width, 3)
    cv2.imwrite(str(out_dir / "disparity_color.png"), color)
    image = disparity_msg.image
    disparity = np.frombuffer(image.data, np.float32).reshape(image.height, image.width).copy()
    disparity[disparity < disparity_msg.min_disparity] = np.nan
    # The message holds d' = d - (cx_l - cx_r) (stereo_image_proc's convention); the file the matched
    # disparity d = x_left - x_right, as Middlebury's disp0.pfm.
    write_disparity(out_dir / "disparity.pfm", disparity + np.float32(run.principal_offset))
    points, rgb = _cloud_arrays(cloud_msg)
    count = write_ply(str(out_dir / "cloud.ply"), points, rgb)
    print(f"{len(run.latencies_ms)} frames, latency median {np.median(run.latencies_ms):.0f} ms, "
          f"min {min(run.latencies_ms):.0f} ms; {run.dropped} of the source's sets skipped as stale (the node "
          "answers the newest when a frame takes longer than the source's period); wrote "
          f"{out_dir / 'disparity_color.png'}, {out_dir / 'disparity.pfm'}, {out_dir / 'cloud.ply'} "
          f"({count} points, f {disparity_msg.f:.3f} px, baseline {disparity_msg.t:.6f} m)")
    return 0


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
