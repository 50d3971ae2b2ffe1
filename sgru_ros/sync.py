"""Time synchronisation of the stereo inputs, with message_filters' semantics.

ROS 2's message_filters is not installable everywhere this package runs, so
the policies are written here (no ROS import): ``exact`` matches identical
stamps (TimeSynchronizer), ``approximate`` matches stamps within a tolerance
(ApproximateTimeSynchronizer with ``slop``; a tolerance of ``math.inf``: no bound,
the nearest stamps whatever their spread, as stereo_image_proc's tolerance 0.0). Each input keeps at most
``queue_size`` messages; once a set is emitted, everything at or before its
stamps is dropped, so sets come out in time order and never twice. A message
stamped exactly as its input's last emitted one (a driver that publishes the
same frame again) is dropped on arrival and counted in ``repeated``; earlier
stamps still form sets (a bag that loops, a driver restart).

``CalibratedStereoSync`` is what the node and the bag tool use: the two images
are synchronised as above, and each pair is then joined with each camera's
camera_info: the one stamped as its image, or (approximate) the nearest within
the tolerance once nothing nearer can come. A camera_info is small but is often
sent right after a large image, and reliable DDS then tends to deliver it only
with its next repair, seconds late (measured: in 3 s bursts from a 5 Hz camera
with nothing else running). Waiting for it would leave most image pairs
unmatched, so while a camera's calibration is static (its two newest
camera_infos carry the same calibration) the newest one answers a pair whose own
has not come by the time a later image (or a later camera_info of that camera)
arrives or ``grace_s`` after the pair formed, if it describes images of the
pair's size; counted in ``borrowed_info``. Drivers that send the camera_info just after its image
(image_transport's CameraPublisher) get their own whenever it comes before the
next image or within ``grace_s``. A change of image size (binning, ROI) is waited for, stamp by stamp;
a new calibration of the same size (a recalibration, a zoom) is taken from the
first camera_info that carries it on, and frames before that one whose own
camera_info is late get the calibration before it.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class SyncStats:
    emitted: int = 0
    last_stamps: list[int | None] | None = None  # newest stamp seen per input (ns)
    #: Messages per input that left the queues without joining a set (pushed out by a full queue, or
    #: older than an emitted set): with ``emitted`` and the queues they account for every message.
    unmatched: list[int] | None = None
    #: Of those, messages stamped exactly as the input's last emitted message (dropped on arrival).
    repeated: list[int] | None = None


class StereoSynchronizer:
    """Feed messages with ``add``; it returns a complete set (a list ordered
    like the inputs) when one forms, else None."""

    def __init__(self, inputs: int, queue_size: int, tolerance_ns: float | None = None) -> None:
        if inputs < 1 or queue_size < 1:
            raise ValueError("need at least one input and a queue of at least 1")
        if tolerance_ns is not None and tolerance_ns < 0:
            raise ValueError("tolerance must be >= 0")
        self.tolerance_ns = tolerance_ns
        self.queues: list[deque[tuple[int, Any]]] = [deque(maxlen=queue_size) for _ in range(inputs)]
        self.stats = SyncStats(last_stamps=[None] * inputs, unmatched=[0] * inputs, repeated=[0] * inputs)
        self._emitted_stamps: list[int | None] = [None] * inputs  # per input, the stamp of its last emitted message

    def stamp_spread_ns(self) -> int | None:
        """Spread (max - min) of the newest stamp of each input; None until every input has one."""
        stamps = self.stats.last_stamps
        if any(s is None for s in stamps):
            return None
        return max(stamps) - min(stamps)

    def add(self, index: int, stamp_ns: int, message: Any) -> list[Any] | None:
        self.stats.last_stamps[index] = stamp_ns
        if stamp_ns == self._emitted_stamps[index]:
            self.stats.repeated[index] += 1
            self.stats.unmatched[index] += 1
            return None
        queue = self.queues[index]
        if len(queue) == queue.maxlen:
            self.stats.unmatched[index] += 1  # the oldest is pushed out
        queue.append((stamp_ns, message))
        chosen = self._exact(stamp_ns) if self.tolerance_ns is None else self._approximate(index, stamp_ns)
        if chosen is None:
            return None
        for i, (queue, (stamp, _)) in enumerate(zip(self.queues, chosen)):
            # Everything at or before the set's stamp goes (also out of order, e.g. a bag that loops).
            kept = [item for item in queue if item[0] > stamp]
            self.stats.unmatched[i] += len(queue) - len(kept) - 1  # all but the message of the set
            queue.clear()
            queue.extend(kept)
            self._emitted_stamps[i] = stamp
        self.stats.emitted += 1
        return [message for _, message in chosen]

    def clear(self) -> None:
        """Drop every queued message (counted as unmatched); what was emitted still counts as emitted."""
        for i, queue in enumerate(self.queues):
            self.stats.unmatched[i] += len(queue)
            queue.clear()

    def _exact(self, stamp_ns: int) -> list[tuple[int, Any]] | None:
        chosen = []
        for queue in self.queues:
            match = next((item for item in reversed(queue) if item[0] == stamp_ns), None)
            if match is None:
                return None
            chosen.append(match)
        return chosen

    def _approximate(self, index: int, stamp_ns: int) -> list[tuple[int, Any]] | None:
        chosen = []
        for i, queue in enumerate(self.queues):
            if i == index:
                chosen.append(queue[-1])
                continue
            if not queue:
                return None
            chosen.append(min(queue, key=lambda item: abs(item[0] - stamp_ns)))
        stamps = [stamp for stamp, _ in chosen]
        return chosen if max(stamps) - min(stamps) <= self.tolerance_ns else None


@dataclass
class CameraInfoStats:
    #: Per camera: pairs answered with a camera_info stamped otherwise than their image (their own late or lost).
    borrowed_info: list[int]
    #: Image pairs dropped without a camera_info: none of their stamp (nor, approximate, within the tolerance)
    #: and no static calibration of their size, by the time a later pair went or the queue was full.
    without_info: int = 0


@dataclass(frozen=True)
class _Info:
    stamp: int
    calibration: Hashable
    message: Any
    size: Any


class _CameraInfos:
    """One camera's newest camera_infos (at most ``depth``): in arrival order (the newest, and whether the
    calibration is static) and in stamp order (the nearest to a stamp, by bisection)."""

    def __init__(self, depth: int) -> None:
        self._depth = depth
        self._arrival: deque[_Info] = deque()
        self._stamps: list[int] = []  # sorted
        self._by_stamp: list[_Info] = []  # in the order of _stamps

    def __bool__(self) -> bool:
        return bool(self._arrival)

    def add(self, info: _Info) -> None:
        self._arrival.append(info)
        if len(self._arrival) > self._depth:
            oldest = self._arrival.popleft()
            i = bisect.bisect_left(self._stamps, oldest.stamp)
            while self._by_stamp[i] is not oldest:
                i += 1
            del self._stamps[i], self._by_stamp[i]
        i = bisect.bisect_right(self._stamps, info.stamp)
        self._stamps.insert(i, info.stamp)
        self._by_stamp.insert(i, info)

    def nearest(self, stamp: int) -> _Info:
        i = bisect.bisect_left(self._stamps, stamp)
        candidates = self._by_stamp[max(i - 1, 0):i + 1]
        return min(candidates, key=lambda info: abs(info.stamp - stamp))

    @property
    def latest_stamp(self) -> int:
        return self._stamps[-1]

    @property
    def newest(self) -> _Info:
        return self._arrival[-1]

    @property
    def static(self) -> bool:
        """The two newest carry the same calibration."""
        return len(self._arrival) >= 2 and self._arrival[-1].calibration == self._arrival[-2].calibration


class CalibratedStereoSync:
    """The two images synchronised (``images``, a ``StereoSynchronizer``), each pair joined with its cameras'
    camera_infos. Feed ``add_image(side, stamp, image, size)`` and ``add_info(side, stamp, calibration, info,
    size)`` (side 0 left, 1 right; ``calibration``: any hashable value equal for equal calibrations; ``size``:
    the image size, or the size of the images a camera_info describes; None: unknown, e.g. a compressed image
    not decoded yet); both return the sets that became complete, oldest first, each
    ``[left, right, left_info, right_info]``. ``release`` (call it periodically, live) gives the pairs that
    waited ``grace_s``; ``flush`` answers the pairs still waiting (the end of a recording); ``clear`` drops
    everything held (inputs unsubscribed), counted.

    queue_size: images per input and pairs waiting for camera_infos; info_depth: camera_infos kept per
    camera; tolerance_ns as ``StereoSynchronizer``'s; grace_s: how long a pair waits for its own camera_info
    before it counts as late also without a later image (None: only a later image tells, as offline);
    clock: seconds, for ``grace_s``."""

    def __init__(self, queue_size: int, tolerance_ns: float | None = None, info_depth: int | None = None,
                 grace_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.images = StereoSynchronizer(2, queue_size, tolerance_ns)
        self.tolerance_ns = tolerance_ns
        self.info_stats = CameraInfoStats(borrowed_info=[0, 0])
        self._info_depth = info_depth or 10 * queue_size
        self._infos = [_CameraInfos(self._info_depth) for _ in range(2)]
        self.last_info_stamps: list[int | None] = [None, None]  # newest stamp received per camera
        #: image pairs waiting for camera_infos, oldest first: ([(stamp, size) left, right], [left, right], formed)
        self.waiting: deque[tuple[list[tuple[int, Any]], list[Any], float]] = deque()
        self._queue_size = queue_size
        self._grace_s = grace_s
        self._clock = clock

    def add_image(self, side: int, stamp_ns: int, image: Any, size: Any = None) -> list[list[Any]]:
        pair = self.images.add(side, stamp_ns, (stamp_ns, size, image))
        if pair is not None:
            self.waiting.append(([(stamp, size) for stamp, size, _ in pair], [image for _, _, image in pair],
                                 self._clock()))
            if len(self.waiting) > self._queue_size:
                self.waiting.popleft()
                self.info_stats.without_info += 1
        return self._release()

    def add_info(self, side: int, stamp_ns: int, calibration: Hashable, info: Any, size: Any = None) -> list[list[Any]]:
        self._infos[side].add(_Info(stamp_ns, calibration, info, size))
        self.last_info_stamps[side] = stamp_ns
        return self._release()

    def release(self) -> list[list[Any]]:
        """The waiting pairs that have their camera_infos now, ``grace_s`` counted (a timer's call)."""
        return self._release()

    def flush(self) -> list[list[Any]]:
        """The waiting pairs answered as if a later image had come (no more will); the rest dropped, counted."""
        return self._release(final=True)

    def clear(self) -> None:
        """Drop the queued images, the waiting pairs and the camera_infos, counted (``unmatched``, ``without_info``):
        after a pause nothing from before it is answered, and the calibration must show again that it is static."""
        self.images.clear()
        self.info_stats.without_info += len(self.waiting)
        self.waiting.clear()
        self._infos = [_CameraInfos(self._info_depth) for _ in range(2)]

    def _info_for(self, side: int, stamp_ns: int, size: Any, late: bool) -> tuple[Any, bool] | None:
        """(camera_info, whether it is stamped otherwise) for an image of ``side`` stamped ``stamp_ns`` of ``size``
        (``late``: an image stamped after its pair has arrived); None: wait."""
        infos = self._infos[side]
        if not infos:
            return None
        nearest = infos.nearest(stamp_ns)
        distance = abs(nearest.stamp - stamp_ns)
        if distance == 0:
            return nearest.message, False
        if not (late or infos.latest_stamp > stamp_ns):  # a nearer one may still come
            return None
        if self.tolerance_ns is not None and distance <= self.tolerance_ns:
            candidate = nearest
        elif infos.static:
            candidate = infos.newest
        else:
            return None
        fits = size is None or candidate.size is None or size == candidate.size
        return (candidate.message, True) if fits else None

    def _release(self, final: bool = False) -> list[list[Any]]:
        """The waiting pairs that have their camera_infos now, in order; older pairs still without one are
        dropped once a later pair goes (sets leave in time order). ``final``: every pair counts as late."""
        newest_image = max((s for s in self.images.stats.last_stamps if s is not None), default=None)
        now = self._clock()

        def late(images: list[tuple[int, Any]], formed: float) -> bool:
            return (final or newest_image > max(stamp for stamp, _ in images)
                    or (self._grace_s is not None and now - formed >= self._grace_s))

        found = [[self._info_for(side, stamp, size, late(images, formed)) for side, (stamp, size) in enumerate(images)]
                 for images, _, formed in self.waiting]
        ready = [i for i, infos in enumerate(found) if None not in infos]
        last = len(found) - 1 if final else (ready[-1] if ready else -1)
        sets = []
        for i in range(last + 1):
            _, (left, right), _ = self.waiting.popleft()
            if None in found[i]:
                self.info_stats.without_info += 1
                continue
            for side, (_, borrowed) in enumerate(found[i]):
                self.info_stats.borrowed_info[side] += borrowed
            sets.append([left, right, found[i][0][0], found[i][1][0]])
        return sets
