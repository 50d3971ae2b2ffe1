"""What every node of the package shares, without torch: declaring a checked parameter, and spinning a
node from start-up to a clean exit (signals, one-line start-up errors, ROS logging closed)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def allowed_values(descriptor: ParameterDescriptor, value) -> str:
    """What a parameter takes, in words, from its descriptor (range, choices) and a value of its type."""
    if descriptor.integer_range:
        r = descriptor.integer_range[0]
        return f"an integer in {r.from_value}..{r.to_value}" + (f", step {r.step}" if r.step > 1 else "")
    if descriptor.floating_point_range:
        r = descriptor.floating_point_range[0]
        return f"a number in {r.from_value:g}..{r.to_value:g}"
    if descriptor.additional_constraints:
        return descriptor.additional_constraints
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(type(value), "a list")


def declare_checked(node: Node, name: str, default, description: str, *, read_only: bool = False,
                    integer_range: tuple[int, ...] | None = None, float_range: tuple[float, float] | None = None,
                    choices: tuple[str, ...] = ()):
    """Declare a parameter with its descriptor (range or choices); a start-up value of the wrong
    type or out of range raises ValueError in one line: name, the reason, what is allowed."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if integer_range:
        step = integer_range[2] if len(integer_range) > 2 else 1
        descriptor.integer_range = [IntegerRange(from_value=integer_range[0], to_value=integer_range[1], step=step)]
    if float_range:
        descriptor.floating_point_range = [FloatingPointRange(from_value=float_range[0], to_value=float_range[1],
                                                              step=0.0)]
    if choices:
        descriptor.additional_constraints = "one of " + ", ".join(choices)
    allowed = allowed_values(descriptor, default)
    try:
        value = node.declare_parameter(name, default, descriptor).value
    except ParameterException as err:  # rclpy: "<message>. Reason: <reason>: <name>"
        reason = str(err).split("Reason: ")[-1].splitlines()[0].removesuffix(f": {name}")
        raise ValueError(f"parameter {name}: {reason}; allowed: {allowed}") from None
    if choices and value not in choices:
        raise ValueError(f"parameter {name}: {value!r} is not {allowed}")
    return value


def spin_node(node_factory, args: list[str] | None = None) -> int:
    """rclpy.init, build the node (startup errors: one line, returns 1), spin until SIGINT/SIGTERM,
    then end the process (status 0)."""
    # rclpy.init installs rclpy's SIGINT/SIGTERM handlers over these: the first signal shuts the
    # context down (spin returns), and every signal is handed on to the handler underneath. With
    # that one ignoring, a second signal cannot interrupt the shutdown with a KeyboardInterrupt:
    # Ctrl-C on ros2 launch reaches a node twice (the terminal signals the whole process group,
    # and launch forwards its own SIGINT).
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    rclpy.init(args=args)
    try:
        try:
            node = node_factory()
        except (ValueError, OSError, RuntimeError, ParameterException) as err:  # one line, no traceback
            if not rclpy.ok():  # SIGINT/SIGTERM during start-up: nothing failed
                return 0
            rclpy.logging.get_logger("sgru_ros").fatal(f"cannot start: {str(err).splitlines()[0]}")
            return 1
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except RCLError:
            if rclpy.ok():
                raise
            # A signal shut the context down while the executor built its wait set: rclpy raises
            # this instead of ExternalShutdownException.
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
    # The node, its DDS participant and rclpy are shut down: leave without the interpreter's
    # finalization, after what of it ROS logging needs. PyTorch's teardown alone takes a second
    # here (launch and a robot's shutdown wait for it) and does nothing a stopped node needs; and
    # while a network stage longer than the shutdown wait still runs in its thread, finalization
    # under it would abort.
    _close_ros_logging()
    os._exit(0)


def _close_ros_logging() -> None:
    """Close ROS logging as a clean rclpy shutdown and the interpreter's exit would.

    After a signal, rclpy's handler shut the context down itself and try_shutdown skips closing
    the logging, so the log file under ~/.ros/log (written every 5 s) would lose its last lines;
    console output through C stdio (RCUTILS_LOGGING_USE_STDOUT=1) is flushed at exit only."""
    context = rclpy.get_default_context()
    try:
        with context._lock:  # the step of rclpy's own shutdown (Context._cleanup) that was skipped
            context._logging_fini()
    except Exception:  # noqa: BLE001 -- a later rclpy without this private step must not break shutdown
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to load by name (not Linux or macOS)
        pass
