"""The network as ONNX, at a fixed input size and iteration count, run by onnxruntime. No ROS here.

    names = export_onnx(model, "igev_480x640_8.onnx", height=480, width=640, iters=8, output_iters=[4])
    engine = OnnxEngine(model, device=torch.device("cpu"))
    disparities = engine.run(left, right, iters=8, output_iters=[4, 8])   # 1 x 1 x H x W each

``OnnxEngine`` exports a file the first time it sees a (size, iterations)
combination and keeps it in a cache folder (``cache_dir()``), named by the
weights' digest, so later runs and other processes load it at once. The
graph has the GRU loop unrolled (fixed iterations): there is no warm start,
early stop or cancellation inside a pass on this engine.

Execution providers: CPU, or on a CUDA device TensorRT then CUDA (whichever
this onnxruntime build has), with CPU as the fallback for unsupported nodes.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .model.base import SelectiveStereo

#: ONNX opset of the exported files (GridSample with align_corners needs 16 or later).
OPSET = 18


def cache_dir() -> Path:
    """Where built ONNX files are kept: $SGRU_ROS_CACHE, else $XDG_CACHE_HOME/sgru_ros, else ~/.cache/sgru_ros."""
    if os.environ.get("SGRU_ROS_CACHE"):
        return Path(os.environ["SGRU_ROS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sgru_ros"


class FixedPass(nn.Module):
    """model(left, right) with the iteration schedule fixed, returning a tuple of disparities
    (``output_names`` order): what ``export_onnx`` writes."""

    def __init__(self, model: SelectiveStereo, iters: int, output_iters: Sequence[int], max_disp: int) -> None:
        super().__init__()
        self.model = model
        self.iters = iters
        self.outputs = sorted(set(output_iters) | {iters})
        self.max_disp = max_disp

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(left, right, iters=self.iters, output_iters=self.outputs,
                                max_disp=self.max_disp).disparities)


def output_names(iters: int, output_iters: Sequence[int] = ()) -> list[str]:
    """The exported graph's outputs: ``disparity_<k>`` for each returned iteration count k, ascending."""
    return [f"disparity_{k}" for k in sorted(set(output_iters) | {iters})]


def export_onnx(model: SelectiveStereo, path: str | Path, height: int, width: int, iters: int,
                output_iters: Sequence[int] = (), max_disp: int = 192) -> list[str]:
    """Write the network as ONNX for 1 x 3 x height x width inputs ``left`` and ``right``
    (RGB 0..255 float32, sizes multiples of 32) and ``iters`` GRU iterations.

    Outputs are 1 x 1 x height x width disparities ``disparity_<k>`` for k in
    ``output_iters`` and ``iters``. Returns their names. Takes from seconds (small
    networks) to a few minutes (full size) on a CPU.
    """
    min_h, min_w = model.min_input_size(max_disp)
    if height % 32 or width % 32 or height < min_h or width < min_w:
        raise ValueError(f"export size {height}x{width} must be multiples of 32 and at least {min_h}x{min_w}")
    names = output_names(iters, output_iters)
    # A CPU copy: the caller's network stays where it is (on CUDA, say) and in its mode.
    wrapper = FixedPass(copy.deepcopy(model).cpu().eval(), iters, output_iters, max_disp)
    example = (torch.zeros(1, 3, height, width), torch.zeros(1, 3, height, width))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, example, input_names=["left", "right"], output_names=names,
                                        opset_version=OPSET, dynamo=True, verbose=False)
            program.save(str(partial))
        partial.replace(path)  # atomic: a concurrent reader never sees half a file
    finally:
        partial.unlink(missing_ok=True)
    return names


def weights_digest(model: nn.Module) -> str:
    """12 hex digits identifying the weights (and this package's version, which shapes the graph)."""
    digest = hashlib.sha1(__version__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def providers_for(device: torch.device, fp16: bool, cache: Path) -> list:
    """onnxruntime execution providers for ``device``, best first, among those this build has
    (TensorRT keeps its engines under ``cache``/trt)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted: list = []
    if device.type == "cuda":
        index = device.index or 0
        if "TensorrtExecutionProvider" in available:
            wanted.append(("TensorrtExecutionProvider", {"device_id": index, "trt_fp16_enable": fp16,
                                                         "trt_engine_cache_enable": True,
                                                         "trt_engine_cache_path": str(cache / "trt")}))
        if "CUDAExecutionProvider" in available:
            wanted.append(("CUDAExecutionProvider", {"device_id": index}))
        if not wanted:
            raise ValueError("engine onnxruntime on a CUDA device needs onnxruntime-gpu "
                             "(this onnxruntime has only " + ", ".join(available) + ")")
        if fp16 and "TensorrtExecutionProvider" not in available:
            raise ValueError("fp16 on the onnxruntime engine needs its TensorRT execution provider")
    elif fp16:
        raise ValueError("fp16 on the onnxruntime engine needs TensorRT on a CUDA device")
    return wanted + ["CPUExecutionProvider"]


class OnnxEngine:
    """Runs a network through onnxruntime, building and caching one ONNX file per input size and
    iteration count.

    Each graph returns the final disparity and the intermediate iterations in ``output_iters``
    (those below the count), plus any other one a run asked for before: a run may take any subset
    of them. Asking for one the graph lacks exports a larger graph (minutes), so a caller with
    changing needs (the node: outputs with or without subscribers) names them all up front.

    Args:
        model: the loaded network (exported on first use of each size).
        device: where to run ('cpu' or a CUDA device; see ``providers_for``).
        max_disp: Selective-IGEV's cost-volume range (fixed in the graph).
        fp16: TensorRT half precision (CUDA with TensorRT only).
        output_iters: intermediate iterations every graph also returns.
        log: called with a line before and after an export (it takes minutes).
    """

    def __init__(self, model: SelectiveStereo, device: torch.device, max_disp: int = 192, fp16: bool = False,
                 output_iters: Sequence[int] = (), log: Callable[[str], None] | None = None) -> None:
        try:
            import onnxruntime  # noqa: F401 -- checked here, before minutes of export
        except ImportError:
            raise ValueError("engine onnxruntime: onnxruntime is not installed; pip install 'sgru_ros[onnx]'") from None
        self.model = model
        self.max_disp = max_disp
        self.cache = cache_dir()
        self.providers = providers_for(device, fp16, self.cache)
        self.output_iters = frozenset(int(k) for k in output_iters)
        self.digest = weights_digest(model)
        self.log = log or (lambda line: None)
        #: (height, width, iters) -> (the graph's intermediate iterations, its session)
        self._sessions: dict[tuple[int, int, int], tuple[frozenset[int], object]] = {}

    def onnx_path(self, height: int, width: int, iters: int, output_iters: Sequence[int]) -> Path:
        outs = "-".join(str(k) for k in sorted(output_iters)) or "last"
        return self.cache / f"{self.model.variant}-{self.digest}-{width}x{height}-{iters}it-{outs}-d{self.max_disp}.onnx"

    def session(self, height: int, width: int, iters: int, output_iters: Sequence[int]):
        """The onnxruntime session for this size and iteration count whose graph returns at least
        ``output_iters`` (exported now if no cached file does)."""
        import onnxruntime as ort

        key = (height, width, iters)
        have, session = self._sessions.get(key, (frozenset(), None))
        if session is not None and have.issuperset(output_iters):
            return session
        outputs = frozenset(k for k in self.output_iters | have | set(output_iters) if k < iters)
        path = self.onnx_path(height, width, iters, outputs)
        if not path.exists():
            self.log(f"exporting the network to ONNX for {width}x{height}, {iters} iterations "
                     f"(once per size; takes minutes): {path}")
            start = time.perf_counter()
            export_onnx(self.model, path, height, width, iters, sorted(outputs), self.max_disp)
            self.log(f"ONNX export done in {time.perf_counter() - start:.0f} s")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=self.providers)
        self._sessions[key] = (outputs, session)
        return session

    def run(self, left: torch.Tensor, right: torch.Tensor, iters: int,
            output_iters: Sequence[int]) -> list[torch.Tensor]:
        """left, right: 1 x 3 x H x W float32 (H, W multiples of 32) -> 1 x 1 x H x W disparities
        for sorted(output_iters + [iters])."""
        height, width = left.shape[-2:]
        session = self.session(height, width, iters, output_iters)
        feed = {"left": np.ascontiguousarray(left.detach().cpu().float().numpy()),
                "right": np.ascontiguousarray(right.detach().cpu().float().numpy())}
        outputs = session.run(output_names(iters, output_iters), feed)
        return [torch.from_numpy(out).to(left.device) for out in outputs]
