"""The rviz2 view of config/stereo.rviz for one launch: its displays' topics under the stereo
node's namespace and the fixed frame of the camera. No ROS import (the launch file calls it)."""

from __future__ import annotations

import yaml


def namespaced(namespace: str, topic: str) -> str:
    """A relative topic under ``namespace`` (absolute ones stay): ('stereo', 'points2') -> '/stereo/points2'."""
    if topic.startswith("/"):
        return topic
    prefix = namespace.strip("/")
    return f"/{prefix}/{topic}" if prefix else f"/{topic}"


def rviz_config(template: str, namespace: str, fixed_frame: str) -> str:
    """``template``: an rviz2 configuration (YAML) whose display topics are relative
    ('points2', 'disparity/color'). Returns it with each such topic under ``namespace`` and
    ``fixed_frame`` as the global fixed frame."""
    if not fixed_frame.strip():
        raise ValueError("rviz_fixed_frame is empty: give the camera's optical frame or a frame of your TF tree")
    config = yaml.safe_load(template)
    manager = config["Visualization Manager"]
    for display in manager.get("Displays", []):
        topic = display.get("Topic")
        if isinstance(topic, dict) and topic.get("Value"):
            topic["Value"] = namespaced(namespace, topic["Value"])
    manager["Global Options"]["Fixed Frame"] = fixed_frame
    return yaml.safe_dump(config, sort_keys=False)
