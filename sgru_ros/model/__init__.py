"""The Selective-Stereo networks (no ROS imports here)."""

from .base import SIZE_MULTIPLE, StereoPrediction
from .checkpoint import CheckpointError, build_model, load_model, released_model, save_checkpoint
from .config import IGEVConfig, ModelConfig, RaftConfig
from .gru import ConvGRU, SelectiveConvGRU
from .igev import SelectiveIGEV
from .raft import SelectiveRAFT

__all__ = [
    "SIZE_MULTIPLE", "StereoPrediction", "CheckpointError", "build_model", "load_model", "released_model",
    "save_checkpoint",
    "IGEVConfig", "ModelConfig", "RaftConfig", "ConvGRU", "SelectiveConvGRU", "SelectiveIGEV", "SelectiveRAFT",
]
