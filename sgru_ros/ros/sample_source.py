"""sample_source: publishes a rectified stereo stream with camera_info, for demos and tests.

Sources (parameter ``source``):
- ``motorcycle``: scikit-image's Middlebury 2014 Motorcycle pair with its real
  calibration (the default, embedded input);
- ``folder``: ``path/left/*`` and ``path/right/*`` images (sorted, paired in
  order) with a calibration YAML (see ``sgru_ros.calibration``);
- ``video``: a side-by-side video (left half, right half) with a calibration YAML.

All four messages of a frame carry the same stamp. The first frame waits
until every topic has a subscriber (frames sent before DDS discovery has
matched a subscriber are lost to it). Frames loop; with ``frames`` > 0 the
source stops after that many (and exits). ``reliability``
(reliable, the default, or best_effort) emulates either kind of camera driver;
``image_transport`` ``compressed`` publishes JPEG sensor_msgs/CompressedImage
on ``<camera>/image_rect/compressed`` as image_transport's compressed plugin
does (a camera on a wireless link). ``distort`` publishes ``<camera>/image_raw``
instead: what a raw camera with lens distortion, unrectified, would see
(``rectification.sample_raw_pair``), with that camera's D, K, R and P in
camera_info, for the stereo node's ``rectify``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from ..calibration import MOTORCYCLE, StereoCalibration, motorcycle_pair
from ..io import read_image, write_image_rgb
from ..rectification import CameraModel, sample_raw_pair, simulate_raw
from .conversions import array_to_image, camera_info_message, compressed_image
from .runtime import declare_checked, spin_node

SOURCES = ("motorcycle", "folder", "video")
#: How long every topic must have had a subscriber before the first frame. The subscriber's side of a
#: match can trail this side's by more than a second on a loaded machine (a CI run on two cores lost the
#: first second of one image topic with 0.5 s), and what arrives before is lost to a volatile subscriber.
MATCH_SETTLE_S = 2.0
#: After the last frame: how long reliable subscribers get to acknowledge everything before the process
#: ends. Fast DDS repairs a lost fragment after its next heartbeat, which comes every 3 s by default.
ACK_WAIT_S = 10.0
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff"}


def write_folder_source(folder: Path, pairs: list[tuple[np.ndarray, np.ndarray]],
                        calibration: StereoCalibration) -> Path:
    """What ``source:=folder`` reads: folder/left/NNN.png, folder/right/NNN.png (RGB pairs) and a calibration
    YAML; returns the calibration file's path."""
    for index, pair in enumerate(pairs):
        for side, image in zip(("left", "right"), pair):
            (folder / side).mkdir(parents=True, exist_ok=True)
            write_image_rgb(folder / side / f"{index:03d}.png", np.ascontiguousarray(image))
    calibration.to_yaml(folder / "calibration.yaml")
    return folder / "calibration.yaml"


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


def rectified_model(calibration: StereoCalibration, right: bool, width: int, height: int) -> CameraModel:
    """The camera model of one rectified camera of ``calibration`` (no distortion, R the identity)."""
    return CameraModel.from_fields(width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5,
                                   k=calibration.intrinsics(right).ravel(), r=np.eye(3).ravel(),
                                   p=calibration.projection(right).ravel())


def camera_info(calibration: StereoCalibration, right: bool, width: int, height: int, header: Header) -> CameraInfo:
    return camera_info_message(rectified_model(calibration, right, width, height), header)


class SampleSource(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sample_source", **kwargs)
        declare_checked(self, "source", "motorcycle", "Where frames come from", read_only=True, choices=SOURCES)
        declare_checked(self, "path", "", "Folder (with left/ and right/) or side-by-side video file", read_only=True)
        declare_checked(self, "calibration", "", "Calibration YAML for folder and video sources", read_only=True)
        declare_checked(self, "rate", 2.0, "Frames per second", read_only=True, float_range=(0.01, 1000.0))
        declare_checked(self, "frames", 0, "Stop after this many frames, once reliable subscribers have them "
                        "(0: loop forever)", read_only=True, integer_range=(0, 1 << 31))
        declare_checked(self, "reliability", "reliable", "QoS reliability of the published topics", read_only=True,
                        choices=("reliable", "best_effort"))
        declare_checked(self, "image_transport", "raw", "raw images, or JPEG on <camera>/image_rect/compressed",
                        read_only=True, choices=("raw", "compressed"))
        declare_checked(self, "distort", False, "Publish <camera>/image_raw: the frames as a raw camera with lens "
                        "distortion sees them, unrectified, with its D, K, R, P (for the stereo node's rectify)",
                        read_only=True)
        declare_checked(self, "left_frame_id", "stereo_left_optical_frame", "frame_id of the left camera",
                        read_only=True)
        declare_checked(self, "right_frame_id", "stereo_right_optical_frame", "frame_id of the right camera",
                        read_only=True)
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
        # A reliable writer overwrites unacknowledged messages once its history is full, and a busy
        # subscriber can take a second to acknowledge: 20 images, 50 camera_infos (they are small).
        reliability = ReliabilityPolicy[self.get_parameter("reliability").value.upper()]
        self.compressed = self.get_parameter("image_transport").value == "compressed"
        image_type, suffix = (CompressedImage, "/compressed") if self.compressed else (Image, "")
        h, w = self.first[0].shape[:2]
        self.raw_models = None
        if self.get_parameter("distort").value:
            self.raw_models = sample_raw_pair(self.calibration.projection(False), self.calibration.projection(True),
                                              w, h)
        image = "image_raw" if self.raw_models else "image_rect"
        self.pubs = {name: self.create_publisher(msg_type, topic, QoSProfile(depth=depth, reliability=reliability))
                     for name, topic, msg_type, depth in (
                         ("left/image", f"left/{image}" + suffix, image_type, 20),
                         ("right/image", f"right/{image}" + suffix, image_type, 20),
                         ("left/camera_info", "left/camera_info", CameraInfo, 50),
                         ("right/camera_info", "right/camera_info", CameraInfo, 50))}
        self.published = 0
        self.matched_since: float | None = None
        self.stop_deadline = 0.0  # time.monotonic() by which the process ends once the frames are out
        self.frame_limit = self.get_parameter("frames").value
        self.timer = self.create_timer(1.0 / self.get_parameter("rate").value, self._publish)
        self.get_logger().info(f"publishing {source} {w}x{h}{' (raw, distorted)' if self.raw_models else ''} at "
                               f"{self.get_parameter('rate').value:g} Hz on {self.pubs['left/image'].topic_name} "
                               "and siblings")

    def _subscribers_ready(self) -> bool:
        """Every topic has had a subscriber for MATCH_SETTLE_S: DDS matching is asymmetric, and a
        subscriber that has not yet matched this publisher itself drops what it receives."""
        if not all(pub.get_subscription_count() for pub in self.pubs.values()):
            self.matched_since = None
            return False
        self.matched_since = self.matched_since or time.monotonic()
        return time.monotonic() - self.matched_since >= MATCH_SETTLE_S

    def _stop_when_acknowledged(self) -> None:
        """Timer after the last frame: end the process once reliable subscribers have acknowledged every
        message (at once for best-effort publishers), or ACK_WAIT_S after the last frame with a warning."""
        acknowledged = all(pub.wait_for_all_acked(Duration(seconds=0)) for pub in self.pubs.values())
        if not acknowledged and time.monotonic() < self.stop_deadline:
            return
        if not acknowledged:
            self.get_logger().warning(f"subscribers had not acknowledged every message {ACK_WAIT_S:g} s after the "
                                      "last frame; stopping anyway")
        self.context.try_shutdown()

    def _publish(self) -> None:
        if self.published == 0 and not self._subscribers_ready():
            return
        if self.frame_limit and self.published >= self.frame_limit:
            self.timer.cancel()
            self.get_logger().info(f"published {self.published} frames; stopping once subscribers have them")
            self.stop_deadline = time.monotonic() + ACK_WAIT_S
            self.create_timer(0.1, self._stop_when_acknowledged)
            return
        left, right = self.first if self.first is not None else next(self.frames)
        self.first = None
        stamp = self.get_clock().now().to_msg()
        left_header = Header(stamp=stamp, frame_id=self.get_parameter("left_frame_id").value)
        right_header = Header(stamp=stamp, frame_id=self.get_parameter("right_frame_id").value)
        h, w = left.shape[:2]
        models = self.raw_models or [rectified_model(self.calibration, right, w, h) for right in (False, True)]
        for side, image, header, model in (("left", left, left_header, models[0]),
                                           ("right", right, right_header, models[1])):
            if self.raw_models:
                image = simulate_raw(image, model)
            self.pubs[f"{side}/camera_info"].publish(camera_info_message(model, header))
            self.pubs[f"{side}/image"].publish(compressed_image(image, header) if self.compressed
                                               else array_to_image(image, "rgb8", header))
        self.published += 1


def main(args: list[str] | None = None) -> int:
    return spin_node(SampleSource, args)


if __name__ == "__main__":
    raise SystemExit(main())
