"""``sgru-stereo``: the package's command line (infer, eval, bag, train, run, source, demo).

Exit status 0 on success, 130 on Ctrl-C and 1 on any error, bad option values
included (not argparse's 2): the error is one line on stderr,
``sgru-stereo CMD: error: ...``, naming the option or file it concerns.
``infer`` checks its outputs (extension, folder, not an input, no file written
twice) before the model loads; every file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import cv2
import numpy as np
import torch

from .device import PRECISIONS, is_out_of_memory
from .inference import ENGINES, MAX_ITERATIONS, StereoEstimator, StereoResult
from .io import DISPARITY_FORMATS, IMAGE_FORMATS, read_image, write_disparity, write_image
from .model import SIZE_MULTIPLE, CheckpointError
from .model.base import SelectiveStereo
from .model.checkpoint import VARIANTS
from .ros.bag import DEFAULT_OUTPUTS, OUTPUTS
from .confidence import SPARSIFICATION_FRACTIONS, confidence_map, earlier_iteration, sparsification
from .geometry import CloudLayout
from .pipeline import GeometryOptions, StereoPipeline
from .visualize import colorize_disparity, side_by_side


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line with exit status 1, like every other failure."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {message}\n")


def _int_type(low: int, high: int | None = None, multiple: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer in low..high; with ``multiple``, a positive multiple of it."""
    if multiple > 1:
        allowed = f"a positive multiple of {multiple}"
    else:
        allowed = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if value < low or (high is not None and value > high) or value % multiple:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}")
        return value

    return parse


def _float_type(accept: Callable[[float], bool], allowed: str) -> Callable[[str], float]:
    """An argparse type: a float for which ``accept`` holds (NaN never does), else 'TEXT is not ALLOWED'."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}")
        return value

    return parse


_positive_float = _float_type(lambda v: v > 0, "a finite number > 0")
_fraction = _float_type(lambda v: 0.0 <= v <= 1.0, "a number in 0..1")


def _duration(text: str) -> float:
    """Seconds, or a number with s, m or h: '7200', '90m', '2h'."""
    units = {"s": 1, "m": 60, "h": 3600}
    scale = units.get(text[-1:].lower(), 1)
    try:
        return _positive_float(text[:-1] if text[-1:].lower() in units else text) * scale
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration > 0 (seconds, or like 90m, 2h)") from None


_iterations = _int_type(1, MAX_ITERATIONS)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="state dict file (the authors' .pth or this package's); "
                                             "default: the bundled compact model")
    parser.add_argument("--variant", choices=VARIANTS, default=None,
                        help="insist on raft or igev (default: detected from the checkpoint)")
    parser.add_argument("--max-disp", type=_int_type(32, multiple=32), default=192,
                        help="Selective-IGEV cost-volume range in pixels, multiple of 32 (default 192)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="default fp32")
    parser.add_argument("--max-width", type=_int_type(SIZE_MULTIPLE), default=None,
                        help=f"downscale wider inputs to this width first, >= {SIZE_MULTIPLE} "
                             "(disparity is scaled back)")
    parser.add_argument("--threads", type=_int_type(1), default=None,
                        help=f"CPU threads for the network (default: PyTorch's, here {torch.get_num_threads()})")
    parser.add_argument("--engine", choices=ENGINES, default="torch",
                        help="torch (default) or onnxruntime: an ONNX export per image size, built on first "
                             "use and cached (see docs/performance.md)")
    parser.add_argument("--compile", action="store_true",
                        help="torch engine: compile the per-frame encoders with torch.compile (needs a C++ "
                             "compiler on the CPU; the first frame of each size takes seconds to a minute)")
    parser.add_argument("--graphs", action="store_true",
                        help="torch engine on CUDA: capture each image size's pass as a CUDA graph and replay it "
                             "(the first frame of each size captures it)")


def estimator_from_args(args: argparse.Namespace, model: SelectiveStereo | None = None) -> StereoEstimator:
    """The estimator the model arguments describe (``model``: use this network instead of --checkpoint)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    options = dict(device=args.device, precision=args.precision, max_disp=args.max_disp, max_width=args.max_width,
                   engine=args.engine, compile=args.compile, graphs=args.graphs,
                   log=lambda line: print(f"sgru-stereo {args.command}: {line}", file=sys.stderr))
    if model is not None:
        return StereoEstimator(model, **options)
    return StereoEstimator.from_checkpoint(args.checkpoint, variant=args.variant, **options)


def _estimate(estimator: StereoEstimator, source: str | Path, left: np.ndarray, right: np.ndarray,
              **kwargs) -> StereoResult:
    """``estimator.estimate``, with running out of memory (CPU or CUDA) as one line naming the pair."""
    try:
        return estimator.estimate(left, right, **kwargs)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        raise CommandError(f"{source}: out of memory at {left.shape[1]}x{left.shape[0]} pixels; "
                           "try a smaller --max-width") from None


def _is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _pairs(left: str, right: str) -> list[tuple[Path, Path]]:
    if _is_pattern(left) != _is_pattern(right):
        raise CommandError("--left and --right must both be files or both be glob patterns")
    if not _is_pattern(left):
        for option, path in (("--left", left), ("--right", right)):
            if not Path(path).is_file():
                raise CommandError(f"{option} {path}: no such file")
        return [(Path(left), Path(right))]
    lefts, rights = sorted(glob.glob(left)), sorted(glob.glob(right))
    if not lefts:
        raise CommandError(f"no files match --left {left!r}")
    if len(lefts) != len(rights):
        raise CommandError(f"--left matches {len(lefts)} files but --right matches {len(rights)}")
    return [(Path(a), Path(b)) for a, b in zip(lefts, rights)]


def _check_folder(option: str, path: Path, folder: Path, create: bool = False) -> None:
    """``folder`` (with ``create``: its nearest existing ancestor) must be a writable folder."""
    existing = folder
    while create and not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{existing} is not a folder" if existing.exists() else f"folder {existing} does not exist"
        raise CommandError(f"{option} {path}: {problem}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: folder {existing} is not writable")


def _check_output_file(option: str, path: Path, formats: tuple[str, ...], kind: str) -> None:
    if path.is_dir():
        raise CommandError(f"{option} {path}: is a folder; give a {', '.join(formats)} file name")
    if path.suffix.lower() not in formats:
        raise CommandError(f"{option} {path}: unknown {kind} extension {path.suffix!r}; "
                           f"use {', '.join(formats)}")
    _check_folder(option, path, path.parent)


def _file_id(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _check_distinct(outputs: list[tuple[str, Path]], inputs: list[Path]) -> None:
    """No output may replace an input (same path, or a link to it) or another output of the run."""
    input_ids = {_file_id(path): path for path in inputs}
    written: dict[Path, str] = {}
    for option, path in outputs:
        resolved = path.resolve()
        if resolved in written:
            raise CommandError(f"{option} {path}: written twice in this run (also as {written[resolved]})")
        written[resolved] = option
        source = input_ids.get(_file_id(path)) if path.exists() else None
        if source is not None:
            raise CommandError(f"{option} {path}: is the input image {source}; choose another name")


@dataclasses.dataclass(frozen=True)
class InferJob:
    """One pair of ``infer`` and the files it writes (color, preview, confidence: None when not asked for)."""

    left: Path
    right: Path
    disparity: Path
    color: Path | None
    preview: Path | None
    confidence: Path | None

    def outputs(self) -> list[tuple[str, Path]]:
        return [(option, path) for option, path in (("--out", self.disparity), ("--color", self.color),
                                                    ("--preview", self.preview), ("--confidence", self.confidence))
                if path]


def _infer_jobs(args: argparse.Namespace) -> list[InferJob]:
    """One job per pair, every output checked."""
    pairs = _pairs(args.left, args.right)
    out = Path(args.out)
    extra = {"--color": Path(args.color) if args.color else None,
             "--preview": Path(args.preview) if args.preview else None,
             "--confidence": Path(args.confidence) if args.confidence else None}
    if _is_pattern(args.left):
        for option, folder in (("--out", out), *extra.items()):
            if folder:
                _check_folder(option, folder, folder, create=True)
        color, preview, confidence = extra.values()
        jobs = [InferJob(left, right, out / f"{left.stem}.{args.format}",
                         color / f"{left.stem}.png" if color else None,
                         preview / f"{left.stem}.png" if preview else None,
                         confidence / f"{left.stem}.npy" if confidence else None) for left, right in pairs]
    else:
        _check_output_file("--out", out, DISPARITY_FORMATS, "disparity")
        for option, path in extra.items():
            if path:
                _check_output_file(option, path, (".npy",) if option == "--confidence" else IMAGE_FORMATS,
                                   "confidence" if option == "--confidence" else "image")
        jobs = [InferJob(*pairs[0], out, *extra.values())]
    _check_distinct([output for job in jobs for output in job.outputs()],
                    [path for job in jobs for path in (job.left, job.right)])
    return jobs


def cmd_infer(args: argparse.Namespace) -> None:
    """Every pair in turn; with glob patterns a pair that fails is reported in one line and skipped,
    the rest go on, and a summary ends the run (exit status 1 if any pair failed)."""
    jobs = _infer_jobs(args)
    estimator = estimator_from_args(args)
    print(f"model: {estimator.variant} ({args.checkpoint or 'bundled'}), device {estimator.device}, "
          f"precision {estimator.precision}, {args.iters} iterations")
    for folder in {path.parent for job in jobs for _, path in job.outputs()}:
        folder.mkdir(parents=True, exist_ok=True)
    sequence = _is_pattern(args.left)
    progress = _Progress(sequence and not args.no_progress, "pair")
    failed: dict[str, int] = {}
    start = time.perf_counter()
    try:
        for done, job in enumerate(jobs, 1):
            try:
                _infer_one(estimator, job, args.iters, quiet=sequence and progress.enabled)
            except (CommandError, ValueError, OSError, cv2.error) as err:
                if not sequence:
                    raise
                kind = type(err).__name__
                failed[kind] = failed.get(kind, 0) + 1
                print(f"{job.left}: skipped ({_one_line(err)})", file=sys.stderr)
            progress(done, len(jobs))
    finally:
        progress.close()
    if sequence:
        elapsed = time.perf_counter() - start
        skipped = ", ".join(f"{n} {kind}" for kind, n in sorted(failed.items())) or "none"
        print(f"pairs: {len(jobs)}, written: {len(jobs) - sum(failed.values())}, skipped: {skipped}; "
              f"{elapsed:.1f} s ({len(jobs) / elapsed:.2f} pairs/s)")
        if failed:
            raise CommandError(f"{sum(failed.values())} of {len(jobs)} pairs failed (see above)")


def _infer_one(estimator: StereoEstimator, job: InferJob, iters: int, quiet: bool) -> None:
    left, right = read_image(job.left), read_image(job.right)
    earlier = earlier_iteration(iters) if job.confidence else None
    start = time.perf_counter()
    result = _estimate(estimator, job.left, left, right, iters=iters, output_iters=[earlier] if earlier else [])
    elapsed = time.perf_counter() - start
    write_disparity(job.disparity, result.disparity)
    if job.confidence:  # a .npy file: write_disparity writes any float32 map there
        write_disparity(job.confidence, confidence_map(left, right, result.disparity, result.intermediate.get(earlier)))
    if job.color or job.preview:
        color = colorize_disparity(result.disparity)
        if job.color:
            write_image(job.color, color)
        if job.preview:
            write_image(job.preview, side_by_side(left, color))
    if not quiet:
        print(f"{job.left} -> {job.disparity} ({left.shape[1]}x{left.shape[0]}, {elapsed:.2f} s)")


class _Progress:
    """A tqdm bar (count, rate, ETA) on stderr, opened at the first update so that an error before
    any work prints no empty bar; silent without tqdm or when disabled."""

    def __init__(self, enabled: bool, unit: str) -> None:
        self.unit, self.bar, self.tqdm = unit, None, None
        if enabled:
            try:
                from tqdm import tqdm
                self.tqdm = tqdm
            except ImportError:
                pass

    @property
    def enabled(self) -> bool:
        return self.tqdm is not None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None and self.enabled:
            self.bar = self.tqdm(total=total, unit=self.unit, dynamic_ncols=True, file=sys.stderr)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_bag(args: argparse.Namespace) -> None:
    from .ros.bag import BagOptions, StereoTopics, convert_bag, open_bag, parse_outputs

    image = "image_rect/compressed" if args.compressed else "image_rect"
    chosen = {"left_image": args.left_image, "right_image": args.right_image, "left_info": args.left_info,
              "right_info": args.right_info}
    topics = dataclasses.replace(StereoTopics.under(args.namespace, image),
                                 **{k: v for k, v in chosen.items() if v})
    if args.end is not None and args.end <= args.start:
        raise CommandError(f"--end {args.end} is not after --start {args.start}")
    options = BagOptions(
        iterations=args.iters, outputs=parse_outputs(args.outputs), output_namespace=args.output_namespace,
        tolerance_s=args.approximate_sync, every=args.every, start=args.start,
        end=math.inf if args.end is None else args.end, copy_inputs=args.copy_inputs, storage=args.storage,
        queue_size=args.queue_size,
        geometry=GeometryOptions(min_depth=args.min_depth, max_depth=args.max_depth,
                                 flying_pixel_threshold=args.flying_pixel_threshold or None,
                                 confidence_threshold=args.confidence_threshold),
        cloud=CloudLayout(color=not args.no_color, avoid_padding=False))
    if Path(args.output).exists():
        raise CommandError(f"{args.output}: exists; the output bag must be a new folder")
    open_bag(args.input, topics).close()  # a bag it cannot use is named before the model loads
    pipeline = StereoPipeline(estimator_from_args(args))
    print(f"model: {pipeline.estimator.variant} ({args.checkpoint or 'bundled'}), device "
          f"{pipeline.estimator.device}, precision {pipeline.estimator.precision}, {args.iters} iterations; "
          f"inputs {', '.join(topics)}; {'approximate' if args.approximate_sync else 'exact'} sync")
    progress = _Progress(not args.no_progress, "frame")
    try:
        summary = convert_bag(args.input, args.output, pipeline, topics, options, progress)
    finally:
        progress.close()
    print("\n".join(summary.lines()))
    print(f"wrote {args.output}")


def _eval_pair(args: argparse.Namespace):
    from .io import read_disparity

    if args.motorcycle:
        from .calibration import motorcycle_pair

        return ("Middlebury 2014 Motorcycle (scikit-image, quarter size)", *motorcycle_pair())
    if not (args.left and args.right and args.gt):
        raise CommandError("give --left, --right and --gt, or --motorcycle")
    return Path(args.left).name, read_image(args.left), read_image(args.right), read_disparity(args.gt)


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluation import SGBMConfig, disparity_metrics, fill_from_left, region_bad2, region_masks, sgbm_disparity

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
    result = _estimate(estimator, name, left, right, iters=iters[-1], output_iters=outputs)
    net_time = time.perf_counter() - start
    start = time.perf_counter()
    sgbm = sgbm_disparity(left, right, SGBMConfig(num_disparities=args.sgbm_num_disparities))
    sgbm_time = time.perf_counter() - start
    weights = args.checkpoint or "bundled"
    maps = [(f"sgru {estimator.variant} ({weights})", k, result.intermediate.get(k, result.disparity))
            for k in iters]
    if args.warm_start_sgbm:
        warm = _estimate(estimator, name, left, right, iters=iters[-1], output_iters=iters[:-1],
                         disp_init=fill_from_left(sgbm))
        maps += [(f"sgru {estimator.variant} from SGBM ({weights})", k, warm.intermediate.get(k, warm.disparity))
                 for k in iters]
    maps.append(("OpenCV SGBM, holes filled", None, fill_from_left(sgbm)))
    maps.append(("OpenCV SGBM, own pixels only", None, sgbm))
    rows = [(label, k, disparity_metrics(disparity, gt)) for label, k, disparity in maps]
    print(f"pair: {name}, {left.shape[1]}x{left.shape[0]}, {int(np.isfinite(gt).sum())} ground-truth pixels, "
          f"disparity {np.nanmin(gt):.1f}..{np.nanmax(gt):.1f}")
    print(f"network: {estimator.device}, {estimator.precision}, one pass of {iters[-1]} iterations in "
          f"{net_time:.2f} s; SGBM (num_disparities {args.sgbm_num_disparities}, block 3) in {sgbm_time:.2f} s")
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


def cmd_train(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from .training.train import TrainConfig, Trainer

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    for name in ("crop", "photo_dirs", "val_multiples"):
        if name in values:
            values[name] = tuple(values[name])
    trainer = Trainer(TrainConfig(**values), Path(args.out))
    if args.resume and trainer.resume():
        print(f"resumed {args.out} at step {trainer.step}")
    elif (Path(args.out) / "train_state.pt").exists() and not args.resume:
        raise CommandError(f"{args.out} already holds a run; pass --resume or choose another --out")
    else:
        trainer.initialise()
    print(f"training {trainer.config.preset} on {trainer.device} for {trainer.config.steps} steps -> {args.out}")
    metrics = trainer.run(progress=not args.no_progress, time_budget=args.time_budget)
    state = "stopped for the time budget" if trainer.stopped_early else "done"
    print(f"{state}: step {trainer.step} of {trainer.config.steps}, {trainer.elapsed / 60:.1f} min in total, " +
          ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()) +
          f"; weights: {Path(args.out) / 'model.pth'}, best so far: {Path(args.out) / 'best.pth'} "
          f"(bad-2 {trainer.score(trainer.best) if trainer.best else float('nan'):.2f}% at step "
          f"{trainer.best.get('step', '-')})")


def cmd_demo(args: argparse.Namespace) -> None:
    from .ros.demo import run_demo

    _check_folder("--out", Path(args.out), Path(args.out), create=True)
    status = run_demo(Path(args.out), frames=args.frames, iterations=args.iters, checkpoint=args.checkpoint,
                      device=args.device, rate=args.rate, timeout_s=args.timeout)
    if status:
        raise CommandError("the demo did not complete")


def _bench_model(args: argparse.Namespace) -> tuple[SelectiveStereo | None, str]:
    """--random-weights: the released architecture of --variant, seeded; else None (--checkpoint)."""
    if not args.random_weights:
        return None, Path(args.checkpoint).name if args.checkpoint else "bundled"
    from .model import IGEVConfig, RaftConfig, build_model

    if args.variant is None or args.checkpoint:
        raise CommandError("--random-weights needs --variant raft|igev and no --checkpoint")
    torch.manual_seed(0)
    model = build_model(IGEVConfig() if args.variant == "igev" else RaftConfig())
    return model, f"selective-{args.variant} (random weights)"


def cmd_bench(args: argparse.Namespace) -> None:
    import json

    from .bench import BenchConfig, format_result, run_bench

    model, name = _bench_model(args)
    estimator = estimator_from_args(args, model)
    results = []
    for height, width in args.size or [(256, 384)]:
        for iters in args.iters:
            config = BenchConfig(height=height, width=width, iters=iters, repeats=args.repeats, warmup=args.warmup,
                                 profiled=args.profiled)
            results.append(run_bench(estimator, config, model_name=name))
            print(format_result(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=1) + "\n")
        print(f"wrote {args.json}")


def cmd_export(args: argparse.Namespace) -> None:
    from .onnx_engine import FixedPass, export_onnx

    for flag in ("compile", "graphs"):
        if getattr(args, flag):
            raise CommandError(f"export takes no --{flag}: the ONNX graph is traced from the eager network")
    estimator = estimator_from_args(args)
    model = estimator.model.cpu()
    extra = sorted(set(args.output_iters))
    if extra and (extra[0] < 1 or extra[-1] >= args.iters):
        raise CommandError(f"--output-iters must lie in 1..{args.iters - 1}")
    start = time.perf_counter()
    names = export_onnx(model, args.onnx, args.height, args.width, args.iters, extra, args.max_disp)
    print(f"wrote {args.onnx} ({Path(args.onnx).stat().st_size / 2**20:.1f} MB, outputs {', '.join(names)}) "
          f"in {time.perf_counter() - start:.0f} s")
    if args.no_check:
        return
    import onnxruntime as ort

    from .bench import bench_pair
    from .inference import to_image_tensor

    left, right = (to_image_tensor(image) for image in bench_pair(args.height, args.width))
    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    got = session.run(names, {"left": left.numpy(), "right": right.numpy()})
    with torch.inference_mode():
        expected = FixedPass(model, args.iters, extra, args.max_disp)(left, right)
    for name, ours, theirs in zip(names, got, expected):
        diff = np.abs(ours - theirs.numpy())
        print(f"onnxruntime (CPU) vs PyTorch on the Motorcycle pair at {args.width}x{args.height}, {name}: "
              f"max |difference| {diff.max():.2e} px, mean {diff.mean():.2e} px")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sgru-stereo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    infer = sub.add_parser("infer", help="disparity for an image pair or a sequence of pairs")
    add_model_arguments(infer)
    infer.add_argument("--left", required=True, help="left image, or a glob pattern of left images")
    infer.add_argument("--right", required=True, help="right image, or a glob pattern (sorted like --left)")
    infer.add_argument("--out", required=True,
                       help="output .npy/.pfm/.png (16-bit, disparity x 256); a folder for glob patterns")
    infer.add_argument("--format", default="png", choices=[f.lstrip(".") for f in DISPARITY_FORMATS],
                       help="file format inside the --out folder for glob patterns (default png)")
    infer.add_argument("--iters", type=_iterations, default=32,
                       help=f"GRU iterations, 1..{MAX_ITERATIONS} (default 32, as the authors)")
    infer.add_argument("--color", help="also write a colorized disparity PNG (a folder for glob patterns)")
    infer.add_argument("--preview", help="also write left image | colorized disparity side by side, PNG "
                                         "(a folder for glob patterns)")
    infer.add_argument("--confidence", help="also write the per-pixel confidence in [0, 1] as float32 .npy "
                                            "(a folder for glob patterns; see docs/confidence.md)")
    infer.add_argument("--no-progress", action="store_true", help="no progress bar for glob patterns")
    infer.set_defaults(func=cmd_infer)

    bench = sub.add_parser("bench", help="per-stage milliseconds, frames per second and peak memory of the network")
    add_model_arguments(bench)
    bench.add_argument("--random-weights", action="store_true",
                       help="time the released architecture of --variant with random weights (no checkpoint)")
    bench.add_argument("--size", type=_int_type(32, multiple=32), nargs=2, action="append", metavar=("H", "W"),
                       help="input size, multiples of 32 (repeatable; default 256 384)")
    bench.add_argument("--iters", type=_iterations, nargs="+", default=[8], help="GRU iterations (default 8)")
    bench.add_argument("--repeats", type=_int_type(1), default=3, help="timed passes per configuration (default 3)")
    bench.add_argument("--warmup", type=_int_type(0), default=1, help="untimed passes first (default 1)")
    bench.add_argument("--profiled", type=_int_type(1), default=3,
                       help="passes under the profiler for the stage (and on CUDA kernel) figures (default 3)")
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.set_defaults(func=cmd_bench)

    export = sub.add_parser("export", help="write the network as ONNX for one input size and iteration count, "
                                           "checked against PyTorch with onnxruntime")
    add_model_arguments(export)
    export.add_argument("--onnx", required=True, help="output .onnx file")
    export.add_argument("--height", type=_int_type(32, multiple=32), required=True, help="input height (multiple of 32)")
    export.add_argument("--width", type=_int_type(32, multiple=32), required=True, help="input width (multiple of 32)")
    export.add_argument("--iters", type=_iterations, default=8, help="GRU iterations, fixed in the graph (default 8)")
    export.add_argument("--output-iters", type=_iterations, nargs="+", default=[],
                        help="also output the disparity after these iteration counts (< --iters)")
    export.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    export.set_defaults(func=cmd_export)

    evaluate = sub.add_parser("eval", help="errors against ground truth, side by side with OpenCV SGBM")
    add_model_arguments(evaluate)
    evaluate.add_argument("--motorcycle", action="store_true",
                          help="use scikit-image's Middlebury 2014 Motorcycle pair (741x500) and its ground truth")
    evaluate.add_argument("--left", help="left image")
    evaluate.add_argument("--right", help="right image")
    evaluate.add_argument("--gt", help="ground truth: Middlebury .pfm, KITTI 16-bit .png, .npy or .npz")
    evaluate.add_argument("--iters", type=_iterations, nargs="+", default=[8, 16, 32],
                          help=f"iteration counts in 1..{MAX_ITERATIONS}, all from one pass (default 8 16 32)")
    evaluate.add_argument("--sgbm-num-disparities", type=_int_type(16, multiple=16), default=64,
                          help="SGBM search range, multiple of 16 (default 64)")
    evaluate.add_argument("--sparsification", action="store_true",
                          help="also print bad-2 of the most confident 100/90/75/50 %% of pixels next to the oracle "
                               "(how informative the confidence output is)")
    evaluate.add_argument("--regions", action="store_true",
                          help="also bad-2 by region: depth edges, occluded, slanted, textured and weak texture")
    evaluate.add_argument("--warm-start-sgbm", action="store_true",
                          help="also run the network started from SGBM's map (holes filled): a classical prior")
    evaluate.set_defaults(func=cmd_eval)

    bag = sub.add_parser("bag", help="run a rosbag2 recording (MCAP or sqlite3) through the network into a new bag")
    bag.add_argument("input", help="rosbag2 folder to read")
    bag.add_argument("output", help="rosbag2 folder to write (must not exist)")
    add_model_arguments(bag)
    bag.add_argument("--iters", type=_iterations, default=8, help=f"GRU iterations, 1..{MAX_ITERATIONS} (default 8)")
    bag.add_argument("--namespace", default="",
                     help="input namespace: NS/left/image_rect, NS/right/image_rect, NS/{left,right}/camera_info")
    bag.add_argument("--compressed", action="store_true",
                     help="read NS/{left,right}/image_rect/compressed (sensor_msgs/CompressedImage)")
    for side in ("left", "right"):
        bag.add_argument(f"--{side}-image", help=f"{side} image topic (overrides --namespace)")
        bag.add_argument(f"--{side}-info", help=f"{side} camera_info topic (overrides --namespace)")
    bag.add_argument("--output-namespace", default="/sgru", help="namespace of the written topics (default /sgru)")
    bag.add_argument("--outputs", nargs="+", default=list(DEFAULT_OUTPUTS),
                     help=f"any of {', '.join(OUTPUTS)} (default {' '.join(DEFAULT_OUTPUTS)})")
    bag.add_argument("--approximate-sync", type=_positive_float, metavar="SECONDS",
                     help="match inputs by nearest stamp within this tolerance (default: identical stamps)")
    bag.add_argument("--every", type=_int_type(1), default=1, help="process every Nth set (default 1: all)")
    bag.add_argument("--start", type=float, default=0.0, help="seconds from the bag's start to begin at")
    bag.add_argument("--end", type=float, help="seconds from the bag's start to stop at (default: the end)")
    bag.add_argument("--copy-inputs", action="store_true", help="also copy the input topics into the output bag")
    bag.add_argument("--queue-size", type=_int_type(1), default=30,
                     help="messages kept per input while waiting for their partners (default 30)")
    bag.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="output format (default mcap)")
    defaults = GeometryOptions()
    bag.add_argument("--min-depth", type=float, default=defaults.min_depth,
                     help=f"points nearer than this (m) are left out (default {defaults.min_depth:g})")
    bag.add_argument("--max-depth", type=float, default=defaults.max_depth,
                     help=f"points farther than this (m) are left out (default {defaults.max_depth:g})")
    bag.add_argument("--flying-pixel-threshold", type=float, default=defaults.flying_pixel_threshold,
                     help="disparity range (px) in a 3x3 window that marks a flying pixel; 0 keeps them "
                          f"(default {defaults.flying_pixel_threshold:g})")
    bag.add_argument("--confidence-threshold", type=_fraction, default=defaults.confidence_threshold,
                     help="disparities with a lower confidence (0..1) are invalid in every output (default 0: off)")
    bag.add_argument("--no-color", action="store_true", help="points2 without the rgb field")
    bag.add_argument("--no-progress", action="store_true", help="no progress bar")
    bag.set_defaults(func=cmd_bag)

    demo = sub.add_parser("demo", help="sample source + stereo node over real rclpy; writes PNG, PFM and PLY")
    demo.add_argument("--out", default="sgru_demo", help="output folder (default sgru_demo)")
    demo.add_argument("--frames", type=_int_type(1), default=3, help="frames to wait for (default 3)")
    demo.add_argument("--iters", type=_iterations, default=8, help=f"GRU iterations, 1..{MAX_ITERATIONS} (default 8)")
    demo.add_argument("--checkpoint", help="checkpoint file (default: bundled weights)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    demo.add_argument("--rate", type=_positive_float, default=1.0, help="sample source frame rate (default 1 Hz)")
    demo.add_argument("--timeout", type=_positive_float, default=300.0, help="give up after this many seconds")
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("run", help="the stereo node (ROS arguments follow: sgru-stereo run --ros-args -p iterations:=8)")
    sub.add_parser("run-lifecycle", help="the managed (lifecycle) stereo node: configure, activate, deactivate, "
                                         "cleanup through a lifecycle manager or `ros2 lifecycle set`")
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
    train.add_argument("--warm-start", dest="warm_start", type=float,
                       help="fraction of batches started from a noisy prior (default 0.25)")
    train.add_argument("--valid-iters", dest="valid_iters", type=int,
                       help="iterations at validation, the deployed count (default 8; twice as many also reported)")
    train.add_argument("--train-iters-max", dest="train_iters_max", type=int,
                       help="draw each step's GRU iterations from --train-iters..this (default 0: fixed)")
    train.add_argument("--val-multiples", dest="val_multiples", type=int, nargs="+",
                       help="validate at --valid-iters times each of these (default 1 2)")
    train.add_argument("--best-over-multiples", dest="best_over_multiples", action="store_true", default=None,
                       help="keep best.pth by the worst bad-2 over --val-multiples (default: bad-2 at --valid-iters)")
    train.add_argument("--first-sample", dest="first_sample", type=int,
                       help="index of the first training scene (default 0); a later stage started with --init "
                            "from an earlier run begins past the scenes that run saw")
    train.add_argument("--photo-dir", dest="photo_dirs", action="append",
                       help="extra folder of texture photographs (repeatable; default: Debian's mate-backgrounds "
                            "nature photos when installed)")
    train.add_argument("--time-budget", dest="time_budget", type=_duration,
                       help="stop cleanly (state saved) before this much time has passed: seconds, or 90m, 2h")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
    return parser


def _one_line(err: Exception) -> str:
    """The error as one line, starting with the file it concerns where it names one."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = " ".join(str(err).split())  # cv2.error and some NumPy errors span lines
    if isinstance(err, MemoryError):
        return f"out of memory ({text})" if text else "out of memory"
    return text or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("run", "run-lifecycle", "source"):  # ROS nodes: the rest is for rclpy (--ros-args ...)
        if argv[0] == "run":
            from .ros.node import main as node_main
            return node_main(["sgru-stereo", *argv[1:]])
        if argv[0] == "run-lifecycle":
            from .ros.node import lifecycle_main
            return lifecycle_main(["sgru-stereo", *argv[1:]])
        from .ros.sample_source import main as source_main
        return source_main(["sgru-stereo", *argv[1:]])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CommandError, CheckpointError, ValueError, OSError, MemoryError, cv2.error) as err:
        print(f"sgru-stereo {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
