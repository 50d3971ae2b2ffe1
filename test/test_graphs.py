"""CUDA graphs of the fixed-size pass: the cache and the refusals everywhere, capture and replay on a GPU.

CI has no GPU: the replay tests skip there with their reason; scripts/gpu_bench.sh runs the same check
with the released networks and the bundled model on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgru_ros.graphs import GraphCache, GraphedPass, PassKey
from sgru_ros.inference import StereoEstimator
from sgru_ros.model import IGEVConfig, RaftConfig, SelectiveIGEV, SelectiveRAFT

from conftest import SMALL_RAFT

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU (none here)")


def _key(width: int, iters: int = 8) -> PassKey:
    return PassKey(height=480, width=width, iters=iters, outputs=(iters,), precision="fp32")


def test_the_cache_keeps_the_most_recent_passes_and_announces_each_capture():
    lines, built = [], []

    def build(name):
        def entry():
            built.append(name)
            return lambda pair: [pair + len(name)]
        return entry

    cache = GraphCache(max_entries=2, log=lines.append)
    first = cache.get(_key(640), build("a"))
    assert cache.get(_key(640), build("again")) is first  # a hit builds nothing
    cache.get(_key(320), build("b"))
    cache.get(_key(640), build("hit"))  # 640 is now the most recent: 320 goes first
    cache.get(_key(160), build("c"))
    assert built == ["a", "b", "c"] and len(cache) == 2
    assert _key(640) in cache and _key(160) in cache and _key(320) not in cache
    assert lines[0] == ("capturing a CUDA graph for 640x480, 8 iterations, fp32 "
                        "(once per camera size and iteration count; a few passes)")
    assert len(lines) == 3
    returning = PassKey(height=480, width=640, iters=8, outputs=(4, 8), precision="fp16")
    cache.get(returning, build("d"))
    assert "8 iterations, returning 4, fp16" in lines[-1]
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_entries must be at least 1, got 0"):
        GraphCache(max_entries=0)


def test_graphs_are_refused_without_cuda_in_one_line():
    model = SelectiveRAFT(RaftConfig(**SMALL_RAFT))
    with pytest.raises(ValueError, match=r"^graphs need the torch engine on a CUDA device, without compile "
                                         r"\(got engine torch, device cpu\)$"):
        StereoEstimator(model, device="cpu", graphs=True)
    with pytest.raises(ValueError, match="a CUDA graph needs a CUDA tensor, got one on cpu"):
        GraphedPass(lambda pair: [pair], torch.zeros(2, 3, 32, 32))


def test_uint8_and_float_images_give_the_same_disparity():
    """The pair travels to the device in its own dtype and becomes float32 there: same numbers."""
    torch.manual_seed(0)
    estimator = StereoEstimator(SelectiveRAFT(RaftConfig(**SMALL_RAFT)), device="cpu")
    rng = np.random.default_rng(1)
    left, right = (rng.integers(0, 255, (96, 160, 3), dtype=np.uint8) for _ in range(2))
    as_uint8 = estimator.estimate(left, right, iters=2).disparity
    as_float = estimator.estimate(left.astype(np.float32), right.astype(np.float32), iters=2).disparity
    np.testing.assert_array_equal(as_uint8, as_float)


def _networks():
    torch.manual_seed(0)
    return {"raft": SelectiveRAFT(RaftConfig(**SMALL_RAFT)),
            "igev": SelectiveIGEV(IGEVConfig(hidden_dim=32, n_gru_layers=2))}


@needs_cuda
@pytest.mark.parametrize("variant", ["raft", "igev"])
@pytest.mark.parametrize("size", [(120, 200), (96, 160)])
def test_replay_matches_the_eager_pass(variant, size):
    model = _networks()[variant]
    eager = StereoEstimator(model, device="cuda", max_disp=64)
    lines = []
    graphed = StereoEstimator(model, device="cuda", max_disp=64, graphs=True, log=lines.append)
    rng = np.random.default_rng(0)
    for frame in range(3):  # the replay reads each new frame, not the captured one
        left, right = (rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(2))
        want = eager.estimate(left, right, iters=4, output_iters=[2])
        got = graphed.estimate(left, right, iters=4, output_iters=[2])
        assert np.abs(got.disparity - want.disparity).max() < 1e-3, frame
        assert np.abs(got.intermediate[2] - want.intermediate[2]).max() < 1e-3, frame
    assert len(lines) == 1 and "capturing a CUDA graph" in lines[0]


@needs_cuda
def test_frames_a_graph_cannot_hold_run_eagerly_and_cancel_is_checked_before_replay():
    import threading

    from sgru_ros.inference import InferenceCancelled

    model = _networks()["raft"]
    lines = []
    estimator = StereoEstimator(model, device="cuda", graphs=True, log=lines.append)
    rng = np.random.default_rng(0)
    left, right = (rng.integers(0, 255, (96, 160, 3), dtype=np.uint8) for _ in range(2))
    warm = estimator.estimate(left, right, iters=2, disp_init=np.full((96, 160), 5.0, np.float32))
    stopped = estimator.estimate(left, right, iters=6, converged_px=1e9)
    assert lines == [] and stopped.iterations == 1 and warm.iterations == 2
    estimator.estimate(left, right, iters=2)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InferenceCancelled):
        estimator.estimate(left, right, iters=2, cancel=cancel)


def test_close_lets_go_of_the_model():
    """An estimator's cancel hooks sit on the model's stages: close() removes them, so a model that serves
    estimator after estimator (the GPU benchmark's cells) runs no stale hooks."""
    model = SelectiveRAFT(RaftConfig(**SMALL_RAFT))
    hooks = lambda: sum(len(stage._forward_pre_hooks) for stage in model.children())  # noqa: E731
    first = StereoEstimator(model, device="cpu")
    second = StereoEstimator(model, device="cpu")
    assert hooks() == 2 * len(list(model.children()))
    first.close()
    assert hooks() == len(list(model.children()))
    second.close()
    first.close()  # twice is harmless
    assert hooks() == 0
