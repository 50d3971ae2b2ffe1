"""sgru_ros: Selective-Stereo dense stereo depth for ROS 2."""

__version__ = "0.1.0"
