"""``sgru-stereo infer``: disparity for an image pair or a sequence of pairs (glob patterns).

Outputs are checked (extension, folder, not an input, no file written twice) before the model loads;
every file is written whole or not at all."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import sys
import time
from pathlib import Path

import cv2

from ..confidence import confidence_map, earlier_iteration
from ..inference import MAX_ITERATIONS, StereoEstimator
from ..io import DISPARITY_FORMATS, IMAGE_FORMATS, read_image, write_disparity, write_image
from ..visualize import colorize_disparity, side_by_side
from .common import (CommandError, Progress, add_init_arguments, add_model_arguments, check_folder, check_init,
                     estimate, estimator_from_args, initial_disparity, iterations, one_line)


def add_parser(sub) -> None:
    infer = sub.add_parser("infer", help="disparity for an image pair or a sequence of pairs")
    add_model_arguments(infer)
    add_init_arguments(infer)
    infer.add_argument("--left", required=True, help="left image, or a glob pattern of left images")
    infer.add_argument("--right", required=True, help="right image, or a glob pattern (sorted like --left)")
    infer.add_argument("--out", required=True,
                       help="output .npy/.pfm/.png (16-bit, disparity x 256); a folder for glob patterns")
    infer.add_argument("--format", default="png", choices=[f.lstrip(".") for f in DISPARITY_FORMATS],
                       help="file format inside the --out folder for glob patterns (default png)")
    infer.add_argument("--iters", type=iterations, default=32,
                       help=f"GRU iterations, 1..{MAX_ITERATIONS} (default 32, as the authors)")
    infer.add_argument("--color", help="also write a colorized disparity PNG (a folder for glob patterns)")
    infer.add_argument("--preview", help="also write left image | colorized disparity side by side, PNG "
                                         "(a folder for glob patterns)")
    infer.add_argument("--confidence", help="also write the per-pixel confidence in [0, 1] as float32 .npy "
                                            "(a folder for glob patterns; see docs/confidence.md)")
    infer.add_argument("--no-progress", action="store_true", help="no progress bar for glob patterns")
    infer.set_defaults(func=run)


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


def _check_output_file(option: str, path: Path, formats: tuple[str, ...], kind: str) -> None:
    if path.is_dir():
        raise CommandError(f"{option} {path}: is a folder; give a {', '.join(formats)} file name")
    if path.suffix.lower() not in formats:
        raise CommandError(f"{option} {path}: unknown {kind} extension {path.suffix!r}; "
                           f"use {', '.join(formats)}")
    check_folder(option, path, path.parent)


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
                check_folder(option, folder, folder, create=True)
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


def run(args: argparse.Namespace) -> None:
    """Every pair in turn; with glob patterns a pair that fails is reported in one line and skipped,
    the rest go on, and a summary ends the run (exit status 1 if any pair failed)."""
    check_init(args)
    jobs = _infer_jobs(args)
    estimator = estimator_from_args(args)
    print(f"model: {estimator.variant} ({args.checkpoint or 'bundled'}), device {estimator.device}, "
          f"precision {estimator.precision}, {args.iters} iterations"
          f"{', started from SGBM' if args.init == 'sgbm' else ''}")
    for folder in {path.parent for job in jobs for _, path in job.outputs()}:
        folder.mkdir(parents=True, exist_ok=True)
    sequence = _is_pattern(args.left)
    progress = Progress(sequence and not args.no_progress, "pair")
    failed: dict[str, int] = {}
    start = time.perf_counter()
    try:
        for done, job in enumerate(jobs, 1):
            try:
                _infer_one(estimator, job, args, quiet=sequence and progress.enabled)
            except (CommandError, ValueError, OSError, cv2.error) as err:
                if not sequence:
                    raise
                kind = type(err).__name__
                failed[kind] = failed.get(kind, 0) + 1
                print(f"{job.left}: skipped ({one_line(err)})", file=sys.stderr)
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


def _infer_one(estimator: StereoEstimator, job: InferJob, args: argparse.Namespace, quiet: bool) -> None:
    left, right = read_image(job.left), read_image(job.right)
    iters = args.iters
    earlier = earlier_iteration(iters) if job.confidence else None
    start = time.perf_counter()
    result = estimate(estimator, job.left, left, right, iters=iters, output_iters=[earlier] if earlier else [],
                      disp_init=initial_disparity(args, left, right))
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
