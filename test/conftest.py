"""Shared test helpers: the parity fixtures, a small random network, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PARITY_DIR = REPO.parent / "shared" / "fixtures" / "parity"
#: Made by scripts/make_parity_fixtures.py: the authors' outputs on a Motorcycle crop, weights from a seed.
CROP_PARITY_DIR = REPO / "test" / "fixtures" / "parity"
#: "-crop": the fixtures in this repository (always there); plain: the larger ones in ../shared.
FIXTURE_NAMES = ("raft-crop", "igev-crop", "raft", "igev")

torch.set_num_threads(min(2, os.cpu_count() or 1))

# DDS traffic of the tests stays on this machine, in a domain of their own.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", "73")


def parity_fixture(name: str) -> dict:
    """A fixture of the authors' outputs: variant, args, left/right (1 x 3 x H x W float 0..255), iters,
    test_out, train_preds (init_disp for IGEV) and state_dict (module.-prefixed, as their training saves)."""
    if name.endswith("-crop"):
        import importlib.util

        fixture = torch.load(CROP_PARITY_DIR / f"{name[:-5]}_motorcycle_crop.pt", weights_only=True)
        spec = importlib.util.spec_from_file_location("parity_weights", CROP_PARITY_DIR / "weights.py")
        weights = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(weights)
        fixture["state_dict"] = weights.make_state(fixture["layout"], fixture["seed"])
        for side in ("left", "right"):
            fixture[side] = fixture[side].permute(2, 0, 1)[None].float()
        return fixture
    path = PARITY_DIR / f"{name}_motorcycle.pt"
    if not path.is_file():
        pytest.skip(f"parity fixture {path} not present (../shared is only beside the project's own checkout)")
    return torch.load(path, map_location="cpu", weights_only=True)


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``sgru-stereo`` as a user would (a separate process); ``env``: variables to add."""
    return subprocess.run([sys.executable, "-m", "sgru_ros.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


SMALL_RAFT = dict(hidden_dim=32, encoder_dims=(16, 24, 32), feature_dim=32, n_gru_layers=2)


@pytest.fixture
def small_raft_checkpoint(tmp_path) -> Path:
    """A randomly initialised compact Selective-RAFT saved as a state dict."""
    from sgru_ros.model import RaftConfig, SelectiveRAFT, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "small_raft.pth"
    save_checkpoint(SelectiveRAFT(RaftConfig(**SMALL_RAFT)), path)
    return path


@pytest.fixture
def stereo_pair_files(tmp_path) -> tuple[Path, Path]:
    """A 100 x 150 textured pair with a 6-pixel shift, written as PNG."""
    from sgru_ros.io import write_image_rgb
    import numpy as np

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, size=(100, 160, 3), dtype=np.uint8)
    left, right = texture[:, 0:150], texture[:, 6:156]  # right(x - 6) == left(x)
    write_image_rgb(tmp_path / "left.png", left)
    write_image_rgb(tmp_path / "right.png", right)
    return tmp_path / "left.png", tmp_path / "right.png"


def pair_sequence(folder: Path, pair: tuple[Path, Path], count: int) -> Path:
    """``count`` copies of a stereo pair as folder/seq/{i:03d}_L.png and _R.png (a glob-mode input)."""
    seq = folder / "seq"
    seq.mkdir()
    for i in range(count):
        (seq / f"{i:03d}_L.png").write_bytes(pair[0].read_bytes())
        (seq / f"{i:03d}_R.png").write_bytes(pair[1].read_bytes())
    return seq


#: The known-answer network's disparity step per iteration (px).
STEP_PX = 2.0


def known_answer_checkpoint(path: Path, config: dict = SMALL_RAFT) -> Path:
    """A small network whose disparity head always outputs the same update: after k iterations the
    disparity is k * STEP_PX everywhere (random weights elsewhere). Tests of plumbing and geometry
    use it, so the answer does not depend on training."""
    from sgru_ros.model import RaftConfig, SelectiveRAFT, save_checkpoint

    torch.manual_seed(0)
    model = SelectiveRAFT(RaftConfig(**config))
    with torch.no_grad():
        model.update_block.disp_head.conv2.weight.zero_()
        model.update_block.disp_head.conv2.bias.fill_(-STEP_PX / model.downsample_factor)  # x-flow = -disparity
    save_checkpoint(model, path)
    return path
