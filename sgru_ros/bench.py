"""Speed and memory of the network: per-stage milliseconds, frames per second, peak memory. No ROS here.

    config = BenchConfig(height=256, width=384, iters=8)
    result = run_bench(estimator, config)
    result.total_ms, result.fps, result.stages_ms["gru_iteration"], result.peak_memory_mb

Each configuration runs ``warmup`` passes, then ``repeats`` timed passes of
``StereoEstimator.estimate`` (the whole inference path: padding, network,
cropping) on the Motorcycle pair resized to the size; times are medians.
The per-stage split (``model.base.STAGES``) comes from ``profiled`` further
passes under ``torch.profiler``, kept apart so its overhead never enters the
totals; on CUDA it is the GPU time of each stage's kernels. The
onnxruntime engine runs one fused graph, and a CUDA graph replays what was
captured without the stage ranges, so both have totals only. On CUDA the
profiled passes also give the summed time of all kernels per frame (the
frame's floor: wall time near it means the GPU, not the host, sets the pace),
the kernels run and the host's launch calls per frame (a graph replay is
one). Memory: on
the CPU the process's peak resident set size while the timed passes ran
(sampled every 2 ms; the model and the process's other memory included),
on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from .calibration import motorcycle_pair
from .inference import StereoEstimator
from .model.base import STAGES


@dataclass(frozen=True)
class BenchConfig:
    height: int = 256
    width: int = 384
    iters: int = 8
    repeats: int = 3
    warmup: int = 1
    profiled: int = 3  # passes under the profiler for the stage and kernel figures (kept out of the totals)


@dataclass
class BenchResult:
    """One configuration's figures (all times in milliseconds, medians over the repeats)."""

    model: str
    variant: str
    device: str
    precision: str
    engine: str
    compiled: bool  # the torch engine's encoders compiled (``compiled.compile_encoders``)
    graphs: bool  # the pass replayed as a CUDA graph (``sgru_ros.graphs``)
    threads: int
    height: int
    width: int
    iters: int
    total_ms: float
    fps: float
    #: Each stage's time per frame (all its calls summed); None for the onnxruntime engine.
    stages_ms: dict[str, float] | None
    #: Each GRU iteration (look-up + update), in order; None for the onnxruntime engine.
    iterations_ms: list[float] | None
    #: CUDA only (else None): all kernels' time per frame summed, total_ms / kernel_ms, the kernels
    #: run and the host's launch calls (kernel and graph launches) per frame; medians of the profiled passes.
    kernel_ms: float | None
    wall_to_kernel: float | None
    kernels_per_frame: int | None
    launches_per_frame: int | None
    peak_memory_mb: float
    memory: str  # what peak_memory_mb measures: "rss" or "cuda_max_allocated"
    runs_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def bench_pair(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The Motorcycle pair resized to width x height (uint8 RGB)."""
    left, right, _ = motorcycle_pair()
    return tuple(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA) for image in (left, right))


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process (this one by default), MB (Linux: /proc/PID/statm)."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """Samples this process's resident set size every ``interval`` seconds while in use."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


#: The CUDA runtime and driver calls that start work on the GPU, as the profiler names them.
LAUNCH_CALLS = frozenset({"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                          "cudaGraphLaunch", "cuGraphLaunch"})


@dataclass
class ProfiledPass:
    """One pass under ``torch.profiler``: ms per stage, ms per GRU iteration (in order), and on CUDA
    the summed kernel ms, the kernels and the launch calls (else 0)."""

    stages: dict[str, float]
    iterations: list[float]
    kernel_ms: float = 0.0
    kernels: int = 0
    launches: int = 0


def profile_pass(estimator: StereoEstimator, left, right, iters: int) -> ProfiledPass:
    """Run ``estimator.estimate`` once under the profiler and read its stages and kernels."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    cuda = estimator.device.type == "cuda"
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        estimator.estimate(left, right, iters=iters)
    result = ProfiledPass(stages=dict.fromkeys(STAGES, 0.0), iterations=[])
    iterations = []
    for event in profile.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:  # a kernel (or copy) on the GPU
            result.kernel_ms += event.time_range.elapsed_us() / 1e3
            result.kernels += 1
            continue
        if event.name in LAUNCH_CALLS:
            result.launches += 1
        # The CPU-side range; on CUDA its device_time_total sums the kernels it launched.
        if not event.name.startswith("sgru."):
            continue
        ms = (event.device_time_total if cuda else event.cpu_time_total) / 1e3
        name = event.name[len("sgru."):]
        result.stages[name] = result.stages.get(name, 0.0) + ms
        if name == "gru_iteration":
            iterations.append((event.time_range.start, ms))
    result.iterations = [ms for _, ms in sorted(iterations)]
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(estimator: StereoEstimator, config: BenchConfig, model_name: str = "") -> BenchResult:
    """Time ``estimator`` on one configuration (see the module docstring)."""
    left, right = bench_pair(config.height, config.width)
    device = estimator.device
    for _ in range(config.warmup):
        estimator.estimate(left, right, iters=config.iters)
    _sync(device)
    runs = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRss() as rss:
        for _ in range(config.repeats):
            start = time.perf_counter()
            estimator.estimate(left, right, iters=config.iters)
            _sync(device)
            runs.append((time.perf_counter() - start) * 1e3)
    peak, memory = rss.peak, "rss"
    if device.type == "cuda":
        peak, memory = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    total = statistics.median(runs)
    stages_ms = iterations_ms = kernel_ms = wall_to_kernel = kernels = launches = None
    profiled = [profile_pass(estimator, left, right, config.iters)
                for _ in range(config.profiled if estimator.engine == "torch" or device.type == "cuda" else 0)]
    if estimator.engine == "torch" and not estimator.graphs:
        stages_ms = {name: statistics.median(p.stages[name] for p in profiled) for name in profiled[0].stages}
        iterations_ms = [statistics.median(p.iterations[i] for p in profiled)
                         for i in range(len(profiled[0].iterations))]
    if device.type == "cuda":
        kernel_ms = statistics.median(p.kernel_ms for p in profiled)
        wall_to_kernel = total / kernel_ms if kernel_ms > 0 else None
        kernels = round(statistics.median(p.kernels for p in profiled))
        launches = round(statistics.median(p.launches for p in profiled))
    return BenchResult(model=model_name, variant=estimator.variant, device=str(device),
                       precision=estimator.precision, engine=estimator.engine,
                       compiled=estimator.compiled, graphs=estimator.graphs, threads=torch.get_num_threads(),
                       height=config.height, width=config.width, iters=config.iters, total_ms=total,
                       fps=1e3 / total, stages_ms=stages_ms, iterations_ms=iterations_ms, kernel_ms=kernel_ms,
                       wall_to_kernel=wall_to_kernel, kernels_per_frame=kernels, launches_per_frame=launches,
                       peak_memory_mb=peak,
                       memory=memory, runs_ms=runs)


def format_result(result: BenchResult) -> str:
    """A few lines for the terminal."""
    lines = [f"{result.model or result.variant} {result.width}x{result.height}, {result.iters} iterations, "
             f"{result.device}, {result.precision}, {result.engine}{' (compiled)' if result.compiled else ''}"
             f"{' (CUDA graph)' if result.graphs else ''}, "
             f"{result.threads} threads: "
             f"{result.total_ms:.1f} ms/frame ({result.fps:.2f} fps), peak {result.memory} "
             f"{result.peak_memory_mb:.0f} MB"]
    if result.kernel_ms is not None:
        lines.append(f"  kernels {result.kernel_ms:.1f} ms/frame (wall {result.wall_to_kernel or float('nan'):.2f}x), "
                     f"{result.kernels_per_frame} kernels and {result.launches_per_frame} launch calls per frame")
    if result.stages_ms is not None:
        lines.append("  " + ", ".join(f"{name} {ms:.1f}" for name, ms in result.stages_ms.items()) + " ms")
        its = result.iterations_ms or []
        if its:
            lines.append(f"  GRU iterations: median {statistics.median(its):.1f} ms "
                         f"(first {its[0]:.1f}, last {its[-1]:.1f})")
    return "\n".join(lines)
