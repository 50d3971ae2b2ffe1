"""sgru-stereo bag: small rosbag2 recordings written with rosbags, run through the CLI as a user
would, and read back; the Motorcycle frame is also sent through the live node (its own process)
to check that both give the same geometry."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

from sgru_ros.calibration import MOTORCYCLE, StereoCalibration, motorcycle_pair  # noqa: E402
from sgru_ros.ros.conversions import array_to_image, compressed_image, stamp_ns  # noqa: E402
from sgru_ros.ros.sample_source import camera_info  # noqa: E402

from conftest import run_cli  # noqa: E402
from ros_helpers import STEP_PX, CameraRig, known_answer_checkpoint, remapped_inputs, start_process, stop_process  # noqa: E402,E501

TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage,
         "sensor_msgs/msg/CameraInfo": CameraInfo, "sensor_msgs/msg/PointCloud2": PointCloud2,
         "stereo_msgs/msg/DisparityImage": DisparityImage}


def write_stereo_bag(path, pair, calibration: StereoCalibration, seconds: list[int], storage: str = "mcap",
                     compressed: bool = False, right_delay_ns: int = 0, namespace: str = "/stereo",
                     bad_right_info: set[int] = frozenset(), no_info: set[int] = frozenset()) -> list[int]:
    """A rosbag2 folder with one calibrated pair per entry of ``seconds`` (its header stamp), like a
    camera driver records it; in the seconds of ``bad_right_info`` the right camera_info is one
    pixel too wide, in those of ``no_info`` there is none. Returns the left stamps (ns)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    suffix = "image_rect/compressed" if compressed else "image_rect"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    stamps = []
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
        conns = {name: writer.add_connection(f"{namespace}/{name}", msgtype, typestore=typestore) for name, msgtype in (
            (f"left/{suffix}", image_type), (f"right/{suffix}", image_type),
            ("left/camera_info", "sensor_msgs/msg/CameraInfo"), ("right/camera_info", "sensor_msgs/msg/CameraInfo"))}
        h, w = pair[0].shape[:2]
        for sec in seconds:
            for side, image, delay in (("left", pair[0], 0), ("right", pair[1], right_delay_ns)):
                header = Header(frame_id=f"stereo_{side}_optical")
                header.stamp.sec, header.stamp.nanosec = sec, delay
                msg = compressed_image(image, header, "png") if compressed else array_to_image(image, "rgb8", header)
                log_time = sec * 1_000_000_000 + delay
                writer.write(conns[f"{side}/{suffix}"], log_time, serialize_message(msg))
                wrong = side == "right" and sec in bad_right_info
                info = camera_info(calibration, side == "right", w + wrong, h, header)
                if sec not in no_info:
                    writer.write(conns[f"{side}/camera_info"], log_time, serialize_message(info))
            stamps.append(sec * 1_000_000_000)
    return stamps


def read_bag(path) -> dict[str, list]:
    """topic -> messages (rclpy) in log-time order."""
    from rosbags.highlevel import AnyReader

    out: dict[str, list] = {}
    with AnyReader([path]) as reader:
        for connection, _, raw in reader.messages():
            out.setdefault(connection.topic, []).append(deserialize_message(raw, TYPES[connection.msgtype]))
    return out


def cloud_xyz(cloud: PointCloud2) -> np.ndarray:
    raw = np.frombuffer(cloud.data, np.uint8).reshape(cloud.height, cloud.width, cloud.point_step)
    return np.stack([raw[..., o:o + 4].copy().view("<f4")[..., 0] for o in (0, 4, 8)], axis=-1)


def median_depth(cloud: PointCloud2) -> float:
    z = cloud_xyz(cloud)[..., 2]
    return float(np.median(z[np.isfinite(z)]))


def image_array(image: Image) -> np.ndarray:
    assert image.encoding == "32FC1"
    return np.frombuffer(image.data, np.float32).reshape(image.height, image.width)


def node_cloud(left: np.ndarray, right: np.ndarray, calibration: StereoCalibration, *params: str) -> PointCloud2:
    """The cloud the live node (its own process) publishes for this pair."""
    proc = start_process("run", "-r", "__ns:=/live", "-p", "device:=cpu", *params, *remapped_inputs("/cam"))
    rclpy.init()
    rig = CameraRig("/live", "/cam", calibration, name="bag_test_rig")
    clouds: dict[int, PointCloud2] = {}
    from rclpy.qos import QoSProfile

    rig.create_subscription(PointCloud2, "/live/points2", lambda m: clouds.__setitem__(stamp_ns(m.header), m),
                            QoSProfile(depth=5))
    try:
        rig.wait_connected(timeout=120.0)
        deadline = time.monotonic() + 180.0
        while not clouds and time.monotonic() < deadline:
            rig.publish_pair(left, right, sec=7)
            rig.spin_for(3.0)
        assert clouds, f"the node published no cloud: {stop_process(proc)[-2000:]}"
        return next(iter(clouds.values()))
    finally:
        rig.destroy_node()
        rclpy.shutdown()
        stop_process(proc)


def test_motorcycle_bag_gives_a_disparity_and_a_cloud_per_frame_with_the_nodes_geometry(tmp_path):
    left, right, _ = motorcycle_pair()
    source, target = tmp_path / "motorcycle", tmp_path / "motorcycle_depth"
    stamps = write_stereo_bag(source, (left, right), MOTORCYCLE, [10, 11, 12])
    run = run_cli("bag", str(source), str(target), "--namespace", "/stereo", "--iters", "4", "--device", "cpu",
                  "--outputs", "disparity", "points2", "depth/image_rect", "depth/camera_info", "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "sets formed: 3, processed: 3, skipped: none" in run.stdout
    out = read_bag(target)
    assert sorted(out) == ["/sgru/depth/camera_info", "/sgru/depth/image_rect", "/sgru/disparity", "/sgru/points2"]
    for topic, messages in out.items():
        assert [stamp_ns(m.header) for m in messages] == stamps, topic  # every set answered, stamps kept
        assert all(m.header.frame_id == "stereo_left_optical" for m in messages)
    disparity, cloud = out["/sgru/disparity"][0], out["/sgru/points2"][0]
    assert (disparity.image.width, disparity.image.height) == (741, 500)
    assert disparity.f == pytest.approx(MOTORCYCLE.focal_length) and disparity.t == pytest.approx(MOTORCYCLE.baseline)
    # Motorcycle stands 2-3 m from the camera (disparity 7-60 px at f 995 px, baseline 0.193 m, doffs 31 px).
    bag_depth = median_depth(cloud)
    assert 1.5 < bag_depth < 4.0
    depth = image_array(out["/sgru/depth/image_rect"][0])
    assert np.nanmedian(depth) == pytest.approx(bag_depth, rel=1e-6)

    live = node_cloud(left, right, MOTORCYCLE, "-p", "iterations:=4")
    assert (live.width, live.height, live.point_step) == (cloud.width, cloud.height, cloud.point_step)
    assert abs(median_depth(live) - bag_depth) <= 0.05 * bag_depth


def test_compressed_sqlite3_bag_with_approximate_stamps_gives_the_known_depth(tmp_path):
    # The known-answer network: after 3 iterations the disparity is 3 * STEP_PX everywhere.
    checkpoint = known_answer_checkpoint(tmp_path / "known.pth")
    rng = np.random.default_rng(3)
    texture = rng.integers(0, 255, size=(96, 136, 3), dtype=np.uint8)
    pair = (np.ascontiguousarray(texture[:, :128]), np.ascontiguousarray(texture[:, 8:]))
    calibration = StereoCalibration(focal_length=100.0, cx=64.0, cy=48.0, cx_right=66.0, baseline=0.2)
    source, target = tmp_path / "compressed", tmp_path / "out"
    stamps = write_stereo_bag(source, pair, calibration, [1, 2, 3, 4], storage="sqlite3", compressed=True,
                              right_delay_ns=4_000_000)
    run = run_cli("bag", str(source), str(target), "--namespace", "stereo", "--compressed", "--checkpoint",
                  str(checkpoint), "--iters", "3", "--device", "cpu", "--approximate-sync", "0.01", "--every", "2",
                  "--outputs", "disparity,depth/image_rect", "--storage", "sqlite3", "--output-namespace", "/x",
                  "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "sets formed: 4, processed: 2, skipped: 2 --every 2" in run.stdout
    out = read_bag(target)
    assert sorted(out) == ["/x/depth/image_rect", "/x/disparity"]
    assert [stamp_ns(m.header) for m in out["/x/disparity"]] == stamps[0::2]
    # d = 6 px matched; published d' = d - (cx - cx_right) = 8 px; Z = f B / d' = 2.5 m.
    published = image_array(out["/x/disparity"][0].image)
    np.testing.assert_allclose(published[8:-8, 16:-8], 3 * STEP_PX + 2.0, atol=1e-3)
    depth = image_array(out["/x/depth/image_rect"][0])
    np.testing.assert_allclose(depth[8:-8, 16:-8], 100.0 * 0.2 / 8.0, rtol=1e-4)


def test_bad_sets_are_counted_and_skipped_and_times_select_frames(tmp_path):
    checkpoint = known_answer_checkpoint(tmp_path / "known.pth")
    rng = np.random.default_rng(4)
    pair = tuple(rng.integers(0, 255, size=(64, 96, 3), dtype=np.uint8) for _ in range(2))
    calibration = StereoCalibration(focal_length=80.0, cx=48.0, cy=32.0, cx_right=48.0, baseline=0.1)
    source = tmp_path / "bag"
    write_stereo_bag(source, pair, calibration, [5, 6, 7, 8, 9], bad_right_info={7})
    run = run_cli("bag", str(source), str(tmp_path / "window"), "--checkpoint", str(checkpoint), "--namespace",
                  "/stereo", "--iters", "2", "--device", "cpu", "--start", "1", "--end", "3", "--no-progress")
    assert run.returncode == 0, run.stderr
    # 1..3 s after the first message: the sets of 6, 7 and 8 s; the one of 7 s is unusable, and says why.
    assert "sets formed: 3, processed: 2, skipped: 1 bad_input" in run.stdout
    assert "set at 7.000000 skipped (bad_input): right camera_info is 97x64 but the images are 96x64" in run.stderr
    assert [stamp_ns(m.header) // 10**9 for m in read_bag(tmp_path / "window")["/sgru/disparity"]] == [6, 8]


def test_pairs_without_their_camera_infos_take_the_static_calibration(tmp_path):
    """A recording in which reliable DDS delivered some camera_infos late or not at all: every pair is answered,
    with the static calibration under its own stamp, and the summary counts the camera_infos so taken."""
    checkpoint = known_answer_checkpoint(tmp_path / "known.pth")
    rng = np.random.default_rng(5)
    texture = rng.integers(0, 255, size=(64, 104, 3), dtype=np.uint8)
    pair = (np.ascontiguousarray(texture[:, :96]), np.ascontiguousarray(texture[:, 8:]))
    calibration = StereoCalibration(focal_length=80.0, cx=48.0, cy=32.0, cx_right=48.0, baseline=0.1)
    source = tmp_path / "bag"
    stamps = write_stereo_bag(source, pair, calibration, [1, 2, 3, 4, 5], no_info={3, 5})  # 5: the last
    run = run_cli("bag", str(source), str(tmp_path / "out"), "--checkpoint", str(checkpoint), "--namespace",
                  "/stereo", "--iters", "2", "--device", "cpu", "--outputs", "disparity,depth/camera_info",
                  "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "sets formed: 5, processed: 5, skipped: none" in run.stdout
    assert "images that joined no set: 0, camera_infos of a static calibration taken for another frame: 4" in run.stdout
    out = read_bag(tmp_path / "out")
    for topic in ("/sgru/disparity", "/sgru/depth/camera_info"):
        assert [stamp_ns(m.header) for m in out[topic]] == stamps, topic
    assert all(m.f == pytest.approx(80.0) and m.t == pytest.approx(0.1) for m in out["/sgru/disparity"])


def test_nothing_to_process_is_an_error_and_leaves_no_output(tmp_path):
    rng = np.random.default_rng(6)
    pair = tuple(rng.integers(0, 255, size=(32, 64, 3), dtype=np.uint8) for _ in range(2))
    calibration = StereoCalibration(focal_length=50.0, cx=32.0, cy=16.0, cx_right=32.0, baseline=0.1)
    source = tmp_path / "late_right"
    write_stereo_bag(source, pair, calibration, [1, 2], right_delay_ns=3_000_000)
    for extra, message in (([], "no synchronised set formed from 8 messages: stamps must be identical for exact "
                                "sync; try --approximate-sync SECONDS"),
                           (["--approximate-sync", "0.001"], "no stamps within 0.001 s of each other"),
                           (["--start", "5", "--approximate-sync", "0.01"], "no input messages between --start 5 s")):
        run = run_cli("bag", str(source), str(tmp_path / "out"), "--namespace", "/stereo", "--device", "cpu",
                      "--no-progress", *extra)
        assert run.returncode == 1 and message in run.stderr.strip().splitlines()[-1], run.stderr
        assert not (tmp_path / "out").exists()


def test_a_bag_without_the_topics_gets_one_line_naming_what_it_has(tmp_path):
    rng = np.random.default_rng(5)
    pair = tuple(rng.integers(0, 255, size=(32, 64, 3), dtype=np.uint8) for _ in range(2))
    calibration = StereoCalibration(focal_length=50.0, cx=32.0, cy=16.0, cx_right=32.0, baseline=0.1)
    source = tmp_path / "elsewhere"
    write_stereo_bag(source, pair, calibration, [1], namespace="/camera")
    run = run_cli("bag", str(source), str(tmp_path / "out"), "--namespace", "/stereo", "--device", "cpu")
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1
    line = run.stderr.strip()
    assert line.startswith("sgru-stereo bag: error: /stereo/left/image_rect missing")
    assert "/camera/left/image_rect (sensor_msgs/msg/Image)" in line
    assert "model:" not in run.stdout  # the bag is checked before the network loads
    assert not (tmp_path / "out").exists()
    run = run_cli("bag", str(source), str(tmp_path / "out"), "--namespace", "/camera", "--compressed")
    assert run.returncode == 1
    assert "/camera/left/image_rect/compressed missing" in run.stderr
    run = run_cli("bag", str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert run.returncode == 1 and "no such bag" in run.stderr


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_run_removes_the_unfinished_bag(tmp_path, signal_number):
    """Ctrl-C and SIGTERM (a service manager, `timeout`) end a run the same way: no half-written bag, which
    nothing could read (it has no metadata), and status 130."""
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(7)
    pair = tuple(rng.integers(0, 255, size=(64, 128, 3), dtype=np.uint8) for _ in range(2))
    calibration = StereoCalibration(focal_length=50.0, cx=64.0, cy=32.0, cx_right=64.0, baseline=0.1)
    source, out = tmp_path / "long", tmp_path / "out"
    write_stereo_bag(source, pair, calibration, list(range(1, 400)))
    proc = subprocess.Popen([sys.executable, "-m", "sgru_ros.cli", "bag", str(source), str(out), "--namespace",
                             "/stereo", "--device", "cpu", "--iters", "8", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.exists() and proc.poll() is None, "the run ended before it began writing"
    time.sleep(0.5)
    proc.send_signal(signal_number)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert not out.exists()


def test_an_unwritable_output_is_named_before_the_model_loads(tmp_path):
    rng = np.random.default_rng(8)
    pair = tuple(rng.integers(0, 255, size=(32, 64, 3), dtype=np.uint8) for _ in range(2))
    calibration = StereoCalibration(focal_length=50.0, cx=32.0, cy=16.0, cx_right=32.0, baseline=0.1)
    write_stereo_bag(tmp_path / "in", pair, calibration, [1])
    run = run_cli("bag", str(tmp_path / "in"), str(tmp_path / "missing" / "out"), "--namespace", "/stereo")
    assert run.returncode == 1 and "model:" not in run.stdout
    assert run.stderr == f"sgru-stereo bag: error: output {tmp_path / 'missing' / 'out'}: folder " \
                         f"{tmp_path / 'missing'} does not exist\n"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_full_disk_is_one_line_and_leaves_no_half_written_bag(tmp_path, storage):
    """The output stops growing mid-run (a file-size limit: writes fail as on a full disk): one line naming the
    output and the reason, status 1, no traceback, and the unreadable half-written bag removed."""
    import resource
    import subprocess
    import sys

    rng = np.random.default_rng(9)
    pair = tuple(rng.integers(0, 255, size=(64, 128, 3), dtype=np.uint8) for _ in range(2))
    calibration = StereoCalibration(focal_length=50.0, cx=64.0, cy=32.0, cx_right=64.0, baseline=0.1)
    source, out = tmp_path / "in", tmp_path / "out"
    write_stereo_bag(source, pair, calibration, list(range(1, 41)))

    def limit_file_size() -> None:  # in the child: a write past 2 MB fails with EFBIG instead of SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    run = subprocess.run([sys.executable, "-m", "sgru_ros.cli", "bag", str(source), str(out), "--namespace", "/stereo",
                          "--device", "cpu", "--iters", "1", "--no-progress", "--storage", storage,
                          "--outputs", "disparity,points2"],
                         capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sgru-stereo bag: error: {out}: writing the bag failed: "), lines
    assert not out.exists()
