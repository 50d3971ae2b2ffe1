"""The procedural generator: reproducible, and its ground truth is exact (checked by warping)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sgru_ros.training.synthetic import PHOTO_NAMES, SceneConfig, SyntheticStereo


def _visibility(sample):
    """Left pixels whose match x - d lands on the same surface in the right view,
    and those hidden there by a nearer surface."""
    h, w = sample.disparity.shape
    yy, xx = np.mgrid[0:h, 0:w]
    xr = xx - sample.disparity
    inside = (xr >= 0) & (xr <= w - 1)
    d_right = sample.disparity_right[yy, np.clip(np.round(xr).astype(int), 0, w - 1)]
    visible = inside & (np.abs(d_right - sample.disparity) < 0.5)
    occluded = inside & (d_right > sample.disparity + 1)
    return xr, visible, occluded


def test_same_seed_and_index_same_sample():
    a, b = SyntheticStereo(seed=7), SyntheticStereo(seed=7)
    assert np.array_equal(a[3].left, b[3].left) and np.array_equal(a[3].disparity, b[3].disparity)
    assert not np.array_equal(a[3].left, a[4].left)
    assert not np.array_equal(a[3].left, SyntheticStereo(seed=8)[3].left)


def test_sample_shapes_and_range():
    config = SceneConfig(height=96, width=160, max_disparity=64)
    sample = SyntheticStereo(config, seed=1)[0]
    assert sample.left.shape == sample.right.shape == (96, 160, 3) and sample.left.dtype == np.uint8
    assert sample.disparity.shape == (96, 160) and sample.disparity.dtype == np.float32
    for i in range(10):
        d = SyntheticStereo(config, seed=1)[i].disparity
        assert np.isfinite(d).all() and d.min() >= 0 and d.max() <= 64 * 1.2


@pytest.mark.parametrize("index", range(6))
def test_ground_truth_by_warping(index):
    sample = SyntheticStereo(SceneConfig(height=96, width=160, max_disparity=48, photometric=False), seed=3)[index]
    xr, visible, _ = _visibility(sample)
    assert visible.mean() > 0.5
    h, w = sample.disparity.shape
    yy = np.mgrid[0:h, 0:w][0]
    x0 = np.clip(np.floor(xr).astype(int), 0, w - 2)
    t = np.clip(xr - x0, 0, 1)[..., None]
    right = sample.right.astype(np.float64)
    warped = (1 - t) * right[yy, x0] + t * right[yy, x0 + 1]  # right image sampled at x - d
    # Pixels next to a depth edge mix two surfaces (anti-aliased edges, thin structures): only
    # the interior must warp exactly.
    edges = cv2.morphologyEx(sample.disparity, cv2.MORPH_GRADIENT, np.ones((3, 3))) > 1
    interior = visible & ~(cv2.dilate(edges.astype(np.uint8), np.ones((5, 5))) > 0)
    error = np.abs(warped - sample.left).max(-1)[interior]
    assert np.median(error) < 4
    assert (error < 25).mean() > 0.95
    # A wrong disparity would not match: shift it by 3 px and the error grows.
    shifted = (1 - t) * right[yy, np.clip(x0 - 3, 0, w - 2)] + t * right[yy, np.clip(x0 - 2, 0, w - 1)]
    assert np.median(np.abs(shifted - sample.left).max(-1)[interior]) > 2 * np.median(error)


def test_occlusions_exist_and_are_consistent():
    data = SyntheticStereo(SceneConfig(height=96, width=160, max_disparity=48, photometric=False), seed=3)
    occluded = [(_visibility(data[i])[2]).mean() for i in range(6)]
    assert max(occluded) > 0.02


def test_textures_exclude_stereo_benchmarks():
    banned = ("motorcycle", "middlebury", "kitti", "eth3d", "sceneflow", "stereo")
    assert not any(b in name for name in PHOTO_NAMES for b in banned)
