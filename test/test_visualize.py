"""The disparity colour map (rviz's disparity/color, the CLI's --color, the demo PNG)."""

import cv2
import numpy as np

from sgru_ros.visualize import colorize_disparity

TURBO = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None], cv2.COLORMAP_TURBO)[0]  # 256 x 3 BGR


def test_given_range_maps_ends_to_the_ends_of_turbo_and_invalid_to_black():
    disparity = np.array([[0.0, 10.0, 20.0, 30.0, 40.0],
                          [np.nan, np.inf, -np.inf, 25.0, 5.0]], np.float32)
    color = colorize_disparity(disparity, min_disparity=10.0, max_disparity=30.0)
    assert color.shape == (2, 5, 3) and color.dtype == np.uint8
    # Below the range -> its first colour, above -> its last; the middle rounds to index 128.
    assert np.array_equal(color[0], TURBO[[0, 0, 128, 255, 255]])
    assert np.array_equal(color[1, :3], np.zeros((3, 3), np.uint8))
    assert np.array_equal(color[1, 3:], TURBO[[191, 0]])


def test_default_range_is_the_1st_to_99th_percentile_of_the_valid_values():
    rng = np.random.default_rng(0)
    disparity = rng.uniform(0, 100, (480, 640)).astype(np.float32)
    disparity[:, :40] = np.nan
    lo, hi = np.percentile(disparity[:, 40:], [1, 99])
    color = colorize_disparity(disparity)
    expected = colorize_disparity(disparity, min_disparity=lo, max_disparity=hi)
    # The range comes from a sample of the pixels: the indices differ by at most a step or two.
    indices = [np.abs(TURBO[None, None].astype(int) - c[..., None, :].astype(int)).sum(-1).argmin(-1)
               for c in (color[:50, 40:90], expected[:50, 40:90])]
    assert np.abs(indices[0] - indices[1]).max() <= 2
    assert not color[:, :40].any()
    assert not colorize_disparity(np.full((3, 3), np.nan, np.float32)).any()


def test_a_validity_mask_colours_as_the_same_disparity_with_nan_elsewhere():
    rng = np.random.default_rng(1)
    disparity = rng.uniform(-5, 80, (120, 160)).astype(np.float32)
    valid = disparity > 0
    assert np.array_equal(colorize_disparity(disparity, valid=valid),
                          colorize_disparity(np.where(valid, disparity, np.nan)))
