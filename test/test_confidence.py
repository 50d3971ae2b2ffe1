"""Confidence from the network's own outputs: the cues, the map, the sparsification measure and
the commands that write or measure it."""

from __future__ import annotations

import numpy as np
import pytest

from sgru_ros.confidence import confidence_cues, confidence_map, earlier_iteration, sparsification
from sgru_ros.io import write_disparity

from conftest import run_cli

SHIFT = 6


def shifted_pair() -> tuple[np.ndarray, np.ndarray]:
    """A textured 64 x 96 pair whose true disparity is SHIFT everywhere."""
    texture = np.random.default_rng(5).integers(0, 255, size=(64, 96 + SHIFT, 3), dtype=np.uint8)
    return np.ascontiguousarray(texture[:, :96]), np.ascontiguousarray(texture[:, SHIFT:])


def test_each_cue_and_the_map_mark_the_wrong_patch():
    left, right = shifted_pair()
    disparity = np.full((64, 96), float(SHIFT), np.float32)
    disparity[20:40, 40:60] = SHIFT + 5  # a wrong patch, with depth edges around it
    earlier = disparity.copy()
    earlier[20:40, 40:60] = SHIFT + 1  # ... that was still moving over the last iterations
    cues = confidence_cues(left, right, disparity, earlier)
    inside, outside = (slice(24, 36), slice(44, 56)), (slice(0, 10), slice(10, 30))
    assert cues["convergence"][inside].min() == 4 and cues["convergence"][outside].max() == 0
    assert cues["edge"][20, 38] == 5 and cues["edge"][outside].max() == 0
    assert cues["photometric"][inside].mean() > 5 * cues["photometric"][outside].mean()
    confidence = confidence_map(left, right, disparity, earlier)
    assert confidence.dtype == np.float32 and ((confidence >= 0) & (confidence <= 1)).all()
    assert confidence[outside].min() > 0.9 and confidence[inside].max() < 0.1
    # Without an earlier iteration (a single one) the convergence cue is off, the others remain.
    alone = confidence_map(left, right, disparity, None)
    assert alone[outside].min() > 0.9 and alone[inside].max() < confidence[outside].min()
    with_nan = disparity.copy()
    with_nan[0, 0] = np.nan
    assert confidence_map(left, right, with_nan, None)[0, 0] == 0.0


def test_cues_need_one_size():
    left, right = shifted_pair()
    with pytest.raises(ValueError, match="one size"):
        confidence_cues(left, right, np.zeros((10, 10), np.float32), None)


def test_earlier_iteration_is_half():
    assert [earlier_iteration(k) for k in (1, 2, 3, 8, 32)] == [None, 1, 1, 4, 16]


def test_sparsification_by_hand():
    error = np.array([0.0, 3.0, 1.0, 5.0])
    # Most confident first: 0 (ok), 2 (ok), 1 (bad), 3 (bad).
    confidence = np.array([0.9, 0.2, 0.8, 0.1])
    assert sparsification(error, confidence, (1.0, 0.5)) == [(1.0, 50.0, 50.0), (0.5, 0.0, 0.0)]
    # Reversed: the bad pixels look most confident; the oracle does not care.
    assert sparsification(error, -confidence, (0.5,)) == [(0.5, 100.0, 0.0)]
    with pytest.raises(ValueError, match="1-D"):
        sparsification(error, confidence[:2])


def test_infer_writes_the_confidence_and_eval_prints_the_sparsification(tmp_path, small_raft_checkpoint,
                                                                       stereo_pair_files):
    left, right = stereo_pair_files
    proc = run_cli("infer", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right),
                   "--out", str(tmp_path / "d.npy"), "--confidence", str(tmp_path / "c.npy"), "--iters", "4",
                   "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    confidence = np.load(tmp_path / "c.npy")
    assert confidence.shape == (100, 150) and confidence.dtype == np.float32
    assert ((confidence >= 0) & (confidence <= 1)).all()
    proc = run_cli("infer", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right),
                   "--out", str(tmp_path / "d.npy"), "--confidence", str(tmp_path / "c.png"))
    assert proc.returncode == 1 and "unknown confidence extension '.png'; use .npy" in proc.stderr

    write_disparity(tmp_path / "gt.pfm", np.full((100, 150), float(SHIFT), np.float32))
    proc = run_cli("eval", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right),
                   "--gt", str(tmp_path / "gt.pfm"), "--iters", "2", "4", "--device", "cpu", "--sparsification")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("sparsification:"))
    assert lines[header + 1].split() == ["iters", "100", "%", "90", "%", "75", "%", "50", "%"]
    rows = [line.split() for line in lines[header + 2:header + 4]]
    assert [row[0] for row in rows] == ["2", "4"]
    for row in rows:
        ours = [float(v) for v in row[1::3]]
        oracle = [float(v) for v in row[3::3]]
        assert len(ours) == len(oracle) == 4 and ours[0] == oracle[0]  # all pixels: the same set
        assert all(o <= u + 1e-9 for o, u in zip(oracle, ours))  # nothing beats the oracle
