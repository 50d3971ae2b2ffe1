"""Per-pixel confidence of a disparity map, from what the network computes anyway. No ROS.

Neither the authors' checkpoints nor the bundled one have a confidence head,
so confidence is derived from three cues that are cheap at run time and mean
the same for every Selective-Stereo model:

- convergence: |d_N - d_N/2|, how far the disparity still moved over the
  second half of the GRU iterations. The refinement is a fixed-point
  iteration (Lipson et al., RAFT-Stereo §3.3); where the matching cost has a
  clear minimum it settles in a few steps, where it is ambiguous (occlusions,
  repetitive or weak texture) it keeps wandering.
- edge: the disparity range (max - min) in a 5 x 5 window. Learned stereo
  smooths across depth edges, so pixels next to one are often off by several
  pixels (the model card's by-region table: edges hold over half the errors).
- photometric: the right image warped to the left by the disparity, compared
  with the left over 5 x 5 windows after removing each window's mean (so a
  gain difference between the cameras does not count). A wrong disparity or
  a pixel hidden in the right view (occlusion) rarely matches.

They are combined by logistic regression into the probability that the
disparity is within 2 px of the truth:

    confidence = sigmoid(b + w_c log(1 + convergence) + w_e log(1 + edge) + w_p log(1 + photometric))

The weights were fit by ``scripts/fit_confidence.py`` on synthetic scenes
only (``training.synthetic``, a seed no training run uses) with the bundled
model at 8 iterations; the Motorcycle pair is never used to fit them.
``sgru-stereo eval --motorcycle --sparsification`` measures how well the
ranking separates good from bad pixels (docs/confidence.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: The shares of pixels a sparsification table keeps, most confident first.
SPARSIFICATION_FRACTIONS = (1.0, 0.9, 0.75, 0.5)
#: Window (px) of the edge and photometric cues.
WINDOW = 5


@dataclass(frozen=True)
class ConfidenceModel:
    """Logistic-regression weights of the three cues (each enters as log(1 + cue))."""

    bias: float = 4.646
    convergence: float = -2.379
    edge: float = -0.151
    photometric: float = -1.092


#: Fit by scripts/fit_confidence.py (synthetic scenes, bundled model, 8 iterations).
DEFAULT_MODEL = ConfidenceModel()


def earlier_iteration(iterations: int) -> int | None:
    """The iteration count whose disparity the convergence cue compares with (half of
    ``iterations``); None for a single iteration, where there is nothing to compare."""
    return iterations // 2 if iterations >= 2 else None


def confidence_cues(left: np.ndarray, right: np.ndarray, disparity: np.ndarray,
                    earlier: np.ndarray | None) -> dict[str, np.ndarray]:
    """The three cues, H x W float32 each (0 = best).

    left, right: H x W x 3 RGB uint8 (or H x W mono). disparity: H x W, the
    network's final disparity d in left-image pixels (NaN allowed). earlier:
    the same pass after fewer iterations (``earlier_iteration``), or None (the
    convergence cue is then 0).
    """
    if disparity.shape != left.shape[:2] or right.shape[:2] != left.shape[:2]:
        raise ValueError(f"confidence needs images and disparity of one size, got {left.shape[:2]}, "
                         f"{right.shape[:2]} and {disparity.shape}")
    d = np.nan_to_num(disparity.astype(np.float32, copy=False), nan=0.0)
    convergence = np.zeros_like(d) if earlier is None else np.abs(d - np.nan_to_num(earlier, nan=0.0))
    kernel = np.ones((WINDOW, WINDOW), np.uint8)
    edge = cv2.dilate(d, kernel) - cv2.erode(d, kernel)
    grey_left, grey_right = (_grey(image) for image in (left, right))
    h, w = d.shape
    map_x = np.arange(w, dtype=np.float32)[None, :] - d
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, axis=1)
    warped = cv2.remap(grey_right, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    box = (WINDOW, WINDOW)
    difference = (grey_left - cv2.blur(grey_left, box)) - (warped - cv2.blur(warped, box))
    photometric = cv2.blur(np.abs(difference), box)
    return {"convergence": convergence, "edge": edge, "photometric": photometric}


def confidence_map(left: np.ndarray, right: np.ndarray, disparity: np.ndarray, earlier: np.ndarray | None,
                   model: ConfidenceModel = DEFAULT_MODEL) -> np.ndarray:
    """H x W float32 in [0, 1]: the estimated probability that the disparity is within 2 px;
    0 where the disparity is not finite. Arguments as ``confidence_cues``."""
    cues = confidence_cues(left, right, disparity, earlier)
    logit = (model.bias + model.convergence * np.log1p(cues["convergence"]) + model.edge * np.log1p(cues["edge"])
             + model.photometric * np.log1p(cues["photometric"]))
    confidence = 1.0 / (1.0 + np.exp(-logit))
    return np.where(np.isfinite(disparity), confidence, 0.0).astype(np.float32)


def sparsification(error: np.ndarray, confidence: np.ndarray, fractions=SPARSIFICATION_FRACTIONS,
                   threshold: float = 2.0) -> list[tuple[float, float, float]]:
    """bad-``threshold`` (%) of the most confident fraction of pixels, next to the oracle that
    drops the worst pixels first. error, confidence: 1-D over the scored pixels.
    Returns (fraction, bad % of the most confident, bad % of the oracle) per fraction."""
    if error.shape != confidence.shape or error.ndim != 1 or not error.size:
        raise ValueError(f"error and confidence must be equal, non-empty 1-D arrays, got {error.shape} "
                         f"and {confidence.shape}")
    bad_by_confidence = error[np.argsort(-confidence, kind="stable")] > threshold
    bad_by_error = np.sort(error) > threshold
    rows = []
    for fraction in fractions:
        keep = max(1, round(fraction * error.size))
        rows.append((fraction, 100.0 * bad_by_confidence[:keep].mean(), 100.0 * bad_by_error[:keep].mean()))
    return rows


def _grey(image: np.ndarray) -> np.ndarray:
    return (cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image).astype(np.float32)
