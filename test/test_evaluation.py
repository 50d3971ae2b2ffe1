"""Error metrics against hand-computed values; SGBM baseline; the eval command."""

from __future__ import annotations

import numpy as np
import pytest

from sgru_ros.evaluation import (SGBMConfig, disparity_metrics, fill_holes, region_bad2, region_masks,
                                 sgbm_disparity)
from sgru_ros.io import read_image, write_disparity

from conftest import run_cli


def test_metrics_by_hand():
    gt = np.array([[10.0, 20.0, 100.0, np.nan]])
    pred = np.array([[10.5, 22.5, 104.0, 0.0]])  # errors 0.5, 2.5, 4.0; last pixel has no ground truth
    m = disparity_metrics(pred, gt)
    assert m.epe == pytest.approx((0.5 + 2.5 + 4.0) / 3)
    assert m.bad1 == pytest.approx(200 / 3) and m.bad2 == pytest.approx(200 / 3) and m.bad3 == pytest.approx(100 / 3)
    assert m.d1 == pytest.approx(0.0)  # 4 px on 100 is under 5 %
    assert m.density == 100.0 and m.pixels == 3
    holes = disparity_metrics(np.array([[10.0, np.nan, 100.0, 1.0]]), gt)
    assert holes.density == pytest.approx(200 / 3) and holes.pixels == 2


def test_holes_take_the_farther_of_their_two_neighbours():
    row = np.array([[np.nan, 1.0, np.nan, np.nan, 3.0, np.nan, 2.0, np.nan]])
    assert np.array_equal(fill_holes(row), [[1.0, 1.0, 1.0, 1.0, 3.0, 2.0, 2.0, 2.0]])
    assert fill_holes(row.astype(np.float32)).dtype == np.float32
    assert np.array_equal(fill_holes(np.array([[np.inf, 2.0, -np.inf]])), [[2.0, 2.0, 2.0]])  # not finite: a hole
    assert np.array_equal(fill_holes(np.array([[3, 4]])), [[3.0, 4.0]])  # an integer map becomes float


def test_sgbm_finds_a_constant_shift(stereo_pair_files):
    left, right = (read_image(p) for p in stereo_pair_files)
    disp = sgbm_disparity(left, right)
    assert np.nanmedian(disp) == pytest.approx(6.0, abs=0.25)


def test_sgbm_matches_the_first_columns_opencv_leaves_empty(stereo_pair_files):
    """OpenCV gives the first num_disparities columns no value; with left_border (the default) they are matched
    over the disparities their view allows: here every pixel from x = 6 on has its match, 6 px away."""
    left, right = (read_image(p) for p in stereo_pair_files)
    border = np.s_[:, 8:64]
    opencv, widened = sgbm_disparity(left, right, SGBMConfig(64, left_border=False)), sgbm_disparity(left, right)
    assert opencv.shape == widened.shape == left.shape[:2]
    assert np.isnan(opencv[border]).all()
    # Beyond the border the two agree, so the widened map is cropped back at the right place.
    assert np.allclose(opencv[:, 64:], widened[:, 64:], equal_nan=True)
    searched = widened[border]
    assert np.isfinite(searched).mean() > 0.9
    error = np.abs(searched[np.isfinite(searched)] - 6.0)
    assert np.median(error) < 0.25 and np.mean(error > 1) < 0.05


def test_eval_command_prints_the_side_by_side_table(tmp_path, small_raft_checkpoint, stereo_pair_files):
    left, right = stereo_pair_files
    write_disparity(tmp_path / "gt.pfm", np.full((100, 150), 6.0, np.float32))
    proc = run_cli("eval", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right),
                   "--gt", str(tmp_path / "gt.pfm"), "--iters", "1", "2", "--device", "cpu", "--regions",
                   "--warm-start-sgbm")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("sgru raft") and "from SGBM" in line for line in lines) == 4  # two tables
    regions = lines[lines.index("bad-2 % by region (docs/model_card.md defines them):") + 1].split()
    assert regions[-5:] == ["edges", "occluded", "slanted", "textured_fronto", "weak_texture_fronto"]
    assert any(line.startswith("sgru raft") and line.split()[3] == "1" for line in lines), proc.stdout
    assert any(line.startswith("OpenCV SGBM, holes filled") for line in lines)
    assert any(line.startswith("OpenCV SGBM, no left border, holes filled") for line in lines)
    assert "bad-2 ratio at 2 iterations" in proc.stdout
    proc = run_cli("eval", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right))
    assert proc.returncode == 1 and "give --left, --right and --gt" in proc.stderr


def test_region_masks_on_a_scene_with_known_geometry():
    """A far plane (10 px) with a nearer block (30 px) on its left half of the rows
    20..59 and a slanted strip: each region appears where the geometry puts it."""
    gt = np.full((80, 200), 10.0, np.float32)
    gt[20:60, 40:100] = 30.0  # near block: depth edges at x=40 and x=100, rows 20 and 60
    gt[:, 150:] = 10.0 + 0.3 * np.arange(50)  # slanted along x
    rng = np.random.default_rng(0)
    left = np.zeros((80, 200, 3), np.uint8)
    left[:, :120] = rng.integers(0, 255, (80, 120, 1))  # textured left part, flat right part
    regions = region_masks(gt, left)
    assert regions["edges"][40, 38:43].all() and regions["edges"][40, 97:103].all()
    assert not regions["edges"][40, 70] and not regions["edges"][5, 20]
    # The left camera sees background left of the near block (x = 20..39, landing at 10..29)
    # that the right camera sees behind the block (landing at 10..69); right of it nothing is hidden.
    assert regions["occluded"][40, 22:35].all() and not regions["occluded"][40, 105:140].any()
    assert regions["slanted"][40, 160:195].all() and not regions["slanted"][40, 125:140].any()
    assert regions["textured_fronto"][5, 10:30].all() and regions["weak_texture_fronto"][5, 125:140].all()
    masks = np.stack(list(regions.values()))
    assert (masks.sum(0) == 1).all()  # a partition of the known pixels
    prediction = gt.copy()
    prediction[regions["occluded"]] += 5
    scores = region_bad2(prediction, gt, regions)
    assert scores["occluded"] == 100.0 and scores["slanted"] == 0.0
