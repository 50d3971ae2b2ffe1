"""The checkpoints that ship inside the package, by the name the ``model`` option takes."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: compact: the default network (docs/model_card.md). fast: the same network with encoders half as wide,
#: distilled from it (``training.distill``): for init sgbm at 1-2 iterations on a CPU.
BUNDLED_MODELS = {"compact": WEIGHTS_DIR / "sgru_raft_compact.pth", "fast": WEIGHTS_DIR / "sgru_raft_fast.pth"}
#: The model an empty or missing ``model`` option means.
DEFAULT_MODEL = "compact"
BUNDLED_CHECKPOINT = BUNDLED_MODELS[DEFAULT_MODEL]


def resolve_checkpoint(model: str | Path | None) -> Path:
    """The file a ``model`` option means: empty or None the bundled compact model, a name of
    ``BUNDLED_MODELS`` that bundled model, anything else a checkpoint path (a file named like a bundled
    model is given with its folder, e.g. ./fast)."""
    if not model:
        model = DEFAULT_MODEL
    if str(model) in BUNDLED_MODELS:
        path = BUNDLED_MODELS[str(model)]
        if not path.is_file():
            raise ValueError(f"no bundled weights at {path}; pass a checkpoint explicitly")
        return path
    return Path(model)


def default_checkpoint() -> Path:
    return resolve_checkpoint(None)
