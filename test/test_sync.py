"""The synchroniser's exact and approximate policies."""

from __future__ import annotations

import math

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


def _stereo_frame(sync, stamp: int, infos: bool = True, calibration: str = "cal") -> list:
    """Left and right images stamped ``stamp`` (and, with ``infos``, both camera_infos first, as drivers send
    them); the sets that came out."""
    sets = []
    for side in (0, 1):
        if infos:
            sets += sync.add_info(side, stamp, calibration, f"info{side}@{stamp}")
        sets += sync.add_image(side, stamp, f"image{side}@{stamp}")
    return sets


def test_each_pair_gets_the_camera_infos_stamped_as_its_images():
    from sgru_ros.sync import CalibratedStereoSync

    sync = CalibratedStereoSync(queue_size=5)
    assert _stereo_frame(sync, 100) == [["image0@100", "image1@100", "info0@100", "info1@100"]]
    # Images first, their camera_infos later: the pair waits for them (one calibration is not yet static).
    assert _stereo_frame(sync, 200, infos=False) == []
    assert sync.add_info(0, 200, "cal", "info0@200") == []
    assert sync.add_info(1, 200, "cal", "info1@200") == [["image0@200", "image1@200", "info0@200", "info1@200"]]
    assert sync.info_stats.borrowed_info == [0, 0] and sync.info_stats.without_info == 0


def test_late_camera_infos_of_a_static_calibration_do_not_hold_the_images_back():
    """Reliable DDS delivers a camera_info sent after a large image seconds late, in bursts: with a static
    calibration a pair is answered with the newest camera_info as soon as the next image shows that its own
    is late, counted; the late ones form no second set."""
    from sgru_ros.sync import CalibratedStereoSync

    sync = CalibratedStereoSync(queue_size=5)
    assert len(_stereo_frame(sync, 100)) == 1 and len(_stereo_frame(sync, 200)) == 1  # two equal calibrations
    assert _stereo_frame(sync, 300, infos=False) == []  # its camera_infos may still come
    for stamp in range(400, 1300, 100):
        assert sync.add_image(0, stamp, f"image0@{stamp}") == [  # a later image: the previous pair goes
            [f"image0@{stamp - 100}", f"image1@{stamp - 100}", "info0@200", "info1@200"]]
        assert sync.add_image(1, stamp, f"image1@{stamp}") == []
    assert sync.info_stats.borrowed_info == [9, 9]
    for stamp in range(300, 1200, 100):  # the burst of late ones
        assert sync.add_info(0, stamp, "cal", f"info0@{stamp}") == []
        assert sync.add_info(1, stamp, "cal", f"info1@{stamp}") == []
    # The newest pair gets its own.
    sync.add_info(0, 1200, "cal", "info0@1200")
    assert sync.add_info(1, 1200, "cal", "info1@1200") == [["image0@1200", "image1@1200", "info0@1200", "info1@1200"]]
    assert sync.info_stats.without_info == 0 and not sync.waiting


def test_a_changed_calibration_is_waited_for_stamp_by_stamp():
    """Two newest camera_infos that differ (zoom, binning, a recalibration): a pair takes only its own; an
    older pair still without one is dropped, counted, once a later pair goes."""
    from sgru_ros.sync import CalibratedStereoSync

    sync = CalibratedStereoSync(queue_size=5)
    _stereo_frame(sync, 100)
    _stereo_frame(sync, 200, calibration="binned")  # differs from the one before
    assert _stereo_frame(sync, 300, infos=False) == []
    assert _stereo_frame(sync, 400, infos=False) == []
    assert sync.add_info(0, 400, "zoomed", "info0@400") == []
    assert sync.add_info(1, 400, "zoomed", "info1@400") == [["image0@400", "image1@400", "info0@400", "info1@400"]]
    assert sync.info_stats.without_info == 1 and sync.info_stats.borrowed_info == [0, 0]  # the pair of 300
    # Static again once two equal ones arrived: the next pair is answered at once.
    _stereo_frame(sync, 500, calibration="zoomed")
    assert _stereo_frame(sync, 600, infos=False) == []
    assert sync.add_image(0, 700, "image0@700") == [["image0@600", "image1@600", "info0@500", "info1@500"]]
    assert sync.info_stats.borrowed_info == [1, 1]


def test_a_static_calibration_of_another_image_size_is_not_borrowed():
    """A camera that switches resolution (binning, ROI): its images wait for a camera_info of their size."""
    from sgru_ros.sync import CalibratedStereoSync

    sync = CalibratedStereoSync(queue_size=5)
    for stamp in (100, 200):
        for side in (0, 1):
            sync.add_info(side, stamp, "full", f"info{side}@{stamp}", size=(640, 480))
            sync.add_image(side, stamp, f"image{side}@{stamp}", size=(640, 480))
    assert sync.add_image(0, 300, "binned0", size=(320, 240)) == []
    assert sync.add_image(1, 300, "binned1", size=(320, 240)) == []
    assert sync.add_image(0, 400, "binned0@400", size=(320, 240)) == []  # later, yet 640x480 does not fit
    sync.add_info(0, 300, "binned", "binned-info0", size=(320, 240))
    assert sync.add_info(1, 300, "binned", "binned-info1", size=(320, 240)) == [
        ["binned0", "binned1", "binned-info0", "binned-info1"]]
    assert sync.info_stats.borrowed_info == [0, 0]


def test_pairs_without_any_camera_info_are_bounded_and_counted():
    from sgru_ros.sync import CalibratedStereoSync

    sync = CalibratedStereoSync(queue_size=3)
    for stamp in range(10):
        assert _stereo_frame(sync, stamp, infos=False) == []
    assert len(sync.waiting) == 3 and sync.info_stats.without_info == 7


def test_approximate_sync_takes_the_nearest_camera_info_within_the_tolerance_once_none_nearer_can_come():
    from sgru_ros.sync import CalibratedStereoSync

    sync = CalibratedStereoSync(queue_size=5, tolerance_ns=10 * MS)
    sync.add_info(0, 95 * MS, "cal", "info0@95")
    sync.add_info(1, 80 * MS, "cal", "info1@80")  # 22 ms off: not this pair's
    sync.add_image(0, 100 * MS, "image0")
    assert sync.add_image(1, 102 * MS, "image1") == []
    assert sync.add_info(1, 104 * MS, "other", "info1@104") == []  # the left camera's may still come nearer
    assert sync.add_info(0, 106 * MS, "cal", "info0@106") == [["image0", "image1", "info0@95", "info1@104"]]
    assert sync.info_stats.borrowed_info == [1, 1]  # stamped otherwise than their images


@pytest.mark.parametrize("tolerance_ns", [None, 1000, math.inf])
def test_a_camera_info_sent_just_after_its_image_is_its_own(tolerance_ns):
    """Image, then camera_info (image_transport's CameraPublisher): each pair gets its own, also with an
    approximate tolerance of more than a frame or none at all (the previous frame's camera_info is near enough,
    but not the nearest that comes)."""
    from sgru_ros.sync import CalibratedStereoSync

    sync = CalibratedStereoSync(queue_size=5, tolerance_ns=tolerance_ns)
    for stamp in range(100, 700, 100):
        sets = []
        for side in (0, 1):
            sets += sync.add_image(side, stamp, f"image{side}@{stamp}")
            sets += sync.add_info(side, stamp, "cal", f"info{side}@{stamp}")
        assert sets == [[f"image0@{stamp}", f"image1@{stamp}", f"info0@{stamp}", f"info1@{stamp}"]]
    assert sync.info_stats.borrowed_info == [0, 0]


def test_flush_answers_the_last_pairs_of_a_recording_and_clear_forgets_everything():
    from sgru_ros.sync import CalibratedStereoSync

    sync = CalibratedStereoSync(queue_size=5)
    _stereo_frame(sync, 100)
    _stereo_frame(sync, 200)
    assert _stereo_frame(sync, 300, infos=False) == []  # no later image will come
    assert sync.flush() == [["image0@300", "image1@300", "info0@200", "info1@200"]]
    assert _stereo_frame(sync, 400, infos=False) == []
    sync.clear()  # inputs unsubscribed while the pair of 400 waits
    assert sync.info_stats.without_info == 1 and not sync.waiting
    sync.add_image(0, 500, "image0@500")
    sync.clear()  # ... while a left image waits for its partner
    assert sync.images.stats.unmatched == [1, 0]
    assert _stereo_frame(sync, 600, infos=False) == [] and sync.add_image(0, 700, "image0@700") == []
    assert _stereo_frame(sync, 800) == [["image0@800", "image1@800", "info0@800", "info1@800"]]


def test_every_image_is_accounted_for_with_late_and_lost_camera_infos():
    """Each image ends in at most one set, is queued, or is counted (unmatched, or a pair without camera_info);
    a camera_info stamped otherwise than its image is counted as borrowed. Arbitrary arrival order and losses."""
    import random

    from sgru_ros.sync import CalibratedStereoSync

    rng = random.Random(1)
    for tolerance in (None, 5, math.inf):
        sync = CalibratedStereoSync(queue_size=3, tolerance_ns=tolerance)
        received, sets = [0, 0], []
        events = [(stamp * 10 + rng.randint(0, 3 if tolerance else 0), i) for stamp in range(200) for i in range(4)
                  if rng.random() > 0.1]
        rng.shuffle(events)
        for stamp, i in events:
            if i < 2:
                sets += sync.add_image(i, stamp, (i, stamp))
                received[i] += 1
            else:
                sets += sync.add_info(i - 2, stamp, "cal" if stamp < 1000 else "new", (i, stamp))
        sets += sync.flush()
        for i in range(2):
            assert received[i] == (len(sets) + sync.images.stats.unmatched[i] + len(sync.images.queues[i])
                                   + sync.info_stats.without_info)
            images = [s[i] for s in sets]
            assert len(set(images)) == len(images)
            borrowed = [s for s in sets if s[2 + i][1] != s[i][1]]
            assert len(borrowed) == sync.info_stats.borrowed_info[i]


def test_a_pair_whose_camera_info_is_late_goes_after_the_grace_period_also_without_a_later_image():
    """A slow camera (or the last frame of a stream): the next image may be far off, the static calibration is not."""
    from sgru_ros.sync import CalibratedStereoSync

    now = [0.0]
    sync = CalibratedStereoSync(queue_size=5, grace_s=0.1, clock=lambda: now[0])
    _stereo_frame(sync, 100)
    _stereo_frame(sync, 200)
    assert _stereo_frame(sync, 300, infos=False) == []
    now[0] = 0.05
    assert sync.release() == []
    now[0] = 0.1
    assert sync.release() == [["image0@300", "image1@300", "info0@200", "info1@200"]]
    assert sync.info_stats.borrowed_info == [1, 1]
