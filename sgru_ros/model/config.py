"""Architecture configurations of the two Selective-Stereo networks.

Only shape-bearing arguments live here: everything a checkpoint's tensor
shapes determine. Run-time choices (iterations, precision, IGEV's
``max_disp``) are arguments of ``forward`` / the inference API instead.

The defaults are the authors' published configuration (train_stereo.py of
Selective-RAFT and Selective-IGEV), so ``RaftConfig()`` and ``IGEVConfig()``
load the released checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass


def _check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class RaftConfig:
    """Selective-RAFT (RAFT-Stereo backbone).

    hidden_dim: width of the GRU hidden state, the context features and the
        motion features at every GRU level (the authors' ``--hidden_dim``).
    encoder_dims: widths of the three residual stages shared by the feature
        and the context encoder (RAFT-Stereo: 64, 96, 128).
    feature_dim: channels of the matching features (RAFT-Stereo: 256).
    corr_levels, corr_radius: the 1D all-pairs correlation pyramid.
    n_downsample: the disparity field lives at 1/2**n_downsample resolution.
    n_gru_layers: number of GRU levels (1/4, 1/8, 1/16 for n_downsample=2).
    early_downsample: where the encoders halve the resolution. False (as
        released): the last stages stride first, so the 7x7 stem and the first
        stage run at full resolution for n_downsample=2. True: the stem strides
        first, so they run at 1/2 and the last stage keeps the working
        resolution; about half the encoders' cost at the same output size and
        the same weight shapes (checkpoints mark it, see ``FeatureEncoder``).
    edge_width, edge_window: the full-resolution ``edges.EdgeRefinement`` after
        upsampling, its hidden channels and neighbourhood; edge_width 0 (as
        released): none.
    """

    hidden_dim: int = 128
    encoder_dims: tuple[int, int, int] = (64, 96, 128)
    feature_dim: int = 256
    corr_levels: int = 4
    corr_radius: int = 4
    n_downsample: int = 2
    n_gru_layers: int = 3
    early_downsample: bool = False
    edge_width: int = 0
    edge_window: int = 5

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "feature_dim", "corr_levels", "corr_radius"):
            _check_positive(name, getattr(self, name))
        if self.edge_width < 0 or self.edge_window < 3 or self.edge_window % 2 != 1:
            raise ValueError(f"edge_width must be >= 0 and edge_window odd and >= 3, got {self.edge_width} and "
                             f"{self.edge_window}")
        if len(self.encoder_dims) != 3 or min(self.encoder_dims) <= 0:
            raise ValueError(f"encoder_dims must be three positive widths, got {self.encoder_dims}")
        if self.hidden_dim % 16:
            # The channel attention squeezes by 16 (CBAM ratio used by the paper).
            raise ValueError(f"hidden_dim must be a multiple of 16, got {self.hidden_dim}")
        if self.n_downsample not in (1, 2, 3):
            raise ValueError(f"n_downsample must be 1, 2 or 3, got {self.n_downsample}")
        if self.n_gru_layers not in (1, 2, 3):
            raise ValueError(f"n_gru_layers must be 1, 2 or 3, got {self.n_gru_layers}")

    @property
    def downsample_factor(self) -> int:
        return 2**self.n_downsample


@dataclass(frozen=True)
class IGEVConfig:
    """Selective-IGEV (IGEV-Stereo backbone).

    hidden_dim: width of the GRU hidden state and context features at every
        level (the authors' ``--hidden_dims``, which must all be equal because
        one channel-attention module is shared by all levels).
    corr_levels, corr_radius: the combined geometry encoding volume pyramid.
    n_gru_layers: number of GRU levels (1/4, 1/8, 1/16).

    IGEV works at 1/4 resolution by construction (its context upsampling is
    fixed at 4x), so there is no downsampling argument.
    """

    hidden_dim: int = 128
    corr_levels: int = 2
    corr_radius: int = 4
    n_gru_layers: int = 3

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "corr_levels", "corr_radius"):
            _check_positive(name, getattr(self, name))
        if self.hidden_dim % 16:
            raise ValueError(f"hidden_dim must be a multiple of 16, got {self.hidden_dim}")
        if self.n_gru_layers not in (1, 2, 3):
            raise ValueError(f"n_gru_layers must be 1, 2 or 3, got {self.n_gru_layers}")

    @property
    def downsample_factor(self) -> int:
        return 4


ModelConfig = RaftConfig | IGEVConfig
