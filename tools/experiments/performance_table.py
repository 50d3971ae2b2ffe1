#!/usr/bin/env python3
"""The CPU table of docs/performance.md, from one run: milliseconds per frame of `sgru-stereo bench` for
each model, size and iteration count, and for each path: the code before issue 11 (`--baseline-tree`, a
checkout of that commit, e.g. `git worktree add /tmp/today db58fcc`), today's torch path in fp32 (and
bf16 with --bf16), and the onnxruntime engine.

    python tools/experiments/performance_table.py --baseline-tree /tmp/today [--json docs/performance_cpu.json]

Every configuration runs in a process of its own (so peak RSS belongs to it): one warm-up, then
`--repeats` timed passes (medians). The baseline is timed the same way (StereoEstimator.estimate on the
same pair) from the older tree, which has no bench command. Slow combinations are limited: onnxruntime
and bf16 run only at the first size and iteration count of each model (--everywhere onnxruntime bf16
lifts that). bf16 is off by default and can be asked for some models only (--bf16 bundled): on CPUs
without bf16 instructions one pass takes minutes (tools/experiments/precision_report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

MODELS = {"bundled": [], "selective-igev": ["--random-weights", "--variant", "igev"],
          "selective-raft": ["--random-weights", "--variant", "raft"]}

# Runs with the baseline tree first on sys.path; times StereoEstimator.estimate like sgru_ros.bench.
BASELINE = textwrap.dedent("""
    import json, statistics, sys, time
    tree, model, height, width, iters, repeats, threads = sys.argv[1:8]
    sys.path.insert(0, tree)
    import cv2, torch
    torch.set_num_threads(int(threads))
    from sgru_ros.calibration import motorcycle_pair
    from sgru_ros.inference import StereoEstimator
    from sgru_ros.model import IGEVConfig, RaftConfig, build_model
    if model == "bundled":
        estimator = StereoEstimator.from_checkpoint(None, device="cpu")
    else:
        torch.manual_seed(0)
        estimator = StereoEstimator(build_model(IGEVConfig() if model.endswith("igev") else RaftConfig()),
                                    device="cpu")
    left, right, _ = motorcycle_pair()
    left, right = (cv2.resize(i, (int(width), int(height)), interpolation=cv2.INTER_AREA) for i in (left, right))
    estimator.estimate(left, right, iters=int(iters))
    runs = []
    for _ in range(int(repeats)):
        start = time.perf_counter()
        estimator.estimate(left, right, iters=int(iters))
        runs.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({"total_ms": statistics.median(runs)}))
""")


def bench(model: str, size: tuple[int, int], iters: int, precision: str, engine: str, repeats: int,
          threads: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "sgru_ros.cli", "bench", *MODELS[model], "--device", "cpu",
                        "--threads", str(threads), "--precision", precision, "--engine", engine, "--size",
                        str(size[0]), str(size[1]), "--iters", str(iters), "--repeats", str(repeats),
                        "--warmup", "1", "--json", out.name], check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())[0]


def baseline(tree: str, model: str, size: tuple[int, int], iters: int, repeats: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    done = subprocess.run([sys.executable, "-c", BASELINE, tree, model, str(size[0]), str(size[1]), str(iters),
                           str(repeats), str(threads)], check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-tree", required=True, help="checkout of the commit before the speedups")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", default=["256x384", "480x640"], help="HxW")
    parser.add_argument("--iters", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--everywhere", nargs="+", default=[], choices=["onnxruntime", "bf16"],
                        help="time these at every size and iteration count, not only at the first")
    parser.add_argument("--bf16", nargs="*", choices=list(MODELS), metavar="MODEL",
                        help="also time bf16 autocast, for these models (all when none is named)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    bf16_models = [] if args.bf16 is None else args.bf16 or list(MODELS)
    rows = []
    print("| model | size (WxH) | iters | before (ms) | fp32 (ms) | speed-up | bf16 (ms) | onnxruntime (ms) "
          "| peak RSS fp32 (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        for i, size in enumerate(sizes):
            for j, iters in enumerate(args.iters):
                row = {"model": model, "height": size[0], "width": size[1], "iters": iters}
                row["before"] = baseline(args.baseline_tree, model, size, iters, args.repeats, args.threads)
                row["fp32"] = bench(model, size, iters, "fp32", "torch", args.repeats, args.threads)
                first = i == 0 and j == 0
                if model in bf16_models and (first or "bf16" in args.everywhere):
                    row["bf16"] = bench(model, size, iters, "bf16", "torch", args.repeats, args.threads)
                if first or "onnxruntime" in args.everywhere:
                    row["onnxruntime"] = bench(model, size, iters, "fp32", "onnxruntime", args.repeats, args.threads)
                rows.append(row)
                cell = lambda key: f"{row[key]['total_ms']:.0f}" if key in row else "–"  # noqa: E731
                print(f"| {model} | {size[1]}x{size[0]} | {iters} | {cell('before')} | {cell('fp32')} | "
                      f"{row['before']['total_ms'] / row['fp32']['total_ms']:.2f}x | {cell('bf16')} | "
                      f"{cell('onnxruntime')} | {row['fp32']['peak_memory_mb']:.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
