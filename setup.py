import re
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

package_name = "sgru_ros"
# The version lives in package.xml only (ROS's release tools bump it there, with CHANGELOG.rst).
version = re.search(r"<version>([^<]+)</version>", (Path(__file__).parent / "package.xml").read_text()).group(1)

setup(
    name=package_name,
    version=version,
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["weights/*.pth"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*")),
        # `ros2 run` and launch_ros look for executables only in <prefix>/lib/<package>. The console scripts
        # below always go to <prefix>/bin, with a shebang naming the interpreter the package was installed
        # into (pip, pip --user, a venv that is not activated, colcon: setup.cfg does not redirect them).
        # These tiny sh wrappers (their run bit is kept in the wheel) exec <prefix>/bin/<same name>, so
        # each file is written by exactly one mechanism and no `#!/usr/bin/env python3` picks the wrong python.
        ("lib/" + package_name, ["bin/stereo_node", "bin/stereo_lifecycle_node", "bin/sample_source"]),
    ],
    # Every third-party module the node, the sample source and the launch file import at run time
    # (test/test_package.py checks this). scikit-image ships the sample Motorcycle pair; pyyaml reads
    # calibration files.
    install_requires=["numpy", "opencv-python-headless", "simplejpeg", "torch>=2.1", "scikit-image", "pyyaml"],
    extras_require={
        # ROS 2 (kilted) client library, messages and the ament index as PyPI wheels, for use without a ROS
        # install (a ROS install provides them, plus launch / launch_ros, which have no PyPI wheels).
        "ros": ["ros-rclpy", "ros-sensor-msgs", "ros-stereo-msgs", "ros-std-msgs", "ros-diagnostic-msgs",
                "ros-lifecycle-msgs", "ros-rcl-interfaces", "ros-ament-index-python", "ros-rmw-fastrtps-cpp"],
        "test": ["pytest"],
        # `sgru-stereo export` and the onnxruntime engine (onnxscript: PyTorch's ONNX exporter).
        "onnx": ["onnx", "onnxruntime", "onnxscript", "torch>=2.5"],  # torch.onnx.export(dynamo=True)
        # `sgru-stereo train` (progress bar) and its learning curves (scripts/plot_training.py); the
        # generator's photos come with scikit-image (and Debian's mate-backgrounds, when installed).
        "train": ["tqdm", "matplotlib"],
        # `sgru-stereo bag`: rosbag2 (MCAP, sqlite3) without a ROS install; the messages come from `ros`.
        "bag": ["rosbags", "tqdm"],
        # `sgru-stereo bags --ray`: many bags across a Ray cluster, one model per worker.
        "fleet": ["ray", "rosbags", "tqdm"],
    },
    zip_safe=True,
    maintainer="sgru_ros developers",
    maintainer_email="sgru-ros@example.com",
    description="Selective-Stereo (SelectiveConvGRU) dense stereo depth for ROS 2",
    license="MIT",
    entry_points={"console_scripts": [
        "sgru-stereo = sgru_ros.cli:main",
        "stereo_node = sgru_ros.ros.node:main",
        "stereo_lifecycle_node = sgru_ros.ros.node:lifecycle_main",
        "sample_source = sgru_ros.ros.sample_source:main",
    ]},
)
