"""The checkpoint that ships inside the package (used when no model is configured)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED_CHECKPOINT = WEIGHTS_DIR / "sgru_raft_compact.pth"


def default_checkpoint() -> Path:
    if not BUNDLED_CHECKPOINT.is_file():
        raise ValueError(f"no bundled weights at {BUNDLED_CHECKPOINT}; pass a checkpoint explicitly")
    return BUNDLED_CHECKPOINT
