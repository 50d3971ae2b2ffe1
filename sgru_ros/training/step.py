"""One optimisation step of the training recipe, eager or replayed as a CUDA graph.

The step is the authors' (RAFT-Stereo, Sec. 3.4): every iteration's prediction against the ground
truth, later iterations weighted more, one AdamW update after clipping the gradient norm at 1.0. On
a GPU the compact models' step is launch-bound: each of its thousands of kernels is shorter than the
host time it takes to launch it, so a batch of 4 and one of 8 take the same time (7.6 steps/s on an
H200, docs/model_card.md). ``TrainStep(graphs=True)`` records the whole step - forward, loss,
backward, clipping and the optimiser's update - once per ``StepKey`` into a ``torch.cuda.CUDAGraph``
and replays it for every later batch of the same shape: one launch per step. Nothing in the step may
then wait for the host or take a data-dependent shape, which is why the loss is a weighted mean over
all pixels instead of a mean over the valid ones picked out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..evaluation import EDGE_BAND_PX, EDGE_JUMP_PX
from ..model.base import SelectiveStereo

#: Loss weights decay by this factor per iteration from the last one backwards,
#: rescaled to any number of iterations as the authors do (RAFT-Stereo, Sec. 3.4).
LOSS_GAMMA = 0.9

#: Gradient-norm clipping, as released.
CLIP_NORM = 1.0


def edge_band(target: torch.Tensor) -> torch.Tensor:
    """Known pixels within EDGE_BAND_PX of a depth edge (a neighbour differs by more than EDGE_JUMP_PX), the
    ``edges`` region of ``evaluation.region_masks``, computed on the tensor's device.

    target: B x 1 x H x W (NaN = unknown) -> B x 1 x H x W bool.
    """
    known = torch.isfinite(target)
    jump = torch.zeros_like(known)
    for dim in (2, 3):
        step = torch.diff(target, dim=dim).abs() > EDGE_JUMP_PX  # NaN compares False: no evidence of an edge
        n = target.shape[dim] - 1
        jump.narrow(dim, 1, n).logical_or_(step)
        jump.narrow(dim, 0, n).logical_or_(step)
    band = F.max_pool2d((jump & known).float(), 2 * EDGE_BAND_PX + 1, stride=1, padding=EDGE_BAND_PX) > 0
    return band & known


def sequence_loss(predictions: list[torch.Tensor], target: torch.Tensor, max_disp: float,
                  init: torch.Tensor | None = None, edge_weight: float = 1.0) -> torch.Tensor:
    """Exponentially weighted L1 over the per-iteration predictions (later ones
    weigh more), plus smooth L1 on IGEV's initial disparity.

    predictions: list of B x 1 x H x W; target: B x 1 x H x W (NaN = unknown).
    Pixels with unknown or too-large ground truth do not count; pixels of ``edge_band`` count
    ``edge_weight`` times. Every term is a weighted mean over the batch's pixels, computed without
    data-dependent shapes or host synchronisation (so that a CUDA graph can hold the step); a batch
    with no valid pixel gives NaN (the trainer checks batches before they go to the device).
    """
    valid = torch.isfinite(target) & (target < max_disp)
    weight = valid.float()
    if edge_weight != 1.0:
        weight = weight * (1.0 + (edge_weight - 1.0) * edge_band(target).float())
    weight = weight / weight.sum()
    target = torch.where(valid, target, torch.zeros_like(target))
    # where(), not a product: a prediction on a pixel that does not count must not count even if not finite.
    weighted = lambda error: torch.where(valid, error * weight, torch.zeros_like(error)).sum()  # noqa: E731
    n = len(predictions)
    gamma = LOSS_GAMMA ** (15 / (n - 1)) if n > 1 else 1.0
    loss = sum(gamma ** (n - i - 1) * weighted((pred - target).abs()) for i, pred in enumerate(predictions))
    if init is not None:
        loss = loss + weighted(F.smooth_l1_loss(init, target, reduction="none"))
    return loss


def has_ground_truth(target: torch.Tensor, max_disp: float) -> bool:
    """Whether a batch's target (B x 1 x H x W, NaN = unknown) has a pixel the loss can use."""
    return bool((torch.isfinite(target) & (target < max_disp)).any())


def freeze_batch_norm(model: torch.nn.Module) -> None:
    """Keep 2D batch norm in eval mode while training (as released): statistics
    from small batches would be noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


def forward_for_loss(model: SelectiveStereo, left: torch.Tensor, right: torch.Tensor, iters: int,
                     max_disp: int, disp_init: torch.Tensor | None = None,
                     ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Every iteration's full-resolution disparity and, where the network has one, its initial estimate."""
    pred = model(left, right, iters=iters, output_iters=range(1, iters + 1), max_disp=max_disp,
                 return_init=True, disp_init=disp_init)
    return pred.disparities, pred.init_disp


def end_point_error(prediction: torch.Tensor, target: torch.Tensor, max_disp: float) -> torch.Tensor:
    """Mean |prediction - target| over the pixels the loss uses, as a 0-d tensor (no host synchronisation).
    prediction, target: B x 1 x H x W."""
    valid = torch.isfinite(target) & (target < max_disp)
    error = (prediction - torch.nan_to_num(target)).abs()
    return torch.where(valid, error, torch.zeros_like(error)).sum() / valid.sum()


def optimisation_step(model: SelectiveStereo, optimizer: torch.optim.Optimizer, left: torch.Tensor,
                      right: torch.Tensor, target: torch.Tensor, iters: int, max_disp: int,
                      disp_init: torch.Tensor | None, edge_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward, clipping and the update, for gradients that start as None. Returns (loss,
    end-point error of the last iteration) as 0-d tensors on the device; it never waits for the device,
    so a CUDA graph can hold it whole."""
    predictions, init = forward_for_loss(model, left, right, iters, max_disp, disp_init)
    loss = sequence_loss(predictions, target, max_disp, init, edge_weight)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
    optimizer.step()
    with torch.no_grad():
        return loss.detach(), end_point_error(predictions[-1].detach(), target, max_disp)


@dataclass(frozen=True)
class StepKey:
    """What makes two steps the same graph: the iteration count and whether a starting disparity is given
    (the batch's shapes are the run's, fixed)."""

    iters: int
    with_prior: bool


class _GraphedStep:
    """``optimisation_step`` recorded once on static input buffers; each call copies a batch in and replays.
    The capture itself runs nothing: the first replay does the capturing call's step."""

    def __init__(self, model: SelectiveStereo, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...],
                 iters: int, max_disp: int, disp_init: torch.Tensor | None, edge_weight: float) -> None:
        self.inputs = tuple(t.clone() for t in batch) + ((disp_init.clone(),) if disp_init is not None else ())
        # Gradients allocated inside the capture live in the graph's memory pool; every replay writes them anew.
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        left, right, target, *prior = self.inputs
        try:
            # thread_local: the data loader's pinning thread may call CUDA while this thread captures.
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = optimisation_step(model, optimizer, left, right, target, iters, max_disp,
                                                 prior[0] if prior else None, edge_weight)
        except torch.cuda.OutOfMemoryError:
            raise  # not a capture problem: a smaller batch is the remedy
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RuntimeError(f"the training step could not be captured as a CUDA graph ({first}); "
                               "train without --cuda-graphs") from err

    def __call__(self, batch: tuple[torch.Tensor, ...], disp_init: torch.Tensor | None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        for static, value in zip(self.inputs, batch + ((disp_init,) if disp_init is not None else ())):
            static.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.outputs


class TrainStep:
    """Runs the optimisation steps of one model and optimiser.

    Eager by default. With ``graphs`` (CUDA only) each ``StepKey`` first runs ``warmup`` eager steps on a
    side stream (cuDNN and the allocator settle there, as CUDA graphs require; they are real steps of the
    run), then is captured, and every later step of that key is one replay. The optimiser must be built with
    ``capturable=True`` and a tensor learning rate on the device (``make_optimizer``), so that the
    schedule's learning rate reaches the replays. At most ``max_graphs`` keys are held (each graph keeps
    the memory of one step's activations); more raise ValueError.
    """

    def __init__(self, model: SelectiveStereo, optimizer: torch.optim.Optimizer, max_disp: int,
                 edge_weight: float = 1.0, graphs: bool = False, warmup: int = 3, max_graphs: int = 2) -> None:
        self.model, self.optimizer, self.max_disp, self.edge_weight = model, optimizer, max_disp, edge_weight
        self.graphs, self.warmup, self.max_graphs = graphs, warmup, max_graphs
        if warmup < 1:  # the optimiser's state must exist before a capture: it is made by the first step
            raise ValueError(f"warmup must be at least 1, got {warmup}")
        if graphs:
            device = next(model.parameters()).device
            if device.type != "cuda":
                raise ValueError(f"CUDA graphs need the model on a CUDA device, not {device}")
            if not all(group.get("capturable") and isinstance(group["lr"], torch.Tensor)
                       for group in optimizer.param_groups):
                raise ValueError("CUDA graphs need an optimiser with capturable=True and a tensor learning rate "
                                 "(make_optimizer(..., graphs=True))")
        self.captured: dict[StepKey, _GraphedStep] = {}
        self.eager_steps: dict[StepKey, int] = {}

    def __call__(self, batch: tuple[torch.Tensor, ...], iters: int,
                 disp_init: torch.Tensor | None = None) -> tuple[float, float]:
        """batch: (left, right, target) on the model's device, B x 3 x H x W (0..255) twice and B x 1 x H x W
        (NaN = unknown); disp_init: optional B x 1 x H/f x W/f starting disparity (``warm_start_prior``).
        Returns (loss, end-point error of the last iteration)."""
        self.model.train()
        freeze_batch_norm(self.model)
        key = StepKey(iters, disp_init is not None)
        if not self.graphs:
            loss, epe = self._eager(batch, iters, disp_init)
        elif key in self.captured:
            loss, epe = self.captured[key](batch, disp_init)
        elif self.eager_steps.get(key, 0) < self.warmup:
            self.eager_steps[key] = self.eager_steps.get(key, 0) + 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss, epe = self._eager(batch, iters, disp_init)
            torch.cuda.current_stream().wait_stream(side)
        else:
            if len(self.captured) >= self.max_graphs:
                raise ValueError(f"a CUDA-graph training run holds at most {self.max_graphs} step graphs "
                                 f"({', '.join(map(str, self.captured))}); {key} would be one more")
            self.captured[key] = _GraphedStep(self.model, self.optimizer, batch, iters, self.max_disp, disp_init,
                                              self.edge_weight)
            loss, epe = self.captured[key](batch, disp_init)
        return loss.item(), epe.item()

    def _eager(self, batch: tuple[torch.Tensor, ...], iters: int, disp_init: torch.Tensor | None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        return optimisation_step(self.model, self.optimizer, *batch, iters, self.max_disp, disp_init,
                                 self.edge_weight)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, graphs: bool = False,
                   ) -> torch.optim.AdamW:
    """The recipe's AdamW; with ``graphs``, capturable and with its learning rate a tensor on the model's
    device, as ``TrainStep(graphs=True)`` needs."""
    if not graphs:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, eps=1e-8)
    device = next(model.parameters()).device
    return torch.optim.AdamW(model.parameters(), lr=torch.tensor(lr, device=device), weight_decay=weight_decay,
                             eps=1e-8, capturable=True, foreach=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` that keeps this optimiser's way of running: a state saved by an
    eager run resumes with CUDA graphs and the other way round (PyTorch would take the saved groups'
    ``capturable``, ``foreach`` and learning-rate type along)."""
    own = [(group.get("capturable", False), group.get("foreach"), group["lr"]) for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, (capturable, foreach, lr) in zip(optimizer.param_groups, own):
        value = float(group["lr"])
        group["capturable"], group["foreach"] = capturable, foreach
        if isinstance(lr, torch.Tensor):
            group["lr"] = torch.tensor(value, device=lr.device)
        else:
            group["lr"] = value
        for param in group["params"]:
            param_state = optimizer.state.get(param, {})
            if "step" in param_state:  # capturable AdamW counts steps on the device, the eager one on the CPU
                param_state["step"] = param_state["step"].to(param.device if capturable else "cpu", torch.float32)
