"""Convolution building blocks shared by both networks.

Attribute names follow the released checkpoints (``conv``, ``bn``,
``norm1``, ``downsample`` ...), so the authors' state dicts load unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "instance", "none"]


def norm2d(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)  # affine=False: no parameters, as released
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'batch', 'instance' or 'none'")


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # PyTorch before 2.4
        return torch.is_autocast_cpu_enabled()


def _compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)  # PyTorch 2.3+
    return bool(is_compiling and is_compiling())


_winograd = True


@contextlib.contextmanager
def winograd_convolutions(enabled: bool) -> Iterator[None]:
    """Turn the Winograd path of ``conv2d`` on or off within the block (on by default).

    Off, every 2D convolution is PyTorch's direct one: for bit-for-bit comparisons and A/B timing.
    """
    global _winograd
    before, _winograd = _winograd, enabled
    try:
        yield
    finally:
        _winograd = before


def _takes_winograd(x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> bool:
    """Whether a stride-1, undilated, ungrouped, zero-padded convolution of x (B x C x H x W) with
    weight (O x C x kh x kw) runs faster as NNPACK's Winograd convolution.

    The shapes are those measured faster on 2 cores of an AMD EPYC (AVX2), PyTorch 2.13, one image
    at a time (``tools/experiments/winograd_ab.py --shapes``): 3 x 3 kernel, maps of at least 32 x 48 = 1536
    pixels, at least 64 channels in and out (e.g. 384 -> 256 channels at 64 x 96: 28 ms against
    oneDNN's 61 ms). Maps of 16 x 24 with many channels ran slower, so did 32 channels from 64 x 96 up
    and batches of two in one call (``conv2d`` passes NNPACK one image at a time); 48 channels ran
    faster in the grid, but the networks' few such convolutions were not measured in place and stay
    direct. NNPACK needs a padding smaller than the kernel, a contiguous (NCHW) input, and
    ``torch.backends.nnpack`` enabled. Dynamo cannot trace NNPACK's operator, so compiled code
    (checked first, so that compiled graphs do not depend on the switch) and exports stay direct.
    """
    return (not _compiling() and _winograd and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32 and x.dim() == 4 and x.shape[0] > 0
            and x.is_contiguous() and x.shape[1] >= 64 and weight.shape[0] >= 64
            and weight.shape[-2:] == (3, 3) and max(padding) < 3 and x.shape[-2] * x.shape[-1] >= 32 * 48
            and not torch.is_grad_enabled() and not _cpu_autocast() and not torch.onnx.is_in_onnx_export()
            and torch._C._get_nnpack_enabled() and torch._nnpack_available())


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           padding: tuple[int, int]) -> torch.Tensor:
    """A stride-1 2D convolution with zero padding: B x C x H x W -> B x O x H' x W'.

    Large 3 x 3 ones of CPU float32 inference run as NNPACK's Winograd convolution (``_takes_winograd``):
    it computes the same sums with about a quarter of the multiplications, transforming 3 x 3 kernels
    and input tiles so that each output tile becomes an element-wise product (Lavin & Gray,
    "Fast Algorithms for Convolutional Neural Networks", CVPR 2016). The rounding differs from the
    direct convolution's: about 1e-5 of the output's magnitude, and at most 1.3e-4 px on the
    released networks' disparities (docs/performance.md). The rest goes to ``F.conv2d``.
    """
    if _takes_winograd(x, weight, padding):
        images = [torch._nnpack_spatial_convolution(image, weight, bias, list(padding), [1, 1])
                  for image in x.split(1)]  # one call per image: see _takes_winograd
        return images[0] if len(images) == 1 else torch.cat(images)
    return F.conv2d(x, weight, bias, padding=padding)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose stride-1 zero-padded convolutions go through ``conv2d`` (Winograd where faster).

    Same parameters and checkpoint keys as ``nn.Conv2d``; every 2D convolution of the networks is one.
    """

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)):
            return conv2d(x, weight, bias, self.padding)
        return super()._conv_forward(x, weight, bias)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that takes oneDNN's kernel for every float32 CPU inference.

    PyTorch chooses between oneDNN and its slow reference kernel by the size of
    batch x channels x depth x height only, so IGEV's small hourglass stages
    (e.g. 16 channels at 24 x 32 x 48) fall to the reference kernel: 56 ms
    instead of 4.7 ms on 2 cores. Same arithmetic; autograd, autocast,
    export and other devices keep the standard path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32 and not torch.is_grad_enabled()
                and not _cpu_autocast() and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and not torch.onnx.is_in_onnx_export() and not _compiling()
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                                      self.dilation, self.groups)
        return super().forward(x)


class ResidualBlock(nn.Module):
    """RAFT's residual block: two 3x3 convs with norm + ReLU, 1x1 projection when
    the stride or width changes. B x in x H x W -> B x out x H/stride x W/stride."""

    def __init__(self, in_planes: int, planes: int, norm: Norm, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = Conv2d(planes, planes, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = norm2d(norm, planes)
        self.norm2 = norm2d(norm, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            # Registered twice (norm3 and downsample.1), as in the released code,
            # so checkpoints carry both key names.
            self.norm3 = norm2d(norm, planes)
            self.downsample = nn.Sequential(
                Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BasicConv(nn.Module):
    """Conv (2D/3D, optionally transposed, no bias) -> norm -> LeakyReLU(0.01).

    The norm is stored as ``bn`` (batch) or ``IN`` (instance), the released
    names. ``apply_norm=False`` keeps the norm's parameters but skips it, as
    the released final 3D deconvolution does (its checkpoints carry them).
    Remaining keyword arguments go to the convolution (kernel_size, stride, padding).
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: Literal["batch", "instance"] = "batch",
                 apply_norm: bool = True, relu: bool = True, deconv: bool = False, is_3d: bool = False,
                 **conv_kwargs) -> None:
        super().__init__()
        if is_3d:
            conv_cls = nn.ConvTranspose3d if deconv else Conv3d
            norm_cls = {"batch": nn.BatchNorm3d, "instance": nn.InstanceNorm3d}[norm]
        else:
            conv_cls = nn.ConvTranspose2d if deconv else Conv2d
            norm_cls = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d}[norm]
        self.conv = conv_cls(in_channels, out_channels, bias=False, **conv_kwargs)
        self._norm_name = "bn" if norm == "batch" else "IN"
        self.add_module(self._norm_name, norm_cls(out_channels))
        self.apply_norm = apply_norm
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.apply_norm:
            x = self.get_submodule(self._norm_name)(x)
        if self.relu:
            x = F.leaky_relu(x, 0.01)
        return x


class UpConcat(nn.Module):
    """2x transposed conv, concatenation with a skip feature, 3x3 conv.

    x: B x in x H x W, skip: B x out x ~2H x ~2W -> B x 2*out x skip's H x W.
    If the upsampled map does not match the skip's size (inputs not a
    multiple of 32) it is resized with nearest neighbour, as released.
    The released class is ``Conv2x``/``Conv2x_IN`` (deconv=True, concat=True).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: Norm) -> None:
        super().__init__()
        self.conv1 = BasicConv(in_channels, out_channels, norm=norm, deconv=True,
                               kernel_size=4, stride=2, padding=1)
        self.conv2 = BasicConv(out_channels * 2, out_channels * 2, norm=norm,
                               kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.conv2(torch.cat((x, skip), dim=1))


class FeatureAttention(nn.Module):
    """Guided cost-volume excitation (IGEV): sigmoid(MLP(feature)) scales every
    disparity slice. cost: B x C x D x H x W, feature: B x F x H x W."""

    def __init__(self, cost_channels: int, feature_channels: int) -> None:
        super().__init__()
        self.feat_att = nn.Sequential(
            BasicConv(feature_channels, feature_channels // 2, kernel_size=1, stride=1, padding=0),
            Conv2d(feature_channels // 2, cost_channels, 1))

    def forward(self, cost: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.feat_att(feature).unsqueeze(2)) * cost


class DispHead(nn.Module):
    """Two 3x3 convs from the finest hidden state to the disparity update.
    B x input_dim x H x W -> B x 1 x H x W."""

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.conv1 = Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = Conv2d(hidden_dim, 1, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))
