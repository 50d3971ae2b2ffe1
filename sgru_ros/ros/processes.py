"""The package's nodes in processes of their own, as a user or a launch file runs them: for the node
benchmark and the tests that run camera, node and consumer as separate processes."""

from __future__ import annotations

import signal
import subprocess
import sys


def node_command(command: str, *ros_args: str) -> list[str]:
    """``sgru-stereo run|run-lifecycle|source --ros-args ...`` with this interpreter."""
    return [sys.executable, "-m", "sgru_ros.cli", command, "--ros-args", *ros_args]


def stop_node(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGINT, as Ctrl-C and launch send it; SIGKILL if the process has not ended after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
