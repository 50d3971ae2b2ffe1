"""The synchronised sets waiting for inference, bounded by what can still be answered in time. No ROS here.

DDS delivers in bursts (reliable repairs), which a fast node absorbs, while a node slower than the
camera should keep just the newest set: a set waits only while the worker could get through the
sets ahead of it within one camera period plus ``backlog_seconds`` at its recent pace; older ones are
dropped as stale. The camera period is the median of the recent stamp steps: a stamp far off (a
driver that stamps 0 once, a clock jump) neither stretches nor shrinks it, so one odd set never lets
the backlog, and with it the latency, grow.

    backlog = FrameBacklog()
    dropped = backlog.push(frame, stamp_ns, queue_size=10, backlog_seconds=0.5)   # a callback thread
    frame = backlog.pop(cancel)                                                   # the worker; None: cancelled
    backlog.frame_done(seconds)
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from typing import Any

#: Stamp steps kept for the camera period (their median).
PERIOD_STEPS = 15
#: A step more than this many times the current period (or below its inverse) is a jump, not the camera's pace.
JUMP_FACTOR = 4.0


def moving_average(average: float, value: float) -> float:
    """Exponential moving average (weight 0.2 for the new value); 0 means no value yet."""
    return value if not average else 0.8 * average + 0.2 * value


class FrameBacklog:
    """Sets in arrival order, oldest first, shared by the threads that add them and the one worker."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._pending: deque[Any] = deque()
        self.frame_seconds = 0.0  # recent time per frame (moving average; 0: none yet)
        self._steps: deque[float] = deque(maxlen=PERIOD_STEPS)  # recent stamp steps of consecutive sets (s)
        self._jumps: list[float] = []  # steps left out since the last one kept
        self._last_stamp: int | None = None

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def camera_period(self) -> float:
        """The median of the recent stamp steps, seconds (0: none yet)."""
        return statistics.median(self._steps) if self._steps else 0.0

    def _observe_stamp(self, stamp_ns: int) -> None:
        """Keep the step from the last set's stamp unless it goes backwards or is a jump. Until three steps
        are known every forward step counts. A camera that changes its rate within JUMP_FACTOR is followed
        once most kept steps are at the new pace; one that changes it further, after three jumps in a row."""
        if self._last_stamp is not None and stamp_ns > self._last_stamp:
            step = (stamp_ns - self._last_stamp) / 1e9
            period = self.camera_period
            if len(self._steps) < 3 or period / JUMP_FACTOR <= step <= period * JUMP_FACTOR:
                self._steps.append(step)
                self._jumps.clear()
            else:
                self._jumps.append(step)
                if len(self._jumps) >= 3:  # not one odd stamp: the camera's new pace
                    self._steps.clear()
                    self._steps.extend(self._jumps)
                    self._jumps.clear()
        self._last_stamp = stamp_ns

    def push(self, frame: Any, stamp_ns: int, queue_size: int, backlog_seconds: float) -> int:
        """Add a set stamped ``stamp_ns``; returns how many older sets were dropped as stale."""
        self._observe_stamp(stamp_ns)
        with self._lock:
            self._pending.append(frame)
            allowed = queue_size
            if self.frame_seconds:
                allowed = min(allowed, max(1, int((backlog_seconds + self.camera_period) / self.frame_seconds)))
            dropped = 0
            while len(self._pending) > allowed:
                self._pending.popleft()
                dropped += 1
            self._lock.notify()
        return dropped

    def pop(self, cancel: threading.Event) -> Any | None:
        """The oldest set, waiting for one; None once ``cancel`` is set (``wake`` ends the wait at once)."""
        with self._lock:
            while not self._pending and not cancel.is_set():
                self._lock.wait(timeout=0.5)
            if cancel.is_set():
                return None
            return self._pending.popleft()

    def wake(self, cancel: threading.Event) -> None:
        """Set ``cancel`` and wake a worker waiting in ``pop``."""
        with self._lock:
            cancel.set()
            self._lock.notify()

    def frame_done(self, seconds: float) -> None:
        """A frame took ``seconds`` from its set to its last message: the pace the bound uses."""
        self.frame_seconds = moving_average(self.frame_seconds, seconds)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
