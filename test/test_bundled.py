"""The weights shipped in the package: loaded by the same loader, used by default, and good."""

from __future__ import annotations

import dataclasses

import numpy as np

from sgru_ros.calibration import motorcycle_pair
from sgru_ros.evaluation import disparity_metrics
from sgru_ros.inference import StereoEstimator
from sgru_ros.model import load_model
from sgru_ros.training.train import PRESETS
from sgru_ros.weights import BUNDLED_CHECKPOINT

from conftest import run_cli


def test_bundled_checkpoint_loads_through_the_public_loader():
    assert BUNDLED_CHECKPOINT.is_file() and BUNDLED_CHECKPOINT.stat().st_size <= 20 * 2**20
    model = load_model(BUNDLED_CHECKPOINT)
    # The raft-compact network with the edge stage's refinement (docs/model_card.md, "Recipe").
    assert model.config == dataclasses.replace(PRESETS["raft-compact"], edge_width=8, edge_window=5)


def test_bundled_model_sees_the_motorcycle_scene():
    """Not a benchmark (see docs/model_card.md): a sanity bound a random or broken network cannot meet."""
    left, right, gt = motorcycle_pair()
    result = StereoEstimator.from_checkpoint(device="cpu").estimate(left, right, iters=8)
    metrics = disparity_metrics(result.disparity, gt)
    assert metrics.epe < 3.0 and metrics.bad3 < 25.0, metrics


def test_demo_writes_png_pfm_and_ply(tmp_path):
    proc = run_cli("demo", "--frames", "1", "--out", str(tmp_path / "demo"), "--device", "cpu", "--iters", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("disparity_color.png", "disparity.pfm", "cloud.ply"):
        assert (tmp_path / "demo" / name).stat().st_size > 0, name
    header = (tmp_path / "demo/cloud.ply").read_bytes().split(b"end_header")[0].decode()
    count = int(next(line.split()[-1] for line in header.splitlines() if line.startswith("element vertex")))
    assert count > 0.5 * 741 * 500
    import cv2
    color = cv2.imread(str(tmp_path / "demo/disparity_color.png"))
    assert color.shape == (500, 741, 3) and np.count_nonzero(color.sum(-1)) > 0.8 * 741 * 500
    # The PFM holds x_left - x_right as Middlebury's ground truth does (not d' = d - (cx_l - cx_r), 31 px less).
    from sgru_ros.calibration import motorcycle_pair
    from sgru_ros.io import read_pfm

    _, _, gt = motorcycle_pair()
    written = read_pfm(tmp_path / "demo/disparity.pfm")
    known = np.isfinite(gt) & np.isfinite(written)
    assert known.mean() > 0.5 and np.abs(written[known] - gt[known]).mean() < 5.0
    assert "ROS_DOMAIN_ID" in proc.stdout and "skipped as stale" in proc.stdout
