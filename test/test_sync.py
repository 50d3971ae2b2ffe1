"""The synchroniser's exact and approximate policies."""

from __future__ import annotations

import pytest

from sgru_ros.sync import StereoSynchronizer

MS = 1_000_000


def test_exact_needs_identical_stamps():
    sync = StereoSynchronizer(inputs=3, queue_size=5)
    assert sync.add(0, 100, "a0") is None
    assert sync.add(1, 100, "b0") is None
    assert sync.add(2, 101, "c-off") is None  # 1 ns apart: no exact match
    assert sync.add(2, 100, "c0") == ["a0", "b0", "c0"]
    # Emitted stamps and older ones are gone: a late duplicate does not re-emit.
    assert sync.add(0, 100, "a0-again") is None
    assert sync.stats.emitted == 1


def test_exact_out_of_order_arrivals():
    sync = StereoSynchronizer(inputs=2, queue_size=5)
    sync.add(0, 200, "a200")
    sync.add(0, 300, "a300")
    assert sync.add(1, 300, "b300") == ["a300", "b300"]
    assert sync.add(1, 200, "b200") is None  # older than the last set: dropped, never emitted


def test_approximate_within_tolerance():
    sync = StereoSynchronizer(inputs=2, queue_size=5, tolerance_ns=10 * MS)
    sync.add(0, 1000 * MS, "l")
    assert sync.add(1, 1030 * MS, "r-late") is None  # 30 ms apart
    assert sync.add(0, 1032 * MS, "l2") == ["l2", "r-late"]


def test_queue_size_bounds_memory():
    sync = StereoSynchronizer(inputs=2, queue_size=2)
    for t in range(10):
        sync.add(0, t, f"a{t}")
    assert len(sync.queues[0]) == 2
    assert sync.add(1, 3, "b3") is None  # a3 fell out of the queue
    assert sync.add(1, 9, "b9") == ["a9", "b9"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="need at least one input and a queue of at least 1"):
        StereoSynchronizer(inputs=2, queue_size=0)
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        StereoSynchronizer(inputs=2, queue_size=1, tolerance_ns=-1)


def test_every_message_is_accounted_for():
    """Each message ends in a set, is still queued, or is counted as unmatched."""
    import random

    from sgru_ros.sync import StereoSynchronizer

    rng = random.Random(0)
    for tolerance in (None, 5):
        sync = StereoSynchronizer(4, queue_size=3, tolerance_ns=tolerance)
        received = [0] * 4
        events = [(stamp * 10 + rng.randint(0, 3 if tolerance else 0), i) for stamp in range(200) for i in range(4)
                  if rng.random() > 0.1]
        rng.shuffle(events)  # arbitrary arrival order and losses
        for stamp, i in events:
            sync.add(i, stamp, (i, stamp))
            received[i] += 1
        for i in range(4):
            assert received[i] == sync.stats.emitted + sync.stats.unmatched[i] + len(sync.queues[i])


def test_stamps_going_backwards_are_never_emitted_twice_nor_counted_negative():
    from sgru_ros.sync import StereoSynchronizer

    sync = StereoSynchronizer(2, queue_size=5)
    sync.add(0, 200, "a200")
    sync.add(0, 100, "a100")  # a bag that loops, a driver restart
    assert sync.add(1, 100, "b100") == ["a100", "b100"]
    assert sync.add(1, 100, "b100 again") is None
    assert min(sync.stats.unmatched) >= 0
    assert sync.add(1, 200, "b200") == ["a200", "b200"]


def test_a_repeated_stamp_is_not_emitted_again_and_is_counted():
    """A driver that publishes the same frame five times: one set, four repeats per input counted; a later
    or an earlier stamp (a bag that loops) still forms sets."""
    from sgru_ros.sync import StereoSynchronizer

    for tolerance in (None, 5):
        sync = StereoSynchronizer(2, queue_size=5, tolerance_ns=tolerance)
        sets = [sync.add(i, 100, f"{i}:{n}") for n in range(5) for i in range(2)]
        assert [s for s in sets if s] == [["0:0", "1:0"]]
        assert sync.stats.repeated == [4, 4] and sync.stats.unmatched == [4, 4]
        assert sync.add(0, 200, "a") is None and sync.add(1, 200, "b") == ["a", "b"]
        assert sync.add(0, 50, "c") is None and sync.add(1, 50, "d") == ["c", "d"]


def test_an_unbounded_tolerance_matches_the_nearest_stamps():
    import math

    from sgru_ros.sync import StereoSynchronizer

    sync = StereoSynchronizer(2, queue_size=5, tolerance_ns=math.inf)
    assert sync.add(0, 1_000_000_000, "a1") is None
    assert sync.add(1, 1_005_000_000, "b1") == ["a1", "b1"]  # 5 ms apart: a set, whatever the spread
    sync.add(1, 2_030_000_000, "b2")
    assert sync.add(0, 2_000_000_000, "a2") == ["a2", "b2"]


def test_stamps_are_printed_to_the_nanosecond():
    pytest.importorskip("rclpy")
    from sgru_ros.ros.conversions import stamp_text

    assert stamp_text(1_796_623_022_071_982_453) == "1796623022.071982453"
    assert stamp_text(1_796_623_022_071_982_454) != stamp_text(1_796_623_022_071_982_453)
    assert stamp_text(5) == "0.000000005"
