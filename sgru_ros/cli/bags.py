"""``sgru-stereo bags``: many rosbag2 recordings through the network, here or across a Ray cluster."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from ..pipeline import StereoPipeline
from .bag import add_bag_arguments, bag_settings, describe
from .common import CommandError, Progress, check_folder, estimator_from_args, int_type


def add_parser(sub) -> None:
    bags = sub.add_parser("bags", help="run many rosbag2 recordings through the network (Ray: across a cluster)",
                          description="Each IN_BAG becomes OUT_DIR/<its folder name>, written whole or not at all; "
                                      "outputs that exist are skipped, so a re-run does only what is missing.")
    bags.add_argument("out_dir", metavar="OUT_DIR", help="folder of the output bags (created if missing)")
    bags.add_argument("inputs", metavar="IN_BAG", nargs="+", help="rosbag2 folders to read")
    add_bag_arguments(bags)
    bags.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                      help="spread the bags over Ray actors, each loading the model once: no ADDRESS starts a "
                           "local Ray instance for the run; auto or HOST:PORT joins a cluster (pip install "
                           "'sgru_ros[fleet]')")
    bags.add_argument("--workers", type=int_type(1), default=2, help="Ray actors (default 2)")
    bags.add_argument("--gpus-per-worker", type=float, default=0.0,
                      help="GPUs each Ray actor takes (e.g. 1 with --device cuda; default 0)")
    bags.add_argument("--retries", type=int_type(0), default=2,
                      help="times a bag whose Ray worker died is given to another (default 2)")
    bags.set_defaults(func=run)


def _pipeline(args: argparse.Namespace) -> StereoPipeline:
    """The model of ``args`` (in this process, or in a Ray actor)."""
    return StereoPipeline(estimator_from_args(args))


def run(args: argparse.Namespace) -> None:
    from ..ros.fleet import plan_jobs, run_here, run_on_ray

    topics, options = bag_settings(args)
    out_dir = Path(args.out_dir)
    check_folder("OUT_DIR", out_dir, out_dir, create=True)
    if args.gpus_per_worker < 0:
        raise CommandError(f"--gpus-per-worker {args.gpus_per_worker}: must be >= 0")
    if args.ray:
        import ray  # noqa: F401 -- a missing extra is named before anything starts
    jobs = plan_jobs(out_dir, args.inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    make_pipeline = functools.partial(_pipeline, args)
    progress = Progress(not args.no_progress, "set")
    try:
        if args.ray:
            print(f"{len(jobs)} bags on Ray ({'a local instance' if args.ray == 'local' else args.ray}), "
                  f"{args.workers} workers; inputs {', '.join(topics)}")
            summary = run_on_ray(jobs, make_pipeline, topics, options, None if args.ray == "local" else args.ray,
                                 args.workers, args.gpus_per_worker, args.retries, progress, log=print)
        else:
            summary = run_here(jobs, _loaded(make_pipeline, args, topics), topics, options, progress, log=print)
    finally:
        progress.close()
    print("\n".join(summary.lines()))
    if summary.failed:
        raise CommandError(f"{len(summary.failed)} of {len(jobs)} bags failed (see above)")


def _loaded(make_pipeline, args: argparse.Namespace, topics):
    """``make_pipeline`` that also prints the model line once it has loaded."""
    def load() -> StereoPipeline:
        pipeline = make_pipeline()
        print(describe(args, pipeline, topics))
        return pipeline
    return load
