"""The ROS 2 package around the code: package.xml, installed layout, launch file."""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import re
import shutil
import subprocess
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
    assert {"python3-skimage", "python3-yaml", "python3-numpy", "python3-opencv"} <= exec_deps
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
    for name in ("stereo_node", "stereo_lifecycle_node", "sample_source"):
        exe = prefix / "lib/sgru_ros" / name
        assert exe.is_file() and os.access(exe, os.X_OK), exe
    from ament_index_python.packages import get_package_share_directory

    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(filter(None, [str(prefix), os.environ.get("AMENT_PREFIX_PATH")]))
    assert Path(get_package_share_directory("sgru_ros")) == prefix / "share/sgru_ros"


def _declared_parameters() -> set[str]:
    """The stereo node's parameters, read off its table (sgru_ros/ros/parameters.py) without ROS."""
    tree = ast.parse((REPO / "sgru_ros/ros/parameters.py").read_text())
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in
            ("declare", "declare_parameter") and node.args and isinstance(node.args[0], ast.Constant)}


def test_launch_arguments_and_the_params_file_name_the_nodes_parameters():
    """Every node argument of the launch file and every key of config/stereo.yaml is a parameter the node
    declares, and the params file lists every one of them (a user edits it as the full reference)."""
    import yaml

    declared = _declared_parameters()
    assert {"iterations", "publish_iterations", "model", "graphs", "flying_pixel_threshold"} <= declared
    launch = ast.parse((REPO / "launch/stereo.launch.py").read_text())
    table = next(node.value for node in ast.walk(launch) if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", "") == "NODE_ARGUMENTS")
    arguments = {key.value for key in table.keys}
    assert arguments <= declared, arguments - declared
    text = (REPO / "config/stereo.yaml").read_text()
    params = yaml.safe_load(text)["/**/sgru_stereo"]["ros__parameters"]
    commented = set(re.findall(r"^ +# (\w+): ", text, re.M))  # shown, but without a value (publish_iterations)
    assert set(params) | commented == declared, (set(params) | commented) ^ declared


def test_launch_description_builds():
    pytest.importorskip("launch_ros", reason="launch_ros is not installable here; runs in a ROS 2 workspace")
    spec = importlib.util.spec_from_file_location("stereo_launch", REPO / "launch/stereo.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {getattr(a, "name", None) for a in description.entities}
    assert {"namespace", "left_namespace", "right_namespace", "model", "iterations", "device", "precision",
            "image_transport", "rectify", "confidence_threshold", "approximate_sync", "approximate_sync_tolerance_seconds",
            "use_color", "avoid_point_cloud_padding", "use_lifecycle", "lifecycle_autostart", "use_sample_source",
            "use_rviz", "rviz_fixed_frame"} <= names


def test_the_readme_names_every_launch_argument_of_a_node_parameter():
    """The launch file's NODE_ARGUMENTS (read without importing launch) each appear in the README's table."""
    import ast

    tree = ast.parse((REPO / "launch/stereo.launch.py").read_text())
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", None) == "NODE_ARGUMENTS")
    names = [key.value for key in table.keys]
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("Launch arguments:"):readme.index("A node parameter given as a launch argument")]
    assert len(names) > 10 and [n for n in names if f"`{n}`" not in section] == []


# Import name -> (pip distribution, package.xml exec_depend key) for every third-party module that the
# node, the sample source or the launch file may import at run time. A new import must be added here and
# declared in setup.py and package.xml. None: not declared there (torch has no rosdep key everywhere;
# launch / launch_ros have no PyPI wheel, a ROS install brings them).
RUNTIME_MODULES = {
    "numpy": ("numpy", "python3-numpy"),
    "cv2": ("opencv-python-headless", "python3-opencv"),
    "torch": ("torch", None),
    "simplejpeg": ("simplejpeg", None),  # no rosdep key: README's ROS-install lines pip-install it with torch
    "skimage": ("scikit-image", "python3-skimage"),
    "yaml": ("pyyaml", "python3-yaml"),
    "rclpy": ("ros-rclpy", "rclpy"),
    "sensor_msgs": ("ros-sensor-msgs", "sensor_msgs"),
    "stereo_msgs": ("ros-stereo-msgs", "stereo_msgs"),
    "std_msgs": ("ros-std-msgs", "std_msgs"),
    "diagnostic_msgs": ("ros-diagnostic-msgs", "diagnostic_msgs"),
    "lifecycle_msgs": ("ros-lifecycle-msgs", "lifecycle_msgs"),
    "rcl_interfaces": ("ros-rcl-interfaces", "rcl_interfaces"),
    "ament_index_python": ("ros-ament-index-python", "ament_index_python"),
    "launch": (None, "launch"),
    "launch_ros": (None, "launch_ros"),
    # Optional (setup.py extra "onnx"): only the onnxruntime engine imports it, when it is chosen.
    "onnxruntime": (None, None),
}


def _module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _runtime_imports() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere (function-local imports too) by the node, the
    sample source, everything of sgru_ros they import, and the launch file -> who imports them."""
    found: dict[str, set[str]] = {}
    todo = [("sgru_ros.ros.node", None), ("sgru_ros.ros.sample_source", None), ("stereo_launch", REPO / "launch/stereo.launch.py")]
    seen = set()
    while todo:
        name, path = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = path or _module_file(name)
        assert path is not None, name
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        parts = name.split(".")
        todo += [(".".join(parts[:i]), None) for i in range(1, len(parts)) if parts[0] == "sgru_ros"]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module]
            else:
                continue
            for imported in names:
                top = imported.partition(".")[0]
                if top == "sgru_ros":
                    if _module_file(imported):
                        todo.append((imported, None))
                elif top != "__future__" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(name)
    assert {"sgru_ros.ros.node", "sgru_ros.ros.sample_source", "sgru_ros.calibration", "sgru_ros.inference"} <= seen
    return found


def _setup_requirements() -> tuple[set[str], set[str]]:
    """install_requires and the `ros` extra of setup.py, as normalised distribution names."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    keywords = {k.arg: k.value for k in call.keywords}

    def names(requirements):
        return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    return (names(ast.literal_eval(keywords["install_requires"])),
            names(ast.literal_eval(keywords["extras_require"]).get("ros", [])))


def test_every_runtime_import_is_declared_for_pip_and_rosdep():
    imports = _runtime_imports()
    unknown = {name: sorted(users) for name, users in imports.items() if name not in RUNTIME_MODULES}
    assert not unknown, f"third-party imports missing from RUNTIME_MODULES (declare them, then list them): {unknown}"
    install_requires, ros_extra = _setup_requirements()
    exec_deps = {e.text for e in ET.parse(REPO / "package.xml").getroot().findall("exec_depend")}
    for name in imports:
        distribution, rosdep_key = RUNTIME_MODULES[name]
        if distribution is not None:
            where = ros_extra if distribution.startswith("ros-") else install_requires
            assert distribution in where, f"{name} ({sorted(imports[name])}): {distribution} is not in setup.py"
        if rosdep_key is not None:
            assert rosdep_key in exec_deps, f"{name}: <exec_depend>{rosdep_key}</exec_depend> missing"
    assert {"skimage", "yaml", "cv2", "torch", "rclpy", "launch_ros"} <= set(imports)


#: Top-level modules that only a ROS installation (or the `ros`/`bag` extras) provides.
ROS_MODULES = {"rclpy", "rosidl_runtime_py", "rosidl_parser", "rcl_interfaces", "builtin_interfaces", "std_msgs",
               "sensor_msgs", "stereo_msgs", "diagnostic_msgs", "lifecycle_msgs", "ament_index_python", "launch",
               "launch_ros", "message_filters", "cv_bridge", "rosbags", "rosbag2_py"}


def _imported_top_levels(path: Path) -> set[str]:
    """Top-level module names a file imports anywhere (function-local imports too), relative ones as '.'."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else node.module.partition(".")[0])
    return names


def test_every_ros_import_lives_under_sgru_ros_ros():
    """The network, inference, pipeline, CLI and tools run without ROS: only sgru_ros/ros/ imports it."""
    package = REPO / "sgru_ros"
    offenders = {str(path.relative_to(REPO)): sorted(_imported_top_levels(path) & ROS_MODULES)
                 for path in package.rglob("*.py") if (package / "ros") not in path.parents}
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, f"ROS imports outside sgru_ros/ros/: {offenders}"
    inside = set().union(*(_imported_top_levels(path) for path in (package / "ros").rglob("*.py")))
    assert {"rclpy", "sensor_msgs", "stereo_msgs", "diagnostic_msgs"} <= inside  # the check looks at real imports


def test_console_scripts_go_to_bin_and_lib_wrappers_hand_over():
    """Only one mechanism writes each file: setup.cfg does not send console scripts to lib/sgru_ros (where
    the data_files wrappers live), and the wrappers are sh scripts, not `#!/usr/bin/env python3`."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    assert not config.has_option("develop", "script_dir") and not config.has_option("develop", "script-dir")
    assert not config.has_option("install", "install_scripts") and not config.has_option("install", "install-scripts")
    for name in ("stereo_node", "stereo_lifecycle_node", "sample_source"):
        wrapper = REPO / "bin" / name
        assert os.access(wrapper, os.X_OK), wrapper
        text = wrapper.read_text()
        assert text.startswith("#!/bin/sh\n") and f'/../../bin/{name}"' in text and "readlink" not in text


@pytest.mark.skipif(not shutil.which("sh"), reason="needs a POSIX sh")
def test_lib_wrapper_execs_the_console_script_of_its_own_prefix_even_through_a_symlink(tmp_path):
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib/sgru_ros").mkdir(parents=True)
    # as colcon --symlink-install does: the installed wrapper is a link into the source tree
    (prefix / "lib/sgru_ros/stereo_node").symlink_to(REPO / "bin/stereo_node")
    env = dict(os.environ, PATH="/usr/bin:/bin")
    proc = subprocess.run([str(prefix / "lib/sgru_ros/stereo_node"), "--ros-args"], capture_output=True,
                          text=True, timeout=30, env=env)
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert len(proc.stderr.splitlines()) == 1 and "sgru_ros: stereo_node:" in proc.stderr, proc.stderr
    script = prefix / "bin/stereo_node"
    script.write_text('#!/bin/sh\necho "console script: $*"\nexit 3\n')
    script.chmod(0o755)
    proc = subprocess.run([str(prefix / "lib/sgru_ros/stereo_node"), "--ros-args", "-p", "a:=b c"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 3 and proc.stdout == "console script: --ros-args -p a:=b c\n", proc


def _installed_lib_executable(name: str) -> Path:
    exe = Path(sys.prefix) / "lib/sgru_ros" / name
    if not exe.is_file():
        pytest.skip("sgru_ros is not installed into this environment")
    return exe


def _bare_environment() -> dict[str, str]:
    """The venv neither activated nor on PATH: only the system directories."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = "/usr/bin:/bin"
    return env


def test_installed_console_scripts_name_the_installing_interpreter():
    _installed_lib_executable("stereo_node")
    for name in ("stereo_node", "sample_source", "sgru-stereo"):
        script = Path(sys.prefix) / "bin" / name
        assert script.is_file() and os.access(script, os.X_OK), script
        shebang = script.read_text().splitlines()[0]
        assert shebang.startswith("#!") and "/usr/bin/env" not in shebang, shebang
        assert Path(shebang[2:].split()[0]).resolve() == Path(sys.executable).resolve(), shebang


def test_lib_executable_starts_the_node_and_reports_a_bad_model_in_one_line():
    exe = _installed_lib_executable("stereo_node")
    proc = subprocess.run([str(exe), "--ros-args", "-p", "model:=/nonexistent/model.pth"], capture_output=True,
                          text=True, timeout=120, env=_bare_environment())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "cannot start" in line]
    assert len(errors) == 1 and "no such checkpoint file" in errors[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "No module named" not in proc.stdout + proc.stderr


def test_lib_sample_source_reports_a_bad_rate_in_one_line():
    exe = _installed_lib_executable("sample_source")
    proc = subprocess.run([str(exe), "--ros-args", "-p", "rate:=0.0"], capture_output=True, text=True, timeout=120,
                          env=_bare_environment())
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output and "No module named" not in output, output
    assert len([line for line in output.splitlines() if "rate" in line]) == 1, output


def _launch_module():
    pytest.importorskip("launch_ros", reason="launch_ros is not installable here; runs in a ROS 2 workspace")
    spec = importlib.util.spec_from_file_location("stereo_launch", REPO / "launch/stereo.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_arguments_override_the_params_file_only_when_given():
    module = _launch_module()
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument

    context = LaunchContext()
    context.launch_configurations.update({"iterations": "16", "approximate_sync": "true",
                                          "approximate_sync_tolerance_seconds": "1", "model": "/m/s.pth"})
    for action in module.generate_launch_description().entities:
        if isinstance(action, DeclareLaunchArgument):
            action.visit(context)  # the defaults of the arguments not given
    overrides = module._node_overrides(context)
    assert isinstance(overrides["approximate_sync_tolerance_seconds"], float)  # rclpy rejects 1 for a double
    assert overrides == {"iterations": 16, "approximate_sync": True,
                                               "approximate_sync_tolerance_seconds": 1.0, "model": "/m/s.pth"}


def test_rviz_view_follows_the_namespace_and_the_fixed_frame():
    import yaml

    from sgru_ros.rviz_config import rviz_config

    template = (REPO / "config/stereo.rviz").read_text()
    for namespace, prefix in (("stereo", "/stereo"), ("/robot/stereo/", "/robot/stereo"), ("", "")):
        config = yaml.safe_load(rviz_config(template, namespace, "camera_left_optical"))
        manager = config["Visualization Manager"]
        topics = {d["Topic"]["Value"] for d in manager["Displays"] if "Topic" in d}
        assert topics == {f"{prefix}/points2", f"{prefix}/disparity/color", f"{prefix}/confidence"}
        assert manager["Global Options"]["Fixed Frame"] == "camera_left_optical"
    with pytest.raises(ValueError, match="rviz_fixed_frame is empty"):
        rviz_config(template, "stereo", " ")


def test_importing_the_package_lets_openmp_threads_sleep_unless_the_user_chose():
    """NNPACK's thread pool needs the cores that spinning OpenMP threads would hold (sgru_ros/__init__.py)."""
    code = "import sgru_ros, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run_env = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_the_version_lives_in_package_xml_and_heads_the_changelog():
    import sgru_ros

    version = ET.parse(REPO / "package.xml").getroot().findtext("version")
    releases = re.findall(r"^(\d+\.\d+\.\d+) \((\d{4}-\d{2}-\d{2})\)\n-+$", (REPO / "CHANGELOG.rst").read_text(), re.M)
    assert releases and releases[0][0] == version, (version, releases[:1])
    assert [r[1] for r in releases] == sorted((r[1] for r in releases), reverse=True)  # newest first
    assert not re.search(r"version\s*=\s*['\"]", (REPO / "setup.py").read_text())  # read from package.xml
    assert sgru_ros.__version__ == version


def test_the_sample_source_starts_without_torch():
    """The sample source shares the nodes' runtime helpers (ros/runtime.py), which never import torch: it
    starts in a fraction of the node's time on a small board."""
    import subprocess
    import sys

    code = "import sys, sgru_ros.ros.sample_source; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr
