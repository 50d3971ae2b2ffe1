"""The CLI's failures: one line naming the option or file, exit status 1, no traceback, nothing
half-written. Readers refuse crafted headers before allocating; writers are atomic."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest

from sgru_ros.cli import main
from sgru_ros.io import atomic_path, read_disparity, read_image, read_pfm, write_disparity, write_image

from conftest import pair_sequence, run_cli


def one_error_line(proc, command: str) -> str:
    """The single stderr line of a failed run (asserts there is exactly one, and no traceback)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"sgru-stereo {command}: error: "), lines[0]
    return lines[0]


def crafted_png(path, width: int, height: int) -> None:
    """A PNG signature and IHDR declaring width x height, and no image data."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)))


@pytest.mark.parametrize("argv, named", [
    (["infer", "--iters", "10000"], "--iters: '10000' is not an integer in 1..64"),
    (["infer", "--iters", "0"], "--iters: '0'"),
    (["eval", "--iters", "8", "65"], "--iters: '65'"),
    (["eval", "--sgbm-num-disparities", "24"], "--sgbm-num-disparities: '24' is not a positive multiple of 16"),
    (["infer", "--max-disp", "100"], "--max-disp: '100' is not a positive multiple of 32"),
    (["infer", "--max-width", "16"], "--max-width: '16' is not an integer >= 32"),
    (["demo", "--frames", "0"], "--frames: '0' is not an integer >= 1"),
    (["demo", "--iters", "65"], "--iters: '65'"),
    (["demo", "--rate", "-1"], "--rate: '-1' is not a finite number > 0"),
    (["demo", "--rate", "nan"], "--rate: 'nan'"),
    (["demo", "--timeout", "0"], "--timeout: '0'"),
    (["demo", "--timeout", "inf"], "--timeout: 'inf'"),
])
def test_option_values_out_of_range(argv, named, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sgru-stereo {argv[0]}: error: argument ") and named in err, err


def test_iters_out_of_range_in_a_separate_process(stereo_pair_files, tmp_path):
    left, right = stereo_pair_files
    proc = run_cli("infer", "--left", str(left), "--right", str(right), "--out", str(tmp_path / "d.npy"),
                   "--iters", "10000")
    assert "--iters: '10000' is not an integer in 1..64" in one_error_line(proc, "infer")
    assert not (tmp_path / "d.npy").exists()


@pytest.mark.parametrize("color, message", [
    ("missing/c.png", "missing does not exist"),
    ("c.xyz", "unknown image extension '.xyz'; use .png, .jpg"),
])
def test_bad_color_path_fails_before_any_output(color, message, tmp_path, small_raft_checkpoint,
                                                stereo_pair_files):
    left, right = stereo_pair_files
    proc = run_cli("infer", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right),
                   "--out", str(tmp_path / "d.npy"), "--color", str(tmp_path / color), "--iters", "2",
                   "--device", "cpu")
    line = one_error_line(proc, "infer")
    assert f"--color {tmp_path / color}: " in line and message in line, line
    assert proc.stdout == ""  # refused before the model was loaded
    assert not (tmp_path / "d.npy").exists() and not (tmp_path / "missing").exists()


def test_out_equal_to_an_input_is_refused(tmp_path, small_raft_checkpoint, stereo_pair_files):
    left, right = stereo_pair_files
    before = left.read_bytes(), right.read_bytes()
    for out in (left, tmp_path / "link.png"):
        if out != left:
            os.link(left, out)  # another name of the same file
        proc = run_cli("infer", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right),
                       "--out", str(out), "--iters", "2", "--device", "cpu")
        assert f"--out {out}: is the input image {left}" in one_error_line(proc, "infer")
    assert (left.read_bytes(), right.read_bytes()) == before


def test_batch_outputs_may_not_replace_inputs_or_each_other(tmp_path, small_raft_checkpoint, stereo_pair_files):
    left, right = stereo_pair_files
    seq = pair_sequence(tmp_path, stereo_pair_files, 2)
    common = ["--checkpoint", str(small_raft_checkpoint), "--left", str(seq / "*_L.png"),
              "--right", str(seq / "*_R.png"), "--iters", "2", "--device", "cpu"]
    proc = run_cli("infer", *common, "--out", str(seq))  # default png: seq/000_L.png is an input
    assert f"--out {seq / '000_L.png'}: is the input image" in one_error_line(proc, "infer")
    proc = run_cli("infer", *common, "--out", str(tmp_path / "out"), "--color", str(tmp_path / "out"))
    assert "written twice in this run" in one_error_line(proc, "infer")
    assert sorted(p.name for p in seq.iterdir()) == ["000_L.png", "000_R.png", "001_L.png", "001_R.png"]
    assert (seq / "000_L.png").read_bytes() == left.read_bytes() and not (tmp_path / "out").exists()


def test_good_run_writes_disparity_and_color(tmp_path, small_raft_checkpoint, stereo_pair_files):
    left, right = stereo_pair_files
    proc = run_cli("infer", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right),
                   "--out", str(tmp_path / "d.pfm"), "--color", str(tmp_path / "c.jpg"), "--iters", "2",
                   "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert read_pfm(tmp_path / "d.pfm").shape == (100, 150)
    assert read_image(tmp_path / "c.jpg").shape == (100, 150, 3)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("name, content, message", [
    ("crafted.pfm", b"Pf\n100000 100000\n-1\n" + bytes(16), "truncated PFM (100000x100000 declared"),
    ("crafted.png", None, "PNG declares 100000x100000 pixels"),
])
def test_crafted_ground_truth_fails_fast(name, content, message, tmp_path, small_raft_checkpoint,
                                         stereo_pair_files):
    left, right = stereo_pair_files
    gt = tmp_path / name
    if content is None:
        crafted_png(gt, 100000, 100000)
    else:
        gt.write_bytes(content)
    proc = run_cli("eval", "--left", str(left), "--right", str(right), "--gt", str(gt),
                   "--checkpoint", str(small_raft_checkpoint), "--iters", "2", "--device", "cpu", timeout=60)
    line = one_error_line(proc, "eval")
    assert line.startswith(f"sgru-stereo eval: error: {gt}: ") and message in line, line


@pytest.mark.parametrize("content, message", [
    (b"PF\n2 2\n-1\n" + bytes(48), "not a single-channel PFM"),
    (b"Pf\n0 2\n-1\n", "declares 0x2 pixels"),
    (b"Pf\n2 2\nscale\n" + bytes(16), "malformed PFM scale line"),
    (b"Pf\n2 2\n0\n" + bytes(16), "malformed PFM scale line"),
    (b"Pf\n2 2\n-1\n" + bytes(15), "truncated PFM"),
])
def test_read_pfm_checks_the_header(content, message, tmp_path):
    path = tmp_path / "bad.pfm"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_pfm(path)
    assert str(info.value).startswith(f"{path}: ")


def test_png_readers_check_the_file_first(tmp_path):
    crafted_png(tmp_path / "huge.png", 20000, 20000)
    (tmp_path / "fake.png").write_bytes(b"not a png at all, but long enough to hold a header")
    (tmp_path / "fake.jpg").write_bytes(b"not a jpeg")
    for reader in (read_image, read_disparity):
        with pytest.raises(ValueError, match=f"^{tmp_path / 'huge.png'}: PNG declares 20000x20000"):
            reader(tmp_path / "huge.png")
        with pytest.raises(ValueError, match=f"^{tmp_path / 'fake.png'}: not a PNG file"):
            reader(tmp_path / "fake.png")
        with pytest.raises(ValueError, match=f"^{tmp_path / 'gone.png'}: no such file"):
            reader(tmp_path / "gone.png")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'fake.jpg'}: cannot read as an image"):
        read_image(tmp_path / "fake.jpg")


def test_writes_are_whole_or_not_at_all(tmp_path):
    target = tmp_path / "d.png"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        assert temp.parent == tmp_path and temp.suffix == ".png"
        temp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"previous"
    with pytest.raises(ValueError, match="cannot write image"):
        write_image(target, np.zeros((0, 0), np.uint8))  # OpenCV refuses an empty image
    assert target.read_bytes() == b"previous"
    with pytest.raises(ValueError, match="unknown image extension '.xyz'"):
        write_image(tmp_path / "c.xyz", np.zeros((2, 2, 3), np.uint8))
    write_disparity(tmp_path / "d.npy", np.ones((2, 3), np.float32))  # np.save must not add a second .npy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy", "d.png"]
    assert np.array_equal(read_disparity(tmp_path / "d.npy"), np.ones((2, 3), np.float32))


def test_out_of_memory_is_one_line_naming_the_pair(monkeypatch, capsys, tmp_path, small_raft_checkpoint,
                                                   stereo_pair_files):
    import torch

    from sgru_ros.inference import StereoEstimator

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(StereoEstimator, "estimate", exhausted)
    left, right = stereo_pair_files
    status = main(["infer", "--checkpoint", str(small_raft_checkpoint), "--left", str(left), "--right", str(right),
                   "--out", str(tmp_path / "d.npy"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1 and err == f"sgru-stereo infer: error: {left}: out of memory at 150x100 pixels; " \
                                  "try a smaller --max-width\n"
    assert not (tmp_path / "d.npy").exists()


def test_train_options_are_made_from_train_config():
    """Every TrainConfig field is an option of the same name with the field's help and default; what is given
    reaches the config, what is not keeps the field's default."""
    import dataclasses

    from sgru_ros.cli import build_parser
    from sgru_ros.training.train import TrainConfig, config_from_options

    parser = build_parser()
    args = parser.parse_args(["train", "--out", "x", "--batch-size", "16", "--crop", "96", "160",
                              "--val-multiples", "1", "4", "--best-over-multiples", "--photo-dir", "a",
                              "--photo-dir", "b"])
    assert config_from_options(args, TrainConfig) == TrainConfig(
        batch_size=16, crop=(96, 160), val_multiples=(1, 4), best_over_multiples=True, photo_dirs=("a", "b"))
    # Left out: the field's default, photo_dirs' computed one included; a switch can be turned off too.
    assert config_from_options(parser.parse_args(["train", "--out", "x"]), TrainConfig) == TrainConfig()
    assert not config_from_options(parser.parse_args(["train", "--out", "x", "--no-best-over-multiples"]),
                                   TrainConfig).best_over_multiples
    train = next(action for action in parser._subparsers._group_actions[0].choices["train"]._actions
                 if action.dest == "steps")
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "steps")
    assert train.option_strings == ["--steps"] and train.help == f"{field.metadata['help']} (default 2000)"
    with pytest.raises(SystemExit) as exited:
        main(["train", "--out", "x", "--preset", "nope"])
    assert exited.value.code == 1


@pytest.mark.parametrize("module", ["onnx", "onnxscript", "onnxruntime"])
def test_a_missing_extra_is_named_in_one_line(tmp_path, stereo_pair_files, module):
    """Without the `onnx` extra, --engine onnxruntime names what to install (it ended in a traceback)."""
    import subprocess
    import sys

    left, right = stereo_pair_files
    code = (f"import sys; sys.modules[{module!r}] = None; from sgru_ros.cli import main; sys.exit(main(['infer', "
            f"'--left', {str(left)!r}, '--right', {str(right)!r}, '--out', {str(tmp_path / 'd.npy')!r}, "
            "'--engine', 'onnxruntime', '--iters', '1', '--device', 'cpu']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SGRU_ROS_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(f"{module} is not installed; pip install 'sgru_ros[onnx]'")


@pytest.mark.parametrize("command", [["bag", "in", "out"], ["bags", "out", "in"],
                                     ["infer", "--left", "l.png", "--right", "r.png", "--out", "d.npy"]])
def test_init_sgbm_with_onnxruntime_is_refused_up_front(tmp_path, command):
    """onnxruntime runs from the network's own start: the combination is one line before anything loads (it
    skipped every set and still exited 0)."""
    run = run_cli(*command, "--engine", "onnxruntime", "--init", "sgbm")
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().endswith("error: --init sgbm needs --engine torch (onnxruntime starts from the "
                                       "network's own estimate)")
