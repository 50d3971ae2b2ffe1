"""The iterative update operator: motion encoder + three-level SelectiveConvGRU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gru import SelectiveConvGRU
from .layers import DispHead


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
        self.convc1 = nn.Conv2d(corr_planes, width, 1, padding=0)
        self.convc2 = nn.Conv2d(width, width, 3, padding=1)
        self.disp_prefix = disp_prefix
        self.add_module(disp_prefix + "1", nn.Conv2d(1, width, 7, padding=3))
        self.add_module(disp_prefix + "2", nn.Conv2d(width, width, 3, padding=1))
        self.conv = nn.Conv2d(2 * width, out_dim - 1, 3, padding=1)

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
            self.gru16 = SelectiveConvGRU(h, 2 * h)
        if n_gru_layers >= 2:
            self.gru08 = SelectiveConvGRU(h, 2 * h + h * (n_gru_layers == 3))
        self.gru04 = SelectiveConvGRU(h, 2 * h + h * (n_gru_layers > 1))
        self.disp_head = DispHead(h, 2 * h)

    def upsample_features(self, net04: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, net: list[torch.Tensor], inp: list[torch.Tensor], corr: torch.Tensor,
                disp: torch.Tensor, att: list[torch.Tensor]
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """One refinement step.

        net, inp, att: per level (finest first) B x h x H_l x W_l hidden states,
        context features and B x 1 x H_l x W_l fusion maps; corr: B x P x H x W
        sampled cost; disp: B x 1 x H x W current estimate (the model's sign).
        Returns (new hidden states, upsampling features, disparity update B x 1 x H x W).
        """
        net = list(net)
        n = self.n_gru_layers
        if n == 3:
            net[2] = self.gru16(att[2], net[2], inp[2], pool2x(net[1]))
            net[1] = self.gru08(att[1], net[1], inp[1], pool2x(net[0]), resize_to(net[2], net[1]))
        elif n == 2:
            net[1] = self.gru08(att[1], net[1], inp[1], pool2x(net[0]))
        motion = torch.cat([inp[0], self.encoder(disp, corr)], dim=1)
        if n > 1:
            net[0] = self.gru04(att[0], net[0], motion, resize_to(net[1], net[0]))
        else:
            net[0] = self.gru04(att[0], net[0], motion)
        return net, self.upsample_features(net[0]), self.disp_head(net[0])


class RaftUpdateBlock(SelectiveUpdateBlock):
    """Selective-RAFT's update block; its head predicts convex-upsampling logits
    (9 weights per output pixel of each factor x factor cell)."""

    def __init__(self, hidden_dim: int, corr_planes: int, n_gru_layers: int, factor: int) -> None:
        super().__init__(hidden_dim, corr_planes, n_gru_layers, disp_prefix="convf")
        self.mask = nn.Sequential(
            nn.Conv2d(hidden_dim, 2 * hidden_dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * hidden_dim, factor**2 * 9, 1, padding=0))

    def upsample_features(self, net04: torch.Tensor) -> torch.Tensor:
        # The 0.25 scale balances gradients between the mask and the GRU (RAFT, Teed & Deng 2020).
        return 0.25 * self.mask(net04)


class IGEVUpdateBlock(SelectiveUpdateBlock):
    """Selective-IGEV's update block; its head gives 32 features for the
    context upsampling network."""

    def __init__(self, hidden_dim: int, corr_planes: int, n_gru_layers: int) -> None:
        super().__init__(hidden_dim, corr_planes, n_gru_layers, disp_prefix="convd")
        self.mask_feat_4 = nn.Sequential(nn.Conv2d(hidden_dim, 32, 3, padding=1), nn.ReLU(inplace=True))

    def upsample_features(self, net04: torch.Tensor) -> torch.Tensor:
        return 0.25 * self.mask_feat_4(net04)
