"""Running a Selective-Stereo network on image pairs: padding, resizing,
device, precision, iterations and warm start. No ROS here.

    estimator = StereoEstimator.from_checkpoint("sgru_igev_sceneflow.pth", device="auto")
    result = estimator.estimate(left_rgb, right_rgb, iters=16, output_iters=[4, 8])
    result.disparity          # H x W float32, input pixels
    result.intermediate[4]    # the same pass after 4 iterations

Images smaller than the network's minimum (``model.min_input_size``, e.g.
128 px wide for the bundled model) are padded up to it by edge replication
and cropped back; larger ones above ``max_pixels``/``max_width`` are
downscaled first and the disparity scaled back. ``estimate(..., cancel=event)``
stops between network stages and GRU iterations once the event is set
(raising ``InferenceCancelled``), so a shutdown never waits for a whole frame.
On CUDA, ``graphs=True`` replays each input size's pass as a captured CUDA
graph (``sgru_ros.graphs``).
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .compiled import CompiledEncoders
from .device import check_precision, keep_freed_memory, resolve_device
from .graphs import GraphCache, GraphedPass, PassKey
from .model import SIZE_MULTIPLE, load_model
from .model.base import SelectiveStereo, StopRule
from .weights import resolve_checkpoint

#: ``torch``: PyTorch eager (every feature); ``onnxruntime``: an ONNX export per input size
#: (``onnx_engine``), fixed iterations (no warm start, early stop or mid-pass cancel).
ENGINES = ("torch", "onnxruntime")
#: The largest GRU iteration count the node, the CLI and the API accept.
MAX_ITERATIONS = 64
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
ImageLike = np.ndarray | torch.Tensor


class InferenceCancelled(Exception):
    """``estimate`` was abandoned because its ``cancel`` event was set."""


def image_hwc(image: ImageLike) -> torch.Tensor:
    """H x W x 3 RGB (or H x W mono, repeated) array/tensor -> H x W x 3 tensor in its own dtype."""
    tensor = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(-1).expand(*tensor.shape, 3)
    if tensor.dim() != 3 or tensor.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 RGB or H x W mono image, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] < 1 or tensor.shape[1] < 1:
        raise ValueError(f"empty image of shape {tuple(tensor.shape)}")
    return tensor


def to_image_tensor(image: ImageLike) -> torch.Tensor:
    """H x W x 3 RGB (or H x W mono) array/tensor, uint8 or float in 0..255 -> 1 x 3 x H x W float32."""
    return image_hwc(image).permute(2, 0, 1).unsqueeze(0).float()


@dataclass(frozen=True)
class Padding:
    """Replicate padding to a multiple of 32, split evenly on both sides (the
    authors' ``InputPadder`` in its default mode)."""

    left: int
    right: int
    top: int
    bottom: int

    @classmethod
    def for_size(cls, height: int, width: int, multiple: int = SIZE_MULTIPLE,
                 minimum: tuple[int, int] = (0, 0)) -> Padding:
        """Pad to a multiple of ``multiple`` and to at least ``minimum`` (height, width)."""
        pad_h = max(-height % multiple, minimum[0] - height)
        pad_w = max(-width % multiple, minimum[1] - width)
        return cls(pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        if not any((self.left, self.right, self.top, self.bottom)):
            return x
        return F.pad(x, [self.left, self.right, self.top, self.bottom], mode="replicate")

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x[..., self.top:h - self.bottom, self.left:w - self.right]


@dataclass
class StereoResult:
    """disparity: H x W float32 in input pixels (left image's frame, positive).
    intermediate: the same pass after fewer iterations, {iterations: H x W}
    (those not reached when the pass stopped early are absent).
    processed_size: (height, width) the network ran at, before padding."""

    disparity: np.ndarray
    intermediate: dict[int, np.ndarray] = field(default_factory=dict)
    processed_size: tuple[int, int] = (0, 0)
    #: GRU iterations run (fewer than asked when a latency budget or the convergence test stopped early).
    iterations: int = 0


class IterationStop:
    """The rule that ends a pass early (``SelectiveStereo.refine``), called after each update but the last.

    Stop after update k when one more update (timed as the last one) and the final upsampling
    (``upsample_s``, measured on an earlier frame of the size; 0 before one) would end the pass past
    ``start`` + ``budget_ms`` (perf_counter seconds, milliseconds), or when the update's mean |change| x
    ``scale`` (working -> input pixels) is below ``converged_px``; never before ``at_least`` iterations.
    ``outputs``: iterations the network upsamples on its way, whose upsampling is no part of an update's time.
    After the pass, ``final_upsampling_s`` says what the last upsampling took, for the next frame.
    """

    def __init__(self, start: float, budget_ms: float | None, converged_px: float | None, scale: float,
                 device: torch.device, at_least: int = 1, outputs: Sequence[int] = (), upsample_s: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.start, self.budget_ms, self.converged_px, self.scale = start, budget_ms, converged_px, scale
        self.device, self.at_least, self.outputs, self.upsample_s = device, at_least, set(outputs), upsample_s
        self.clock = clock
        self.last_call = start
        self.update_s = 0.0  # the first update also holds the encoders and volumes: not counted

    def __call__(self, iteration: int, delta: torch.Tensor) -> bool:
        late = False
        if self.budget_ms:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = self.clock()
            if iteration > 1:
                took = now - self.last_call
                if iteration - 1 in self.outputs:
                    took -= self.upsample_s
                self.update_s = max(took, 0.0)
            self.last_call = now
            late = (now + self.update_s + self.upsample_s - self.start) * 1e3 > self.budget_ms
        if iteration < self.at_least:
            return False
        if self.converged_px and float(delta.abs().mean()) * self.scale < self.converged_px:  # waits for the GPU
            return True
        return late

    def final_upsampling_s(self, end: float, ran_to_the_end: bool) -> float | None:
        """Seconds from the last call to ``end`` (the pass's end) less the update in between when the pass
        ran all its iterations (the rule is not asked after the last); None without a budget (nothing timed)."""
        if not self.budget_ms:
            return None
        return max(end - self.last_call - (self.update_s if ran_to_the_end else 0.0), 0.0)


class StereoEstimator:
    """A loaded network plus the run-time choices for it.

    On the CPU, building one sets glibc's malloc for the whole process to keep freed memory for the next
    frame (``device.keep_freed_memory``), unless the environment sets malloc's thresholds itself.

    Args:
        model: a SelectiveRAFT/SelectiveIGEV (weights loaded).
        device: 'auto', 'cpu', 'cuda', 'cuda:N'.
        precision: 'fp32', 'fp16' (CUDA) or 'bf16' (autocast).
        max_disp: IGEV's cost-volume range in processed pixels (multiple of 32).
        max_width: if set, wider inputs are downscaled to this width first and
            the disparity is scaled back to the input's pixels.
        max_pixels: if set, inputs with more pixels are downscaled (aspect kept)
            to at most this many first: the network's memory grows with the
            pixel count (a 4000 x 3000 frame needs about 6 GB at full size).
        engine: 'torch' or 'onnxruntime' (see ``ENGINES``).
        onnx_output_iters: under onnxruntime, the intermediate iterations every exported graph
            also returns, so that asking for any of them later never exports again
            (``onnx_engine.OnnxEngine``).
        log: where the onnxruntime engine announces an ONNX export (minutes long) and the
            compiled encoders a compilation (seconds to a minute).
        compile: torch engine: compile the per-frame encoders with torch.compile
            (``compile_encoders``; same results to about 1e-4 px).
        graphs: torch engine on CUDA: capture the whole pass of each input size and
            iteration schedule as a CUDA graph and replay it (``sgru_ros.graphs``); frames
            with a warm start, latency budget or convergence stop run eagerly.
        max_graphs: how many captured passes are kept (least recently used dropped first).
    """

    def __init__(self, model: SelectiveStereo, device: str = "auto", precision: str = "fp32",
                 max_disp: int = 192, max_width: int | None = None, max_pixels: int | None = None,
                 engine: str = "torch", onnx_output_iters: Sequence[int] = (),
                 log: Callable[[str], None] | None = None, compile: bool = False, graphs: bool = False,
                 max_graphs: int = 2) -> None:
        self.device = resolve_device(device)
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
        if compile and engine != "torch":
            raise ValueError("compile is for the torch engine (onnxruntime optimises its own graph)")
        if graphs and (engine != "torch" or self.device.type != "cuda" or compile):
            raise ValueError("graphs need the torch engine on a CUDA device, without compile "
                             f"(got engine {engine}, device {self.device}{', compile' if compile else ''})")
        if engine == "onnxruntime" and precision == "bf16":
            raise ValueError("engine onnxruntime runs fp32 (or fp16 with TensorRT); bf16 is for the torch engine")
        self.precision = check_precision(precision, self.device)
        if max_width is not None and max_width < SIZE_MULTIPLE:
            raise ValueError(f"max_width must be at least {SIZE_MULTIPLE}, got {max_width}")
        if max_pixels is not None and max_pixels < SIZE_MULTIPLE**2:
            raise ValueError(f"max_pixels must be at least {SIZE_MULTIPLE**2}, got {max_pixels}")
        model.check_max_disp(max_disp)
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            keep_freed_memory()  # each frame reuses the last one's pages (device.keep_freed_memory)
        self.engine = engine
        self.graphs = graphs
        self._log = log
        self._compiled = CompiledEncoders(self.model, self.device, log) if compile else None
        self._graphs = GraphCache(max_graphs, log) if graphs else None
        self._staging: torch.Tensor | None = None  # pinned host buffer for the uploads (CUDA)
        # Per input size: what the final upsampling (with cropping and resizing back) took on the last frame
        # with a latency budget, which the next one reserves (IterationStop).
        self._upsample_s: dict[tuple[int, int], float] = {}
        if self.device.type == "cuda":
            # Each camera keeps its size, so cuDNN's per-shape autotuning pays for itself after a frame.
            torch.backends.cudnn.benchmark = True
        self._onnx = None
        if engine == "onnxruntime":
            from .onnx_engine import OnnxEngine

            self._onnx = OnnxEngine(self.model, self.device, max_disp, fp16=self.precision == "fp16",
                                    output_iters=onnx_output_iters, log=log)
        self.max_disp = max_disp
        self.max_width = max_width
        self.max_pixels = max_pixels
        self._cancel: threading.Event | None = None
        # Checked before each top-level stage (encoders, cost volume) and each GRU iteration.
        self._hooks = [stage.register_forward_pre_hook(self._check_cancel) for stage in self.model.children()]

    @property
    def compiled(self) -> bool:
        """The encoders run compiled (False again after a compilation failed)."""
        return self._compiled is not None and self._compiled.active

    def close(self) -> None:
        """Let go of the model: its cancel hooks removed (they keep this estimator alive and would run
        for every later estimator of the same model) and the captured CUDA graphs freed."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._graphs is not None:
            self._graphs.clear()

    def _check_cancel(self, *_) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise InferenceCancelled("inference cancelled")

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None = None, variant: str | None = None,
                        **kwargs) -> StereoEstimator:
        """Load a checkpoint file or a bundled model by name (``weights.resolve_checkpoint``; None: the compact one);
        variant 'raft'/'igev' insists on one. kwargs go to the constructor."""
        return cls(load_model(resolve_checkpoint(checkpoint), variant=variant), **kwargs)

    @property
    def variant(self) -> str:
        return self.model.variant

    def processed_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the network runs at for an input of this size (before padding):
        scaled down (aspect kept) to fit ``max_width`` and ``max_pixels``."""
        scale = 1.0
        if self.max_width is not None:
            scale = min(scale, self.max_width / width)
        if self.max_pixels is not None:
            scale = min(scale, math.sqrt(self.max_pixels / (height * width)))
        if scale >= 1.0:
            return height, width
        # The width is exact when max_width binds; the height follows the aspect ratio.
        return max(1, round(height * scale)), max(1, math.floor(width * scale + 1e-6))

    def _autocast(self):
        enabled = self.precision != "fp32"
        return torch.autocast(self.device.type, dtype=_DTYPES.get(self.precision, torch.bfloat16),
                              enabled=enabled)

    def estimate(self, left: ImageLike, right: ImageLike, iters: int = 16,
                 output_iters: Sequence[int] = (), disp_init: ImageLike | None = None,
                 cancel: threading.Event | None = None, budget_ms: float | None = None,
                 converged_px: float | None = None) -> StereoResult:
        """Disparity of the left image.

        left, right: H x W x 3 RGB (or H x W mono), uint8 or float in 0..255.
        iters: GRU iterations (the most that run). output_iters: further iteration counts (< iters)
        whose predictions of the same pass are returned in ``intermediate``.
        disp_init: H x W disparity in input pixels to start from (e.g. the previous frame's), or None.
        cancel: when this event is set, the pass stops at the next stage or GRU iteration with
        ``InferenceCancelled``.
        budget_ms: stop iterating once another GRU iteration and the final upsampling (timed on the last
        frame of this size) would end the pass later than this many milliseconds after it began (at least one
        iteration runs).
        converged_px: stop once an iteration changes the disparity by less than this on average (input pixels).
        Both are torch-engine features, never stop before ``output_iters``; ``result.iterations`` says how many ran.
        """
        start = time.perf_counter()
        extra = sorted(set(int(k) for k in output_iters))
        if extra and (extra[0] < 1 or extra[-1] >= iters):
            raise ValueError(f"intermediate iterations must lie in 1..{iters - 1}, got {list(output_iters)}")
        if self._onnx is not None and (disp_init is not None or budget_ms or converged_px):
            raise ValueError("warm start, latency budget and convergence stop need the torch engine")
        outputs = extra + [iters]
        self._cancel = cancel
        with torch.inference_mode():
            pair = self._upload_pair(left, right)
            size = (pair.shape[-2], pair.shape[-1])
            proc = self.processed_size(*size)
            padding = Padding.for_size(*proc, minimum=self.model.min_input_size(self.max_disp))
            fixed = functools.partial(self._fixed_pass, size=size, proc=proc, padding=padding, iters=iters,
                                      outputs=outputs)
            try:
                if self._onnx is not None:
                    self._check_cancel()
                    network_pair = padding.pad(_resize(pair, proc))
                    disparities = [self._to_input_size(d, padding, size, proc[1])
                                   for d in self._onnx.run(network_pair[:1], network_pair[1:], iters, extra)]
                    done = outputs
                elif self._graphs is not None and disp_init is None and not budget_ms and not converged_px:
                    self._check_cancel()
                    key = PassKey(*size, iters=iters, outputs=tuple(outputs), precision=self.precision)
                    graphed = self._graphs.get(key, lambda: GraphedPass(lambda p: fixed(p)[0], pair))
                    disparities, done = graphed(pair), outputs
                else:
                    scale = self.model.downsample_factor * size[1] / proc[1]  # working -> input pixels
                    stop = None
                    if budget_ms or converged_px:
                        stop = IterationStop(start, budget_ms, converged_px, scale, self.device,
                                             at_least=max(extra, default=0) + 1, outputs=extra,
                                             upsample_s=self._upsample_s.get(size, 0.0))
                    if disp_init is not None:
                        disp_init = self._working_resolution(disp_init, size, proc, padding)
                    run = functools.partial(fixed, pair, stop=stop, disp_init=disp_init)
                    disparities, done = run() if self._compiled is None else \
                        self._compiled.run(run, (proc[0] + padding.top + padding.bottom,
                                                 proc[1] + padding.left + padding.right))
                    if stop is not None and budget_ms:
                        if self.device.type == "cuda":
                            torch.cuda.synchronize(self.device)
                        self._upsample_s[size] = stop.final_upsampling_s(time.perf_counter(), done[-1] == iters)
            finally:
                self._cancel = None
            host = [d[0, 0].cpu().numpy() for d in disparities]
        return StereoResult(disparity=host[-1], intermediate=dict(zip(done[:-1], host[:-1])),
                            processed_size=proc, iterations=done[-1])

    def _upload_pair(self, left: ImageLike, right: ImageLike) -> torch.Tensor:
        """Both images -> 2 x 3 x H x W float32 on the device. They travel in their own dtype (uint8:
        a quarter of float32's bytes), on CUDA asynchronously from a pinned buffer kept for the next frame."""
        left_t, right_t = image_hwc(left), image_hwc(right)
        if left_t.shape != right_t.shape:
            raise ValueError(f"left and right images differ in size: {tuple(left_t.shape[:2])} vs "
                             f"{tuple(right_t.shape[:2])}")
        if self.device.type == "cuda":
            shape, dtype = (2, *left_t.shape), left_t.dtype
            if self._staging is None or self._staging.shape != shape or self._staging.dtype != dtype:
                self._staging = torch.empty(shape, dtype=dtype, pin_memory=True)
            # The last frame's upload is done: its disparities were downloaded (synchronously) since.
            self._staging[0].copy_(left_t)
            self._staging[1].copy_(right_t)
            pair = self._staging.to(self.device, non_blocking=True)
        else:
            pair = torch.stack([left_t, right_t])
        return pair.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)

    def _fixed_pass(self, pair: torch.Tensor, size: tuple[int, int], proc: tuple[int, int], padding: Padding,
                    iters: int, outputs: list[int], stop: StopRule | None = None,
                    disp_init: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[int]]:
        """The network's pass on the device: pair 2 x 3 x H x W (``size``) -> resized to ``proc``, padded,
        the network, cropped and resized back -> (1 x 1 x H x W disparities in input pixels, their
        iterations). Without ``stop`` and ``disp_init`` the same kernels on the same shapes every call
        (what ``GraphedPass`` captures)."""
        network_pair = padding.pad(_resize(pair, proc))
        with self._autocast():
            prediction = self.model(network_pair[:1], network_pair[1:], iters=iters, output_iters=outputs,
                                    stop=stop, disp_init=disp_init, max_disp=self.max_disp)
        disparities = [self._to_input_size(d, padding, size, proc[1]) for d in prediction.disparities]
        return disparities, prediction.iterations

    @staticmethod
    def _to_input_size(disp: torch.Tensor, padding: Padding, size: tuple[int, int], proc_w: int) -> torch.Tensor:
        """1 x 1 x padded disparity at the network's size -> 1 x 1 x H x W float32 in input pixels."""
        disp = padding.unpad(disp.float())
        if disp.shape[-2:] != size:
            disp = F.interpolate(disp, size=size, mode="bilinear", align_corners=False) * (size[1] / proc_w)
        return disp

    def _working_resolution(self, disp_init: ImageLike, size: tuple[int, int], proc: tuple[int, int],
                            padding: Padding) -> torch.Tensor:
        """H x W disparity in input pixels -> 1 x 1 x h x w at the model's working resolution."""
        disp = torch.as_tensor(np.asarray(disp_init, dtype=np.float32) if isinstance(disp_init, np.ndarray)
                               else disp_init).float().to(self.device)
        if tuple(disp.shape) != size:
            raise ValueError(f"disp_init must be {size[0]}x{size[1]} like the images, got {tuple(disp.shape)}")
        disp = torch.nan_to_num(disp, nan=0.0, posinf=0.0, neginf=0.0)[None, None]
        if proc != size:
            disp = F.interpolate(disp, size=proc, mode="bilinear", align_corners=False) * (proc[1] / size[1])
        disp = padding.pad(disp)
        factor = self.model.downsample_factor
        working = (disp.shape[-2] // factor, disp.shape[-1] // factor)
        return F.interpolate(disp, size=working, mode="area") / factor


def _resize(pair: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x C x H x W -> B x C x size, antialiased when shrinking (unchanged when the size is its own)."""
    if tuple(pair.shape[-2:]) == size:
        return pair
    return F.interpolate(pair, size=size, mode="bilinear", align_corners=False, antialias=True)

