"""Disparity -> depth -> points and the PointCloud2 layout, against hand-computed values."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sgru_ros.calibration import MOTORCYCLE
from sgru_ros.geometry import (CloudLayout, StereoGeometry, depth_products, invalid_disparity, pack_cloud,
                               valid_window, write_ply)

# Middlebury 2014 Motorcycle at quarter size, by hand: f = 3979.911/4, cx = 1244.772/4,
# cy = 1019.507/4, doffs = 124.343/4 (cx_r - cx_l), baseline 193.001 mm.
F, CX, CY, DOFFS, B = 994.97775, 311.193, 254.87675, 31.08575, 0.193001


def motorcycle_geometry() -> StereoGeometry:
    p_left = [F, 0, CX, 0, 0, F, CY, 0, 0, 0, 1, 0]
    p_right = [F, 0, CX + DOFFS, -F * B, 0, F, CY, 0, 0, 0, 1, 0]
    return StereoGeometry.from_projections(p_left, p_right)


def test_bundled_motorcycle_calibration_matches_hand_values():
    g = StereoGeometry.from_projections(MOTORCYCLE.projection(), MOTORCYCLE.projection(right=True))
    assert (g.focal, g.cx, g.cy, g.cx_right) == pytest.approx((F, CX, CY, CX + DOFFS))
    assert g.baseline == pytest.approx(B)


def test_projection_parsing():
    g = motorcycle_geometry()
    assert g.focal == F and g.baseline == pytest.approx(B)
    assert g.principal_offset == pytest.approx(-DOFFS)
    with pytest.raises(ValueError, match="baseline"):
        StereoGeometry.from_projections([F, 0, CX, 0, 0, F, CY, 0, 0, 0, 1, 0], [F, 0, CX, F * B, 0, F, CY, 0, 0, 0, 1, 0])
    with pytest.raises(ValueError, match="focal"):
        StereoGeometry.from_projections(np.zeros(12), np.zeros(12))



def test_projections_that_are_not_one_rectified_pair_are_refused_naming_the_field():
    left, right = [F, 0, CX, 0, 0, F, CY, 0, 0, 0, 1, 0], [F, 0, CX + DOFFS, -F * B, 0, F, CY, 0, 0, 0, 1, 0]
    StereoGeometry.from_projections(left, right)  # cx may differ (Middlebury's doffs)
    with pytest.raises(ValueError, match=r"^left camera_info P\[0,3\] = 5: .*is left/right swapped\?"):
        StereoGeometry.from_projections([*left[:3], 5.0, *left[4:]], right)
    with pytest.raises(ValueError, match=r"^left camera_info P\[0,0\] \(fx\) = .* but right P\[0,0\] = "):
        StereoGeometry.from_projections(left, [F * 1.01, *right[1:3], -F * 1.01 * B, *right[4:]])
    with pytest.raises(ValueError, match=r"P\[1,2\] \(cy\)"):
        StereoGeometry.from_projections(left, [*right[:6], CY + 3, *right[7:]])
    StereoGeometry.from_projections(left, [F * (1 + 1e-5), *right[1:3], -F * B, *right[4:]])  # rounding passes


def test_depth_and_point_by_hand():
    g = motorcycle_geometry()
    d = 50.0
    published = g.published_disparity(np.array([[d]], np.float32))[0, 0]
    assert published == pytest.approx(d + DOFFS)  # d' = d - (cx_l - cx_r)
    z = g.depth(np.array([[published]]))[0, 0]
    assert z == pytest.approx(F * B / (d + DOFFS), rel=1e-6)  # Middlebury: Z = f B / (d + doffs)
    assert z == pytest.approx(2.36828, rel=1e-4)
    depth = np.full((301, 401), np.nan, np.float32)
    depth[300, 400] = z
    x, y, zz = g.points(depth)[300, 400]
    assert x == pytest.approx((400 - CX) * z / F, rel=1e-6)
    assert y == pytest.approx((300 - CY) * z / F, rel=1e-6)
    assert zz == pytest.approx(z)
    assert np.isnan(g.depth(np.array([[0.0, -1.0, np.nan]]))).all()


def test_products_validity_rules():
    g = motorcycle_geometry()
    disparity = np.full((6, 40), 10.0, np.float32)
    disparity[:, 20:] = 5.0  # a step edge: flying pixels on both sides
    products = depth_products(disparity, g, max_disparity=192, flying_threshold=1.0)
    # Columns x < d have no match in the right image: invalid, marked below min_disparity.
    disp = products.disparity
    assert not disp.valid[:, :10].any() and disp.valid[:, 10:].all()
    assert disp.min_disparity == pytest.approx(DOFFS) and DOFFS > 1  # cx_r > cx_l: min_disparity - 1 > 0
    # Invalid is below min_disparity (the message's rule) and below zero (no d' > 0 consumer reads a wall).
    assert (disp.disparity[:, :10] == -1.0).all()
    assert invalid_disparity(-5.0) == -6.0 and invalid_disparity(0.0) == -1.0
    assert disp.max_disparity == pytest.approx(192 + DOFFS)
    assert disp.window == (10, 0, 30, 6)
    # Flying pixels next to the edge have no depth, the rest do.
    assert np.isnan(products.depth[:, 19:21]).all() and np.isfinite(products.depth[:, 22:]).all()
    unfiltered = depth_products(disparity, g, max_disparity=192, flying_threshold=None)
    assert np.isfinite(unfiltered.depth[:, 19:21]).all()
    z10, z5 = F * B / (10 + DOFFS), F * B / (5 + DOFFS)
    assert z10 < 5.0 < z5
    near = depth_products(disparity, g, max_disparity=192, min_depth=0.0, max_depth=5.0, flying_threshold=None)
    assert np.isfinite(near.depth[:, 10:20]).all() and np.isnan(near.depth[:, 20:]).all()


def test_flying_pixels_spare_slanted_surfaces():
    ramp = np.tile(2 + np.arange(50, dtype=np.float32) * 0.3, (10, 1))  # 0.3 px per column
    products = depth_products(ramp, motorcycle_geometry(), max_disparity=192, flying_threshold=1.0)
    # Columns 0-2 have no match (x < d); from column 4 on, a pixel's neighbours are all on the ramp.
    assert products.disparity.valid[:, 3:].all() and np.isfinite(products.depth[:, 4:]).all()


def test_valid_window():
    mask = np.zeros((5, 8), bool)
    mask[1:4, 2:7] = True
    assert valid_window(mask) == (2, 1, 5, 3)
    assert valid_window(np.zeros((3, 3), bool)) == (0, 0, 0, 0)


def small_geometry() -> StereoGeometry:
    """fx = fy = 2, cx = 0.5, cy = -1: pixel (0, 0) at depth 4 is the point (-1, 2, 4), exactly."""
    return StereoGeometry.from_projections([2, 0, 0.5, 0, 0, 2, -1, 0, 0, 0, 1, 0],
                                           [2, 0, 0.5, -0.2, 0, 2, -1, 0, 0, 0, 1, 0])


@pytest.mark.parametrize("avoid_padding,step,rgb_offset", [(False, 32, 16), (True, 16, 12)])
def test_cloud_packing(avoid_padding, step, rgb_offset):
    layout = CloudLayout(color=True, avoid_padding=avoid_padding)
    assert layout.point_step == step and dict(layout.fields)["rgb"] == rgb_offset
    depth = np.array([[4.0, np.nan]], np.float32)
    rgb = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    data = pack_cloud(depth, small_geometry(), rgb, layout)
    assert len(data) == 2 * step
    assert struct.unpack_from("<3f", data, 0) == (-1.0, 2.0, 4.0)
    assert struct.unpack_from("<I", data, rgb_offset)[0] == (10 << 16) | (20 << 8) | 30  # 0x00RRGGBB
    assert all(np.isnan(struct.unpack_from("<3f", data, step)))
    assert CloudLayout(color=False, avoid_padding=True).point_step == 12


@pytest.mark.parametrize("color", [True, False])
@pytest.mark.parametrize("avoid_padding", [True, False])
def test_cloud_packed_into_a_reused_buffer_equals_a_fresh_one_and_the_points(color, avoid_padding):
    layout, geometry = CloudLayout(color=color, avoid_padding=avoid_padding), motorcycle_geometry()
    rng = np.random.default_rng(1)
    out = np.zeros(6 * 4 * layout.point_step, np.uint8)
    for _ in range(2):  # the second frame overwrites the first one's points in place
        depth = rng.uniform(0.5, 20, size=(6, 4)).astype(np.float32)
        depth[rng.random((6, 4)) < 0.3] = np.nan
        rgb = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
        assert pack_cloud(depth, geometry, rgb, layout, out=out) is out
        assert np.array_equal(out, pack_cloud(depth, geometry, rgb, layout))
        xyz = out.view(np.float32).reshape(6, 4, layout.point_step // 4)[..., :3]
        np.testing.assert_array_equal(xyz, geometry.points(depth))  # NaN where NaN, else bit for bit
    with pytest.raises(ValueError, match=f"out must be a flat uint8 array of {3 * 4 * layout.point_step} bytes"):
        pack_cloud(depth[:3], geometry, rgb[:3], layout, out=out)


def test_write_ply(tmp_path):
    points = np.array([[[1.0, 2.0, 3.0], [np.nan, 0, 0]]], np.float32)
    rgb = np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8)
    assert write_ply(str(tmp_path / "c.ply"), points, rgb) == 1
    raw = (tmp_path / "c.ply").read_bytes()
    header, body = raw.split(b"end_header\n")
    assert b"element vertex 1" in header
    assert struct.unpack("<3f3B", body) == (1.0, 2.0, 3.0, 1, 2, 3)


@pytest.mark.parametrize("index", range(12))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["left", "right"])
def test_non_finite_projection_values_are_refused_naming_the_field(side, value, index):
    p_left = [F, 0, CX, 0, 0, F, CY, 0, 0, 0, 1, 0]
    p_right = [F, 0, CX + DOFFS, -F * B, 0, F, CY, 0, 0, 0, 1, 0]
    (p_left if side == "left" else p_right)[index] = value
    with pytest.raises(ValueError, match=rf"{side} camera_info P\[{index // 4},{index % 4}\] is -?(nan|inf)"):
        StereoGeometry.from_projections(p_left, p_right)


@pytest.mark.parametrize("field", ["focal_length", "cx", "cy", "cx_right", "baseline"])
@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "nan"])
def test_non_finite_calibration_file_values_are_refused_naming_the_field(tmp_path, field, text):
    from sgru_ros.calibration import StereoCalibration

    values = {"focal_length": "500.0", "cx": "320.0", "cy": "240.0", "cx_right": "320.0", "baseline": "0.1"}
    values[field] = text
    path = tmp_path / "calibration.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    with pytest.raises(ValueError, match=rf"{path}: {field} is -?(nan|inf)"):
        StereoCalibration.from_yaml(path)
