"""Colour maps for disparity (rviz Image display, CLI --color and --preview, demo PNG)."""

from __future__ import annotations

import cv2
import numpy as np


def colorize_disparity(disparity: np.ndarray, min_disparity: float | None = None,
                       max_disparity: float | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """H x W disparity -> H x W x 3 BGR uint8 (OpenCV TURBO: near = red, far = blue).

    valid: H x W bool, the pixels to colour (finite ones only; default: all finite); the others
    are black.
    The range defaults to the valid values' 1st..99th percentile.
    """
    disparity = np.asarray(disparity, dtype=np.float32)
    valid = np.isfinite(disparity) if valid is None else valid & np.isfinite(disparity)
    if disparity.size == 0:
        return np.zeros((*disparity.shape, 3), np.uint8)
    if min_disparity is None or max_disparity is None:
        # Percentiles of about 20 000 evenly spread pixels: the same range as from all, for less sorting.
        step = max(1, int(np.sqrt(disparity.size / 20000)))
        values = disparity[::step, ::step][valid[::step, ::step]]
        if not values.size:  # the sample missed the few valid pixels
            values = disparity[valid]
        lo, hi = (np.percentile(values, [1, 99]) if values.size else (0.0, 1.0))
        min_disparity = lo if min_disparity is None else min_disparity
        max_disparity = hi if max_disparity is None else max_disparity
    lo, hi = float(min_disparity), float(min_disparity) + max(float(max_disparity) - float(min_disparity), 1e-6)
    # 8-bit colour map indices: clipped to the range, shifted to start at 0 (in place), then scaled
    # and rounded in one OpenCV pass. NaN gives 0; invalid pixels are black.
    offset = np.clip(disparity, lo, hi)
    np.subtract(offset, np.float32(lo), out=offset)
    indices = cv2.convertScaleAbs(offset, alpha=255.0 / (hi - lo))
    return cv2.copyTo(cv2.applyColorMap(indices, cv2.COLORMAP_TURBO), valid.view(np.uint8),
                      np.zeros((*valid.shape, 3), np.uint8))


def side_by_side(rgb: np.ndarray, color: np.ndarray) -> np.ndarray:
    """A quick-look image: H x W x 3 RGB left image | H x W x 3 BGR colorized disparity -> H x 2W x 3 BGR."""
    if rgb.shape[:2] != color.shape[:2]:
        raise ValueError(f"image {rgb.shape[1]}x{rgb.shape[0]} and disparity {color.shape[1]}x{color.shape[0]} differ")
    return np.hstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), color])
