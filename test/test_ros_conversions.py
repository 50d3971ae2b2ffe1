"""Image message conversions (no cv_bridge) and the cloud message layout."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")

from sensor_msgs.msg import Image, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sgru_ros.geometry import CloudLayout, StereoGeometry  # noqa: E402
from sgru_ros.ros.conversions import array_to_image, cloud_message, image_to_rgb  # noqa: E402

RGB = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
GEOMETRY = StereoGeometry.from_projections([2, 0, 0.5, 0, 0, 2, -1, 0, 0, 0, 1, 0],
                                           [2, 0, 0.5, -0.2, 0, 2, -1, 0, 0, 0, 1, 0])


def _msg(data: bytes, encoding: str, step: int, width: int = 3, height: int = 2, bigendian: int = 0) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=bigendian)
    msg.data = data
    return msg


def test_color_encodings_with_row_padding():
    padded = lambda a: b"".join(row.tobytes() + b"\0\0" for row in a)  # noqa: E731
    assert np.array_equal(image_to_rgb(_msg(padded(RGB), "rgb8", 11)), RGB)
    assert np.array_equal(image_to_rgb(_msg(padded(RGB[..., ::-1]), "bgr8", 11)), RGB)
    bgra = np.concatenate([RGB[..., ::-1], np.full((2, 3, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(image_to_rgb(_msg(bgra.tobytes(), "bgra8", 12)), RGB)


def test_mono_encodings():
    mono = RGB[..., 0]
    assert np.array_equal(image_to_rgb(_msg(mono.tobytes(), "mono8", 3)), np.repeat(mono[..., None], 3, 2))
    wide = (mono.astype(np.uint16) << 8) | 0x7F
    out = image_to_rgb(_msg(wide.astype(">u2").tobytes(), "mono16", 6, bigendian=1))
    assert np.array_equal(out[..., 1], mono)


@pytest.mark.parametrize("pattern,offsets", [("rggb", (0, 1, 3)), ("bggr", (3, 1, 0)), ("gbrg", (2, 0, 1)),
                                             ("grbg", (1, 0, 2))])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_mosaics_give_the_colour_they_sampled(pattern, offsets, bits):
    """A flat colour sampled through each mosaic (offsets: where R, G, B sit in the 2x2 cell, row-major) comes
    back as that colour away from the border."""
    colour = (200, 100, 50)
    cell = np.zeros(4, np.uint16)
    for channel, offset in enumerate(offsets):
        cell[offset] = colour[channel]
    cell[{0, 1, 2, 3}.difference(offsets).pop()] = colour[1]  # the second green
    mosaic = np.tile(cell.reshape(2, 2), (4, 5))
    data = (mosaic.astype(np.uint8) if bits == 8 else (mosaic << 8 | 0x55).astype("<u2")).tobytes()
    out = image_to_rgb(_msg(data, f"bayer_{pattern}{bits}", 10 * bits // 8, height=8, width=10))
    assert out.shape == (8, 10, 3) and np.abs(out[2:-2, 2:-2].astype(int) - colour).max() <= 1, out[4, 4]


def test_16_bit_colour_and_opencv_style_encodings():
    wide = lambda a: ((a.astype(np.uint16) << 8) | 0x33).astype("<u2")  # noqa: E731
    assert np.array_equal(image_to_rgb(_msg(wide(RGB).tobytes(), "rgb16", 18)), RGB)
    assert np.array_equal(image_to_rgb(_msg(wide(RGB[..., ::-1]).tobytes(), "bgr16", 18)), RGB)
    rgba = np.concatenate([RGB, np.full((2, 3, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(image_to_rgb(_msg(wide(rgba).tobytes(), "rgba16", 24)), RGB)
    assert np.array_equal(image_to_rgb(_msg(wide(rgba[..., [2, 1, 0, 3]]).tobytes(), "bgra16", 24)), RGB)
    assert np.array_equal(image_to_rgb(_msg(RGB[..., ::-1].tobytes(), "8UC3", 9)), RGB)  # read as bgr8
    assert np.array_equal(image_to_rgb(_msg(RGB[..., 0].tobytes(), "8UC1", 3))[..., 2], RGB[..., 0])


@pytest.mark.parametrize("encoding,layout", [("yuv422", "UYVY"), ("yuv422_yuy2", "YUYV")])
def test_yuv422_byte_orders(encoding, layout):
    """Grey (U = V = 128) with a dark left and a bright right half: grey comes back only when the bytes are
    read in the encoding's order (swapping Y and U/V gives colours)."""
    y = np.repeat(np.array([[60, 60, 200, 200]], np.uint8), 2, axis=0)  # 2 rows of 4 pixels
    pairs = []
    for row in y:
        for y0, y1 in zip(row[0::2], row[1::2]):
            pairs += [128, y0, 128, y1] if layout == "UYVY" else [y0, 128, y1, 128]
    out = image_to_rgb(_msg(bytes(pairs), encoding, 8, height=2, width=4)).astype(int)
    assert np.abs(out - out[..., :1]).max() <= 1  # grey
    assert out[0, 0, 0] < 80 and out[0, 3, 0] > 180
    with pytest.raises(ValueError, match="needs an even width"):
        image_to_rgb(_msg(bytes(12), encoding, 6, height=2, width=3))


def _bt601(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB -> limited-range BT.601 Y, U, V (uint8), the inverse of what cameras' YUV means."""
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return tuple(np.rint(c).astype(np.uint8) for c in (y, u, v))


@pytest.mark.parametrize("encoding", ["nv21", "nv24"])
@pytest.mark.parametrize("padding", [0, 4])
def test_semi_planar_yuv_gives_the_colours_it_encodes(encoding, padding):
    """Four 2x2-aligned colour blocks through nv21 (4:2:0, V before U) and nv24 (4:4:4, U before V), with and
    without row padding: each comes back as its colour (a swapped U/V turns orange blue)."""
    colours = np.array([[200, 100, 50], [30, 160, 220], [128, 128, 128], [250, 240, 20]], np.uint8)
    rgb = np.repeat(np.repeat(colours.reshape(2, 2, 3), 2, axis=0), 2, axis=1)  # 4 x 4
    y, u, v = _bt601(rgb)
    width, step = 4, 4 + padding
    if encoding == "nv21":
        chroma = np.stack([v[::2, ::2], u[::2, ::2]], axis=-1).reshape(2, width)
        chroma_step = step
    else:
        chroma = np.stack([u, v], axis=-1).reshape(4, 2 * width)
        chroma_step = 2 * step
    pad = lambda plane, stride: np.pad(plane, ((0, 0), (0, stride - plane.shape[1])))  # noqa: E731
    data = pad(y, step).tobytes() + pad(chroma, chroma_step).tobytes()
    out = image_to_rgb(_msg(data, encoding, step, height=4, width=width))
    assert out.shape == (4, 4, 3) and np.abs(out.astype(int) - rgb).max() <= 3, out
    with pytest.raises(ValueError, match="image data too short"):
        image_to_rgb(_msg(data[:-1], encoding, step, height=4, width=width))


def test_bad_images_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="unsupported image encoding 'nv12'"):
        image_to_rgb(_msg(b"\0" * 12, "nv12", 6))
    with pytest.raises(ValueError, match="image data too short"):
        image_to_rgb(_msg(b"\0" * 10, "rgb8", 9))


def test_float_image_and_cloud_messages():
    header = Header(frame_id="cam")
    depth = np.array([[1.5, np.nan]], np.float32)
    msg = array_to_image(depth, "32FC1", header)
    assert (msg.encoding, msg.width, msg.height, msg.step) == ("32FC1", 2, 1, 8)
    assert np.array_equal(np.frombuffer(msg.data, np.float32), depth.ravel(), equal_nan=True)
    cloud = cloud_message(np.ones((1, 2), np.float32), GEOMETRY, RGB[:1, :2], CloudLayout(True, False), header)
    assert (cloud.point_step, cloud.row_step, len(cloud.data)) == (32, 64, 64)
    assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
        ("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
        ("rgb", 16, PointField.FLOAT32)]


def test_cloud_message_refills_an_earlier_clouds_data_of_the_same_size():
    layout, header = CloudLayout(True, False), Header(frame_id="cam")
    first = cloud_message(np.ones((1, 2), np.float32), GEOMETRY, RGB[:1, :2], layout, header)
    depth = np.array([[4, 6]], np.float32)
    second = cloud_message(depth, GEOMETRY, RGB[:1, :2], layout, header, reuse=first.data)
    assert second.data is first.data
    assert np.array_equal(np.frombuffer(second.data, np.float32).reshape(2, 8)[:, :3], GEOMETRY.points(depth)[0])
    larger = cloud_message(np.ones((2, 2), np.float32), GEOMETRY, RGB[:2, :2], layout, header, reuse=first.data)
    assert larger.data is not first.data and len(larger.data) == 128


def test_a_colour_and_a_mono_image_do_not_make_a_pair():
    from sgru_ros.ros.conversions import stereo_pair_to_rgb

    rgb = np.random.default_rng(0).integers(0, 255, (4, 6, 3), dtype=np.uint8)
    colour = array_to_image(rgb, "rgb8", Header())
    mono = Image(height=4, width=6, encoding="mono8", step=6, data=rgb[..., 0].tobytes())
    left, right = stereo_pair_to_rgb(colour, array_to_image(rgb[..., ::-1].copy(), "bgr8", Header()))
    assert np.array_equal(left, right)
    with pytest.raises(ValueError, match=r"^left image is rgb8 \(colour\) but right image is mono8 \(mono\)"):
        stereo_pair_to_rgb(colour, mono)


def test_compressed_image_sizes_are_read_from_the_header_and_huge_ones_are_not_decoded():
    import struct
    import zlib

    import cv2

    from sgru_ros.ros.conversions import compressed_size, compressed_to_rgb
    from sensor_msgs.msg import CompressedImage

    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    for ext in (".png", ".jpg"):
        data = cv2.imencode(ext, image)[1].tobytes()
        assert compressed_size(data) == (80, 48), ext
    assert compressed_size(b"not an image") is None
    # An 83-byte PNG that claims 60000 x 60000 pixels (a decompression bomb in miniature).
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731,E501
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    assert compressed_size(bomb) == (60000, 60000)
    msg = CompressedImage(format="png")
    msg.data = bomb
    with pytest.raises(ValueError, match=r"claims 60000x60000 pixels, more than the 40000000 this node decodes"):
        compressed_to_rgb(msg, max_pixels=40_000_000)


def test_corrupt_jpeg_is_an_error_and_a_good_one_decodes_as_opencv_does():
    """200 changed bytes in a Motorcycle JPEG: OpenCV decodes it (a libjpeg warning on stderr, wrong pixels);
    here it is refused. An intact JPEG gives OpenCV's pixels exactly."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    from sgru_ros.calibration import motorcycle_pair
    from sgru_ros.ros.conversions import compressed_to_rgb

    left = motorcycle_pair()[0]
    good = cv2.imencode(".jpg", cv2.cvtColor(left, cv2.COLOR_RGB2BGR))[1].tobytes()
    bad = bytearray(good)
    rng = np.random.default_rng(0)
    for i in rng.choice(np.arange(1000, len(bad) - 10), 200, replace=False):
        bad[i] = rng.integers(0, 256)
    assert cv2.imdecode(np.frombuffer(bytes(bad), np.uint8), cv2.IMREAD_COLOR) is not None  # OpenCV takes it
    msg = CompressedImage(format="rgb8; jpeg compressed bgr8")
    msg.data = bytes(bad)
    with pytest.raises(ValueError, match=r"corrupt compressed image \(rgb8; jpeg compressed bgr8, \d+ bytes\): "):
        compressed_to_rgb(msg)
    msg.data = good[:-4000]  # truncated
    with pytest.raises(ValueError, match="corrupt compressed image .*Premature end of JPEG file"):
        compressed_to_rgb(msg)
    msg.data = good
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(compressed_to_rgb(msg), expected)


def test_binning_and_roi_adjust_the_projection_and_the_image_size_as_image_geometry_does():
    from sensor_msgs.msg import CameraInfo, RegionOfInterest

    from sgru_ros.ros.conversions import image_size, projection

    full = [800.0, 0, 640.0, -80.0, 0, 800.0, 480.0, 0, 0, 0, 1, 0]  # a 1280 x 960 sensor, Tx = -800 * 0.1
    binned = CameraInfo(width=1280, height=960, binning_x=2, binning_y=2, p=full)
    assert image_size(binned) == (640, 480)
    np.testing.assert_allclose(projection(binned), [[400, 0, 320, -40], [0, 400, 240, 0], [0, 0, 1, 0]])
    roi = CameraInfo(width=1280, height=960, p=full,
                     roi=RegionOfInterest(x_offset=320, y_offset=240, width=640, height=480))
    assert image_size(roi) == (640, 480)
    np.testing.assert_allclose(projection(roi), [[800, 0, 320, -80], [0, 800, 240, 0], [0, 0, 1, 0]])
    plain = CameraInfo(width=640, height=480, p=full)
    assert image_size(plain) == (640, 480) and np.array_equal(projection(plain), np.reshape(full, (3, 4)))


def test_a_camera_info_calibration_is_equal_for_equal_fields_nan_included_and_its_size_says_when_unknown():
    from sensor_msgs.msg import CameraInfo

    from sgru_ros.ros.conversions import calibration_of

    def info(**fields) -> CameraInfo:
        msg = CameraInfo(width=640, height=480, p=[500.0, 0.0, 320.0, 0.0, 0.0, 500.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    assert calibration_of(info()) == calibration_of(info(header=Header(frame_id="later")))
    assert calibration_of(info(d=[float("nan")] * 5)) == calibration_of(info(d=[float("nan")] * 5))
    assert calibration_of(info())[0] != calibration_of(info(binning_x=2))[0]
    assert calibration_of(info(binning_x=2))[1] == (320, 480)
    assert calibration_of(info(width=0, height=0))[1] is None  # the camera_info gives no size


def test_the_stall_reason_says_when_image_pairs_find_no_camera_info():
    from sgru_ros.ros.diagnostics import stall_reason

    topics = ["/l/image_rect", "/r/image_rect", "/l/camera_info", "/r/camera_info"]
    reason = stall_reason(topics, [5, 5, 3, 3], [10, 10, 7, 7], 0, False, 0.02, pairs_without_info=4)
    assert reason.startswith("the images pair up, but 4 pairs found no camera_info stamped as their images")
    assert "/l/camera_info 0.000000007" in reason
    lost = stall_reason(topics, [5, 5, 3, 3], [10, 10, 10, 10], 0, False, 0.02)
    assert "messages are being lost on the way" in lost
