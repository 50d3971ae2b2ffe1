"""A node that never goes silent, over real rclpy with the node in its own process: every failure of
a frame is caught, counted by kind, shown in /diagnostics, and the next frame is answered; images
below the network's minimum size are padded up to it; SIGINT/SIGTERM end a long frame within 2 s
without a traceback, Ctrl-C under launch (two SIGINTs) ends the node cleanly, and its log
file keeps the last lines; invalid start-up parameters give one line and exit status 1."""

from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402

from sgru_ros.calibration import StereoCalibration  # noqa: E402

from conftest import REPO  # noqa: E402
from ros_helpers import (CameraRig, known_answer_checkpoint, node_command, remapped_inputs,  # noqa: E402
                         start_process, stop_process)

NAMESPACE, CAMERA = "/robust", "/robust_cam"
CALIBRATION = StereoCalibration(focal_length=200.0, cx=80.0, cy=60.0, cx_right=86.0, baseline=0.12)
#: Address space of the node process: it starts at about 1.7 GB of virtual memory (PyTorch, DDS
#: threads); a 4000 x 3000 frame at full size needs several GB more and must fail to allocate.
MEMORY_LIMIT = 4 << 30


@pytest.fixture(scope="module")
def rig():
    rclpy.init()
    node = CameraRig(NAMESPACE, CAMERA, CALIBRATION)
    yield node
    node.destroy_node()
    rclpy.shutdown()


@pytest.fixture(scope="module")
def node_process(rig, tmp_path_factory):
    checkpoint = known_answer_checkpoint(tmp_path_factory.mktemp("model") / "known_answer.pth")
    proc = start_process("run", "-r", f"__ns:={NAMESPACE}", "-p", f"model:={checkpoint}", "-p", "device:=cpu",
                         "-p", "iterations:=2", "-p", "max_pixels:=0", *remapped_inputs(CAMERA),
                         memory_limit_bytes=MEMORY_LIMIT)
    rig.wait_connected()
    yield proc
    output = stop_process(proc)
    assert "Traceback" not in output, output


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(h, w, 3), dtype=np.uint8)


def answer(rig, left, right, sec: int, timeout: float = 60.0, **kwargs):
    stamp = rig.publish_pair(left, right, sec, **kwargs)
    rig.spin_until(lambda: stamp in rig.disparities, timeout, f"an answer to frame {sec}")
    return rig.disparities[stamp]


def wait_for_failure(rig, kind: str, count: int, timeout: float = 60.0) -> DiagnosticStatus:
    key = f"frames_failed_{kind}"
    rig.spin_until(lambda: int(rig.last_diagnostics().get(key, 0)) >= count, timeout, f"{key} >= {count}")
    return rig.last_status()


def test_non_finite_calibration_is_rejected_naming_the_field_and_the_node_goes_on(rig, node_process):
    left = textured(120, 160)
    p_left = CALIBRATION.projection().ravel().tolist()
    p_left[2] = float("nan")
    rig.publish_pair(left, left, sec=10, p_left=p_left)
    status = wait_for_failure(rig, "bad_input", 1)
    assert status.level == DiagnosticStatus.ERROR and "left camera_info P[0,2] is nan" in status.message
    p_left[2], p_left[3] = CALIBRATION.cx, float("inf")
    rig.publish_pair(left, left, sec=11, p_left=p_left)
    status = wait_for_failure(rig, "bad_input", 2)
    assert "left camera_info P[0,3] is inf" in status.message
    assert answer(rig, left, left, sec=12).image.width == 160
    assert node_process.poll() is None


def test_a_set_that_is_not_one_rectified_pair_is_refused_naming_the_field(rig, node_process):
    """A left P with Tx, and a colour left image with a mono right one: each refused with its reason (both were
    answered with a wrong disparity and status OK before)."""
    from std_msgs.msg import Header

    from sgru_ros.ros.conversions import array_to_image
    from sgru_ros.ros.sample_source import camera_info
    from ros_helpers import _mono_image

    left = textured(120, 160)
    rig.spin_for(1.5)
    failed = int(rig.last_diagnostics().get("frames_failed_bad_input", 0))
    p_left = CALIBRATION.projection().ravel().tolist()
    rig.publish_pair(left, left, sec=400, p_left=[*p_left[:3], 5.0, *p_left[4:]])
    status = wait_for_failure(rig, "bad_input", failed + 1)
    assert "left camera_info P[0,3] = 5: the left camera is the reference" in status.message
    header = Header(frame_id="rig_left_optical")
    header.stamp.sec = 401
    rig.pubs["left/camera_info"].publish(camera_info(CALIBRATION, False, 160, 120, header))
    rig.pubs["right/camera_info"].publish(camera_info(CALIBRATION, True, 160, 120, header))
    rig.pubs["left/image_rect"].publish(array_to_image(left, "rgb8", header))
    rig.pubs["right/image_rect"].publish(_mono_image(left, header))
    status = wait_for_failure(rig, "bad_input", failed + 2)
    assert "left image is rgb8 (colour) but right image is mono8 (mono)" in status.message
    assert answer(rig, left, left, sec=402).image.width == 160 and node_process.poll() is None


def test_approximate_sync_with_tolerance_0_matches_the_nearest_stamps(rig, tmp_path):
    """stereo_image_proc reads approximate_sync_tolerance_seconds 0.0 (its default) as no bound: left and
    right 5 ms apart form sets (none formed before)."""
    from std_msgs.msg import Header

    from sgru_ros.ros.conversions import array_to_image
    from sgru_ros.ros.sample_source import camera_info

    camera = CameraRig("/nearest", "/nearest_cam", CALIBRATION, name="nearest_rig")
    checkpoint = known_answer_checkpoint(tmp_path / "known_answer.pth")
    proc = start_process("run", "-r", "__ns:=/nearest", "-p", f"model:={checkpoint}", "-p", "device:=cpu",
                         "-p", "iterations:=1", "-p", "approximate_sync:=true",
                         "-p", "approximate_sync_tolerance_seconds:=0.0", *remapped_inputs("/nearest_cam"))
    try:
        camera.wait_connected()
        image = textured(120, 160)
        for sec in range(1, 5):
            left, right = Header(frame_id="left"), Header(frame_id="right")
            left.stamp.sec, right.stamp.sec, right.stamp.nanosec = sec, sec, 5_000_000
            camera.pubs["left/camera_info"].publish(camera_info(CALIBRATION, False, 160, 120, left))
            camera.pubs["right/camera_info"].publish(camera_info(CALIBRATION, True, 160, 120, right))
            camera.pubs["left/image_rect"].publish(array_to_image(image, "rgb8", left))
            camera.pubs["right/image_rect"].publish(array_to_image(image, "rgb8", right))
            camera.spin_for(0.5)
        camera.spin_until(lambda: len(camera.disparities) >= 3, 30.0, "three answers")
    finally:
        output = stop_process(proc)
        camera.destroy_node()
    assert "approximate sync" in output and "no synchronised set" not in output, output


def test_binned_and_roi_camera_infos_give_the_depth_of_the_plain_one(rig, node_process):
    """A 160 x 120 image from a 320 x 240 calibration, 2 x 2 binned, and the same image as the centre ROI of a
    640 x 480 calibration: answered with the focal length, baseline and disparity of a camera_info written for
    160 x 120 (both were refused before: "camera_info is 320x240 but the images are 160x120")."""
    from sensor_msgs.msg import RegionOfInterest
    from std_msgs.msg import Header

    from sgru_ros.ros.conversions import array_to_image
    from sgru_ros.ros.sample_source import camera_info

    left, right = textured(120, 160), textured(120, 160, 1)
    plain = answer(rig, left, right, sec=500)
    doubled = StereoCalibration(CALIBRATION.focal_length * 2, CALIBRATION.cx * 2, CALIBRATION.cy * 2,
                                CALIBRATION.cx_right * 2, CALIBRATION.baseline)
    answers = []
    for sec, (calibration, width, height, extra) in enumerate([
            (doubled, 320, 240, dict(binning_x=2, binning_y=2)),
            (StereoCalibration(CALIBRATION.focal_length, CALIBRATION.cx + 240, CALIBRATION.cy + 180,
                               CALIBRATION.cx_right + 240, CALIBRATION.baseline), 640, 480,
             dict(roi=RegionOfInterest(x_offset=240, y_offset=180, width=160, height=120)))], start=501):
        header = Header(frame_id="rig_left_optical")
        header.stamp.sec = sec
        for side, image in (("left", left), ("right", right)):
            info = camera_info(calibration, side == "right", width, height, header)
            for name, value in extra.items():
                setattr(info, name, value)
            rig.pubs[f"{side}/camera_info"].publish(info)
            rig.pubs[f"{side}/image_rect"].publish(array_to_image(image, "rgb8", header))
        rig.spin_until(lambda sec=sec: sec * 10**9 in rig.disparities, 60.0, f"an answer to frame {sec}")
        answers.append(rig.disparities[sec * 10**9])
    for out in answers:
        assert (out.f, out.t, out.min_disparity) == pytest.approx((plain.f, plain.t, plain.min_disparity))
        np.testing.assert_allclose(np.frombuffer(out.image.data, np.float32),
                                   np.frombuffer(plain.image.data, np.float32), atol=1e-4)


def test_refused_parameter_changes_are_logged_naming_the_parameter_value_and_what_is_allowed(rig, tmp_path):
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    checkpoint = known_answer_checkpoint(tmp_path / "known_answer.pth")
    proc = start_process("run", "-r", "__ns:=/params", "-p", f"model:={checkpoint}", "-p", "device:=cpu",
                         "-p", "iterations:=3", "-p", "publish_iterations:=[2]")
    client = rig.create_client(SetParameters, "/params/sgru_stereo/set_parameters")
    results = []
    try:
        assert client.wait_for_service(timeout_sec=60.0)
        for name, value in (("iterations", ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=2.5)),
                            ("iterations", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=0)),
                            ("iterations", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=2)),
                            ("device", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="cuda"))):
            future = client.call_async(SetParameters.Request(parameters=[ParameterMsg(name=name, value=value)]))
            rig.spin_until(future.done, 10.0, f"set {name}")
            results.append(future.result().results[0].successful)
    finally:
        rig.destroy_client(client)
        output = stop_process(proc)
    assert results == [False] * 4
    refused = [line.split("parameter change refused: ")[1] for line in output.splitlines() if "change refused" in line]
    assert refused == ["iterations = 2.5: not an integer in 1..64", "iterations = 0: not an integer in 1..64",
                       "iterations = 2: publish_iterations [2] must lie in 1..1 (below iterations 2)",
                       "device = 'cuda': read-only (set it at start-up)"], output


def test_a_set_published_again_with_the_same_stamp_is_answered_once(rig, node_process):
    left = textured(120, 160)
    answer(rig, left, left, sec=300)
    key = f"repeated_stamp {CAMERA}/left/image_rect"
    rig.spin_for(1.5)  # /diagnostics comes once a second: the next one counts the answered frame
    repeated, processed = (int(rig.last_diagnostics()[k]) for k in (key, "frames_processed"))
    for _ in range(3):
        rig.publish_pair(left, left, sec=300)
    rig.spin_until(lambda: int(rig.last_diagnostics().get(key, 0)) >= repeated + 3, 30.0, f"{key} + 3")
    rig.spin_for(1.5)  # a frame that had wrongly started would be counted by now
    assert int(rig.last_diagnostics()["frames_processed"]) == processed


def test_each_distinct_failure_reason_is_logged_naming_the_camera(rig, tmp_path):
    """Three bad sets with three different reasons within a few seconds: each gets its own log line (the
    throttle is per reason, not per kind), naming the camera's image topic and the reason."""
    camera = CameraRig("/reasons", "/reasons_cam", CALIBRATION, name="reasons_rig")
    checkpoint = known_answer_checkpoint(tmp_path / "known_answer.pth")
    proc = start_process("run", "-r", "__ns:=/reasons", "-p", f"model:={checkpoint}", "-p", "device:=cpu",
                         "-p", "iterations:=1", *remapped_inputs("/reasons_cam"))
    try:
        camera.wait_connected()
        left = textured(120, 160)
        p_left = CALIBRATION.projection().ravel().tolist()
        camera.publish_pair(left, left, sec=1, p_left=[*p_left[:2], float("nan"), *p_left[3:]])
        camera.publish_pair(left, left, sec=2, p_left=[*p_left[:3], float("inf"), *p_left[4:]])
        camera.publish_pair(left, textured(120, 150), sec=3)
        failed = lambda: int(camera.last_diagnostics("/reasons/sgru_stereo").get("frames_failed", 0))  # noqa: E731
        camera.spin_until(lambda: failed() >= 3, 60.0, "three failed sets")
    finally:
        output = stop_process(proc)
        camera.destroy_node()
    lines = [line for line in output.splitlines() if "skipped (bad_input" in line]
    assert len(lines) == 3, output
    assert all("of /reasons_cam/left/image_rect skipped" in line for line in lines), lines
    assert "P[0,2] is nan" in lines[0] and "P[0,3] is inf" in lines[1] and "150" in lines[2], lines


@pytest.mark.parametrize("size", [(1, 200), (200, 1), (1, 1), (32, 32), (33, 33)])
def test_images_below_the_network_minimum_are_answered(rig, node_process, size):
    h, w = size
    out = answer(rig, textured(h, w), textured(h, w, 1), sec=100 + h * 1000 + w)
    assert (out.image.height, out.image.width) == (h, w)


def test_an_out_of_memory_frame_is_skipped_and_the_next_one_answered(rig, node_process):
    big = textured(3000, 4000)[..., 0]  # mono8, 12 MB on the wire; full size in the network (max_pixels 0)
    rig.publish_pair(big, big, sec=200, encoding="mono8")
    status = wait_for_failure(rig, "out_of_memory", 1, timeout=120.0)
    assert status.level == DiagnosticStatus.ERROR and "out_of_memory" in status.message
    assert answer(rig, textured(120, 160), textured(120, 160, 1), sec=201).header.stamp.sec == 201
    stats = rig.last_diagnostics()
    assert stats["inference_thread"] == "running" and node_process.poll() is None


def test_diagnostics_return_to_ok_once_errors_are_old(rig, node_process):
    from sgru_ros.ros.diagnostics import ERROR_HOLD_S

    rig.spin_for(ERROR_HOLD_S + 1.0)
    status = rig.last_status()
    assert status.level == DiagnosticStatus.OK, status.message
    assert int(rig.last_diagnostics()["frames_failed"]) >= 3


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_long_frame_ends_the_node_within_2_s_without_traceback(rig, signal_number):
    """The bundled network at 1280 x 720 with 64 iterations needs tens of seconds here: the frame is
    abandoned between GRU iterations and nothing is published after the signal."""
    namespace, camera = "/exit", "/exit_cam"
    rig = CameraRig(namespace, camera, CALIBRATION, name="test_exit_rig")
    proc = start_process("run", "-r", f"__ns:={namespace}", "-p", "device:=cpu", "-p", "iterations:=64",
                         *remapped_inputs(camera))
    try:
        rig.wait_connected(60.0)
        rig.diagnostics.clear()
        image = textured(720, 1280)
        stamp = rig.publish_pair(image, image, sec=7)
        # Inference has started once the node has formed the set (diagnostics count it).
        rig.spin_until(lambda: rig.last_diagnostics().get("sets_formed") == "1", 30.0, "the set formed")
        rig.spin_for(2.0)
        start = time.monotonic()
        proc.send_signal(signal_number)
        output = proc.communicate(timeout=30)[0]
        elapsed = time.monotonic() - start
        rig.spin_for(1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
        rig.destroy_node()
    print(f"{signal.Signals(signal_number).name}: exited in {elapsed:.2f} s with status {proc.returncode}")
    assert elapsed < 2.0, output
    assert proc.returncode == 0 and "Traceback" not in output, output
    assert stamp not in rig.disparities


def test_ctrl_c_under_launch_two_sigints_end_a_busy_node_cleanly(rig):
    """Ctrl-C on ``ros2 launch`` signals a node twice: the terminal signals the whole process group
    and launch forwards its own SIGINT. The second one lands while the node waits for its frame
    in progress (a long one) and must not interrupt the shutdown."""
    namespace, camera = "/twice", "/twice_cam"
    rig = CameraRig(namespace, camera, CALIBRATION, name="test_twice_rig")
    proc = start_process("run", "-r", f"__ns:={namespace}", "-p", "device:=cpu", "-p", "iterations:=64",
                         *remapped_inputs(camera))
    try:
        rig.wait_connected(60.0)
        rig.publish_pair(textured(720, 1280), textured(720, 1280), sec=9)
        rig.spin_until(lambda: rig.last_diagnostics().get("sets_formed") == "1", 30.0, "the set formed")
        rig.spin_for(1.0)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
        assert proc.poll() is None, "the node ended before the second signal"
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        rig.destroy_node()
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output


def test_the_log_file_keeps_the_last_lines_after_sigint(rig, tmp_path, monkeypatch):
    """rcl writes the log file under ROS_LOG_DIR every 5 s; the lines of a node stopped sooner
    than that after logging them must be in it too."""
    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path))
    namespace, camera = "/logged", "/logged_cam"
    rig = CameraRig(namespace, camera, CALIBRATION, name="test_log_rig")
    proc = start_process("run", "-r", f"__ns:={namespace}", "-p", "device:=cpu", *remapped_inputs(camera))
    try:
        rig.wait_connected(60.0)
    finally:
        output = stop_process(proc)
        rig.destroy_node()
    assert proc.returncode == 0 and "Traceback" not in output, output
    console = [line.split("]: ", 1)[1] for line in output.splitlines() if "]: " in line]
    assert any(line.startswith("model raft") for line in console), output
    logged = "".join(path.read_text() for path in tmp_path.glob("*.log"))
    for line in console:
        assert line in logged, f"{line!r} is missing from the log file:\n{logged}"


@pytest.mark.parametrize("command,params,expected", [
    ("run", ["iterations:=0"], "parameter iterations: "),
    ("run", ["iterations:=abc"], "parameter iterations: "),
    ("run", ["max_disp:=100"], "parameter max_disp: "),
    ("run", ["queue_size:=0"], "parameter queue_size: "),
    ("run", ["min_depth:=50.0", "max_depth:=10.0"], "min_depth 50.0 must be below max_depth 10.0"),
    ("run", ["input_reliability:=sometimes"], "parameter input_reliability: 'sometimes' is not one of"),
    ("run", ["precision:=fp64"], "parameter precision: 'fp64' is not one of fp32, fp16, bf16"),
    ("run", ["flying_pixel_threshold:=.nan"], "parameter flying_pixel_threshold: "),
    ("run", ["model:=/nonexistent/model.pth"], "no such checkpoint file"),
    ("run", ["publish_iterations:=[1.5]"], "'publish_iterations' to '[1.5]'"),
    ("run", ["graphs:=true", "engine:=onnxruntime"], "graphs need engine torch without compile"),
    ("run", ["graphs:=true", "device:=cpu"], "graphs need the torch engine on a CUDA device, without compile "
                                             "(got engine torch, device cpu)"),
    ("source", ["rate:=0.0"], "parameter rate: "),
    ("source", ["rate:=.nan"], "parameter rate: "),
    ("source", ["frames:=-1"], "parameter frames: "),
    ("source", ["source:=camera"], "parameter source: 'camera' is not one of motorcycle, folder, video"),
    ("source", ["source:=folder"], "needs the calibration parameter"),
])
def test_invalid_start_up_parameters_give_one_line_and_exit_status_1(command, params, expected):
    """The stereo node and the sample source: one line (name, value, what is allowed), status 1."""
    args = [a for p in params for a in ("-p", p)]
    proc = subprocess.run(node_command(command, *args), cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "cannot start: " in lines[0], lines
    assert expected in lines[0], lines
    if lines[0].split("cannot start: ")[1].startswith("parameter"):  # says what is allowed
        assert "allowed: " in lines[0] or "is not one of" in lines[0], lines


@pytest.mark.parametrize("sync_params,stamp_offset_ns,publish_right_info,expected,not_expected", [
    ([], 0, False, "nothing received on /stall_cam/right/camera_info", "approximate_sync:=true"),
    ([], 10_000_000, True, "set approximate_sync:=true with approximate_sync_tolerance_seconds >= 0.010", None),
    (["approximate_sync:=true", "approximate_sync_tolerance_seconds:=0.001"], 10_000_000, True,
     "more than approximate_sync_tolerance_seconds 0.001; a tolerance of at least 0.010 would match",
     "approximate_sync:=true"),
])
def test_the_stall_warning_says_what_is_missing_or_which_stamps_differ(rig, sync_params, stamp_offset_ns,
                                                                        publish_right_info, expected, not_expected):
    from sgru_ros.ros.sample_source import camera_info

    namespace, camera = "/stall", "/stall_cam"
    stall_rig = CameraRig(namespace, camera, CALIBRATION, name="test_stall_rig")
    args = [a for p in sync_params for a in ("-p", p)]
    proc = start_process("run", "-r", f"__ns:={namespace}", "-p", "device:=cpu", *args, *remapped_inputs(camera))
    try:
        stall_rig.spin_until(lambda: all(p.get_subscription_count() for p in stall_rig.pubs.values())
                             or proc.poll() is not None, 60.0, "the node subscribing")
        image = textured(120, 160)
        for sec in range(1, 9):  # 8 frames at 2 Hz: inputs arrive, no set forms
            from std_msgs.msg import Header

            from sgru_ros.ros.conversions import array_to_image

            header = Header(frame_id="left")
            header.stamp.sec = sec
            shifted = Header(frame_id="right")
            shifted.stamp.sec, shifted.stamp.nanosec = sec, stamp_offset_ns
            stall_rig.pubs["left/camera_info"].publish(camera_info(CALIBRATION, False, 160, 120, header))
            if publish_right_info:
                stall_rig.pubs["right/camera_info"].publish(camera_info(CALIBRATION, True, 160, 120, shifted))
            stall_rig.pubs["left/image_rect"].publish(array_to_image(image, "rgb8", header))
            stall_rig.pubs["right/image_rect"].publish(array_to_image(image, "rgb8", shifted))
            stall_rig.spin_for(0.5)
        stall_rig.spin_for(1.0)
        status = stall_rig.last_status(f"{namespace}/sgru_stereo")
    finally:
        output = stop_process(proc)
        stall_rig.destroy_node()
    warnings = [line for line in output.splitlines() if "no synchronised set" in line]
    assert warnings and expected in warnings[-1], output
    assert not_expected is None or not_expected not in warnings[-1], warnings[-1]
    assert status.level == DiagnosticStatus.WARN and status.message == "inputs arrive but do not synchronise"
