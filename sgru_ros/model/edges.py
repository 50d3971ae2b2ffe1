"""Depth edges at full resolution: a small refinement steered by the left image.

Selective-RAFT refines disparity at 1/4 resolution and upsamples it convexly: each fine pixel is a mix
of its 3x3 *coarse* neighbours, with weights computed from the GRU's 1/4-resolution state (RAFT,
Teed & Deng 2020, Sec. 3.3). A depth edge can therefore only be placed as finely as that state sees
the image, and thin structures and object outlines come out a pixel or two too wide or too narrow:
the compact bundled model loses most of its accuracy there (docs/model_card.md, "Limits").

``EdgeRefinement`` looks at the full-resolution left image, the upsampled disparity and how well the
right view, warped by that disparity, matches the left one, and replaces each pixel's disparity by a
softmax-weighted mix of its ``window`` x ``window`` *fine* neighbours plus a small correction. A mix
(as in RAFT's upsampling, not a free residual as in StereoNet's refinement, Khamis et al., ECCV 2018,
Sec. 3.2) lets a pixel on the wrong side of an edge take its neighbour's disparity outright instead
of a value in between. It starts as (nearly) the identity: the centre weight dominates and the
correction is zero, so adding it to a trained network changes nothing until it is trained.

Checkpoint names (``edge_refine.stem``, ``.blocks.N``, ``.head``) must not change: ``load_model``
reads the width and window off them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d

#: Dilations of the residual blocks: with the 3x3 stem and head a receptive field of 21 px at full
#: resolution (about 5 working-resolution pixels, beyond the 3x3 coarse neighbourhood the upsampling
#: mixes), enough to see the image edge a misplaced depth edge belongs to.
DILATIONS = (1, 2, 4, 1)

#: Logit of the centre neighbour at initialisation: softmax weight 0.9989 for a 5x5 window.
_CENTRE_LOGIT = 10.0


class EdgeRefinement(nn.Module):
    """disparity (B x 1 x H x W, positive, input pixels), left and right (B x 3 x H x W in [-1, 1],
    the network's normalised images) -> refined disparity, B x 1 x H x W.

    Args:
        width: channels of the hidden layers.
        window: odd side of the neighbourhood a pixel may take its disparity from.
    """

    def __init__(self, width: int, window: int) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        if window < 3 or window % 2 != 1:
            raise ValueError(f"window must be odd and at least 3, got {window}")
        self.window = window
        # Inputs: left RGB, the disparity relative to its neighbourhood's mean at two scales (where a depth
        # edge runs and how high it is), and the photometric error of the right view warped by it.
        self.stem = Conv2d(3 + 2 + 1, width, 3, padding=1)
        self.blocks = nn.ModuleList(Conv2d(width, width, 3, padding=d, dilation=d) for d in DILATIONS)
        self.head = Conv2d(width, window * window + 1, 3, padding=1)  # mixing logits, then the correction
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[window * window // 2] = _CENTRE_LOGIT

    def forward(self, disparity: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        if disparity.dim() != 4 or disparity.shape[1] != 1:
            raise ValueError(f"disparity must be B x 1 x H x W, got {tuple(disparity.shape)}")
        if left.shape != right.shape or left.shape[0] != disparity.shape[0] or left.shape[1] != 3 \
                or left.shape[-2:] != disparity.shape[-2:]:
            raise ValueError(f"images must be B x 3 x H x W beside a B x 1 x H x W disparity, got "
                             f"{tuple(left.shape)}, {tuple(right.shape)} and {tuple(disparity.shape)}")
        b, _, h, w = disparity.shape
        r = self.window // 2
        # Replicated borders: a border pixel must not mix in a disparity of 0 from outside the image.
        neighbours = F.unfold(F.pad(disparity, (r, r, r, r), mode="replicate"), self.window).view(b, -1, h, w)
        relative = disparity - neighbours.mean(dim=1, keepdim=True)
        x = F.relu(self.stem(torch.cat([left, torch.tanh(relative / 2), torch.tanh(relative / 16),
                                        photometric_error(disparity, left, right)], dim=1)))
        for conv in self.blocks:
            x = F.relu(x + conv(x))
        # float32: under bf16 autocast the mixing weights would move disparities of 80 px by 0.2 px.
        out = self.head(x).float()
        weights = torch.softmax(out[:, :-1], dim=1)
        return (weights * neighbours.float()).sum(dim=1, keepdim=True) + out[:, -1:]


def photometric_error(disparity: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """|left - right sampled at x - d|, averaged over the colour channels.

    disparity: B x 1 x H x W (positive, input pixels); left, right: B x C x H x W -> B x 1 x H x W. Large
    where the disparity is wrong (or the pixel is occluded in the right view).
    """
    b, _, h, w = disparity.shape
    # The sampling grid in float32 whatever the inputs: in float16 it would be off by 0.2 px at 640 px.
    xs = torch.linspace(-1.0, 1.0, w, device=disparity.device)
    ys = torch.linspace(-1.0, 1.0, h, device=disparity.device)
    grid_x = xs.view(1, 1, w) - disparity[:, 0].float() * (2.0 / max(w - 1, 1))
    grid = torch.stack([grid_x, ys.view(1, h, 1).expand(b, h, w)], dim=-1)
    warped = F.grid_sample(right.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return (left.float() - warped).abs().mean(dim=1, keepdim=True)
