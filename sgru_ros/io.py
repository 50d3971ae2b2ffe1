"""Reading images and writing disparity maps (PFM, KITTI 16-bit PNG, NumPy).

Readers check what a file declares (PFM and PNG sizes) against what it holds
before allocating; every error names the file first. Writers go through
``atomic_path``, so an output is written whole or not at all.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

DISPARITY_FORMATS = (".npy", ".pfm", ".png")
IMAGE_FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: KITTI stores disparity x 256 in 16-bit PNGs, 0 meaning "no value".
KITTI_SCALE = 256.0
#: Larger PNGs are refused before decoding (a crafted header would otherwise allocate gigabytes).
MAX_PNG_PIXELS = 2**28
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEADER_LINE = 64  # longest PFM header line read; real ones are a few bytes


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A fresh temporary name beside ``path`` to write to; it replaces ``path`` when the block
    succeeds and is removed when it fails. The name keeps the extension, since OpenCV picks
    the codec by it."""
    path = Path(path)
    temp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # ours alone, umask permissions
    except OSError as err:  # name the output, not the temporary file
        raise type(err)(err.errno, err.strerror, str(path)) from None
    try:
        yield temp
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name points at it
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _check_png_header(path: Path) -> None:
    """A file named .png must be a PNG of at most MAX_PNG_PIXELS pixels (checked before decoding)."""
    with open(path, "rb") as f:
        head = f.read(24)  # signature, IHDR length and type, width, height
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if not (width and height and width * height <= MAX_PNG_PIXELS):
        raise ValueError(f"{path}: PNG declares {width}x{height} pixels; "
                         f"1 to {MAX_PNG_PIXELS} pixels are accepted")


def _imread(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix.lower() == ".png":
        _check_png_header(path)
    image = cv2.imread(str(path), flags)
    if image is None:
        raise ValueError(f"{path}: cannot read as an image")
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Any image OpenCV reads -> H x W x 3 RGB uint8 (mono images are replicated)."""
    return cv2.cvtColor(_imread(Path(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an array as OpenCV does (BGR, mono or 16-bit); the extension picks the codec."""
    if not cv2.haveImageWriter(str(path)):
        raise ValueError(f"{path}: unknown image extension {Path(path).suffix!r}; use {', '.join(IMAGE_FORMATS)}")
    with atomic_path(path) as temp:
        try:
            written = cv2.imwrite(str(temp), image)
        except cv2.error as err:  # data the codec refuses (empty, wrong depth); False is an I/O failure
            raise ValueError(f"{path}: cannot write image ({err.err})") from None
        if not written:
            raise ValueError(f"{path}: cannot write image")


def write_image_rgb(path: str | Path, rgb: np.ndarray) -> None:
    write_image(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def read_pfm(path: str | Path) -> np.ndarray:
    """A single-channel PFM (Middlebury ``disp0.pfm``) -> H x W float32, top row first."""
    with open(path, "rb") as f:
        header = f.readline(_HEADER_LINE).strip()
        if header != b"Pf":
            raise ValueError(f"{path}: not a single-channel PFM (header {header[:8]!r})")
        dims = re.match(rb"^\s*(\d+)\s+(\d+)\s*$", f.readline(_HEADER_LINE))
        if not dims:
            raise ValueError(f"{path}: malformed PFM size line")
        width, height = int(dims.group(1)), int(dims.group(2))
        if not (width and height):
            raise ValueError(f"{path}: PFM declares {width}x{height} pixels")
        line = f.readline(_HEADER_LINE)
        try:
            scale = float(line)
        except ValueError:
            scale = np.nan
        if not (np.isfinite(scale) and scale != 0):
            raise ValueError(f"{path}: malformed PFM scale line {line.strip()[:16]!r}")
        # Compare with the file's size first, so a crafted header cannot make us allocate.
        available = os.fstat(f.fileno()).st_size - f.tell()
        if available < width * height * 4:
            raise ValueError(f"{path}: truncated PFM ({width}x{height} declared, "
                             f"{max(available, 0) // 4} of {width * height} values present)")
        data = np.frombuffer(f.read(width * height * 4), dtype="<f4" if scale < 0 else ">f4")
    return np.flipud(data.reshape(height, width)).astype(np.float32)


def write_pfm(path: str | Path, array: np.ndarray) -> None:
    """H x W float -> single-channel little-endian PFM (bottom row first, as the format says)."""
    array = np.asarray(array, dtype="<f4")
    with atomic_path(path) as temp, open(temp, "wb") as f:
        f.write(b"Pf\n%d %d\n-1.0\n" % (array.shape[1], array.shape[0]))
        f.write(np.flipud(array).tobytes())


def write_disparity(path: str | Path, disparity: np.ndarray) -> None:
    """Write H x W float32 disparity (or, as .npy, any float32 map such as a confidence); the
    extension picks the format: .npy (float32), .pfm (float32), .png (uint16 KITTI: disparity x 256, 0 = invalid)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with atomic_path(path) as temp, open(temp, "wb") as f:  # a file object: np.save adds no suffix
            np.save(f, disparity.astype(np.float32))
    elif suffix == ".pfm":
        write_pfm(path, disparity)
    elif suffix == ".png":
        scaled = np.nan_to_num(disparity, nan=0.0, posinf=0.0, neginf=0.0) * KITTI_SCALE
        write_image(path, np.clip(np.round(scaled), 0, 65535).astype(np.uint16))
    else:
        raise ValueError(f"{path}: unknown disparity format {suffix!r}; use one of {', '.join(DISPARITY_FORMATS)}")


def read_disparity(path: str | Path) -> np.ndarray:
    """Read a disparity map; invalid pixels become NaN.

    .pfm: Middlebury (inf = unknown); .png: KITTI 16-bit (0 = unknown);
    .npy: float array; .npz: first array (scikit-image's motorcycle_disp.npz, inf = unknown).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pfm":
        disp = read_pfm(path)
    elif suffix == ".png":
        raw = _imread(path, cv2.IMREAD_UNCHANGED)
        if raw.dtype != np.uint16 or raw.ndim != 2:
            raise ValueError(f"{path}: not a 16-bit single-channel KITTI disparity PNG")
        disp = raw.astype(np.float32) / KITTI_SCALE
        disp[raw == 0] = np.nan
    elif suffix in (".npy", ".npz"):
        try:
            # Memory-mapped, so a header declaring more than the file holds fails instead of allocating.
            if suffix == ".npy":
                disp = np.array(np.load(path, mmap_mode="r", allow_pickle=False), dtype=np.float32)
            else:
                with np.load(path, allow_pickle=False) as data:
                    disp = data[data.files[0]].astype(np.float32)
        except (ValueError, EOFError, IndexError) as err:
            raise ValueError(f"{path}: cannot read as a NumPy disparity ({err})") from None
    else:
        raise ValueError(f"{path}: unknown disparity format {suffix!r}")
    if disp.ndim != 2:
        raise ValueError(f"{path}: disparity must be 2-D, got shape {disp.shape}")
    disp = disp.copy()
    disp[~np.isfinite(disp)] = np.nan
    return disp
