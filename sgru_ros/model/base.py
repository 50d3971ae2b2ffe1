"""What both Selective-Stereo networks share: input checks, the refinement loop
and the prediction they return."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .update import SelectiveUpdateBlock

#: The stages of a forward pass, as ``torch.profiler`` ranges named ``sgru.<stage>``
#: (``sgru_ros.bench`` reads them; without a profiler running they cost nothing measurable).
STAGES = ("features", "cost_volume", "context", "gru_iteration", "upsampling")


def stage(name: str) -> torch.profiler.record_function:
    """A profiler range for one of ``STAGES``."""
    return torch.profiler.record_function(f"sgru.{name}")


#: Inputs must be multiples of this: IGEV's MobileNetV2 reaches 1/32 and
#: RAFT's context encoder 1/(4 * 2**n_downsample); the inference API pads to it.
SIZE_MULTIPLE = 32


@dataclass
class StereoPrediction:
    """Output of one forward pass, positive disparity in input pixels.

    disparities: B x 1 x H x W full-resolution predictions, one per entry of
        ``iterations`` (ascending).
    iterations: the iteration counts those predictions belong to.
    low_res: B x 1 x H/f x W/f final disparity at the working resolution
        (in working-resolution pixels), the warm start for a next frame.
    init_disp: B x 1 x H x W, IGEV's initial disparity from the geometry
        encoding volume, when it was asked for; else None.
    """

    disparities: list[torch.Tensor]
    iterations: list[int]
    low_res: torch.Tensor
    init_disp: torch.Tensor | None = None

    @property
    def final(self) -> torch.Tensor:
        return self.disparities[-1]


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """0..255 RGB -> [-1, 1], as the released models expect."""
    return (2 * (image / 255.0) - 1.0).contiguous()


def check_pair(left: torch.Tensor, right: torch.Tensor) -> None:
    if left.dim() != 4 or left.shape[1] != 3:
        raise ValueError(f"left image must be B x 3 x H x W, got {tuple(left.shape)}")
    if left.shape != right.shape:
        raise ValueError(f"left and right images differ in shape: {tuple(left.shape)} vs {tuple(right.shape)}")
    h, w = left.shape[-2:]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(f"image size {h}x{w} is not a multiple of {SIZE_MULTIPLE}; "
                         "pad it first (sgru_ros.inference does this)")


def output_schedule(iters: int, output_iters: Sequence[int] | None) -> list[int]:
    """The iteration counts to upsample: ``output_iters`` (sorted, unique), or
    every iteration while training and the last one otherwise (the caller passes None)."""
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    if output_iters is None:
        return [iters]
    wanted = sorted(set(int(k) for k in output_iters))
    if not wanted or wanted[0] < 1 or wanted[-1] > iters:
        raise ValueError(f"output iterations must lie in 1..{iters}, got {list(output_iters)}")
    return wanted


#: ``stop(iteration, delta)``: end the refinement after this iteration (see ``SelectiveStereo.refine``).
StopRule = Callable[[int, torch.Tensor], bool]


class SelectiveStereo(nn.Module):
    """Base class: the GRU refinement loop shared by Selective-RAFT and -IGEV.

    Both networks take the same call, ``model(left, right, iters=..., output_iters=...,
    disp_init=..., max_disp=..., return_init=..., stop=...)``, and say what they are
    (``variant``) and what bounds their disparity (``check_max_disp``,
    ``largest_disparity``), so code outside ``model/`` never asks which one it holds.
    """

    update_block: SelectiveUpdateBlock
    #: 'raft' or 'igev', as checkpoints and the CLI name them.
    variant: str = ""
    #: The 2D encoders run once per frame, by attribute name: what ``compiled.compile_encoders`` hands
    #: to torch.compile. Chains of convolution, norm and ReLU at up to full resolution, where inductor's
    #: fused kernels pay (256x384, each timed alone on 2 cores: Selective-RAFT's feature encoder
    #: 626 -> 364 ms, context encoder 255 -> 178 ms). Not listed: the GRU iterations (their convolutions
    #: already run at the CPU's peak; compiled, 1134 -> 1125 ms per frame) and IGEV's 3D cost aggregation
    #: (inductor's 3D convolution is PyTorch's slow reference kernel there, see ``layers.Conv3d``:
    #: 1163 -> 1249 ms per frame).
    encoder_names: tuple[str, ...] = ()

    def check_max_disp(self, max_disp: int) -> None:
        """ValueError when ``max_disp`` (the cost-volume range in input pixels) cannot be used;
        networks without a cost volume of fixed range accept any value and ignore it."""

    def largest_disparity(self, width: int, max_disp: int) -> float:
        """The largest disparity this network can return for an image ``width`` pixels wide."""
        return float(width)

    def min_input_size(self, max_disp: int = 0) -> tuple[int, int]:
        """Smallest (height, width) the network runs at, a multiple of SIZE_MULTIPLE.
        ``max_disp`` is Selective-IGEV's run-time cost-volume range (see its override).

        The correlation pyramid halves the working-resolution width
        (1/``downsample_factor``) ``corr_levels - 1`` times, and its lookup
        interpolates between two neighbours, so the coarsest level must stay
        at least 2 px wide. Smaller inputs are padded up to this size by the
        inference API.
        """
        width = self.downsample_factor * 2 ** (self.config.corr_levels - 1) * 2
        return SIZE_MULTIPLE, -(-width // SIZE_MULTIPLE) * SIZE_MULTIPLE

    def refine(self, state: torch.Tensor, net: list[torch.Tensor], inp: list[torch.Tensor],
               att: list[torch.Tensor], lookup: Callable[[torch.Tensor], torch.Tensor],
               upsample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               iters: int, outputs: list[int], stop: StopRule | None = None,
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        """Run up to ``iters`` updates of ``state`` (B x 1 x h x w, the model's own disparity sign).

        lookup(state) samples the matching volume; upsample(state, features)
        returns a full-resolution positive disparity. ``stop(k, delta)`` is asked
        after update k < iters (delta: that update, B x 1 x h x w); when it says
        True the loop ends there and iteration k is upsampled as the last prediction.
        Gradients do not flow from one iteration's state into the next (the
        state is detached, as released), only through each iteration's own update.
        Returns (final state, full-resolution predictions, the iterations they belong to).
        """
        predictions, done = [], []
        with stage("context"):
            steps = self.update_block.prepare(inp, att)
        for itr in range(1, iters + 1):
            with stage("gru_iteration"):
                state = state.detach()
                corr = lookup(state)
                net, delta = self.update_block(net, steps, corr, state)
                state = state + delta.float()
            stopped = itr < iters and stop is not None and stop(itr, delta)
            if itr in outputs or stopped:
                with stage("upsampling"):
                    predictions.append(upsample(state, self.update_block.upsample_features(net[0])))
                done.append(itr)
            if stopped:
                break
        return state, predictions, done
