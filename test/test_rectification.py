"""Rectification of raw images (``sgru_ros.rectification``) against OpenCV's own stereo calibration: a
synthetic rig with known lens distortion, points at known depth drawn as blobs into the raw images,
rectified by the package with the R and P that ``cv2.stereoRectify`` gives; rows must line up to 0.1 px
and the depth from the disparity must be right to 1 %."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sgru_ros.rectification import CameraModel, Rectifier, simulate_raw

SIZE = (640, 480)
K_LEFT = np.array([[600.0, 0, 318.0], [0, 602.0, 243.0], [0, 0, 1]])
K_RIGHT = np.array([[605.0, 0, 324.0], [0, 603.0, 238.0], [0, 0, 1]])
ROTATION = cv2.Rodrigues(np.array([0.01, -0.015, 0.005]))[0]  # left camera frame -> right camera frame
TRANSLATION = np.array([-0.12, 0.003, -0.002])  # metres: a 12 cm baseline, slightly off the x axis
DISTORTION = {  # left, right
    "plumb_bob": ([-0.28, 0.09, 0.001, -0.0005, -0.01], [-0.26, 0.08, -0.0008, 0.0004, -0.012]),
    "rational_polynomial": ([-0.25, 0.08, 0.0008, -0.0004, -0.01, 0.02, -0.01, 0.005],
                            [-0.27, 0.07, -0.0006, 0.0003, -0.008, 0.015, -0.012, 0.004]),
    "equidistant": ([0.05, -0.01, 0.003, -0.001], [0.04, -0.012, 0.002, -0.0008]),
}


def _rig(model: str) -> tuple[CameraModel, CameraModel]:
    """Both cameras' models with OpenCV's rectification of the rig (zero disparity at infinity)."""
    d_left, d_right = (np.array(d) for d in DISTORTION[model])
    if model == "equidistant":
        r_left, r_right, p_left, p_right, _ = cv2.fisheye.stereoRectify(
            K_LEFT, d_left, K_RIGHT, d_right, SIZE, ROTATION, TRANSLATION.reshape(3, 1), flags=cv2.CALIB_ZERO_DISPARITY,
            balance=0.0)
    else:
        r_left, r_right, p_left, p_right, *_ = cv2.stereoRectify(
            K_LEFT, d_left, K_RIGHT, d_right, SIZE, ROTATION, TRANSLATION.reshape(3, 1), flags=cv2.CALIB_ZERO_DISPARITY,
            alpha=0.0)
    return tuple(CameraModel.from_fields(width=SIZE[0], height=SIZE[1], distortion_model=model, d=d, k=k.ravel(),
                                         r=r.ravel(), p=p.ravel())
                 for d, k, r, p in ((d_left, K_LEFT, r_left, p_left), (d_right, K_RIGHT, r_right, p_right)))


def _points() -> np.ndarray:
    """N x 3 points (left camera frame, metres) on three planes 1, 2 and 4 m away, each in its own band of rows
    of the view, 65 px apart."""
    points = []
    for depth, rows in ((1.0, (70, 120)), (2.0, (220, 270)), (4.0, (370, 420))):
        for v in rows:
            for u in range(60, 600, 65):
                points.append(((u - K_LEFT[0, 2]) / K_LEFT[0, 0] * depth, (v - K_LEFT[1, 2]) / K_LEFT[1, 1] * depth,
                               depth))
    return np.array(points)


def _project(points: np.ndarray, model: str, k: np.ndarray, d: list[float], right: bool) -> np.ndarray:
    rvec = cv2.Rodrigues(ROTATION)[0] if right else np.zeros(3)
    tvec = TRANSLATION if right else np.zeros(3)
    if model == "equidistant":
        pixels, _ = cv2.fisheye.projectPoints(points.reshape(-1, 1, 3), rvec, tvec, k, np.array(d))
    else:
        pixels, _ = cv2.projectPoints(points, rvec, tvec, k, np.array(d))
    return pixels.reshape(-1, 2)


def _blobs(centres: np.ndarray, sigma: float = 1.3) -> np.ndarray:
    """A raw float32 image with a Gaussian blob at each (sub-pixel) centre."""
    u, v = np.meshgrid(np.arange(SIZE[0]), np.arange(SIZE[1]))
    image = np.zeros((SIZE[1], SIZE[0]), np.float32)
    for cu, cv in centres:
        x0, y0 = int(cu), int(cv)
        window = np.s_[max(y0 - 8, 0):y0 + 9, max(x0 - 8, 0):x0 + 9]
        image[window] += 200 * np.exp(-((u[window] - cu) ** 2 + (v[window] - cv) ** 2) / (2 * sigma ** 2))
    return image


def _centroids(image: np.ndarray, near: np.ndarray, radius: int = 5) -> np.ndarray:
    """The intensity-weighted centroid of ``image`` in a window around each of ``near``."""
    out = []
    for x, y in near:
        x0, y0 = int(round(x)), int(round(y))
        window = image[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1].astype(np.float64)
        v, u = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
        out.append((np.sum(u * window) / window.sum(), np.sum(v * window) / window.sum()))
    return np.array(out)


def _rectified_positions(points: np.ndarray, left: CameraModel, right: CameraModel) -> list[np.ndarray]:
    """Where each point lands in the rectified images, by OpenCV's R and P (the package is not asked)."""
    out = []
    for in_camera, m in ((points, left), (points @ ROTATION.T + TRANSLATION, right)):
        projected = in_camera @ np.reshape(m.r, (3, 3)).T @ m.projection()[:, :3].T
        out.append(projected[:, :2] / projected[:, 2:])
    return out


@pytest.mark.parametrize("model", list(DISTORTION))
def test_rectified_rows_line_up_and_depth_is_right_against_opencv_stereo_rectify(model):
    left_model, right_model = _rig(model)
    points = _points()
    expected = _rectified_positions(points, left_model, right_model)
    apart = np.ones(len(points), bool)  # blobs of different planes that land close together are left out
    for positions in expected:
        distance = np.linalg.norm(positions[:, None] - positions[None], axis=-1) + 1e3 * np.eye(len(points))
        apart &= (distance.min(axis=1) > 16) & np.all((positions > 12) & (positions < np.array(SIZE) - 12), axis=1)
    points, expected = points[apart], [positions[apart] for positions in expected]
    assert len(points) >= 30
    raw = [_blobs(_project(points, model, k, DISTORTION[model][i], right=bool(i)))
           for i, k in enumerate((K_LEFT, K_RIGHT))]
    rectifier = Rectifier()
    rectified = [rectifier.rectify(image, m) for image, m in zip(raw, (left_model, right_model))]
    left_found, right_found = (_centroids(image, near) for image, near in zip(rectified, expected))
    assert np.abs(left_found - expected[0]).max() < 0.1 and np.abs(right_found - expected[1]).max() < 0.1
    assert np.abs(left_found[:, 1] - right_found[:, 1]).max() < 0.1  # rows line up
    p_left, p_right = left_model.projection(), right_model.projection()
    focal, baseline = p_left[0, 0], -p_right[0, 3] / p_right[0, 0]
    depth = focal * baseline / (left_found[:, 0] - right_found[:, 0] - (p_left[0, 2] - p_right[0, 2]))
    true_depth = (points @ np.reshape(left_model.r, (3, 3)).T)[:, 2]
    assert np.abs(depth / true_depth - 1).max() < 0.01, np.abs(depth / true_depth - 1).max()
    assert rectifier.maps_built == 2
    rectifier.rectify(raw[0], left_model)
    assert rectifier.maps_built == 2  # kept, not rebuilt


def test_simulated_raw_images_rectify_back_to_the_original():
    """``simulate_raw`` is the inverse of the rectification: a textured image through both comes back within
    the blur of two bilinear interpolations, away from the border the distortion leaves black."""
    left_model, _ = _rig("plumb_bob")
    texture = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (SIZE[1], SIZE[0], 3), np.uint8), (0, 0), 2)
    back = Rectifier().rectify(simulate_raw(texture, left_model), left_model)
    inner = np.s_[60:-60, 80:-80]
    assert np.abs(back[inner].astype(int) - texture[inner]).mean() < 1.5
    assert np.abs(simulate_raw(texture, left_model)[inner].astype(int) - texture[inner]).mean() > 10  # it did distort


def test_binning_and_roi_rectify_as_the_full_sensor_does():
    """A 2 x 2-binned camera and a cropped one (ROI) rectify to the full sensor's rectification, reduced."""
    full, _ = _rig("plumb_bob")
    texture = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, (SIZE[1], SIZE[0]), np.uint8), (0, 0), 3)
    raw = simulate_raw(texture, full)
    full_rectified = Rectifier().rectify(raw, full)
    fields = dict(width=SIZE[0], height=SIZE[1], distortion_model=full.distortion_model, d=full.d, k=full.k,
                  r=full.r, p=full.p)
    binned = CameraModel.from_fields(**fields, binning_x=2, binning_y=2)
    binned_rectified = Rectifier().rectify(cv2.resize(raw, (320, 240), interpolation=cv2.INTER_AREA), binned)
    reduced = cv2.resize(full_rectified, (320, 240), interpolation=cv2.INTER_AREA)
    assert np.abs(binned_rectified[30:-30, 40:-40].astype(int) - reduced[30:-30, 40:-40]).mean() < 2.5
    cropped = CameraModel.from_fields(**fields, roi=(160, 120, 320, 240))
    cropped_rectified = Rectifier().rectify(raw[120:360, 160:480], cropped)
    assert np.array_equal(cropped_rectified.shape, (240, 320))
    # The crop's rectified P is the full one shifted by the ROI: its pixels are the full rectification's there.
    assert np.abs(cropped_rectified[20:-20, 20:-20].astype(int) - full_rectified[140:340, 180:460]).max() <= 1


@pytest.mark.parametrize("change,reason", [
    (dict(distortion_model="fisheye624"), "distortion_model 'fisheye624' is not one of plumb_bob, "
                                          "rational_polynomial, equidistant: cannot rectify"),
    (dict(d=(0.1, 0.2, 0.0)), "D has 3 coefficients; plumb_bob takes 4 or 5"),
    (dict(k=(0.0,) * 9), "K is all zero: the camera is not calibrated"),
    (dict(d=(0.1, float("nan"), 0.0, 0.0, 0.0)), "D must hold finite numbers"),
    (dict(r=(0.0,) * 9), "R is all zero"),
    (dict(r=(2.0, 0, 0, 0, 1, 0, 0, 0, 1)), "R is not a rotation"),
    (dict(width=320, height=240), "camera_info describes 320x240 images .* but the image is 640x480"),
])
def test_a_calibration_that_cannot_rectify_is_refused_with_the_field(change, reason):
    import dataclasses

    model = dataclasses.replace(_rig("plumb_bob")[0], **change)
    with pytest.raises(ValueError, match=reason):
        Rectifier().rectify(np.zeros((480, 640, 3), np.uint8), model)
