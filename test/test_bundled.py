"""The weights shipped in the package: loaded by the same loader, used by default, and good."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from sgru_ros.calibration import motorcycle_pair
from sgru_ros.evaluation import disparity_metrics, sgbm_prior
from sgru_ros.inference import StereoEstimator
from sgru_ros.model import load_model
from sgru_ros.training.train import PRESETS
from sgru_ros.weights import BUNDLED_CHECKPOINT, BUNDLED_MODELS, resolve_checkpoint

from conftest import run_cli


def test_bundled_checkpoint_loads_through_the_public_loader():
    assert BUNDLED_CHECKPOINT.is_file() and BUNDLED_CHECKPOINT.stat().st_size <= 20 * 2**20
    model = load_model(BUNDLED_CHECKPOINT)
    # The raft-compact network with the edge stage's refinement (docs/model_card.md, "Recipe").
    assert model.config == dataclasses.replace(PRESETS["raft-compact"], edge_width=8, edge_window=5)


def test_the_model_option_names_a_bundled_model_or_a_file(tmp_path):
    assert resolve_checkpoint(None) == resolve_checkpoint("") == resolve_checkpoint("compact") == BUNDLED_CHECKPOINT
    assert resolve_checkpoint("fast") == BUNDLED_MODELS["fast"]
    assert resolve_checkpoint(str(tmp_path / "fast.pth")) == tmp_path / "fast.pth"
    assert resolve_checkpoint("./fast") == Path("fast")  # a file named like a bundled model, with its folder


def test_the_fast_model_is_the_compact_network_with_narrower_encoders():
    fast, compact = load_model(BUNDLED_MODELS["fast"]), load_model(BUNDLED_CHECKPOINT)
    assert fast.config == dataclasses.replace(compact.config, encoder_dims=(16, 24, 32))
    assert BUNDLED_MODELS["fast"].stat().st_size <= 10 * 2**20
    # Distilled (training.distill): everything after the encoders is the compact model's.
    theirs = compact.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in fast.state_dict().items() if not k.startswith(("fnet.", "cnet.")))


def test_bundled_model_sees_the_motorcycle_scene():
    """Not a benchmark (see docs/model_card.md): a sanity bound a random or broken network cannot meet."""
    left, right, gt = motorcycle_pair()
    result = StereoEstimator.from_checkpoint(device="cpu").estimate(left, right, iters=8)
    metrics = disparity_metrics(result.disparity, gt)
    assert metrics.epe < 3.0 and metrics.bad3 < 25.0, metrics


def test_the_fast_model_from_sgbms_map_sees_the_motorcycle_scene():
    """Its one use (docs/model_card_fast.md): one iteration from SGBM's map, which it must improve. Not a benchmark."""
    left, right, gt = motorcycle_pair()
    prior = sgbm_prior(left, right)
    result = StereoEstimator.from_checkpoint("fast", device="cpu").estimate(left, right, iters=1, disp_init=prior)
    metrics, start = disparity_metrics(result.disparity, gt), disparity_metrics(prior, gt)
    assert metrics.bad2 < start.bad2 and metrics.epe < start.epe, (metrics, start)


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
