"""sgru-stereo: learned stereo depth from the command line (infer, bench, export, eval, bag, bags, demo, train,
and the ROS nodes run, run-lifecycle, source).

Exit status 0 on success, 130 on Ctrl-C and 1 on any error, bad option values
included (not argparse's 2): the error is one line on stderr,
``sgru-stereo CMD: error: ...``, naming the option or file it concerns.
``infer`` checks its outputs (extension, folder, not an input, no file written
twice) before the model loads; every file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys

import cv2

from ..model import CheckpointError
from . import bag, bags, bench, demo, evaluate, export, infer, train
from .common import CommandError, Parser, one_line

# One module per subcommand, each with add_parser(sub) and run(args).

#: The subcommands in the order ``--help`` lists them.
COMMANDS = (infer, bench, export, evaluate, bag, bags, demo, train)
#: Optional modules -> the extra that installs them (a command that needs one names it in one line).
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "rosbags": "bag", "tqdm": "train",
          "matplotlib": "train", "rclpy": "ros", "sensor_msgs": "ros", "stereo_msgs": "ros", "ray": "fleet"}
#: The ROS nodes: everything after the name is for rclpy (``sgru-stereo run --ros-args -p iterations:=8``).
NODES = {"run": "the stereo node (ROS arguments follow: sgru-stereo run --ros-args -p iterations:=8)",
         "run-lifecycle": "the managed (lifecycle) stereo node: configure, activate, deactivate, cleanup through "
                          "a lifecycle manager or `ros2 lifecycle set`",
         "source": "the sample stereo source node (sgru-stereo source --ros-args -p source:=folder ...)"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sgru-stereo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    for name, text in NODES.items():
        sub.add_parser(name, help=text)
    return parser


def run_node(name: str, ros_args: list[str]) -> int:
    """One of ``NODES`` in this process, until SIGINT/SIGTERM."""
    if name == "source":
        from ..ros.sample_source import main as node_main
    elif name == "run-lifecycle":
        from ..ros.node import lifecycle_main as node_main
    else:
        from ..ros.node import main as node_main
    return node_main(["sgru-stereo", *ros_args])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in NODES:
        return run_node(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    # SIGTERM (a service manager, `timeout`, `kill`) ends a command as Ctrl-C does: what it was writing is
    # removed or left whole (a bag cut short is deleted, image files are written whole or not at all).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        args.func(args)
    except ModuleNotFoundError as err:
        top = (err.name or "").partition(".")[0]
        if top not in EXTRAS:
            raise
        print(f"sgru-stereo {args.command}: error: {top} is not installed; pip install 'sgru_ros[{EXTRAS[top]}]'",
              file=sys.stderr)
        return 1
    except (CommandError, CheckpointError, ValueError, OSError, MemoryError, cv2.error, sqlite3.Error) as err:
        print(f"sgru-stereo {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
