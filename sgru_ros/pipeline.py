"""One stereo frame from rectified images to geometry, without ROS.

    pipeline = StereoPipeline(StereoEstimator.from_checkpoint(None))
    frame = pipeline.process(left_rgb, right_rgb, p_left, p_right, iterations=8)
    frame.disparity.disparity   # H x W published disparity d' (stereo_msgs/DisparityImage)
    frame.depth, frame.points   # H x W metres and H x W x 3 points, NaN where invalid
    frame.confidence            # H x W in [0, 1] when asked for (confidence=True)

The one place where a frame is checked, run through the network and turned
into disparity, depth and points: the node, the bag tool and the CLI call it
and only convert messages or files around it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .confidence import confidence_map, earlier_iteration
from .evaluation import SGBMConfig, sgbm_prior
from .geometry import DisparityProducts, StereoGeometry, depth_products, disparity_products
from .device import is_out_of_memory
from .inference import StereoEstimator


@dataclass(frozen=True)
class GeometryOptions:
    """Which disparities become points (and depth pixels): depth within
    [min_depth, max_depth] metres, and, unless ``flying_pixel_threshold`` is
    None, not on a depth edge (``geometry.depth_products``); with a
    ``confidence_threshold``, only confident disparities are valid at all."""

    min_depth: float = 0.0
    max_depth: float = 100.0
    flying_pixel_threshold: float | None = 1.0
    #: Disparities whose confidence (``confidence.confidence_map``) is below this are invalid
    #: in the disparity, depth and points too (0: off).
    confidence_threshold: float = 0.0


#: Where the GRU iterations start: the network's own estimate (IGEV's regressed cost volume, RAFT's zero),
#: or OpenCV SGBM's map with its holes filled (``evaluation.sgbm_prior``), which the network refines.
INITS = ("none", "sgbm")


@dataclass
class FrameResult:
    """One processed frame, all arrays H x W in the input's pixels.

    disparity: the published disparity (d' = d - (cx_l - cx_r)), its validity
        mask, valid window and range (``geometry.DisparityProducts``).
    depth: float32 metres, NaN where no point; None when not asked for.
    confidence: H x W float32 in [0, 1] (``confidence.confidence_map``), the
        estimated probability that the disparity is within 2 px; None when not
        asked for (and no confidence_threshold needed it).
    intermediate: the disparity after fewer iterations of the same pass.
    processed_size: (height, width) the network ran at (smaller when the
        estimator downscales large frames).
    iterations: GRU iterations run (fewer than asked when a latency budget or
        the convergence stop ended the pass early).
    network_disparity: H x W float32, the network's disparity d before any
        check or threshold (what a next frame can warm start from).
    timings_ms: 'checks', 'inference' and 'geometry' in milliseconds.
    """

    geometry: StereoGeometry
    disparity: DisparityProducts
    depth: np.ndarray | None
    confidence: np.ndarray | None
    intermediate: dict[int, DisparityProducts]
    processed_size: tuple[int, int]
    iterations: int
    network_disparity: np.ndarray
    timings_ms: dict[str, float]

    @property
    def points(self) -> np.ndarray | None:
        """H x W x 3 float32 in the left optical frame (x right, y down, z forward), NaN where
        invalid; None when depth was not asked for. Made from ``depth`` on each access (keep the
        result if you need it twice; the node never uses it: a cloud is packed from ``depth``
        directly, ``geometry.pack_cloud``)."""
        return None if self.depth is None else self.geometry.points(self.depth)

    @property
    def valid_fraction(self) -> float:
        """Share of pixels with a valid disparity."""
        return float(self.disparity.valid.mean())


def failure_kind(err: BaseException) -> str:
    """What a failed frame is counted as: bad_input, out_of_memory or the exception's class."""
    if is_out_of_memory(err):
        return "out_of_memory"
    return "bad_input" if isinstance(err, ValueError) else type(err).__name__


def check_frame(left: np.ndarray, right: np.ndarray,
                calibrated_sizes: Sequence[tuple[int, int] | None] = (None, None)) -> None:
    """Raise ValueError (one line) unless left and right are images of one size
    and each camera's calibrated (width, height) matches it; a size of None or
    (0, 0) means the calibration does not say."""
    if left.ndim < 2 or right.ndim < 2:
        raise ValueError(f"expected H x W (x 3) images, got shapes {left.shape} and {right.shape}")
    if left.shape != right.shape:
        raise ValueError(f"left image is {left.shape[1]}x{left.shape[0]} but right is "
                         f"{right.shape[1]}x{right.shape[0]}")
    for name, size in zip(("left", "right"), calibrated_sizes):
        if size is not None and tuple(size) not in ((left.shape[1], left.shape[0]), (0, 0)):
            raise ValueError(f"{name} camera_info is {size[0]}x{size[1]} but the images are "
                             f"{left.shape[1]}x{left.shape[0]}")


class StereoPipeline:
    """A StereoEstimator plus what turns its disparity into published products."""

    def __init__(self, estimator: StereoEstimator) -> None:
        self.estimator = estimator

    def max_disparity(self, width: int) -> float:
        """The largest disparity the network can give: IGEV's cost volume, else the image width."""
        return self.estimator.model.largest_disparity(width, self.estimator.max_disp)

    def process(self, left: np.ndarray, right: np.ndarray, p_left: np.ndarray, p_right: np.ndarray, *,
                iterations: int, extra_iterations: Sequence[int] = (), depth: bool = True,
                confidence: bool = False, options: GeometryOptions = GeometryOptions(),
                calibrated_sizes: Sequence[tuple[int, int] | None] = (None, None),
                cancel: threading.Event | None = None, budget_ms: float | None = None,
                converged_px: float | None = None, warm_start: np.ndarray | None = None, init: str = "none",
                sgbm_disparities: int = 64) -> FrameResult:
        """Check, run and turn one rectified pair into geometry.

        left, right: H x W x 3 RGB uint8 (or H x W mono). p_left, p_right: the
        cameras' 3 x 4 rectified projection matrices (camera_info P).
        extra_iterations: also keep the disparity after these counts (< iterations).
        depth: also compute depth, from which ``FrameResult.points`` follow (skip when nobody wants them).
        confidence: also compute the confidence (also done when options.confidence_threshold > 0).
        budget_ms, converged_px: end the GRU iterations early (``StereoEstimator.estimate``).
        warm_start: H x W disparity to start from (a previous frame's ``network_disparity``).
        init: without a warm start, where the iterations start (``INITS``); "sgbm" searches
        ``sgbm_disparities`` px (a multiple of 16) and its time counts as inference.
        Raises ValueError for bad input, InferenceCancelled once ``cancel`` is set.
        """
        t0 = time.perf_counter()
        check_frame(left, right, calibrated_sizes)
        geometry = StereoGeometry.from_projections(p_left, p_right)
        extra = sorted({k for k in extra_iterations if 1 <= k < iterations})
        confidence = confidence or options.confidence_threshold > 0
        earlier = earlier_iteration(iterations) if confidence else None
        if init not in INITS:
            raise ValueError(f"init {init!r} is not one of {', '.join(INITS)}")
        t1 = time.perf_counter()
        if warm_start is None and init == "sgbm":
            warm_start = sgbm_prior(left, right, SGBMConfig(num_disparities=sgbm_disparities))
        result = self.estimator.estimate(left, right, iters=iterations, cancel=cancel, budget_ms=budget_ms,
                                         converged_px=converged_px, disp_init=warm_start,
                                         output_iters=sorted(set(extra) | ({earlier} if earlier else set())))
        t2 = time.perf_counter()
        max_disp = self.max_disparity(left.shape[1])
        disparity = result.disparity
        confidence_values = None
        if confidence:
            confidence_values = confidence_map(left, right, disparity, result.intermediate.get(earlier))
            if options.confidence_threshold > 0:
                disparity = np.where(confidence_values >= options.confidence_threshold, disparity, np.nan)
        if depth:
            products = depth_products(disparity, geometry, max_disparity=max_disp,
                                      min_depth=options.min_depth, max_depth=options.max_depth,
                                      flying_threshold=options.flying_pixel_threshold)
            disparity, depth_map = products.disparity, products.depth
        else:
            disparity, depth_map = disparity_products(disparity, geometry, max_disp), None
        intermediate = {k: disparity_products(result.intermediate[k], geometry, max_disp)
                        for k in extra if k in result.intermediate}
        t3 = time.perf_counter()
        return FrameResult(geometry=geometry, disparity=disparity, depth=depth_map, confidence=confidence_values,
                           intermediate=intermediate, processed_size=result.processed_size,
                           iterations=result.iterations, network_disparity=result.disparity,
                           timings_ms={"checks": 1e3 * (t1 - t0), "inference": 1e3 * (t2 - t1),
                                       "geometry": 1e3 * (t3 - t2)})
