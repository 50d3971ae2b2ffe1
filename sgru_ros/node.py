"""stereo_node: rectified stereo in, Selective-Stereo disparity, depth, confidence and point cloud out.

Topics and parameters follow stereo_image_proc where they mean the same
(see README). The node is wiring: synchronisation (``sync``) and the frame
pipeline (``pipeline``) do the work. ``StereoNode`` runs from start-up;
``StereoLifecycleNode`` is the same wiring as a managed node.

What keeps it cheap: the inputs are subscribed only while an output has a
subscriber, and only outputs with subscribers are computed.

What keeps it answering on a robot nobody watches:
- each input's reliability follows its publishers (``input_reliability``),
  so large images from a reliable camera are not lost in DDS fragments;
- a failed frame (bad input, out of memory, anything) is counted by kind,
  logged (throttled) and shown in /diagnostics; the next frame goes on;
- SIGINT/SIGTERM cancel the frame in progress between network stages, and
  nothing is published once shutdown has begun.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSPolicyKind, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from .confidence import earlier_iteration
from .geometry import CloudLayout, StereoGeometry
from .inference import ENGINES, MAX_ITERATIONS, PRECISIONS, InferenceCancelled, StereoEstimator, release_memory
from .pipeline import FrameResult, GeometryOptions, StereoPipeline, failure_kind
from .ros_conversions import array_to_image, cloud_message, disparity_message, image_to_rgb, projection, stamp_ns
from .sync import StereoSynchronizer
from .visualize import colorize_disparity

#: Warn when images arrive but no synchronised set has formed for this long.
SYNC_WARN_AFTER_S = 3.0
#: A frame error keeps /diagnostics at ERROR (and its kind is logged at most once) for this long.
ERROR_HOLD_S = 10.0
#: How long shutdown waits for the frame in progress (it is cancelled at its next stage or iteration).
SHUTDOWN_WAIT_S = 1.0
#: How long a restart (activate after deactivate) or cleanup waits for a cancelled frame to leave the network.
RESTART_WAIT_S = 10.0
#: How often the inputs' publishers are looked up (their reliability decides the subscriptions').
INPUT_QOS_CHECK_S = 0.25
#: Pixels above which frames are downscaled before the network: a 4000 x 3000 frame at full size
#: peaks near 6 GB; 1920 x 1080 (2.07 MP) still runs at full size.
DEFAULT_MAX_PIXELS = 2_500_000

#: Outputs: reliable, with ROS 2's default history of 10, so that frames published in a burst survive a
#: subscriber that acknowledges late (a reliable writer overwrites unacknowledged samples once its
#: history is full). A history of 3 lost 1-4 of 30 disparities at 1280x720 on a CPU where the node
#: works through a backlog at 30 frames per second.
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

#: The inputs by their default names (images first); ``StereoWiring._resolve_inputs`` gives the topics.
INPUT_NAMES = ("left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info")
IMAGE_TRANSPORTS = ("raw", "compressed")
#: Outputs, relative to the node's namespace (README: Topics).
OUTPUTS = {"disparity": DisparityImage, "points2": PointCloud2, "depth/image_rect": Image,
           "depth/camera_info": CameraInfo, "confidence": Image, "disparity/color": Image}
RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
INPUT_RELIABILITY = ("auto", *RELIABILITY)


@dataclass
class FrameStats:
    received: list[int] = field(default_factory=lambda: [0] * len(INPUT_NAMES))  # messages per input
    sets: int = 0  # synchronised sets formed
    processed: int = 0
    dropped: int = 0  # complete sets dropped as stale before inference could take them
    errors: Counter = field(default_factory=Counter)  # failed frames by kind (bad_input, out_of_memory, ...)
    last_error: str = ""
    last_error_time: float = -float("inf")
    worker_error: str = ""  # why the inference thread stopped, if it did
    stages_ms: dict[str, float] = field(default_factory=dict)
    last_iterations: int = 0
    resolution: tuple[int, int] | None = None


class StereoWiring:
    """The node's ROS wiring, in the phases a managed (lifecycle) node goes through; mixed into
    ``StereoNode`` (all phases at start-up) and ``StereoLifecycleNode`` (phase per transition):

    - ``_setup``: parameters (at construction);
    - ``_load``: the model, the publishers and the diagnostics timer (configure);
    - ``_start``: the input subscriptions and the inference thread (activate);
    - ``_stop``: unsubscribe and stop the thread, the frame in progress is cancelled (deactivate);
    - ``_unload``: free the model and destroy the publishers (cleanup).
    """

    # -- phases --------------------------------------------------------------------------------
    def _setup(self) -> None:
        # Worker state first: destroy_node() must work even if the rest fails.
        self._lock = threading.Condition()
        self._pending: deque[list] = deque()  # synchronised sets waiting for the worker, oldest first
        # One event per _start: set by _stop (deactivate, shutdown), the frame in progress stops at its next
        # stage and that start's worker ends; a later _start gets a fresh one, so an old worker never resumes.
        self._cancel = threading.Event()
        self._cancel.set()
        self._worker: threading.Thread | None = None
        # Packs and publishes each frame's cloud beside the other outputs (``_process``).
        self._cloud_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgru_cloud")
        self._timers: list = []
        self.estimator: StereoEstimator | None = None
        self._declare_parameters()
        reason = self._invalid_combination({})
        if reason:
            raise ValueError(reason)
        self.add_on_set_parameters_callback(self._validate_parameters)
        # SIGINT/SIGTERM shut the context down before spin() returns: stop publishing from that moment.
        self.context.on_shutdown(self._stop_worker)
        self._input_topics = self._resolve_inputs()
        self._inputs = [self._input_reliability_choice(topic) for topic in self._input_topics]

    def _load(self) -> None:
        p = self._param
        max_width, max_pixels = p("max_width"), p("max_pixels")
        if p("threads"):
            torch.set_num_threads(p("threads"))
        # Every intermediate output a frame may want (publish_iterations, the confidence's earlier
        # iteration), whoever subscribes: under onnxruntime one graph per size returns them all.
        intermediate = {*p("publish_iterations"), earlier_iteration(p("iterations"))} - {None}
        self.estimator = StereoEstimator.from_checkpoint(
            p("model") or None, device=p("device"), precision=p("precision"), max_disp=p("max_disp"),
            max_width=max_width or None, max_pixels=max_pixels or None, engine=p("engine"),
            onnx_output_iters=sorted(intermediate), log=self.get_logger().info, compile=p("compile"),
            graphs=p("graphs"))
        self.pipeline = StereoPipeline(self.estimator)
        overrides = QoSOverridingOptions.with_default_policies()
        self.outputs = {name: self.create_publisher(msg_type, name, OUTPUT_QOS, qos_overriding_options=overrides)
                        for name, msg_type in OUTPUTS.items()}
        self.pub_iterations: dict[int, object] = {}
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.stats = FrameStats()
        self._previous_disparity: np.ndarray | None = None  # for warm_start
        self._cloud_data: dict = {}  # CloudLayout -> the last published cloud's data, filled again next frame
        self._timers.append(self.create_timer(1.0, self._on_timer))
        model = p("model") or "bundled default"
        params = sum(t.numel() for t in self.estimator.model.parameters()) / 1e6
        self.get_logger().info(
            f"model {self.estimator.variant} ({model}, {params:.1f} M parameters), device {self.estimator.device}, "
            f"precision {self.estimator.precision}, engine {p('engine')}{' (compiled)' if p('compile') else ''}"
            f"{' (CUDA graphs)' if p('graphs') else ''}, "
            f"iterations {p('iterations')}"
            f"{self._iteration_limits()}, max_width "
            f"{max_width or 'none'}, max_pixels {max_pixels or 'none'}, "
            f"{'approximate' if p('approximate_sync') else 'exact'} sync, {p('image_transport')} images, input "
            f"reliability {p('input_reliability')}; inputs {', '.join(self._input_topics)} (subscribed while an "
            "output has a subscriber)")

    def _iteration_limits(self) -> str:
        p = self._param
        limits = [f"budget {p('latency_budget_ms'):g} ms" if p("latency_budget_ms") else "",
                  f"converged below {p('convergence_threshold_px'):g} px" if p("convergence_threshold_px") else ""]
        return f" (at most; {', '.join(x for x in limits if x)})" if any(limits) else ""

    def _start(self) -> None:
        p = self._param
        tolerance = p("approximate_sync_tolerance_seconds")
        self.sync = StereoSynchronizer(len(INPUT_NAMES), p("queue_size"),
                                       round(tolerance * 1e9) if p("approximate_sync") else None)
        self._frame_seconds = 0.0  # recent time per frame (moving average; 0: none yet), for the backlog
        self._camera_period = 0.0  # recent stamp difference of consecutive sets (moving average)
        self._last_set_stamp: int | None = None
        self._last_input_time = [-float("inf")] * len(INPUT_NAMES)
        self._last_set_time = time.monotonic()
        self._received_at_last_set = list(self.stats.received)
        self._error_logged: dict[str, float] = {}
        self._subscriptions_by_input: list = [None] * len(INPUT_NAMES)
        self._input_reliability: list[ReliabilityPolicy | None] = [None] * len(INPUT_NAMES)
        self._wait_for_worker(RESTART_WAIT_S)
        if self.busy:
            raise RuntimeError(f"the previous frame is still running after {RESTART_WAIT_S} s; try again")
        self._cancel = threading.Event()
        self._adapt_inputs()
        self._input_timer = self.create_timer(INPUT_QOS_CHECK_S, self._adapt_inputs)
        self._worker = threading.Thread(target=self._work, args=(self._cancel,), name="sgru_inference", daemon=True)
        self._worker.start()

    def _stop(self) -> None:
        self._stop_worker()
        self._wait_for_worker(SHUTDOWN_WAIT_S)
        if self.busy:
            self.get_logger().warning(f"frame in progress abandoned (not done after {SHUTDOWN_WAIT_S} s)")
        if getattr(self, "_input_timer", None) is not None:
            self.destroy_timer(self._input_timer)
            self._input_timer = None
        self._unsubscribe_inputs()
        with self._lock:
            self._pending.clear()

    def _unload(self) -> None:
        self._wait_for_worker(RESTART_WAIT_S)  # a cancelled frame still inside a network stage uses the model
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers.clear()
        for pub in [*self.outputs.values(), *self.pub_iterations.values(), self.pub_diagnostics]:
            self.destroy_publisher(pub)
        self.outputs, self.pub_iterations = {}, {}
        self.pipeline = self.estimator = None
        self._cloud_data = {}
        gc.collect()

    # -- parameters ---------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        def declare(name, default, description, **limits):
            declare_checked(self, name, default, description, **limits)

        declare("queue_size", 10, "Messages kept per input, by the subscription and for synchronisation (reliable "
                "DDS delivers the four topics with up to a few hundred ms of skew)", read_only=True,
                integer_range=(1, 100))
        declare("approximate_sync", False, "Match inputs by nearest stamp instead of identical stamps",
                read_only=True)
        declare("approximate_sync_tolerance_seconds", 0.02, "Largest stamp spread of an approximate set",
                read_only=True, float_range=(0.0, 10.0))
        declare("backlog_seconds", 0.5, "Synchronised sets wait for inference while the node could work through "
                "them within one camera period plus this time at its recent pace; older ones are dropped as stale",
                float_range=(0.0, 10.0))
        declare("image_transport", "raw", "raw: sensor_msgs/Image on <camera>/image_rect; compressed: "
                "sensor_msgs/CompressedImage (JPEG/PNG) on <camera>/image_rect/compressed", read_only=True,
                choices=IMAGE_TRANSPORTS)
        declare("use_color", True, "Colour the point cloud from the left image (rgb field)")
        declare("avoid_point_cloud_padding", False, "16-byte points (no padding after xyz) instead of 32")
        declare("model", "", "Checkpoint file (the authors' .pth or this package's); empty: bundled weights",
                read_only=True)
        declare("max_disp", 192, "Selective-IGEV cost-volume range in processed pixels (multiple of 32)",
                read_only=True, integer_range=(32, 1024, 32))
        declare("input_reliability", "auto", "Reliability of the input subscriptions: auto follows the publishers "
                "(reliable when all are), or force reliable / best_effort", read_only=True,
                choices=INPUT_RELIABILITY)
        declare("iterations", 8, "GRU refinement iterations per frame (more: finer, slower)",
                integer_range=(1, MAX_ITERATIONS))
        self.declare_parameter("publish_iterations", Parameter.Type.INTEGER_ARRAY, ParameterDescriptor(
            description="Also publish disparity/iter_K for these K < iterations (same pass)",
            type=ParameterType.PARAMETER_INTEGER_ARRAY))
        declare("latency_budget_ms", 0.0, "Stop the GRU iterations of a frame once another would end its network "
                "pass later than this after it began (at least one runs; 0: off; torch engine)",
                float_range=(0.0, 60000.0))
        declare("convergence_threshold_px", 0.0, "Stop the GRU iterations once one changes the disparity by less "
                "than this on average, in pixels (0: off; torch engine)", float_range=(0.0, 100.0))
        declare("warm_start", False, "Start each frame's GRU iterations from the previous frame's disparity "
                "(video: fewer iterations for the same accuracy when the view changes little; torch engine)")
        declare("engine", "torch", "torch, or onnxruntime (an ONNX file per camera resolution, built on first use "
                "and cached; fixed iterations)", read_only=True, choices=ENGINES)
        declare("compile", False, "torch engine: compile the per-frame encoders with torch.compile (needs a C++ "
                "compiler on the CPU; the first frame of each camera size takes seconds to a minute and cannot be "
                "cancelled midway)", read_only=True)
        declare("graphs", False, "torch engine on CUDA: capture the pass of each camera size and iteration count as "
                "a CUDA graph and replay it per frame (frames with warm_start, latency_budget_ms or "
                "convergence_threshold_px run eagerly)", read_only=True)
        declare("device", "auto", "auto, cpu, cuda or cuda:N", read_only=True)
        declare("precision", "fp32", "fp32, fp16 (CUDA) or bf16", read_only=True, choices=PRECISIONS)
        declare("threads", 0, "CPU threads of the network (0: PyTorch's default, one per core); fewer leave "
                "cores to DDS and the other nodes", read_only=True, integer_range=(0, 1024))
        declare("max_width", 0, "Downscale wider images to this width before the network (0: never)",
                read_only=True, integer_range=(0, 16384))
        declare("max_pixels", DEFAULT_MAX_PIXELS, "Downscale frames with more pixels than this before the network "
                "(memory budget; 0: never)", read_only=True, integer_range=(0, 1 << 30))
        geometry = GeometryOptions()
        declare("confidence_threshold", geometry.confidence_threshold, "Disparities with a confidence below this "
                "are invalid in disparity, depth/image_rect and points2 (0: off; see the confidence topic)",
                float_range=(0.0, 1.0))
        declare("min_depth", geometry.min_depth, "Points nearer than this (m) are left out of points2 and depth",
                float_range=(0.0, 1000.0))
        declare("max_depth", geometry.max_depth, "Points farther than this (m) are left out of points2 and depth",
                float_range=(0.0, 100000.0))
        declare("filter_flying_pixels", True, "Drop points on depth discontinuities (see README)")
        declare("flying_pixel_threshold", geometry.flying_pixel_threshold,
                "Disparity range (px) in a 3x3 window that marks a flying pixel", float_range=(0.0, 100.0))

    def _param(self, name: str):
        if name == "publish_iterations":  # declared without a value: unset means none
            try:
                return list(self.get_parameter(name).value or [])
            except ParameterUninitializedException:
                return []
        return self.get_parameter(name).value

    def _invalid_combination(self, new: dict) -> str:
        """Why the parameters, with ``new`` values replacing current ones, do not fit together ('' if they do)."""
        get = lambda name: new.get(name, self._param(name))  # noqa: E731
        iterations = get("iterations")
        bad = [k for k in get("publish_iterations") or [] if not 1 <= k < iterations]
        if bad:
            return f"publish_iterations {bad} must lie in 1..{iterations - 1} (below iterations {iterations})"
        if not get("min_depth") < get("max_depth"):
            return f"min_depth {get('min_depth')} must be below max_depth {get('max_depth')}"
        if get("engine") == "onnxruntime" and (get("latency_budget_ms") or get("convergence_threshold_px")
                                               or get("warm_start")):
            return ("latency_budget_ms, convergence_threshold_px and warm_start need engine torch (onnxruntime "
                    "runs fixed iterations from the network's own start)")
        if get("engine") == "onnxruntime" and get("compile"):
            return "compile needs engine torch (onnxruntime optimises its own graph)"
        if get("graphs") and (get("engine") != "torch" or get("compile")):
            return "graphs need engine torch without compile (a CUDA graph replays the eager pass)"
        return ""

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Run-time changes: ranges are checked by rclpy from the descriptors, combinations here
        (only when a parameter of one is being set, so unrelated declarations never fail)."""
        new = {p.name: p.value for p in params}
        if self._param("engine") == "onnxruntime" and new.keys() & {"iterations", "publish_iterations"}:
            return SetParametersResult(successful=False, reason=(
                "iterations and publish_iterations are fixed in the ONNX graph under engine onnxruntime; "
                "restart the node to change them"))
        if not new.keys() & {"iterations", "publish_iterations", "min_depth", "max_depth", "latency_budget_ms",
                             "convergence_threshold_px", "warm_start"}:
            return SetParametersResult(successful=True)
        reason = self._invalid_combination(new)
        return SetParametersResult(successful=not reason, reason=reason)

    # -- inputs --------------------------------------------------------------------------------
    def _resolve_inputs(self) -> list[str]:
        """The four input topics, as image_transport's camera subscriber finds them: each camera_info
        is the sibling of its image topic (``-r left/image_rect:=/cam/left/image_rect_color`` also moves
        it to /cam/left/camera_info) unless camera_info is remapped itself; compressed images are on
        ``<image>/compressed``."""
        images = [self.resolve_topic_name(name) for name in INPUT_NAMES[:2]]
        infos = []
        for image, name in zip(images, INPUT_NAMES[2:]):
            remapped = self.resolve_topic_name(name)
            infos.append(remapped if remapped != self.resolve_topic_name(name, only_expand=True)
                         else f"{image.rsplit('/', 1)[0]}/camera_info")
        if self._param("image_transport") == "compressed":
            images = [f"{image}/compressed" for image in images]
        return images + infos

    def _input_type(self, index: int):
        if index >= 2:
            return CameraInfo
        return CompressedImage if self._param("image_transport") == "compressed" else Image

    def _input_reliability_choice(self, topic: str) -> str:
        """'auto', 'reliable' or 'best_effort' for one input: the standard QoS override parameter
        ``qos_overrides.<topic>.subscription.reliability`` when given, else ``input_reliability``."""
        name = f"qos_overrides.{topic}.subscription.reliability"
        value = self.declare_parameter(name, Parameter.Type.STRING, ParameterDescriptor(
            description=f"reliability of the {topic} subscription; unset: input_reliability decides",
            read_only=True)).value
        if value is None:
            return self._param("input_reliability")
        if value not in RELIABILITY:
            raise ValueError(f"parameter {name}: {value!r} is not one of {', '.join(RELIABILITY)}")
        return value

    def _input_depth(self, index: int) -> int:
        """History of an input subscription: it must absorb a burst of messages that arrive while
        the executor is busy (reliable DDS repairs arrive in bursts). A camera_info is a few hundred
        bytes, so its history is deep; an image's is queue_size."""
        return self._param("queue_size") * (10 if index >= 2 else 1)

    def _output_subscribers(self) -> int:
        """Subscriptions to the outputs, disparity/iter_K of publish_iterations included (counted by
        topic: their publishers are created with the first frame that has a subscriber)."""
        return (sum(pub.get_subscription_count() for pub in self.outputs.values())
                + sum(self.count_subscribers(f"disparity/iter_{k}") for k in self._param("publish_iterations")))

    def _adapt_inputs(self) -> None:
        """Subscribe the inputs while any output has a subscriber (as stereo_image_proc does: no
        images are taken, decoded or run without a consumer), and (re)subscribe each input whose
        wanted reliability changed. In 'auto' it is reliable when every publisher of the topic is (a
        best-effort subscriber to a reliable publisher loses large images whenever one DDS fragment
        is lost), else best-effort, which matches any publisher."""
        if not self._output_subscribers():
            if any(self._subscriptions_by_input):
                self._unsubscribe_inputs()
                self.get_logger().info("no subscriber to any output: inputs unsubscribed until one subscribes")
            return
        if not any(self._subscriptions_by_input):  # from idle: the sync-stall clock starts now, not at the last set
            self._last_set_time = time.monotonic()
            self._received_at_last_set = list(self.stats.received)
        for index, (topic, choice) in enumerate(zip(self._input_topics, self._inputs)):
            if choice == "auto":
                # With no publisher yet, reliable (the common camera-driver default) is kept; a
                # best-effort publisher then switches the input over before it loses anything.
                publishers = self.get_publishers_info_by_topic(topic)
                reliable = all(info.qos_profile.reliability == ReliabilityPolicy.RELIABLE for info in publishers)
                wanted = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
            else:
                wanted = RELIABILITY[choice]
            if wanted == self._input_reliability[index]:
                continue
            if self._subscriptions_by_input[index] is not None:
                self.destroy_subscription(self._subscriptions_by_input[index])
                self.get_logger().info(f"{topic}: publishers changed, subscribing {wanted.name.lower()}")
            qos = QoSProfile(history=qos_profile_sensor_data.history, durability=qos_profile_sensor_data.durability,
                             depth=self._input_depth(index), reliability=wanted)
            # History and depth stay overridable the standard way; reliability is handled above.
            overrides = QoSOverridingOptions([QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH])
            self._subscriptions_by_input[index] = self.create_subscription(
                self._input_type(index), topic, lambda msg, i=index: self._on_input(i, msg), qos,
                qos_overriding_options=overrides)
            self._input_reliability[index] = wanted

    def _unsubscribe_inputs(self) -> None:
        for index, subscription in enumerate(getattr(self, "_subscriptions_by_input", [])):
            if subscription is not None:
                self.destroy_subscription(subscription)
            self._subscriptions_by_input[index] = None
            self._input_reliability[index] = None

    def _on_input(self, index: int, msg) -> None:
        self.stats.received[index] += 1
        self._last_input_time[index] = time.monotonic()
        complete = self.sync.add(index, stamp_ns(msg.header), msg)
        if complete is None:
            return
        self.stats.sets += 1
        self._last_set_time = time.monotonic()
        self._received_at_last_set = list(self.stats.received)
        stamp = stamp_ns(complete[0].header)
        if self._last_set_stamp is not None and stamp > self._last_set_stamp:
            self._camera_period = _moving_average(self._camera_period, (stamp - self._last_set_stamp) / 1e9)
        self._last_set_stamp = stamp
        with self._lock:
            self._pending.append(complete)
            # Sets wait only while the worker could get through them within one camera period plus
            # backlog_seconds at its recent pace: DDS delivers in bursts (reliable repairs), which a
            # fast node absorbs, while a node slower than the camera keeps just the newest set.
            allowed = self._param("queue_size")
            if self._frame_seconds:
                allowed = min(allowed, max(1, int((self._param("backlog_seconds") + self._camera_period)
                                                  / self._frame_seconds)))
            while len(self._pending) > allowed:
                self._pending.popleft()
                self.stats.dropped += 1
            self._lock.notify()

    def _work(self, cancel: threading.Event) -> None:
        """The inference thread of one _start: frames until ``cancel`` is set."""
        try:
            while True:
                with self._lock:
                    while not self._pending and not cancel.is_set():
                        self._lock.wait(timeout=0.5)
                    if cancel.is_set():
                        return
                    frame = self._pending.popleft()
                failure = ""
                try:
                    self._process(*frame, cancel=cancel)
                except InferenceCancelled:
                    return
                except Exception as err:  # noqa: BLE001 -- any failure of one frame must leave the node running
                    if cancel.is_set() or not self.context.ok():
                        return  # shutting down: publishing into a closed context is expected to fail
                    failure = self._frame_failed(stamp_ns(frame[2].header), err)
                if failure == "out_of_memory":  # after the except block: its traceback held the frame's tensors
                    release_memory(self.estimator.device)
        except BaseException as err:
            self.stats.worker_error = f"{type(err).__name__}: {err}"
            self.get_logger().fatal(f"inference thread stopped: {self.stats.worker_error}")
            raise

    def _frame_failed(self, stamp: int, err: Exception) -> str:
        """Count, log (once per kind and ERROR_HOLD_S) and remember a failed frame; returns its kind."""
        kind = failure_kind(err)
        now = time.monotonic()
        self.stats.errors[kind] += 1
        self.stats.last_error, self.stats.last_error_time = f"{kind}: {err}", now
        if now - self._error_logged.get(kind, -float("inf")) >= ERROR_HOLD_S:  # once per kind and period
            self._error_logged[kind] = now
            self.get_logger().error(f"frame {stamp / 1e9:.6f} skipped ({kind}, {self.stats.errors[kind]} so far): "
                                    f"{str(err).splitlines()[0] if str(err) else type(err).__name__}")
        return kind

    # -- processing ----------------------------------------------------------------------------
    def _process(self, left_msg, right_msg, left_info: CameraInfo, right_info: CameraInfo,
                 cancel: threading.Event) -> None:
        """One synchronised set: messages -> ``StereoPipeline`` -> messages (only those subscribed)."""
        t0 = time.perf_counter()
        left, right = image_to_rgb(left_msg), image_to_rgb(right_msg)
        # Only what somebody subscribes to is computed (a cloud costs tens of ms per frame).
        wanted = {name: pub.get_subscription_count() > 0 for name, pub in self.outputs.items()}
        p, iterations = self._param, self._param("iterations")
        # Intermediate iterations too: the network upsamples only those somebody subscribes to.
        extra = [k for k in p("publish_iterations") if k < iterations
                 and self._iteration_publisher(k).get_subscription_count()]
        options = GeometryOptions(min_depth=p("min_depth"), max_depth=p("max_depth"),
                                  flying_pixel_threshold=p("flying_pixel_threshold") if p("filter_flying_pixels")
                                  else None, confidence_threshold=p("confidence_threshold"))
        t1 = time.perf_counter()
        frame = self.pipeline.process(
            left, right, projection(left_info), projection(right_info), iterations=iterations,
            extra_iterations=extra, depth=wanted["points2"] or wanted["depth/image_rect"],
            confidence=wanted["confidence"], options=options,
            calibrated_sizes=[(info.width, info.height) for info in (left_info, right_info)], cancel=cancel,
            budget_ms=p("latency_budget_ms") or None, converged_px=p("convergence_threshold_px") or None,
            warm_start=self._warm_start_from(left.shape[:2]))
        t2 = time.perf_counter()
        if cancel.is_set():  # deactivation or shutdown began during this frame: publish nothing
            return
        # The cloud (10 MB at 640x480) is packed and published on its own thread while this one
        # sends the other outputs, as stereo_image_proc's disparity and point cloud nodes run side
        # by side in a multi-threaded container; the frame ends when both are out.
        cloud_sent = None
        if wanted["points2"]:
            layout = CloudLayout(color=p("use_color"), avoid_padding=p("avoid_point_cloud_padding"))
            cloud_sent = self._cloud_thread.submit(self._publish_cloud, frame.depth, frame.geometry, left, layout,
                                                   left_info.header)
        try:
            self._publish(frame, left_info, wanted)
        finally:  # wait for the cloud; an exception of the other outputs comes first
            cloud_error = cloud_sent.exception() if cloud_sent is not None else None
        if cloud_error is not None:
            raise cloud_error  # fails the frame like any other
        t3 = time.perf_counter()
        self._record(frame, left.shape[:2], {
            "convert_in": 1e3 * (t1 - t0) + frame.timings_ms["checks"], "inference": frame.timings_ms["inference"],
            "geometry": frame.timings_ms["geometry"], "publish": 1e3 * (t3 - t2), "total": 1e3 * (t3 - t0)})

    def _publish_cloud(self, depth: np.ndarray, geometry: StereoGeometry, left: np.ndarray, layout: CloudLayout,
                       header: Header) -> None:
        """Pack and publish points2 (on the cloud thread). The previous frame's cloud was
        published (copied by rclpy) before this frame began: its buffer is filled again."""
        cloud = cloud_message(depth, geometry, left, layout, header, reuse=self._cloud_data.get(layout))
        self.outputs["points2"].publish(cloud)
        self._cloud_data = {layout: cloud.data}

    def _publish(self, frame: FrameResult, left_info: CameraInfo, wanted: dict[str, bool]) -> None:
        """Every subscribed output but the cloud."""
        header, out = left_info.header, self.outputs
        if wanted["disparity"]:
            out["disparity"].publish(disparity_message(frame.disparity, frame.geometry, header))
        if frame.depth is not None and wanted["depth/image_rect"]:
            out["depth/image_rect"].publish(array_to_image(frame.depth, "32FC1", header))
        if wanted["depth/camera_info"] or wanted["depth/image_rect"]:
            out["depth/camera_info"].publish(left_info)  # REP 118: the depth image is in the left camera's pixels
        if frame.confidence is not None and wanted["confidence"]:
            out["confidence"].publish(array_to_image(frame.confidence, "32FC1", header))
        if wanted["disparity/color"]:
            # Colour range from this frame's own values (1st..99th percentile): the search range is far wider.
            color = colorize_disparity(frame.disparity.disparity, valid=frame.disparity.valid)
            out["disparity/color"].publish(array_to_image(color, "bgr8", header))
        for k, products in frame.intermediate.items():
            self._iteration_publisher(k).publish(disparity_message(products, frame.geometry, header))

    def _record(self, frame: FrameResult, size: tuple[int, int], stages_ms: dict[str, float]) -> None:
        """Statistics for /diagnostics, and one log line whenever the input resolution changes."""
        if self.stats.resolution != size:
            h, w = frame.processed_size
            if (h, w) == size:
                self.get_logger().info(f"resolution {w}x{h}, network at full size")
            else:
                self.get_logger().warning(
                    f"resolution {size[1]}x{size[0]}: downscaled to {w}x{h} for the network "
                    f"(max_pixels {self.estimator.max_pixels or 'none'}, max_width {self.estimator.max_width or 'none'});"
                    " the disparity is scaled back")
            self.stats.resolution = size
        self.stats.last_iterations = frame.iterations
        self._previous_disparity = frame.network_disparity if self._param("warm_start") else None
        self.stats.processed += 1
        self.stats.stages_ms = stages_ms  # one assignment: the diagnostics timer (executor thread) reads it
        self._frame_seconds = _moving_average(self._frame_seconds, stages_ms["total"] / 1e3)

    def _warm_start_from(self, size: tuple[int, int]) -> np.ndarray | None:
        """The previous frame's disparity when warm_start is on and the resolution is unchanged."""
        previous = self._previous_disparity
        if previous is None or not self._param("warm_start") or previous.shape != size:
            return None
        return previous

    def _iteration_publisher(self, k: int):
        if k not in self.pub_iterations:
            self.pub_iterations[k] = self.create_publisher(
                DisparityImage, f"disparity/iter_{k}", OUTPUT_QOS)
        return self.pub_iterations[k]

    # -- monitoring ----------------------------------------------------------------------------
    def _on_timer(self) -> None:
        now = time.monotonic()
        sync_stalled = False
        if self._running and any(self._subscriptions_by_input):  # idle or inactive: nothing is expected
            inputs_flowing = now - max(self._last_input_time) < SYNC_WARN_AFTER_S
            sync_stalled = inputs_flowing and now - self._last_set_time > SYNC_WARN_AFTER_S
            if sync_stalled:
                self.get_logger().warning(f"no synchronised set for {now - self._last_set_time:.1f} s while inputs "
                                          f"arrive: {self._stall_reason()}", throttle_duration_sec=5.0)
        self.pub_diagnostics.publish(self._diagnostics(sync_stalled, now))

    def _stall_reason(self) -> str:
        """Which inputs are missing messages, or whose stamps differ, and what would help."""
        topics = self._input_topics
        since = [n - m for n, m in zip(self.stats.received, self._received_at_last_set)]
        counts = ", ".join(f"{t} {n}" for t, n in zip(topics, since))
        missing = [t for t, n in zip(topics, since) if n == 0]
        if missing:
            return (f"nothing received on {', '.join(missing)} (messages since the last set: {counts}); check that "
                    "they are published, with a compatible QoS, in this ROS_DOMAIN_ID")
        spread = self.sync.stamp_spread_ns()
        stamps = ", ".join(f"{t} {s / 1e9:.6f}" for t, s in zip(topics, self.sync.stats.last_stamps))
        tolerance = self._param("approximate_sync_tolerance_seconds")
        enough = math.ceil(spread / 1e6) / 1e3 if spread else 0.0  # seconds, rounded up to the millisecond
        if self._param("approximate_sync"):
            if spread > round(tolerance * 1e9):
                return (f"newest stamps {stamps} spread {spread / 1e6:.1f} ms, more than "
                        f"approximate_sync_tolerance_seconds {tolerance:g}; a tolerance of at least "
                        f"{enough:.3f} would match them")
        elif spread > 0:
            return (f"newest stamps {stamps} differ by up to {spread / 1e6:.1f} ms; exact sync needs identical stamps: "
                    f"fix the camera driver, or set approximate_sync:=true with approximate_sync_tolerance_seconds "
                    f">= {enough:.3f}")
        return (f"every input arrives and stamps can match, but no complete set forms (messages since the last set: "
                f"{counts}): messages are being lost on the way; see the input reliability in /diagnostics")

    def _diagnostics(self, sync_stalled: bool, now: float) -> DiagnosticArray:
        s = self.stats
        recent_error = now - s.last_error_time < ERROR_HOLD_S
        worker_alive = self._worker is not None and self._worker.is_alive()
        subscribers = self._output_subscribers()
        level, message = DiagnosticStatus.OK, "running"
        if not self._running:
            message = "inactive (lifecycle): not processing"
        elif not subscribers:
            message = "idle: no subscriber to any output, inputs not subscribed"
        if sync_stalled:
            level, message = DiagnosticStatus.WARN, "inputs arrive but do not synchronise"
        if recent_error:
            level, message = DiagnosticStatus.ERROR, f"frame skipped: {s.last_error.splitlines()[0]}"
        if not worker_alive and self._running:
            level, message = DiagnosticStatus.ERROR, f"inference thread stopped: {s.worker_error or 'unknown'}"
        topics = self._input_topics
        reliability = getattr(self, "_input_reliability", [None] * len(topics))
        values = {"frames_processed": s.processed, "frames_dropped_stale": s.dropped,
                  "frames_failed": sum(s.errors.values()),
                  **{f"frames_failed_{kind}": n for kind, n in sorted(s.errors.items())},
                  "output_subscribers": subscribers,
                  "sets_formed": s.sets,
                  **{f"received {t}": n for t, n in zip(topics, s.received)},
                  **({f"unmatched {t}": n for t, n in zip(topics, self.sync.stats.unmatched)}
                     if hasattr(self, "sync") else {}),
                  **{f"reliability {t}": (r.name.lower() if r else "none") for t, r in zip(topics, reliability)},
                  "inference_thread": "running" if worker_alive else "stopped",
                  "iterations": self._param("iterations"),
                  "model": self.estimator.variant, "device": str(self.estimator.device),
                  "last_frame_iterations": s.last_iterations,
                  **{f"{k}_ms": round(v, 1) for k, v in s.stages_ms.items()}}
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: stereo", message=message,
                                  hardware_id=str(self.estimator.device),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        return DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status])

    def _stop_worker(self) -> None:
        """Publish nothing more and cancel the frame in progress at its next stage or iteration."""
        with self._lock:
            self._cancel.set()
            self._lock.notify()

    def _end(self) -> None:
        """What destroy_node does first: stop (``_stop``) and let the cloud thread go."""
        self._stop()
        self._cloud_thread.shutdown(wait=False)  # idle unless an abandoned frame still runs

    def _wait_for_worker(self, seconds: float) -> None:
        if self._worker is not None:
            self._worker.join(timeout=seconds)

    @property
    def _running(self) -> bool:
        """Started and not stopped (active, for the lifecycle node)."""
        return not self._cancel.is_set()

    @property
    def busy(self) -> bool:
        """The inference thread is still inside a frame (after destroy_node: it was abandoned)."""
        return self._worker is not None and self._worker.is_alive()


class StereoNode(StereoWiring, Node):
    """The stereo node: configured and processing from construction on (``stereo_node``)."""

    def __init__(self, **kwargs) -> None:
        Node.__init__(self, "sgru_stereo", **kwargs)
        self._setup()
        self._load()
        self._start()

    def destroy_node(self) -> None:
        """Stop publishing at once, cancel the frame in progress and wait briefly for it."""
        self._end()
        super().destroy_node()


class StereoLifecycleNode(StereoWiring, LifecycleNode):
    """The managed variant (``stereo_lifecycle_node``) for stacks that bring nodes up with a
    lifecycle manager: configure loads the model and creates the publishers, activate subscribes
    and processes, deactivate stops processing, cleanup frees the model."""

    def __init__(self, **kwargs) -> None:
        LifecycleNode.__init__(self, "sgru_stereo", **kwargs)
        self._setup()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._load()
        except (ValueError, OSError, RuntimeError) as err:  # a bad model or device: configure fails, one line
            self.get_logger().error(f"configure failed: {str(err).splitlines()[0]}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._start()
        except RuntimeError as err:  # the previous frame has not left the network yet
            self.get_logger().error(f"activate failed: {err}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("active: processing")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self.get_logger().info("inactive: not processing")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unload()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        if self.estimator is not None:
            self._unload()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: stop and free everything, so the node is unconfigured for real."""
        self.get_logger().error(f"error in state {state.label}: stopping and unloading")
        return self.on_shutdown(state)

    def destroy_node(self) -> None:
        self._end()
        super().destroy_node()


def _moving_average(average: float, value: float) -> float:
    """Exponential moving average (weight 0.2 for the new value); 0 means no value yet."""
    return value if not average else 0.8 * average + 0.2 * value


def declare_checked(node: Node, name: str, default, description: str, *, read_only: bool = False,
                    integer_range: tuple[int, ...] | None = None, float_range: tuple[float, float] | None = None,
                    choices: tuple[str, ...] = ()):
    """Declare a parameter with its descriptor (range or choices); a start-up value of the wrong
    type or out of range raises ValueError in one line: name, the reason, what is allowed."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    allowed = type(default).__name__
    if integer_range:
        step = integer_range[2] if len(integer_range) > 2 else 1
        descriptor.integer_range = [IntegerRange(from_value=integer_range[0], to_value=integer_range[1], step=step)]
        allowed = f"an integer in {integer_range[0]}..{integer_range[1]}" + (f", step {step}" if step > 1 else "")
    if float_range:
        descriptor.floating_point_range = [FloatingPointRange(from_value=float_range[0], to_value=float_range[1],
                                                              step=0.0)]
        allowed = f"a number in {float_range[0]:g}..{float_range[1]:g}"
    if choices:
        allowed = "one of " + ", ".join(choices)
        descriptor.additional_constraints = allowed
    try:
        value = node.declare_parameter(name, default, descriptor).value
    except ParameterException as err:  # rclpy: "<message>. Reason: <reason>: <name>"
        reason = str(err).split("Reason: ")[-1].splitlines()[0].removesuffix(f": {name}")
        raise ValueError(f"parameter {name}: {reason}; allowed: {allowed}") from None
    if choices and value not in choices:
        raise ValueError(f"parameter {name}: {value!r} is not {allowed}")
    return value


def spin_node(node_factory, args: list[str] | None = None) -> int:
    """rclpy.init, build the node (startup errors: one line, returns 1), spin until SIGINT/SIGTERM,
    then end the process (status 0)."""
    # rclpy.init installs rclpy's SIGINT/SIGTERM handlers over these: the first signal shuts the
    # context down (spin returns), and every signal is handed on to the handler underneath. With
    # that one ignoring, a second signal cannot interrupt the shutdown with a KeyboardInterrupt:
    # Ctrl-C on ros2 launch reaches a node twice (the terminal signals the whole process group,
    # and launch forwards its own SIGINT).
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    rclpy.init(args=args)
    try:
        try:
            node = node_factory()
        except (ValueError, OSError, RuntimeError, ParameterException) as err:  # one line, no traceback
            if not rclpy.ok():  # SIGINT/SIGTERM during start-up: nothing failed
                return 0
            rclpy.logging.get_logger("sgru_ros").fatal(f"cannot start: {str(err).splitlines()[0]}")
            return 1
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except RCLError:
            if rclpy.ok():
                raise
            # A signal shut the context down while the executor built its wait set: rclpy raises
            # this instead of ExternalShutdownException.
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
    # The node, its DDS participant and rclpy are shut down: leave without the interpreter's
    # finalization, after what of it ROS logging needs. PyTorch's teardown alone takes a second
    # here (launch and a robot's shutdown wait for it) and does nothing a stopped node needs; and
    # while a network stage longer than the shutdown wait still runs in its thread, finalization
    # under it would abort.
    _close_ros_logging()
    os._exit(0)


def _close_ros_logging() -> None:
    """Close ROS logging as a clean rclpy shutdown and the interpreter's exit would.

    After a signal, rclpy's handler shut the context down itself and try_shutdown skips closing
    the logging, so the log file under ~/.ros/log (written every 5 s) would lose its last lines;
    console output through C stdio (RCUTILS_LOGGING_USE_STDOUT=1) is flushed at exit only."""
    context = rclpy.get_default_context()
    try:
        with context._lock:  # the step of rclpy's own shutdown (Context._cleanup) that was skipped
            context._logging_fini()
    except Exception:  # noqa: BLE001 -- a later rclpy without this private step must not break shutdown
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to load by name (not Linux or macOS)
        pass


def main(args: list[str] | None = None) -> int:
    return spin_node(StereoNode, args)


def lifecycle_main(args: list[str] | None = None) -> int:
    return spin_node(StereoLifecycleNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
