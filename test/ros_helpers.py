"""Helpers of the ROS tests: the node and the sample source as separate processes (as deployed),
an observer node that records what the node publishes, and test inputs written as files."""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile
from stereo_msgs.msg import DisparityImage

from sgru_ros.ros.conversions import stamp_ns
from sgru_ros.ros.processes import node_command, stop_node  # noqa: F401 -- node_command for the tests

from conftest import REPO, STEP_PX, known_answer_checkpoint  # noqa: F401 -- re-exported for the ROS tests

INPUT_TOPICS = ("left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info")


#: A network with little per-frame overhead (one GRU level, 1/8 resolution) for tests that need the
#: node to keep up with 10 Hz on two cores.
TINY_RAFT = dict(hidden_dim=16, encoder_dims=(8, 8, 8), feature_dim=8, n_gru_layers=1, corr_levels=1,
                 n_downsample=3)


def remapped_inputs(camera: str) -> list[str]:
    return [arg for topic in INPUT_TOPICS for arg in ("-r", f"{topic}:={camera}/{topic}")]


def start_process(command: str, *ros_args: str, memory_limit_bytes: int | None = None) -> subprocess.Popen:
    """``node_command`` in its own process; stdout and stderr together."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))

    return subprocess.Popen(node_command(command, *ros_args), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=limit_memory if memory_limit_bytes else None)


def stop_process(proc: subprocess.Popen) -> str:
    """``stop_node``, then the process's output."""
    stop_node(proc)
    return proc.communicate()[0] or ""


class Observer(Node):
    """Subscribes like rviz or a mapping node would and records disparities (with arrival times)
    and the stereo node's diagnostics."""

    def __init__(self, namespace: str = "", name: str = "test_observer") -> None:
        super().__init__(name)
        self.disparities: dict[int, DisparityImage] = {}
        self.arrivals: dict[int, float] = {}
        self.create_subscription(DisparityImage, f"{namespace}/disparity", self._on_disparity, QoSProfile(depth=50))
        self.diagnostics: list[DiagnosticArray] = []
        self.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)

    def _on_disparity(self, msg: DisparityImage) -> None:
        stamp = stamp_ns(msg.header)
        self.disparities[stamp] = msg
        self.arrivals[stamp] = time.time()

    def spin_until(self, condition, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rclpy.spin_once(self, timeout_sec=0.1)
            if condition():
                return
        raise AssertionError(f"timed out after {timeout:.0f} s: {message}")

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rclpy.spin_once(self, timeout_sec=0.1)

    def last_status(self, node: str = "sgru_stereo"):
        """The newest status of a stereo node (``node``: any part of its fully qualified name)."""
        statuses = [s for array in self.diagnostics for s in array.status if node in s.name]
        return statuses[-1] if statuses else None

    def last_diagnostics(self, node: str = "sgru_stereo") -> dict[str, str]:
        status = self.last_status(node)
        return {kv.key: kv.value for kv in status.values} if status else {}


def write_folder_source(folder: Path, width: int, height: int, shift: int = 8) -> tuple[Path, Path]:
    """One textured pair of this size (right = left shifted by ``shift`` px) as the folder source reads it;
    returns (folder, calibration file)."""
    from sgru_ros.calibration import StereoCalibration
    from sgru_ros.ros.sample_source import write_folder_source as write

    rng = np.random.default_rng(width)
    texture = rng.integers(0, 255, size=(height, width + shift, 3), dtype=np.uint8)
    calibration = StereoCalibration(width * 0.8, width / 2, height / 2, width / 2, 0.1)
    return folder, write(folder, [(texture[:, :width], texture[:, shift:])], calibration)


class CameraRig(Observer):
    """An observer that also publishes calibrated pairs like a camera driver (reliable, depth 10)."""

    def __init__(self, namespace: str, camera: str, calibration, name: str = "test_camera_rig") -> None:
        super().__init__(namespace, name=name)
        from rclpy.qos import ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.calibration = calibration
        self.pubs = {t: self.create_publisher(m, f"{camera}/{t}", qos)
                     for t, m in zip(INPUT_TOPICS, (Image, Image, CameraInfo, CameraInfo))}

    def publish_pair(self, left: np.ndarray, right: np.ndarray, sec: int, encoding: str = "rgb8",
                     p_left: list[float] | None = None) -> int:
        from std_msgs.msg import Header

        from sgru_ros.ros.conversions import array_to_image
        from sgru_ros.ros.sample_source import camera_info

        header = Header(frame_id="rig_left_optical")
        header.stamp.sec = sec
        h, w = left.shape[:2]
        left_info = camera_info(self.calibration, False, w, h, header)
        if p_left is not None:
            left_info.p = p_left
        self.pubs["left/camera_info"].publish(left_info)
        self.pubs["right/camera_info"].publish(camera_info(self.calibration, True, w, h, header))
        if encoding == "mono8":
            self.pubs["left/image_rect"].publish(_mono_image(left, header))
            self.pubs["right/image_rect"].publish(_mono_image(right, header))
        else:
            self.pubs["left/image_rect"].publish(array_to_image(left, "rgb8", header))
            self.pubs["right/image_rect"].publish(array_to_image(right, "rgb8", header))
        return stamp_ns(header)

    def wait_connected(self, timeout: float = 30.0) -> None:
        self.spin_until(lambda: all(p.get_subscription_count() for p in self.pubs.values()), timeout,
                        "the node subscribing to the camera")
        self.spin_for(0.5)  # the subscriber matches this publisher a little after we see it


def _mono_image(image: np.ndarray, header):
    from sensor_msgs.msg import Image

    from sgru_ros.ros.conversions import byte_array

    gray = np.ascontiguousarray(image if image.ndim == 2 else image[..., 0])
    msg = Image(header=header, height=gray.shape[0], width=gray.shape[1], encoding="mono8", is_bigendian=0,
                step=gray.shape[1])
    msg.data = byte_array(gray)
    return msg
