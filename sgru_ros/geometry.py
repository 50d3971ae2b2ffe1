"""Disparity -> depth -> 3D points, and the PointCloud2 byte layout. Plain numpy, no ROS.

Conventions are stereo_image_proc's (image_geometry's StereoCameraModel):
for a rectified pair with projection matrices P_l, P_r,

    f  = P_r[0, 0]                      focal length (px)
    t  = -P_r[0, 3] / P_r[0, 0]         baseline (m)
    d' = d - (cx_l - cx_r)              published disparity (px)
    Z  = f * t / d'                     depth (m)
    X  = (u - cx_l) * Z / fx,  Y = (v - cy) * Z / fy

The principal-point offset matters on rigs whose rectified principal points
differ (Middlebury's ``doffs``: cx_r - cx_l).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


#: How far the rectified cameras' fx, fy and cy may differ, relative: rectification gives both the same;
#: calibration files round them when written.
RECTIFIED_TOLERANCE = 1e-3


@dataclass(frozen=True)
class StereoGeometry:
    """The numbers of a rectified stereo pair that depth needs.

    fx, fy, cx, cy: left rectified intrinsics (P_l). cx_right: right principal
    point x (P_r[0, 2]). focal: P_r[0, 0]. baseline: -P_r[0, 3] / P_r[0, 0] (m).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    cx_right: float
    focal: float
    baseline: float

    @classmethod
    def from_projections(cls, p_left: np.ndarray, p_right: np.ndarray) -> StereoGeometry:
        """p_left, p_right: 3 x 4 (or 12 values, row-major) rectified projection matrices."""
        pl = np.asarray(p_left, dtype=np.float64).reshape(3, 4)
        pr = np.asarray(p_right, dtype=np.float64).reshape(3, 4)
        for side, p in (("left", pl), ("right", pr)):
            bad = np.argwhere(~np.isfinite(p))
            if len(bad):
                row, col = bad[0]
                raise ValueError(f"{side} camera_info P[{row},{col}] is {p[row, col]}: the projection matrix must "
                                 "be finite")
        if not (pl[0, 0] > 0 and pl[1, 1] > 0 and pr[0, 0] > 0):
            raise ValueError("camera_info P has no positive focal length: is the camera calibrated?")
        if pl[0, 3] != 0:
            raise ValueError(f"left camera_info P[0,3] = {pl[0, 3]:g}: the left camera is the reference of a "
                             "rectified pair and has Tx = 0 (is left/right swapped?)")
        for (row, col), field in (((0, 0), "fx"), ((1, 1), "fy"), ((1, 2), "cy")):
            if abs(pl[row, col] - pr[row, col]) > RECTIFIED_TOLERANCE * max(abs(pl[row, col]), 1.0):
                raise ValueError(f"left camera_info P[{row},{col}] ({field}) = {pl[row, col]:g} but right "
                                 f"P[{row},{col}] = {pr[row, col]:g}: a rectified pair shares {field}; are these the "
                                 "rectified camera_infos of one stereo pair?")
        baseline = -pr[0, 3] / pr[0, 0]
        if not baseline > 0:
            raise ValueError(f"right camera_info P[0,3] = {pr[0, 3]:g} gives baseline {baseline:g} m; "
                             "expected -fx * baseline < 0 (is left/right swapped?)")
        return cls(fx=pl[0, 0], fy=pl[1, 1], cx=pl[0, 2], cy=pl[1, 2], cx_right=pr[0, 2], focal=pr[0, 0],
                   baseline=baseline)

    @property
    def principal_offset(self) -> float:
        """cx_l - cx_r, subtracted from the matched disparity."""
        return self.cx - self.cx_right

    def published_disparity(self, disparity: np.ndarray) -> np.ndarray:
        """Matched disparity d (px, left image) -> d' = d - (cx_l - cx_r)."""
        return (disparity - self.principal_offset).astype(np.float32, copy=False)

    def depth(self, published: np.ndarray) -> np.ndarray:
        """d' -> Z = f t / d' in metres; NaN where d' <= 0 or not finite."""
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (self.focal * self.baseline) / published
        return np.where(np.isfinite(published) & (published > 0), z, np.nan).astype(np.float32)

    def point_planes(self, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """H x W depth (NaN = invalid) -> the H x W float32 planes x, y, z of its points
        (x right, y down, z forward; z is the depth itself)."""
        h, w = depth.shape
        depth = np.asarray(depth, dtype=np.float32)
        u = (np.arange(w, dtype=np.float32) - np.float32(self.cx)) / np.float32(self.fx)
        v = (np.arange(h, dtype=np.float32) - np.float32(self.cy)) / np.float32(self.fy)
        return depth * u[None, :], depth * v[:, None], depth

    def points(self, depth: np.ndarray) -> np.ndarray:
        """H x W depth (NaN = invalid) -> H x W x 3 float32 points (``point_planes`` interleaved)."""
        # cv2.merge interleaves the three planes in one pass (strided numpy writes take three).
        return cv2.merge(list(self.point_planes(depth)))


def neighbourhood_range(values: np.ndarray) -> np.ndarray:
    """max - min of each pixel's 3 x 3 neighbourhood (edges replicated) of finite float32 values:
    OpenCV's morphological gradient, the dilation minus the erosion in one call.

    It finds flying pixels: learned stereo interpolates across depth edges, so pixels on an edge
    get a disparity between foreground and background and float in mid-air in a point cloud.
    Their neighbourhood's disparity range is large; smooth slanted surfaces (a road, a wall) vary
    far less than a pixel between neighbours.
    """
    return cv2.morphologyEx(values, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)


def valid_window(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x_offset, y_offset, width, height) of the True pixels; zeros if none."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return 0, 0, 0, 0
    y0, y1 = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
    x0, x1 = np.argmax(cols), len(cols) - np.argmax(cols[::-1])
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


@dataclass(frozen=True)
class CloudLayout:
    """PointCloud2 field layout as stereo_image_proc writes it.

    With colour: x, y, z then rgb packed in a float32 (PCL's 0x00RRGGBB).
    Default (``avoid_padding=False``): xyz padded to 16 bytes, rgb at 16,
    32-byte points (``setPointCloud2FieldsByString(2, "xyz", "rgb")``);
    ``avoid_padding=True``: rgb at 12, 16-byte points. Without colour: x, y, z
    in 16 (padded) or 12 bytes.
    """

    color: bool
    avoid_padding: bool

    @property
    def fields(self) -> list[tuple[str, int]]:
        """(name, byte offset) pairs; every field is one FLOAT32."""
        xyz = [("x", 0), ("y", 4), ("z", 8)]
        if not self.color:
            return xyz
        return xyz + [("rgb", 12 if self.avoid_padding else 16)]

    @property
    def point_step(self) -> int:
        if self.color:
            return 16 if self.avoid_padding else 32
        return 12 if self.avoid_padding else 16


def pack_cloud(depth: np.ndarray, geometry: StereoGeometry, rgb: np.ndarray | None, layout: CloudLayout,
               out: np.ndarray | None = None) -> np.ndarray:
    """The points of an H x W depth map (NaN = invalid; ``StereoGeometry.point_planes``) and
    H x W x 3 uint8 RGB -> row-major point bytes (a flat uint8 array of H * W * point_step).

    out: a flat uint8 array of that size to fill instead of a new zeroed one. Only the fields are
    written: its padding bytes must already be zero (a buffer this function filled before with
    the same layout)."""
    h, w = depth.shape
    if layout.color and (rgb is None or rgb.shape[:2] != (h, w)):
        raise ValueError("a coloured cloud needs an H x W x 3 RGB image of the same size")
    size = h * w * layout.point_step
    if out is None:
        out = np.zeros(size, np.uint8)
    elif out.shape != (size,) or out.dtype != np.uint8:
        raise ValueError(f"out must be a flat uint8 array of {size} bytes, got {out.dtype} {out.shape}")
    point_bytes = out.reshape(h, w, layout.point_step)
    # cv2.mixChannels copies channels between arrays in one pass, in place: the x, y and z planes
    # into the first three float32 words of every point (no interleaved H x W x 3 copy first),
    # the colour bytes into the rgb field.
    cv2.mixChannels(list(geometry.point_planes(depth)), [point_bytes.view(np.float32)], [0, 0, 1, 1, 2, 2])
    if layout.color:
        # PCL's rgb is the float32 whose bits are 0x00RRGGBB: little-endian bytes B, G, R, 0.
        offset = dict(layout.fields)["rgb"]
        cv2.mixChannels([np.ascontiguousarray(rgb, dtype=np.uint8)], [point_bytes],
                        [2, offset, 1, offset + 1, 0, offset + 2])
    return out


def write_ply(path: str, points: np.ndarray, rgb: np.ndarray | None = None) -> int:
    """Write the finite points of an H x W x 3 cloud as binary little-endian PLY; returns the count."""
    valid = np.isfinite(points).all(axis=-1)
    xyz = points[valid].astype("<f4")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    data = np.empty(len(xyz), dtype=fields)
    data["x"], data["y"], data["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if rgb is not None:
        colors = rgb[valid]
        data["red"], data["green"], data["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(xyz)}",
              "property float x", "property float y", "property float z"]
    if rgb is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    with open(path, "wb") as f:
        f.write(("\n".join(header + ["end_header"]) + "\n").encode())
        f.write(data.tobytes())
    return len(xyz)


@dataclass
class DisparityProducts:
    """What a DisparityImage carries, H x W each.

    disparity: published disparity d' (float32), invalid pixels set to
        ``invalid_disparity(min_disparity)``: below min_disparity as the
        message requires, and below zero, so that a consumer which takes
        d' > 0 as valid (depth = f T / d') does not read it as a surface.
    valid: pixels with a real match (inside the right image, d' > 0).
    window: (x, y, width, height) bounding the valid disparities.
    min_disparity, max_disparity: the range d' can take.
    """

    disparity: np.ndarray
    valid: np.ndarray
    window: tuple[int, int, int, int]
    min_disparity: float
    max_disparity: float


def invalid_disparity(min_disparity: float) -> float:
    """The value of invalid pixels: min(min_disparity, 0) - 1.

    stereo_image_proc writes ``min_disparity - 1``, which is positive on a rig
    whose right principal point lies right of the left one (min_disparity =
    cx_r - cx_l > 1): a consumer testing d' > 0 would read a wall at
    f T / (min_disparity - 1). This value is below min_disparity (the
    message's rule) and never above -1."""
    return min(min_disparity, 0.0) - 1.0


def disparity_products(disparity: np.ndarray, geometry: StereoGeometry, max_disparity: float) -> DisparityProducts:
    """The network's disparity d (H x W, left image pixels) as published. A disparity is valid
    when its match x - d lies inside the right image and d' > 0."""
    return _disparity_products(np.asarray(disparity, dtype=np.float32), geometry, max_disparity)[0]


def _disparity_products(d: np.ndarray, geometry: StereoGeometry,
                        max_disparity: float) -> tuple[DisparityProducts, np.ndarray]:
    """``disparity_products`` of float32 ``d``, and d' everywhere (for the depth)."""
    columns = np.arange(d.shape[1], dtype=np.float32)[None, :]
    published = geometry.published_disparity(d)
    # NaN and infinities fail one of the two comparisons, so no isfinite pass is needed.
    with np.errstate(invalid="ignore"):
        valid = d <= columns
        valid &= published > 0
    min_d = -geometry.principal_offset
    products = DisparityProducts(disparity=np.where(valid, published, np.float32(invalid_disparity(min_d))),
                                 valid=valid, window=valid_window(valid), min_disparity=float(min_d),
                                 max_disparity=float(max_disparity - geometry.principal_offset))
    return products, published


@dataclass
class DepthProducts:
    """The disparity as published and depth in metres (NaN where not a point of the cloud; the
    points themselves: ``StereoGeometry.points`` or, packed for a cloud, ``pack_cloud``)."""

    disparity: DisparityProducts
    depth: np.ndarray


def depth_products(disparity: np.ndarray, geometry: StereoGeometry, max_disparity: float,
                   min_depth: float = 0.0, max_depth: float = float("inf"),
                   flying_threshold: float | None = 1.0) -> DepthProducts:
    """From the network's disparity to the published disparity and depth (the points follow
    from the depth: ``StereoGeometry.points``, ``pack_cloud``). A point (and depth) is valid
    when its disparity is, its depth is within [min_depth, max_depth], and it is not a flying
    pixel (when ``flying_threshold`` is not None): the range of the valid disparities in its
    3 x 3 neighbourhood (``neighbourhood_range``, invalid ones counted as 0) is at most that many px."""
    d = np.asarray(disparity, dtype=np.float32)
    disp, published = _disparity_products(d, geometry, max_disparity)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.float32(geometry.focal * geometry.baseline) / published  # f t / d', valid where disp.valid
    point_ok = disp.valid.copy()
    # A valid d' is positive, so is its depth (+inf at most): the limits only cut when they can.
    if min_depth > 0:
        point_ok &= depth >= min_depth
    if max_depth < float("inf"):
        point_ok &= depth <= max_depth
    if flying_threshold is not None:  # not a flying pixel: a 3 x 3 disparity range (valid values are finite)
        point_ok &= neighbourhood_range(np.where(disp.valid, d, np.float32(0.0))) <= flying_threshold
    depth = np.where(point_ok, depth, np.float32(np.nan))
    return DepthProducts(disparity=disp, depth=depth)
