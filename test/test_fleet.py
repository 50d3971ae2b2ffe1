"""``sgru-stereo bags``: many bags here and across a local Ray instance, the same messages either way; a
Ray worker killed while it holds a bag has the bag retried elsewhere; a re-run does only what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")
pytest.importorskip("rclpy")

from sgru_ros.calibration import StereoCalibration  # noqa: E402
from sgru_ros.ros.conversions import stamp_ns  # noqa: E402

from conftest import REPO, SMALL_RAFT, run_cli  # noqa: E402
from test_bag import read_bag, write_stereo_bag  # noqa: E402

CALIBRATION = StereoCalibration(focal_length=60.0, cx=64.0, cy=32.0, cx_right=64.0, baseline=0.1)


def _bags(folder: Path, count: int, frames: int) -> list[Path]:
    """``count`` bags of ``frames`` textured 64 x 128 pairs each (their own texture and stamps)."""
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        texture = rng.integers(0, 255, size=(64, 128 + 6, 3), dtype=np.uint8)
        path = folder / f"robot{i}"
        write_stereo_bag(path, (texture[:, :128], texture[:, 6:]), CALIBRATION,
                         [100 * i + k for k in range(1, frames + 1)])
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from sgru_ros.model import RaftConfig, SelectiveRAFT, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "small_raft.pth"
    save_checkpoint(SelectiveRAFT(RaftConfig(**SMALL_RAFT)), path)
    return path


def _options(checkpoint: Path) -> list[str]:
    return ["--namespace", "/stereo", "--device", "cpu", "--iters", "2", "--checkpoint", str(checkpoint),
            "--no-progress", "--outputs", "disparity"]


def _disparities(bag: Path) -> dict[int, np.ndarray]:
    return {stamp_ns(m.header): np.frombuffer(m.image.data, np.float32).reshape(m.image.height, m.image.width)
            for m in read_bag(bag)["/sgru/disparity"]}


def test_bags_here_and_on_ray_give_the_same_messages_and_a_rerun_does_only_what_is_missing(tmp_path, checkpoint):
    inputs = _bags(tmp_path / "in", 4, 3)
    here = run_cli("bags", str(tmp_path / "here"), *map(str, inputs), *_options(checkpoint))
    assert here.returncode == 0, here.stderr
    assert "bags: 4 done, 0 skipped (output exists), 0 failed, 0 retried after a worker died" in here.stdout
    assert "sets formed: 12, processed: 12, skipped: none" in here.stdout
    ray = run_cli("bags", str(tmp_path / "ray"), *map(str, inputs), *_options(checkpoint), "--ray", "--workers", "2")
    assert ray.returncode == 0, ray.stderr
    assert "4 bags on Ray (a local instance), 2 workers" in ray.stdout
    assert "2 Ray workers ready (raft on cpu)" in ray.stdout
    assert "bags: 4 done, 0 skipped (output exists), 0 failed, 0 retried after a worker died" in ray.stdout
    for bag in inputs:
        assert (tmp_path / "ray" / bag.name / f"{bag.name}.mcap").is_file()  # the storage file named as its folder
        a, b = _disparities(tmp_path / "here" / bag.name), _disparities(tmp_path / "ray" / bag.name)
        assert sorted(a) == sorted(b) and len(a) == 3
        assert all(np.abs(a[s] - b[s]).max() <= 1e-4 for s in a)
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == [bag.name for bag in inputs]  # nothing partial
    # A re-run: one output gone, one partial folder left by a dead run: only that bag is done again.
    import shutil

    shutil.rmtree(tmp_path / "here" / "robot2")
    (tmp_path / "here" / ".partial" / "robot2").mkdir(parents=True)
    again = run_cli("bags", str(tmp_path / "here"), *map(str, inputs), *_options(checkpoint))
    assert again.returncode == 0, again.stderr
    assert "bags: 1 done, 3 skipped (output exists), 0 failed" in again.stdout
    assert f"{inputs[0]}: skipped, {tmp_path / 'here' / 'robot0'} exists" in again.stdout
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == [bag.name for bag in inputs]
    assert sorted(_disparities(tmp_path / "here" / "robot2")) == sorted(_disparities(tmp_path / "ray" / "robot2"))


def test_a_bad_bag_fails_alone_and_the_status_says_so(tmp_path, checkpoint):
    inputs = _bags(tmp_path / "in", 2, 1)
    missing = tmp_path / "in" / "gone"
    run = run_cli("bags", str(tmp_path / "out"), str(inputs[0]), str(missing), str(inputs[1]), *_options(checkpoint))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"failed: {missing}: {missing}: no such bag" in run.stdout
    assert "bags: 2 done, 0 skipped (output exists), 1 failed" in run.stdout
    assert run.stderr.strip() == "sgru-stereo bags: error: 1 of 3 bags failed (see above)"


def _convert_workers() -> list[int]:
    """Pids of Ray workers inside BagWorker.convert (Ray names the process after the running method)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::BagWorker.convert"):
                pids.append(int(entry))
    return pids


def test_a_killed_ray_worker_has_its_bag_retried_and_nothing_partial_is_left(tmp_path, checkpoint):
    inputs = _bags(tmp_path / "in", 4, 40)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sgru_ros.cli", "bags", str(out), *map(str, inputs),
                             *_options(checkpoint), "--ray", "--workers", "2"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        workers = _convert_workers()
        if workers and any((out / ".partial").glob("*")):
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed is not None, f"no worker was seen converting: {stdout} {stderr}"
    assert proc.returncode == 0, stderr
    assert "bags: 4 done, 0 skipped (output exists), 0 failed, 1 retried after a worker died" in stdout, stdout
    assert "its worker died" in stdout and "retrying on another" in stdout
    assert sorted(p.name for p in out.iterdir()) == [bag.name for bag in inputs]  # no partial folder left
    for bag in inputs:
        assert len(_disparities(out / bag.name)) == 40


def test_sigterm_stops_the_ray_work_and_leaves_only_complete_bags(tmp_path, checkpoint):
    inputs = _bags(tmp_path / "in", 4, 40)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sgru_ros.cli", "bags", str(out), *map(str, inputs),
                             *_options(checkpoint), "--ray", "--workers", "2"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (_convert_workers() and any((out / ".partial").glob("*"))) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before a worker began writing"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert not (out / ".partial").exists()
    for bag in out.iterdir():  # whatever finished is whole
        assert len(_disparities(bag)) == 40
    deadline = time.monotonic() + 30
    while _convert_workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _convert_workers()


def test_without_ray_the_option_names_the_extra(tmp_path, checkpoint):
    inputs = _bags(tmp_path / "in", 1, 1)
    code = ("import sys; sys.modules['ray'] = None; from sgru_ros.cli import main; sys.exit(main(['bags', "
            f"{str(tmp_path / 'out')!r}, {str(inputs[0])!r}, '--namespace', '/stereo', '--ray']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == "sgru-stereo bags: error: ray is not installed; pip install 'sgru_ros[fleet]'"


def test_a_worker_that_cannot_load_the_model_stops_the_run_with_the_reason(tmp_path):
    inputs = _bags(tmp_path / "in", 2, 1)
    bad = tmp_path / "not_a_model.pth"
    bad.write_bytes(b"not a checkpoint")
    run = run_cli("bags", str(tmp_path / "out"), *map(str, inputs), "--namespace", "/stereo", "--device", "cpu",
                  "--checkpoint", str(bad), "--no-progress", "--ray")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith(f"sgru-stereo bags: error: a Ray worker could not load the model: {bad}: not a readable "
                           "PyTorch checkpoint"), line
    assert not (tmp_path / "out" / ".partial").exists() and not any((tmp_path / "out").iterdir())
