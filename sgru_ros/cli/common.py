"""What the subcommands share: one-line errors, checked option types, the model options, progress."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from ..device import PRECISIONS, is_out_of_memory
from ..inference import ENGINES, MAX_ITERATIONS, StereoEstimator, StereoResult
from ..model import SIZE_MULTIPLE
from ..model.base import SelectiveStereo
from ..model.checkpoint import VARIANTS
from ..options import OPTION_HELP


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line with exit status 1, like every other failure."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {message}\n")


def int_type(low: int, high: int | None = None, multiple: int = 1) -> Callable[[str], int]:
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


def float_type(accept: Callable[[float], bool], allowed: str) -> Callable[[str], float]:
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


positive_float = float_type(lambda v: v > 0, "a finite number > 0")
fraction = float_type(lambda v: 0.0 <= v <= 1.0, "a number in 0..1")


def duration(text: str) -> float:
    """Seconds, or a number with s, m or h: '7200', '90m', '2h'."""
    units = {"s": 1, "m": 60, "h": 3600}
    scale = units.get(text[-1:].lower(), 1)
    try:
        return positive_float(text[:-1] if text[-1:].lower() in units else text) * scale
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration > 0 (seconds, or like 90m, 2h)") from None


iterations = int_type(1, MAX_ITERATIONS)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options, with the help texts the node's parameters of the same name share (``OPTION_HELP``)."""
    parser.add_argument("--checkpoint", help=OPTION_HELP["model"])
    parser.add_argument("--variant", choices=VARIANTS, default=None,
                        help="insist on raft or igev (default: detected from the checkpoint)")
    parser.add_argument("--max-disp", type=int_type(32, multiple=32), default=192,
                        help=OPTION_HELP["max_disp"] + " (default 192)")
    parser.add_argument("--device", default="auto", help=OPTION_HELP["device"] + " (default auto)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help=OPTION_HELP["precision"]
                        + " (default fp32)")
    parser.add_argument("--max-width", type=int_type(SIZE_MULTIPLE), default=None,
                        help=OPTION_HELP["max_width"] + f", >= {SIZE_MULTIPLE}")
    parser.add_argument("--threads", type=int_type(1), default=None,
                        help=OPTION_HELP["threads"] + f" (default: PyTorch's, here {torch.get_num_threads()})")
    parser.add_argument("--engine", choices=ENGINES, default="torch", help=OPTION_HELP["engine"] + " (default torch)")
    parser.add_argument("--compile", action="store_true", help=OPTION_HELP["compile"])
    parser.add_argument("--graphs", action="store_true", help=OPTION_HELP["graphs"])


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    """--init and --sgbm-disparities (``pipeline.INITS``), as the node's parameters of the same name."""
    from ..pipeline import INITS

    parser.add_argument("--init", choices=INITS, default="none", help=OPTION_HELP["init"] + " (default none)")
    parser.add_argument("--sgbm-disparities", type=int_type(16, multiple=16), default=64,
                        help=OPTION_HELP["sgbm_disparities"] + " (default 64)")


def check_init(args: argparse.Namespace) -> None:
    """--init other than none needs the torch engine (onnxruntime runs fixed iterations from its own start)."""
    if args.init != "none" and args.engine != "torch":
        raise CommandError(f"--init {args.init} needs --engine torch (onnxruntime starts from the network's own "
                           "estimate)")


def initial_disparity(args: argparse.Namespace, left: np.ndarray, right: np.ndarray) -> np.ndarray | None:
    """The disparity --init starts from (None: the network's own)."""
    from ..evaluation import SGBMConfig, sgbm_prior

    return sgbm_prior(left, right, SGBMConfig(args.sgbm_disparities)) if args.init == "sgbm" else None


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


def estimate(estimator: StereoEstimator, source: str | Path, left: np.ndarray, right: np.ndarray,
              **kwargs) -> StereoResult:
    """``estimator.estimate``, with running out of memory (CPU or CUDA) as one line naming the pair."""
    try:
        return estimator.estimate(left, right, **kwargs)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        raise CommandError(f"{source}: out of memory at {left.shape[1]}x{left.shape[0]} pixels; "
                           "try a smaller --max-width") from None


def check_folder(option: str, path: Path, folder: Path, create: bool = False) -> None:
    """``folder`` (with ``create``: its nearest existing ancestor) must be a writable folder."""
    existing = folder
    while create and not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{existing} is not a folder" if existing.exists() else f"folder {existing} does not exist"
        raise CommandError(f"{option} {path}: {problem}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: folder {existing} is not writable")


class Progress:
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


def one_line(err: Exception) -> str:
    """The error as one line, starting with the file it concerns where it names one."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = " ".join(str(err).split())  # cv2.error and some NumPy errors span lines
    if isinstance(err, MemoryError):
        return f"out of memory ({text})" if text else "out of memory"
    return text or type(err).__name__
