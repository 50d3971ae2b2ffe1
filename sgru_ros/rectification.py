"""Raw camera images to rectified ones, as image_proc does it, without ROS.

    left_model = CameraModel.from_fields(width=1280, height=960, distortion_model="plumb_bob", d=D, k=K, r=R, p=P)
    rectifier = Rectifier()
    rectified = rectifier.rectify(raw_rgb, left_model)   # H x W x 3 in P's pixels (camera_info P)

A camera model is what sensor_msgs/CameraInfo carries for the full sensor (D, K, R, P, binning,
region of interest). Images of a binned or cropped camera are in reduced pixels: K and P are
shifted by the region's offset and divided by the binning, as image_geometry's
PinholeCameraModel does, and the rectified image has the raw image's size. The maps from
rectified to raw pixels are built once per calibration (OpenCV: ``initUndistortRectifyMap``, or
its fisheye variant for ``equidistant``) and kept; each frame is one bilinear ``remap``.

``simulate_raw`` goes the other way (rectified -> raw), for a sample stream and tests.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

#: camera_info distortion models -> the numbers of coefficients (D) each takes. OpenCV reads the
#: pinhole models' D as (k1, k2, p1, p2[, k3[, k4, k5, k6]]) and ``equidistant`` as (k1, k2, k3, k4).
DISTORTION_MODELS = {"plumb_bob": (0, 4, 5), "rational_polynomial": (0, 4, 5, 8), "equidistant": (0, 4)}


@dataclass(frozen=True)
class CameraModel:
    """One camera's calibration as sensor_msgs/CameraInfo carries it: sensor width and height, the
    distortion model and D, K (3 x 3), R (3 x 3) and P (3 x 4) row-major, binning and the region of
    interest (x, y, width, height; a zero width or height: the full sensor). Hashable: the key of
    the maps' cache."""

    width: int
    height: int
    distortion_model: str
    d: tuple[float, ...]
    k: tuple[float, ...]
    r: tuple[float, ...]
    p: tuple[float, ...]
    binning_x: int = 1
    binning_y: int = 1
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)

    @classmethod
    def from_fields(cls, *, width: int, height: int, distortion_model: str, d, k, r, p, binning_x: int = 0,
                    binning_y: int = 0, roi: tuple[int, int, int, int] = (0, 0, 0, 0)) -> CameraModel:
        """From camera_info's fields as they come (sequences of numbers; binning 0 means 1)."""
        return cls(int(width), int(height), distortion_model, tuple(map(float, d)), tuple(map(float, k)),
                   tuple(map(float, r)), tuple(map(float, p)), max(int(binning_x), 1), max(int(binning_y), 1),
                   tuple(int(v) for v in roi))

    def image_size(self) -> tuple[int, int]:
        """(width, height) of this camera's images: the region of interest (or the sensor) over the binning."""
        _, _, width, height = self.roi
        if not (width and height):
            width, height = self.width, self.height
        return width // self.binning_x, height // self.binning_y

    def _reduced(self, matrix: np.ndarray) -> np.ndarray:
        """K or P of the full sensor -> the same for the images' pixels (image_geometry's adjustment)."""
        matrix = matrix.copy()
        matrix[0, 2] -= self.roi[0]
        matrix[1, 2] -= self.roi[1]
        matrix[0] /= self.binning_x
        matrix[1] /= self.binning_y
        return matrix

    def projection(self) -> np.ndarray:
        """3 x 4 rectified projection P of this camera's images."""
        return self._reduced(np.asarray(self.p, dtype=np.float64).reshape(3, 4))

    def intrinsics(self) -> np.ndarray:
        """3 x 3 raw camera matrix K of this camera's images."""
        return self._reduced(np.asarray(self.k, dtype=np.float64).reshape(3, 3))

    def check(self) -> None:
        """ValueError (one line, naming the field) unless this calibration can rectify images."""
        if self.distortion_model not in DISTORTION_MODELS:
            raise ValueError(f"distortion_model {self.distortion_model!r} is not one of "
                             f"{', '.join(DISTORTION_MODELS)}: cannot rectify")
        counts = DISTORTION_MODELS[self.distortion_model]
        if len(self.d) not in counts:
            raise ValueError(f"D has {len(self.d)} coefficients; {self.distortion_model} takes "
                             f"{' or '.join(map(str, counts[1:]))} (or none)")
        if not np.all(np.isfinite(self.d)):
            raise ValueError(f"D must hold finite numbers, got {list(self.d)}")
        for name, values, size in (("K", self.k, 9), ("R", self.r, 9), ("P", self.p, 12)):
            if len(values) != size or not np.all(np.isfinite(values)):
                raise ValueError(f"{name} must hold {size} finite numbers, got {list(values)}")
            if not any(values):
                raise ValueError(f"{name} is all zero: the camera is not calibrated (cannot rectify)")
        if abs(np.linalg.det(np.reshape(self.r, (3, 3))) - 1) > 1e-3:
            raise ValueError(f"R is not a rotation (determinant {np.linalg.det(np.reshape(self.r, (3, 3))):.4f})")

    def _distortion(self) -> np.ndarray:
        return np.asarray(self.d or (0.0,) * 4, dtype=np.float64)

    def rectification_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """The maps from rectified to raw pixels, in OpenCV's fixed-point form (1/32 px), for ``cv2.remap``."""
        self.check()
        k, r, p = self.intrinsics(), np.reshape(self.r, (3, 3)), self.projection()[:, :3]
        if self.distortion_model == "equidistant":
            return cv2.fisheye.initUndistortRectifyMap(k, self._distortion(), r, p, self.image_size(), cv2.CV_16SC2)
        return cv2.initUndistortRectifyMap(k, self._distortion(), r, p, self.image_size(), cv2.CV_16SC2)

    def raw_to_rectified(self, points: np.ndarray) -> np.ndarray:
        """N x 2 raw pixel positions -> N x 2 rectified ones (distortion undone iteratively to 1e-9 px)."""
        self.check()
        k, r, p = self.intrinsics(), np.reshape(self.r, (3, 3)), self.projection()
        points = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
        if self.distortion_model == "equidistant":
            out = cv2.fisheye.undistortPoints(points, k, self._distortion(), R=r, P=p, criteria=criteria)
        elif hasattr(cv2, "undistortPointsIter"):  # OpenCV 4; OpenCV 5's undistortPoints takes the criteria
            out = cv2.undistortPointsIter(points, k, self._distortion(), r, p, criteria)
        else:
            out = cv2.undistortPoints(points, k, self._distortion(), R=r, P=p, criteria=criteria)
        return out.reshape(-1, 2)


class Rectifier:
    """Rectifies images of any number of cameras, keeping the maps of the last ``capacity`` calibrations
    (a calibration changes rarely; two cameras, and a change, fit in the default)."""

    def __init__(self, capacity: int = 4) -> None:
        self._maps: OrderedDict[CameraModel, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._capacity = capacity
        self.maps_built = 0

    def rectify(self, image: np.ndarray, model: CameraModel) -> np.ndarray:
        """H x W (x C) raw image (already demosaiced) -> the same size rectified, bilinear, black where no raw
        pixel maps. ValueError (one line) when the calibration cannot rectify or describes another size."""
        width, height = model.image_size()
        if image.shape[:2] != (height, width):
            raise ValueError(f"camera_info describes {width}x{height} images (binning {model.binning_x}x"
                             f"{model.binning_y}, ROI {model.roi}) but the image is {image.shape[1]}x{image.shape[0]}")
        maps = self._maps.get(model)
        if maps is None:
            maps = model.rectification_maps()
            self.maps_built += 1
            self._maps[model] = maps
            while len(self._maps) > self._capacity:
                self._maps.popitem(last=False)
        self._maps.move_to_end(model)
        return cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def simulate_raw(rectified: np.ndarray, model: CameraModel) -> np.ndarray:
    """What the raw camera of ``model`` saw, from its rectified image (H x W (x C), same size): each raw pixel
    takes the rectified pixel it maps to (bilinear; black outside). For sample streams and tests."""
    map_x, map_y = _raw_maps(model)
    return cv2.remap(rectified, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


@functools.lru_cache(maxsize=4)
def _raw_maps(model: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    """For each raw pixel, the rectified position it shows (H x W float32 each)."""
    width, height = model.image_size()
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    positions = model.raw_to_rectified(np.stack([u.ravel(), v.ravel()], axis=1)).astype(np.float32)
    return positions[:, 0].reshape(height, width), positions[:, 1].reshape(height, width)


def sample_raw_pair(p_left: np.ndarray, p_right: np.ndarray, width: int,
                    height: int) -> tuple[CameraModel, CameraModel]:
    """A raw camera pair whose rectification gives the projections ``p_left`` and ``p_right`` (3 x 4): a lens
    distortion (plumb_bob, about 1 % at the corners) and a rotation of about half a degree for each camera,
    focal lengths and principal points a little off. For a sample stream of raw images and tests."""
    models = []
    for p, d, rotation, scale, offset in (
            (p_left, (-0.12, 0.04, 0.0006, -0.0004, 0.0), (0.006, -0.01, 0.004), 1.03, (4.0, -3.0)),
            (p_right, (-0.11, 0.035, -0.0005, 0.0003, 0.0), (-0.005, 0.008, -0.003), 0.98, (-5.0, 2.0))):
        k = np.array([[p[0, 0] * scale, 0, p[0, 2] + offset[0]], [0, p[1, 1] * scale, p[1, 2] + offset[1]], [0, 0, 1]])
        r = cv2.Rodrigues(np.array(rotation))[0]
        models.append(CameraModel.from_fields(width=width, height=height, distortion_model="plumb_bob", d=d,
                                              k=k.ravel(), r=r.ravel(), p=np.asarray(p).ravel()))
    return models[0], models[1]
