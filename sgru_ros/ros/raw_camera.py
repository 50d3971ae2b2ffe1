"""A raw camera's images rectified in the node (``rectify``): camera_info messages to the ROS-free
``rectification.Rectifier`` and back to the camera_info of the rectified images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sensor_msgs.msg import CameraInfo

from ..rectification import Rectifier
from .conversions import camera_model, rectified_info


class RawStereoCamera:
    """Rectifies both images of a set with their camera_info; a calibration that cannot rectify is a ValueError
    naming its topic (``info_topics``: left, right), and each new calibration's maps are announced on ``log``."""

    def __init__(self, info_topics: list[str], log: Callable[[str], None]) -> None:
        self._topics = info_topics
        self._log = log
        self._rectifier = Rectifier()

    def rectify(self, left: np.ndarray, right: np.ndarray, left_info: CameraInfo, right_info: CameraInfo
                ) -> tuple[np.ndarray, np.ndarray, CameraInfo, CameraInfo]:
        """H x W x 3 raw RGB images and their camera_infos -> the rectified images and their camera_infos."""
        images = []
        for image, info, topic in ((left, left_info, self._topics[0]), (right, right_info, self._topics[1])):
            built = self._rectifier.maps_built
            try:
                images.append(self._rectifier.rectify(image, camera_model(info)))
            except ValueError as err:
                raise ValueError(f"{topic}: {err}") from None
            if self._rectifier.maps_built != built:
                self._log(f"rectification maps built for {topic} ({info.distortion_model}, "
                          f"{image.shape[1]}x{image.shape[0]})")
        return images[0], images[1], rectified_info(left_info), rectified_info(right_info)
