"""stereo_node: rectified stereo in, Selective-Stereo disparity, depth, confidence and point cloud out.

Topics and parameters follow stereo_image_proc where they mean the same (see README). The node is
wiring: the parameter table (``parameters``), the input subscriptions (``inputs``), synchronisation
(``sync``), the backlog (``backlog``), the ROS-free frame pipeline (``pipeline``), the outputs
(``outputs``) and the diagnostics (``diagnostics``) do the work. ``StereoNode`` runs from start-up;
``StereoLifecycleNode`` is the same wiring as a managed node.

What keeps it cheap: the inputs are subscribed only while an output has a subscriber, and only
outputs with subscribers are computed.

What keeps it answering on a robot nobody watches:
- each input's reliability follows its publishers (``input_reliability``), so large images from a
  reliable camera are not lost in DDS fragments;
- a failed frame (bad input, out of memory, anything) is counted by kind, logged (throttled) and
  shown in /diagnostics; the next frame goes on;
- SIGINT/SIGTERM cancel the frame in progress between network stages, and nothing is published
  once shutdown has begun.
"""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo

from ..backlog import FrameBacklog
from ..confidence import earlier_iteration
from ..geometry import CloudLayout
from ..device import release_memory
from ..inference import InferenceCancelled, StereoEstimator
from ..pipeline import FrameResult, GeometryOptions, StereoPipeline, failure_kind
from ..sync import CalibratedStereoSync
from ..weights import DEFAULT_MODEL
from .conversions import (calibration_of, image_size, projection, raw_image_size, restamped, stamp_ns, stamp_text,
                          stereo_pair_to_rgb)
from .diagnostics import FailureLog, FrameStats, NodeState, diagnostic_array, stall_reason
from .inputs import INPUT_NAMES, StereoInputs
from .outputs import StereoOutputs
from .parameters import StereoParameters
from .raw_camera import RawStereoCamera
from .runtime import spin_node

#: Warn when images arrive but no synchronised set has formed for this long.
SYNC_WARN_AFTER_S = 3.0
#: How long shutdown waits for the frame in progress (it is cancelled at its next stage or iteration).
SHUTDOWN_WAIT_S = 1.0
#: How long a restart (activate after deactivate) or cleanup waits for a cancelled frame to leave the network.
RESTART_WAIT_S = 10.0
#: How often the inputs' publishers are looked up (their reliability decides the subscriptions').
INPUT_QOS_CHECK_S = 0.25
#: How long an image pair waits for its own camera_info before a static calibration answers it also without a
#: later image (a slow camera, the last frame of a stream). image_transport's camera publisher sends it just after
#: the image, but a busy executor can take it a good part of a second later.
CAMERA_INFO_GRACE_S = 0.5


class StereoWiring:
    """The node's ROS wiring, in the phases a managed (lifecycle) node goes through; mixed into
    ``StereoNode`` (all phases at start-up) and ``StereoLifecycleNode`` (phase per transition):

    - ``_setup``: parameters and inputs, every attribute (at construction);
    - ``_load``: the model, the publishers and the diagnostics timer (configure);
    - ``_start``: the input subscriptions and the inference thread (activate);
    - ``_stop``: unsubscribe and stop the thread, the frame in progress is cancelled (deactivate);
    - ``_unload``: free the model and destroy the publishers (cleanup).
    """

    def _setup(self) -> None:
        # One event per _start: set by _stop (deactivate, shutdown), the frame in progress stops at its next
        # stage and that start's worker ends; a later _start gets a fresh one, so an old worker never resumes.
        self._cancel = threading.Event()
        self._cancel.set()
        self._worker: threading.Thread | None = None
        self._backlog = FrameBacklog()
        self._input_timers: list = []  # while started: the inputs' QoS check, the camera_info grace
        self._diagnostics_timer = None
        self.estimator: StereoEstimator | None = None
        self.pipeline: StereoPipeline | None = None
        self.outputs: StereoOutputs | None = None
        self.pub_diagnostics = None
        self.params = StereoParameters(self)
        p = self.params
        self.stats = FrameStats(inputs=len(INPUT_NAMES))
        self.sync = self._new_sync()
        self._previous_disparity: np.ndarray | None = None  # for warm_start
        self._failures_logged = FailureLog()
        self._last_input_time = [-float("inf")] * len(INPUT_NAMES)
        self._mark_set()
        # SIGINT/SIGTERM shut the context down before spin() returns: stop publishing from that moment.
        self.context.on_shutdown(self._stop_worker)
        self.inputs = StereoInputs(self, p("image_transport"), p("input_reliability"), p("queue_size"),
                                   self._on_input, rectify=p("rectify"), prefer_color=p("prefer_color"))
        self.raw_camera = RawStereoCamera(self.inputs.topics[2:], self.get_logger().info) if p("rectify") else None

    def _load(self) -> None:
        p = self.params
        if p("threads"):
            torch.set_num_threads(p("threads"))
        # Every intermediate output a frame may want (publish_iterations, the confidence's earlier
        # iteration), whoever subscribes: under onnxruntime one graph per size returns them all.
        intermediate = {*p("publish_iterations"), earlier_iteration(p("iterations"))} - {None}
        self.estimator = StereoEstimator.from_checkpoint(
            p("model") or None, device=p("device"), precision=p("precision"), max_disp=p("max_disp"),
            max_width=p("max_width") or None, max_pixels=p("max_pixels") or None, engine=p("engine"),
            onnx_output_iters=sorted(intermediate), log=self.get_logger().info, compile=p("compile"),
            graphs=p("graphs"))
        self.pipeline = StereoPipeline(self.estimator)
        self.outputs = StereoOutputs(self)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(1.0, self._on_timer)
        self.get_logger().info(p.summary(self.estimator, self.inputs.topics))

    def _start(self) -> None:
        self.sync = self._new_sync()
        self._last_input_time = [-float("inf")] * len(INPUT_NAMES)
        self._mark_set()
        self._failures_logged = FailureLog()
        self._wait_for_worker(RESTART_WAIT_S)
        if self.busy:
            raise RuntimeError(f"the previous frame is still running after {RESTART_WAIT_S} s; try again")
        self._backlog = FrameBacklog()  # a fresh pace and camera period
        self._cancel = threading.Event()
        self._adapt_inputs()
        self._input_timers = [self.create_timer(INPUT_QOS_CHECK_S, self._adapt_inputs),
                              self.create_timer(CAMERA_INFO_GRACE_S / 5, lambda: self._push(self.sync.release()))]
        self._worker = threading.Thread(target=self._work, args=(self._cancel,), name="sgru_inference", daemon=True)
        self._worker.start()

    def _stop(self) -> None:
        self._stop_worker()
        self._wait_for_worker(SHUTDOWN_WAIT_S)
        if self.busy:
            self.get_logger().warning(f"frame in progress abandoned (not done after {SHUTDOWN_WAIT_S} s)")
        for timer in self._input_timers:
            self.destroy_timer(timer)
        self._input_timers = []
        self.inputs.unsubscribe()
        self._backlog.clear()

    def _unload(self) -> None:
        self._wait_for_worker(RESTART_WAIT_S)  # a cancelled frame still inside a network stage uses the model
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        self.outputs.destroy()
        self.destroy_publisher(self.pub_diagnostics)
        self.pipeline = self.estimator = self.outputs = self.pub_diagnostics = None
        gc.collect()

    def _end(self) -> None:
        """What destroy_node does first: stop (``_stop``) and let the cloud thread go."""
        self._stop()
        if self.outputs is not None:
            self.outputs.stop()

    # -- inputs --------------------------------------------------------------------------------
    def _mark_set(self) -> None:
        """A set formed (or the inputs start): the sync-stall clock and the counts since the last set start here."""
        self._last_set_time = time.monotonic()
        self._received_at_last_set = list(self.stats.received)
        self._without_info_at_last_set = self.sync.info_stats.without_info

    def _new_sync(self) -> CalibratedStereoSync:
        """Camera_infos kept as deep as their subscriptions (``StereoInputs``)."""
        queue_size = self.params("queue_size")
        return CalibratedStereoSync(queue_size, self.params.sync_tolerance_ns(), info_depth=10 * queue_size,
                                    grace_s=CAMERA_INFO_GRACE_S)

    def _adapt_inputs(self) -> None:
        """Inputs subscribed while any output has a subscriber, each with the reliability its publishers allow."""
        if not self.outputs.subscribers(self.params("publish_iterations")):
            if self.inputs.subscribed:
                self.inputs.unsubscribe()
                self.get_logger().info("no subscriber to any output: inputs unsubscribed until one subscribes")
            return
        if not self.inputs.subscribed:  # from idle: the sync-stall clock starts now, nothing before is answered
            self.sync.clear()
            self._mark_set()
        if self.inputs.adapt():  # other image topics: what waits for partners came from the old ones
            self.sync.clear()

    def _on_input(self, index: int, msg) -> None:
        self.stats.received[index] += 1
        self._last_input_time[index] = time.monotonic()
        stamp = stamp_ns(msg.header)
        self._push(self.sync.add_image(index, stamp, msg, raw_image_size(msg)) if index < 2
                   else self._add_info(index, msg))

    def _push(self, sets: list[list]) -> None:
        """Sets that formed, to the backlog (the inference thread takes them), each under its images' headers."""
        for left, right, left_info, right_info in sets:
            self.stats.sets += 1
            self._mark_set()
            complete = [left, right, restamped(left_info, left.header), restamped(right_info, right.header)]
            self.stats.dropped += self._backlog.push(complete, stamp_ns(left.header), self.params("queue_size"),
                                                     self.params("backlog_seconds"))

    def _add_info(self, index: int, msg: CameraInfo) -> list[list]:
        calibration, size = calibration_of(msg)
        return self.sync.add_info(index - 2, stamp_ns(msg.header), calibration, msg, size)

    # -- the inference thread ------------------------------------------------------------------
    def _work(self, cancel: threading.Event) -> None:
        """The inference thread of one _start: frames until ``cancel`` is set."""
        try:
            while (frame := self._backlog.pop(cancel)) is not None:
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
        """Count, log (each distinct reason at least once, then at most once per ERROR_HOLD_S) and remember a
        failed frame; returns its kind."""
        kind = failure_kind(err)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        now = time.monotonic()
        self.stats.errors[kind] += 1
        self.stats.last_error, self.stats.last_error_time = f"{kind}: {err}", now
        if self._failures_logged.should_log(kind, reason, now):
            self.get_logger().error(f"frame {stamp_text(stamp)} of {self.inputs.topics[0]} skipped ({kind}, "
                                    f"{self.stats.errors[kind]} so far): {reason}")
        return kind

    def _process(self, left_msg, right_msg, left_info: CameraInfo, right_info: CameraInfo,
                 cancel: threading.Event) -> None:
        """One synchronised set: messages -> ``StereoPipeline`` -> messages (only those subscribed)."""
        t0 = time.perf_counter()
        p, iterations = self.params, self.params("iterations")
        left, right = stereo_pair_to_rgb(left_msg, right_msg, p.max_decode_pixels())
        if self.raw_camera is not None:
            left, right, left_info, right_info = self.raw_camera.rectify(left, right, left_info, right_info)
        previous = self._previous_disparity if p("warm_start") else None  # the last frame's, same resolution only
        wanted = self.outputs.wanted()
        options = GeometryOptions(min_depth=p("min_depth"), max_depth=p("max_depth"),
                                  flying_pixel_threshold=p("flying_pixel_threshold") if p("filter_flying_pixels")
                                  else None, confidence_threshold=p("confidence_threshold"))
        t1 = time.perf_counter()
        frame = self.pipeline.process(
            left, right, projection(left_info), projection(right_info), iterations=iterations,
            extra_iterations=self.outputs.wanted_iterations([k for k in p("publish_iterations") if k < iterations]),
            depth=wanted["points2"] or wanted["depth/image_rect"], confidence=wanted["confidence"], options=options,
            calibrated_sizes=[image_size(info) for info in (left_info, right_info)], cancel=cancel,
            budget_ms=p("latency_budget_ms") or None, converged_px=p("convergence_threshold_px") or None,
            warm_start=previous if previous is not None and previous.shape == left.shape[:2] else None,
            init=p("init"), sgbm_disparities=p("sgbm_disparities"))
        t2 = time.perf_counter()
        if cancel.is_set():  # deactivation or shutdown began during this frame: publish nothing
            return
        layout = CloudLayout(color=p("use_color"), avoid_padding=p("avoid_point_cloud_padding"))
        self.outputs.publish(frame, left, left_info, wanted, layout)
        t3 = time.perf_counter()
        self._record(frame, left.shape[:2], {
            "convert_in": 1e3 * (t1 - t0) + frame.timings_ms["checks"], "inference": frame.timings_ms["inference"],
            "geometry": frame.timings_ms["geometry"], "publish": 1e3 * (t3 - t2), "total": 1e3 * (t3 - t0)})

    def _record(self, frame: FrameResult, size: tuple[int, int], stages_ms: dict[str, float]) -> None:
        """Statistics for /diagnostics, and one log line whenever the input resolution changes."""
        if self.stats.resolution != size:
            h, w = frame.processed_size
            if (h, w) == size:
                self.get_logger().info(f"resolution {w}x{h}, network at full size")
            else:
                self.get_logger().warning(
                    f"resolution {size[1]}x{size[0]}: downscaled to {w}x{h} for the network "
                    f"(max_pixels {self.estimator.max_pixels or 'none'}, max_width "
                    f"{self.estimator.max_width or 'none'}); the disparity is scaled back")
            self.stats.resolution = size
        self.stats.last_iterations = frame.iterations
        self._previous_disparity = frame.network_disparity if self.params("warm_start") else None
        self.stats.stages_ms = stages_ms  # one assignment: the diagnostics timer (executor thread) reads it
        self.stats.processed += 1  # after the times: a reader that sees the count sees that frame's times
        self._backlog.frame_done(stages_ms["total"] / 1e3)

    # -- monitoring ----------------------------------------------------------------------------
    def _on_timer(self) -> None:
        now = time.monotonic()
        sync_stalled = False
        if self._running and self.inputs.subscribed:  # idle or inactive: nothing is expected
            inputs_flowing = now - max(self._last_input_time) < SYNC_WARN_AFTER_S
            sync_stalled = inputs_flowing and now - self._last_set_time > SYNC_WARN_AFTER_S
            if sync_stalled:
                since = [n - m for n, m in zip(self.stats.received, self._received_at_last_set)]
                reason = stall_reason(self.inputs.topics, since,
                                      [*self.sync.images.stats.last_stamps, *self.sync.last_info_stamps],
                                      self.sync.images.stamp_spread_ns(), self.params("approximate_sync"),
                                      self.params("approximate_sync_tolerance_seconds"),
                                      self.sync.info_stats.without_info - self._without_info_at_last_set)
                self.get_logger().warning(f"no synchronised set for {now - self._last_set_time:.1f} s while inputs "
                                          f"arrive: {reason}", throttle_duration_sec=5.0)
        state = NodeState(running=self._running, worker_alive=self.busy, sync_stalled=sync_stalled,
                          subscribers=self.outputs.subscribers(self.params("publish_iterations")),
                          topics=self.inputs.topics, reliability=self.inputs.reliability,
                          unmatched=self.sync.images.stats.unmatched, repeated=self.sync.images.stats.repeated,
                          borrowed_info=self.sync.info_stats.borrowed_info,
                          without_info=self.sync.info_stats.without_info,
                          iterations=self.params("iterations"),
                          model=self.estimator.variant, weights=self.params("model") or DEFAULT_MODEL,
                          precision=self.estimator.precision, init=self.params("init"),
                          device=str(self.estimator.device))
        self.pub_diagnostics.publish(diagnostic_array(f"{self.get_fully_qualified_name()}: stereo", self.stats,
                                                      state, now, self.get_clock().now().to_msg()))

    def _stop_worker(self) -> None:
        """Publish nothing more and cancel the frame in progress at its next stage or iteration."""
        self._backlog.wake(self._cancel)

    def _wait_for_worker(self, seconds: float) -> None:
        if self._worker is not None:
            self._worker.join(timeout=seconds)

    @property
    def _running(self) -> bool:
        """Started and not stopped (active, for the lifecycle node)."""
        return not self._cancel.is_set()

    @property
    def busy(self) -> bool:
        """The inference thread is alive: inside a frame or waiting for one (after destroy_node: abandoned)."""
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


def main(args: list[str] | None = None) -> int:
    return spin_node(StereoNode, args)


def lifecycle_main(args: list[str] | None = None) -> int:
    return spin_node(StereoLifecycleNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
