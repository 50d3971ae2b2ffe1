"""The package reproduces the authors' own outputs: the fixtures in test/fixtures/parity (made by
scripts/make_parity_fixtures.py) and, where present, the larger ones in ../shared/fixtures/parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgru_ros.io import write_image_rgb
from sgru_ros.model import IGEVConfig, RaftConfig, SelectiveIGEV, SelectiveRAFT, load_model

from conftest import FIXTURE_NAMES, parity_fixture, run_cli

TOLERANCE_PX = 1e-2


def _sign(fixture: dict) -> int:
    # The released Selective-RAFT returns x-flow (negative disparity); the package returns disparity.
    return -1 if fixture["variant"] == "raft" else 1


@pytest.fixture(scope="module", params=FIXTURE_NAMES)
def loaded(request, tmp_path_factory):
    fixture = parity_fixture(request.param)
    path = tmp_path_factory.mktemp(request.param) / "official.pth"
    torch.save(fixture["state_dict"], path)  # module.-prefixed, as the authors' training script saves
    return fixture, load_model(path), path


def test_architecture_is_detected_from_shapes(loaded):
    fixture, model, _ = loaded
    args = fixture["args"]
    if fixture["variant"] == "raft":
        assert isinstance(model, SelectiveRAFT)
        assert model.config == RaftConfig(hidden_dim=args["hidden_dim"], corr_levels=args["corr_levels"],
                                          corr_radius=args["corr_radius"], n_downsample=args["n_downsample"],
                                          n_gru_layers=args["n_gru_layers"])
    else:
        assert isinstance(model, SelectiveIGEV)
        assert model.config == IGEVConfig(hidden_dim=args["hidden_dims"][0], corr_levels=args["corr_levels"],
                                          corr_radius=args["corr_radius"], n_gru_layers=args["n_gru_layers"])


def test_test_mode_outputs_match(loaded):
    fixture, model, _ = loaded
    kwargs = {"max_disp": fixture["args"]["max_disp"]} if fixture["variant"] == "igev" else {}
    with torch.no_grad():
        for iters in fixture["iters"]:
            pred = model(fixture["left"], fixture["right"], iters=iters, **kwargs)
            expected = _sign(fixture) * fixture["test_out"][iters]
            assert pred.final.shape == expected.shape
            err = (pred.final - expected).abs().max().item()
            assert err < TOLERANCE_PX, f"{iters} iterations: max abs error {err:.2e} px"


def test_every_iteration_and_initial_disparity_match(loaded):
    fixture, model, _ = loaded
    iters = max(fixture["iters"])
    kwargs = {"max_disp": fixture["args"]["max_disp"], "return_init": True} if fixture["variant"] == "igev" else {}
    with torch.no_grad():
        pred = model(fixture["left"], fixture["right"], iters=iters, output_iters=range(1, iters + 1), **kwargs)
    assert pred.iterations == list(range(1, iters + 1))
    assert len(pred.disparities) == len(fixture["train_preds"])
    for i, (ours, theirs) in enumerate(zip(pred.disparities, fixture["train_preds"]), start=1):
        err = (ours - _sign(fixture) * theirs).abs().max().item()
        assert err < TOLERANCE_PX, f"iteration {i}: max abs error {err:.2e} px"
    if fixture["variant"] == "igev":
        err = (pred.init_disp - fixture["init_disp"]).abs().max().item()
        assert err < TOLERANCE_PX, f"initial disparity: max abs error {err:.2e} px"


def test_cli_infer_reproduces_test_out(loaded, tmp_path):
    fixture, _, checkpoint = loaded
    rgb = [t[0].permute(1, 2, 0).numpy().astype(np.uint8) for t in (fixture["left"], fixture["right"])]
    write_image_rgb(tmp_path / "left.png", rgb[0])
    write_image_rgb(tmp_path / "right.png", rgb[1])
    iters = max(fixture["iters"])
    out = tmp_path / "disp.npy"
    proc = run_cli("infer", "--checkpoint", str(checkpoint), "--left", str(tmp_path / "left.png"),
                   "--right", str(tmp_path / "right.png"), "--out", str(out), "--iters", str(iters),
                   "--device", "cpu", "--max-disp", str(fixture["args"].get("max_disp", 192)))
    assert proc.returncode == 0, proc.stderr
    disparity = np.load(out)
    expected = _sign(fixture) * fixture["test_out"][iters][0, 0].numpy()
    assert disparity.dtype == np.float32 and disparity.shape == expected.shape
    assert np.abs(disparity - expected).max() < TOLERANCE_PX
