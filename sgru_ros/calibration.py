"""Rectified stereo calibration for the sample source (no ROS import).

A calibration YAML holds five numbers of the rectified pair::

    focal_length: 994.978   # px, both cameras after rectification
    cx: 311.193             # left principal point (px)
    cy: 254.877
    cx_right: 342.279       # right principal point x (px); default: cx
    baseline: 0.193001      # metres
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class StereoCalibration:
    focal_length: float
    cx: float
    cy: float
    cx_right: float
    baseline: float

    def __post_init__(self) -> None:
        for name in ("focal_length", "cx", "cy", "cx_right", "baseline"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} is {getattr(self, name)}: calibration values must be finite")
        if not (self.focal_length > 0 and self.baseline > 0):
            raise ValueError(f"focal_length and baseline must be positive, got {self.focal_length}, {self.baseline}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> StereoCalibration:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read calibration ({err.__class__.__name__}: {err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping with focal_length, cx, cy, baseline")
        missing = [k for k in ("focal_length", "cx", "cy", "baseline") if k not in data]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        try:
            return cls(focal_length=float(data["focal_length"]), cx=float(data["cx"]), cy=float(data["cy"]),
                       cx_right=float(data.get("cx_right", data["cx"])), baseline=float(data["baseline"]))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    def to_yaml(self, path: str | Path) -> None:
        """Write the file ``from_yaml`` reads."""
        import yaml

        Path(path).write_text(yaml.safe_dump({"focal_length": self.focal_length, "cx": self.cx, "cy": self.cy,
                                              "cx_right": self.cx_right, "baseline": self.baseline}))

    def scaled(self, factor: float) -> StereoCalibration:
        """The calibration of the images resized by ``factor``."""
        return StereoCalibration(self.focal_length * factor, self.cx * factor, self.cy * factor,
                                 self.cx_right * factor, self.baseline)

    def intrinsics(self, right: bool = False) -> np.ndarray:
        cx = self.cx_right if right else self.cx
        return np.array([[self.focal_length, 0, cx], [0, self.focal_length, self.cy], [0, 0, 1]])

    def projection(self, right: bool = False) -> np.ndarray:
        """3 x 4 rectified P; the right one carries -f * baseline in P[0, 3] (ROS convention)."""
        p = np.zeros((3, 4))
        p[:, :3] = self.intrinsics(right)
        if right:
            p[0, 3] = -self.focal_length * self.baseline
        return p


#: Middlebury 2014 Motorcycle (calib.txt of the full-size scene: f 3979.911, cx 1244.772,
#: cy 1019.507, doffs 124.343, baseline 193.001 mm), scaled to scikit-image's quarter-size pair.
MOTORCYCLE = StereoCalibration(focal_length=3979.911, cx=1244.772, cy=1019.507, cx_right=1244.772 + 124.343,
                               baseline=0.193001).scaled(0.25)


def motorcycle_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-image's Motorcycle pair: (left RGB, right RGB, ground-truth disparity with NaN unknown)."""
    import skimage.data

    left, right, gt = skimage.data.stereo_motorcycle()
    return left, right, np.where(np.isfinite(gt), gt, np.nan).astype(np.float32)
