"""Selective-IGEV: IGEV-Stereo with SelectiveConvGRUs (Wang et al., CVPR 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import SelectiveStereo, StereoPrediction, check_pair, normalize_image, output_schedule, stage, StopRule
from .config import IGEVConfig
from .corr import GeometryEncodingVolume, groupwise_correlation_volume
from .encoders import ContextEncoder, MobileNetV2Pyramid
from .gru import ChannelAttention, SpatialAttention, apply_context_attention
from .layers import BasicConv, Conv2d, Conv3d, FeatureAttention, UpConcat
from .update import IGEVUpdateBlock

#: Group-wise correlation groups (IGEV-Stereo, Xu et al. 2023, Sec. 3.2).
GWC_GROUPS = 8


def _conv3d(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> BasicConv:
    return BasicConv(cin, cout, is_3d=True, kernel_size=kernel, stride=stride, padding=kernel // 2)


def _deconv3d(cin: int, cout: int, norm_relu: bool = True) -> BasicConv:
    return BasicConv(cin, cout, is_3d=True, deconv=True, apply_norm=norm_relu, relu=norm_relu, kernel_size=4, stride=2, padding=1)


class Hourglass(nn.Module):
    """IGEV's 3D cost aggregation: three stride-2 stages down (each excited by
    the left features at that scale), two up with skip aggregation, one
    transposed conv back to the input resolution.

    cost: B x C x D x H x W, features: [1/4, 1/8, 1/16, 1/32 maps] -> B x 8 x D x H x W.
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(_conv3d(c, 2 * c, stride=2), _conv3d(2 * c, 2 * c))
        self.conv2 = nn.Sequential(_conv3d(2 * c, 4 * c, stride=2), _conv3d(4 * c, 4 * c))
        self.conv3 = nn.Sequential(_conv3d(4 * c, 6 * c, stride=2), _conv3d(6 * c, 6 * c))
        self.conv3_up = _deconv3d(6 * c, 4 * c)
        self.conv2_up = _deconv3d(4 * c, 2 * c)
        self.conv1_up = _deconv3d(2 * c, 8, norm_relu=False)
        self.agg_0 = nn.Sequential(_conv3d(8 * c, 4 * c, kernel=1), _conv3d(4 * c, 4 * c), _conv3d(4 * c, 4 * c))
        self.agg_1 = nn.Sequential(_conv3d(4 * c, 2 * c, kernel=1), _conv3d(2 * c, 2 * c), _conv3d(2 * c, 2 * c))
        # Feature widths of MobileNetV2Pyramid at 1/8, 1/16, 1/32.
        self.feature_att_8 = FeatureAttention(2 * c, 64)
        self.feature_att_16 = FeatureAttention(4 * c, 192)
        self.feature_att_32 = FeatureAttention(6 * c, 160)
        self.feature_att_up_16 = FeatureAttention(4 * c, 192)
        self.feature_att_up_8 = FeatureAttention(2 * c, 64)

    def forward(self, cost: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        conv1 = self.feature_att_8(self.conv1(cost), features[1])
        conv2 = self.feature_att_16(self.conv2(conv1), features[2])
        conv3 = self.feature_att_32(self.conv3(conv2), features[3])
        conv2 = self.agg_0(torch.cat((self.conv3_up(conv3), conv2), dim=1))
        conv2 = self.feature_att_up_16(conv2, features[2])
        conv1 = self.agg_1(torch.cat((self.conv2_up(conv2), conv1), dim=1))
        conv1 = self.feature_att_up_8(conv1, features[1])
        return self.conv1_up(conv1)


def context_upsample(disp_low: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """IGEV's 4x upsampling: each fine pixel mixes the 3x3 coarse neighbourhood
    of its parent with softmax weights predicted from image features.

    disp_low: B x 1 x h x w (already multiplied by 4), weights: B x 9 x 4h x 4w
    -> B x 1 x 4h x 4w.
    """
    b, _, h, w = disp_low.shape
    patches = F.unfold(disp_low, 3, 1, 1).reshape(b, 9, h, w)
    patches = F.interpolate(patches, (h * 4, w * 4), mode="nearest")
    return (patches * weights).sum(1, keepdim=True)


class _Stem(nn.Sequential):
    """Stride-2 conv (IN, LeakyReLU) then conv, IN, ReLU: the 1/2 and 1/4 detail stems."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(BasicConv(cin, cout, norm="instance", kernel_size=3, stride=2, padding=1),
                         Conv2d(cout, cout, 3, 1, 1, bias=False), nn.InstanceNorm2d(cout), nn.ReLU())


class SelectiveIGEV(SelectiveStereo):
    """Selective-IGEV. Returns positive disparity (as released)."""

    encoder_names = ("feature", "stem_2", "stem_4", "conv", "desc", "cnet")

    def __init__(self, config: IGEVConfig = IGEVConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        h = c.hidden_dim
        self.cnet = ContextEncoder((64, 96, 128), h, h, downsample=2, num_levels=c.n_gru_layers,
                                   head_names=("outputs04", "outputs08", "outputs16"))
        corr_planes = c.corr_levels * (2 * c.corr_radius + 1) * (GWC_GROUPS + 1)
        self.update_block = IGEVUpdateBlock(h, corr_planes, c.n_gru_layers)
        self.sam = SpatialAttention()
        self.cam = ChannelAttention(h)
        self.feature = MobileNetV2Pyramid()
        self.stem_2 = _Stem(3, 32)
        self.stem_4 = _Stem(32, 48)
        # Upsampling of the initial disparity (only needed for its training loss).
        self.spx = nn.Sequential(nn.ConvTranspose2d(2 * 32, 9, kernel_size=4, stride=2, padding=1))
        self.spx_2 = UpConcat(24, 32, "instance")
        self.spx_4 = nn.Sequential(
            BasicConv(96, 24, norm="instance", kernel_size=3, stride=1, padding=1),
            Conv2d(24, 24, 3, 1, 1, bias=False), nn.InstanceNorm2d(24), nn.ReLU())
        # Upsampling of the GRU's disparity.
        self.spx_2_gru = UpConcat(32, 32, "batch")
        self.spx_gru = nn.Sequential(nn.ConvTranspose2d(2 * 32, 9, kernel_size=4, stride=2, padding=1))
        self.conv = BasicConv(96, 96, norm="instance", kernel_size=3, padding=1, stride=1)
        self.desc = Conv2d(96, 96, kernel_size=1, padding=0, stride=1)
        self.corr_stem = BasicConv(8, 8, is_3d=True, kernel_size=3, stride=1, padding=1)
        self.corr_feature_att = FeatureAttention(8, 96)
        self.cost_agg = Hourglass(8)
        self.classifier = Conv3d(8, 1, 3, 1, 1, bias=False)

    variant = "igev"

    @property
    def downsample_factor(self) -> int:
        return 4

    def check_max_disp(self, max_disp: int) -> None:
        """The hourglass halves the 1/4-resolution disparity axis three times: a multiple of 32."""
        if max_disp < 32 or max_disp % 32:
            raise ValueError(f"max_disp must be a positive multiple of 32, got {max_disp}")

    def largest_disparity(self, width: int, max_disp: int) -> float:
        """The cost volume's range."""
        return float(max_disp)

    def min_input_size(self, max_disp: int = 192) -> tuple[int, int]:
        """The group-wise volume compares each 1/4-resolution pixel with max_disp/4
        right-image columns, so the (padded) width must reach ``max_disp``."""
        height, width = super().min_input_size()
        return height, max(width, max_disp)

    def _upsample(self, disp: torch.Tensor, features: torch.Tensor, stem_2x: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(self.spx_gru(self.spx_2_gru(features, stem_2x)), dim=1)
        return context_upsample(disp * 4.0, weights.float())

    def forward(self, left: torch.Tensor, right: torch.Tensor, iters: int = 12,
                output_iters: Sequence[int] | None = None, disp_init: torch.Tensor | None = None,
                max_disp: int = 192, return_init: bool = False, stop: StopRule | None = None) -> StereoPrediction:
        """left, right: B x 3 x H x W RGB in 0..255, H and W multiples of 32.

        max_disp: disparity range of the cost volume in input pixels (multiple
        of 32; the hourglass halves its 1/4-resolution depth three times).
        disp_init: optional B x 1 x H/4 x W/4 disparity replacing the
        volume's initial estimate (warm start). return_init: also upsample
        and return the initial disparity (for its training loss). stop: ends
        the refinement early (``SelectiveStereo.refine``).
        """
        check_pair(left, right)
        self.check_max_disp(max_disp)
        outputs = output_schedule(iters, output_iters)
        c = self.config
        batch = left.shape[0]
        images = normalize_image(torch.cat([left, right], dim=0))
        with stage("features"):
            features = self.feature(images)
            stem_2 = self.stem_2(images)
            stem_4 = self.stem_4(stem_2)
            features[0] = torch.cat((features[0], stem_4), 1)
            match = self.desc(self.conv(features[0]))
            match_left, match_right = match.split(batch, dim=0)
            features_left = [f[:batch] for f in features]
            stem_2x = stem_2[:batch]

        with stage("cost_volume"):
            cost = groupwise_correlation_volume(match_left, match_right, max_disp // 4, GWC_GROUPS)
            cost = self.corr_feature_att(self.corr_stem(cost), features_left[0])
            geo_volume = self.cost_agg(cost, features_left)
            prob = F.softmax(self.classifier(geo_volume).squeeze(1), dim=1)
            levels = torch.arange(max_disp // 4, dtype=prob.dtype, device=prob.device).view(1, -1, 1, 1)
            init_disp = torch.sum(prob * levels, 1, keepdim=True)  # soft-argmin, 1/4-res pixels
            geo_fn = GeometryEncodingVolume(match_left, match_right, geo_volume, c.corr_levels, c.corr_radius)

        init_full = None
        if return_init:
            spx = self.spx(self.spx_2(self.spx_4(features_left[0]), stem_2x))
            init_full = context_upsample(init_disp.float() * 4.0, F.softmax(spx, 1).float())

        with stage("context"):
            cnet_levels = self.cnet(images[:batch])
            net = [torch.tanh(hidden) for hidden, _ in cnet_levels]
            inp, att = apply_context_attention(self.cam, self.sam, [torch.relu(ctx) for _, ctx in cnet_levels])

        disp = init_disp.float()
        if disp_init is not None:
            if disp_init.shape != disp.shape:
                raise ValueError(f"disp_init must be {tuple(disp.shape)} (1/4 resolution), "
                                 f"got {tuple(disp_init.shape)}")
            disp = disp_init.float()

        disp, preds, done = self.refine(
            disp, net, inp, att, lookup=geo_fn,
            upsample=lambda d, feats: self._upsample(d, feats, stem_2x),
            iters=iters, outputs=outputs, stop=stop)
        return StereoPrediction(disparities=preds, iterations=done, low_res=disp, init_disp=init_full)
