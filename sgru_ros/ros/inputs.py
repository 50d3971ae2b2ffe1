"""The stereo node's four input subscriptions: which topics, with which QoS, and when.

The inputs are subscribed only while an output has a subscriber (as stereo_image_proc does: no
images are taken, decoded or run without a consumer). Each input's reliability follows its
publishers (``input_reliability`` auto): a best-effort subscriber to a reliable camera loses a
large image whenever one of its DDS fragments is lost.
"""

from __future__ import annotations

from collections.abc import Callable

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSPolicyKind, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from .parameters import RELIABILITY

#: The inputs by their default names (images first); ``resolve_inputs`` gives the topics.
INPUT_NAMES = ("left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info")


def resolve_inputs(node: Node, transport: str) -> list[str]:
    """The four input topics, as image_transport's camera subscriber finds them: each camera_info
    is the sibling of its image topic (``-r left/image_rect:=/cam/left/image_rect_color`` also moves
    it to /cam/left/camera_info) unless camera_info is remapped itself; compressed images are on
    ``<image>/compressed``."""
    images = [node.resolve_topic_name(name) for name in INPUT_NAMES[:2]]
    infos = []
    for image, name in zip(images, INPUT_NAMES[2:]):
        remapped = node.resolve_topic_name(name)
        infos.append(remapped if remapped != node.resolve_topic_name(name, only_expand=True)
                     else f"{image.rsplit('/', 1)[0]}/camera_info")
    if transport == "compressed":
        images = [f"{image}/compressed" for image in images]
    return images + infos


class StereoInputs:
    """The subscriptions of the four inputs; ``callback(index, msg)`` receives every message.

    node: the stereo node; transport: ``image_transport``; reliability: ``input_reliability``;
    queue_size: the images' history (camera_info: ten times as deep: a few hundred bytes each, and
    it must absorb the bursts that reliable DDS repairs arrive in while the executor is busy)."""

    def __init__(self, node: Node, transport: str, reliability: str, queue_size: int,
                 callback: Callable[[int, object], None]) -> None:
        self._node = node
        self._callback = callback
        self._image_type = CompressedImage if transport == "compressed" else Image
        self._queue_size = queue_size
        self.topics = resolve_inputs(node, transport)
        self._choices = [self._reliability_choice(topic, reliability) for topic in self.topics]
        self._subscriptions: list = [None] * len(self.topics)
        self.reliability: list[ReliabilityPolicy | None] = [None] * len(self.topics)

    @property
    def subscribed(self) -> bool:
        return any(self._subscriptions)

    def _reliability_choice(self, topic: str, default: str) -> str:
        """'auto', 'reliable' or 'best_effort' for one input: the standard QoS override parameter
        ``qos_overrides.<topic>.subscription.reliability`` when given, else ``default``."""
        name = f"qos_overrides.{topic}.subscription.reliability"
        value = self._node.declare_parameter(name, Parameter.Type.STRING, ParameterDescriptor(
            description=f"reliability of the {topic} subscription; unset: input_reliability decides",
            read_only=True)).value
        if value is None:
            return default
        if value not in RELIABILITY:
            raise ValueError(f"parameter {name}: {value!r} is not one of {', '.join(RELIABILITY)}")
        return value

    def _wanted(self, index: int) -> ReliabilityPolicy:
        choice = self._choices[index]
        if choice != "auto":
            return RELIABILITY[choice]
        # With no publisher yet, reliable (the common camera-driver default) is kept; a best-effort
        # publisher then switches the input over before it loses anything.
        publishers = self._node.get_publishers_info_by_topic(self.topics[index])
        reliable = all(info.qos_profile.reliability == ReliabilityPolicy.RELIABLE for info in publishers)
        return ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT

    def adapt(self) -> None:
        """(Re)subscribe each input whose wanted reliability changed (every input on the first call)."""
        for index, topic in enumerate(self.topics):
            wanted = self._wanted(index)
            if wanted == self.reliability[index]:
                continue
            if self._subscriptions[index] is not None:
                self._node.destroy_subscription(self._subscriptions[index])
                self._node.get_logger().info(f"{topic}: publishers changed, subscribing {wanted.name.lower()}")
            image = index < 2
            qos = QoSProfile(history=qos_profile_sensor_data.history, durability=qos_profile_sensor_data.durability,
                             depth=self._queue_size * (1 if image else 10), reliability=wanted)
            # History and depth stay overridable the standard way; reliability is handled above.
            overrides = QoSOverridingOptions([QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH])
            self._subscriptions[index] = self._node.create_subscription(
                self._image_type if image else CameraInfo, topic, lambda msg, i=index: self._callback(i, msg), qos,
                qos_overriding_options=overrides)
            self.reliability[index] = wanted

    def unsubscribe(self) -> None:
        for index, subscription in enumerate(self._subscriptions):
            if subscription is not None:
                self._node.destroy_subscription(subscription)
            self._subscriptions[index] = None
            self.reliability[index] = None
