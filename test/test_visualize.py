"""The disparity colour map (rviz's disparity/color, the CLI's --color, the demo PNG)."""

import cv2
import numpy as np
import pytest

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


@pytest.mark.parametrize("value", [0.0, 1.0, 50.0, 150.3, 1000.0])
def test_a_constant_disparity_takes_the_first_colour(value):
    color = colorize_disparity(np.full((4, 6), value, np.float32))
    assert np.array_equal(color, np.broadcast_to(TURBO[0], (4, 6, 3)))


def test_non_finite_pixels_stay_black_even_when_marked_valid_and_empty_images_pass():
    disparity = np.array([[1.0, 2.0, np.nan, np.inf]], np.float32)
    color = colorize_disparity(disparity, valid=np.ones((1, 4), bool))
    assert not color[0, 2:].any() and np.array_equal(color[0, :2], TURBO[[0, 255]])
    assert colorize_disparity(np.zeros((0, 5), np.float32)).shape == (0, 5, 3)


def test_a_few_valid_pixels_missed_by_the_sample_still_set_the_range():
    disparity = np.full((1000, 1000), np.nan, np.float32)
    disparity[1, 1], disparity[1, 2] = 10.0, 20.0  # not on the sampling grid (every 7th pixel)
    color = colorize_disparity(disparity)
    assert np.array_equal(color[1, 1:3], TURBO[[0, 255]])
