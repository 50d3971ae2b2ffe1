#!/usr/bin/env python3
"""How much training a GPU machine gives per minute, in about two minutes, before a training piece.

    python3 scripts/gpu_train_check.py OUT_DIR [--preset raft-compact] [--batches 4 8 16 32] [--seconds 8]
    python3 scripts/gpu_train_check.py OUT_DIR --device cpu --batches 1 --seconds 2 --crop 64 128   # dry run

Runs the package from this tree (no install). Needs PyTorch, numpy and OpenCV. Writes train_check.json
to OUT_DIR and prints, for the bundled recipe's step (128 x 288 scenes, 8 GRU iterations, a quarter of
the steps from a warm-start prior):
  - scene generation on this machine's CPU: scenes/s of one process, and how many data workers each
    cell below needs to be fed;
  - each batch size, eager and as CUDA graphs (``--cuda-graphs``): steps/s and scenes/s (median over
    --seconds after warm-up, the batches already on the device) and peak GPU memory;
  - CUDA graphs against eager steps from the same weights on the same batches, with the learning rate
    changing every step: the largest relative difference of loss and end-point error over 16 steps (both
    kinds of step captured and replayed) and of the weights after them (they differ by the order of
    floating-point sums).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgru_ros.training.step import TrainStep, make_optimizer  # noqa: E402
from sgru_ros.training.synthetic import SceneConfig, SyntheticStereo  # noqa: E402
from sgru_ros.training.train import PRESETS, SyntheticBatches, build_model, warm_start_prior  # noqa: E402

#: Every WARM_EVERY-th step starts from a prior, as the recipe's warm_start 0.25 does on average.
WARM_EVERY = 4


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(data: SyntheticBatches, batch_size: int, count: int, device: torch.device) -> list[tuple]:
    """``count`` batches of consecutive scenes, on the device."""
    batches = []
    for b in range(count):
        scenes = [data[(b * batch_size + i) % len(data)] for i in range(batch_size)]
        batches.append(tuple(torch.stack(t).to(device) for t in zip(*scenes)))
    return batches


def with_priors(batches: list[tuple], factor: int) -> list[tuple]:
    """The batches as (batch, prior) pairs: every WARM_EVERY-th with a warm-start prior, the others without
    (the recipe's warm_start 0.25 on average), the priors made before any timing."""
    cycle = []
    for k, batch in enumerate(batches):
        prior = (warm_start_prior(batch[2], factor, torch.Generator().manual_seed(k))
                 if k % WARM_EVERY == WARM_EVERY - 1 else None)
        cycle.append((batch, prior))
    return cycle


def run_steps(step: TrainStep, cycle: list[tuple], count: int, iters: int, scheduler=None) -> list[tuple]:
    """``count`` steps through ``cycle`` ((batch, prior) pairs), the schedule stepped after each as in
    training. Returns the (loss, epe) of each."""
    results = []
    for k in range(count):
        batch, prior = cycle[k % len(cycle)]
        results.append(step(batch, iters, prior))
        if scheduler is not None:
            scheduler.step()
    return results


def fresh_step(args, device: torch.device, graphs: bool, warmup: int = 3) -> TrainStep:
    torch.manual_seed(0)
    model = build_model(PRESETS[args.preset]).to(device)
    return TrainStep(model, make_optimizer(model, 1e-4, 1e-5, graphs), max_disp=192, graphs=graphs,
                     warmup=warmup)


def throughput(args, device: torch.device, data: SyntheticBatches, batch_size: int, graphs: bool) -> dict:
    """Steps per second of one (batch size, eager or graphs) cell, after the warm-up steps and captures."""
    step = fresh_step(args, device, graphs)
    cycle = with_priors(make_batches(data, batch_size, WARM_EVERY, device), step.model.downsample_factor)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run_steps(step, cycle, (step.warmup + 1) * WARM_EVERY, args.iters)  # warm-up; both graphs captured
    sync(device)
    rates = []
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        tick = time.perf_counter()
        run_steps(step, cycle, WARM_EVERY, args.iters)
        sync(device)
        rates.append(WARM_EVERY / (time.perf_counter() - tick))
    cell = {"batch": batch_size, "graphs": graphs, "steps_per_s": round(statistics.median(rates), 2),
            "scenes_per_s": round(batch_size * statistics.median(rates), 1), "samples": len(rates)}
    if device.type == "cuda":
        cell["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20)
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return cell


def graphs_against_eager(args, device: torch.device, data: SyntheticBatches, steps: int = 16) -> dict:
    """With warmup 2 and a prior every WARM_EVERY-th step, both kinds of step are captured and replayed
    within ``steps``; the one-cycle schedule changes the (tensor) learning rate the replays must read."""
    runs, weights = [], []
    for graphs in (False, True):
        step = fresh_step(args, device, graphs, warmup=2)
        cycle = with_priors(make_batches(data, args.batches[0], WARM_EVERY, device), step.model.downsample_factor)
        schedule = torch.optim.lr_scheduler.OneCycleLR(step.optimizer, 4e-4, steps + 1, pct_start=0.25,
                                                       cycle_momentum=False, anneal_strategy="linear")
        runs.append(run_steps(step, cycle, steps, args.iters, schedule))
        weights.append(torch.cat([p.detach().flatten() for p in step.model.parameters()]))
        assert not graphs or len(step.captured) == 2, f"captured {list(step.captured)}"
    rel = lambda a, b: abs(a - b) / max(abs(a), 1e-12)  # noqa: E731
    return {"steps": steps, "batch": args.batches[0], "eager": runs[0], "graphs": runs[1],
            "max_rel_loss": max(rel(e[0], g[0]) for e, g in zip(*runs)),
            "max_rel_epe": max(rel(e[1], g[1]) for e, g in zip(*runs)),
            "weights_rel_diff": ((weights[0] - weights[1]).norm() / weights[0].norm()).item()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="raft-compact", choices=sorted(PRESETS))
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--crop", type=int, nargs=2, default=[128, 288])
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per cell")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as the trainer: the scenes keep one size
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"torch": torch.__version__, "preset": args.preset, "crop": args.crop, "iters": args.iters,
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}

    def save() -> None:
        (args.out / "train_check.json").write_text(json.dumps(report, indent=1) + "\n")

    data = SyntheticBatches(SyntheticStereo(SceneConfig(height=args.crop[0], width=args.crop[1], max_disparity=96),
                                            seed=99), 0, 10 ** 6)
    tick = time.perf_counter()
    for i in range(24):
        data[i]
    generation = 24 / (time.perf_counter() - tick)
    report["generation_scenes_per_s_one_process"] = round(generation, 1)
    print(f"scene generation, one process: {generation:.1f} scenes/s", flush=True)
    save()
    if device.type == "cuda":
        report["graphs_vs_eager"] = graphs_against_eager(args, device, data)
        check = report["graphs_vs_eager"]
        print(f"graphs against eager, {check['steps']} steps of batch {check['batch']}: largest relative "
              f"difference loss {check['max_rel_loss']:.2e}, epe {check['max_rel_epe']:.2e}; weights after "
              f"them {check['weights_rel_diff']:.2e}", flush=True)
        save()
    report["cells"] = []
    for batch_size in args.batches:
        for graphs in ((False, True) if device.type == "cuda" else (False,)):
            try:
                cell = throughput(args, device, data, batch_size, graphs)
            except torch.cuda.OutOfMemoryError:  # (also raised during a capture)
                cell = {"batch": batch_size, "graphs": graphs, "error": "out of memory"}
                torch.cuda.empty_cache()
            if "scenes_per_s" in cell:
                cell["workers_to_feed"] = int(-(-cell["scenes_per_s"] // generation))
            report["cells"].append(cell)
            save()
            print(f"batch {batch_size:3d} {'graphs' if graphs else 'eager '}: "
                  + (cell.get("error") or f"{cell['steps_per_s']:7.2f} steps/s {cell['scenes_per_s']:8.1f} "
                     f"scenes/s, {cell.get('peak_mib', '-')} MiB peak, {cell['workers_to_feed']} data workers "
                     "to feed it"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
