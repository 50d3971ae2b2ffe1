"""Procedural stereo scenes with exact ground-truth disparity (nothing downloaded).

A scene is a stack of layers in the left camera's coordinates: a slanted
background plane and several foreground objects (ellipses, polygons, blobs,
thin bars). Each layer has a planar disparity d(x, y) = a*x + b*y + c, a
texture and a mask. Both views are rendered with a z-buffer on disparity
(the nearer surface, larger disparity, wins), so occlusions are exact:

- left view: pixel (x, y) shows the nearest layer whose mask covers (x, y);
- right view: pixel (x_r, y) shows the nearest layer whose mask covers
  (x, y) with x - d(x, y) = x_r, i.e. x = (x_r + b*y + c) / (1 - a).

Textures are procedural noise at several scales, flat colours (textureless
regions) and crops of ordinary photographs shipped with scikit-image (no
stereo benchmark image of any kind). After rendering, each view gets its own
gain, gamma, colour balance, blur and noise. Sample ``i`` of a generator with
seed ``s`` is a pure function of (s, i).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

#: scikit-image's bundled photographs used as textures. The stereo pair it
#: ships (``stereo_motorcycle``, Middlebury 2014) is deliberately excluded:
#: it is the evaluation pair.
PHOTO_NAMES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
               "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
               "clock", "cell", "colorwheel")


@lru_cache(maxsize=1)
def photo_bank() -> tuple[np.ndarray, ...]:
    """The texture photographs as H x W x 3 float32 in 0..255."""
    import skimage.data

    photos = []
    for name in PHOTO_NAMES:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos.append(image[..., :3].astype(np.float32))
    return tuple(photos)


@dataclass(frozen=True)
class SceneConfig:
    """height, width: image size. max_disparity: upper end of the disparity
    range (each scene draws its own range below it). objects: min and max
    number of foreground objects. textureless: probability that a layer gets
    a flat colour. photometric: apply per-view gain/gamma/blur/noise."""

    height: int = 160
    width: int = 288
    max_disparity: float = 96.0
    objects: tuple[int, int] = (3, 10)
    textureless: float = 0.12
    photometric: bool = True

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(f"scene too small: {self.height}x{self.width}")
        if not 1.0 <= self.max_disparity < self.width:
            raise ValueError(f"max_disparity must be in [1, width), got {self.max_disparity}")


@dataclass
class StereoSample:
    """left, right: H x W x 3 uint8 RGB. disparity: H x W float32 (left view,
    positive, every pixel). disparity_right: H x W float32 (right view)."""

    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray
    disparity_right: np.ndarray


@dataclass
class _Layer:
    texture: np.ndarray  # H x W_ext x 3 float32, left coordinates
    mask: np.ndarray  # H x W_ext float32 in {0, 1}, left coordinates
    plane: tuple[float, float, float]  # d = a*x + b*y + c


class SyntheticStereo:
    """Infinite, reproducible procedural stereo data.

    ``generator[i]`` returns the same ``StereoSample`` for the same seed and i.
    """

    def __init__(self, config: SceneConfig = SceneConfig(), seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        # Layers extend right of the image by the largest disparity, so every
        # right-view pixel finds its surface.
        self.ext_width = config.width + int(np.ceil(config.max_disparity)) + 8

    def __getitem__(self, index: int) -> StereoSample:
        rng = np.random.default_rng([self.seed, int(index)])
        layers = self._scene(rng)
        left, disp_left = self._render(layers, right=False)
        right, disp_right = self._render(layers, right=True)
        if self.config.photometric:
            left, right = self._photometric(left, rng), self._photometric(right, rng)
        to_u8 = lambda im: np.clip(np.round(im), 0, 255).astype(np.uint8)  # noqa: E731
        return StereoSample(to_u8(left), to_u8(right), disp_left.astype(np.float32),
                            disp_right.astype(np.float32))

    # -- scene layout ---------------------------------------------------------------------------
    def _scene(self, rng: np.random.Generator) -> list[_Layer]:
        c = self.config
        h, w = c.height, self.ext_width
        # Per-scene range: a near limit anywhere from a fifth to all of max_disparity.
        d_max = rng.uniform(0.2, 1.0) * c.max_disparity
        d_bg = rng.uniform(0.0, 0.5) * d_max
        # Background: slanted plane, mostly a ground-like vertical gradient, never
        # nearer than max_disparity (the layers' right margin).
        a = rng.uniform(-0.15, 0.15) * d_max / c.width
        b = rng.uniform(-0.3, 0.6) * d_max / h
        span = abs(a) * c.width + abs(b) * h
        if d_bg + span > c.max_disparity:
            a, b = (a, b) if span == 0 else (a * (c.max_disparity - d_bg) / span, b * (c.max_disparity - d_bg) / span)
        lowest = min(0.0, a * c.width) + min(0.0, b * h)
        layers = [_Layer(self._texture(rng, h, w), np.ones((h, w), np.float32), (a, b, d_bg - lowest))]
        for _ in range(rng.integers(c.objects[0], c.objects[1] + 1)):
            mask = self._shape_mask(rng, h, w)
            ys, xs = np.nonzero(mask[:, : c.width + 1])
            if ys.size == 0:
                continue
            cx, cy = xs.mean(), ys.mean()
            d_center = rng.uniform(d_bg, d_max)
            slope = 0.08 * d_max
            oa = rng.uniform(-1, 1) * slope / c.width
            ob = rng.uniform(-1, 1) * slope / h
            oc = d_center - oa * cx - ob * cy
            layers.append(_Layer(self._texture(rng, h, w), mask, (oa, ob, oc)))
        return layers

    def _shape_mask(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        c = self.config
        mask = np.zeros((h, w), np.uint8)
        scale = min(c.height, c.width)
        cx, cy = rng.uniform(0, c.width), rng.uniform(0, h)
        kind = rng.choice(["ellipse", "polygon", "blob", "bar"], p=[0.3, 0.3, 0.2, 0.2])
        if kind == "ellipse":
            axes = (int(rng.uniform(0.05, 0.4) * scale), int(rng.uniform(0.05, 0.4) * scale))
            cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        elif kind == "polygon":
            n = rng.integers(3, 9)
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(0.05, 0.4, n) * scale
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
        elif kind == "blob":
            noise = cv2.resize(rng.standard_normal((6, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
            yy, xx = np.mgrid[0:h, 0:w]
            falloff = ((xx - cx) / (0.3 * scale)) ** 2 + ((yy - cy) / (0.3 * scale)) ** 2
            mask = (noise - falloff > rng.uniform(-0.5, 0.5)).astype(np.uint8)
        else:  # thin bars and poles: the fine structures learned stereo must keep
            length = rng.uniform(0.3, 1.2) * scale
            angle = rng.uniform(0, np.pi)
            dx, dy = 0.5 * length * np.cos(angle), 0.5 * length * np.sin(angle)
            thickness = int(rng.integers(1, 7))
            cv2.line(mask, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1, thickness)
        return mask.astype(np.float32)

    # -- textures -------------------------------------------------------------------------------
    def _texture(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        u = rng.uniform()
        if u < self.config.textureless:
            texture = np.ones((h, w, 3), np.float32) * rng.uniform(20, 235, 3).astype(np.float32)
            texture += rng.normal(0, 1.0, (h, w, 1)).astype(np.float32)  # almost flat
        elif u < 0.6:
            texture = self._photo_crop(rng, h, w)
        else:
            texture = self._noise_texture(rng, h, w)
        # Smooth shading across the surface (light fall-off).
        gradient = cv2.resize(rng.uniform(0.6, 1.2, (2, 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        return texture * gradient[..., None]

    @staticmethod
    def _photo_crop(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        photo = photo_bank()[rng.integers(len(photo_bank()))]
        scale = rng.uniform(0.5, 2.0)
        angle = rng.uniform(-30, 30)
        ph, pw = photo.shape[:2]
        matrix = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, scale)
        # Centre a random point of the photo in the crop.
        matrix[:, 2] += [w / 2 - rng.uniform(0.2, 0.8) * pw, h / 2 - rng.uniform(0.2, 0.8) * ph]
        crop = cv2.warpAffine(photo, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        crop = crop[..., rng.permutation(3)]  # colour variety
        return crop * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)

    @staticmethod
    def _noise_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        texture = np.zeros((h, w, 3), np.float32)
        for cells in rng.choice([4, 8, 16, 32, 64, 128], size=rng.integers(2, 5), replace=False):
            grid = rng.uniform(-1, 1, (max(2, h * cells // w), cells, 3)).astype(np.float32)
            interp = cv2.INTER_NEAREST if rng.uniform() < 0.2 else cv2.INTER_CUBIC
            texture += rng.uniform(10, 60) * cv2.resize(grid, (w, h), interpolation=interp)
        return texture + rng.uniform(60, 190, 3).astype(np.float32)

    # -- rendering ------------------------------------------------------------------------------
    def _render(self, layers: list[_Layer], right: bool) -> tuple[np.ndarray, np.ndarray]:
        """Z-buffered view: each pixel shows the layer point with the largest disparity that
        projects there. Returns (H x W x 3 float image, H x W disparity of what is shown)."""
        h, w = self.config.height, self.config.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        image = np.zeros((h, w, 3), np.float32)
        zbuf = np.full((h, w), -np.inf, np.float32)
        for layer in layers:
            a, b, c = layer.plane
            # Left-view x of the layer point seen at this pixel: itself in the left view; in the
            # right view the solution of x - d(x, y) = x_r.
            x_left = ((xx + b * yy + c) / (1.0 - a)).astype(np.float32) if right else xx
            disp = a * x_left + b * yy + c
            covered = cv2.remap(layer.mask, x_left, yy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0)
            win = (covered > 0.5) & (disp > zbuf)
            texture = cv2.remap(layer.texture, x_left, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
            image[win] = texture[win]
            zbuf[win] = disp[win]
        return image, zbuf

    @staticmethod
    def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = np.clip(image, 0, 255) / 255.0
        image = image ** rng.uniform(0.8, 1.25)
        image = image * rng.uniform(0.8, 1.2) * rng.uniform(0.95, 1.05, 3)
        image = image * 255.0
        sigma = rng.uniform(0, 1.0)
        if sigma > 0.2:
            image = cv2.GaussianBlur(image, (0, 0), sigma)
        return image + rng.normal(0, rng.uniform(0, 4.0), image.shape)
