"""Everything of sgru_ros that imports rclpy or ROS message packages: the stereo node, its parameters,
inputs, outputs and diagnostics, message conversions, the sample source, the bag tool and the demo.

Nothing outside this package imports ROS (test/test_package.py checks it), so the network, the
inference API and the frame pipeline run and test without a ROS installation.
"""
