"""Selective-RAFT: RAFT-Stereo with SelectiveConvGRUs (Wang et al., CVPR 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import SelectiveStereo, StereoPrediction, check_pair, normalize_image, output_schedule, stage, StopRule
from .config import RaftConfig
from .corr import CorrPyramid1D
from .edges import EdgeRefinement
from .encoders import ContextEncoder, FeatureEncoder
from .gru import ChannelAttention, SpatialAttention, apply_context_attention
from .update import RaftUpdateBlock


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
    """RAFT's convex upsampling: each fine pixel is a softmax-weighted mix of
    the 3x3 coarse neighbourhood (Teed & Deng 2020, Sec. 3.3).

    flow: B x 1 x h x w (coarse pixels), mask: B x 9*factor^2 x h x w logits
    -> B x 1 x factor*h x factor*w (fine pixels).
    """
    b, c, h, w = flow.shape
    weights = torch.softmax(mask.view(b, 1, 9, factor, factor, h, w), dim=2)
    patches = F.unfold(factor * flow, [3, 3], padding=1).view(b, c, 9, 1, 1, h, w)
    up = torch.sum(weights * patches, dim=2)  # B x C x f x f x h x w
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, c, factor * h, factor * w)


class SelectiveRAFT(SelectiveStereo):
    """Selective-RAFT.

    Internally the state is RAFT's x-flow, which is the negative disparity
    (the released model returns it); ``forward`` returns positive disparity.
    """

    encoder_names = ("fnet", "cnet")

    def __init__(self, config: RaftConfig = RaftConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        self.fnet = FeatureEncoder(c.encoder_dims, c.feature_dim, c.n_downsample, early=c.early_downsample)
        self.cnet = ContextEncoder(c.encoder_dims, c.hidden_dim, c.hidden_dim, c.n_downsample, c.n_gru_layers,
                                   head_names=("outputs08", "outputs16", "outputs32"), early=c.early_downsample)
        corr_planes = c.corr_levels * (2 * c.corr_radius + 1)
        self.update_block = RaftUpdateBlock(c.hidden_dim, corr_planes, c.n_gru_layers, c.downsample_factor)
        self.sam = SpatialAttention()
        self.cam = ChannelAttention(c.hidden_dim)
        self.edge_refine = EdgeRefinement(c.edge_width, c.edge_window) if c.edge_width else None

    variant = "raft"

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def forward(self, left: torch.Tensor, right: torch.Tensor, iters: int = 22,
                output_iters: Sequence[int] | None = None, disp_init: torch.Tensor | None = None,
                max_disp: int = 0, return_init: bool = False, stop: StopRule | None = None) -> StereoPrediction:
        """left, right: B x 3 x H x W RGB in 0..255, H and W multiples of 32.

        iters: GRU iterations. output_iters: which iterations to upsample and
        return (default: the last). disp_init: optional B x 1 x H/f x W/f
        positive disparity at the working resolution to start from (warm start).
        stop: ends the refinement early (``SelectiveStereo.refine``). max_disp and return_init are
        Selective-IGEV's (its cost-volume range and initial estimate): RAFT's all-pairs correlation
        has neither, so they are accepted for the common call and ignored.
        """
        check_pair(left, right)
        outputs = output_schedule(iters, output_iters)
        c = self.config
        image1, image2 = normalize_image(left), normalize_image(right)
        with stage("features"):
            if left.device.type == "cpu":
                # Each image on its own: the instance norm is per image, so this is the function of one
                # batch of both, and NNPACK (layers.conv2d) runs one image at a time: a batch of both would
                # be split and joined again at every convolution (2.47 -> 2.24 s a frame at 256x384).
                fmap1, fmap2 = self.fnet(image1), self.fnet(image2)
            else:  # one launch sequence for both (not measured apart on a GPU)
                fmap1, fmap2 = self.fnet(torch.cat([image1, image2], dim=0)).split(left.shape[0], dim=0)
        with stage("cost_volume"):
            corr_fn = CorrPyramid1D(fmap1, fmap2, c.corr_levels, c.corr_radius)

        with stage("context"):
            levels = self.cnet(image1)
            net = [torch.tanh(hidden) for hidden, _ in levels]
            inp, att = apply_context_attention(self.cam, self.sam, [torch.relu(ctx) for _, ctx in levels])

        b, _, h, w = net[0].shape
        x = torch.arange(w, device=left.device, dtype=torch.float32).view(1, 1, 1, w).expand(b, 1, h, w)
        flow = torch.zeros(b, 1, h, w, device=left.device)
        if disp_init is not None:
            if disp_init.shape != flow.shape:
                raise ValueError(f"disp_init must be {tuple(flow.shape)} (working resolution), "
                                 f"got {tuple(disp_init.shape)}")
            flow = -disp_init.float()

        def upsample(f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            disparity = -convex_upsample(f, mask.float(), c.downsample_factor)
            if self.edge_refine is None:
                return disparity
            return self.edge_refine(disparity, image1, image2)

        flow, preds, done = self.refine(
            flow, net, inp, att, lookup=lambda f: corr_fn(x + f), upsample=upsample,
            iters=iters, outputs=outputs, stop=stop)
        return StereoPrediction(disparities=preds, iterations=done, low_res=-flow)
