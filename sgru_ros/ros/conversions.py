"""sensor_msgs/stereo_msgs <-> numpy, without cv_bridge (not installable everywhere).

The one module that builds messages from a frame's products (``pipeline.FrameResult``):
the node publishes them, the bag tool writes them.
"""

from __future__ import annotations

import array
import copy

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from ..geometry import CloudLayout, DisparityProducts, StereoGeometry, pack_cloud
from ..rectification import CameraModel


#: encoding -> (channels, dtype, conversion to RGB): a channel order, or an OpenCV colour conversion code.
#: Named as cv_bridge names them (sensor_msgs/image_encodings.h); 8UC1/8UC3/8UC4 carry no colour order and
#: are read as cv_bridge's conversions read them: mono8, bgr8, bgra8. Bayer mosaics are named by their first
#: row (rggb: R G / G B); OpenCV names the same mosaic by its second row, hence bayer_rggb ->
#: COLOR_BayerBG2RGB, as cv_bridge maps them.
_ENCODINGS = {
    "rgb8": (3, np.uint8, [0, 1, 2]),
    "bgr8": (3, np.uint8, [2, 1, 0]),
    "rgba8": (4, np.uint8, [0, 1, 2]),
    "bgra8": (4, np.uint8, [2, 1, 0]),
    "mono8": (1, np.uint8, [0, 0, 0]),
    "8UC1": (1, np.uint8, [0, 0, 0]),
    "8UC3": (3, np.uint8, [2, 1, 0]),
    "8UC4": (4, np.uint8, [2, 1, 0]),
    "mono16": (1, np.uint16, [0, 0, 0]),
    "16UC1": (1, np.uint16, [0, 0, 0]),
    "rgb16": (3, np.uint16, [0, 1, 2]),
    "bgr16": (3, np.uint16, [2, 1, 0]),
    "rgba16": (4, np.uint16, [0, 1, 2]),
    "bgra16": (4, np.uint16, [2, 1, 0]),
    **{f"bayer_{pattern}{bits}": (1, np.uint8 if bits == 8 else np.uint16, code)
       for pattern, code in (("rggb", cv2.COLOR_BayerBG2RGB), ("bggr", cv2.COLOR_BayerRG2RGB),
                             ("gbrg", cv2.COLOR_BayerGR2RGB), ("grbg", cv2.COLOR_BayerGB2RGB))
       for bits in (8, 16)},
    # 4:2:2 YUV, two bytes a pixel: UYVY (image_encodings' "yuv422") and YUYV ("yuv422_yuy2").
    "yuv422": (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (2, np.uint8, cv2.COLOR_YUV2RGB_YUY2),
}
#: Semi-planar YUV (V4L2's layouts): a full-resolution Y plane, then one plane of interleaved chroma pairs.
#: encoding -> (chroma rows per Y row, the chroma pair order). nv21: 4:2:0, V before U (OpenCV converts it);
#: nv24: 4:4:4, U before V (converted here with the same BT.601 limited-range matrix: OpenCV has no NV24).
_SEMI_PLANAR = {"nv21": (0.5, "vu"), "nv24": (1, "uv")}
SUPPORTED_ENCODINGS = (*_ENCODINGS, *_SEMI_PLANAR)
_MONO = frozenset({"mono8", "mono16", "8UC1", "16UC1"})


def image_to_rgb(msg: Image | CompressedImage, max_decode_pixels: int | None = None) -> np.ndarray:
    """sensor_msgs/Image in any of ``SUPPORTED_ENCODINGS`` (colour, mono, 16-bit, Bayer, YUV 4:2:2, nv21, nv24)
    or CompressedImage (jpeg, png, as image_transport's compressed plugin writes them) -> H x W x 3 RGB uint8.
    16-bit values are scaled to 8 bits as cv_bridge does (the high byte). max_decode_pixels: see
    ``compressed_to_rgb``."""
    if isinstance(msg, CompressedImage):
        return compressed_to_rgb(msg, max_decode_pixels)
    if msg.encoding not in SUPPORTED_ENCODINGS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; use one of {', '.join(SUPPORTED_ENCODINGS)}")
    if msg.height == 0 or msg.width == 0:
        raise ValueError("empty image (0 width or height)")
    if msg.encoding in _SEMI_PLANAR:
        return _semi_planar_to_rgb(msg)
    channels, dtype, conversion = _ENCODINGS[msg.encoding]
    itemsize = np.dtype(dtype).itemsize
    row_bytes = msg.width * channels * itemsize
    if msg.step < row_bytes or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"image data too short: {len(msg.data)} bytes for {msg.width}x{msg.height} "
                         f"{msg.encoding} with step {msg.step}")
    raw = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * msg.height).reshape(msg.height, msg.step)
    if msg.encoding == "rgb8" and msg.step == row_bytes:
        return raw.reshape(msg.height, msg.width, 3)  # already what the network takes: no copy
    pixels = raw[:, :row_bytes].copy().view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
    pixels = pixels.reshape(msg.height, msg.width, channels)
    if dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if isinstance(conversion, list):
        return np.ascontiguousarray(pixels[..., conversion])
    if channels == 2 and msg.width % 2:
        raise ValueError(f"{msg.encoding} needs an even width (its pixels come in pairs), got {msg.width}")
    return cv2.cvtColor(np.ascontiguousarray(pixels), conversion)


def _semi_planar_to_rgb(msg: Image) -> np.ndarray:
    """nv21 / nv24 (``_SEMI_PLANAR``) -> H x W x 3 RGB uint8. ``step`` is the Y plane's row stride; a chroma row
    holds ``width`` (4:2:0) or ``2 * width`` (4:4:4) bytes at a stride of ``step`` times as much."""
    chroma_rows, order = _SEMI_PLANAR[msg.encoding]
    width, height, step = msg.width, msg.height, msg.step
    if chroma_rows < 1 and (width % 2 or height % 2):
        raise ValueError(f"{msg.encoding} needs an even width and height (4:2:0 chroma), got {width}x{height}")
    chroma_step = step * (1 if chroma_rows < 1 else 2)
    needed = step * height + chroma_step * int(height * chroma_rows)
    if step < width or len(msg.data) < needed:
        raise ValueError(f"image data too short: {len(msg.data)} bytes for {width}x{height} {msg.encoding} with "
                         f"step {step} (needs {needed})")
    data = np.frombuffer(msg.data, dtype=np.uint8, count=needed)
    luma = data[:step * height].reshape(height, step)[:, :width]
    chroma = data[step * height:].reshape(int(height * chroma_rows), chroma_step)[:, :2 * width if chroma_rows == 1
                                                                                  else width]
    if msg.encoding == "nv21":
        return cv2.cvtColor(np.ascontiguousarray(np.concatenate([luma, chroma])), cv2.COLOR_YUV2RGB_NV21)
    u, v = (chroma[:, 0::2], chroma[:, 1::2]) if order == "uv" else (chroma[:, 1::2], chroma[:, 0::2])
    y = 1.164 * (luma.astype(np.float32) - 16)
    u, v = u.astype(np.float32) - 128, v.astype(np.float32) - 128
    rgb = np.stack([y + 1.596 * v, y - 0.813 * v - 0.391 * u, y + 2.018 * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def stereo_pair_to_rgb(left: Image | CompressedImage, right: Image | CompressedImage,
                       max_decode_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Both images of a set -> H x W x 3 RGB uint8 each; ValueError (one line) when one is colour and the
    other mono: the network would match unlike intensities and return a wrong disparity without a sign."""
    if isinstance(left, Image) and isinstance(right, Image):
        families = ["mono" if msg.encoding in _MONO else "colour" for msg in (left, right)]
        if families[0] != families[1]:
            raise ValueError(f"left image is {left.encoding} ({families[0]}) but right image is {right.encoding} "
                             f"({families[1]}): both cameras of a pair must publish the same kind of image")
    return image_to_rgb(left, max_decode_pixels), image_to_rgb(right, max_decode_pixels)


def compressed_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG's IHDR chunk or a JPEG's frame header without decoding; None for other
    data (or a header it cannot find)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            return (int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")) \
                if i + 9 <= len(data) else None
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def compressed_to_rgb(msg: CompressedImage, max_pixels: int | None = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (any format OpenCV decodes: jpeg, png, ...) -> H x W x 3 RGB uint8.
    max_pixels: a PNG or JPEG whose header claims more pixels is refused before it is decoded (a small file
    can claim an image of gigabytes)."""
    raw = bytes(msg.data)
    size = compressed_size(raw)
    if max_pixels and size and size[0] * size[1] > max_pixels:
        raise ValueError(f"compressed image ({msg.format or 'no format'}, {len(raw)} bytes) claims {size[0]}x{size[1]} "
                         f"pixels, more than the {max_pixels} this node decodes: not decoded")
    if raw[:2] == b"\xff\xd8":
        return _decode_jpeg(raw, msg.format)
    data = np.frombuffer(raw, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None  # libpng refuses a corrupt PNG (CRCs)
    if image is None:
        raise ValueError(f"compressed image ({msg.format or 'no format'}, {data.size} bytes) could not be decoded")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode_jpeg(raw: bytes, image_format: str) -> np.ndarray:
    """JPEG bytes -> H x W x 3 RGB uint8 with libjpeg-turbo's warnings as errors (simplejpeg, strict): OpenCV
    decodes corrupt entropy-coded data with only a warning on stderr, into an image of plausible but wrong
    content. The same pixels as OpenCV's decoder, and no slower."""
    try:
        import simplejpeg
    except ImportError:
        raise ValueError("JPEG images need simplejpeg to tell corrupt data from good (pip install simplejpeg)") \
            from None
    try:
        return simplejpeg.decode_jpeg(raw, colorspace="RGB", strict=True)
    except ValueError as err:
        raise ValueError(f"corrupt compressed image ({image_format or 'no format'}, {len(raw)} bytes): "
                         f"{str(err).strip()}") from None


def compressed_image(rgb: np.ndarray, header: Header, image_format: str = "jpeg") -> CompressedImage:
    """H x W x 3 RGB uint8 -> sensor_msgs/CompressedImage as image_transport's compressed plugin
    writes it (format "rgb8; jpeg compressed bgr8"; "png" is lossless)."""
    ok, data = cv2.imencode(f".{'jpg' if image_format == 'jpeg' else image_format}",
                            cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode a {rgb.shape} image as {image_format}")
    msg = with_data_by_reference(CompressedImage, header=header, format=f"rgb8; {image_format} compressed bgr8")
    msg.data = byte_array(data)
    return msg


def array_to_image(values: np.ndarray, encoding: str, header: Header) -> Image:
    """H x W float32 ('32FC1') or H x W x 3 uint8 ('bgr8'/'rgb8') -> sensor_msgs/Image."""
    expected = {"32FC1": (np.float32, 2), "bgr8": (np.uint8, 3), "rgb8": (np.uint8, 3)}
    dtype, ndim = expected[encoding]
    values = np.ascontiguousarray(values, dtype=dtype)
    if values.ndim != ndim:
        raise ValueError(f"{encoding} needs a {ndim}-D array, got shape {values.shape}")
    msg = with_data_by_reference(Image, header=header, height=values.shape[0], width=values.shape[1],
                                 encoding=encoding, is_bigendian=0, step=values.strides[0])
    msg.data = byte_array(values)
    return msg


def with_data_by_reference(message_type, **fields):
    """``message_type(**fields)`` whose uint8[] ``data`` keeps an assigned array.array itself.

    From ROS 2 Jazzy on, rosidl's generated setter copies an array.array unless the message was
    made with ``check_fields=True`` (then it checks each field's type, which costs nothing next to
    copying megabytes of pixels); older messages always keep it."""
    if "_check_fields" in message_type.__slots__:
        fields["check_fields"] = True
    return message_type(**fields)


def byte_array(values: np.ndarray) -> array.array:
    """A C-contiguous numpy array's bytes as the array.array('B') a message's uint8[] field holds:
    one copy (assigning bytes would copy twice, a numpy array element by element); the message
    keeps it without another copy when made by ``with_data_by_reference``."""
    data = array.array("B")
    data.frombytes(memoryview(np.ascontiguousarray(values)).cast("B"))
    return data


def cloud_message(depth: np.ndarray, geometry: StereoGeometry, rgb: np.ndarray | None, layout: CloudLayout,
                  header: Header, reuse: array.array | None = None) -> PointCloud2:
    """Organized H x W cloud of a depth map (NaN = invalid) in stereo_image_proc's layout.

    The points are packed straight into the message's buffer (no second copy). reuse: the data of
    an earlier cloud of the same layout, filled in place when its size fits, instead of a new
    buffer per frame (10 MB at 640x480); only once that earlier cloud was published (rclpy copies
    a message when it publishes it)."""
    h, w = depth.shape
    msg = with_data_by_reference(PointCloud2, header=header, height=h, width=w, is_bigendian=False,
                                 is_dense=False, point_step=layout.point_step, row_step=layout.point_step * w)
    msg.fields = [PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1)
                  for name, offset in layout.fields]
    size = h * w * layout.point_step
    data = reuse if reuse is not None and len(reuse) == size else array.array("B", bytes(size))
    pack_cloud(depth, geometry, rgb, layout, out=np.frombuffer(data, np.uint8))
    msg.data = data
    return msg


def disparity_message(products: DisparityProducts, geometry: StereoGeometry, header: Header) -> DisparityImage:
    """stereo_msgs/DisparityImage as stereo_image_proc fills it (f, T, valid window, range), with the
    delta_d of a float32 output (``disparity_increment``)."""
    x, y, w, h = products.window
    return DisparityImage(header=header, image=array_to_image(products.disparity, "32FC1", header),
                          f=float(geometry.focal), t=float(geometry.baseline),
                          valid_window=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h),
                          min_disparity=products.min_disparity, max_disparity=products.max_disparity,
                          delta_d=disparity_increment(products))


def disparity_increment(products: DisparityProducts) -> float:
    """DisparityImage.delta_d, "the smallest allowed disparity increment": stereo_image_proc's
    block matcher gives 1/16 px steps, the network a continuous float32 disparity, whose smallest
    step is float32's spacing at the largest magnitude in the range (1.5e-5 px at 192 px). It
    says nothing about accuracy (docs/model_card.md has the errors)."""
    largest = max(abs(products.min_disparity), abs(products.max_disparity))
    return float(np.spacing(np.float32(largest)))


def camera_model(info: CameraInfo) -> CameraModel:
    """camera_info -> the ROS-free ``CameraModel`` (binning 0 read as 1, an empty ROI as the full sensor)."""
    roi = info.roi
    return CameraModel.from_fields(width=info.width, height=info.height, distortion_model=info.distortion_model,
                                   d=info.d, k=info.k, r=info.r, p=info.p, binning_x=info.binning_x,
                                   binning_y=info.binning_y, roi=(roi.x_offset, roi.y_offset, roi.width, roi.height))


def camera_info_message(model: CameraModel, header: Header) -> CameraInfo:
    """``CameraModel`` -> sensor_msgs/CameraInfo."""
    x, y, width, height = model.roi
    return CameraInfo(header=header, width=model.width, height=model.height,
                      distortion_model=model.distortion_model, d=list(model.d), k=list(model.k), r=list(model.r),
                      p=list(model.p), binning_x=model.binning_x, binning_y=model.binning_y,
                      roi=RegionOfInterest(x_offset=x, y_offset=y, width=width, height=height))


def projection(info: CameraInfo) -> np.ndarray:
    """The 3 x 4 rectified projection of the image as published: camera_info's P (given for the full sensor)
    shifted by the region of interest and scaled by the binning, as image_geometry adjusts it."""
    return camera_model(info).projection()


def image_size(info: CameraInfo) -> tuple[int, int]:
    """(width, height) of the image a camera_info describes: its region of interest (the full sensor when the
    ROI is empty), divided by the binning (image_geometry's reducedResolution)."""
    return camera_model(info).image_size()


def rectified_info(info: CameraInfo) -> CameraInfo:
    """The camera_info of a raw camera's rectified image, as a consumer of rectified images reads it: no
    distortion, K from P, R the identity; size, binning, ROI and P unchanged."""
    p = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    return CameraInfo(header=info.header, width=info.width, height=info.height, distortion_model="plumb_bob",
                      d=[0.0] * 5, k=p[:, :3].ravel().tolist(), r=np.eye(3).ravel().tolist(), p=list(info.p),
                      binning_x=info.binning_x, binning_y=info.binning_y, roi=info.roi)


def calibration_of(info: CameraInfo) -> tuple[str, tuple[int, int] | None]:
    """What ``sync.CalibratedStereoSync`` compares of a camera_info: its calibration (equal for equal fields, NaN
    included: the text of its ``CameraModel``) and the (width, height) of the images it describes (None when it
    gives none: width or height 0)."""
    model = camera_model(info)
    size = model.image_size()
    return repr(model), size if all(size) else None


def raw_image_size(msg: Image | CompressedImage) -> tuple[int, int] | None:
    """(width, height) of an image message as it came; None for a compressed one (known once decoded)."""
    return (msg.width, msg.height) if isinstance(msg, Image) else None


def restamped(info: CameraInfo, header: Header) -> CameraInfo:
    """``info`` under the header of the image it answers: itself when it carries that header, else a shallow copy
    (another frame's camera_info of a static calibration, ``sync.CalibratedStereoSync``), so
    that every output and depth/camera_info carries the image's stamp."""
    if info.header == header:
        return info
    answer = copy.copy(info)
    answer.header = header
    return answer


def stamp_text(nanoseconds: int) -> str:
    """A stamp as seconds with all nine decimals, exact (a float would round a 1 ns difference away)."""
    seconds, nanos = divmod(nanoseconds, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


def stamp_ns(header: Header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
