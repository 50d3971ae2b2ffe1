"""How the node meets a robot stack, over real rclpy with the node in its own process: no work
without subscribers, compressed input whose camera_info follows the image topic, and the managed
(lifecycle) variant."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

from sgru_ros.calibration import StereoCalibration  # noqa: E402
from sgru_ros.ros.conversions import compressed_image, stamp_ns  # noqa: E402
from sgru_ros.ros.sample_source import camera_info  # noqa: E402

from ros_helpers import (STEP_PX, CameraRig, Observer, known_answer_checkpoint, remapped_inputs,  # noqa: E402
                         start_process, stop_process)

CALIBRATION = StereoCalibration(focal_length=200.0, cx=80.0, cy=60.0, cx_right=86.0, baseline=0.12)
ITERATIONS = 3


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return known_answer_checkpoint(tmp_path_factory.mktemp("model") / "known_answer.pth")


def textured_pair(shift: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    texture = rng.integers(0, 255, size=(120, 160 + shift, 3), dtype=np.uint8)
    return np.ascontiguousarray(texture[:, :160]), np.ascontiguousarray(texture[:, shift:])


def disparity_array(msg: DisparityImage) -> np.ndarray:
    return np.frombuffer(msg.image.data, np.float32).reshape(msg.image.height, msg.image.width)


def node_args(checkpoint, *extra: str) -> list[str]:
    return ["-p", f"model:={checkpoint}", "-p", "device:=cpu", "-p", f"iterations:={ITERATIONS}", *extra]


def test_without_subscribers_no_input_is_taken_and_diagnostics_say_idle(ros, checkpoint):
    proc = start_process("run", "-r", "__ns:=/lazy", *node_args(checkpoint), *remapped_inputs("/lazy_cam"))
    camera = CameraRig("/unwatched", "/lazy_cam", CALIBRATION, name="lazy_camera")  # watches another namespace
    try:
        camera.spin_until(lambda: camera.last_status("/lazy/sgru_stereo") is not None, 60.0, "diagnostics")
        camera.spin_for(1.5)
        status = camera.last_status("/lazy/sgru_stereo")
        assert status.level == DiagnosticStatus.OK and "idle: no subscriber to any output" in status.message
        assert {kv.key: kv.value for kv in status.values}["output_subscribers"] == "0"
        assert not any(pub.get_subscription_count() for pub in camera.pubs.values())  # inputs not even subscribed
        camera.publish_pair(*textured_pair(), sec=1)
        # A consumer appears: the node subscribes its inputs and answers.
        answers = {}

        def subscribe():
            return camera.create_subscription(DisparityImage, "/lazy/disparity",
                                              lambda m: answers.__setitem__(stamp_ns(m.header), m), QoSProfile(depth=5))

        consumer = subscribe()
        camera.wait_connected()
        stamp = camera.publish_pair(*textured_pair(), sec=2)
        camera.spin_until(lambda: stamp in answers, 60.0, "an answer once somebody subscribes")
        values = lambda: {kv.key: kv.value for kv in camera.last_status("/lazy/sgru_stereo").values}  # noqa: E731
        camera.spin_until(lambda: values()["frames_processed"] == "1", 5.0, "diagnostics counting the frame")
        assert camera.last_status("/lazy/sgru_stereo").message == "running" and values()["output_subscribers"] == "1"
        # A pair still waiting for its camera_infos when the last consumer leaves is not answered after the pause,
        # not even once the calibration turns out static.
        from std_msgs.msg import Header

        from sgru_ros.ros.conversions import array_to_image

        header = Header(frame_id="rig_left_optical")
        header.stamp.sec = 3
        for side, image in zip(("left", "right"), textured_pair()):
            camera.pubs[f"{side}/image_rect"].publish(array_to_image(image, "rgb8", header))
        camera.spin_for(1.0)
        camera.destroy_subscription(consumer)
        camera.spin_until(lambda: values()["output_subscribers"] == "0", 10.0, "idle")
        consumer = subscribe()
        camera.wait_connected()
        stamp = camera.publish_pair(*textured_pair(), sec=4)
        camera.spin_until(lambda: stamp in answers, 60.0, "an answer after the pause")
        camera.spin_for(1.5)
        assert sorted(answers) == [stamp_ns(header) - 1_000_000_000, stamp]  # seconds 2 and 4, never 3
        assert values()["pairs_without_camera_info"] == "1"
    finally:
        camera.destroy_node()
        output = stop_process(proc)
    assert "Traceback" not in output


def test_compressed_images_and_camera_info_found_beside_the_remapped_image_topic(ros, checkpoint):
    """One remap per camera, as image_transport's camera subscriber: the camera_info next to the
    image topic, the images on <image>/compressed (PNG here, so the known answer stays exact)."""
    proc = start_process("run", "-r", "__ns:=/packed", *node_args(checkpoint, "-p", "image_transport:=compressed"),
                         "-r", "left/image_rect:=/wifi_cam/left/image_rect_color",
                         "-r", "right/image_rect:=/wifi_cam/right/image_rect_color")
    observer = Observer("/packed", name="packed_observer")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {name: observer.create_publisher(msg_type, f"/wifi_cam/{name}", qos) for name, msg_type in (
        ("left/image_rect_color/compressed", CompressedImage), ("right/image_rect_color/compressed", CompressedImage),
        ("left/camera_info", CameraInfo), ("right/camera_info", CameraInfo))}
    try:
        observer.spin_until(lambda: all(p.get_subscription_count() for p in pubs.values()), 60.0,
                            "the node subscribing to the compressed images and the camera_infos beside them")
        observer.spin_for(0.5)
        # First a set whose PNGs claim 60000 x 60000 pixels in 83 bytes: refused as bad input, never decoded.
        bomb_header = Header(frame_id="wifi_left_optical")
        bomb_header.stamp.sec = 6
        for side in ("left", "right"):
            bomb = CompressedImage(header=bomb_header, format="png")
            bomb.data = _png_claiming(60000, 60000)
            pubs[f"{side}/camera_info"].publish(camera_info(CALIBRATION, side == "right", 160, 120, bomb_header))
            pubs[f"{side}/image_rect_color/compressed"].publish(bomb)
        observer.spin_until(lambda: int(observer.last_diagnostics("/packed/").get("frames_failed_bad_input", 0)) >= 1,
                            30.0, "the oversized set refused as bad input")
        # Then a JPEG set with 20 bytes of its scan data changed (OpenCV decodes it with a warning): refused.
        left, right = textured_pair()
        corrupt_header = Header(frame_id="wifi_left_optical")
        corrupt_header.stamp.sec = 6
        corrupt_header.stamp.nanosec = 500_000_000
        for side, image in (("left", left), ("right", right)):
            corrupt = compressed_image(image, corrupt_header, "jpeg")
            corrupt.data = _corrupted(bytes(corrupt.data))
            pubs[f"{side}/camera_info"].publish(camera_info(CALIBRATION, side == "right", 160, 120, corrupt_header))
            pubs[f"{side}/image_rect_color/compressed"].publish(corrupt)
        observer.spin_until(lambda: int(observer.last_diagnostics("/packed/").get("frames_failed_bad_input", 0)) >= 2,
                            30.0, "the corrupt JPEG set refused as bad input")
        header = Header(frame_id="wifi_left_optical")
        header.stamp.sec = 7
        for side, image in (("left", left), ("right", right)):
            pubs[f"{side}/camera_info"].publish(camera_info(CALIBRATION, side == "right", 160, 120, header))
            pubs[f"{side}/image_rect_color/compressed"].publish(compressed_image(image, header, "png"))
        observer.spin_until(lambda: stamp_ns(header) in observer.disparities, 60.0, "the disparity")
        published = disparity_array(observer.disparities[stamp_ns(header)])
        np.testing.assert_allclose(published[4:-4, 8:-4], ITERATIONS * STEP_PX + 6.0, atol=1e-3)
        assert stamp_ns(corrupt_header) not in observer.disparities
    finally:
        observer.destroy_node()
        output = stop_process(proc)
    assert "frame 6.500000000 of /wifi_cam/left/image_rect_color/compressed skipped (bad_input, 2 so far): corrupt " \
           "compressed image (rgb8; jpeg compressed bgr8, " in output
    assert "inputs /wifi_cam/left/image_rect_color/compressed, /wifi_cam/right/image_rect_color/compressed, " \
           "/wifi_cam/left/camera_info, /wifi_cam/right/camera_info" in output
    assert "claims 60000x60000 pixels, more than the 40000000 this node decodes: not decoded" in output


def test_init_sgbm_starts_each_frame_from_sgbms_map(ros, checkpoint):
    """init sgbm over rclpy: the known-answer network adds ITERATIONS * STEP_PX to where it starts, so from SGBM's
    map of a pair shifted by 6 px the published d' is 6 px more than from the network's own start."""
    proc = start_process("run", "-r", "__ns:=/prior", *node_args(checkpoint, "-p", "init:=sgbm", "-p",
                                                                 "sgbm_disparities:=32"), *remapped_inputs("/prior_cam"))
    camera = CameraRig("/prior", "/prior_cam", CALIBRATION, name="prior_camera")
    try:
        camera.wait_connected()
        stamp = camera.publish_pair(*textured_pair(), sec=3)
        camera.spin_until(lambda: stamp in camera.disparities, 60.0, "the disparity")
        published = disparity_array(camera.disparities[stamp])[8:-8, 16:-8]
        assert np.median(np.abs(published - (ITERATIONS * STEP_PX + 6.0 + 6.0))) < 0.1
    finally:
        camera.destroy_node()
        output = stop_process(proc)
    assert "Traceback" not in output


def test_the_fast_model_answers_a_camera_from_sgbms_map_and_is_flagged_without_it(ros):
    """The bundled fast model over rclpy on a real 640x480 pair: from SGBM's map (set at run time) the published
    disparity is right on most pixels; without it the node says, at start and on the change, that it sees
    worse."""
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    from sgru_ros.calibration import motorcycle_pair

    left, right, truth = (np.ascontiguousarray(a[:480, :640]) for a in motorcycle_pair())
    calibration = StereoCalibration(focal_length=700.0, cx=320.0, cy=240.0, cx_right=320.0, baseline=0.12)
    proc = start_process("run", "-r", "__ns:=/fast", "-p", "model:=fast", "-p", "device:=cpu", "-p", "iterations:=1",
                         "-p", "sgbm_disparities:=64", *remapped_inputs("/fast_cam"))
    camera = CameraRig("/fast", "/fast_cam", calibration, name="fast_camera")
    client = camera.create_client(SetParameters, "/fast/sgru_stereo/set_parameters")

    def set_init(value: str) -> bool:
        request = SetParameters.Request(parameters=[ParameterMsg(name="init", value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=value))])
        for _ in range(3):  # a request sent while the service's reply path is still being discovered can be lost
            future = client.call_async(request)
            deadline = time.monotonic() + 10.0
            while not future.done() and time.monotonic() < deadline:
                rclpy.spin_once(camera, timeout_sec=0.1)
            if future.done():
                return future.result().results[0].successful
            client.remove_pending_request(future)
        raise AssertionError(f"no answer to setting init {value} in three tries")

    try:
        assert client.wait_for_service(timeout_sec=60.0)
        # The node has loaded its model and spins once it reports on /diagnostics.
        camera.spin_until(lambda: camera.last_diagnostics("/fast/"), 60.0, "the node's first /diagnostics")
        assert set_init("sgbm")
        camera.wait_connected()
        stamp = camera.publish_pair(left, right, sec=7)
        camera.spin_until(lambda: stamp in camera.disparities, 120.0, "the disparity")
        published = disparity_array(camera.disparities[stamp])
        known = np.isfinite(truth) & np.isfinite(published)
        # 11 % bad-2 here; from its own start at one iteration it is wrong on more than half of Motorcycle's pixels.
        assert known.mean() > 0.5 and (np.abs(published - truth)[known] > 2).mean() < 0.2
        camera.spin_until(lambda: camera.last_diagnostics("/fast/").get("init") == "sgbm", 5.0, "init on /diagnostics")
        assert {k: camera.last_diagnostics("/fast/")[k] for k in ("model", "weights", "precision")} == {
            "model": "raft", "weights": "fast", "precision": "fp32"}
        assert set_init("none")
    finally:
        camera.destroy_node()
        output = stop_process(proc)
    assert "Traceback" not in output
    assert output.count("model fast is meant for init sgbm: ") == 2, output  # at start, and on the change to none


def _corrupted(jpeg: bytes) -> bytes:
    """``jpeg`` with 20 bytes of its entropy-coded data changed, checked to be still decodable by OpenCV."""
    import cv2

    data = bytearray(jpeg)
    start = jpeg.index(b"\xff\xda") + 20  # past the start-of-scan header
    rng = np.random.default_rng(5)
    for i in rng.choice(np.arange(start, len(data) - 4), 20, replace=False):
        data[i] = (data[i] + 1 + rng.integers(0, 254)) % 256
    assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR) is not None
    return bytes(data)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


class LifecycleClient(Observer):
    def __init__(self, node: str) -> None:
        super().__init__("/managed", name="lifecycle_client")
        self.change = self.create_client(ChangeState, f"{node}/change_state")
        self.get = self.create_client(GetState, f"{node}/get_state")

    def state(self) -> str:
        assert self.get.wait_for_service(timeout_sec=30.0)
        future = self.get.call_async(GetState.Request())
        self.spin_until(future.done, 10.0, "get_state")
        return future.result().current_state.label

    def transition(self, transition_id: int) -> bool:
        assert self.change.wait_for_service(timeout_sec=30.0)
        future = self.change.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
        self.spin_until(future.done, 60.0, f"transition {transition_id}")
        return future.result().success


def test_lifecycle_node_loads_on_configure_processes_only_while_active_and_frees_on_cleanup(ros, checkpoint):
    proc = start_process("run-lifecycle", "-r", "__ns:=/managed", *node_args(checkpoint),
                         *remapped_inputs("/managed_cam"))
    client = LifecycleClient("/managed/sgru_stereo")
    camera = CameraRig("/managed", "/managed_cam", CALIBRATION, name="managed_camera")
    try:
        assert client.state() == "unconfigured"
        assert client.count_publishers("/managed/disparity") == 0  # nothing loaded yet
        assert client.transition(Transition.TRANSITION_CONFIGURE) and client.state() == "inactive"
        assert client.count_publishers("/managed/disparity") == 1
        camera.spin_for(1.0)
        assert not any(pub.get_subscription_count() for pub in camera.pubs.values())  # configured, not processing
        assert client.transition(Transition.TRANSITION_ACTIVATE) and client.state() == "active"
        camera.wait_connected()
        stamp = camera.publish_pair(*textured_pair(), sec=11)
        camera.spin_until(lambda: stamp in camera.disparities, 60.0, "an answer while active")
        assert client.transition(Transition.TRANSITION_DEACTIVATE) and client.state() == "inactive"
        camera.spin_until(lambda: not any(pub.get_subscription_count() for pub in camera.pubs.values()), 10.0,
                          "inputs unsubscribed when inactive")
        camera.spin_until(lambda: "inactive" in camera.last_status("/managed/sgru_stereo").message, 5.0,
                          "diagnostics saying inactive")
        assert client.transition(Transition.TRANSITION_CLEANUP) and client.state() == "unconfigured"
        client.spin_until(lambda: client.count_publishers("/managed/disparity") == 0, 10.0, "publishers destroyed")
        # And up again: configure and activate a second time work.
        assert client.transition(Transition.TRANSITION_CONFIGURE) and client.transition(Transition.TRANSITION_ACTIVATE)
        camera.wait_connected()
        stamp = camera.publish_pair(*textured_pair(), sec=12)
        camera.spin_until(lambda: stamp in camera.disparities, 60.0, "an answer after a second activation")
    finally:
        camera.destroy_node()
        client.destroy_node()
        output = stop_process(proc)
    assert proc.returncode == 0 and "Traceback" not in output, output
