"""What the stereo node reports on /diagnostics and in its stall warning: pure functions of its counts."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import ReliabilityPolicy
from std_msgs.msg import Header

from .conversions import stamp_text

#: A frame error keeps /diagnostics at ERROR (and its kind is logged at most once) for this long.
ERROR_HOLD_S = 10.0


class FailureLog:
    """Which frame failures to log: each distinct (kind, reason) at least once, then at most once per ERROR_HOLD_S
    (a reason that names a changing value is forgotten after ERROR_HOLD_S once many are remembered)."""

    def __init__(self) -> None:
        self._logged: dict[tuple[str, str], float] = {}  # (kind, reason) -> when it was last logged

    def should_log(self, kind: str, reason: str, now: float) -> bool:
        if now - self._logged.get((kind, reason), -math.inf) < ERROR_HOLD_S:
            return False
        if len(self._logged) > 64:
            self._logged = {key: t for key, t in self._logged.items() if now - t < ERROR_HOLD_S}
        self._logged[(kind, reason)] = now
        return True


@dataclass
class FrameStats:
    """The node's counts since start-up (read by the diagnostics timer, written by the callbacks and the worker)."""

    inputs: int
    received: list[int] = field(default_factory=list)  # messages per input
    sets: int = 0  # synchronised sets formed
    processed: int = 0
    dropped: int = 0  # complete sets dropped as stale before inference could take them
    errors: Counter = field(default_factory=Counter)  # failed frames by kind (bad_input, out_of_memory, ...)
    last_error: str = ""
    last_error_time: float = -float("inf")
    worker_error: str = ""  # why the inference thread stopped, if it did
    stages_ms: dict[str, float] = field(default_factory=dict)
    last_iterations: int = 0
    resolution: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.received = self.received or [0] * self.inputs


def stall_reason(topics: list[str], since_last_set: list[int], newest_stamps: list[int], spread_ns: int,
                 approximate: bool, tolerance_s: float, pairs_without_info: int = 0) -> str:
    """Why no synchronised set forms while inputs arrive, and what would help.

    since_last_set: messages per input since the last set; newest_stamps: each input's newest stamp (ns);
    spread_ns: the spread of the images' (``StereoSynchronizer.stamp_spread_ns``); pairs_without_info: image
    pairs dropped without a camera_info since the last set."""
    counts = ", ".join(f"{t} {n}" for t, n in zip(topics, since_last_set))
    missing = [t for t, n in zip(topics, since_last_set) if n == 0]
    if missing:
        return (f"nothing received on {', '.join(missing)} (messages since the last set: {counts}); check that "
                "they are published, with a compatible QoS, in this ROS_DOMAIN_ID")
    stamps = ", ".join(f"{t} {stamp_text(s)}" for t, s in zip(topics[:2], newest_stamps[:2]))
    enough = math.ceil(spread_ns / 1e6) / 1e3 if spread_ns else 0.0  # seconds, rounded up to the millisecond
    if approximate:
        if spread_ns > round(tolerance_s * 1e9):
            return (f"newest stamps {stamps} spread {spread_ns / 1e6:.1f} ms, more than "
                    f"approximate_sync_tolerance_seconds {tolerance_s:g}; a tolerance of at least "
                    f"{enough:.3f} would match them")
    elif spread_ns > 0:
        return (f"newest stamps {stamps} differ by up to {spread_ns / 1e6:.1f} ms; exact sync needs identical stamps: "
                f"fix the camera driver, or set approximate_sync:=true with approximate_sync_tolerance_seconds "
                f">= {enough:.3f}")
    if pairs_without_info:
        infos = ", ".join(f"{t} {stamp_text(s)}" for t, s in zip(topics[2:], newest_stamps[2:]))
        return (f"the images pair up, but {pairs_without_info} pairs found no camera_info stamped as their images"
                f"{' (or within the tolerance)' if approximate else ''} and no static calibration of their size "
                f"(two equal camera_infos in a row); newest camera_info stamps {infos}")
    return (f"every input arrives and stamps can match, but no complete set forms (messages since the last set: "
            f"{counts}): messages are being lost on the way; see the input reliability in /diagnostics")


@dataclass(frozen=True)
class NodeState:
    """What the node is doing, beside its counts."""

    running: bool  # started and not stopped (active, for the lifecycle node)
    worker_alive: bool
    subscribers: int  # to the outputs
    sync_stalled: bool
    topics: list[str]
    reliability: list[ReliabilityPolicy | None]
    unmatched: list[int]  # per image input, from the synchroniser
    repeated: list[int]  # per image input: images stamped as the input's last set (dropped, counted in unmatched)
    borrowed_info: list[int]  # per camera: sets answered with a camera_info stamped otherwise than their image
    without_info: int  # image pairs dropped without a camera_info (sync.CameraInfoStats)
    iterations: int
    model: str  # the network's variant (raft, igev)
    weights: str  # the model parameter: a bundled model's name or a checkpoint path
    precision: str
    init: str  # where the GRU starts without a warm start (pipeline.INITS)
    device: str


def status_level(stats: FrameStats, state: NodeState, now: float) -> tuple[int, str]:
    """(DiagnosticStatus level, message): the worst of inactive/idle, a sync stall, a recent frame error and
    a stopped inference thread."""
    level, message = DiagnosticStatus.OK, "running"
    if not state.running:
        message = "inactive (lifecycle): not processing"
    elif not state.subscribers:
        message = "idle: no subscriber to any output, inputs not subscribed"
    if state.sync_stalled:
        level, message = DiagnosticStatus.WARN, "inputs arrive but do not synchronise"
    if now - stats.last_error_time < ERROR_HOLD_S:
        level, message = DiagnosticStatus.ERROR, f"frame skipped: {stats.last_error.splitlines()[0]}"
    if not state.worker_alive and state.running:
        level, message = DiagnosticStatus.ERROR, f"inference thread stopped: {stats.worker_error or 'unknown'}"
    return level, message


def status_values(stats: FrameStats, state: NodeState) -> dict[str, object]:
    """The key/values of the node's status, in the order they are shown."""
    s, topics = stats, state.topics
    return {"frames_processed": s.processed, "frames_dropped_stale": s.dropped,
            "frames_failed": sum(s.errors.values()),
            **{f"frames_failed_{kind}": n for kind, n in sorted(s.errors.items())},
            "output_subscribers": state.subscribers,
            "sets_formed": s.sets,
            **{f"received {t}": n for t, n in zip(topics, s.received)},
            **{f"unmatched {t}": n for t, n in zip(topics[:2], state.unmatched)},
            **{f"repeated_stamp {t}": n for t, n in zip(topics[:2], state.repeated)},
            "pairs_without_camera_info": state.without_info,
            **{f"camera_info_from_another_frame {t}": n for t, n in zip(topics[2:], state.borrowed_info)},
            **{f"reliability {t}": (r.name.lower() if r else "none") for t, r in zip(topics, state.reliability)},
            "inference_thread": "running" if state.worker_alive else "stopped",
            "iterations": state.iterations,
            "model": state.model, "weights": state.weights, "precision": state.precision, "init": state.init,
            "device": state.device,
            "last_frame_iterations": s.last_iterations,
            **{f"{k}_ms": round(v, 1) for k, v in s.stages_ms.items()}}


def diagnostic_array(name: str, stats: FrameStats, state: NodeState, now: float, stamp) -> DiagnosticArray:
    """The /diagnostics message: one status named ``name`` (the node's full name and ': stereo')."""
    level, message = status_level(stats, state, now)
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=state.device,
                              values=[KeyValue(key=k, value=str(v)) for k, v in status_values(stats, state).items()])
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
