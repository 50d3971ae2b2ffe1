#!/usr/bin/env python3
"""The GPU checks and the GPU table of docs/performance.md, in one process on any machine with a CUDA GPU.

    python3 scripts/gpu_bench.py OUT_DIR [--budget-s 420] [--repeats 20]
    python3 scripts/gpu_bench.py OUT_DIR --device cpu --sizes 96x160 --iters 2 --repeats 2   # dry run

Runs the package from this tree (no install). Needs a CUDA PyTorch, numpy, OpenCV, PyYAML and
scikit-image (the Motorcycle pair). Writes, each as soon as it is done (a run cut short keeps the rest):
  environment.json   GPU, driver, PyTorch, CUDA and cuDNN versions
  graph_check.json   CUDA-graph replay against the eager pass, fp32, every model at each size: largest
                     difference (bar 1e-3 px), two different frames replayed
  precision.json     each precision against strict fp32 (no TF32): mean and 99.9th-percentile |difference|
                     (bars 0.05 / 0.5 px) on the bundled model (Motorcycle) and the parity fixtures' networks (their Motorcycle crop)
  table.json         sgru-stereo bench cells: wall ms (median of --repeats), summed kernel ms, their ratio,
                     fps, peak memory, kernels and launch calls per frame; the done conditions' cells first
  pipeline.json      image in host memory -> disparity, depth and packed cloud in host memory, against the
                     network alone (interleaved medians)
and log lines on stdout. Cells not started before --budget-s are listed as skipped. A check or cell that raises is
logged (FAILED ...) and recorded in its file, the rest still runs, and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgru_ros.bench import BenchConfig, bench_pair, format_result, run_bench  # noqa: E402
from sgru_ros.calibration import MOTORCYCLE, motorcycle_pair  # noqa: E402
from sgru_ros.geometry import CloudLayout, pack_cloud  # noqa: E402
from sgru_ros.inference import StereoEstimator  # noqa: E402
from sgru_ros.model import load_model, released_model  # noqa: E402
from sgru_ros.pipeline import StereoPipeline  # noqa: E402
from sgru_ros.weights import default_checkpoint  # noqa: E402

PARITY_DIR = Path(__file__).resolve().parents[1] / "test" / "fixtures" / "parity"
#: Precision settings: name -> (estimator precision, TF32 for matmul and cuDNN). "fp32-strict" is the reference.
PRECISIONS = {"fp32-strict": ("fp32", False), "fp32": ("fp32", None), "tf32": ("fp32", True),
              "fp16": ("fp16", None), "bf16": ("bf16", None)}
BARS = {"mean_px": 0.05, "p999_px": 0.5, "graph_px": 1e-3}


def log(line: str) -> None:
    print(line, flush=True)


def write(out: Path, name: str, data) -> None:
    (out / name).write_text(json.dumps(data, indent=1) + "\n")


#: What raised so far (``failure``); the script exits 1 when any did.
FAILURES: list[str] = []


def failure(what: str, err: Exception) -> dict:
    """A check or cell that raised: logged and recorded, so that one failure (a capture the GPU refuses, memory)
    costs that row and not the rest of the machine's time."""
    FAILURES.append(what)
    log(f"FAILED {what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # what the failed row held does not crowd the next one
    return {"failed": what, "error": f"{type(err).__name__}: {err}"}


def models() -> dict[str, torch.nn.Module]:
    """The released widths of both variants (random weights: time does not depend on values) and the bundled model."""
    return {"igev": released_model("igev"), "raft": released_model("raft"), "bundled": load_model(default_checkpoint())}


def set_tf32(enabled: bool | None, defaults: tuple[bool, bool]) -> None:
    """None: PyTorch's defaults (cuDNN convolutions in TF32, matmul not)."""
    matmul, cudnn = defaults if enabled is None else (enabled, enabled)
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def environment(device: str) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": sys.version.split()[0], "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            info["driver"] = f"unknown ({err})"
    return info


def graph_check(nets: dict, device: str, sizes: list[tuple[int, int]], iters: int) -> list[dict]:
    rows = []
    for name, model in nets.items():
        eager, graphed = StereoEstimator(model, device=device), StereoEstimator(model, device=device, graphs=True)
        for height, width in sizes:
            try:
                left, right = bench_pair(height, width)
                worst = 0.0
                for frame in (left, right), (right[:, ::-1], left[:, ::-1]):  # a second, different frame
                    frame = tuple(np.ascontiguousarray(image) for image in frame)
                    want = eager.estimate(*frame, iters=iters, output_iters=[iters // 2])
                    got = graphed.estimate(*frame, iters=iters, output_iters=[iters // 2])
                    worst = max(worst, float(np.abs(got.disparity - want.disparity).max()),
                                float(np.abs(got.intermediate[iters // 2] - want.intermediate[iters // 2]).max()))
            except Exception as err:  # noqa: BLE001 -- recorded; the other checks still run
                rows.append({"model": name, "height": height, "width": width, "iters": iters,
                             **failure(f"graph check {name} {width}x{height}", err)})
                continue
            rows.append({"model": name, "height": height, "width": width, "iters": iters, "max_diff_px": worst,
                         "ok": worst <= BARS["graph_px"]})
            log(f"graph vs eager {name} {width}x{height} {iters} it: max |diff| {worst:.2e} px "
                f"({'ok' if worst <= BARS['graph_px'] else 'OVER'} {BARS['graph_px']})")
        eager.close()
        graphed.close()
    return rows


def precision_inputs(nets: dict) -> list[tuple[str, torch.nn.Module, np.ndarray, np.ndarray, int]]:
    """(name, model, left, right, max_disp): the bundled model on Motorcycle, and both released architectures
    with the parity fixtures' weights on their Motorcycle crop (test/fixtures/parity)."""
    import importlib.util

    left, right, _ = motorcycle_pair()
    cases = [("bundled/motorcycle", nets["bundled"], left, right, 192)]
    spec = importlib.util.spec_from_file_location("parity_weights", PARITY_DIR / "weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    for variant in ("igev", "raft"):
        fixture = torch.load(PARITY_DIR / f"{variant}_motorcycle_crop.pt", weights_only=True)
        state = Path(tempfile.mkdtemp()) / f"{variant}.pth"
        torch.save(weights.make_state(fixture["layout"], fixture["seed"]), state)
        cases.append((f"fixture-{variant}", load_model(state), fixture["left"].numpy(), fixture["right"].numpy(),
                      fixture["args"].get("max_disp", 192)))
    return cases


def precision_check(nets: dict, device: str, iters: int, defaults: tuple[bool, bool]) -> list[dict]:
    rows = []
    names = [p for p in PRECISIONS if device.startswith("cuda") or PRECISIONS[p][0] != "fp16"]
    for case, model, left, right, max_disp in precision_inputs(nets):
        outputs = {}
        for name in names:
            precision, tf32 = PRECISIONS[name]
            estimator = None
            try:
                set_tf32(tf32, defaults)
                estimator = StereoEstimator(model, device=device, precision=precision, max_disp=max_disp)
                outputs[name] = estimator.estimate(left, right, iters=iters).disparity
            except Exception as err:  # noqa: BLE001 -- recorded; the other precisions still run
                rows.append({"case": case, "precision": name, **failure(f"precision {case} {name}", err)})
            finally:
                set_tf32(None, defaults)  # the timing table's fp32 stays TF32-free whatever happened here
                if estimator is not None:
                    estimator.close()
        if "fp32-strict" not in outputs:
            continue
        for name in [n for n in names[1:] if n in outputs]:
            diff = np.abs(outputs[name] - outputs["fp32-strict"])
            mean, p999 = float(diff.mean()), float(np.percentile(diff, 99.9))
            ok = mean <= BARS["mean_px"] and p999 <= BARS["p999_px"]
            rows.append({"case": case, "precision": name, "iters": iters, "mean_px": mean, "p999_px": p999,
                         "max_px": float(diff.max()), "within_bars": ok})
            log(f"precision {case} {name} vs fp32-strict, {iters} it: mean {mean:.4f} px, p99.9 {p999:.4f} px "
                f"({'within' if ok else 'OUTSIDE'} {BARS['mean_px']}/{BARS['p999_px']})")
    return rows


def table_cells(names: list[str], sizes: list[tuple[int, int]], iters: list[int], precisions: list[str],
                graphs: list[bool]) -> list[tuple]:
    """(model, size, iterations, precision, graphs), the done conditions' cells first: both variants at the
    first size with the fewest iterations and at the second size with the most, fp16/fp32, graphs then eager."""
    cells = [(m, s, i, p, g) for m in names for s in sizes for i in iters for p in precisions for g in graphs]
    first = {(sizes[0], min(iters)), (sizes[-1], max(iters))}
    return sorted(cells, key=lambda c: ((c[1], c[2]) not in first, c[0] == "bundled", c[3] not in ("fp16", "fp32"),
                                         not c[4]))


def pipeline_check(model, device: str, precision: str, graphs: bool, iters: int, repeats: int) -> dict:
    """One 640x480 frame through StereoPipeline (network, depth, flying pixels) plus the packed cloud, against
    the estimator alone; interleaved, medians."""
    left, right = bench_pair(480, 640)
    calibration = MOTORCYCLE.scaled(640 / 741)
    p_left, p_right = calibration.projection(), calibration.projection(right=True)
    estimator = StereoEstimator(model, device=device, precision=precision, graphs=graphs)
    try:
        pipeline = StereoPipeline(estimator)
        layout = CloudLayout(color=True, avoid_padding=False)
        cloud = np.zeros(480 * 640 * layout.point_step, np.uint8)
        for _ in range(3):
            estimator.estimate(left, right, iters=iters)
        network, whole = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            estimator.estimate(left, right, iters=iters)
            network.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            result = pipeline.process(left, right, p_left, p_right, iterations=iters)
            pack_cloud(result.depth, result.geometry, left, layout, out=cloud)
            whole.append((time.perf_counter() - start) * 1e3)
    finally:
        estimator.close()
    row = {"precision": precision, "graphs": graphs, "iters": iters, "network_ms": statistics.median(network),
           "pipeline_ms": statistics.median(whole)}
    row["added_ms"] = row["pipeline_ms"] - row["network_ms"]
    log(f"pipeline 640x480 {iters} it {precision}{' graphs' if graphs else ''}: network {row['network_ms']:.1f} ms, "
        f"with depth and cloud {row['pipeline_ms']:.1f} ms (+{row['added_ms']:.1f} ms)")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the JSON files (created)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no table cell after this many seconds")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per table cell (median)")
    parser.add_argument("--sizes", nargs="+", default=["480x640", "384x1248"], help="HxW, the first and last matter")
    parser.add_argument("--iters", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"])
    args = parser.parse_args()
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        log("no CUDA device visible to this PyTorch: use --device cpu for a dry run")
        return 1
    env = environment(args.device)
    write(args.out, "environment.json", env)
    log(json.dumps(env))
    defaults = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    nets = models()

    if cuda:
        try:
            write(args.out, "graph_check.json", graph_check(nets, args.device, sizes, min(args.iters)))
        except Exception as err:  # noqa: BLE001 -- recorded; the other checks still run
            write(args.out, "graph_check.json", [failure("graph check", err)])
    else:
        log("graph check skipped: CUDA graphs need a CUDA device")
    try:
        write(args.out, "precision.json", precision_check(nets, args.device, min(args.iters), defaults))
    except Exception as err:  # noqa: BLE001 -- recorded; the table still runs
        write(args.out, "precision.json", [failure("precision check", err)])

    precisions = [p for p in args.precisions if cuda or p != "fp16"]
    cells = table_cells(list(nets), sizes, args.iters, precisions, [True, False] if cuda else [False])
    rows, skipped = [], []
    for name, (height, width), iters, precision, graphs in cells:
        if time.perf_counter() - start > args.budget_s:
            skipped.append({"model": name, "height": height, "width": width, "iters": iters,
                            "precision": precision, "graphs": graphs})
            continue
        cell = f"{name} {width}x{height} {iters} it {precision}{' graphs' if graphs else ' eager'}"
        config = BenchConfig(height=height, width=width, iters=iters, repeats=args.repeats, warmup=3, profiled=3)
        estimator = None
        try:
            estimator = StereoEstimator(nets[name], device=args.device, precision=precision, graphs=graphs)
            result = run_bench(estimator, config, model_name=name)
        except Exception as err:  # noqa: BLE001 -- recorded; the other cells still run
            rows.append({"model": name, "height": height, "width": width, "iters": iters, "precision": precision,
                         "graphs": graphs, **failure(cell, err)})
        else:
            rows.append(result.as_dict())
            log(f"{cell}: " + format_result(result).split(": ", 1)[1].replace("\n ", ";"))
        write(args.out, "table.json", {"cells": rows, "skipped": skipped})
        if estimator is not None:
            estimator.close()
    write(args.out, "table.json", {"cells": rows, "skipped": skipped})
    if skipped:
        log(f"{len(skipped)} cells skipped: past --budget-s {args.budget_s:.0f}")

    model = nets["igev"]
    pipeline_rows = []
    for precision in precisions[:2]:
        try:
            pipeline_rows.append(pipeline_check(model, args.device, precision, cuda, min(args.iters), args.repeats))
        except Exception as err:  # noqa: BLE001 -- recorded
            pipeline_rows.append({"precision": precision, **failure(f"pipeline check {precision}", err)})
    write(args.out, "pipeline.json", pipeline_rows)
    log(f"done in {time.perf_counter() - start:.0f} s; results in {args.out}"
        + (f"; {len(FAILURES)} failed: {', '.join(FAILURES)}" if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
