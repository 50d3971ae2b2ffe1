"""stereo_node: rectified stereo in, Selective-Stereo disparity, depth and point cloud out.

Topics and parameters follow stereo_image_proc where they mean the same
(see README). The node is wiring: synchronisation (``sync``), inference
(``inference``) and geometry (``geometry``) do the work.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, RegionOfInterest
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from .geometry import CloudLayout, DisparityProducts, StereoGeometry, depth_products, disparity_products
from .inference import PRECISIONS, StereoEstimator
from .ros_conversions import array_to_image, cloud_message, image_to_rgb, projection, stamp_ns
from .sync import StereoSynchronizer
from .visualize import colorize_disparity

MAX_ITERATIONS = 64
#: Warn when images arrive but no synchronised set has formed for this long.
SYNC_WARN_AFTER_S = 3.0
#: DisparityImage.delta_d as stereo_image_proc sets it (its matcher's 1/16 px).
DELTA_D = 1.0 / 16.0

INPUTS = ("left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info")


@dataclass
class FrameStats:
    processed: int = 0
    dropped: int = 0  # complete sets replaced by a newer one before inference could take them
    rejected: int = 0  # sets refused for bad input
    last_error: str = ""
    last_error_time: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)
    last_iterations: int = 0
    resolution: tuple[int, int] | None = None


class StereoNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sgru_stereo", **kwargs)
        # Worker state first: destroy_node() must work even if the rest of __init__ fails.
        self._lock = threading.Condition()
        self._pending: list | None = None
        self._running = True
        self._worker: threading.Thread | None = None
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._validate_parameters)
        p = self._param
        max_width = p("max_width")
        self.estimator = StereoEstimator.from_checkpoint(
            p("model") or None, device=p("device"), precision=p("precision"), max_disp=p("max_disp"),
            max_width=max_width if max_width > 0 else None)

        publisher_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        overrides = QoSOverridingOptions.with_default_policies()
        self.pub_disparity = self.create_publisher(DisparityImage, "disparity", publisher_qos,
                                                   qos_overriding_options=overrides)
        self.pub_points = self.create_publisher(PointCloud2, "points2", publisher_qos,
                                                qos_overriding_options=overrides)
        self.pub_depth = self.create_publisher(Image, "depth", publisher_qos, qos_overriding_options=overrides)
        self.pub_color = self.create_publisher(Image, "disparity/color", publisher_qos,
                                               qos_overriding_options=overrides)
        self.pub_iterations: dict[int, object] = {}
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        tolerance = p("approximate_sync_tolerance_seconds")
        self.sync = StereoSynchronizer(len(INPUTS), p("queue_size"),
                                       int(tolerance * 1e9) if p("approximate_sync") else None)
        self.stats = FrameStats()
        self._last_input_time = 0.0
        self._last_set_time = time.monotonic()
        for index, (topic, msg_type) in enumerate(zip(INPUTS, (Image, Image, CameraInfo, CameraInfo))):
            self.create_subscription(msg_type, topic, lambda msg, i=index: self._on_input(i, msg),
                                     qos_profile_sensor_data, qos_overriding_options=overrides)
        self.create_timer(1.0, self._on_timer)
        self._worker = threading.Thread(target=self._work, name="sgru_inference", daemon=True)
        self._worker.start()

        model = p("model") or "bundled default"
        params = sum(t.numel() for t in self.estimator.model.parameters()) / 1e6
        self.get_logger().info(
            f"model {self.estimator.variant} ({model}, {params:.1f} M parameters), device {self.estimator.device}, "
            f"precision {self.estimator.precision}, iterations {p('iterations')}, max_width "
            f"{max_width or 'none'}, {'approximate' if p('approximate_sync') else 'exact'} sync; "
            f"resolution: from the first frame on {self.resolve_topic_name(INPUTS[0])}")

    # -- parameters ---------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        def declare(name, default, description, *, read_only=False, integer_range=None, float_range=None,
                    constraints=""):
            descriptor = ParameterDescriptor(description=description, read_only=read_only,
                                             additional_constraints=constraints)
            if integer_range:
                descriptor.integer_range = [IntegerRange(from_value=integer_range[0], to_value=integer_range[1],
                                                         step=integer_range[2] if len(integer_range) > 2 else 1)]
            if float_range:
                descriptor.floating_point_range = [FloatingPointRange(from_value=float_range[0],
                                                                      to_value=float_range[1], step=0.0)]
            self.declare_parameter(name, default, descriptor)

        declare("queue_size", 5, "Messages kept per input for synchronisation", read_only=True,
                integer_range=(1, 100))
        declare("approximate_sync", False, "Match inputs by nearest stamp instead of identical stamps",
                read_only=True)
        declare("approximate_sync_tolerance_seconds", 0.02, "Largest stamp spread of an approximate set",
                read_only=True, float_range=(0.0, 10.0))
        declare("use_color", True, "Colour the point cloud from the left image (rgb field)")
        declare("avoid_point_cloud_padding", False, "16-byte points (no padding after xyz) instead of 32")
        declare("model", "", "Checkpoint file (the authors' .pth or this package's); empty: bundled weights",
                read_only=True)
        declare("max_disp", 192, "Selective-IGEV cost-volume range in processed pixels (multiple of 32)",
                read_only=True, integer_range=(32, 1024, 32))
        declare("iterations", 8, "GRU refinement iterations per frame (more: finer, slower)",
                integer_range=(1, MAX_ITERATIONS))
        self.declare_parameter("publish_iterations", Parameter.Type.INTEGER_ARRAY, ParameterDescriptor(
            description="Also publish disparity/iter_K for these K < iterations (same pass)",
            type=ParameterType.PARAMETER_INTEGER_ARRAY))
        declare("device", "auto", "auto, cpu, cuda or cuda:N", read_only=True)
        declare("precision", "fp32", "fp32, fp16 (CUDA) or bf16", read_only=True,
                constraints="one of " + ", ".join(PRECISIONS))
        declare("max_width", 0, "Downscale wider images to this width before the network (0: never)",
                read_only=True, integer_range=(0, 16384))
        declare("min_depth", 0.0, "Points nearer than this (m) are left out of points2 and depth",
                float_range=(0.0, 1000.0))
        declare("max_depth", 100.0, "Points farther than this (m) are left out of points2 and depth",
                float_range=(0.0, 100000.0))
        declare("filter_flying_pixels", True, "Drop points on depth discontinuities (see README)")
        declare("flying_pixel_threshold", 1.0, "Disparity range (px) in a 3x3 window that marks a flying pixel",
                float_range=(0.0, 100.0))

    def _param(self, name: str):
        if name == "publish_iterations":  # declared without a value: unset means none
            try:
                return list(self.get_parameter(name).value or [])
            except ParameterUninitializedException:
                return []
        return self.get_parameter(name).value

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        new = {p.name: p.value for p in params}
        get = lambda name: new.get(name, self._param(name))  # noqa: E731
        iterations = get("iterations")
        extra = list(get("publish_iterations") or [])
        bad = [k for k in extra if not 1 <= k < iterations]
        if bad:
            return SetParametersResult(successful=False, reason=(
                f"publish_iterations {bad} must lie in 1..{iterations - 1} (below iterations {iterations})"))
        if get("min_depth") >= get("max_depth"):
            return SetParametersResult(successful=False, reason=(
                f"min_depth {get('min_depth')} must be below max_depth {get('max_depth')}"))
        return SetParametersResult(successful=True)

    # -- input ---------------------------------------------------------------------------------
    def _on_input(self, index: int, msg) -> None:
        self._last_input_time = time.monotonic()
        complete = self.sync.add(index, stamp_ns(msg.header), msg)
        if complete is None:
            return
        self._last_set_time = time.monotonic()
        with self._lock:
            if self._pending is not None:
                self.stats.dropped += 1  # inference is slower than the camera: keep only the newest
            self._pending = complete
            self._lock.notify()

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and self._running:
                    self._lock.wait(timeout=0.5)
                if not self._running:
                    return
                frame, self._pending = self._pending, None
            try:
                self._process(*frame)
            except ValueError as err:
                self.stats.rejected += 1
                self.stats.last_error, self.stats.last_error_time = str(err), time.monotonic()
                self.get_logger().error(f"frame {frame[2].header.stamp.sec}.{frame[2].header.stamp.nanosec:09d} "
                                        f"rejected: {err}", throttle_duration_sec=1.0)

    # -- processing ----------------------------------------------------------------------------
    def _process(self, left_msg: Image, right_msg: Image, left_info: CameraInfo, right_info: CameraInfo) -> None:
        t0 = time.perf_counter()
        left, right = image_to_rgb(left_msg), image_to_rgb(right_msg)
        if left.shape != right.shape:
            raise ValueError(f"left image is {left.shape[1]}x{left.shape[0]} but right is "
                             f"{right.shape[1]}x{right.shape[0]}")
        for name, info in (("left", left_info), ("right", right_info)):
            if (info.width, info.height) not in ((left.shape[1], left.shape[0]), (0, 0)):
                raise ValueError(f"{name} camera_info is {info.width}x{info.height} but the images are "
                                 f"{left.shape[1]}x{left.shape[0]}")
        geometry = StereoGeometry.from_projections(projection(left_info), projection(right_info))
        iterations = self._param("iterations")
        extra = [k for k in self._param("publish_iterations") if 1 <= k < iterations]
        t1 = time.perf_counter()
        result = self.estimator.estimate(left, right, iters=iterations, output_iters=extra)
        t2 = time.perf_counter()
        max_disp = self.estimator.max_disp if self.estimator.variant == "igev" else left.shape[1]
        threshold = self._param("flying_pixel_threshold") if self._param("filter_flying_pixels") else None
        products = depth_products(result.disparity, geometry, max_disparity=max_disp,
                                  min_depth=self._param("min_depth"), max_depth=self._param("max_depth"),
                                  flying_threshold=threshold)
        layout = CloudLayout(color=self._param("use_color"), avoid_padding=self._param("avoid_point_cloud_padding"))
        header = left_info.header
        cloud = cloud_message(products.points, left, layout, header)
        t3 = time.perf_counter()
        # Stage times before publishing, so a subscriber that reads them on arrival sees this frame's.
        self.stats.stages_ms = {"convert_in": 1e3 * (t1 - t0), "inference": 1e3 * (t2 - t1), "cloud": 1e3 * (t3 - t2)}
        self.stats.last_iterations = iterations
        self.pub_disparity.publish(self._disparity_message(products.disparity, geometry, header))
        self.pub_depth.publish(array_to_image(products.depth, "32FC1", header))
        # Colour range from this frame's own values (1st..99th percentile): the search range is far wider.
        color = colorize_disparity(np.where(products.disparity.valid, products.disparity.disparity, np.nan))
        self.pub_color.publish(array_to_image(color, "bgr8", header))
        self.pub_points.publish(cloud)
        for k, disparity in result.intermediate.items():
            iter_products = disparity_products(disparity, geometry, max_disparity=max_disp)
            self._iteration_publisher(k).publish(self._disparity_message(iter_products, geometry, header))
        t4 = time.perf_counter()

        if self.stats.resolution != left.shape[:2]:
            h, w = result.processed_size
            self.get_logger().info(f"resolution {left.shape[1]}x{left.shape[0]}, network at {w}x{h}")
            self.stats.resolution = left.shape[:2]
        self.stats.processed += 1
        self.stats.stages_ms.update(publish=1e3 * (t4 - t3), total=1e3 * (t4 - t0))

    def _disparity_message(self, products: DisparityProducts, geometry: StereoGeometry, header) -> DisparityImage:
        x, y, w, h = products.window
        return DisparityImage(header=header, image=array_to_image(products.disparity, "32FC1", header),
                              f=float(geometry.focal), t=float(geometry.baseline),
                              valid_window=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h),
                              min_disparity=products.min_disparity, max_disparity=products.max_disparity,
                              delta_d=DELTA_D)

    def _iteration_publisher(self, k: int):
        if k not in self.pub_iterations:
            self.pub_iterations[k] = self.create_publisher(
                DisparityImage, f"disparity/iter_{k}", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        return self.pub_iterations[k]

    # -- monitoring ----------------------------------------------------------------------------
    def _on_timer(self) -> None:
        now = time.monotonic()
        images_flowing = now - self._last_input_time < SYNC_WARN_AFTER_S
        sync_stalled = images_flowing and now - self._last_set_time > SYNC_WARN_AFTER_S
        if sync_stalled:
            stamps = self.sync.stats.last_stamps
            seen = [s for s in stamps if s is not None]
            described = ", ".join(f"{name} {s / 1e9:.6f}" if s is not None else f"{name} none"
                                  for name, s in zip(INPUTS, stamps))
            gap = (max(seen) - min(seen)) / 1e6 if len(seen) == len(stamps) else float("nan")
            self.get_logger().warn(
                f"no synchronised set for {now - self._last_set_time:.1f} s while inputs arrive; newest stamps: "
                f"{described} (spread {gap:.1f} ms). Exact sync needs identical stamps: check the camera "
                "driver, or set approximate_sync:=true", throttle_duration_sec=5.0)
        self.pub_diagnostics.publish(self._diagnostics(sync_stalled, now))

    def _diagnostics(self, sync_stalled: bool, now: float) -> DiagnosticArray:
        s = self.stats
        recent_error = s.last_error and now - s.last_error_time < 5.0
        level, message = DiagnosticStatus.OK, "running"
        if sync_stalled:
            level, message = DiagnosticStatus.WARN, "inputs arrive but do not synchronise"
        if recent_error:
            level, message = DiagnosticStatus.ERROR, f"input rejected: {s.last_error}"
        values = {"frames_processed": s.processed, "frames_dropped_stale": s.dropped,
                  "frames_rejected": s.rejected, "iterations": self._param("iterations"),
                  "model": self.estimator.variant, "device": str(self.estimator.device),
                  "last_frame_iterations": s.last_iterations,
                  **{f"{k}_ms": round(v, 1) for k, v in s.stages_ms.items()}}
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: stereo", message=message,
                                  hardware_id=str(self.estimator.device),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        return DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status])

    def destroy_node(self) -> None:
        with self._lock:
            self._running = False
            self._lock.notify()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
        super().destroy_node()


def spin_node(node_factory, args: list[str] | None = None) -> int:
    """rclpy.init, build the node (startup errors: one line, exit 1), spin until shutdown."""
    rclpy.init(args=args)
    try:
        try:
            node = node_factory()
        except (ValueError, OSError) as err:
            rclpy.logging.get_logger("sgru_ros").fatal(f"cannot start: {err}")
            return 1
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
    return 0


def main(args: list[str] | None = None) -> int:
    return spin_node(StereoNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
