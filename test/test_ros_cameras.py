"""Cameras as robots carry them, over real rclpy with the node in its own process: a raw camera with lens
distortion rectified in the node (``rectify``), and image_proc's layout where image_rect is mono and
image_rect_color the colour image (``prefer_color``)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sgru_ros.calibration import StereoCalibration  # noqa: E402
from sgru_ros.rectification import sample_raw_pair, simulate_raw  # noqa: E402
from sgru_ros.ros.conversions import array_to_image, byte_array, camera_info_message, stamp_ns  # noqa: E402
from sgru_ros.ros.sample_source import camera_info  # noqa: E402

from ros_helpers import Observer, known_answer_checkpoint, start_process, stop_process  # noqa: E402

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def _publishers(node, camera: str, image: str, colour: bool = False) -> dict:
    topics = [(f"{side}/{image}", Image) for side in ("left", "right")]
    topics += [(f"{side}/image_rect_color", Image) for side in ("left", "right") if colour]
    topics += [(f"{side}/camera_info", CameraInfo) for side in ("left", "right")]
    return {name: node.create_publisher(kind, f"{camera}/{name}", RELIABLE) for name, kind in topics}


def _wait_subscribed(observer: Observer, pubs: dict, names) -> None:
    observer.spin_until(lambda: all(pubs[n].get_subscription_count() for n in names), 60.0,
                        f"the node subscribing to {', '.join(names)}")
    observer.spin_for(0.5)


def _header(sec: int) -> Header:
    header = Header(frame_id="raw_left_optical")
    header.stamp.sec = sec
    return header


def _bayer_rggb(rgb: np.ndarray, header: Header) -> Image:
    """An RGB image sampled through an RGGB mosaic, as a Bayer camera sends it."""
    mosaic = np.empty(rgb.shape[:2], np.uint8)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    msg = Image(header=header, height=mosaic.shape[0], width=mosaic.shape[1], encoding="bayer_rggb8",
                is_bigendian=0, step=mosaic.shape[1])
    msg.data = byte_array(mosaic)
    return msg


def test_a_raw_distorted_camera_is_rectified_in_the_node_and_gives_the_known_depth(ros):
    """A textured plane 3 m away (disparity 10 px) seen by a raw camera pair with lens distortion and rotated
    sensors (rows 4-6 px apart, 'raw as is' gives a median disparity of 27.5 px), in rgb8 and as an RGGB mosaic:
    with rectify the bundled network's disparity is within 1 % of 10 px; a camera_info that cannot rectify
    is refused naming its topic and field."""
    calibration = StereoCalibration(focal_length=300.0, cx=160.0, cy=120.0, cx_right=160.0, baseline=0.1)
    shift = 10
    texture = cv2.GaussianBlur(np.random.default_rng(4).integers(0, 255, (240, 320 + shift, 3), np.uint8), (0, 0), 1.5)
    rectified = (np.ascontiguousarray(texture[:, :320]), np.ascontiguousarray(texture[:, shift:]))
    models = sample_raw_pair(calibration.projection(False), calibration.projection(True), 320, 240)
    raw = [simulate_raw(image, model) for image, model in zip(rectified, models)]
    proc = start_process("run", "-r", "__ns:=/rawrig", "-p", "rectify:=true", "-p", "device:=cpu", "-p",
                         "iterations:=8", "-r", "left/image_raw:=/rawcam/left/image_raw",
                         "-r", "right/image_raw:=/rawcam/right/image_raw")
    observer = Observer("/rawrig", name="raw_observer")
    infos = []
    observer.create_subscription(CameraInfo, "/rawrig/depth/camera_info", infos.append, RELIABLE)
    pubs = _publishers(observer, "/rawcam", "image_raw")
    try:
        _wait_subscribed(observer, pubs, pubs)
        stamps = []
        for sec, encoding in ((1, "rgb8"), (2, "bayer_rggb8")):
            header = _header(sec)
            for side, image, model in zip(("left", "right"), raw, models):
                pubs[f"{side}/camera_info"].publish(camera_info_message(model, header))
                pubs[f"{side}/image_raw"].publish(_bayer_rggb(image, header) if encoding != "rgb8"
                                                  else array_to_image(image, "rgb8", header))
            stamps.append(stamp_ns(header))
        header = _header(3)  # a left camera_info with three distortion coefficients: not a plumb_bob model
        bad = camera_info_message(models[0], header)
        bad.d = [0.1, 0.01, 0.0]
        pubs["left/camera_info"].publish(bad)
        pubs["right/camera_info"].publish(camera_info_message(models[1], header))

        # The camera_infos first, until the node has them (its /diagnostics counts them): a pair whose own is
        # 0.5 s late (a busy machine) would take the static calibration of frames 1 and 2 instead.
        def infos_received() -> int:
            return sum(int(v) for k, v in observer.last_diagnostics("/rawrig/").items()
                       if k.startswith("received ") and k.endswith("camera_info"))

        observer.spin_until(lambda: infos_received() >= 6, 30.0, "the third pair of camera_infos at the node")
        for side, image in zip(("left", "right"), raw):
            pubs[f"{side}/image_raw"].publish(array_to_image(image, "rgb8", header))
        observer.spin_until(lambda: all(s in observer.disparities for s in stamps), 120.0, "both disparities")
        observer.spin_until(lambda: int(observer.last_diagnostics("/rawrig/").get("frames_failed_bad_input", 0)) >= 1,
                            30.0, "the set with a bad camera_info refused")
        for stamp in stamps:
            msg = observer.disparities[stamp]
            disparity = np.frombuffer(msg.image.data, np.float32).reshape(240, 320)[30:-30, 40:-40]
            assert abs(np.nanmedian(disparity) / shift - 1) < 0.01, (stamp, np.nanmedian(disparity))
            assert (msg.f, msg.t) == pytest.approx((300.0, 0.1))
        assert stamp_ns(header) not in observer.disparities
        observer.spin_until(lambda: infos, 10.0, "depth/camera_info")
        assert list(infos[-1].d) == [0.0] * 5 and np.allclose(np.reshape(infos[-1].r, (3, 3)), np.eye(3))
        assert np.allclose(infos[-1].k, calibration.intrinsics().ravel())  # the rectified camera's K
    finally:
        observer.destroy_node()
        output = stop_process(proc)
    assert "inputs /rawcam/left/image_raw, /rawcam/right/image_raw, /rawcam/left/camera_info, " \
           "/rawcam/right/camera_info" in output
    assert "rectification maps built for /rawcam/left/camera_info (plumb_bob, 320x240)" in output
    assert "frame 3.000000000 of /rawcam/left/image_raw skipped (bad_input, 1 so far): /rawcam/left/camera_info: " \
           "D has 3 coefficients; plumb_bob takes 4 or 5" in output
    assert "Traceback" not in output


def _cloud_rgb(msg: PointCloud2) -> np.ndarray:
    """H x W x 3 uint8 colours of an organized cloud (PCL's rgb float32: bytes B, G, R, 0)."""
    offset = next(f.offset for f in msg.fields if f.name == "rgb")
    points = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, msg.point_step)
    return points[..., offset:offset + 3][..., ::-1]


def test_image_rect_color_is_taken_while_both_cameras_publish_it(ros, tmp_path):
    """image_proc's layout: a mono camera (image_rect only) gives a grey cloud; once both cameras also publish
    image_rect_color the node takes it (logged), and the cloud has the colour image's colours."""
    calibration = StereoCalibration(focal_length=200.0, cx=80.0, cy=60.0, cx_right=86.0, baseline=0.12)
    checkpoint = known_answer_checkpoint(tmp_path / "known_answer.pth")
    colour = np.random.default_rng(6).integers(0, 255, (120, 160, 3), np.uint8)
    grey = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
    proc = start_process("run", "-r", "__ns:=/colrig", "-p", f"model:={checkpoint}", "-p", "device:=cpu",
                         "-p", "iterations:=3", "-r", "left/image_rect:=/colcam/left/image_rect",
                         "-r", "right/image_rect:=/colcam/right/image_rect")
    observer = Observer("/colrig", name="colour_observer")
    clouds = {}
    observer.create_subscription(PointCloud2, "/colrig/points2", lambda m: clouds.__setitem__(stamp_ns(m.header), m),
                                 RELIABLE)
    mono_pubs = _publishers(observer, "/colcam", "image_rect")
    try:
        _wait_subscribed(observer, mono_pubs, mono_pubs)

        def publish(sec: int, with_colour: bool) -> int:
            header = _header(sec)
            for side in ("left", "right"):
                mono_pubs[f"{side}/camera_info"].publish(camera_info(calibration, side == "right", 160, 120, header))
                mono_pubs[f"{side}/image_rect"].publish(_mono(grey, header))
                if with_colour:
                    colour_pubs[f"{side}/image_rect_color"].publish(array_to_image(colour, "rgb8", header))
            return stamp_ns(header)

        colour_pubs = {}
        first = publish(1, with_colour=False)
        observer.spin_until(lambda: first in clouds, 60.0, "the mono camera's cloud")
        assert np.array_equal(_cloud_rgb(clouds[first]), np.repeat(grey[..., None], 3, 2))
        colour_pubs = {f"{side}/image_rect_color": observer.create_publisher(
            Image, f"/colcam/{side}/image_rect_color", RELIABLE) for side in ("left", "right")}
        _wait_subscribed(observer, colour_pubs, colour_pubs)  # the node switched over: it subscribes them
        second = publish(2, with_colour=True)
        observer.spin_until(lambda: second in clouds, 60.0, "the colour camera's cloud")
        assert np.array_equal(_cloud_rgb(clouds[second]), colour)
    finally:
        observer.destroy_node()
        output = stop_process(proc)
    assert "taking colour images from /colcam/left/image_rect_color and /colcam/right/image_rect_color " \
           "(both cameras publish them)" in output
    assert "Traceback" not in output


def _mono(grey: np.ndarray, header: Header) -> Image:
    msg = Image(header=header, height=grey.shape[0], width=grey.shape[1], encoding="mono8", is_bigendian=0,
                step=grey.shape[1])
    msg.data = byte_array(np.ascontiguousarray(grey))
    return msg
