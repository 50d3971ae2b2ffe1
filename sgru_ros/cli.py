"""``sgru-stereo``: the package's command line (infer, eval, train, run, source, demo)."""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from .inference import PRECISIONS, StereoEstimator
from .io import DISPARITY_FORMATS, read_image, write_disparity
from .model import CheckpointError
from .model.checkpoint import VARIANTS
from .visualize import colorize_disparity


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="state dict file (the authors' .pth or this package's); "
                                             "default: the bundled compact model")
    parser.add_argument("--variant", choices=VARIANTS, default=None,
                        help="insist on raft or igev (default: detected from the checkpoint)")
    parser.add_argument("--max-disp", type=int, default=192,
                        help="Selective-IGEV cost-volume range in pixels, multiple of 32 (default 192)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="default fp32")
    parser.add_argument("--max-width", type=int, default=None,
                        help="downscale wider inputs to this width first (disparity is scaled back)")


def estimator_from_args(args: argparse.Namespace) -> StereoEstimator:
    return StereoEstimator.from_checkpoint(args.checkpoint, variant=args.variant, device=args.device,
                                           precision=args.precision, max_disp=args.max_disp,
                                           max_width=args.max_width)


def _is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _pairs(left: str, right: str) -> list[tuple[Path, Path]]:
    if _is_pattern(left) != _is_pattern(right):
        raise CommandError("--left and --right must both be files or both be glob patterns")
    if not _is_pattern(left):
        return [(Path(left), Path(right))]
    lefts, rights = sorted(glob.glob(left)), sorted(glob.glob(right))
    if not lefts:
        raise CommandError(f"no files match --left {left!r}")
    if len(lefts) != len(rights):
        raise CommandError(f"--left matches {len(lefts)} files but --right matches {len(rights)}")
    return [(Path(a), Path(b)) for a, b in zip(lefts, rights)]


def cmd_infer(args: argparse.Namespace) -> None:
    pairs = _pairs(args.left, args.right)
    batch = _is_pattern(args.left)
    out = Path(args.out)
    if batch:
        out.mkdir(parents=True, exist_ok=True)
        if args.color:
            Path(args.color).mkdir(parents=True, exist_ok=True)
    elif out.suffix.lower() not in DISPARITY_FORMATS:
        raise CommandError(f"--out {out}: use a {', '.join(DISPARITY_FORMATS)} file name")
    estimator = estimator_from_args(args)
    print(f"model: {estimator.variant} ({args.checkpoint or 'bundled'}), device {estimator.device}, "
          f"precision {estimator.precision}, {args.iters} iterations")
    for left_path, right_path in pairs:
        left, right = read_image(left_path), read_image(right_path)
        start = time.perf_counter()
        result = estimator.estimate(left, right, iters=args.iters)
        elapsed = time.perf_counter() - start
        target = out / f"{left_path.stem}.{args.format}" if batch else out
        write_disparity(target, result.disparity)
        if args.color:
            color_path = Path(args.color) / f"{left_path.stem}.png" if batch else Path(args.color)
            cv2.imwrite(str(color_path), colorize_disparity(result.disparity))
        print(f"{left_path} -> {target} ({left.shape[1]}x{left.shape[0]}, {elapsed:.2f} s)")


def _eval_pair(args: argparse.Namespace):
    from .io import read_disparity

    if args.motorcycle:
        from .calibration import motorcycle_pair

        return ("Middlebury 2014 Motorcycle (scikit-image, quarter size)", *motorcycle_pair())
    if not (args.left and args.right and args.gt):
        raise CommandError("give --left, --right and --gt, or --motorcycle")
    return Path(args.left).name, read_image(args.left), read_image(args.right), read_disparity(args.gt)


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluation import SGBMConfig, disparity_metrics, fill_from_left, sgbm_disparity

    name, left, right, gt = _eval_pair(args)
    if gt.shape != left.shape[:2]:
        raise CommandError(f"ground truth is {gt.shape[1]}x{gt.shape[0]} but the images are "
                           f"{left.shape[1]}x{left.shape[0]}")
    iters = sorted(set(args.iters))
    estimator = estimator_from_args(args)
    start = time.perf_counter()
    result = estimator.estimate(left, right, iters=iters[-1], output_iters=iters[:-1])
    net_time = time.perf_counter() - start
    start = time.perf_counter()
    sgbm = sgbm_disparity(left, right, SGBMConfig(num_disparities=args.sgbm_num_disparities))
    sgbm_time = time.perf_counter() - start
    rows = [(f"sgru {estimator.variant} ({args.checkpoint or 'bundled'})", k,
             disparity_metrics(result.intermediate.get(k, result.disparity), gt)) for k in iters]
    rows.append(("OpenCV SGBM, holes filled", None, disparity_metrics(fill_from_left(sgbm), gt)))
    rows.append(("OpenCV SGBM, own pixels only", None, disparity_metrics(sgbm, gt)))
    print(f"pair: {name}, {left.shape[1]}x{left.shape[0]}, {int(np.isfinite(gt).sum())} ground-truth pixels, "
          f"disparity {np.nanmin(gt):.1f}..{np.nanmax(gt):.1f}")
    print(f"network: {estimator.device}, {estimator.precision}, one pass of {iters[-1]} iterations in "
          f"{net_time:.2f} s; SGBM (num_disparities {args.sgbm_num_disparities}, block 3) in {sgbm_time:.2f} s")
    print(f"{'method':44s} {'iters':>5s} {'density%':>8s} {'EPE':>7s} {'bad-1%':>7s} {'bad-2%':>7s} "
          f"{'bad-3%':>7s} {'D1%':>7s}")
    for label, k, m in rows:
        print(f"{label[:44]:44s} {k if k else '-':>5} {m.density:8.1f} {m.epe:7.3f} {m.bad1:7.2f} {m.bad2:7.2f} "
              f"{m.bad3:7.2f} {m.d1:7.2f}")
    best = rows[len(iters) - 1][2]
    filled, own = rows[-2][2], rows[-1][2]
    ratio = lambda a, b: f"{a / b:.2f}x" if b > 0 else "n/a (SGBM has none)"  # noqa: E731
    print(f"bad-2 ratio at {iters[-1]} iterations: {ratio(best.bad2, filled.bad2)} SGBM filled (dense), "
          f"{ratio(best.bad2, own.bad2)} SGBM on its own {own.density:.0f}% of pixels")


def cmd_train(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from .training.train import TrainConfig, Trainer

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if "crop" in values:
        values["crop"] = tuple(values["crop"])
    trainer = Trainer(TrainConfig(**values), Path(args.out))
    if args.resume and trainer.resume():
        print(f"resumed {args.out} at step {trainer.step}")
    elif (Path(args.out) / "train_state.pt").exists() and not args.resume:
        raise CommandError(f"{args.out} already holds a run; pass --resume or choose another --out")
    print(f"training {trainer.config.preset} on {trainer.device} for {trainer.config.steps} steps -> {args.out}")
    metrics = trainer.run(progress=not args.no_progress)
    print(f"done: step {trainer.step}, {trainer.elapsed / 60:.1f} min, " +
          ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()) + f"; weights: {Path(args.out) / 'model.pth'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    status = run_demo(Path(args.out), frames=args.frames, iterations=args.iters, checkpoint=args.checkpoint,
                      device=args.device, rate=args.rate, timeout_s=args.timeout)
    if status:
        raise CommandError("the demo did not complete")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgru-stereo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    infer = sub.add_parser("infer", help="disparity for an image pair or a sequence of pairs")
    add_model_arguments(infer)
    infer.add_argument("--left", required=True, help="left image, or a glob pattern of left images")
    infer.add_argument("--right", required=True, help="right image, or a glob pattern (sorted like --left)")
    infer.add_argument("--out", required=True,
                       help="output .npy/.pfm/.png (16-bit, disparity x 256); a folder for glob patterns")
    infer.add_argument("--format", default="png", choices=[f.lstrip(".") for f in DISPARITY_FORMATS],
                       help="file format inside the --out folder for glob patterns (default png)")
    infer.add_argument("--iters", type=int, default=32, help="GRU iterations (default 32, as the authors)")
    infer.add_argument("--color", help="also write a colorized disparity PNG (a folder for glob patterns)")
    infer.set_defaults(func=cmd_infer)

    evaluate = sub.add_parser("eval", help="errors against ground truth, side by side with OpenCV SGBM")
    add_model_arguments(evaluate)
    evaluate.add_argument("--motorcycle", action="store_true",
                          help="use scikit-image's Middlebury 2014 Motorcycle pair (741x500) and its ground truth")
    evaluate.add_argument("--left", help="left image")
    evaluate.add_argument("--right", help="right image")
    evaluate.add_argument("--gt", help="ground truth: Middlebury .pfm, KITTI 16-bit .png, .npy or .npz")
    evaluate.add_argument("--iters", type=int, nargs="+", default=[8, 16, 32],
                          help="iteration counts, all from one pass (default 8 16 32)")
    evaluate.add_argument("--sgbm-num-disparities", type=int, default=64,
                          help="SGBM search range, multiple of 16 (default 64)")
    evaluate.set_defaults(func=cmd_eval)

    demo = sub.add_parser("demo", help="sample source + stereo node over real rclpy; writes PNG, PFM and PLY")
    demo.add_argument("--out", default="sgru_demo", help="output folder (default sgru_demo)")
    demo.add_argument("--frames", type=int, default=3, help="frames to wait for (default 3)")
    demo.add_argument("--iters", type=int, default=8, help="GRU iterations (default 8)")
    demo.add_argument("--checkpoint", help="checkpoint file (default: bundled weights)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    demo.add_argument("--rate", type=float, default=1.0, help="sample source frame rate (default 1 Hz)")
    demo.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("run", help="the stereo node (ROS arguments follow: sgru-stereo run --ros-args -p iterations:=8)")
    sub.add_parser("source", help="the sample stereo source node (sgru-stereo source --ros-args -p source:=folder ...)")

    from .training.train import PRESETS
    train = sub.add_parser("train", help="train a network on procedural stereo scenes (CPU or GPU)")
    train.add_argument("--out", required=True, help="run folder: logs, train_state.pt, model.pth")
    train.add_argument("--preset", choices=list(PRESETS), help="architecture (default raft-compact)")
    train.add_argument("--steps", type=int, help="optimisation steps (default 2000)")
    train.add_argument("--batch-size", dest="batch_size", type=int, help="default 4")
    train.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="scene size, multiples of 32")
    train.add_argument("--lr", type=float, help="peak learning rate (default 4e-4)")
    train.add_argument("--train-iters", dest="train_iters", type=int, help="GRU iterations per step (default 8)")
    train.add_argument("--data-max-disparity", dest="data_max_disparity", type=float,
                       help="largest disparity in the scenes (default 96)")
    train.add_argument("--seed", type=int, help="data and initialisation seed (default 1234)")
    train.add_argument("--val-every", dest="val_every", type=int, help="validate and save every N steps")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    train.add_argument("--workers", type=int, help="data-generation processes (default 1)")
    train.add_argument("--init", help="start from these weights (same architecture as --preset), e.g. to fine-tune")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("run", "source"):  # ROS nodes: the rest is for rclpy (--ros-args ...)
        if argv[0] == "run":
            from .node import main as node_main
            return node_main(["sgru-stereo", *argv[1:]])
        from .sample_source import main as source_main
        return source_main(["sgru-stereo", *argv[1:]])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CommandError, CheckpointError, ValueError, OSError) as err:
        print(f"sgru-stereo {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
