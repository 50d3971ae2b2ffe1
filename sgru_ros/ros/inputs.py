"""The stereo node's four input subscriptions: which topics, with which QoS, and when.

The inputs are subscribed only while an output has a subscriber (as stereo_image_proc does: no
images are taken, decoded or run without a consumer). Each input's reliability follows its
publishers (``input_reliability`` auto): a best-effort subscriber to a reliable camera loses a
large image whenever one of its DDS fragments is lost. In image_proc's layout ``image_rect`` is
the mono image and ``image_rect_color`` the colour one: while both cameras publish the colour one,
it is taken instead (``prefer_color``), as stereo_image_proc's point cloud does.
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

#: The inputs by their default names (images first; ``rectify``: image_raw instead of image_rect);
#: ``resolve_inputs`` gives the topics.
INPUT_NAMES = ("left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info")


def input_names(rectify: bool) -> tuple[str, ...]:
    image = "image_raw" if rectify else "image_rect"
    return (f"left/{image}", f"right/{image}", *INPUT_NAMES[2:])


def resolve_inputs(node: Node, transport: str, rectify: bool = False) -> list[str]:
    """The four input topics, as image_transport's camera subscriber finds them: each camera_info
    is the sibling of its image topic (``-r left/image_rect:=/cam/left/image_rect_color`` also moves
    it to /cam/left/camera_info) unless camera_info is remapped itself; compressed images are on
    ``<image>/compressed``."""
    names = input_names(rectify)
    images = [node.resolve_topic_name(name) for name in names[:2]]
    infos = []
    for image, name in zip(images, names[2:]):
        remapped = node.resolve_topic_name(name)
        infos.append(remapped if remapped != node.resolve_topic_name(name, only_expand=True)
                     else f"{image.rsplit('/', 1)[0]}/camera_info")
    return [image_transport_topic(image, transport) for image in images] + infos


def image_transport_topic(image: str, transport: str) -> str:
    return f"{image}/compressed" if transport == "compressed" else image


def color_siblings(images: list[str], transport: str) -> list[str] | None:
    """The image_rect_color topics beside image_rect ones (image_proc's layout); None unless both are."""
    bases = [image.removesuffix("/compressed") if transport == "compressed" else image for image in images]
    if not all(base.endswith("/image_rect") for base in bases):
        return None
    return [image_transport_topic(base + "_color", transport) for base in bases]


class StereoInputs:
    """The subscriptions of the four inputs; ``callback(index, msg)`` receives every message.

    node: the stereo node; transport: ``image_transport``; reliability: ``input_reliability``;
    queue_size: the images' history (camera_info: ten times as deep: a few hundred bytes each, and
    it must absorb the bursts that reliable DDS repairs arrive in while the executor is busy);
    rectify: subscribe the raw images (image_raw); prefer_color: take image_rect_color beside
    image_rect while both cameras publish it."""

    def __init__(self, node: Node, transport: str, reliability: str, queue_size: int,
                 callback: Callable[[int, object], None], rectify: bool = False, prefer_color: bool = False) -> None:
        self._node = node
        self._callback = callback
        self._image_type = CompressedImage if transport == "compressed" else Image
        self._queue_size = queue_size
        self.topics = resolve_inputs(node, transport, rectify)
        self._choices = [self._reliability_choice(topic, reliability) for topic in self.topics]
        self._mono = self.topics[:2]
        self._color = color_siblings(self._mono, transport) if prefer_color and not rectify else None
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

    def _choose_images(self) -> bool:
        """Point the image inputs at image_rect_color while both cameras publish it, else at image_rect; True when
        they moved (their subscriptions are then dropped, for ``adapt`` to make again)."""
        color = self._color is not None and all(self._node.count_publishers(t) for t in self._color)
        images = self._color if color else self._mono
        if images == self.topics[:2]:
            return False
        self._node.get_logger().info(
            f"taking colour images from {' and '.join(images)} (both cameras publish them)" if color else
            f"taking {' and '.join(images)}: {' and '.join(self._color)} no longer both have a publisher")
        self.topics[:2] = images
        for index in (0, 1):
            if self._subscriptions[index] is not None:
                self._node.destroy_subscription(self._subscriptions[index])
            self._subscriptions[index] = self.reliability[index] = None
        return True

    def adapt(self) -> bool:
        """(Re)subscribe each input whose topic or wanted reliability changed (every input on the first call);
        True when the image topics changed (the sets waiting for partners mix both, so they are best dropped)."""
        moved = self._choose_images()
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
        return moved

    def unsubscribe(self) -> None:
        for index, subscription in enumerate(self._subscriptions):
            if subscription is not None:
                self._node.destroy_subscription(subscription)
            self._subscriptions[index] = None
            self.reliability[index] = None
