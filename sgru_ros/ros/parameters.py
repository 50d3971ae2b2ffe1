"""The stereo node's parameter table: each parameter declared with its descriptor (range, choices,
read-only), read back, and the combinations rclpy cannot check checked at start-up and on every change."""

from __future__ import annotations

import math

from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy

from ..device import PRECISIONS
from ..inference import ENGINES, MAX_ITERATIONS, StereoEstimator
from ..options import OPTION_HELP
from ..pipeline import INITS, GeometryOptions
from ..weights import DEFAULT_MODEL
from .runtime import allowed_values, declare_checked

#: Pixels above which frames are downscaled before the network: a 4000 x 3000 frame at full size
#: peaks near 6 GB; 1920 x 1080 (2.07 MP) still runs at full size.
DEFAULT_MAX_PIXELS = 2_500_000
#: Compressed images whose header claims more than this many times max_pixels are not decoded.
DECODE_LIMIT_FACTOR = 16
IMAGE_TRANSPORTS = ("raw", "compressed")
RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
INPUT_RELIABILITY = ("auto", *RELIABILITY)
#: Parameters that may change at run time and take part in a combination check.
_CHECKED_AT_RUN_TIME = frozenset({"iterations", "publish_iterations", "min_depth", "max_depth", "latency_budget_ms",
                                  "convergence_threshold_px", "warm_start", "init"})


class StereoParameters:
    """Declares the stereo node's parameters on ``node`` and reads them: ``params("iterations")``.

    Raises ValueError (one line: the parameter, the reason, what is allowed) for a start-up value
    out of range or a combination that does not fit; run-time changes that do not fit are refused
    with the reason."""

    def __init__(self, node: Node) -> None:
        self._node = node
        declare_stereo_parameters(node)
        reason = self.invalid_combination({})
        if reason:
            raise ValueError(reason)
        warning = self.misused_model({})
        if warning:
            node.get_logger().warning(warning)
        node.add_on_set_parameters_callback(self.validate)
        node.add_pre_set_parameters_callback(self._log_refusals)

    def __call__(self, name: str):
        if name == "publish_iterations":  # declared without a value: unset means none
            try:
                return list(self._node.get_parameter(name).value or [])
            except ParameterUninitializedException:
                return []
        return self._node.get_parameter(name).value

    def max_decode_pixels(self) -> int | None:
        """Compressed images are decoded at full size before max_pixels downscales them: those whose header
        claims more than DECODE_LIMIT_FACTOR times max_pixels are refused undecoded (None: max_pixels 0)."""
        return DECODE_LIMIT_FACTOR * self("max_pixels") or None

    def sync_tolerance_ns(self) -> float | None:
        """The synchroniser's tolerance: None for exact sync; for approximate sync a tolerance of 0 means no bound
        (the nearest stamps), as stereo_image_proc reads it."""
        if not self("approximate_sync"):
            return None
        seconds = self("approximate_sync_tolerance_seconds")
        return round(seconds * 1e9) if seconds > 0 else math.inf

    def summary(self, estimator: StereoEstimator, topics: list[str]) -> str:
        """The node's one start-up line: model, device, precision, engine, iterations and their limits, sizes,
        sync, transport and inputs."""
        p = self
        millions = sum(t.numel() for t in estimator.model.parameters()) / 1e6
        limits = [f"budget {p('latency_budget_ms'):g} ms" if p("latency_budget_ms") else "",
                  f"converged below {p('convergence_threshold_px'):g} px" if p("convergence_threshold_px") else ""]
        iteration_limits = f" (at most; {', '.join(x for x in limits if x)})" if any(limits) else ""
        return (f"model {estimator.variant} ({p('model') or DEFAULT_MODEL}, {millions:.1f} M parameters), device "
                f"{estimator.device}, precision {estimator.precision}, engine {p('engine')}"
                f"{' (compiled)' if p('compile') else ''}{' (CUDA graphs)' if p('graphs') else ''}, "
                f"iterations {p('iterations')}{iteration_limits}, max_width {p('max_width') or 'none'}, "
                f"max_pixels {p('max_pixels') or 'none'}, {'approximate' if p('approximate_sync') else 'exact'} sync, "
                f"{p('image_transport')} images{' (image_raw, rectified here)' if p('rectify') else ''}, "
                f"input reliability {p('input_reliability')}; inputs {', '.join(topics)} "
                "(subscribed while an output has a subscriber)")

    def misused_model(self, new: dict) -> str:
        """A combination that works but sees worse than the defaults, with ``new`` values replacing current ones
        ('' if none): the bundled fast model from the network's own start."""
        if self("model") == "fast" and new.get("init", self("init")) == "none":
            return ("model fast is meant for init sgbm: from its own start it sees much worse than the compact model "
                    "(Motorcycle bad-2 16.2 against 12.0 % at 8 iterations; docs/model_card_fast.md)")
        return ""

    def invalid_combination(self, new: dict) -> str:
        """Why the parameters, with ``new`` values replacing current ones, do not fit together ('' if they do)."""
        get = lambda name: new.get(name, self(name))  # noqa: E731
        iterations = get("iterations")
        bad = [k for k in get("publish_iterations") or [] if not 1 <= k < iterations]
        if bad:
            return f"publish_iterations {bad} must lie in 1..{iterations - 1} (below iterations {iterations})"
        if not get("min_depth") < get("max_depth"):
            return f"min_depth {get('min_depth')} must be below max_depth {get('max_depth')}"
        if get("engine") == "onnxruntime" and (get("latency_budget_ms") or get("convergence_threshold_px")
                                               or get("warm_start") or get("init") != "none"):
            return ("latency_budget_ms, convergence_threshold_px, warm_start and init need engine torch (onnxruntime "
                    "runs fixed iterations from the network's own start)")
        if get("engine") == "onnxruntime" and get("compile"):
            return "compile needs engine torch (onnxruntime optimises its own graph)"
        if get("graphs") and (get("engine") != "torch" or get("compile")):
            return "graphs need engine torch without compile (a CUDA graph replays the eager pass)"
        return ""

    def _refusal(self, param: Parameter) -> str:
        """Why rclpy will refuse this change before ``validate`` sees it ('' if it will not): a value of another
        type, or outside the declared range."""
        if not self._node.has_parameter(param.name):
            return ""
        try:
            current = self._node.get_parameter(param.name)
        except ParameterUninitializedException:  # publish_iterations before a value: rclpy checks its type
            return ""
        descriptor = self._node.describe_parameter(param.name)
        allowed = allowed_values(descriptor, current.value)
        if descriptor.read_only:
            return "read-only (set it at start-up)"
        if current.type_ != Parameter.Type.NOT_SET and param.type_ != current.type_:
            return f"not {allowed}"
        ranges = descriptor.integer_range or descriptor.floating_point_range
        if ranges and not ranges[0].from_value <= param.value <= ranges[0].to_value:
            return f"not {allowed}"
        return ""

    def _log_refusals(self, params: list[Parameter]) -> list[Parameter]:
        """Before rclpy checks types and ranges: one log line per change it will refuse, naming the
        parameter, the value and what is allowed (the caller gets rclpy's own reason)."""
        for param in params:
            reason = self._refusal(param)
            if reason:
                self._node.get_logger().warning(f"parameter change refused: {param.name} = {param.value!r}: {reason}")
        return params

    def validate(self, params: list[Parameter]) -> SetParametersResult:
        """Run-time changes: ranges are checked by rclpy from the descriptors, combinations here
        (only when a parameter of one is being set, so unrelated declarations never fail)."""
        new = {p.name: p.value for p in params}
        reason = ""
        if self("engine") == "onnxruntime" and new.keys() & {"iterations", "publish_iterations"}:
            reason = ("iterations and publish_iterations are fixed in the ONNX graph under engine onnxruntime; "
                      "restart the node to change them")
        elif new.keys() & _CHECKED_AT_RUN_TIME:
            reason = self.invalid_combination(new)
        if reason:
            self._node.get_logger().warning("parameter change refused: "
                                            + ", ".join(f"{k} = {v!r}" for k, v in new.items()) + f": {reason}")
        elif "init" in new and (warning := self.misused_model(new)):
            self._node.get_logger().warning(warning)
        return SetParametersResult(successful=not reason, reason=reason)


def declare_stereo_parameters(node: Node) -> None:
    """The table (README: Parameters); ``declare_checked`` raises for a bad start-up value."""
    def declare(name, default, description, **limits):
        declare_checked(node, name, default, description, **limits)

    _declare_input_parameters(declare)
    _declare_network_parameters(node, declare)
    _declare_output_parameters(declare)


def _declare_input_parameters(declare) -> None:
    """Which images, how they are matched, and how long they may wait."""
    declare("queue_size", 5, "Images kept per input, by the subscription and for synchronisation, as "
            "stereo_image_proc's, and image pairs waiting for their camera_infos (camera_infos: ten times as many; "
            "raise it when the left and right images arrive more frames apart than this)",
            read_only=True, integer_range=(1, 100))
    declare("approximate_sync", False, "Match the images, and each with its camera_info, by nearest stamp instead "
            "of identical stamps",
            read_only=True)
    declare("approximate_sync_tolerance_seconds", 0.02, "Largest stamp spread of an approximate set (0: no bound, "
            "the nearest stamps, as stereo_image_proc)",
            read_only=True, float_range=(0.0, 10.0))
    declare("backlog_seconds", 0.5, "Synchronised sets wait for inference while the node could work through "
            "them within one camera period plus this time at its recent pace; older ones are dropped as stale",
            float_range=(0.0, 10.0))
    declare("image_transport", "raw", "raw: sensor_msgs/Image on <camera>/image_rect; compressed: "
            "sensor_msgs/CompressedImage (JPEG/PNG) on <camera>/image_rect/compressed", read_only=True,
            choices=IMAGE_TRANSPORTS)
    declare("rectify", False, "Subscribe <camera>/image_raw and rectify each image with its camera_info's D, K, R "
            "and P (plumb_bob, rational_polynomial or equidistant; Bayer demosaiced first), as image_proc does",
            read_only=True)
    declare("prefer_color", True, "Take <camera>/image_rect_color instead of <camera>/image_rect while both "
            "cameras publish it (image_proc's layout: image_rect is the mono image)", read_only=True)
    declare("input_reliability", "auto", "Reliability of the input subscriptions: auto follows the publishers "
            "(reliable when all are), or force reliable / best_effort", read_only=True,
            choices=INPUT_RELIABILITY)


def _declare_network_parameters(node: Node, declare) -> None:
    """The model, where and how it runs, and its iterations."""
    declare("model", "", OPTION_HELP["model"] + f"; empty: {DEFAULT_MODEL}", read_only=True)
    declare("max_disp", 192, OPTION_HELP["max_disp"], read_only=True, integer_range=(32, 1024, 32))
    declare("iterations", 8, "GRU refinement iterations per frame (more: finer, slower)",
            integer_range=(1, MAX_ITERATIONS))
    node.declare_parameter("publish_iterations", Parameter.Type.INTEGER_ARRAY, ParameterDescriptor(
        description="Also publish disparity/iter_K for these K < iterations (same pass)",
        type=ParameterType.PARAMETER_INTEGER_ARRAY))
    declare("latency_budget_ms", 0.0, "Stop the GRU iterations of a frame once another and the final "
            "upsampling would end its network pass later than this after it began (at least one runs; 0: off; "
            "torch engine)",
            float_range=(0.0, 60000.0))
    declare("convergence_threshold_px", 0.0, "Stop the GRU iterations once one changes the disparity by less "
            "than this on average, in pixels (0: off; torch engine)", float_range=(0.0, 100.0))
    declare("warm_start", False, "Start each frame's GRU iterations from the previous frame's disparity "
            "(video: fewer iterations for the same accuracy when the view changes little; torch engine)")
    declare("init", "none", "Where each frame's GRU iterations start: none (the network's own estimate) or sgbm "
            "(OpenCV SGBM's map, holes filled, refined by the network; torch engine)", choices=INITS)
    declare("sgbm_disparities", 64, "SGBM's search range in px for init sgbm (multiple of 16; cost grows with it)",
            integer_range=(16, 1024, 16))
    declare("engine", "torch", OPTION_HELP["engine"], read_only=True, choices=ENGINES)
    declare("compile", False, OPTION_HELP["compile"], read_only=True)
    declare("graphs", False, OPTION_HELP["graphs"], read_only=True)
    declare("device", "auto", OPTION_HELP["device"], read_only=True)
    declare("precision", "fp32", OPTION_HELP["precision"], read_only=True, choices=PRECISIONS)
    declare("threads", 0, OPTION_HELP["threads"] + " (0: PyTorch's default, one per core)", read_only=True,
            integer_range=(0, 1024))
    declare("max_width", 0, OPTION_HELP["max_width"] + " (0: never)", read_only=True, integer_range=(0, 16384))
    declare("max_pixels", DEFAULT_MAX_PIXELS, "Downscale frames with more pixels than this before the network "
            "(memory budget; 0: never)", read_only=True, integer_range=(0, 1 << 30))


def _declare_output_parameters(declare) -> None:
    """What becomes of the disparity: points, depth, colour and their filters."""
    declare("use_color", True, "Colour the point cloud from the left image (rgb field)")
    declare("avoid_point_cloud_padding", False, "16-byte points (no padding after xyz) instead of 32")
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
