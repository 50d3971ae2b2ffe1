"""The SelectiveConvGRU and the attention that steers it.

Paper: Wang, Xu, Jia, Yang, "Selective-Stereo: Adaptive Frequency
Information Selection for Stereo Matching", CVPR 2024, Sec. 3.2 (Contextual
Spatial Attention, CSA) and Sec. 3.3 (Selective Multi-Range GRU, SMR-GRU).

Attribute names (``small_gru``, ``convz``, ``fc``, ``samconv`` ...) are the
ones in the authors' released checkpoints and must not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import Conv2d, conv2d


class ConvGRU(nn.Module):
    """A convolutional GRU cell with a square kernel.

        z  = sigmoid(Conv_z([h, c, y]))
        r  = sigmoid(Conv_r([h, c, y]))
        q  = tanh(Conv_q([r * h, c, y]))
        h' = (1 - z) * h + z * q

    c is the frame's context (fixed while a frame is refined), y the inputs
    that change every iteration. A convolution is linear in its input
    channels, Conv_g([h, c, y]) = W_g^h * h + W_g^c * c + W_g^y * y + b_g,
    so ``prepare`` computes the context's share W_g^c * c + b_g of z, r and q
    once per frame and each iteration convolves only [h, y] (RAFT-Stereo
    precomputes it the same way; Selective-Stereo as released does not).
    z and r read the same input, so they are one convolution with stacked weights.

    Args:
        hidden_dim: channels of h.
        input_dim: channels of [c, y] (the context first).
        kernel_size: odd kernel size; "same" padding keeps the resolution.
        context_dim: channels of c.
    """

    def __init__(self, hidden_dim: int, input_dim: int, kernel_size: int, context_dim: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if not 0 <= context_dim <= input_dim:
            raise ValueError(f"context_dim must lie in 0..{input_dim}, got {context_dim}")
        self.hidden_dim = hidden_dim
        self.input_dim = input_dim
        self.context_dim = context_dim
        pad = kernel_size // 2
        self.convz = Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size, padding=pad)
        self.convr = Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size, padding=pad)
        self.convq = Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size, padding=pad)

    def prepare(self, context: torch.Tensor) -> GRUStep:
        """context: B x context_dim x H x W -> the step function for this frame."""
        if context.shape[1] != self.context_dim:
            raise ValueError(f"ConvGRU expects {self.context_dim} context channels, got {context.shape[1]}")
        h, c = self.hidden_dim, self.context_dim
        convs = (self.convz, self.convr, self.convq)
        share = conv2d(context, torch.cat([conv.weight[:, h:h + c] for conv in convs]),
                       torch.cat([conv.bias for conv in convs]), self.convz.padding)
        without_context = [torch.cat([conv.weight[:, :h], conv.weight[:, h + c:]], dim=1) for conv in convs]
        return GRUStep(zr_weight=torch.cat(without_context[:2]), q_weight=without_context[2],
                       share=share, padding=self.convz.padding)


@dataclass
class GRUStep:
    """One ConvGRU with one frame's context folded in (``ConvGRU.prepare``).

    zr_weight: 2*hidden x (hidden + |y|) x k x k, the z and r convolutions
    without their context channels, stacked; q_weight: hidden x (hidden + |y|)
    x k x k; share: B x 3*hidden x H x W, the context's share and the biases
    of z, r and q.
    """

    zr_weight: torch.Tensor
    q_weight: torch.Tensor
    share: torch.Tensor
    padding: tuple[int, int]

    def __call__(self, h: torch.Tensor, y: torch.Tensor, hy: torch.Tensor) -> torch.Tensor:
        """h: B x hidden x H x W, y: B x |y| x H x W, hy: [h, y] concatenated (the
        caller's two GRUs share it) -> the new h, B x hidden x H x W."""
        hidden = h.shape[1]
        zr = torch.sigmoid(conv2d(hy, self.zr_weight, None, self.padding) + self.share[:, :2 * hidden])
        z, r = zr[:, :hidden], zr[:, hidden:]
        q = torch.tanh(conv2d(torch.cat([r * h, y], dim=1), self.q_weight, None, self.padding)
                       + self.share[:, 2 * hidden:])
        return h + z * (q - h)


class SelectiveConvGRU(nn.Module):
    """Two ConvGRUs on the same input, fused by a spatial attention map.

        h_t = A * GRU_1x1(h, x) + (1 - A) * GRU_3x3(h, x)

    The 1x1 GRU has a small receptive field and keeps high-frequency detail
    (edges, thin structures); the 3x3 GRU captures low-frequency context
    (textureless regions). A in [0, 1] comes from the context features
    (``SpatialAttention``), so each pixel chooses its mix (paper, Eq. 7).

    The released code feeds the concatenated inputs straight into both GRUs:
    there is no extra 3x3 conv on [x, h] before them (see docs/architecture.md).
    x is [context, per-iteration inputs]; ``prepare`` folds a frame's context
    and attention in once (see ``ConvGRU``).
    """

    def __init__(self, hidden_dim: int, input_dim: int, context_dim: int, small_kernel_size: int = 1,
                 large_kernel_size: int = 3) -> None:
        super().__init__()
        self.small_gru = ConvGRU(hidden_dim, input_dim, small_kernel_size, context_dim)
        self.large_gru = ConvGRU(hidden_dim, input_dim, large_kernel_size, context_dim)

    def prepare(self, context: torch.Tensor, attention: torch.Tensor) -> SelectiveGRUStep:
        """context: B x context_dim x H x W; attention: B x 1 x H x W -> this frame's step function."""
        if attention.shape[1] != 1 or attention.shape[-2:] != context.shape[-2:]:
            raise ValueError(
                f"attention must be B x 1 x {tuple(context.shape[-2:])}, got {tuple(attention.shape)}")
        small = self.small_gru
        return SelectiveGRUStep(small.prepare(context), self.large_gru.prepare(context), attention, 1 - attention,
                                small.input_dim - small.context_dim)


@dataclass
class SelectiveGRUStep:
    """A SelectiveConvGRU with one frame's context and attention folded in."""

    small: GRUStep
    large: GRUStep
    attention: torch.Tensor  # A, B x 1 x H x W
    complement: torch.Tensor  # 1 - A, once per frame
    input_dim: int

    def __call__(self, h: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """h: B x hidden x H x W; inputs: the per-iteration inputs B x C_i x H x W with
        sum(C_i) == input_dim. Returns the new hidden state, B x hidden x H x W."""
        y = torch.cat(inputs, dim=1) if len(inputs) > 1 else inputs[0]
        if y.shape[1] != self.input_dim:
            raise ValueError(f"SelectiveConvGRU expects {self.input_dim} per-iteration input channels, "
                             f"got {y.shape[1]}")
        hy = torch.cat([h, y], dim=1)  # read by both GRUs' z and r
        return self.small(h, y, hy) * self.attention + self.large(h, y, hy) * self.complement


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))).

    Returns weights B x C x 1 x 1 that the caller multiplies into x. The MLP
    squeezes channels by 16, CBAM's ratio, which the released code hard-codes.
    """

    reduction = 16

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            Conv2d(channels, channels // self.reduction, 1, bias=False),
            nn.ReLU(),
            Conv2d(channels // self.reduction, channels, 1, bias=False),
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
        self.samconv = Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

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
