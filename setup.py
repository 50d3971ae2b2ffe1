from glob import glob

from setuptools import find_packages, setup

package_name = "sgru_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["weights/*.pth"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*")),
        # `ros2 run` and launch_ros look for executables only in lib/<package>; a plain pip install puts
        # console scripts in bin/, so these wrappers (their run bit is kept) go to lib/sgru_ros too.
        ("lib/" + package_name, ["bin/stereo_node", "bin/sample_source"]),
    ],
    install_requires=["numpy", "opencv-python-headless", "torch>=2.1"],
    extras_require={
        # ROS 2 (kilted) client library and messages as PyPI wheels, for use without a ROS install.
        "ros": ["ros-rclpy", "ros-sensor-msgs", "ros-stereo-msgs", "ros-std-msgs", "ros-diagnostic-msgs",
                "ros-rmw-fastrtps-cpp"],
        "test": ["pytest", "scikit-image", "pyyaml"],
    },
    zip_safe=True,
    maintainer="sgru_ros developers",
    maintainer_email="sgru-ros@example.com",
    description="Selective-Stereo (SelectiveConvGRU) dense stereo depth for ROS 2",
    license="MIT",
    entry_points={"console_scripts": [
        "sgru-stereo = sgru_ros.cli:main",
        "stereo_node = sgru_ros.node:main",
        "sample_source = sgru_ros.sample_source:main",
    ]},
)
