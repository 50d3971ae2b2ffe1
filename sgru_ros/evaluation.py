"""Disparity error metrics and the classical baseline (OpenCV SGBM) they are compared with."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Metrics:
    """Errors over ground-truth-valid pixels where the method gave a value.

    epe: mean absolute error (px). bad1/bad2/bad3: % of pixels off by more
    than 1/2/3 px. d1: KITTI's D1, % off by more than 3 px and 5 % of the
    true value. density: % of ground-truth pixels the method gave a value for.
    """

    epe: float
    bad1: float
    bad2: float
    bad3: float
    d1: float
    density: float
    pixels: int


def disparity_metrics(prediction: np.ndarray, ground_truth: np.ndarray) -> Metrics:
    """prediction, ground_truth: H x W; non-finite values are "no value"."""
    if prediction.shape != ground_truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {ground_truth.shape} differ in size")
    known = np.isfinite(ground_truth)
    if not known.any():
        raise ValueError("ground truth has no valid pixel")
    scored = known & np.isfinite(prediction)
    err = np.abs(prediction[scored] - ground_truth[scored])
    gt = ground_truth[scored]
    pct = lambda mask: float(100.0 * mask.mean()) if mask.size else float("nan")  # noqa: E731
    return Metrics(epe=float(err.mean()) if err.size else float("nan"), bad1=pct(err > 1), bad2=pct(err > 2),
                   bad3=pct(err > 3), d1=pct((err > 3) & (err > 0.05 * gt)),
                   density=float(100.0 * scored.sum() / known.sum()), pixels=int(scored.sum()))


@dataclass(frozen=True)
class SGBMConfig:
    """OpenCV semi-global block matching as commonly configured (OpenCV's
    stereo_match sample): P1 = 8*3*b^2, P2 = 32*3*b^2 smoothness penalties,
    3-way dynamic programming, uniqueness 10 %, speckle filter 100 px / 2 px,
    left-right check 1 px. num_disparities must cover the scene's range.

    left_border: OpenCV gives no value to the first num_disparities columns (their search would leave the
    right image), 8.6 % of a 741-pixel-wide image at 64; with this set both images are first widened on the
    left by that many columns (their edge column repeated), so that those pixels are matched too (disparities
    that point past the right image's edge meet the repeated column). False: OpenCV's own map, those columns
    empty (as in stereo_image_proc's output)."""

    num_disparities: int = 64
    block_size: int = 3
    left_border: bool = True

    def matcher(self) -> cv2.StereoSGBM:
        if self.num_disparities <= 0 or self.num_disparities % 16:
            raise ValueError(f"SGBM num_disparities must be a positive multiple of 16, got {self.num_disparities}")
        b = self.block_size
        return cv2.StereoSGBM_create(minDisparity=0, numDisparities=self.num_disparities, blockSize=b,
                                     P1=8 * 3 * b * b, P2=32 * 3 * b * b, disp12MaxDiff=1, uniquenessRatio=10,
                                     speckleWindowSize=100, speckleRange=2, mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)


def sgbm_disparity(left: np.ndarray, right: np.ndarray, config: SGBMConfig = SGBMConfig()) -> np.ndarray:
    """H x W x 3 RGB uint8 pair -> H x W float32 disparity, NaN where SGBM gives none."""
    pad = config.num_disparities if config.left_border else 0
    if pad:
        left, right = (cv2.copyMakeBorder(image, 0, 0, pad, 0, cv2.BORDER_REPLICATE) for image in (left, right))
    raw = config.matcher().compute(left, right)[:, pad:].astype(np.float32) / 16.0  # fixed point, 4 fraction bits
    raw[raw < 0] = np.nan
    return raw


def sgbm_prior(left: np.ndarray, right: np.ndarray, config: SGBMConfig = SGBMConfig()) -> np.ndarray:
    """OpenCV SGBM's disparity made dense (``dense_prior``): a classical estimate for the GRU to start from
    (``init: sgbm``). H x W x 3 RGB uint8 pair -> H x W float32 (x_l - x_r), finite everywhere."""
    return dense_prior(sgbm_disparity(left, right, config))


#: Which map ``sgbm_prior`` returns: raise it whenever its output changes, so that what was cached from
#: the old map is made again (``training.edges``).
PRIOR_VERSION = 2


def dense_prior(disparity: np.ndarray) -> np.ndarray:
    """H x W disparity with holes (NaN) -> H x W finite: holes filled along their row (``fill_holes``), rows
    without any value along their column the same way; no value at all gives zeros (the network's own start)."""
    if not np.isfinite(disparity).any():
        return np.zeros(disparity.shape, np.float32)
    rows = fill_holes(disparity)
    return fill_holes(rows.T).T if not np.isfinite(rows).all() else rows


def fill_holes(disparity: np.ndarray) -> np.ndarray:
    """Fill each hole with the smaller of the nearest valid values to its left and to its right on the same
    row: the farther surface, which a hole beside a depth edge most often belongs to (a left-view map loses
    the background beside a nearer object to occlusion). Holes at a row's ends take the side they have; rows
    without any value stay NaN. A float map keeps its dtype; others become float32."""
    if not np.issubdtype(disparity.dtype, np.floating):
        disparity = disparity.astype(np.float32)
    from_left = _nearest_to_the_left(disparity)
    from_right = _nearest_to_the_left(disparity[:, ::-1])[:, ::-1]
    return np.fmin(from_left, from_right)


def _nearest_to_the_left(disparity: np.ndarray) -> np.ndarray:
    """Each pixel's own value where finite, else the nearest finite one to its left on the row (NaN where there
    is none)."""
    h, w = disparity.shape
    valid = np.isfinite(disparity)
    idx = np.where(valid, np.arange(w)[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    filled = disparity[np.arange(h)[:, None], idx]
    filled[~np.maximum.accumulate(valid, axis=1)] = np.nan  # no valid value at or left of the pixel
    return filled


#: Thresholds of the per-region breakdown (``region_masks``).
EDGE_JUMP_PX = 1.0  # a disparity step between neighbours larger than this is a depth edge
EDGE_BAND_PX = 3  # pixels within this distance of a depth edge are "edges"
SLANT_PX_PER_PX = 0.1  # |dd/dx| above this is a slanted surface
TEXTURE_STD = 8.0  # grey-level standard deviation in a 5x5 window above this is "textured"


def occluded_in_right(disparity: np.ndarray) -> np.ndarray:
    """H x W left-view disparity -> H x W bool: pixels whose match in the right
    view is hidden by a nearer surface. Pixel x lands at t(x) = x - d(x); a pixel
    further right that lands left of it (t(x2) < t(x) - 0.5) is nearer and covers it."""
    h, w = disparity.shape
    target = np.arange(w, dtype=np.float32)[None, :] - disparity
    target = np.where(np.isfinite(target), target, np.inf)
    # Smallest landing position among the pixels to the right of each pixel.
    right_min = np.minimum.accumulate(target[:, ::-1], axis=1)[:, ::-1]
    right_min = np.concatenate([right_min[:, 1:], np.full((h, 1), np.inf, np.float32)], axis=1)
    return np.isfinite(disparity) & (right_min < target - 0.5)


def region_masks(ground_truth: np.ndarray, left: np.ndarray) -> dict[str, np.ndarray]:
    """Where a matcher fails differs by region; these split the known pixels.

    ground_truth: H x W (non-finite = unknown); left: H x W x 3 RGB uint8.
    Returns H x W bool masks, each within the known pixels:
    - ``edges``: within EDGE_BAND_PX of a depth edge (a neighbour differs by > EDGE_JUMP_PX);
    - ``occluded``: not edges, hidden in the right view (``occluded_in_right``);
    - ``slanted``: neither, |dd/dx| > SLANT_PX_PER_PX (matching windows see foreshortening);
    - ``textured_fronto``: none of the above, local contrast > TEXTURE_STD (precision of matching);
    - ``weak_texture_fronto``: the rest (where matching is ambiguous).
    """
    known = np.isfinite(ground_truth)
    gt = np.where(known, ground_truth, np.nan).astype(np.float32)
    jump = np.zeros(gt.shape, bool)
    for axis in (0, 1):
        step = np.abs(np.diff(gt, axis=axis))
        big = step > EDGE_JUMP_PX  # (an unknown neighbour is no evidence of an edge)
        if axis == 0:
            jump[1:] |= big
            jump[:-1] |= big
        else:
            jump[:, 1:] |= big
            jump[:, :-1] |= big
    kernel = np.ones((2 * EDGE_BAND_PX + 1,) * 2, np.uint8)
    edges = (cv2.dilate((jump & known).astype(np.uint8), kernel) > 0) & known
    occluded = occluded_in_right(gt) & ~edges
    slope = np.abs(np.gradient(np.nan_to_num(gt), axis=1))
    slanted = known & ~edges & ~occluded & (slope > SLANT_PX_PER_PX)
    grey = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mean = cv2.blur(grey, (5, 5))
    std = np.sqrt(np.maximum(cv2.blur(grey * grey, (5, 5)) - mean * mean, 0))
    rest = known & ~edges & ~occluded & ~slanted
    return {"edges": edges, "occluded": occluded, "slanted": slanted, "textured_fronto": rest & (std > TEXTURE_STD),
            "weak_texture_fronto": rest & ~(std > TEXTURE_STD)}


def region_bad2(prediction: np.ndarray, ground_truth: np.ndarray, regions: dict[str, np.ndarray],
                ) -> dict[str, float]:
    """bad-2 (%) of ``prediction`` within each region, over the region's pixels where the
    prediction has a value (NaN if it has none there)."""
    out = {}
    for name, mask in regions.items():
        scored = mask & np.isfinite(prediction)
        err = np.abs(prediction[scored] - ground_truth[scored])
        out[name] = float(100.0 * (err > 2).mean()) if err.size else float("nan")
    return out
