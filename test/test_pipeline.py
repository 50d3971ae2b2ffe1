"""The ROS-free frame pipeline: checks, inference and geometry of one frame (no DDS involved)."""

from __future__ import annotations

import numpy as np
import pytest

from sgru_ros.calibration import StereoCalibration
from sgru_ros.inference import StereoEstimator
from sgru_ros.pipeline import GeometryOptions, StereoPipeline, check_frame, failure_kind

from conftest import STEP_PX, known_answer_checkpoint

CALIBRATION = StereoCalibration(focal_length=100.0, cx=48.0, cy=32.0, cx_right=50.0, baseline=0.25)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    path = known_answer_checkpoint(tmp_path_factory.mktemp("model") / "known.pth")
    return StereoPipeline(StereoEstimator.from_checkpoint(path, device="cpu"))


def textured(shape=(64, 96)) -> np.ndarray:
    return np.random.default_rng(2).integers(0, 255, size=(*shape, 3), dtype=np.uint8)


def test_a_frame_becomes_disparity_depth_and_points(pipeline):
    image = textured()
    frame = pipeline.process(image, image, CALIBRATION.projection(), CALIBRATION.projection(right=True),
                             iterations=3, extra_iterations=[1, 3, 7, 0])
    # After 3 iterations d = 6 px; published d' = d - (cx_l - cx_r) = 8 px; Z = f B / d' = 3.125 m.
    interior = (slice(8, -8), slice(16, -8))
    np.testing.assert_allclose(frame.disparity.disparity[interior], 3 * STEP_PX + 2.0, atol=1e-3)
    np.testing.assert_allclose(frame.depth[interior], 100.0 * 0.25 / 8.0, rtol=1e-4)
    np.testing.assert_allclose(frame.points[interior][..., 2], frame.depth[interior])
    assert list(frame.intermediate) == [1]  # only counts below the final one
    np.testing.assert_allclose(frame.intermediate[1].disparity[interior], STEP_PX + 2.0, atol=1e-3)
    assert frame.processed_size == (64, 96) and 0.8 < frame.valid_fraction < 1.0
    assert set(frame.timings_ms) == {"checks", "inference", "geometry"}


def test_depth_only_when_asked_and_limits_apply(pipeline):
    image = textured()
    p_left, p_right = CALIBRATION.projection(), CALIBRATION.projection(right=True)
    frame = pipeline.process(image, image, p_left, p_right, iterations=3, depth=False)
    assert frame.depth is None and frame.points is None and frame.disparity.valid.any()
    near = pipeline.process(image, image, p_left, p_right, iterations=3, options=GeometryOptions(max_depth=3.0))
    assert np.isnan(near.depth).all()  # every point is at 3.125 m


@pytest.mark.parametrize("left_shape, right_shape, sizes, message", [
    ((64, 96), (64, 95), (None, None), "left image is 96x64 but right is 95x64"),
    ((64, 96), (64, 96), ((96, 64), (97, 64)), "right camera_info is 97x64 but the images are 96x64"),
])
def test_bad_frames_get_one_line(left_shape, right_shape, sizes, message):
    with pytest.raises(ValueError, match=message):
        check_frame(textured(left_shape), textured(right_shape), sizes)
    check_frame(textured(), textured(), ((0, 0), (96, 64)))  # 0 x 0: the calibration does not say


def test_a_failed_frame_is_named_by_kind(pipeline):
    image = textured()
    with pytest.raises(ValueError, match=r"is left/right swapped\?") as err:
        pipeline.process(image, image, CALIBRATION.projection(right=True), CALIBRATION.projection(), iterations=1)
    assert failure_kind(err.value) == "bad_input"
    assert failure_kind(MemoryError()) == "out_of_memory" and failure_kind(KeyError("x")) == "KeyError"


def test_init_sgbm_starts_the_iterations_from_sgbms_map(pipeline):
    """The known-answer network adds STEP_PX per iteration to where it starts: from its own start a textured
    pair shifted by 8 px gives 3 * STEP_PX; from SGBM's map (init sgbm, which finds the 8 px) it gives
    8 + 3 * STEP_PX. An unknown init is refused."""
    texture = np.random.default_rng(5).integers(0, 255, size=(64, 96 + 8, 3), dtype=np.uint8)
    left, right = np.ascontiguousarray(texture[:, :96]), np.ascontiguousarray(texture[:, 8:])
    p_left, p_right = CALIBRATION.projection(), CALIBRATION.projection(right=True)
    interior = (slice(8, -8), slice(24, -8))
    plain = pipeline.process(left, right, p_left, p_right, iterations=3, depth=False)
    np.testing.assert_allclose(plain.network_disparity[interior], 3 * STEP_PX, atol=1e-3)
    prior = pipeline.process(left, right, p_left, p_right, iterations=3, depth=False, init="sgbm",
                             sgbm_disparities=32)
    assert np.median(np.abs(prior.network_disparity[interior] - (8 + 3 * STEP_PX))) < 0.1
    with pytest.raises(ValueError, match="init 'census' is not one of none, sgbm"):
        pipeline.process(left, right, p_left, p_right, iterations=3, init="census")


def test_the_prior_is_finite_where_sgbm_finds_nothing_on_a_row():
    """Rows without any SGBM value take the smaller of the nearest rows' above and below (the end rows the one
    they have); a map without any value gives zeros: the GRU must never start from NaN."""
    from sgru_ros.evaluation import dense_prior

    disparity = np.full((6, 5), np.nan, np.float32)
    disparity[1, 3], disparity[4, 0] = 9.0, 7.0
    dense = dense_prior(disparity)
    assert np.array_equal(dense[:, 0], [9, 9, 7, 7, 7, 7]) and np.array_equal(dense[1], [9, 9, 9, 9, 9])
    assert np.array_equal(dense_prior(np.full((3, 4), np.nan, np.float32)), np.zeros((3, 4), np.float32))
