"""The stereo node's outputs: the publishers, which of them anybody subscribes to, and publishing a frame."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from ..geometry import CloudLayout, StereoGeometry
from ..pipeline import FrameResult
from ..visualize import colorize_disparity
from .conversions import array_to_image, cloud_message, disparity_message

#: Outputs: reliable, with ROS 2's default history of 10, so that frames published in a burst survive a
#: subscriber that acknowledges late (a reliable writer overwrites unacknowledged samples once its
#: history is full). A history of 3 lost 1-4 of 30 disparities at 1280x720 on a CPU where the node
#: works through a backlog at 30 frames per second.
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
#: Outputs, relative to the node's namespace (README: Topics).
OUTPUTS = {"disparity": DisparityImage, "points2": PointCloud2, "depth/image_rect": Image,
           "depth/camera_info": CameraInfo, "confidence": Image, "disparity/color": Image}


class StereoOutputs:
    """The publishers of ``OUTPUTS`` and of disparity/iter_K (created when first asked for), and the
    thread that packs and publishes the cloud beside the other outputs."""

    def __init__(self, node: Node) -> None:
        self._node = node
        overrides = QoSOverridingOptions.with_default_policies()
        self.publishers = {name: node.create_publisher(msg_type, name, OUTPUT_QOS, qos_overriding_options=overrides)
                           for name, msg_type in OUTPUTS.items()}
        self._iterations: dict[int, object] = {}
        self._cloud_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgru_cloud")
        self._cloud_data: dict = {}  # CloudLayout -> the last published cloud's data, filled again next frame

    def wanted(self) -> dict[str, bool]:
        """Which outputs have a subscriber: only those are computed (a cloud costs tens of ms per frame)."""
        return {name: pub.get_subscription_count() > 0 for name, pub in self.publishers.items()}

    def wanted_iterations(self, iterations: list[int]) -> list[int]:
        """Those of ``iterations`` whose disparity/iter_K has a subscriber (the network upsamples only those)."""
        return [k for k in iterations if self.iteration_publisher(k).get_subscription_count()]

    def subscribers(self, iterations: list[int]) -> int:
        """Subscriptions to the outputs, disparity/iter_K of ``iterations`` included (counted by topic:
        their publishers are created with the first frame that has a subscriber)."""
        return (sum(pub.get_subscription_count() for pub in self.publishers.values())
                + sum(self._node.count_subscribers(f"disparity/iter_{k}") for k in iterations))

    def iteration_publisher(self, k: int):
        if k not in self._iterations:
            self._iterations[k] = self._node.create_publisher(DisparityImage, f"disparity/iter_{k}", OUTPUT_QOS)
        return self._iterations[k]

    def publish(self, frame: FrameResult, left: np.ndarray, left_info: CameraInfo, wanted: dict[str, bool],
                layout: CloudLayout) -> None:
        """Every subscribed output of one frame. The cloud (10 MB at 640x480) is packed and published on its
        own thread while this one sends the others, as stereo_image_proc's disparity and point cloud nodes
        run side by side in a multi-threaded container; returns when both are out. An exception of the
        other outputs comes first, then the cloud's."""
        cloud_sent = None
        if wanted["points2"]:
            cloud_sent = self._cloud_thread.submit(self._publish_cloud, frame.depth, frame.geometry, left, layout,
                                                   left_info.header)
        try:
            self._publish_images(frame, left_info, wanted)
        finally:
            cloud_error = cloud_sent.exception() if cloud_sent is not None else None
        if cloud_error is not None:
            raise cloud_error

    def _publish_cloud(self, depth: np.ndarray, geometry: StereoGeometry, left: np.ndarray, layout: CloudLayout,
                       header: Header) -> None:
        """Pack and publish points2 (on the cloud thread). The previous frame's cloud was
        published (copied by rclpy) before this frame began: its buffer is filled again."""
        cloud = cloud_message(depth, geometry, left, layout, header, reuse=self._cloud_data.get(layout))
        self.publishers["points2"].publish(cloud)
        self._cloud_data = {layout: cloud.data}

    def _publish_images(self, frame: FrameResult, left_info: CameraInfo, wanted: dict[str, bool]) -> None:
        """Every subscribed output but the cloud."""
        header, out = left_info.header, self.publishers
        if wanted["disparity"]:
            out["disparity"].publish(disparity_message(frame.disparity, frame.geometry, header))
        if frame.depth is not None and wanted["depth/image_rect"]:
            out["depth/image_rect"].publish(array_to_image(frame.depth, "32FC1", header))
        if wanted["depth/camera_info"] or wanted["depth/image_rect"]:
            out["depth/camera_info"].publish(left_info)  # REP 118: the depth image is in the left camera's pixels
        if frame.confidence is not None and wanted["confidence"]:
            out["confidence"].publish(array_to_image(frame.confidence, "32FC1", header))
        if wanted["disparity/color"]:
            # Colour range from this frame's own values (1st..99th percentile): the search range is far wider.
            color = colorize_disparity(frame.disparity.disparity, valid=frame.disparity.valid)
            out["disparity/color"].publish(array_to_image(color, "bgr8", header))
        for k, products in frame.intermediate.items():
            self.iteration_publisher(k).publish(disparity_message(products, frame.geometry, header))

    def stop(self) -> None:
        """Let the cloud thread go: it ends once idle (it is, unless an abandoned frame still runs)."""
        self._cloud_thread.shutdown(wait=False)

    def destroy(self) -> None:
        """Destroy every publisher and stop the cloud thread."""
        for pub in [*self.publishers.values(), *self._iterations.values()]:
            self._node.destroy_publisher(pub)
        self.publishers, self._iterations, self._cloud_data = {}, {}, {}
        self.stop()
