"""sgru-stereo bag: a rosbag2 recording in, a new bag with the node's outputs out.

Reads MCAP or sqlite3 rosbag2 folders with the pure-Python ``rosbags`` library
(no ROS install), synchronises the left/right images by stamp and joins each
pair with its camera_infos like the node (``sync.CalibratedStereoSync``: exact,
or approximate within a tolerance), runs every set through ``pipeline.StereoPipeline`` (offline: nothing
is dropped for time), and writes the chosen outputs with the input stamps. The
messages are built by ``ros_conversions`` exactly as the node publishes them and
serialised with rclpy, so a bag and a live run of the same frame agree.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry import CloudLayout
from ..device import release_memory
from ..pipeline import FrameResult, GeometryOptions, StereoPipeline, failure_kind
from ..sync import CalibratedStereoSync

#: Outputs a bag can get, as topic names under the output namespace.
OUTPUTS = ("disparity", "points2", "depth/image_rect", "depth/camera_info", "confidence")
DEFAULT_OUTPUTS = ("disparity", "points2")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
OUTPUT_TYPES = {"disparity": "stereo_msgs/msg/DisparityImage", "points2": "sensor_msgs/msg/PointCloud2",
                "depth/image_rect": "sensor_msgs/msg/Image", "depth/camera_info": INFO_TYPE,
                "confidence": "sensor_msgs/msg/Image"}


@dataclass(frozen=True)
class StereoTopics:
    """The four input topics, in the node's order (left image, right image, left info, right info)."""

    left_image: str
    right_image: str
    left_info: str
    right_info: str

    @classmethod
    def under(cls, namespace: str, image: str = "image_rect") -> StereoTopics:
        """The node's topic names under ``namespace`` (e.g. /stereo -> /stereo/left/image_rect, ...)."""
        base = "/" + namespace.strip("/") if namespace.strip("/") else ""
        return cls(f"{base}/left/{image}", f"{base}/right/{image}", f"{base}/left/camera_info",
                   f"{base}/right/camera_info")

    def __iter__(self):
        return iter((self.left_image, self.right_image, self.left_info, self.right_info))


@dataclass(frozen=True)
class BagOptions:
    """What to run and write. start/end: seconds from the bag's first message."""

    iterations: int = 8
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    output_namespace: str = "/sgru"
    tolerance_s: float | None = None  # None: exact stamps; else approximate within this
    every: int = 1
    start: float = 0.0
    end: float = math.inf
    copy_inputs: bool = False
    geometry: GeometryOptions = GeometryOptions()
    cloud: CloudLayout = CloudLayout(color=True, avoid_padding=False)
    storage: str = "mcap"
    queue_size: int = 30  # messages per input waiting for partners (a recording is in log order)
    init: str = "none"  # where the GRU starts (pipeline.INITS)
    sgbm_disparities: int = 64


@dataclass
class BagSummary:
    """Counts of one conversion: every input image is in exactly one of a set or unmatched."""

    messages_in: Counter = field(default_factory=Counter)  # per input topic
    sets: int = 0
    processed: int = 0
    skipped: Counter = field(default_factory=Counter)  # sets by reason
    unmatched: int = 0  # input images that joined no set (no partner, or no camera_info, with the same/near stamp)
    borrowed_info: int = 0  # camera_infos of a static calibration that answered another frame (its own missing)
    written: Counter = field(default_factory=Counter)  # per output topic

    def lines(self) -> list[str]:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return [f"messages in: {sum(self.messages_in.values())} "
                f"({', '.join(f'{t} {n}' for t, n in sorted(self.messages_in.items()))})",
                f"sets formed: {self.sets}, processed: {self.processed}, skipped: {skipped}",
                f"images that joined no set: {self.unmatched}, "
                f"camera_infos of a static calibration taken for another frame: {self.borrowed_info}",
                f"written: {', '.join(f'{t} {n}' for t, n in sorted(self.written.items())) or 'nothing'}"]


def _ros_types():
    """rclpy message classes by rosbag2 type name (imported late: rclpy is the `ros` extra)."""
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
    from stereo_msgs.msg import DisparityImage

    return {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage,
            INFO_TYPE: CameraInfo, "sensor_msgs/msg/PointCloud2": PointCloud2,
            "stereo_msgs/msg/DisparityImage": DisparityImage}


def check_topics(available: dict[str, str | None], topics: StereoTopics) -> None:
    """Raise ValueError (one line) unless the bag has the four topics with usable types.
    available: topic -> rosbag2 message type."""
    expected = zip(topics, (IMAGE_TYPES, IMAGE_TYPES, (INFO_TYPE,), (INFO_TYPE,)))
    problems = [f"{topic} missing" if topic not in available else f"{topic} is {available[topic]}, not "
                f"{' or '.join(types)}" for topic, types in expected
                if available.get(topic) not in types]
    if problems:
        has = ", ".join(f"{t} ({m})" for t, m in sorted(available.items())) or "no topics"
        raise ValueError(f"{'; '.join(problems)}. The bag has: {has}")


def open_bag(source: str | Path, topics: StereoTopics):
    """``source`` opened with rosbags (an AnyReader; close it) after checking that it has the
    four topics; ValueError (one line) for a bag it cannot use."""
    from rosbags.highlevel import AnyReader

    source = Path(source)
    if not source.exists():
        raise ValueError(f"{source}: no such bag")
    try:
        reader = AnyReader([source])
        reader.open()
    except Exception as err:  # noqa: BLE001 -- rosbags raises several kinds for an unreadable bag
        raise ValueError(f"{source} is not a readable rosbag2: {str(err).splitlines()[0]}") from None
    try:
        check_topics({name: info.msgtype for name, info in reader.topics.items()}, topics)
        empty = [topic for topic in topics if reader.topics[topic].msgcount == 0]
        if empty:
            raise ValueError(f"{', '.join(empty)}: no messages in {source}")
    except ValueError:
        reader.close()
        raise
    return reader


def _check_options(options: BagOptions, target: Path) -> None:
    unknown = [o for o in options.outputs if o not in OUTPUTS]
    if unknown or not options.outputs:
        raise ValueError(f"unknown output {unknown[0] if unknown else '(none given)'}; choose from "
                         f"{', '.join(OUTPUTS)}")
    if options.every < 1:
        raise ValueError(f"--every must be >= 1, got {options.every}")
    if options.storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be mcap or sqlite3, got {options.storage!r}")
    if target.exists():
        raise ValueError(f"{target} exists; the output bag must be a new folder")


def images_in_window(source: str | Path, topics: StereoTopics, options: BagOptions = BagOptions()) -> int:
    """Left images of ``source`` between --start and --end (the sets a conversion will handle, for a progress
    bar); ValueError (one line) for a bag it cannot use."""
    reader = open_bag(source, topics)
    try:
        return _window(reader, options, topics)[2]
    finally:
        reader.close()


def _window(reader, options: BagOptions, topics: StereoTopics) -> tuple[int, int | None, int]:
    """(first, end or None, left images in the window): the window in the bag's clock (ns); the image count
    is exact without a window, else in proportion (for the progress bar)."""
    start = reader.start_time + round(options.start * 1e9)
    stop = None if math.isinf(options.end) else reader.start_time + round(options.end * 1e9) + 1
    in_range = reader.topics[topics.left_image].msgcount
    if options.start > 0 or stop is not None:
        window = min(stop or reader.end_time, reader.end_time) - max(start, reader.start_time)
        in_range = max(0, round(in_range * window / max(reader.duration, 1)))
    return start, stop, in_range


class _OutputBag:
    """The written bag's connections: the chosen outputs under the output namespace and, with
    ``copy_inputs``, the inputs under their own names and definitions; counts what it writes."""

    def __init__(self, writer, inputs: list, options: BagOptions, summary: BagSummary) -> None:
        from rosbags.typesys import Stores, get_typestore

        typestore = get_typestore(Stores.ROS2_KILTED)
        self.writer, self.options, self.summary = writer, options, summary
        namespace = "/" + options.output_namespace.strip("/") if options.output_namespace.strip("/") else ""
        self.outputs = {name: writer.add_connection(f"{namespace}/{name}", OUTPUT_TYPES[name], typestore=typestore)
                        for name in options.outputs}
        self.copies = {}
        for c in inputs if options.copy_inputs else ():
            if c.topic not in self.copies:  # the input's own definition where it has one (rosbag2 >= Iron)
                own = c.msgdef.data and c.digest.startswith("RIHS01_")
                self.copies[c.topic] = writer.add_connection(c.topic, c.msgtype, typestore=typestore,
                                                             msgdef=c.msgdef.data if own else None,
                                                             rihs01=c.digest if own else None)

    def copy(self, topic: str, log_time: int, raw: bytes) -> None:
        if topic in self.copies:
            self.writer.write(self.copies[topic], log_time, raw)
            self.summary.written[topic] += 1

    def write_frame(self, log_time: int, result, left, left_info) -> None:
        """The chosen outputs of one processed set, stamped as its left camera_info."""
        from rclpy.serialization import serialize_message

        from .conversions import array_to_image, cloud_message, disparity_message

        header = left_info.header
        messages = {
            "disparity": lambda: disparity_message(result.disparity, result.geometry, header),
            "points2": lambda: cloud_message(result.depth, result.geometry, left, self.options.cloud, header),
            "depth/image_rect": lambda: array_to_image(result.depth, "32FC1", header),
            "depth/camera_info": lambda: left_info,
            "confidence": lambda: array_to_image(result.confidence, "32FC1", header)}
        for name, connection in self.outputs.items():
            self.writer.write(connection, log_time, serialize_message(messages[name]()))
            self.summary.written[connection.topic] += 1


def _process_set(pipeline: StereoPipeline, options: BagOptions, left_msg, right_msg, left_info, right_info
                 ) -> tuple[FrameResult | None, np.ndarray | None, str]:
    """(the pipeline's result, the left image RGB, '') of one set, or (None, None, why it was skipped) after
    printing one line."""
    from .conversions import image_size, projection, stamp_ns, stereo_pair_to_rgb

    try:
        left, right = stereo_pair_to_rgb(left_msg, right_msg)
        return pipeline.process(
            left, right, projection(left_info), projection(right_info), iterations=options.iterations,
            depth=any(o in options.outputs for o in ("points2", "depth/image_rect")),
            confidence="confidence" in options.outputs, options=options.geometry,
            calibrated_sizes=[image_size(i) for i in (left_info, right_info)], init=options.init,
            sgbm_disparities=options.sgbm_disparities), left, ""
    except Exception as err:  # noqa: BLE001 -- one bad set is counted and skipped, the rest go on
        kind = failure_kind(err)
        print(f"set at {stamp_ns(left_info.header) / 1e9:.6f} skipped ({kind}): "
              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return None, None, kind


def convert_bag(source: str | Path, target: str | Path, pipeline: StereoPipeline, topics: StereoTopics,
                options: BagOptions = BagOptions(),
                progress: Callable[[int, int], object] | None = None) -> BagSummary:
    """Run every synchronised set of ``source`` and write ``target`` (a new rosbag2 folder).
    progress: called as progress(sets handled, left images in range) after each set.
    Raises ValueError for a bag it cannot use."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer

    from .conversions import calibration_of, raw_image_size, stamp_ns

    _check_options(options, target := Path(target))
    ros_types = _ros_types()
    tolerance = None if options.tolerance_s is None else round(options.tolerance_s * 1e9)
    sync = CalibratedStereoSync(options.queue_size, tolerance)
    summary = BagSummary()
    reader = open_bag(source, topics)
    try:
        duration_s = reader.duration / 1e9
        by_topic = {t: i for i, t in enumerate(topics)}
        inputs = [c for c in reader.connections if c.topic in by_topic]
        start, stop, in_range = _window(reader, options, topics)
        plugin = StoragePlugin.MCAP if options.storage == "mcap" else StoragePlugin.SQLITE3
        with Writer(target, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
            out = _OutputBag(writer, inputs, options, summary)
            for connection, log_time, raw in reader.messages(inputs, start=start, stop=stop):
                summary.messages_in[connection.topic] += 1
                out.copy(connection.topic, log_time, raw)
                msg = deserialize_message(raw, ros_types[connection.msgtype])
                index, stamp = by_topic[connection.topic], stamp_ns(msg.header)
                if index < 2:
                    sets = sync.add_image(index, stamp, (log_time, msg), raw_image_size(msg))
                else:
                    calibration, size = calibration_of(msg)
                    sets = sync.add_info(index - 2, stamp, calibration, msg, size)
                for frame in sets:
                    _convert_set(pipeline, options, frame, out, summary, progress, in_range)
            for frame in sync.flush():  # the last pairs: no later image will show that their camera_info is late
                _convert_set(pipeline, options, frame, out, summary, progress, in_range)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # a bag cut short has no metadata: nobody can read it
        raise
    finally:
        reader.close()
    summary.unmatched = (sum(sync.images.stats.unmatched) + sum(len(q) for q in sync.images.queues)
                         + 2 * sync.info_stats.without_info)
    summary.borrowed_info = sum(sync.info_stats.borrowed_info)
    if summary.sets == 0:
        shutil.rmtree(target, ignore_errors=True)
        if not summary.messages_in:
            raise ValueError(f"no input messages between --start {options.start:g} s and --end {options.end:g} s "
                             f"(the bag lasts {duration_s:.3f} s)")
        if sync.info_stats.without_info:
            raise ValueError(f"no synchronised set formed: {sync.info_stats.without_info} image pairs found no "
                             "camera_info of their stamp (nor two equal ones of their size before them)")
        raise ValueError(f"no synchronised set formed from {sum(summary.messages_in.values())} messages: "
                         + ("stamps must be identical for exact sync; try --approximate-sync SECONDS"
                            if tolerance is None else f"no stamps within {options.tolerance_s:g} s of each other"))
    return summary


def _convert_set(pipeline: StereoPipeline, options: BagOptions, frame: list, out: _OutputBag,
                 summary: BagSummary, progress: Callable[[int, int], object] | None, in_range: int) -> None:
    """One synchronised set ``[(log_time, left), (_, right), left_info, right_info]``: processed and written (each
    output at the left image's log time and stamp), or counted as skipped; then ``progress``."""
    from .conversions import restamped

    summary.sets += 1
    (log_time, left_msg), (_, right_msg), left_info, right_info = frame
    left_info, right_info = restamped(left_info, left_msg.header), restamped(right_info, right_msg.header)
    result, left, skipped = (None, None, f"--every {options.every}") if (summary.sets - 1) % options.every \
        else _process_set(pipeline, options, left_msg, right_msg, left_info, right_info)
    if result is not None:
        out.write_frame(log_time, result, left, left_info)
        summary.processed += 1
    else:
        summary.skipped[skipped] += 1
    if skipped == "out_of_memory":  # out of the except block: its traceback held the set's tensors
        release_memory(pipeline.estimator.device)
    if progress is not None:
        progress(summary.sets, in_range)


def parse_outputs(names: Sequence[str]) -> tuple[str, ...]:
    """--outputs values (comma or space separated) in OUTPUTS' order, without repeats."""
    wanted = {name.strip() for item in names for name in item.split(",") if name.strip()}
    unknown = sorted(wanted - set(OUTPUTS))
    if unknown:
        raise ValueError(f"unknown output {unknown[0]}; choose from {', '.join(OUTPUTS)}")
    return tuple(name for name in OUTPUTS if name in wanted)
