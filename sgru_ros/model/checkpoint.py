"""Loading Selective-Stereo checkpoints: the authors' files and this package's.

A checkpoint is a state dict saved with ``torch.save`` (the authors save
``DataParallel(model).state_dict()``, so keys start with ``module.``). It is
read with ``weights_only=True``: no code in a checkpoint ever runs. The
variant and every shape-bearing architecture argument are read off the keys
and tensor shapes; whatever does not fit raises ``CheckpointError`` with a
one-line reason.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Literal

import torch

from .base import SelectiveStereo
from .config import IGEVConfig, ModelConfig, RaftConfig
from .encoders import stage_strides
from .igev import GWC_GROUPS, SelectiveIGEV
from .raft import SelectiveRAFT

Variant = Literal["raft", "igev"]
VARIANTS: tuple[Variant, ...] = ("raft", "igev")
#: Both released models use radius 4; the correlation width only stores
#: levels x (2r+1), so radius 4 is preferred when the product allows it.
PREFERRED_RADIUS = 4

# A key that only that variant has.
_SIGNATURE_KEYS = {"raft": "fnet.conv1.weight", "igev": "feature.conv_stem.weight"}
_NAMES = {"raft": "Selective-RAFT", "igev": "Selective-IGEV"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line for the user."""


def _summarise(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict file safely; strip a ``module.`` prefix; floats to float32."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(f"{path}: holds Python objects ({found.group(1)}), not only tensors; refusing "
                                  "to unpickle it (save model.state_dict() instead)") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or another format "
                              "(unpickling failed)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or another "
                              f"format ({first})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of parameter names to tensors, "
                              f"got {type(obj).__name__})")
    state = {}
    for key, value in obj.items():
        key = key.removeprefix("module.")
        state[key] = value.float() if value.is_floating_point() else value
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {_summarise(bad)}")
    return state


def detect_variant(state: dict[str, torch.Tensor]) -> Variant:
    found = [v for v in VARIANTS if _SIGNATURE_KEYS[v] in state]
    if len(found) != 1:
        raise CheckpointError(
            "not a Selective-Stereo state dict: expected fnet.* (Selective-RAFT) or feature.* "
            f"(Selective-IGEV) keys; found {_summarise(sorted(state))}")
    return found[0]


def _shape(state: dict[str, torch.Tensor], key: str) -> torch.Size:
    if key not in state:
        raise CheckpointError(f"missing key {key!r}, which this variant needs")
    return state[key].shape


def _split_corr_planes(planes: int, per_sample: int) -> tuple[int, int]:
    """levels x (2r+1) x per_sample = planes -> (levels, radius), radius 4 preferred."""
    if planes % per_sample:
        raise CheckpointError(f"correlation input width {planes} is not a multiple of {per_sample}")
    samples = planes // per_sample
    radii = [PREFERRED_RADIUS] + [r for r in range(8, 0, -1) if r != PREFERRED_RADIUS]
    for radius in radii:
        if samples % (2 * radius + 1) == 0:
            return samples // (2 * radius + 1), radius
    raise CheckpointError(f"correlation input width {planes} fits no pyramid of radius 1..8")


def detect_config(state: dict[str, torch.Tensor], variant: Variant) -> ModelConfig:
    """Architecture arguments read off the tensor shapes."""
    n_gru_layers = 1 + ("update_block.gru08.small_gru.convz.weight" in state) + (
        "update_block.gru16.small_gru.convz.weight" in state)
    hidden = _shape(state, "update_block.gru04.small_gru.convz.weight")[0]
    corr_in = _shape(state, "update_block.encoder.convc1.weight")[1]
    try:
        if variant == "raft":
            levels, radius = _split_corr_planes(corr_in, 1)
            mask_out = _shape(state, "update_block.mask.2.weight")[0]
            factor = math.isqrt(mask_out // 9)
            if factor * factor * 9 != mask_out or factor not in (2, 4, 8):
                raise CheckpointError(f"upsampling mask width {mask_out} is not 9 x factor^2 for factor 2, 4 or 8")
            dims = tuple(_shape(state, f"fnet.layer{i}.0.conv1.weight")[0] for i in (1, 2, 3))
            n_downsample = int(math.log2(factor))
            return RaftConfig(hidden_dim=hidden, encoder_dims=dims,
                              feature_dim=_shape(state, "fnet.conv2.weight")[0],
                              corr_levels=levels, corr_radius=radius,
                              n_downsample=n_downsample, n_gru_layers=n_gru_layers,
                              early_downsample=_early_downsample(state, n_downsample), **_edge_refinement(state))
        levels, radius = _split_corr_planes(corr_in, GWC_GROUPS + 1)
        return IGEVConfig(hidden_dim=hidden, corr_levels=levels, corr_radius=radius, n_gru_layers=n_gru_layers)
    except ValueError as err:  # a config check refused the detected shapes
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"unsupported {_NAMES[variant]} architecture: {err}") from None


def _edge_refinement(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """RaftConfig's edge_width and edge_window from ``edge_refine.*`` (none in released checkpoints)."""
    if "edge_refine.stem.weight" not in state:
        return {}
    outputs = _shape(state, "edge_refine.head.weight")[0]
    window = math.isqrt(outputs - 1)
    if window * window + 1 != outputs:
        raise CheckpointError(f"edge refinement head width {outputs} is not window^2 + 1")
    return {"edge_width": _shape(state, "edge_refine.stem.weight")[0], "edge_window": window}


def _early_downsample(state: dict[str, torch.Tensor], n_downsample: int) -> bool:
    """The encoders' stride layout, from their ``stage_strides`` marker (weights
    have the same shapes in both layouts; released checkpoints have no marker)."""
    marks = {k: tuple(int(v) for v in state[k].tolist()) for k in ("fnet.stage_strides", "cnet.stage_strides")
             if k in state}
    if not marks:
        return False
    expected = stage_strides(n_downsample, early=True)
    wrong = [f"{k} {v}" for k, v in marks.items() if v != expected]
    if wrong or len(marks) != 2:
        raise CheckpointError(f"encoder stride markers {', '.join(wrong) or 'present in only one encoder'} do not "
                              f"fit a 1/{2 ** n_downsample} model (expected {expected} in fnet and cnet)")
    return True


def build_model(config: ModelConfig) -> SelectiveStereo:
    return SelectiveRAFT(config) if isinstance(config, RaftConfig) else SelectiveIGEV(config)


def released_model(variant: Variant, seed: int = 0) -> SelectiveStereo:
    """The authors' released architecture of ``variant`` with weights drawn from ``seed`` (the global RNG is
    left as it was): for timing, where the arithmetic does not depend on the values, and for tests."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(IGEVConfig() if variant == "igev" else RaftConfig())


def load_model(path: str | Path, variant: Variant | None = None) -> SelectiveStereo:
    """Build the network a checkpoint describes and load its weights (eval mode, CPU).

    variant: 'raft' or 'igev' to insist on one (an error if the file holds the
    other), or None to detect it.
    """
    state = read_state_dict(path)
    try:
        found = detect_variant(state)
        if variant is not None and variant != found:
            raise CheckpointError(f"holds a {_NAMES[found]} state dict, not {_NAMES[variant]} "
                                  f"(drop the variant option or pick {found!r})")
        config = detect_config(state, found)
        model = build_model(config)
        unbuilt = tuple("cnet." + p for p in model.cnet.unbuilt_prefixes())
        state = {k: v for k, v in state.items() if not k.startswith(unbuilt)} if unbuilt else state
        load_state(model, state)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return model.eval()


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict load with a one-line summary of every mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_summarise(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_summarise(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_summarise(mismatched)}")
    if problems:
        raise CheckpointError("does not fit the detected architecture: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def save_checkpoint(model: torch.nn.Module, path: str | Path, half: bool = False) -> None:
    """Save a state dict in the released key layout (no ``module.`` prefix),
    optionally with float16 weights to halve the file (loading returns float32)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    torch.save(state, Path(path))
