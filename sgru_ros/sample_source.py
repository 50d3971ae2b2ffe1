"""sample_source: publishes a rectified stereo stream with camera_info, for demos and tests.

Sources (parameter ``source``):
- ``motorcycle``: scikit-image's Middlebury 2014 Motorcycle pair with its real
  calibration (the default, embedded input);
- ``folder``: ``path/left/*`` and ``path/right/*`` images (sorted, paired in
  order) with a calibration YAML (see ``sgru_ros.calibration``);
- ``video``: a side-by-side video (left half, right half) with a calibration YAML.

All four messages of a frame carry the same stamp. Frames loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from .calibration import MOTORCYCLE, StereoCalibration, motorcycle_pair
from .io import read_image
from .node import spin_node
from .ros_conversions import array_to_image

SOURCES = ("motorcycle", "folder", "video")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff"}


def folder_frames(path: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    lefts = sorted(p for p in (path / "left").glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    rights = sorted(p for p in (path / "right").glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not lefts or len(lefts) != len(rights):
        raise ValueError(f"{path}: need left/ and right/ folders with the same number of images "
                         f"(found {len(lefts)} and {len(rights)})")
    while True:
        for left, right in zip(lefts, rights):
            yield read_image(left), read_image(right)


def video_frames(path: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: cannot open video")
    ok, frame = capture.read()
    if not ok or frame.shape[1] % 2:
        raise ValueError(f"{path}: no frame, or an odd width that does not split into left and right")
    while True:
        half = frame.shape[1] // 2
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        yield rgb[:, :half], rgb[:, half:]
        ok, frame = capture.read()
        if not ok:  # loop
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = capture.read()
            if not ok:
                raise ValueError(f"{path}: cannot rewind")


def camera_info(calibration: StereoCalibration, right: bool, width: int, height: int, header: Header) -> CameraInfo:
    return CameraInfo(header=header, width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=calibration.intrinsics(right).ravel().tolist(), r=np.eye(3).ravel().tolist(),
                      p=calibration.projection(right).ravel().tolist())


class SampleSource(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sample_source", **kwargs)
        self.declare_parameter("source", "motorcycle", ParameterDescriptor(
            description="motorcycle, folder or video", read_only=True, additional_constraints="one of " +
            ", ".join(SOURCES)))
        self.declare_parameter("path", "", ParameterDescriptor(
            description="folder (with left/ and right/) or side-by-side video file", read_only=True))
        self.declare_parameter("calibration", "", ParameterDescriptor(
            description="calibration YAML for folder and video sources", read_only=True))
        self.declare_parameter("rate", 2.0, ParameterDescriptor(
            description="frames per second", read_only=True,
            floating_point_range=[FloatingPointRange(from_value=0.01, to_value=1000.0, step=0.0)]))
        self.declare_parameter("left_frame_id", "stereo_left_optical_frame", ParameterDescriptor(read_only=True))
        self.declare_parameter("right_frame_id", "stereo_right_optical_frame", ParameterDescriptor(read_only=True))
        source = self.get_parameter("source").value
        path = Path(self.get_parameter("path").value)
        if source == "motorcycle":
            left, right, _ = motorcycle_pair()
            self.frames = iter(lambda: (left, right), None)
            self.calibration = MOTORCYCLE
        elif source in ("folder", "video"):
            calibration_file = self.get_parameter("calibration").value
            if not calibration_file:
                raise ValueError(f"source {source!r} needs the calibration parameter (a YAML file)")
            self.calibration = StereoCalibration.from_yaml(calibration_file)
            self.frames = folder_frames(path) if source == "folder" else video_frames(path)
        else:
            raise ValueError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
        self.first = next(self.frames)  # fail at start, not in the timer, when the input is unusable
        qos = QoSProfile(depth=5)
        self.pubs = {name: self.create_publisher(msg_type, name, qos) for name, msg_type in (
            ("left/image_rect", Image), ("right/image_rect", Image),
            ("left/camera_info", CameraInfo), ("right/camera_info", CameraInfo))}
        self.published = 0
        self.create_timer(1.0 / self.get_parameter("rate").value, self._publish)
        h, w = self.first[0].shape[:2]
        self.get_logger().info(f"publishing {source} {w}x{h} at {self.get_parameter('rate').value:g} Hz on "
                               f"{self.resolve_topic_name('left/image_rect')} and siblings")

    def _publish(self) -> None:
        left, right = self.first if self.first is not None else next(self.frames)
        self.first = None
        stamp = self.get_clock().now().to_msg()
        left_header = Header(stamp=stamp, frame_id=self.get_parameter("left_frame_id").value)
        right_header = Header(stamp=stamp, frame_id=self.get_parameter("right_frame_id").value)
        h, w = left.shape[:2]
        self.pubs["left/camera_info"].publish(camera_info(self.calibration, False, w, h, left_header))
        self.pubs["right/camera_info"].publish(camera_info(self.calibration, True, w, h, right_header))
        self.pubs["left/image_rect"].publish(array_to_image(left, "rgb8", left_header))
        self.pubs["right/image_rect"].publish(array_to_image(right, "rgb8", right_header))
        self.published += 1


def main(args: list[str] | None = None) -> int:
    return spin_node(SampleSource, args)


if __name__ == "__main__":
    raise SystemExit(main())
