"""``sgru-stereo eval``: errors against ground truth, side by side with OpenCV SGBM."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..confidence import SPARSIFICATION_FRACTIONS, confidence_map, earlier_iteration, sparsification
from ..inference import MAX_ITERATIONS
from ..io import read_image
from .common import CommandError, add_model_arguments, estimate, estimator_from_args, int_type, iterations


def add_parser(sub) -> None:
    evaluate = sub.add_parser("eval", help="errors against ground truth, side by side with OpenCV SGBM")
    add_model_arguments(evaluate)
    evaluate.add_argument("--motorcycle", action="store_true",
                          help="use scikit-image's Middlebury 2014 Motorcycle pair (741x500) and its ground truth")
    evaluate.add_argument("--left", help="left image")
    evaluate.add_argument("--right", help="right image")
    evaluate.add_argument("--gt", help="ground truth: Middlebury .pfm, KITTI 16-bit .png, .npy or .npz")
    evaluate.add_argument("--iters", type=iterations, nargs="+", default=[8, 16, 32],
                          help=f"iteration counts in 1..{MAX_ITERATIONS}, all from one pass (default 8 16 32)")
    evaluate.add_argument("--sgbm-num-disparities", type=int_type(16, multiple=16), default=64,
                          help="SGBM search range, multiple of 16 (default 64)")
    evaluate.add_argument("--sparsification", action="store_true",
                          help="also print bad-2 of the most confident 100/90/75/50 %% of pixels next to the oracle "
                               "(how informative the confidence output is)")
    evaluate.add_argument("--regions", action="store_true",
                          help="also bad-2 by region: depth edges, occluded, slanted, textured and weak texture")
    evaluate.add_argument("--warm-start-sgbm", action="store_true",
                          help="also run the network started from SGBM's map (holes filled): a classical prior")
    evaluate.set_defaults(func=run)


def _eval_pair(args: argparse.Namespace):
    from ..io import read_disparity

    if args.motorcycle:
        from ..calibration import motorcycle_pair

        return ("Middlebury 2014 Motorcycle (scikit-image, quarter size)", *motorcycle_pair())
    if not (args.left and args.right and args.gt):
        raise CommandError("give --left, --right and --gt, or --motorcycle")
    return Path(args.left).name, read_image(args.left), read_image(args.right), read_disparity(args.gt)


def run(args: argparse.Namespace) -> None:
    from ..evaluation import SGBMConfig, dense_prior, disparity_metrics, region_bad2, region_masks, sgbm_disparity

    name, left, right, gt = _eval_pair(args)
    if gt.shape != left.shape[:2]:
        raise CommandError(f"ground truth is {gt.shape[1]}x{gt.shape[0]} but the images are "
                           f"{left.shape[1]}x{left.shape[0]}")
    iters = sorted(set(args.iters))
    estimator = estimator_from_args(args)
    # The confidence of k iterations compares them with k // 2 (confidence.earlier_iteration): one pass has both.
    earlier = {k: earlier_iteration(k) for k in iters} if args.sparsification else {}
    outputs = sorted((set(iters) | {e for e in earlier.values() if e}) - {iters[-1]})
    start = time.perf_counter()
    result = estimate(estimator, name, left, right, iters=iters[-1], output_iters=outputs)
    net_time = time.perf_counter() - start
    start = time.perf_counter()
    sgbm = sgbm_disparity(left, right, SGBMConfig(num_disparities=args.sgbm_num_disparities))
    sgbm_time = time.perf_counter() - start
    weights = args.checkpoint or "bundled"
    maps = [(f"sgru {estimator.variant} ({weights})", k, result.intermediate.get(k, result.disparity))
            for k in iters]
    if args.warm_start_sgbm:  # init sgbm's start: evaluation.sgbm_prior of the same pair
        warm = estimate(estimator, name, left, right, iters=iters[-1], output_iters=iters[:-1],
                        disp_init=dense_prior(sgbm))
        maps += [(f"sgru {estimator.variant} from SGBM ({weights})", k, warm.intermediate.get(k, warm.disparity))
                 for k in iters]
    # OpenCV's own map: its first num_disparities columns empty (as in stereo_image_proc's output).
    border_empty = sgbm_disparity(left, right, SGBMConfig(num_disparities=args.sgbm_num_disparities, left_border=False))
    maps.append(("OpenCV SGBM, no left border, holes filled", None, dense_prior(border_empty)))
    maps.append(("OpenCV SGBM, holes filled", None, dense_prior(sgbm)))
    maps.append(("OpenCV SGBM, own pixels only", None, sgbm))
    rows = [(label, k, disparity_metrics(disparity, gt)) for label, k, disparity in maps]
    print(f"pair: {name}, {left.shape[1]}x{left.shape[0]}, {int(np.isfinite(gt).sum())} ground-truth pixels, "
          f"disparity {np.nanmin(gt):.1f}..{np.nanmax(gt):.1f}")
    print(f"network: {estimator.device}, {estimator.precision}, one pass of {iters[-1]} iterations in "
          f"{net_time:.2f} s; SGBM (num_disparities {args.sgbm_num_disparities}, block 3, left border searched) in "
          f"{sgbm_time:.2f} s")
    print(f"{'method':44s} {'iters':>5s} {'density%':>8s} {'EPE':>7s} {'bad-1%':>7s} {'bad-2%':>7s} "
          f"{'bad-3%':>7s} {'D1%':>7s}")
    for label, k, m in rows:
        print(f"{label[:44]:44s} {k if k else '-':>5} {m.density:8.1f} {m.epe:7.3f} {m.bad1:7.2f} {m.bad2:7.2f} "
              f"{m.bad3:7.2f} {m.d1:7.2f}")
    last = rows[len(iters) - 1][2]
    filled, own = rows[-2][2], rows[-1][2]
    ratio = lambda a, b: f"{a / b:.2f}x" if b > 0 else "n/a (SGBM has none)"  # noqa: E731
    print(f"bad-2 ratio at {iters[-1]} iterations: {ratio(last.bad2, filled.bad2)} SGBM filled (dense), "
          f"{ratio(last.bad2, own.bad2)} SGBM on its own {own.density:.0f}% of pixels")
    if args.regions:
        regions = region_masks(gt, left)
        known = int(np.isfinite(gt).sum())
        print("bad-2 % by region (docs/model_card.md defines them):")
        print(f"{'method':44s} {'iters':>5s} " + " ".join(f"{n:>19s}" for n in regions))
        print(f"{'share of ground-truth pixels %':44s} {'-':>5s} " +
              " ".join(f"{100 * m.sum() / known:19.1f}" for m in regions.values()))
        for label, k, disparity in maps:
            scores = region_bad2(disparity, gt, regions)
            print(f"{label[:44]:44s} {k if k else '-':>5} " + " ".join(f"{scores[n]:19.2f}" for n in regions))
    if args.sparsification:
        _print_sparsification(left, right, gt, result, earlier)


def _print_sparsification(left, right, gt, result, earlier: dict[int, int | None]) -> None:
    """bad-2 of the most confident pixels (confidence.confidence_map) against the oracle."""
    known = np.isfinite(gt)
    print("sparsification: bad-2 % of the most confident share of ground-truth pixels / of the oracle "
          "(the worst pixels dropped first)")
    print(f"{'iters':>5s} " + " ".join(f"{f'{100 * f:.0f} %':>15s}" for f in SPARSIFICATION_FRACTIONS))
    for k, e in earlier.items():
        disparity = result.intermediate.get(k, result.disparity)
        confidence = confidence_map(left, right, disparity, result.intermediate.get(e) if e else None)
        rows = sparsification(np.abs(disparity - gt)[known], confidence[known], SPARSIFICATION_FRACTIONS)
        print(f"{k:5d} " + " ".join(f"{ours:6.2f} / {oracle:5.2f}".rjust(15) for _, ours, oracle in rows))
