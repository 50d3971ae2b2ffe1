#!/usr/bin/env python3
"""Statistics of the procedural training data next to the real evaluation pair.

What they measure is where the synthetic data differed from real scenes
(issue 8): slanted surfaces, how much the two views differ photometrically
after warping by the ground truth, how the disparity mass is spread, and the
share of depth edges and occlusions. The Motorcycle pair is only measured,
never trained on.

    python tools/experiments/data_stats.py                       # the package's generator
    python tools/experiments/data_stats.py --generator old_synthetic.py --label before

``--generator`` loads another version of ``sgru_ros/training/synthetic.py``
from a file (e.g. ``git show REV:sgru_ros/training/synthetic.py``), so a
before/after table uses one definition of every statistic.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np

from sgru_ros.calibration import motorcycle_pair
from sgru_ros.evaluation import region_masks

BINS = ((0, 15), (15, 35), (35, 60), (45, 60), (60, 1e9))


def pair_statistics(left: np.ndarray, right: np.ndarray, disparity: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel quantities of one pair: region labels, warping residual, disparity."""
    regions = region_masks(disparity, left)
    h, w = disparity.shape
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(right.astype(np.float32), xx - np.nan_to_num(disparity), yy, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
    residual = np.abs(warped - left.astype(np.float32)).mean(-1)
    matchable = np.isfinite(disparity) & ~regions["edges"] & ~regions["occluded"] & np.isfinite(residual)
    return {"known": np.isfinite(disparity), "matchable": matchable, "residual": residual,
            "disparity": disparity, **regions}


def summarise(pairs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    known = sum(p["known"].sum() for p in pairs)
    share = lambda key: 100.0 * sum(p[key].sum() for p in pairs) / known  # noqa: E731
    residual = np.concatenate([p["residual"][p["matchable"]] for p in pairs])
    disparity = np.concatenate([p["disparity"][p["known"]] for p in pairs])
    stats = {name: share(name) for name in ("edges", "occluded", "slanted", "textured_fronto",
                                           "weak_texture_fronto")}
    stats["warp residual (grey levels, mean)"] = float(residual.mean())
    stats["warp residual (median)"] = float(np.median(residual))
    for lo, hi in BINS:
        label = f"disparity {lo}-{hi:.0f} px" if hi < 1e9 else f"disparity >= {lo} px"
        stats[label] = 100.0 * float(((disparity >= lo) & (disparity < hi)).mean())
    return stats


def load_generator(path: Path):
    name = f"synthetic_under_test_{len(sys.modules)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def synthetic_pairs(module, samples: int, crop: tuple[int, int], max_disparity: float, seed: int) -> list:
    fields = {f.name for f in dataclasses.fields(module.SceneConfig)}
    options = {"height": crop[0], "width": crop[1], "max_disparity": max_disparity}
    if "photo_dirs" in fields:
        options["photo_dirs"] = module.existing_photo_dirs()
    data = module.SyntheticStereo(module.SceneConfig(**options), seed=seed)
    return [pair_statistics(s.left, s.right, s.disparity) for s in (data[i] for i in range(samples))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", type=Path, action="append",
                        help="synthetic.py file(s) to measure (default: the package's)")
    parser.add_argument("--label", action="append", help="column label for each --generator")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--crop", type=int, nargs=2, default=(128, 288))
    parser.add_argument("--max-disparity", type=float, default=96.0)
    parser.add_argument("--seed", type=int, default=77)
    args = parser.parse_args()
    package = Path(__file__).resolve().parents[1] / "sgru_ros/training/synthetic.py"
    generators = args.generator or [package]
    labels = args.label or [p.stem for p in generators]
    if len(labels) != len(generators):
        parser.error("give one --label per --generator")
    columns = {}
    for label, path in zip(labels, generators):
        pairs = synthetic_pairs(load_generator(path), args.samples, tuple(args.crop), args.max_disparity, args.seed)
        columns[f"{label} ({args.samples} scenes {args.crop[0]}x{args.crop[1]})"] = summarise(pairs)
    columns["Motorcycle (741x500)"] = summarise([pair_statistics(*motorcycle_pair())])
    names = list(next(iter(columns.values())))
    print("| % of known pixels unless noted | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in names:
        print(f"| {name} | " + " | ".join(f"{c[name]:.1f}" for c in columns.values()) + " |")


if __name__ == "__main__":
    main()
