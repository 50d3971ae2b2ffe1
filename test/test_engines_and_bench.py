"""The bench command (a smoke run, no timing assertion), the ONNX export and the onnxruntime engine, the
compiled encoders, and the iteration controls (latency budget, convergence stop)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sgru_ros.calibration import motorcycle_pair
from sgru_ros.inference import StereoEstimator
from sgru_ros.model import RaftConfig, SelectiveRAFT, save_checkpoint

from conftest import SMALL_RAFT, run_cli



def needs_onnx():
    """The onnxruntime tests need the "onnx" extra; the rest of this file does not."""
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A small Selective-RAFT with an edge refinement (like the bundled model) that visibly changes its input."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("speed") / "small.pth"
    model = SelectiveRAFT(RaftConfig(**SMALL_RAFT, edge_width=4, edge_window=5))
    torch.nn.init.normal_(model.edge_refine.head.weight, std=0.1)
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def pair():
    left, right, _ = motorcycle_pair()
    return left[100:200, 200:390], right[100:200, 200:390]  # 190 x 100: padded to 192 x 128


def test_bench_prints_stages_and_writes_json(tmp_path, small_checkpoint):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--checkpoint", str(small_checkpoint), "--device", "cpu", "--size", "64", "128",
                     "--iters", "2", "3", "--repeats", "1", "--warmup", "0", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "ms/frame" in result.stdout and "gru_iteration" in result.stdout
    figures = json.loads(out.read_text())
    assert [f["iters"] for f in figures] == [2, 3]
    for f in figures:
        assert (f["height"], f["width"], f["engine"], f["memory"]) == (64, 128, "torch", "rss")
        assert len(f["iterations_ms"]) == f["iters"]
        assert set(f["stages_ms"]) == {"features", "cost_volume", "context", "gru_iteration", "upsampling"}
        assert all(ms > 0 for ms in f["stages_ms"].values())
        assert f["total_ms"] > 0 and f["fps"] == pytest.approx(1e3 / f["total_ms"])
        assert f["peak_memory_mb"] > 50  # the process holds torch: tens of MB at least


def test_bench_rejects_random_weights_without_a_variant():
    result = run_cli("bench", "--random-weights", "--size", "64", "128")
    assert result.returncode == 1
    assert result.stderr.strip() == ("sgru-stereo bench: error: --random-weights needs --variant raft|igev "
                                     "and no --checkpoint")


def test_export_checks_onnxruntime_against_pytorch(tmp_path, small_checkpoint):
    onnxruntime = needs_onnx()
    onnx = tmp_path / "small.onnx"
    result = run_cli("export", "--checkpoint", str(small_checkpoint), "--onnx", str(onnx), "--height", "64",
                     "--width", "128", "--iters", "3", "--output-iters", "1")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("onnxruntime (CPU) vs PyTorch")]
    assert [line.split(",")[1].split(":")[0].strip() for line in lines] == ["disparity_1", "disparity_3"]
    for line in lines:
        assert float(line.split("max |difference| ")[1].split(" px")[0]) < 1e-3
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["disparity_1", "disparity_3"]
    assert session.get_inputs()[0].shape == [1, 3, 64, 128]


def test_onnxruntime_engine_matches_torch_and_caches_per_resolution(tmp_path, monkeypatch, small_checkpoint,
                                                                     pair):
    needs_onnx()
    monkeypatch.setenv("SGRU_ROS_CACHE", str(tmp_path / "cache"))
    torch_engine = StereoEstimator.from_checkpoint(small_checkpoint, device="cpu")
    onnx_engine = StereoEstimator.from_checkpoint(small_checkpoint, device="cpu", engine="onnxruntime")
    left, right = pair
    expected = torch_engine.estimate(left, right, iters=3, output_iters=[2])
    got = onnx_engine.estimate(left, right, iters=3, output_iters=[2])
    assert got.disparity.shape == left.shape[:2]
    assert np.abs(got.disparity - expected.disparity).max() < 1e-3
    assert np.abs(got.intermediate[2] - expected.intermediate[2]).max() < 1e-3
    assert got.iterations == 3
    files = sorted(p.name for p in (tmp_path / "cache").glob("*.onnx"))
    assert len(files) == 1 and "-192x128-3it-2-" in files[0]  # the padded size and the schedule
    # a second estimator (another process, in practice) reuses the file
    mtime = (tmp_path / "cache" / files[0]).stat().st_mtime_ns
    StereoEstimator.from_checkpoint(small_checkpoint, device="cpu", engine="onnxruntime").estimate(
        left, right, iters=3, output_iters=[2])
    assert (tmp_path / "cache" / files[0]).stat().st_mtime_ns == mtime
    # A subset of a graph's outputs, or intermediate outputs named up front, never export again.
    exports = []
    named = StereoEstimator.from_checkpoint(small_checkpoint, device="cpu", engine="onnxruntime",
                                            onnx_output_iters=[1], log=exports.append)
    named.estimate(left, right, iters=3)
    assert np.abs(named.estimate(left, right, iters=3, output_iters=[1]).intermediate[1]
                  - torch_engine.estimate(left, right, iters=3, output_iters=[1]).intermediate[1]).max() < 1e-3
    assert len([line for line in exports if line.startswith("exporting")]) == 1
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.onnx"))[0].count("-3it-1-") == 1
    with pytest.raises(ValueError, match="need the torch engine"):
        onnx_engine.estimate(left, right, iters=3, budget_ms=100.0)
    with pytest.raises(ValueError, match="bf16 is for the torch engine"):
        StereoEstimator.from_checkpoint(small_checkpoint, device="cpu", engine="onnxruntime", precision="bf16")


def test_a_latency_budget_cuts_the_iterations_and_the_time(small_checkpoint, pair):
    estimator = StereoEstimator.from_checkpoint(small_checkpoint, device="cpu")
    left, right = pair
    full = estimator.estimate(left, right, iters=40, output_iters=[5])
    assert full.iterations == 40
    import time

    start = time.perf_counter()
    estimator.estimate(left, right, iters=40)
    whole_ms = (time.perf_counter() - start) * 1e3
    budget = whole_ms / 4
    cut = estimator.estimate(left, right, iters=40, output_iters=[5], budget_ms=budget)
    assert 6 <= cut.iterations < 40  # never before the intermediate output asked for
    assert set(cut.intermediate) == {5}
    # the stop is exact: the pass just ended at that iteration count
    same = estimator.estimate(left, right, iters=cut.iterations)
    assert np.abs(cut.disparity - same.disparity).max() < 1e-4
    tiny = estimator.estimate(left, right, iters=40, budget_ms=1e-3)
    assert tiny.iterations == 1 and not tiny.intermediate


def test_the_convergence_stop_ends_when_updates_are_small(small_checkpoint, pair):
    estimator = StereoEstimator.from_checkpoint(small_checkpoint, device="cpu")
    left, right = pair
    never = estimator.estimate(left, right, iters=6, converged_px=1e-12)
    assert never.iterations == 6
    at_once = estimator.estimate(left, right, iters=6, converged_px=1e9)
    assert at_once.iterations == 1
    first = estimator.estimate(left, right, iters=1)
    assert np.abs(at_once.disparity - first.disparity).max() < 1e-4


@pytest.mark.parametrize("variant", ["raft", "igev"])
def test_compiled_encoders_match_eager_once_per_size_and_still_cancel(variant, pair):
    """torch.compile of the encoders (inductor builds C++ here): the same disparities, one compilation
    per input size (announced in the log), and the cancel check still runs before each encoder."""
    import copy
    import threading

    from torch._dynamo.utils import counters

    from sgru_ros.inference import InferenceCancelled
    from sgru_ros.model import IGEVConfig, SelectiveIGEV

    torch.manual_seed(0)
    model = SelectiveRAFT(RaftConfig(**SMALL_RAFT)) if variant == "raft" else SelectiveIGEV(IGEVConfig())
    left, right = pair
    eager = StereoEstimator(copy.deepcopy(model), device="cpu").estimate(left, right, iters=3).disparity
    lines = []
    compiled = StereoEstimator(model, device="cpu", compile=True, log=lines.append)
    graphs = counters["stats"]["unique_graphs"]
    result = compiled.estimate(left, right, iters=3).disparity
    assert counters["stats"]["unique_graphs"] >= graphs + len(model.encoder_names)  # each encoder is one graph
    assert np.abs(result - eager).max() < 1e-3
    graphs = counters["stats"]["unique_graphs"]
    compiled.estimate(left, right, iters=3)
    assert counters["stats"]["unique_graphs"] == graphs and len(lines) == 1  # same size: nothing compiled
    assert lines[0] == ("compiling the encoders for the network input of 192x128 (the first frame of each size; "
                        "seconds to a minute)")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InferenceCancelled):  # at a new size: the check comes before the first encoder compiles
        compiled.estimate(left[:, :160], right[:, :160], iters=3, cancel=cancel)
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_failed_compilation_falls_back_to_eager(small_checkpoint, pair, monkeypatch, tmp_path):
    """Inductor failing at the first frame (here: its C++ compiler gone after the start-up check)
    is said once and the encoders run eagerly from then on, with the eager answer."""
    import torch._inductor.config

    left, right = (image[:, :100] for image in pair)  # a size no other test compiles: nothing in memory either
    eager = StereoEstimator.from_checkpoint(small_checkpoint, device="cpu").estimate(left, right, iters=2).disparity
    lines = []
    compiled = StereoEstimator.from_checkpoint(small_checkpoint, device="cpu", compile=True, log=lines.append)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing cached: inductor must compile
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",)}):
        result = compiled.estimate(left, right, iters=2).disparity
    assert np.abs(result - eager).max() < 1e-4 and not compiled.compiled
    assert len(lines) == 2 and lines[1].startswith("compiling the encoders failed, running them eagerly from now "
                                                   "on: InvalidCxxCompiler: No working C++ compiler found")
    compiled.estimate(left, right, iters=2)
    assert len(lines) == 2


def test_compile_is_refused_with_onnxruntime_and_without_a_cxx_compiler(small_checkpoint):
    with pytest.raises(ValueError, match="compile is for the torch engine"):
        StereoEstimator.from_checkpoint(small_checkpoint, device="cpu", engine="onnxruntime", compile=True)
    import torch._inductor.config

    with (torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",)}),
          pytest.raises(ValueError, match=r"^compile needs a C\+\+ compiler for PyTorch's inductor on the CPU")):
        StereoEstimator.from_checkpoint(small_checkpoint, device="cpu", compile=True)
    done = run_cli("bench", "--checkpoint", str(small_checkpoint), "--device", "cpu", "--compile", "--size", "64",
                   "128", "--iters", "1", env={"CXX": "/nonexistent/g++"})
    assert done.returncode == 1 and not done.stdout
    assert done.stderr.startswith("sgru-stereo bench: error: compile needs a C++ compiler") and \
        done.stderr.count("\n") == 1
    done = run_cli("export", "--checkpoint", str(small_checkpoint), "--compile", "--onnx", "/nonexistent/x.onnx",
                   "--height", "64", "--width", "128", "--iters", "1")
    assert done.returncode == 1
    assert done.stderr == "sgru-stereo export: error: export takes no --compile: the ONNX graph is traced from the " \
        "eager network\n"


def test_the_latency_budget_reserves_the_final_upsampling_and_times_updates_alone():
    from sgru_ros.inference import IterationStop

    def rule(times, upsample_s, outputs=()):
        clock = iter(times).__next__
        stop = IterationStop(0.0, 100.0, None, 1.0, torch.device("cpu"), outputs=outputs, upsample_s=upsample_s,
                             clock=clock)
        return [stop(k, torch.zeros(1)) for k in range(1, len(times) + 1)], stop

    # Updates of 10 ms after 40 ms of encoders; a final upsampling of 25 ms must still fit in 100 ms.
    times = [0.040, 0.050, 0.060, 0.070, 0.080, 0.090, 0.100]
    stops, _ = rule(times, upsample_s=0.025)
    assert stops.index(True) == 3  # after update 4 (70 ms): a fifth and the upsampling would end at 105 ms
    stops, _ = rule(times, upsample_s=0.0)
    assert stops.index(True) == 6  # not reserving it: one more update, then 25 ms over
    # An update that followed an intermediate output's upsampling is timed without it.
    # (Counted as an update, the 35 ms from 20 to 55 ms would stop the pass at update 3.)
    stops, stop = rule([0.010, 0.020, 0.055, 0.065], upsample_s=0.025, outputs=[2])
    assert stop.update_s == pytest.approx(0.010) and stops == [False, False, False, False]
    # After the pass: what the final upsampling took (less the last update when no stop ended it).
    assert stop.final_upsampling_s(0.125, ran_to_the_end=False) == pytest.approx(0.060)
    assert stop.final_upsampling_s(0.125, ran_to_the_end=True) == pytest.approx(0.050)
