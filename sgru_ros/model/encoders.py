"""Image encoders: RAFT-Stereo's residual encoders and IGEV's MobileNetV2 pyramid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BasicConv, Conv2d, Norm, ResidualBlock, UpConcat, norm2d


def stage_strides(downsample: int, early: bool) -> tuple[int, int, int]:
    """Strides of (stem, stage 2, stage 3) that reach 1/2**downsample.

    RAFT-Stereo halves late (stage 3 first, then stage 2, then the stem), so at
    1/4 the 7x7 stem and stage 1 run at full resolution: about half of all the
    encoders' work. ``early`` halves in the opposite order (stem first); the
    receptive field grows faster and the weights keep their shapes.
    """
    if downsample not in (0, 1, 2, 3):
        raise ValueError(f"downsample must be 0..3, got {downsample}")
    order = (0, 1, 2) if early else (2, 1, 0)  # which stride slot halves first
    strides = [1, 1, 1]
    for slot in order[:downsample]:
        strides[slot] = 2
    return strides[0], strides[1], strides[2]


class _ResidualTrunk(nn.Module):
    """7x7 stem and three residual stages (two blocks each) down to 1/2**downsample,
    with the strides of ``stage_strides(downsample, early)``.

    A trunk built with ``early=True`` carries a ``stage_strides`` buffer in its
    state dict: the weights alone cannot tell the two layouts apart, the loader
    reads it (released checkpoints have none and use the late layout).
    """

    def __init__(self, dims: tuple[int, int, int], norm: Norm, downsample: int, early: bool = False) -> None:
        super().__init__()
        d1, d2, d3 = dims
        stem, s2, s3 = stage_strides(downsample, early)
        self.conv1 = Conv2d(3, d1, kernel_size=7, stride=stem, padding=3)
        self.norm1 = norm2d(norm, d1)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = self._stage(d1, d1, norm, stride=1)
        self.layer2 = self._stage(d1, d2, norm, stride=s2)
        self.layer3 = self._stage(d2, d3, norm, stride=s3)
        if early:
            self.register_buffer("stage_strides", torch.tensor([stem, s2, s3]))

    @staticmethod
    def _stage(in_planes: int, planes: int, norm: Norm, stride: int) -> nn.Sequential:
        return nn.Sequential(ResidualBlock(in_planes, planes, norm, stride),
                             ResidualBlock(planes, planes, norm, 1))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class FeatureEncoder(_ResidualTrunk):
    """Matching features (RAFT ``fnet``, instance norm).

    B x 3 x H x W (normalised to [-1, 1]) -> B x out_dim x H/f x W/f, f = 2**downsample.
    """

    def __init__(self, dims: tuple[int, int, int], out_dim: int, downsample: int, early: bool = False) -> None:
        super().__init__(dims, "instance", downsample, early)
        self.conv2 = Conv2d(dims[2], out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.trunk(x))


class ContextEncoder(_ResidualTrunk):
    """Multi-level context encoder (RAFT-Stereo ``cnet``, batch norm).

    For each GRU level l (resolution 1/f, 1/2f, 1/4f) two heads give the
    initial hidden state (before tanh) and the context features (before ReLU).
    ``head_names`` are the released attribute names of the three levels' heads
    (Selective-RAFT: outputs08/16/32, Selective-IGEV: outputs04/08/16).

    B x 3 x H x W -> [(B x hidden x H_l x W_l, B x context x H_l x W_l)] * num_levels.
    """

    def __init__(self, dims: tuple[int, int, int], hidden_dim: int, context_dim: int,
                 downsample: int, num_levels: int, head_names: tuple[str, str, str], early: bool = False) -> None:
        super().__init__(dims, "batch", downsample, early)
        self.num_levels = num_levels
        width = dims[2]
        self._levels = [(None, head_names[0]), ("layer4", head_names[1]), ("layer5", head_names[2])]
        for level, (stage, head) in enumerate(self._levels[:num_levels]):
            if stage is not None:
                self.add_module(stage, self._stage(width, width, "batch", stride=2))
            heads = []
            for out_dim in (hidden_dim, context_dim):
                conv = Conv2d(width, out_dim, 3, padding=1)
                # The coarsest level's heads have no residual block (as released).
                heads.append(conv if level == 2 else nn.Sequential(ResidualBlock(width, width, "batch", 1), conv))
            self.add_module(head, nn.ModuleList(heads))

    def unbuilt_prefixes(self) -> list[str]:
        """State-dict prefixes of the levels this encoder does not build. The
        released encoder always builds all three; the forward pass never runs
        the levels beyond the GRU levels, so their weights are dropped on load."""
        return [f"{name}." for pair in self._levels[self.num_levels:] for name in pair]

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = self.trunk(x)
        levels = []
        for stage, head in self._levels[:self.num_levels]:
            if stage is not None:
                x = self.get_submodule(stage)(x)
            levels.append(tuple(f(x) for f in self.get_submodule(head)))
        return levels


class _DepthwiseSeparable(nn.Module):
    """MobileNetV2's first block: 3x3 depthwise -> BN -> ReLU6 -> 1x1 -> BN (timm names)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv_dw = Conv2d(in_chs, in_chs, 3, padding=1, groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv_pw = Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.has_skip = in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(F.relu6(self.bn1(self.conv_dw(x)))))
        return x + y if self.has_skip else y


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise (stride) -> 1x1 project,
    BN after each, ReLU6 after the first two, residual when shapes allow (timm names)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int = 6) -> None:
        super().__init__()
        mid = in_chs * expansion
        self.conv_pw = Conv2d(in_chs, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv_dw = Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv_pwl = Conv2d(mid, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.has_skip = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = F.relu6(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.has_skip else y


def _ir_stage(in_chs: int, out_chs: int, repeats: int, stride: int) -> nn.Sequential:
    blocks = [_InvertedResidual(in_chs, out_chs, stride)]
    blocks += [_InvertedResidual(out_chs, out_chs, 1) for _ in range(repeats - 1)]
    return nn.Sequential(*blocks)


class MobileNetV2Pyramid(nn.Module):
    """IGEV's feature network: MobileNetV2 (timm ``mobilenetv2_100`` stages 0-5,
    parameter names as in timm's ``features_only`` model) plus a U-Net decoder.

    The stage table is MobileNetV2's (Sandler et al. 2018, Table 2): channels
    16/24/32/64/96/160, strides 1/2/2/2/1/2, expansion 6. No weights are
    downloaded: the released IGEV checkpoints hold them.

    B x 3 x H x W -> [B x 48 x H/4, B x 64 x H/8, B x 192 x H/16, B x 160 x H/32].
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        # Nesting mirrors torch.nn.Sequential(*timm_model.blocks[a:b]): blockN.<stage>.<block>.
        self.block0 = nn.Sequential(nn.Sequential(_DepthwiseSeparable(32, 16)))
        self.block1 = nn.Sequential(_ir_stage(16, 24, 2, 2))
        self.block2 = nn.Sequential(_ir_stage(24, 32, 3, 2))
        self.block3 = nn.Sequential(_ir_stage(32, 64, 4, 2), _ir_stage(64, 96, 3, 1))
        self.block4 = nn.Sequential(_ir_stage(96, 160, 3, 2))
        self.deconv32_16 = UpConcat(160, 96, "instance")
        self.deconv16_8 = UpConcat(192, 32, "instance")
        self.deconv8_4 = UpConcat(64, 24, "instance")
        self.conv4 = BasicConv(48, 48, norm="instance", kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self.bn1(self.conv_stem(x)))
        x2 = self.block0(x)
        x4 = self.block1(x2)
        x8 = self.block2(x4)
        x16 = self.block3(x8)
        x32 = self.block4(x16)
        x16 = self.deconv32_16(x32, x16)
        x8 = self.deconv16_8(x16, x8)
        x4 = self.conv4(self.deconv8_4(x8, x4))
        return [x4, x8, x16, x32]
