"""A fixed-size pass replayed as a CUDA graph. No ROS here.

Eager PyTorch launches every kernel from Python: a Selective-IGEV frame at 8
iterations is about 1,800 launches, a GRU iteration about 140
(docs/performance.md, "GPU"), and on a GPU those kernels are shorter than
the host time it takes to launch them. A camera keeps its size, so for one
``PassKey`` (input size, iterations, returned iterations, precision) every
frame runs the same kernels on the same shapes: ``GraphedPass`` records them
once into a ``torch.cuda.CUDAGraph`` that reads a static input buffer and
writes static outputs, and each frame is one copy in and one graph launch.

    cache = GraphCache(max_entries=2, log=print)
    graphed = cache.get(key, lambda: GraphedPass(forward, example_pair))
    disparities = graphed(pair)   # valid until the next call of this pass

What a graph does not hold runs eagerly in ``inference.StereoEstimator``: a
warm start (a second input the captured pass does not take), the latency
budget and the convergence stop (both read the GPU's progress on the host
between iterations, which a replay cannot). The cancel check between stages
becomes one check before each replay.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: What a captured pass computes: the 2 x 3 x H x W float32 image pair (left, right) on the device ->
#: the disparities of the iterations it returns, each 1 x 1 x H x W float32 in input pixels.
PassFunction = Callable[[torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class PassKey:
    """What makes two frames the same graph: everything that changes a kernel or a shape."""

    height: int
    width: int
    iters: int
    outputs: tuple[int, ...]  # the iterations returned, ascending, ``iters`` last
    precision: str


class GraphedPass:
    """One ``PassFunction`` captured as a CUDA graph on static buffers.

    forward: the pass; example: a 2 x 3 x H x W float32 pair on the CUDA device (its values only
    warm up; its shape and dtype fix the graph's). The capture runs ``warmup`` eager passes on a side
    stream first, as CUDA graphs require (cuDNN's autotuner and the allocator settle there), then
    records one pass into a private memory pool that the graph keeps until it is dropped.
    """

    def __init__(self, forward: PassFunction, example: torch.Tensor, warmup: int = 3) -> None:
        if example.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs a CUDA tensor, got one on {example.device}")
        if example.dim() != 4 or example.shape[:2] != (2, 3):
            raise ValueError(f"expected a 2 x 3 x H x W image pair, got {tuple(example.shape)}")
        self.input = example.clone()
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                forward(self.input)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = forward(self.input)

    def __call__(self, pair: torch.Tensor) -> list[torch.Tensor]:
        """pair: 2 x 3 x H x W like the example -> the outputs, overwritten by the next call."""
        if pair.shape != self.input.shape:
            raise ValueError(f"this graph was captured for {tuple(self.input.shape)}, got {tuple(pair.shape)}")
        self.input.copy_(pair, non_blocking=True)
        self.graph.replay()
        return self.outputs


class GraphCache:
    """The captured passes by key, at most ``max_entries``; the least recently used goes first.

    A camera needs one entry; a second lets the node switch its iteration count (a parameter) and
    back without capturing again. Each capture is announced through ``log`` (it takes a few eager
    passes), each eviction frees the graph's memory pool.
    """

    def __init__(self, max_entries: int = 2, log: Callable[[str], None] | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._log = log
        self._entries: OrderedDict[PassKey, Callable[[torch.Tensor], list[torch.Tensor]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: PassKey) -> bool:
        return key in self._entries

    def get(self, key: PassKey, build: Callable[[], Callable[[torch.Tensor], list[torch.Tensor]]]
            ) -> Callable[[torch.Tensor], list[torch.Tensor]]:
        """The entry for ``key``, built (and announced) when missing."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
            _free_cuda_cache()
        if self._log is not None:
            self._log(f"capturing a CUDA graph for {key.width}x{key.height}, {key.iters} iterations"
                      f"{', returning ' + ', '.join(map(str, key.outputs[:-1])) if len(key.outputs) > 1 else ''}, "
                      f"{key.precision} (once per camera size and iteration count; a few passes)")
        self._entries[key] = build()
        return self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
        _free_cuda_cache()


def _free_cuda_cache() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
