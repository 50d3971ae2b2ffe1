"""Frames that survive the trip between processes: the sample source (a separate process, as the
launch file starts it) publishes real-size images at 10 Hz to the stereo node (another process);
the test process observes. Reliability of the node's inputs follows the publishers."""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import (TINY_RAFT, Observer, known_answer_checkpoint, remapped_inputs, start_process,  # noqa: E402
                         stop_process, write_folder_source)

CAMERA = "/transport_cam"
FRAMES = 30


@pytest.fixture(scope="module")
def observer():
    rclpy.init()
    node = Observer("/transport")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def start_node(tmp_path, *params: str):
    checkpoint = known_answer_checkpoint(tmp_path / "known_answer.pth", TINY_RAFT)
    # A tiny network at a tiny working size (max_pixels) so that inference keeps up with 10 Hz on
    # two cores: what is under test is the transport of full-size images, not the network. Reliable
    # DDS repairs here stall a topic for up to a few seconds and then deliver in a burst: a queue of
    # 30 (3 s) keeps the other topics' messages until the late one arrives, and a backlog of 5 s
    # lets the node work through the burst instead of dropping all but the newest set.
    args = ["-r", "__ns:=/transport", "-p", f"model:={checkpoint}", "-p", "device:=cpu", "-p", "iterations:=1",
            "-p", "threads:=1", "-p", "queue_size:=30", "-p", "backlog_seconds:=5.0", "-p", "max_pixels:=4096",
            *remapped_inputs(CAMERA)]
    for param in params:
        args += ["-p", param]
    return start_process("run", *args)


def start_source(tmp_path, width: int, height: int, *params: str):
    folder, calibration = write_folder_source(tmp_path / f"frames_{width}x{height}", width, height)
    args = ["-r", f"__ns:={CAMERA}", "-p", "source:=folder", "-p", f"path:={folder}",
            "-p", f"calibration:={calibration}"]
    for param in params:
        args += ["-p", param]
    return start_process("source", *args)


def wait_for_node(observer, node) -> None:
    """Until the node runs and the observer's disparity subscription is matched both ways: DDS matching is
    asymmetric, and a reader that has not yet matched the node's writer drops what it sends (the first frames'
    disparities), as the sample source waits half a second after its own publishers see a reader."""
    observer.diagnostics.clear()  # only this node's
    observer.spin_until(lambda: int(observer.last_diagnostics().get("output_subscribers", 0)) >= 1
                        and observer.count_publishers("/transport/disparity") >= 1 or node.poll() is not None,
                        60.0, "the node and its disparity publisher")
    assert node.poll() is None, stop_process(node)
    observer.spin_for(0.5)


@pytest.mark.parametrize("size", [(640, 480), (1280, 720)])
def test_every_frame_of_a_reliable_camera_in_another_process_is_answered(observer, tmp_path, size):
    node = start_node(tmp_path)
    try:
        wait_for_node(observer, node)
        before = set(observer.disparities)
        source = start_source(tmp_path, *size, "rate:=10.0", f"frames:={FRAMES}")
        source_log = ""
        try:
            source.wait(timeout=60)
        finally:
            source_log = stop_process(source)
        assert source.returncode == 0, source_log
        try:
            observer.spin_until(lambda: len(set(observer.disparities) - before) >= FRAMES, 20.0, "")
        except AssertionError:
            raise AssertionError(f"{len(set(observer.disparities) - before)} of {FRAMES} answered; diagnostics "
                                 f"{observer.last_diagnostics()}; node output: {stop_process(node)}") from None
        observer.spin_for(1.5)  # diagnostics of the final state
        stats = observer.last_diagnostics()
        answered = set(observer.disparities) - before
        assert len(answered) == FRAMES
        assert all(observer.disparities[s].image.width == size[0] for s in answered)
        for topic in ("left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info"):
            assert stats[f"received {CAMERA}/{topic}"] == str(FRAMES), stats
            assert stats[f"reliability {CAMERA}/{topic}"] == "reliable", stats
        assert stats["sets_formed"] == str(FRAMES) and stats["frames_processed"] == str(FRAMES), stats
        assert stats["frames_dropped_stale"] == "0" and stats["frames_failed"] == "0", (stats, observer.last_status().message)
        print(f"{size[0]}x{size[1]} at 10 Hz: {len(answered)} of {FRAMES} answered; node stage times (ms): "
              + ", ".join(f"{k} {v}" for k, v in stats.items() if k.endswith("_ms")))
    finally:
        stop_process(node)


def test_reliability_follows_the_publishers_and_can_be_forced(observer, tmp_path):
    node = start_node(tmp_path)
    try:
        wait_for_node(observer, node)
        image_topic = f"reliability {CAMERA}/left/image_rect"
        # Small images: best-effort DDS loses large ones whenever one of their fragments is lost.
        best_effort = start_source(tmp_path, 320, 240, "rate:=2.0", "reliability:=best_effort")
        try:
            observer.spin_until(lambda: observer.last_diagnostics().get(image_topic) == "best_effort"
                                and int(observer.last_diagnostics()["frames_processed"]) >= 1, 30.0,
                                "best-effort camera answered")
        finally:
            stop_process(best_effort)
        reliable = start_source(tmp_path, 320, 240, "rate:=2.0")
        try:  # re-checked when publishers come and go
            observer.spin_until(lambda: observer.last_diagnostics().get(image_topic) == "reliable", 30.0,
                                "switch to reliable")
        finally:
            stop_process(reliable)
    finally:
        output = stop_process(node)
    assert "subscribing reliable" in output and "Traceback" not in output, output


def test_forced_reliability_and_the_standard_qos_override_win(observer, tmp_path):
    node = start_node(tmp_path, "input_reliability:=best_effort",
                      f"qos_overrides.{CAMERA}/right/image_rect.subscription.reliability:=reliable")
    wait_for_node(observer, node)
    source = start_source(tmp_path, 320, 240, "rate:=2.0")
    try:
        observer.spin_until(lambda: int(observer.last_diagnostics().get("frames_processed", 0)) >= 1, 30.0,
                            "a frame answered")
        stats = observer.last_diagnostics()
        assert stats[f"reliability {CAMERA}/left/image_rect"] == "best_effort"
        assert stats[f"reliability {CAMERA}/right/image_rect"] == "reliable"
    finally:
        stop_process(source)
        stop_process(node)
