"""The iterative update operator: motion encoder + three-level SelectiveConvGRU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gru import SelectiveConvGRU, SelectiveGRUStep
from .layers import Conv2d, DispHead


class MotionEncoder(nn.Module):
    """Encodes the sampled matching cost and the current disparity.

    corr: B x corr_planes x H x W, disp: B x 1 x H x W -> B x out_dim x H x W
    (out_dim - 1 learned channels, then the disparity itself).

    The disparity branch is called ``convf*`` in Selective-RAFT's checkpoints
    and ``convd*`` in Selective-IGEV's; ``disp_prefix`` picks the name.
    """

    def __init__(self, corr_planes: int, out_dim: int, disp_prefix: str) -> None:
        super().__init__()
        width = out_dim // 2  # 64 for the released width of 128
        self.convc1 = Conv2d(corr_planes, width, 1, padding=0)
        self.convc2 = Conv2d(width, width, 3, padding=1)
        self.disp_prefix = disp_prefix
        self.add_module(disp_prefix + "1", Conv2d(1, width, 7, padding=3))
        self.add_module(disp_prefix + "2", Conv2d(width, width, 3, padding=1))
        self.conv = Conv2d(2 * width, out_dim - 1, 3, padding=1)

    def forward(self, disp: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        dis = F.relu(self.get_submodule(self.disp_prefix + "1")(disp))
        dis = F.relu(self.get_submodule(self.disp_prefix + "2")(dis))
        out = F.relu(self.conv(torch.cat([cor, dis], dim=1)))
        return torch.cat([out, disp], dim=1)


def pool2x(x: torch.Tensor) -> torch.Tensor:
    """Halve the resolution (3x3 average, stride 2), to pass a finer GRU's state up."""
    return F.avg_pool2d(x, 3, stride=2, padding=1)


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize (align_corners=True) to ``like``'s size, to pass a coarser state down."""
    return F.interpolate(x, like.shape[2:], mode="bilinear", align_corners=True)


class SelectiveUpdateBlock(nn.Module):
    """Multi-level update: GRUs at 1/16 -> 1/8 -> 1/4 of the disparity resolution
    exchange hidden states (pooled up, resized down); the finest level also sees
    the motion features and predicts the disparity update.

    All levels use width ``hidden_dim`` (hidden state, context and motion).
    Subclasses add the head that predicts the upsampling weights.
    """

    def __init__(self, hidden_dim: int, corr_planes: int, n_gru_layers: int, disp_prefix: str) -> None:
        super().__init__()
        h = hidden_dim
        self.n_gru_layers = n_gru_layers
        self.encoder = MotionEncoder(corr_planes, h, disp_prefix)
        # Inputs: own context + the neighbour levels' hidden states (+ motion at 1/4).
        if n_gru_layers == 3:
            self.gru16 = SelectiveConvGRU(h, 2 * h, context_dim=h)
        if n_gru_layers >= 2:
            self.gru08 = SelectiveConvGRU(h, 2 * h + h * (n_gru_layers == 3), context_dim=h)
        self.gru04 = SelectiveConvGRU(h, 2 * h + h * (n_gru_layers > 1), context_dim=h)
        self.disp_head = DispHead(h, 2 * h)

    def upsample_features(self, net04: torch.Tensor) -> torch.Tensor:
        """B x h x H x W finest hidden state -> the features the network's upsampling reads.
        Only iterations whose prediction is returned need them."""
        raise NotImplementedError

    def grus(self) -> list[SelectiveConvGRU]:
        """The GRUs, finest level first."""
        return [getattr(self, name) for name in ("gru04", "gru08", "gru16")[:self.n_gru_layers]]

    def prepare(self, inp: list[torch.Tensor], att: list[torch.Tensor]) -> list[SelectiveGRUStep]:
        """Fold one frame's context features and fusion maps (per level, finest first,
        B x h x H_l x W_l and B x 1 x H_l x W_l) into each level's GRU, once per frame."""
        return [gru.prepare(context, attention) for gru, context, attention in zip(self.grus(), inp, att)]

    def forward(self, net: list[torch.Tensor], steps: list[SelectiveGRUStep], corr: torch.Tensor,
                disp: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One refinement step.

        net: per level (finest first) B x h x H_l x W_l hidden states; steps:
        ``prepare``'s GRUs of this frame; corr: B x P x H x W sampled cost;
        disp: B x 1 x H x W current estimate (the model's sign).
        Returns (new hidden states, disparity update B x 1 x H x W).
        """
        net = list(net)
        n = self.n_gru_layers
        if n == 3:
            net[2] = steps[2](net[2], pool2x(net[1]))
            net[1] = steps[1](net[1], pool2x(net[0]), resize_to(net[2], net[1]))
        elif n == 2:
            net[1] = steps[1](net[1], pool2x(net[0]))
        motion = self.encoder(disp, corr)
        if n > 1:
            net[0] = steps[0](net[0], motion, resize_to(net[1], net[0]))
        else:
            net[0] = steps[0](net[0], motion)
        return net, self.disp_head(net[0])


class RaftUpdateBlock(SelectiveUpdateBlock):
    """Selective-RAFT's update block; its head predicts convex-upsampling logits
    (9 weights per output pixel of each factor x factor cell)."""

    def __init__(self, hidden_dim: int, corr_planes: int, n_gru_layers: int, factor: int) -> None:
        super().__init__(hidden_dim, corr_planes, n_gru_layers, disp_prefix="convf")
        self.mask = nn.Sequential(
            Conv2d(hidden_dim, 2 * hidden_dim, 3, padding=1),
            nn.ReLU(inplace=True),
            Conv2d(2 * hidden_dim, factor**2 * 9, 1, padding=0))

    def upsample_features(self, net04: torch.Tensor) -> torch.Tensor:
        # The 0.25 scale balances gradients between the mask and the GRU (RAFT, Teed & Deng 2020).
        return 0.25 * self.mask(net04)


class IGEVUpdateBlock(SelectiveUpdateBlock):
    """Selective-IGEV's update block; its head gives 32 features for the
    context upsampling network."""

    def __init__(self, hidden_dim: int, corr_planes: int, n_gru_layers: int) -> None:
        super().__init__(hidden_dim, corr_planes, n_gru_layers, disp_prefix="convd")
        self.mask_feat_4 = nn.Sequential(Conv2d(hidden_dim, 32, 3, padding=1), nn.ReLU(inplace=True))

    def upsample_features(self, net04: torch.Tensor) -> torch.Tensor:
        return 0.25 * self.mask_feat_4(net04)
