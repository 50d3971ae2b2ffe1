#!/usr/bin/env python3
"""Fit the confidence weights (``sgru_ros.confidence.ConfidenceModel``) on synthetic scenes.

Runs a model on procedural scenes (``training.synthetic``, a seed no training
run uses), computes the three confidence cues per pixel and fits a logistic
regression for "the disparity is within 2 px of the truth". Half the scenes
fit, the other half check: the sparsification of the held-out half and how
well the probabilities are calibrated are printed next to the weights. Real
stereo benchmarks (Motorcycle included) are never used here.

    python scripts/fit_confidence.py                 # bundled model, 16 scenes 256 x 384, 8 iterations
    python scripts/fit_confidence.py --checkpoint sgru_raft_sceneflow.pth --iters 16
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sgru_ros.confidence import ConfidenceModel, confidence_cues, confidence_map, earlier_iteration, sparsification
from sgru_ros.inference import StereoEstimator
from sgru_ros.training.synthetic import SceneConfig, SyntheticStereo, existing_photo_dirs

#: Not the training seed (1234) nor its validation seed (1234 + 1_000_003).
SEED = 424242
CUES = ("convergence", "edge", "photometric")


def scene_pixels(estimator: StereoEstimator, data: SyntheticStereo, indices, iters: int):
    """(features N x 3 of log(1 + cue), error N, scenes) over the given scenes."""
    features, errors, scenes = [], [], []
    earlier = earlier_iteration(iters)
    for i in indices:
        sample = data[i]
        result = estimator.estimate(sample.left, sample.right, iters=iters, output_iters=[earlier] if earlier else [])
        cues = confidence_cues(sample.left, sample.right, result.disparity, result.intermediate.get(earlier))
        features.append(np.stack([np.log1p(cues[name]).ravel() for name in CUES], axis=1))
        errors.append(np.abs(result.disparity - sample.disparity).ravel())
        scenes.append((sample, result))
        print(f"scene {i}: bad-2 {100 * (errors[-1] > 2).mean():.2f} %", flush=True)
    return np.concatenate(features), np.concatenate(errors), scenes


def fit(features: np.ndarray, good: np.ndarray) -> ConfidenceModel:
    """Logistic regression by L-BFGS (no regularisation: four numbers, a million pixels)."""
    x = torch.tensor(features, dtype=torch.float64)
    y = torch.tensor(good, dtype=torch.float64)
    weights = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weights[1:] + weights[0], y)
        loss.backward()
        return loss

    optimizer.step(closure)
    b, *w = (round(float(v), 3) for v in weights.detach())
    return ConfidenceModel(bias=b, **dict(zip(CUES, w)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="model (default: the bundled weights)")
    parser.add_argument("--scenes", type=int, default=16, help="scenes in all; half fit, half check")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 384), metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    estimator = StereoEstimator.from_checkpoint(args.checkpoint, device="cpu")
    data = SyntheticStereo(SceneConfig(height=args.size[0], width=args.size[1], photo_dirs=existing_photo_dirs()),
                           seed=SEED)
    half = args.scenes // 2
    x_fit, e_fit, _ = scene_pixels(estimator, data, range(half), args.iters)
    _, e_check, scenes = scene_pixels(estimator, data, range(half, args.scenes), args.iters)
    model = fit(x_fit, e_fit <= 2)
    print(f"\n{model}")
    earlier = earlier_iteration(args.iters)
    confidence = np.concatenate([confidence_map(s.left, s.right, r.disparity, r.intermediate.get(earlier), model)
                                 .ravel() for s, r in scenes])
    # Each cue alone ranks pixels too (larger cue: less confident): which of them is informative.
    x_check = np.concatenate([np.stack([np.log1p(confidence_cues(s.left, s.right, r.disparity,
                                                                 r.intermediate.get(earlier))[name]).ravel()
                                        for name in CUES], axis=1) for s, r in scenes])
    rankings = {"combined": confidence, **{f"{name} alone": -x_check[:, i] for i, name in enumerate(CUES)}}
    print("held-out scenes, bad-2 (%) of the most confident 100 / 90 / 75 / 50 % of pixels:")
    for label, ranking in rankings.items():
        rows = sparsification(e_check, ranking)
        print(f"  {label:20s} " + " ".join(f"{ours:6.2f}" for _, ours, _ in rows))
    print(f"  {'oracle':20s} " + " ".join(f"{oracle:6.2f}" for _, _, oracle in rows))
    print("calibration (held out): confidence bin -> share within 2 px")
    for low, high in ((0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 0.9), (0.9, 1.01)):
        inside = (confidence >= low) & (confidence < high)
        if inside.any():
            print(f"  {low:.2f}-{min(high, 1):.2f}: {100 * (e_check[inside] <= 2).mean():5.1f} % "
                  f"of {100 * inside.mean():4.1f} % of pixels")


if __name__ == "__main__":
    main()
