"""sgru_ros: Selective-Stereo dense stereo depth for ROS 2."""

import os

# PyTorch's OpenMP threads keep spinning after each parallel region unless told to sleep. NNPACK's
# Winograd convolutions (model/layers.py) run on a second thread pool, and on a board with few cores
# the spinning threads starve it: on 2 cores Selective-IGEV took 2.54 s a frame with spinning threads
# and 1.90 s without (docs/performance.md). OpenMP reads this once, when PyTorch loads it, so it
# only takes effect if sgru_ros is imported before torch; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")



def _version() -> str:
    """The installed distribution's version (setup.py takes it from package.xml), else package.xml beside
    this source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sgru_ros")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        package_xml = Path(__file__).resolve().parents[1] / "package.xml"
        found = re.search(r"<version>([^<]+)</version>", package_xml.read_text()) if package_xml.is_file() else None
        return found.group(1) if found else "unknown"


__version__ = _version()
