"""``sgru-stereo bag``: a rosbag2 recording (MCAP or sqlite3) through the network into a new bag."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sqlite3
from pathlib import Path

from ..geometry import CloudLayout
from ..inference import MAX_ITERATIONS
from ..pipeline import GeometryOptions, StereoPipeline
from ..ros.bag import DEFAULT_OUTPUTS, OUTPUTS
from .common import (CommandError, Progress, add_init_arguments, add_model_arguments, check_folder, check_init,
                     estimator_from_args, fraction, int_type, iterations, one_line, positive_float)


def add_parser(sub) -> None:
    bag = sub.add_parser("bag", help="run a rosbag2 recording (MCAP or sqlite3) through the network into a new bag")
    bag.add_argument("input", help="rosbag2 folder to read")
    bag.add_argument("output", help="rosbag2 folder to write (must not exist)")
    add_bag_arguments(bag)
    bag.set_defaults(func=run)


def add_bag_arguments(bag: argparse.ArgumentParser) -> None:
    """The options of a conversion (model, topics, outputs, sync, window, geometry), shared with ``bags``."""
    add_model_arguments(bag)
    add_init_arguments(bag)
    bag.add_argument("--iters", type=iterations, default=8, help=f"GRU iterations, 1..{MAX_ITERATIONS} (default 8)")
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
    bag.add_argument("--approximate-sync", type=positive_float, metavar="SECONDS",
                     help="match inputs by nearest stamp within this tolerance (default: identical stamps)")
    bag.add_argument("--every", type=int_type(1), default=1, help="process every Nth set (default 1: all)")
    bag.add_argument("--start", type=float, default=0.0, help="seconds from the bag's start to begin at")
    bag.add_argument("--end", type=float, help="seconds from the bag's start to stop at (default: the end)")
    bag.add_argument("--copy-inputs", action="store_true", help="also copy the input topics into the output bag")
    bag.add_argument("--queue-size", type=int_type(1), default=30,
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
    bag.add_argument("--confidence-threshold", type=fraction, default=defaults.confidence_threshold,
                     help="disparities with a lower confidence (0..1) are invalid in every output (default 0: off)")
    bag.add_argument("--no-color", action="store_true", help="points2 without the rgb field")
    bag.add_argument("--no-progress", action="store_true", help="no progress bar")


def bag_settings(args: argparse.Namespace):
    """(StereoTopics, BagOptions) of the options ``add_bag_arguments`` added."""
    from ..ros.bag import BagOptions, StereoTopics, parse_outputs

    image = "image_rect/compressed" if args.compressed else "image_rect"
    chosen = {"left_image": args.left_image, "right_image": args.right_image, "left_info": args.left_info,
              "right_info": args.right_info}
    topics = dataclasses.replace(StereoTopics.under(args.namespace, image),
                                 **{k: v for k, v in chosen.items() if v})
    check_init(args)
    if args.end is not None and args.end <= args.start:
        raise CommandError(f"--end {args.end} is not after --start {args.start}")
    options = BagOptions(
        iterations=args.iters, outputs=parse_outputs(args.outputs), output_namespace=args.output_namespace,
        tolerance_s=args.approximate_sync, every=args.every, start=args.start,
        end=math.inf if args.end is None else args.end, copy_inputs=args.copy_inputs, storage=args.storage,
        queue_size=args.queue_size, init=args.init, sgbm_disparities=args.sgbm_disparities,
        geometry=GeometryOptions(min_depth=args.min_depth, max_depth=args.max_depth,
                                 flying_pixel_threshold=args.flying_pixel_threshold or None,
                                 confidence_threshold=args.confidence_threshold),
        cloud=CloudLayout(color=not args.no_color, avoid_padding=False))
    return topics, options


def describe(args: argparse.Namespace, pipeline: StereoPipeline, topics) -> str:
    """The run's one line: model, device, precision, iterations, inputs, sync."""
    return (f"model: {pipeline.estimator.variant} ({args.checkpoint or 'bundled'}), device "
            f"{pipeline.estimator.device}, precision {pipeline.estimator.precision}, {args.iters} iterations; "
            f"inputs {', '.join(topics)}; {'approximate' if args.approximate_sync else 'exact'} sync")


def run(args: argparse.Namespace) -> None:
    from ..ros.bag import convert_bag, open_bag

    topics, options = bag_settings(args)
    if Path(args.output).exists():
        raise CommandError(f"{args.output}: exists; the output bag must be a new folder")
    check_folder("output", Path(args.output), Path(args.output).parent)
    open_bag(args.input, topics).close()  # a bag it cannot use is named before the model loads
    pipeline = StereoPipeline(estimator_from_args(args))
    print(describe(args, pipeline, topics))
    progress = Progress(not args.no_progress, "frame")
    try:
        summary = convert_bag(args.input, args.output, pipeline, topics, options, progress)
    except (OSError, sqlite3.Error) as err:  # a full disk, a folder gone: the half-written bag is removed
        raise CommandError(f"{args.output}: writing the bag failed: {one_line(err)}") from None
    finally:
        progress.close()
    print("\n".join(summary.lines()))
    print(f"wrote {args.output}")
