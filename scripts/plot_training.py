#!/usr/bin/env python3
"""Learning curves of one or more training runs as a PNG (validation EPE and
bad-2 against the training scenes seen; dashed: twice the deployed iterations,
dotted: four times, where validated; right: the training loss, smoothed).

The x axis counts scenes (first_sample + step x batch_size, from each run's
config.json), so the stages of one training, which restart their step count
and may change the batch size, line up one after the other.

    python scripts/plot_training.py runs/long --label "long run" \\
        runs/pilot_a --label "pilot lr 4e-4" --out docs/learning_curves.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def read_csv(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}


def scenes_seen(run: Path, steps: list[float]) -> list[float]:
    """Training scenes seen after each of ``steps`` (a stage may start past 0)."""
    config = json.loads((run / "config.json").read_text())
    return [config.get("first_sample", 0) + step * config["batch_size"] for step in steps]


def smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (with val_log.csv, train_log.csv)")
    parser.add_argument("--label", action="append", help="legend label per run (in order)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default="sgru_ros bundled model: synthetic validation")
    args = parser.parse_intermixed_args()  # run folders and their --label may alternate
    labels = args.label or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error("give one --label per run folder")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install 'sgru_ros[train]'") from None

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for run, label in zip(args.runs, labels):
        val = read_csv(run / "val_log.csv")
        x = scenes_seen(run, val["step"])
        line, = axes[0].plot(x, val["val_epe"], marker=".", label=label)
        axes[1].plot(x, val["val_bad2"], marker=".", color=line.get_color(), label=label)
        for suffix, style in (("_x2", "--"), ("_x4", ":")):
            if f"val_bad2{suffix}" in val:
                axes[0].plot(x, val[f"val_epe{suffix}"], ls=style, color=line.get_color())
                axes[1].plot(x, val[f"val_bad2{suffix}"], ls=style, color=line.get_color())
        train = read_csv(run / "train_log.csv")
        axes[2].plot(scenes_seen(run, train["step"]), smooth(train["loss"], 50), color=line.get_color(),
                     label=label)
    for ax, name in zip(axes, ("validation EPE (px)", "validation bad-2 (%)", "training loss (mean of 50 steps)")):
        ax.set_xlabel("training scenes seen")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[1].legend(title="solid: deployed iterations; dashed: twice; dotted: 4x", fontsize=8, title_fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
