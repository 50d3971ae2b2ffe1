"""Matching volumes and their per-iteration look-ups.

Both networks keep a pyramid of 1D volumes, one row per left-image pixel,
and at every GRU iteration sample 2r+1 points around the current estimate
on each level. Sampling is linear interpolation with zeros outside the row
(``grid_sample`` with ``align_corners=True``, as released), and runs in
float32 even under autocast: correlations are sums of many products and
lose too much in 16 bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sample_rows(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Linearly sample 1-row volumes at fractional positions.

    rows: N x C x 1 x W; x: N x K positions in [0, W-1] pixel units.
    Returns N x C x K (zero where a position falls outside the row).
    """
    width = rows.shape[-1]
    if width < 2:
        raise ValueError("a correlation level is narrower than 2 pixels; the input image is too small "
                         "for this many correlation levels")
    gx = 2 * x / (width - 1) - 1
    grid = torch.stack([gx, torch.zeros_like(gx)], dim=-1).unsqueeze(1)  # N x 1 x K x 2
    return F.grid_sample(rows, grid, align_corners=True).squeeze(2)


def _full_precision(x: torch.Tensor) -> torch.autocast:
    """Switch autocast off, whatever precision the caller runs the network in."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _offsets(radius: int, device: torch.device) -> torch.Tensor:
    return torch.linspace(-radius, radius, 2 * radius + 1, device=device).view(1, -1)


def _halve_rows(rows: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(rows, [1, 2], stride=[1, 2])


class CorrPyramid1D:
    """RAFT-Stereo's all-pairs 1D correlation pyramid.

    C(x, x') = <f_l(x), f_r(x')> / sqrt(D) along each row, average-pooled
    along x' into ``levels`` levels.
    """

    def __init__(self, fmap_left: torch.Tensor, fmap_right: torch.Tensor, levels: int, radius: int) -> None:
        """fmap_left, fmap_right: B x D x H x W (float32)."""
        if fmap_left.shape != fmap_right.shape:
            raise ValueError(f"feature maps differ in shape: {tuple(fmap_left.shape)} vs {tuple(fmap_right.shape)}")
        b, d, h, w = fmap_left.shape
        with _full_precision(fmap_left):
            left, right = fmap_left.float(), fmap_right.float()
            corr = torch.matmul(left.permute(0, 2, 3, 1), right.permute(0, 2, 1, 3)) / d**0.5
            rows = corr.reshape(b * h * w, 1, 1, w)
            self.pyramid = [rows]
            for _ in range(levels - 1):
                rows = _halve_rows(rows)
                self.pyramid.append(rows)
        self.radius = radius
        self.shape = (b, h, w)

    def __call__(self, x_right: torch.Tensor) -> torch.Tensor:
        """x_right: B x 1 x H x W, matching x coordinate in the right image.

        Returns B x levels*(2r+1) x H x W correlation features.
        """
        b, h, w = self.shape
        with _full_precision(x_right):
            x = x_right.float().reshape(b * h * w, 1)
            dx = _offsets(self.radius, x.device)
            out = [_sample_rows(rows, x / 2**i + dx) for i, rows in enumerate(self.pyramid)]
        return torch.cat(out, dim=1).view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


def groupwise_correlation_volume(left: torch.Tensor, right: torch.Tensor, max_disp: int,
                                 groups: int) -> torch.Tensor:
    """Group-wise correlation (Guo et al., GwcNet 2019), as IGEV builds it.

    left, right: B x C x H x W -> B x groups x max_disp x H x W, where slice
    d holds the per-group mean of left(x) * right(x - d) (zero for x < d).
    """
    b, c, h, w = left.shape
    if c % groups:
        raise ValueError(f"{c} feature channels do not split into {groups} groups")
    volume = left.new_zeros([b, groups, max_disp, h, w])
    for d in range(max_disp):
        prod = left[..., d:] * right[..., : w - d]
        volume[:, :, d, :, d:] = prod.view(b, groups, c // groups, h, w - d).mean(dim=2)
    return volume


class GeometryEncodingVolume:
    """IGEV's combined geometry encoding volume.

    Two pyramids sampled together: the 3D-regularised geometry volume G
    (indexed by disparity d) and the all-pairs correlation of the matching
    features (indexed by right-image column x - d). Each is average-pooled
    along its last axis into ``levels`` levels.
    """

    def __init__(self, match_left: torch.Tensor, match_right: torch.Tensor, geo_volume: torch.Tensor,
                 levels: int, radius: int) -> None:
        """match_left/right: B x C x H x W; geo_volume: B x G x D x H x W (float32)."""
        b, g, d, h, w = geo_volume.shape
        with _full_precision(geo_volume):
            left, right = match_left.float(), match_right.float()
            corr = torch.matmul(left.permute(0, 2, 3, 1), right.permute(0, 2, 1, 3))
            geo_rows = geo_volume.float().permute(0, 3, 4, 1, 2).reshape(b * h * w, g, 1, d)
            self.geo_pyramid = [geo_rows]
            self.corr_pyramid = [corr.reshape(b * h * w, 1, 1, w)]
            for _ in range(levels - 1):
                self.geo_pyramid.append(_halve_rows(self.geo_pyramid[-1]))
                self.corr_pyramid.append(_halve_rows(self.corr_pyramid[-1]))
        self.radius = radius
        self.shape = (b, h, w)

    def __call__(self, disp: torch.Tensor) -> torch.Tensor:
        """disp: B x 1 x H x W (positive, at this resolution).

        Returns B x levels*(2r+1)*(G+1) x H x W geometry features, per level
        the G*(2r+1) geometry samples then the 2r+1 correlation samples.
        """
        b, h, w = self.shape
        with _full_precision(disp):
            d = disp.float().reshape(b * h * w, 1)
            x = torch.arange(w, device=d.device, dtype=d.dtype).repeat(b * h).view(-1, 1)
            dx = _offsets(self.radius, d.device)
            out = []
            for i, (geo_rows, corr_rows) in enumerate(zip(self.geo_pyramid, self.corr_pyramid)):
                out.append(_sample_rows(geo_rows, d / 2**i + dx).flatten(1))
                out.append(_sample_rows(corr_rows, x / 2**i - d / 2**i + dx).flatten(1))
        return torch.cat(out, dim=1).view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
