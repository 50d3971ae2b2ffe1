"""stereo_node over real rclpy and Fast DDS: the node runs in its own process, the test publishes
a calibrated pair and reads the outputs, calls the parameter services, and checks the geometry."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

from sgru_ros.calibration import StereoCalibration  # noqa: E402
from sgru_ros.ros.conversions import array_to_image, stamp_ns  # noqa: E402
from sgru_ros.ros.sample_source import camera_info  # noqa: E402

from conftest import REPO  # noqa: E402
from ros_helpers import STEP_PX, Observer, known_answer_checkpoint, remapped_inputs, start_process, stop_process  # noqa: E402,E501

NAMESPACE = "/rig"
OUTPUT_TYPES = {"disparity": DisparityImage, "points2": PointCloud2, "depth/image_rect": Image,
                "depth/camera_info": CameraInfo, "confidence": Image}
CAMERA = "/cam"  # the node's inputs are remapped here
CALIBRATION = StereoCalibration(focal_length=200.0, cx=80.0, cy=60.0, cx_right=86.0, baseline=0.12)


@pytest.fixture(scope="module")
def node_process(tmp_path_factory):
    # The known-answer network: the node's plumbing and geometry are under test here, not the network.
    checkpoint = known_answer_checkpoint(tmp_path_factory.mktemp("model") / "known_answer.pth")
    proc = start_process("run", "-r", f"__ns:={NAMESPACE}", "--params-file", str(REPO / "config/stereo.yaml"),
                         "-p", f"model:={checkpoint}", "-p", "device:=cpu", "-p", "iterations:=3",
                         *remapped_inputs(CAMERA))
    yield proc
    stop_process(proc)


class Rig(Observer):
    """Publishes calibrated pairs like a camera driver and records what the node publishes."""

    def __init__(self, namespace: str = NAMESPACE) -> None:
        super().__init__(namespace, name="test_rig")
        qos = QoSProfile(depth=5)
        self.pubs = {t: self.create_publisher(m, f"{CAMERA}/{t}", qos) for t, m in (
            ("left/image_rect", Image), ("right/image_rect", Image),
            ("left/camera_info", CameraInfo), ("right/camera_info", CameraInfo))}
        self.outputs: dict[str, dict[int, object]] = {name: {} for name in OUTPUT_TYPES}
        for name, msg_type in OUTPUT_TYPES.items():
            self.create_subscription(msg_type, f"{namespace}/{name}",
                                     lambda msg, n=name: self.outputs[n].__setitem__(stamp_ns(msg.header), msg), qos)
        self.param_client = self.create_client(SetParameters, f"{namespace}/sgru_stereo/set_parameters")

    def publish_pair(self, left: np.ndarray, right: np.ndarray, sec: int, right_info_width: int | None = None) -> int:
        header = Header(frame_id="rig_left_optical")
        header.stamp.sec = sec
        right_header = Header(frame_id="rig_right_optical", stamp=header.stamp)
        h, w = left.shape[:2]
        self.pubs["left/camera_info"].publish(camera_info(CALIBRATION, False, w, h, header))
        self.pubs["right/camera_info"].publish(
            camera_info(CALIBRATION, True, right_info_width or w, h, right_header))
        self.pubs["left/image_rect"].publish(array_to_image(left, "rgb8", header))
        self.pubs["right/image_rect"].publish(array_to_image(right, "rgb8", right_header))
        return stamp_ns(header)

    def frame(self, left, right, sec: int, timeout: float = 60.0, **kwargs):
        """Publish a pair (re-sending until the node answers) and return its outputs."""
        stamp = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamp = self.publish_pair(left, right, sec, **kwargs)
            try:
                self.spin_until(lambda: all(stamp in o for o in self.outputs.values()), 2.0, "")
                return {name: outputs[stamp] for name, outputs in self.outputs.items()}
            except AssertionError:
                continue
        raise AssertionError(f"no output for stamp {sec}")

    def set_parameter(self, name: str, value) -> tuple[bool, str]:
        assert self.param_client.wait_for_service(timeout_sec=30.0), "parameter service not found"
        if isinstance(value, list):
            pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER_ARRAY, integer_array_value=value)
        elif isinstance(value, float):
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        elif isinstance(value, bool):
            pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        future = self.param_client.call_async(SetParameters.Request(parameters=[ParameterMsg(name=name, value=pv)]))
        self.spin_until(future.done, 10.0, f"set {name}")
        result = future.result().results[0]
        return result.successful, result.reason


@pytest.fixture(scope="module")
def rig(node_process):
    rclpy.init()
    node = Rig()
    yield node
    node.destroy_node()
    rclpy.shutdown()


def textured_pair(shift: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 255, size=(120, 160 + shift, 3), dtype=np.uint8)
    return np.ascontiguousarray(texture[:, :160]), np.ascontiguousarray(texture[:, shift:])


def as_array(image: Image) -> np.ndarray:
    assert image.encoding == "32FC1"
    return np.frombuffer(image.data, np.float32).reshape(image.height, image.width)


def test_pair_in_disparity_and_cloud_out_with_consistent_geometry(rig):
    left, right = textured_pair()
    out = rig.frame(left, right, sec=100)
    disparity_msg, cloud = out["disparity"], out["points2"]
    for msg in out.values():
        assert msg.header.frame_id == "rig_left_optical" and msg.header.stamp.sec == 100
    assert disparity_msg.f == pytest.approx(CALIBRATION.focal_length)
    assert disparity_msg.t == pytest.approx(CALIBRATION.baseline)
    assert disparity_msg.image.width == 160 and disparity_msg.image.height == 120
    assert disparity_msg.min_disparity == pytest.approx(6.0)  # -(cx_l - cx_r)
    published = as_array(disparity_msg.image)
    valid = published >= disparity_msg.min_disparity
    # 3 iterations of the known-answer network: d = 6 px, d' = d - (cx_l - cx_r) = 12 px, except in
    # the outer 4-px frame where convex upsampling mixes in its zero padding; columns x < d have no
    # match in the right image.
    np.testing.assert_allclose(published[4:-4, 8:-4], 12.0, atol=1e-3)
    assert not valid[:, :6].any() and valid[4:-4, 8:].all()
    win = disparity_msg.valid_window
    assert valid.any() and valid[win.y_offset:win.y_offset + win.height, win.x_offset:win.x_offset + win.width].sum() == valid.sum()

    assert cloud.height == 120 and cloud.width == 160 and not cloud.is_dense and cloud.point_step == 32
    raw = np.frombuffer(cloud.data, np.uint8).reshape(120, 160, 32)
    xyz = np.stack([raw[..., o:o + 4].copy().view("<f4")[..., 0] for o in (0, 4, 8)], axis=-1)
    finite = np.isfinite(xyz[..., 2])
    assert finite.any() and not (finite & ~valid).any()  # every point has a valid disparity
    expected_z = disparity_msg.f * disparity_msg.t / published[finite]
    np.testing.assert_allclose(xyz[..., 2][finite], expected_z, rtol=1e-3)
    v, u = np.nonzero(finite)
    np.testing.assert_allclose(xyz[..., 0][finite], (u - CALIBRATION.cx) * expected_z / CALIBRATION.focal_length,
                               rtol=1e-3, atol=1e-6)
    # REP 118: depth/image_rect in metres, NaN where no point, with the left camera_info beside it.
    depth = as_array(out["depth/image_rect"])
    np.testing.assert_allclose(depth[finite], expected_z, rtol=1e-3)
    assert np.isnan(depth[~finite]).all()
    info = out["depth/camera_info"]
    assert (info.width, info.height) == (160, 120) and list(info.p) == list(camera_info(CALIBRATION, False, 160, 120,
                                                                                         Header()).p)
    rgb = raw[..., 16:19][..., ::-1]
    assert np.array_equal(rgb[finite], left[finite])
    # Invalid pixels (x < d) read as invalid also to a consumer that takes d' > 0 as valid.
    assert (published[~valid] < 0).all() and (published[~valid] < disparity_msg.min_disparity).all()
    assert 0 < disparity_msg.delta_d < 1e-4  # float32 output: its spacing at the range's end, not 1/16 px


def test_images_whose_camera_infos_come_late_are_answered_with_the_static_calibration(rig):
    """Reliable DDS can deliver a camera_info sent after a large image seconds late. Once the calibration is
    static, a pair whose own camera_info has not come when the next image arrives (or 0.5 s later) is answered
    with the newest one, every output stamped as the images, and counted on /diagnostics; the late camera_infos
    form no second answer."""
    left, right = textured_pair()
    for sec in (300, 301):  # two equal camera_infos: the calibration is static
        rig.frame(left, right, sec=sec)
    key = f"camera_info_from_another_frame {CAMERA}/left/camera_info"
    rig.spin_until(lambda: key in rig.last_diagnostics(), 10.0, key)
    before = int(rig.last_diagnostics()[key])

    def header_of(sec: int) -> Header:
        header = Header(frame_id="rig_left_optical")
        header.stamp.sec = sec
        return header

    seconds = (302, 303, 304)
    for sec in seconds:
        rig.pubs["left/image_rect"].publish(array_to_image(left, "rgb8", header_of(sec)))
        rig.pubs["right/image_rect"].publish(array_to_image(right, "rgb8", Header(frame_id="rig_right_optical",
                                                                                  stamp=header_of(sec).stamp)))
    stamps = [stamp_ns(header_of(sec)) for sec in seconds]
    rig.spin_until(lambda: all(stamp in o for o in rig.outputs.values() for stamp in stamps), 60.0, "answers")
    for stamp in stamps:
        for name, outputs in rig.outputs.items():
            assert stamp_ns(outputs[stamp].header) == stamp and outputs[stamp].header.frame_id == "rig_left_optical"
        np.testing.assert_allclose(as_array(rig.outputs["disparity"][stamp].image)[4:-4, 8:-4], 12.0, atol=1e-3)
    rig.spin_until(lambda: int(rig.last_diagnostics()[key]) >= before + 3, 10.0, f"{key} + 3")
    sets = int(rig.last_diagnostics()["sets_formed"])
    for sec in seconds:  # the late ones
        rig.pubs["left/camera_info"].publish(camera_info(CALIBRATION, False, 160, 120, header_of(sec)))
        rig.pubs["right/camera_info"].publish(camera_info(CALIBRATION, True, 160, 120, header_of(sec)))
    rig.spin_for(2.5)
    assert int(rig.last_diagnostics()["sets_formed"]) == sets and int(rig.last_diagnostics()[key]) == before + 3


def test_confidence_is_the_pipelines_and_its_threshold_invalidates_pixels(rig, tmp_path):
    from sgru_ros.inference import StereoEstimator
    from sgru_ros.pipeline import StereoPipeline
    from sgru_ros.ros.sample_source import camera_info as info_of

    left, right = textured_pair()
    out = rig.frame(left, right, sec=150)
    confidence = as_array(out["confidence"])
    # The same frame through the ROS-free pipeline in this process: the node publishes exactly that.
    pipeline = StereoPipeline(StereoEstimator.from_checkpoint(known_answer_checkpoint(tmp_path / "k.pth"),
                                                              device="cpu"))
    p = [np.asarray(info_of(CALIBRATION, right_side, 160, 120, Header()).p).reshape(3, 4)
         for right_side in (False, True)]
    expected = pipeline.process(left, right, *p, iterations=3, confidence=True).confidence
    np.testing.assert_allclose(confidence, expected, atol=1e-6)
    assert ((confidence >= 0) & (confidence <= 1)).all() and confidence.std() > 0
    valid_before = as_array(out["disparity"].image) >= out["disparity"].min_disparity
    threshold = float(np.median(confidence[valid_before]))
    assert rig.set_parameter("confidence_threshold", threshold) == (True, "")
    masked = rig.frame(left, right, sec=151)
    valid = as_array(masked["disparity"].image) >= masked["disparity"].min_disparity
    assert np.array_equal(valid, valid_before & (as_array(masked["confidence"]) >= threshold))
    assert 0 < valid.sum() < valid_before.sum()
    assert np.isnan(as_array(masked["depth/image_rect"])[~valid]).all()
    assert rig.set_parameter("confidence_threshold", 0.0) == (True, "")


def test_every_parameter_of_the_config_file_is_declared(rig):
    import yaml
    from rcl_interfaces.srv import ListParameters

    config = yaml.safe_load((REPO / "config/stereo.yaml").read_text())
    keys = set(next(iter(config.values()))["ros__parameters"])
    client = rig.create_client(ListParameters, f"{NAMESPACE}/sgru_stereo/list_parameters")
    assert client.wait_for_service(timeout_sec=30.0)
    future = client.call_async(ListParameters.Request())
    rig.spin_until(future.done, 10.0, "list_parameters")
    declared = set(future.result().result.names)
    assert keys <= declared, keys - declared
    assert {"model", "publish_iterations"} <= declared


def test_iterations_change_at_run_time(rig):
    left, right = textured_pair()
    assert rig.set_parameter("iterations", 1) == (True, "")
    one = as_array(rig.frame(left, right, sec=200)["disparity"].image).copy()
    rig.spin_until(lambda: rig.last_diagnostics().get("last_frame_iterations") == "1", 10.0, "diagnostics")
    assert rig.set_parameter("iterations", 6) == (True, "")
    six = as_array(rig.frame(left, right, sec=201)["disparity"].image).copy()
    rig.spin_until(lambda: rig.last_diagnostics().get("last_frame_iterations") == "6", 10.0, "diagnostics")
    assert one[60, 80] == pytest.approx(1 * STEP_PX + 6.0) and six[60, 80] == pytest.approx(6 * STEP_PX + 6.0)
    assert rig.set_parameter("publish_iterations", [2, 4]) == (True, "")
    intermediate = {}
    rig.create_subscription(DisparityImage, f"{NAMESPACE}/disparity/iter_2",
                            lambda msg: intermediate.__setitem__(msg.header.stamp.sec, msg), QoSProfile(depth=5))
    for sec in range(202, 212):  # the lazily created iter_2 publisher may need a frame or two to be matched
        final = as_array(rig.frame(left, right, sec=sec)["disparity"].image)
        try:
            rig.spin_until(lambda: sec in intermediate, 2.0, "disparity/iter_2")
            break
        except AssertionError:
            continue
    assert as_array(intermediate[sec].image)[60, 80] == pytest.approx(2 * STEP_PX + 6.0)  # same pass, 2 of 6
    assert final[60, 80] == pytest.approx(6 * STEP_PX + 6.0)


def test_latency_budget_convergence_stop_and_warm_start(rig):
    left, right = textured_pair()  # iterations 6 (previous test); the known-answer net adds STEP_PX each
    # Neither stop ends a pass before an intermediate output somebody wants: publish_iterations
    # (cleared here) and, with the confidence subscriber of an earlier test, iteration 6 // 2 = 3.
    assert rig.set_parameter("publish_iterations", []) == (True, "")
    assert rig.set_parameter("latency_budget_ms", 0.001) == (True, "")
    budget = as_array(rig.frame(left, right, sec=250)["disparity"].image)
    rig.spin_until(lambda: rig.last_diagnostics().get("last_frame_iterations") not in (None, "6"), 10.0,
                   "diagnostics")
    cut = int(rig.last_diagnostics()["last_frame_iterations"])
    assert 1 <= cut <= 4 and budget[60, 80] == pytest.approx(cut * STEP_PX + 6.0)
    assert rig.set_parameter("latency_budget_ms", 0.0) == (True, "")
    assert rig.set_parameter("convergence_threshold_px", 2 * STEP_PX) == (True, "")  # every update is STEP_PX
    converged = as_array(rig.frame(left, right, sec=251)["disparity"].image)
    assert converged[60, 80] == pytest.approx(cut * STEP_PX + 6.0)  # the first iteration allowed to stop
    assert rig.set_parameter("convergence_threshold_px", STEP_PX / 2) == (True, "")
    moving = as_array(rig.frame(left, right, sec=252)["disparity"].image)
    rig.spin_until(lambda: rig.last_diagnostics().get("last_frame_iterations") == "6", 10.0, "diagnostics")
    assert moving[60, 80] == pytest.approx(6 * STEP_PX + 6.0)
    assert rig.set_parameter("convergence_threshold_px", 0.0) == (True, "")
    # warm start: each frame continues from the previous processed frame's disparity, 6 more steps
    # (the rig re-sends a pair the node has not answered within 2 s, so more than one may run)
    assert rig.set_parameter("warm_start", True) == (True, "")
    first = as_array(rig.frame(left, right, sec=253)["disparity"].image)
    second = as_array(rig.frame(left, right, sec=254)["disparity"].image)
    runs = [(image[60, 80] - 6.0) / (6 * STEP_PX) for image in (first, second)]  # passes chained so far
    assert all(n == pytest.approx(round(n), abs=1e-4) for n in runs), runs
    assert 1 <= round(runs[0]) < round(runs[1]), runs
    assert rig.set_parameter("warm_start", False) == (True, "")
    cold = as_array(rig.frame(left, right, sec=255)["disparity"].image)
    assert cold[60, 80] == pytest.approx(6 * STEP_PX + 6.0)
    assert rig.set_parameter("publish_iterations", [2, 4]) == (True, "")  # as the next test expects


def test_bad_parameter_values_are_rejected_with_a_reason(rig):
    ok, reason = rig.set_parameter("iterations", 0)
    assert not ok and reason
    ok, reason = rig.set_parameter("iterations", 500)
    assert not ok and reason
    # publish_iterations is [2, 4] (previous test): iterations must stay above 4.
    ok, reason = rig.set_parameter("iterations", 4)
    assert not ok and "publish_iterations [4] must lie in 1..3" in reason
    assert rig.set_parameter("iterations", 5) == (True, "")
    ok, reason = rig.set_parameter("publish_iterations", [9])
    assert not ok and "must lie in 1..4" in reason


def test_bad_input_is_reported_and_the_node_keeps_running(rig, node_process):
    left, right = textured_pair()
    rig.publish_pair(left, right[:, :100], sec=300)  # right image narrower than left
    rig.spin_until(lambda: int(rig.last_diagnostics().get("frames_failed_bad_input", "0")) >= 1, 15.0, "rejection")
    assert node_process.poll() is None
    out = rig.frame(left, right, sec=301)
    assert out["disparity"].header.stamp.sec == 301


def test_compiled_encoders_give_the_known_answer(rig, tmp_path):
    """compile:=true wired through: the node starts, announces the compilation at the first frame and
    answers (the known answer does not depend on the encoders; test_engines_and_bench compares compiled and eager)."""
    namespace = "/rig_compiled"
    checkpoint = known_answer_checkpoint(tmp_path / "known_answer.pth")
    proc = start_process("run", "-r", f"__ns:={namespace}", "-p", f"model:={checkpoint}", "-p", "device:=cpu",
                         "-p", "iterations:=3", "-p", "compile:=true", *remapped_inputs(CAMERA))
    compiled_rig = Rig(namespace)
    try:
        left, right = textured_pair()
        out = compiled_rig.frame(left, right, sec=900, timeout=300.0)
        np.testing.assert_allclose(as_array(out["disparity"].image)[4:-4, 8:-4], 12.0, atol=1e-3)
    finally:
        compiled_rig.destroy_node()
        log = stop_process(proc)
    assert "engine torch (compiled)" in log
    assert "compiling the encoders for the network input of 160x128 (the first frame of each size" in log
    assert "compiling the encoders failed" not in log
