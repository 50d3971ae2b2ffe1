"""Colour maps for disparity (rviz Image display, CLI --color and --preview, demo PNG)."""

from __future__ import annotations

import cv2
import numpy as np


def colorize_disparity(disparity: np.ndarray, min_disparity: float | None = None,
                       max_disparity: float | None = None) -> np.ndarray:
    """H x W disparity -> H x W x 3 BGR uint8 (OpenCV TURBO: near = red, far = blue).

    The range defaults to the finite values' 1st..99th percentile; invalid
    (non-finite) pixels are black.
    """
    valid = np.isfinite(disparity)
    if min_disparity is None or max_disparity is None:
        sample = disparity[::2, ::2]  # percentiles of every fourth pixel: the same range, 4x less sorting
        values = sample[np.isfinite(sample)]
        lo, hi = (np.percentile(values, [1, 99]) if values.size else (0.0, 1.0))
        min_disparity = lo if min_disparity is None else min_disparity
        max_disparity = hi if max_disparity is None else max_disparity
    span = max(float(max_disparity) - float(min_disparity), 1e-6)
    scaled = np.clip((np.where(valid, disparity, min_disparity) - min_disparity) / span, 0, 1)
    color = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    color[~valid] = 0
    return color


def side_by_side(rgb: np.ndarray, color: np.ndarray) -> np.ndarray:
    """A quick-look image: H x W x 3 RGB left image | H x W x 3 BGR colorized disparity -> H x 2W x 3 BGR."""
    if rgb.shape[:2] != color.shape[:2]:
        raise ValueError(f"image {rgb.shape[1]}x{rgb.shape[0]} and disparity {color.shape[1]}x{color.shape[0]} differ")
    return np.hstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), color])
