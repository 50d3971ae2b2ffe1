"""The ROS 2 package around the code: package.xml, installed layout, launch file."""

from __future__ import annotations

import importlib.util
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO


def test_package_xml_format_3_with_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "sgru_ros"
    exec_deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "stereo_msgs", "std_msgs", "diagnostic_msgs"} <= exec_deps
    assert {"ament_flake8", "ament_pep257", "python3-pytest"} <= {e.text for e in root.findall("test_depend")}
    assert root.find("export/build_type").text == "ament_python"


def test_installed_layout_for_ros2_run_and_launch():
    """What `pip install` put under the environment's prefix: the ament index marker, the share
    folder, and executables in lib/sgru_ros where `ros2 run` and launch_ros look."""
    prefix = Path(sys.prefix)
    if not (prefix / "share" / "sgru_ros").is_dir():
        pytest.skip(f"sgru_ros is not installed into {prefix} (running from a source tree)")
    assert (prefix / "share/ament_index/resource_index/packages/sgru_ros").is_file()
    for name in ("launch/stereo.launch.py", "config/stereo.yaml", "config/stereo.rviz", "package.xml"):
        assert (prefix / "share/sgru_ros" / name).is_file(), name
    for name in ("stereo_node", "sample_source"):
        exe = prefix / "lib/sgru_ros" / name
        assert exe.is_file() and os.access(exe, os.X_OK), exe
    from ament_index_python.packages import get_package_share_directory

    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(filter(None, [str(prefix), os.environ.get("AMENT_PREFIX_PATH")]))
    assert Path(get_package_share_directory("sgru_ros")) == prefix / "share/sgru_ros"


def test_launch_file_compiles():
    source = (REPO / "launch/stereo.launch.py").read_text()
    compile(source, "stereo.launch.py", "exec")


def test_launch_description_builds():
    pytest.importorskip("launch_ros", reason="launch_ros is not installable here; runs in a ROS 2 workspace")
    spec = importlib.util.spec_from_file_location("stereo_launch", REPO / "launch/stereo.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {getattr(a, "name", None) for a in description.entities}
    assert {"namespace", "left_namespace", "right_namespace", "model", "iterations", "device", "precision",
            "use_sample_source", "use_rviz"} <= names


def test_lib_executable_starts_the_node_and_reports_a_bad_model_in_one_line():
    exe = Path(sys.prefix) / "lib/sgru_ros/stereo_node"
    if not exe.is_file():
        pytest.skip("sgru_ros is not installed into this environment")
    import subprocess

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(exe), "--ros-args", "-p", "model:=/nonexistent/model.pth"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 1
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "cannot start" in line]
    assert len(errors) == 1 and "no such checkpoint file" in errors[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
