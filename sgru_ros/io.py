"""Reading images and writing disparity maps (PFM, KITTI 16-bit PNG, NumPy)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

DISPARITY_FORMATS = (".npy", ".pfm", ".png")
#: KITTI stores disparity x 256 in 16-bit PNGs, 0 meaning "no value".
KITTI_SCALE = 256.0


def read_image(path: str | Path) -> np.ndarray:
    """Any image OpenCV reads -> H x W x 3 RGB uint8 (mono images are replicated)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image_rgb(path: str | Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"{path}: cannot write image")


def read_pfm(path: str | Path) -> np.ndarray:
    """A single-channel PFM (Middlebury ``disp0.pfm``) -> H x W float32, top row first."""
    with open(path, "rb") as f:
        header = f.readline().strip()
        if header != b"Pf":
            raise ValueError(f"{path}: not a single-channel PFM (header {header[:8]!r})")
        dims = re.match(rb"^\s*(\d+)\s+(\d+)\s*$", f.readline())
        if not dims:
            raise ValueError(f"{path}: malformed PFM size line")
        width, height = int(dims.group(1)), int(dims.group(2))
        scale = float(f.readline().strip())
        dtype = "<f4" if scale < 0 else ">f4"
        data = np.frombuffer(f.read(width * height * 4), dtype=dtype)
    if data.size != width * height:
        raise ValueError(f"{path}: truncated PFM ({data.size} of {width * height} values)")
    return np.flipud(data.reshape(height, width)).astype(np.float32)


def write_pfm(path: str | Path, array: np.ndarray) -> None:
    """H x W float -> single-channel little-endian PFM (bottom row first, as the format says)."""
    array = np.asarray(array, dtype="<f4")
    with open(path, "wb") as f:
        f.write(b"Pf\n%d %d\n-1.0\n" % (array.shape[1], array.shape[0]))
        f.write(np.flipud(array).tobytes())


def write_disparity(path: str | Path, disparity: np.ndarray) -> None:
    """Write H x W float32 disparity; the extension picks the format:
    .npy (float32), .pfm (float32), .png (uint16 KITTI: disparity x 256, 0 = invalid)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, disparity.astype(np.float32))
    elif suffix == ".pfm":
        write_pfm(path, disparity)
    elif suffix == ".png":
        scaled = np.nan_to_num(disparity, nan=0.0, posinf=0.0, neginf=0.0) * KITTI_SCALE
        if not cv2.imwrite(str(path), np.clip(np.round(scaled), 0, 65535).astype(np.uint16)):
            raise ValueError(f"{path}: cannot write PNG")
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
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
            raise ValueError(f"{path}: not a 16-bit single-channel KITTI disparity PNG")
        disp = raw.astype(np.float32) / KITTI_SCALE
        disp[raw == 0] = np.nan
    elif suffix == ".npy":
        disp = np.load(path, allow_pickle=False).astype(np.float32)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            disp = data[data.files[0]].astype(np.float32)
    else:
        raise ValueError(f"{path}: unknown disparity format {suffix!r}")
    if disp.ndim != 2:
        raise ValueError(f"{path}: disparity must be 2-D, got shape {disp.shape}")
    disp = disp.copy()
    disp[~np.isfinite(disp)] = np.nan
    return disp

