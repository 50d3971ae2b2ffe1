"""The inference API: any size, resizing, precision, intermediate iterations, warm start; the infer CLI."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from sgru_ros.inference import Padding, StereoEstimator
from sgru_ros.io import read_disparity, read_image, read_pfm, write_disparity, write_pfm

from conftest import REPO, pair_sequence, run_cli


@pytest.fixture
def estimator(small_raft_checkpoint):
    return StereoEstimator.from_checkpoint(small_raft_checkpoint, device="cpu")


def test_padding_roundtrip():
    pad = Padding.for_size(100, 150)
    assert (pad.top + pad.bottom, pad.left + pad.right) == (28, 10)
    assert (pad.left, pad.right) == (5, 5) and (pad.top, pad.bottom) == (14, 14)
    assert Padding.for_size(64, 96) == Padding(0, 0, 0, 0)
    import torch

    image = torch.arange(2 * 100 * 150, dtype=torch.float32).view(1, 2, 100, 150)
    padded = pad.pad(image)
    assert padded.shape == (1, 2, 128, 160)
    # Edge replication: the border rows and columns repeat the image's outermost ones.
    assert torch.equal(padded[..., :14, 5:155], image[..., :1, :].expand(1, 2, 14, 150))
    assert torch.equal(padded[..., 14:114, :5], image[..., :, :1].expand(1, 2, 100, 5))
    assert torch.equal(pad.unpad(padded), image)
    assert Padding.for_size(64, 96).pad(image) is image


def test_any_size_in_input_size_out(estimator, stereo_pair_files):
    left, right = (read_image(p) for p in stereo_pair_files)
    result = estimator.estimate(left, right, iters=3, output_iters=[1, 2])
    assert result.disparity.shape == (100, 150) and result.disparity.dtype == np.float32
    assert sorted(result.intermediate) == [1, 2]
    assert all(d.shape == (100, 150) for d in result.intermediate.values())
    assert not np.allclose(result.intermediate[1], result.disparity)
    mono = estimator.estimate(left[..., 0], right[..., 0], iters=1)
    assert mono.disparity.shape == (100, 150)


def test_max_width_rescales_disparity(small_raft_checkpoint, stereo_pair_files):
    left, right = (read_image(p) for p in stereo_pair_files)
    small = StereoEstimator.from_checkpoint(small_raft_checkpoint, device="cpu", max_width=75)
    assert small.processed_size(100, 150) == (50, 75)
    result = small.estimate(left, right, iters=2)
    assert result.disparity.shape == (100, 150) and result.processed_size == (50, 75)
    # The same pass on the half-size images, upsampled and doubled, is what the estimator returns.
    import cv2
    full = StereoEstimator.from_checkpoint(small_raft_checkpoint, device="cpu")
    half = full.estimate(cv2.resize(left, (75, 50), interpolation=cv2.INTER_AREA),
                         cv2.resize(right, (75, 50), interpolation=cv2.INTER_AREA), iters=2).disparity
    assert np.abs(np.median(result.disparity) - 2 * np.median(half)) < 0.5 * abs(np.median(result.disparity)) + 0.5


def test_warm_start_changes_the_result(estimator, stereo_pair_files):
    left, right = (read_image(p) for p in stereo_pair_files)
    cold = estimator.estimate(left, right, iters=1).disparity
    warm = estimator.estimate(left, right, iters=1, disp_init=np.full((100, 150), 20.0, np.float32)).disparity
    assert np.abs(warm - cold).mean() > 5.0
    with pytest.raises(ValueError, match="disp_init must be 100x150"):
        estimator.estimate(left, right, iters=1, disp_init=np.zeros((10, 10), np.float32))


def test_bf16_runs_on_cpu_and_fp16_is_refused(small_raft_checkpoint, stereo_pair_files):
    left, right = (read_image(p) for p in stereo_pair_files)
    fp32 = StereoEstimator.from_checkpoint(small_raft_checkpoint, device="cpu").estimate(left, right, iters=2)
    bf16 = StereoEstimator.from_checkpoint(small_raft_checkpoint, device="cpu", precision="bf16")
    out = bf16.estimate(left, right, iters=2).disparity
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - fp32.disparity).mean() < 0.1 * np.abs(fp32.disparity).mean() + 0.5
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        StereoEstimator.from_checkpoint(small_raft_checkpoint, device="cpu", precision="fp16")


def test_bad_arguments(estimator, stereo_pair_files):
    left, right = (read_image(p) for p in stereo_pair_files)
    with pytest.raises(ValueError, match="differ in size"):
        estimator.estimate(left, right[:50], iters=1)
    with pytest.raises(ValueError, match="intermediate iterations"):
        estimator.estimate(left, right, iters=2, output_iters=[2])
    with pytest.raises(ValueError, match="unknown device"):
        StereoEstimator(estimator.model, device="tpu")


def test_disparity_file_formats(tmp_path):
    disp = np.linspace(0, 100, 12, dtype=np.float32).reshape(3, 4)
    for ext in ("npy", "pfm"):
        write_disparity(tmp_path / f"d.{ext}", disp)
        assert np.array_equal(read_disparity(tmp_path / f"d.{ext}"), disp)
    write_disparity(tmp_path / "d.png", disp)
    back = read_disparity(tmp_path / "d.png")
    assert np.isnan(back[0, 0])  # 0 means "no value" in KITTI PNGs
    assert np.allclose(back.ravel()[1:], disp.ravel()[1:], atol=1 / 256)
    write_pfm(tmp_path / "inf.pfm", np.array([[1.0, np.inf]], np.float32))
    assert np.isinf(read_pfm(tmp_path / "inf.pfm")[0, 1])
    assert np.isnan(read_disparity(tmp_path / "inf.pfm")[0, 1])
    with pytest.raises(ValueError, match="unknown disparity format"):
        write_disparity(tmp_path / "d.jpg", disp)


def test_cli_glob_patterns_write_a_folder(tmp_path, small_raft_checkpoint, stereo_pair_files):
    left, right = stereo_pair_files
    seq = pair_sequence(tmp_path, stereo_pair_files, 3)
    proc = run_cli("infer", "--checkpoint", str(small_raft_checkpoint), "--left", str(seq / "*_L.png"),
                   "--right", str(seq / "*_R.png"), "--out", str(tmp_path / "out"), "--format", "pfm",
                   "--iters", "2", "--device", "cpu", "--color", str(tmp_path / "color"))
    assert proc.returncode == 0, proc.stderr
    outputs = sorted((tmp_path / "out").glob("*.pfm"))
    assert [p.name for p in outputs] == ["000_L.pfm", "001_L.pfm", "002_L.pfm"]
    first = read_pfm(outputs[0])
    assert first.shape == (100, 150)
    assert all(np.array_equal(read_pfm(p), first) for p in outputs[1:])
    assert len(list((tmp_path / "color").glob("*.png"))) == 3
    proc = run_cli("infer", "--checkpoint", str(small_raft_checkpoint), "--left", str(seq / "*_L.png"),
                   "--right", str(seq / "00[01]_R.png"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "matches 3 files but --right matches 2" in proc.stderr


def test_cli_folder_run_reports_progress_skips_a_broken_pair_and_sums_up(tmp_path, small_raft_checkpoint,
                                                                        stereo_pair_files):
    seq = pair_sequence(tmp_path, stereo_pair_files, 3)
    (seq / "001_R.png").write_bytes(b"not an image")
    proc = run_cli("infer", "--checkpoint", str(small_raft_checkpoint), "--left", str(seq / "*_L.png"),
                   "--right", str(seq / "*_R.png"), "--out", str(tmp_path / "out"), "--iters", "2", "--device", "cpu",
                   "--preview", str(tmp_path / "preview"))
    assert proc.returncode == 1
    assert "pairs: 3, written: 2, skipped: 1 ValueError" in proc.stdout
    assert f"{seq / '001_L.png'}: skipped (" in proc.stderr and "3/3" in proc.stderr  # the bar's last count
    assert proc.stderr.strip().splitlines()[-1] == "sgru-stereo infer: error: 1 of 3 pairs failed (see above)"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000_L.png", "002_L.png"]
    preview = read_image(tmp_path / "preview" / "000_L.png")
    left = read_image(stereo_pair_files[0])
    assert preview.shape == (100, 300, 3) and np.array_equal(preview[:, :150], left)


@pytest.mark.parametrize("variant", ["raft", "igev"])
@pytest.mark.parametrize("size", [(1, 1), (1, 200), (200, 1), (640, 1), (32, 32), (33, 33), (3, 2)])
def test_images_below_the_network_minimum_are_padded_up_to_it(variant, size):
    """The coarsest correlation level (and IGEV's volume) needs a minimum width: tiny images
    are padded up to it by edge replication and the disparity is cropped back."""
    import torch

    from sgru_ros.model import IGEVConfig, RaftConfig, SelectiveIGEV, SelectiveRAFT

    from conftest import SMALL_RAFT

    torch.manual_seed(0)
    model = SelectiveRAFT(RaftConfig(**SMALL_RAFT)) if variant == "raft" else \
        SelectiveIGEV(IGEVConfig(hidden_dim=32, n_gru_layers=2))
    estimator = StereoEstimator(model, device="cpu", max_disp=64)
    h, w = size
    rng = np.random.default_rng(0)
    left, right = (rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(2))
    result = estimator.estimate(left, right, iters=2)
    assert result.disparity.shape == (h, w) and np.isfinite(result.disparity).all()
    min_h, min_w = model.min_input_size(64)
    pad = Padding.for_size(h, w, minimum=(min_h, min_w))
    assert h + pad.top + pad.bottom >= min_h and w + pad.left + pad.right >= min_w


def test_minimum_size_follows_the_architecture():
    from sgru_ros.model import IGEVConfig, RaftConfig, SelectiveIGEV, SelectiveRAFT

    # 1/8 resolution, 4 levels: 8 * 2**3 * 2 = 128 px; 1/4 with 2 levels: 4 * 2 * 2 = 16 -> 32.
    assert SelectiveRAFT(RaftConfig(n_downsample=3, n_gru_layers=2)).min_input_size() == (32, 128)
    assert SelectiveRAFT(RaftConfig(corr_levels=2)).min_input_size() == (32, 32)
    assert SelectiveIGEV(IGEVConfig(hidden_dim=32)).min_input_size(192) == (32, 192)


def test_max_pixels_downscales_large_frames(small_raft_checkpoint):
    capped = StereoEstimator.from_checkpoint(small_raft_checkpoint, device="cpu", max_pixels=2_000_000)
    h, w = capped.processed_size(3000, 4000)
    assert h * w <= 2_000_000 * 1.001 and abs(w / h - 4 / 3) < 0.01
    assert capped.processed_size(480, 640) == (480, 640)
    with pytest.raises(ValueError, match="max_pixels"):
        StereoEstimator.from_checkpoint(small_raft_checkpoint, device="cpu", max_pixels=10)


def test_a_set_cancel_event_stops_the_pass(estimator, stereo_pair_files):
    import threading

    from sgru_ros.inference import InferenceCancelled

    left, right = (read_image(p) for p in stereo_pair_files)
    cancel = threading.Event()
    calls = []

    def cancel_after_two_iterations(*_):
        calls.append(1)
        if len(calls) == 2:
            cancel.set()

    hook = estimator.model.update_block.register_forward_hook(cancel_after_two_iterations)
    try:
        with pytest.raises(InferenceCancelled):
            estimator.estimate(left, right, iters=50, cancel=cancel)
    finally:
        hook.remove()
    assert len(calls) == 2  # the third iteration never ran
    assert estimator.estimate(left, right, iters=2).disparity.shape == (100, 150)  # usable afterwards


def test_out_of_memory_errors_are_recognised():
    import torch

    from sgru_ros.device import is_out_of_memory

    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: can't allocate "
                                         "memory: you tried to allocate 96000000000 bytes."))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError) as err:  # a real allocation failure of this machine's allocator
        torch.empty(1 << 50, dtype=torch.uint8)
    assert is_out_of_memory(err.value)


_PAGE_FAULTS_PER_FRAME = """
import resource, sys, threading
import numpy as np
import sgru_ros.inference as inference
if sys.argv[1] == "default malloc":
    inference.keep_freed_memory = lambda: False
estimator = inference.StereoEstimator.from_checkpoint(None, device="cpu")  # the bundled model
rng = np.random.default_rng(0)
left = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
right = np.roll(left, -8, axis=1)
faults = []
def frames():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        estimator.estimate(left, right, iters=1)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=frames)  # as in the node, whose frames run on a worker thread
thread.start()
thread.join()
print(*faults)
"""


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env={**os.environ, **(env or {})})
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or
                    tuple(int(n) for n in platform.libc_ver()[1].split(".")[:2]) < (2, 35),
                    reason="glibc 2.35 or later (before, blocks of 32 MB and more are always mapped afresh)")
def test_a_cpu_estimator_keeps_freed_memory_for_the_next_frame():
    default = [int(n) for n in _python(_PAGE_FAULTS_PER_FRAME, "default malloc").split()]
    if min(default[3:]) < 20_000:
        pytest.skip(f"frames fault in few pages even with malloc's defaults here ({default}): huge pages?")
    kept = [int(n) for n in _python(_PAGE_FAULTS_PER_FRAME, "kept").split()]
    # The first frames grow the heaps; from then on a 640 x 480 frame reuses them (by default 35,000-50,000
    # fresh 4 KiB pages per frame here, most of them in the edge refinement's 30 MB tensors).
    assert max(kept[3:]) < 2_000, (kept, default)


def test_keeping_freed_memory_leaves_a_users_own_malloc_settings_alone():
    code = "from sgru_ros.device import keep_freed_memory; print(keep_freed_memory())"
    if platform.libc_ver()[0] == "glibc":
        assert _python(code).strip() == "True"
    for env in ({"MALLOC_TRIM_THRESHOLD_": "1048576"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}):
        assert _python(code, env=env).strip() == "False"
