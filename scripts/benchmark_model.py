#!/usr/bin/env python3
"""Per-stage and per-iteration CPU timing of the full-size networks (or of
training presets: ``--preset raft-compact --preset raft-compact8``).

    python scripts/benchmark_model.py [--height 256 --width 384 --iters 8 32 --threads 2]

Random weights at the released widths (the arithmetic, hence the time, does
not depend on the values). Stages are the top-level modules, timed with
forward hooks; "other" is the rest of the pass (correlation volumes and
their look-ups, upsampling). Per-iteration cost is the difference of two
iteration counts divided by their difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from sgru_ros.model import IGEVConfig, RaftConfig, SelectiveIGEV, build_model
from sgru_ros.training.train import PRESETS


class StageTimer:
    def __init__(self, model: torch.nn.Module) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._start: dict[str, float] = {}
        self._handles = []
        for name, module in model.named_children():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, name):
        def hook(*_):
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(*_):
            self.totals[name] += time.perf_counter() - self._start[name]
            self.calls[name] += 1
        return hook

    def reset(self) -> None:
        self.totals.clear()
        self.calls.clear()


def run(model, left, right, iters, kwargs, repeats):
    timer = StageTimer(model)
    with torch.inference_mode():
        model(left, right, iters=iters, **kwargs)  # warm-up
        walls, stages = [], []
        for _ in range(repeats):
            timer.reset()
            start = time.perf_counter()
            model(left, right, iters=iters, **kwargs)
            walls.append(time.perf_counter() - start)
            stages.append(dict(timer.totals))
    timer.remove()
    best = min(range(repeats), key=lambda i: walls[i])
    return statistics.median(walls), stages[best], dict(timer.calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--iters", type=int, nargs=2, default=[8, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", action="append", choices=list(PRESETS),
                        help="time these training presets instead of the full-size networks (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    left = torch.rand(1, 3, args.height, args.width) * 255
    right = torch.roll(left, shifts=-8, dims=-1)
    print(f"CPU, {args.threads} threads, torch {torch.__version__}, input {args.width}x{args.height}, "
          f"fp32, median of {args.repeats}")
    configs = ([(name, PRESETS[name]) for name in args.preset] if args.preset else
               [("Selective-RAFT", RaftConfig()), ("Selective-IGEV", IGEVConfig())])
    for name, config in configs:
        model = build_model(config).eval()
        kwargs = {"max_disp": 192} if isinstance(model, SelectiveIGEV) else {}
        params = sum(p.numel() for p in model.parameters()) / 1e6
        results = {n: run(model, left, right, n, kwargs, args.repeats) for n in args.iters}
        lo, hi = args.iters
        per_iter = (results[hi][0] - results[lo][0]) / (hi - lo)
        print(f"\n{name} ({params:.2f} M parameters)")
        for n, (wall, stages, calls) in results.items():
            print(f"  {n:3d} iterations: {wall * 1e3:8.1f} ms total")
            for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
                print(f"      {stage:16s} {seconds * 1e3:8.1f} ms  ({calls[stage]} calls)")
            print(f"      {'other':16s} {(wall - sum(stages.values())) * 1e3:8.1f} ms  "
                  "(correlation volumes, look-ups, upsampling)")
        print(f"  per GRU iteration (look-up + update, from {lo} vs {hi}): {per_iter * 1e3:.1f} ms")
        print(f"  fixed cost (encoders, volumes): {(results[lo][0] - lo * per_iter) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
