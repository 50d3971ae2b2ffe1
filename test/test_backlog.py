"""The backlog of synchronised sets: bounded by what can still be answered in time, with a camera period
that one odd stamp does not move."""

from __future__ import annotations

import threading

import pytest

from sgru_ros.backlog import FrameBacklog

PERIOD_NS = 33_333_333  # a 30 Hz camera


def _camera(backlog: FrameBacklog, stamps: list[int], queue_size: int = 10, backlog_seconds: float = 0.5) -> int:
    return sum(backlog.push(f"set {stamp}", stamp, queue_size, backlog_seconds) for stamp in stamps)


def test_the_camera_period_is_the_median_step_and_ignores_jumps_and_backward_stamps():
    backlog = FrameBacklog()
    start = 1_000 * 10**9
    _camera(backlog, [start + i * PERIOD_NS for i in range(10)])
    assert abs(backlog.camera_period - PERIOD_NS / 1e9) < 1e-6
    # A set stamped 0 (a driver without a clock yet), then the camera again, then one far in the future.
    _camera(backlog, [0, start + 10 * PERIOD_NS, start + 11 * PERIOD_NS, start + 10**13, start + 12 * PERIOD_NS])
    assert abs(backlog.camera_period - PERIOD_NS / 1e9) < 1e-6


@pytest.mark.parametrize("factor", [2, 6])
def test_a_camera_that_changes_its_rate_is_followed(factor):
    backlog = FrameBacklog()
    stamps = [i * PERIOD_NS for i in range(1, 16)]
    stamps += [stamps[-1] + i * factor * PERIOD_NS for i in range(1, 16)]  # 15 Hz or 5 Hz from now on
    _camera(backlog, stamps)
    assert abs(backlog.camera_period - factor * PERIOD_NS / 1e9) < 1e-6


def test_a_burst_after_a_stamp_outlier_keeps_the_latency_bound():
    """A node at 0.5 s per frame behind a 30 Hz camera keeps (backlog_seconds + period) / 0.5 = 1 set waiting:
    before, a set stamped 0 followed by the camera's stamps made the period about 1000 s and let every set of
    the burst wait (latency growing with the burst)."""
    backlog = FrameBacklog()
    backlog.frame_done(0.5)
    start = 1_000 * 10**9
    _camera(backlog, [start + i * PERIOD_NS for i in range(5)])
    dropped = _camera(backlog, [0] + [start + (5 + i) * PERIOD_NS for i in range(10)])
    assert len(backlog) == 1 and dropped == 11  # one set waits: each of the 11 pushed out the one before
    cancel = threading.Event()
    assert backlog.pop(cancel) == f"set {start + 14 * PERIOD_NS}"  # the newest
