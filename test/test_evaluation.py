"""Error metrics against hand-computed values; SGBM baseline; the eval command."""

from __future__ import annotations

import numpy as np
import pytest

from sgru_ros.evaluation import disparity_metrics, fill_from_left, sgbm_disparity
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


def test_fill_from_left():
    row = np.array([[np.nan, 1.0, np.nan, np.nan, 3.0, np.nan]])
    assert np.array_equal(fill_from_left(row), [[1.0, 1.0, 1.0, 1.0, 3.0, 3.0]])


def test_sgbm_finds_a_constant_shift(stereo_pair_files):
    left, right = (read_image(p) for p in stereo_pair_files)
    disp = sgbm_disparity(left, right)
    assert np.nanmedian(disp) == pytest.approx(6.0, abs=0.25)


def test_eval_command_prints_the_side_by_side_table(tmp_path, small_raft_checkpoint, stereo_pair_files):
    left, right = stereo_pair_files
    write_disparity(tmp_path / "gt.pfm", np.full((100, 150), 6.0, np.float32))
    proc = run_cli("eval", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right),
                   "--gt", str(tmp_path / "gt.pfm"), "--iters", "1", "2", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("sgru raft") and line.split()[3] == "1" for line in lines), proc.stdout
    assert any(line.startswith("OpenCV SGBM, holes filled") for line in lines)
    assert "bad-2 ratio at 2 iterations" in proc.stdout
    proc = run_cli("eval", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right))
    assert proc.returncode == 1 and "give --left, --right and --gt" in proc.stderr
