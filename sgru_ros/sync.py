"""Time synchronisation of the four stereo inputs, with message_filters' semantics.

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
"""

from __future__ import annotations

from collections import deque
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
