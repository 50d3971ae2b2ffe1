"""The SelectiveConvGRU and the attention that steers it.

Paper: Wang, Xu, Jia, Yang, "Selective-Stereo: Adaptive Frequency
Information Selection for Stereo Matching", CVPR 2024, Sec. 3.2 (Contextual
Spatial Attention, CSA) and Sec. 3.3 (Selective Multi-Range GRU, SMR-GRU).

Attribute names (``small_gru``, ``convz``, ``fc``, ``samconv`` ...) are the
ones in the authors' released checkpoints and must not change.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvGRU(nn.Module):
    """A convolutional GRU cell with a square kernel.

        z  = sigmoid(Conv_z([h, x]))
        r  = sigmoid(Conv_r([h, x]))
        q  = tanh(Conv_q([r * h, x]))
        h' = (1 - z) * h + z * q

    Args:
        hidden_dim: channels of h.
        input_dim: channels of x (all inputs concatenated).
        kernel_size: odd kernel size; "same" padding keeps the resolution.
    """

    def __init__(self, hidden_dim: int, input_dim: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.hidden_dim = hidden_dim
        self.input_dim = input_dim
        pad = kernel_size // 2
        self.convz = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size, padding=pad)
        self.convr = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size, padding=pad)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size, padding=pad)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """h: B x hidden_dim x H x W, x: B x input_dim x H x W -> B x hidden_dim x H x W."""
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(self.convz(hx))
        r = torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


class SelectiveConvGRU(nn.Module):
    """Two ConvGRUs on the same input, fused by a spatial attention map.

        h_t = A * GRU_1x1(h, x) + (1 - A) * GRU_3x3(h, x)

    The 1x1 GRU has a small receptive field and keeps high-frequency detail
    (edges, thin structures); the 3x3 GRU captures low-frequency context
    (textureless regions). A in [0, 1] comes from the context features
    (``SpatialAttention``), so each pixel chooses its mix (paper, Eq. 7).

    The released code feeds the concatenated inputs straight into both GRUs:
    there is no extra 3x3 conv on [x, h] before them (see docs/architecture.md).
    """

    def __init__(self, hidden_dim: int, input_dim: int, small_kernel_size: int = 1,
                 large_kernel_size: int = 3) -> None:
        super().__init__()
        self.small_gru = ConvGRU(hidden_dim, input_dim, small_kernel_size)
        self.large_gru = ConvGRU(hidden_dim, input_dim, large_kernel_size)

    def forward(self, attention: torch.Tensor, h: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """attention: B x 1 x H x W; h: B x hidden x H x W; inputs: B x C_i x H x W with
        sum(C_i) == input_dim. Returns the new hidden state, B x hidden x H x W."""
        x = torch.cat(inputs, dim=1)
        expected = self.small_gru.input_dim
        if x.shape[1] != expected:
            raise ValueError(f"SelectiveConvGRU expects {expected} input channels, got {x.shape[1]}")
        if attention.shape[1] != 1 or attention.shape[-2:] != h.shape[-2:]:
            raise ValueError(
                f"attention must be B x 1 x {tuple(h.shape[-2:])}, got {tuple(attention.shape)}")
        return self.small_gru(h, x) * attention + self.large_gru(h, x) * (1 - attention)


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))).

    Returns weights B x C x 1 x 1 that the caller multiplies into x. The MLP
    squeezes channels by 16, CBAM's ratio, which the released code hard-codes.
    """

    reduction = 16

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Conv2d(channels, channels // self.reduction, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels // self.reduction, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc(torch.mean(x, dim=(2, 3), keepdim=True))
        peak = self.fc(torch.amax(x, dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(Conv7x7([mean_c(x), max_c(x)])).

    Produces the map A (B x 1 x H x W) that weights the 1x1 GRU against the
    3x3 GRU in ``SelectiveConvGRU``. Kernel 7 as in CBAM and the released code.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.samconv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.samconv(pooled))


def apply_context_attention(cam: ChannelAttention, sam: SpatialAttention,
                            context: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Contextual Spatial Attention (paper Sec. 3.2) on every GRU level.

    Each level's context features are reweighted by the shared channel
    attention, then the shared spatial attention turns them into that level's
    fusion map A for the SelectiveConvGRU.

    context: per level B x C x H_l x W_l (after ReLU). Returns (enhanced
    context per level, attention map B x 1 x H_l x W_l per level).
    """
    enhanced = [cam(c) * c for c in context]
    return enhanced, [sam(c) for c in enhanced]
