"""Checkpoint loading: detection, and one clear error line for every bad file."""

from __future__ import annotations

import pytest
import torch

from sgru_ros.model import (CheckpointError, IGEVConfig, RaftConfig, SelectiveIGEV, build_model, load_model,
                            save_checkpoint)

from conftest import SMALL_RAFT, parity_fixture, run_cli


def test_compact_config_roundtrips_through_a_file(small_raft_checkpoint):
    model = load_model(small_raft_checkpoint)
    assert model.config == RaftConfig(**SMALL_RAFT)


def test_half_precision_file_loads_as_float32(tmp_path):
    torch.manual_seed(0)
    model = SelectiveIGEV(IGEVConfig(hidden_dim=32, n_gru_layers=1))
    save_checkpoint(model, tmp_path / "igev_half.pth", half=True)
    loaded = load_model(tmp_path / "igev_half.pth")
    assert loaded.config == IGEVConfig(hidden_dim=32, n_gru_layers=1)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ref = model.update_block.gru04.small_gru.convz.weight
    assert torch.allclose(loaded.update_block.gru04.small_gru.convz.weight, ref.half().float())


def test_module_prefix_and_wrapped_state_dict(tmp_path, small_raft_checkpoint):
    state = torch.load(small_raft_checkpoint, weights_only=True)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    assert load_model(tmp_path / "wrapped.pth").config == RaftConfig(**SMALL_RAFT)


def _bad_files(tmp_path, small_raft_checkpoint):
    raw = small_raft_checkpoint.read_bytes()
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.pth").write_bytes(b"junk\n")  # torch.load raised a bare KeyError
    torch.save(torch.nn.Conv2d(3, 3, 1), tmp_path / "pickled_module.pth")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "not_tensors.pth")
    state = torch.load(small_raft_checkpoint, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("update_block.disp_head")},
               tmp_path / "missing_keys.pth")
    state["update_block.gru04.small_gru.convz.bias"] = torch.zeros(5)
    torch.save(state, tmp_path / "wrong_shape.pth")
    torch.save({"backbone.weight": torch.zeros(3)}, tmp_path / "other_network.pth")
    return {
        "random.pth": "not a readable PyTorch checkpoint",
        "truncated.pth": "not a readable PyTorch checkpoint",
        "text.pth": "not a readable PyTorch checkpoint",
        "pickled_module.pth": "holds Python objects",
        "not_tensors.pth": "not a state dict",
        "missing_keys.pth": "missing keys 4 (update_block.disp_head.conv1.bias",
        "wrong_shape.pth": "shape mismatches 1 (update_block.gru04.small_gru.convz.bias (5,) vs (32,))",
        "other_network.pth": "not a Selective-Stereo state dict",
        "does_not_exist.pth": "no such checkpoint file",
    }


def test_bad_files_raise_checkpoint_error(tmp_path, small_raft_checkpoint):
    for name, message in _bad_files(tmp_path, small_raft_checkpoint).items():
        with pytest.raises(CheckpointError) as info:
            load_model(tmp_path / name)
        assert message in str(info.value), name
        assert "\n" not in str(info.value)


def test_cli_gives_one_line_and_nonzero_exit(tmp_path, small_raft_checkpoint, stereo_pair_files):
    left, right = stereo_pair_files
    cases = _bad_files(tmp_path, small_raft_checkpoint)
    cases[small_raft_checkpoint.name] = "holds a Selective-RAFT state dict, not Selective-IGEV"
    for name, message in cases.items():
        extra = ["--variant", "igev"] if name == small_raft_checkpoint.name else []
        proc = run_cli("infer", "--checkpoint", str(tmp_path / name), "--left", str(left), "--right", str(right),
                       "--out", str(tmp_path / "out.npy"), "--device", "cpu", *extra)
        assert proc.returncode == 1, name
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith("sgru-stereo infer: error: ") and message in lines[0], lines[0]


def test_official_raft_forced_as_igev_is_refused(tmp_path):
    fixture = parity_fixture("raft-crop")
    torch.save(fixture["state_dict"], tmp_path / "raft.pth")
    with pytest.raises(CheckpointError, match="holds a Selective-RAFT state dict, not Selective-IGEV"):
        load_model(tmp_path / "raft.pth", variant="igev")


def test_encoder_stride_layouts():
    from sgru_ros.model.encoders import stage_strides

    # RAFT-Stereo halves late: at 1/4 the stem runs at full resolution.
    assert [stage_strides(n, early=False) for n in (1, 2, 3)] == [(1, 1, 2), (1, 2, 2), (2, 2, 2)]
    assert [stage_strides(n, early=True) for n in (1, 2, 3)] == [(2, 1, 1), (2, 2, 1), (2, 2, 2)]


def test_early_downsample_is_marked_in_the_file_and_read_back(tmp_path):
    torch.manual_seed(0)
    config = RaftConfig(**{**SMALL_RAFT, "n_downsample": 2, "early_downsample": True})
    model = build_model(config).eval()
    save_checkpoint(model, tmp_path / "early.pth")
    loaded = load_model(tmp_path / "early.pth")
    assert loaded.config == config
    assert loaded.fnet.conv1.stride == (2, 2) and loaded.fnet.layer3[0].conv1.stride == (1, 1)
    images = torch.rand(2, 1, 3, 64, 128) * 255
    with torch.no_grad():
        assert torch.equal(model(*images, iters=2).final, loaded(*images, iters=2).final)
    # The same weights without the markers are the released (late) layout: another network.
    state = torch.load(tmp_path / "early.pth", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.endswith("stage_strides")}, tmp_path / "late.pth")
    assert load_model(tmp_path / "late.pth").config.early_downsample is False
    # A marker that contradicts the working resolution is refused in one line.
    state["fnet.stage_strides"] = torch.tensor([1, 2, 2])
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="stride markers"):
        load_model(tmp_path / "bad.pth")


def test_an_edge_refinement_is_read_off_the_file(tmp_path):
    torch.manual_seed(0)
    config = RaftConfig(hidden_dim=32, encoder_dims=(16, 16, 32), feature_dim=32, n_gru_layers=1,
                        edge_width=6, edge_window=7)
    save_checkpoint(build_model(config), tmp_path / "edges.pth")
    assert load_model(tmp_path / "edges.pth").config == config
    state = torch.load(tmp_path / "edges.pth", weights_only=True)
    state["edge_refine.head.weight"] = state["edge_refine.head.weight"][:48]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="window"):
        load_model(tmp_path / "bad.pth")
