"""SGBM's own pixels with the network in SGBM's holes, against the network alone, on synthetic validation.

    .venv/bin/python tools/experiments/sgbm_fusion.py [--scenes 48] [--checkpoint CKPT]

The validation scenes are the training's (``TrainConfig``'s seed + 1,000,003, 128 x 288), never Motorcycle.
SGBM searches the scenes' whole range (96 px). Prints bad-2 (%) over all ground-truth pixels and within 3 px
of a depth edge for: SGBM with holes filled; the network alone (8 iterations); the network started from SGBM's
map (2, 4, 8); and each of those two with SGBM's own value wherever SGBM gave one.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sgru_ros.evaluation import SGBMConfig, dense_prior, sgbm_disparity
from sgru_ros.inference import StereoEstimator
from sgru_ros.training.step import edge_band
from sgru_ros.training.synthetic import SyntheticStereo
from sgru_ros.training.train import SyntheticBatches, TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--checkpoint", default=None, help="default: the bundled weights")
    args = parser.parse_args()
    cfg = TrainConfig()
    scenes = SyntheticBatches(SyntheticStereo(cfg.scene(), seed=cfg.seed + 1_000_003), 0, args.scenes)
    estimator = StereoEstimator.from_checkpoint(args.checkpoint, device="cpu")
    sgbm = SGBMConfig(num_disparities=16 * int(np.ceil(cfg.data_max_disparity / 16)))
    counts: dict[str, np.ndarray] = {}  # name -> [bad, known, bad at edges, known at edges]
    own_share = []
    start = time.perf_counter()
    for i in range(args.scenes):
        left, right, target = scenes[i]
        left, right = (t.permute(1, 2, 0).clamp(0, 255).round().byte().numpy() for t in (left, right))
        truth, edges = target[0].numpy(), edge_band(target[None]).numpy()[0, 0]
        known = np.isfinite(truth)
        raw = sgbm_disparity(left, right, sgbm)
        own = np.isfinite(raw)
        own_share.append(own.mean())
        prior = dense_prior(raw)
        predictions = {"SGBM, holes filled": prior,
                       "network, 8 iterations": estimator.estimate(left, right, 8).disparity}
        for k in (2, 4, 8):
            predictions[f"network from SGBM, {k} iterations"] = estimator.estimate(left, right, k,
                                                                                   disp_init=prior).disparity
        for name in list(predictions)[1:]:
            predictions[f"SGBM's own pixels, else {name}"] = np.where(own, raw, predictions[name])
        for name, disparity in predictions.items():
            bad = np.abs(disparity - truth) > 2
            counts.setdefault(name, np.zeros(4, np.int64))
            counts[name] += [(bad & known).sum(), known.sum(), (bad & known & edges).sum(), (known & edges).sum()]
    print(f"{args.scenes} synthetic validation scenes {cfg.crop[1]}x{cfg.crop[0]} in "
          f"{time.perf_counter() - start:.0f} s; SGBM gave {100 * np.mean(own_share):.1f} % of the pixels")
    for name, (bad, known, edge_bad, edge_known) in counts.items():
        print(f"  {name:60s} bad-2 {100 * bad / known:6.2f} %   at depth edges {100 * edge_bad / edge_known:6.2f} %")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
