"""Procedural stereo scenes with exact ground-truth disparity (nothing downloaded).

A scene is a stack of layers in the left camera's coordinates: a background
surface and several foreground objects (ellipses, polygons, blobs, large
cut-outs, thin bars, railings and spokes). Each layer has a disparity map
d(x, y) (a plane, optionally slanted up to ``max_slope`` px/px along x, plus a
quadratic bulge for curved surfaces), a texture and an anti-aliased coverage
mask. Both views are rendered with a z-buffer on disparity (the nearer
surface, larger disparity, wins), so occlusions are exact:

- left view: pixel (x, y) shows the nearest layer whose mask covers (x, y);
- right view: pixel (x_r, y) shows the nearest layer whose mask covers
  (x, y) with x - d(x, y) = x_r. That x is the fixed point of
  x <- x_r + d(x, y), a contraction while |dd/dx| < 1, found by iteration.

Layers are drawn far to near; where a nearer layer's coverage is fractional
(its anti-aliased edge) its colour is mixed with what lies behind, as a
camera's pixel integrates both surfaces. The ground truth there is the
surface covering more than half the pixel.

Textures are procedural noise at several scales, flat colours (textureless
regions) and crops of ordinary photographs: those shipped with scikit-image
and, when installed, Debian's ``mate-backgrounds`` nature photographs (no
stereo benchmark image of any kind). Some textured patches are seen through a
random homography (a 3-D-rotated plane). Photometric changes are shared by
both views in most pairs (one camera model) and independent in
``asymmetric`` of them (two unmatched cameras). Sample ``i`` of a generator
with seed ``s`` is a pure function of (s, i).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

#: scikit-image's bundled photographs used as textures. The stereo pair it
#: ships (``stereo_motorcycle``, Middlebury 2014) is deliberately excluded:
#: it is the evaluation pair.
PHOTO_NAMES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
               "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
               "clock", "cell", "colorwheel")

#: Photo folders used when present: Debian's ``mate-backgrounds`` nature
#: photographs (``apt-get install mate-backgrounds``; GPL-2+, used as training
#: textures only, nothing of them ships with the package).
DEFAULT_PHOTO_DIRS = ("/usr/share/backgrounds/mate/nature",)

#: Photographs are shrunk to this longest side when loaded (memory; a crop
#: is at most a few hundred pixels anyway).
PHOTO_MAX_SIDE = 1024

#: Most fixed-point iterations for the right view; the error shrinks by
#: max|dd/dx| (<= ~0.7) per iteration, so 40 leave well under 0.01 px.
RIGHT_VIEW_ITERATIONS = 40


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def _shrink(image: np.ndarray) -> np.ndarray:
    scale = PHOTO_MAX_SIDE / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=4)
def photo_bank(photo_dirs: tuple[str, ...] = ()) -> tuple[np.ndarray, ...]:
    """The texture photographs as H x W x 3 uint8 RGB: scikit-image's, then every
    JPEG/PNG in ``photo_dirs`` (sorted by name, so the bank is reproducible)."""
    import skimage.data

    photos = [_shrink(_as_rgb(getattr(skimage.data, name)()).astype(np.uint8)) for name in PHOTO_NAMES]
    for folder in photo_dirs:
        for path in sorted(Path(folder).glob("*")):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{path}: not a readable image")
            photos.append(_shrink(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))
    return tuple(photos)


def existing_photo_dirs(candidates: tuple[str, ...] = DEFAULT_PHOTO_DIRS) -> tuple[str, ...]:
    return tuple(d for d in candidates if Path(d).is_dir())


@dataclass(frozen=True)
class SceneConfig:
    """height, width: image size. max_disparity: upper end of the disparity
    range (each scene draws its own range below it, weighted toward the near
    end). objects: min and max number of foreground objects. textureless:
    probability that a layer gets a flat colour. max_slope: largest x-slope of
    a surface's disparity (px/px). photometric: apply gain/gamma/colour/blur/
    noise; asymmetric: the fraction of pairs whose two views get independent
    ones. photo_dirs: extra folders of texture photographs."""

    height: int = 160
    width: int = 288
    max_disparity: float = 96.0
    objects: tuple[int, int] = (5, 16)
    textureless: float = 0.12
    max_slope: float = 0.5
    photometric: bool = True
    asymmetric: float = 0.2
    photo_dirs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(f"scene too small: {self.height}x{self.width}")
        if not 1.0 <= self.max_disparity < self.width:
            raise ValueError(f"max_disparity must be in [1, width), got {self.max_disparity}")
        if not 0.0 <= self.max_slope <= 0.6:
            raise ValueError(f"max_slope must be in [0, 0.6] (the right view needs |dd/dx| < 1), "
                             f"got {self.max_slope}")


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
    mask: np.ndarray  # H x W_ext float32 coverage in [0, 1], left coordinates
    disparity: np.ndarray  # H x W_ext float32 disparity of the surface, left coordinates
    depth_order: float  # mean disparity under the mask: layers are drawn far to near


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
        self.photos = photo_bank(config.photo_dirs)

    def __getitem__(self, index: int) -> StereoSample:
        rng = np.random.default_rng([self.seed, int(index)])
        layers = self._scene(rng)
        left, disp_left = self._render(layers, right=False)
        right, disp_right = self._render(layers, right=True)
        if self.config.photometric:
            left, right = self._photometric_pair(left, right, rng)
        to_u8 = lambda im: np.clip(np.round(im), 0, 255).astype(np.uint8)  # noqa: E731
        return StereoSample(to_u8(left), to_u8(right), disp_left.astype(np.float32),
                            disp_right.astype(np.float32))

    # -- scene layout ---------------------------------------------------------------------------
    def _scene(self, rng: np.random.Generator) -> list[_Layer]:
        c = self.config
        h, w = c.height, self.ext_width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        # Per-scene range, weighted toward the near end (real scenes fill it: a robot's
        # camera sees the floor and objects within a few metres).
        d_max = c.max_disparity * (rng.uniform(0.55, 1.0) if rng.uniform() < 0.75 else rng.uniform(0.2, 0.55))
        d_bg = rng.uniform(0.0, 0.5) * d_max
        layers = [self._background(rng, xx, yy, d_bg, d_max)]
        n_objects = rng.integers(c.objects[0], c.objects[1] + 1)
        for i in range(n_objects):
            large = i == 0 and rng.uniform() < 0.4  # a big foreground object in many scenes
            mask = self._shape_mask(rng, h, w, large)
            covered = mask[:, : c.width + 1] > 0.5
            if not covered.any():
                continue
            ys, xs = np.nonzero(covered)
            # Nearer objects are more likely (u**0.6 leans toward 1).
            d_center = d_bg + (d_max - d_bg) * rng.uniform() ** (0.3 if large else 0.6)
            disparity = self._surface(rng, xx, yy, (xs.mean(), ys.mean()), (np.ptp(xs) + 1, np.ptp(ys) + 1), d_center)
            texture = self._texture(rng, h, w, rotated=rng.uniform() < 0.25)
            layers.append(_Layer(texture, mask, disparity, float(disparity[:, : c.width + 1][covered].mean())))
        return sorted(layers, key=lambda layer: layer.depth_order)

    def _background(self, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, d_bg: float,
                    d_max: float) -> _Layer:
        """A floor-like vertical gradient, sometimes a wall seen at an angle (x-slope),
        never nearer than max_disparity (the layers' right margin)."""
        c = self.config
        a = rng.uniform(-1, 1) * (min(c.max_slope, 0.5 * d_max / c.width) if rng.uniform() < 0.3 else 0.05)
        b = rng.uniform(-0.3, 0.6) * d_max / c.height
        disparity = a * xx + b * yy
        disparity += d_bg - disparity[:, : c.width].min()
        over = disparity[:, : c.width].max() - c.max_disparity
        if over > 0:  # squeeze the slant back into range
            disparity = d_bg + (disparity - d_bg) * (c.max_disparity - d_bg) / (c.max_disparity + over - d_bg)
        disparity = np.clip(disparity, 0.0, c.max_disparity).astype(np.float32)
        mask = np.ones_like(xx)
        return _Layer(self._texture(rng, *xx.shape, rotated=False), mask, disparity, -np.inf)

    def _surface(self, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, center: tuple[float, float],
                 extent: tuple[float, float], d_center: float) -> np.ndarray:
        """Disparity map of one object: a plane through ``d_center`` at the object's centre,
        slanted (often strongly along x: surfaces seen at an angle), optionally curved.
        The slope is limited so the object's disparity stays within [0, max_disparity]."""
        c = self.config
        cx, cy = center
        room = min(d_center, c.max_disparity - d_center)
        half_w, half_h = 0.5 * extent[0], 0.5 * extent[1]
        x_limit = min(c.max_slope, 0.45 * room / half_w)
        y_limit = min(c.max_slope, 0.45 * room / half_h)
        strong = rng.uniform() < 0.5
        a = rng.uniform(-1, 1) * (x_limit if strong else min(x_limit, 0.05))
        b = rng.uniform(-1, 1) * (y_limit if strong else min(y_limit, 0.05))
        disparity = d_center + a * (xx - cx) + b * (yy - cy)
        if rng.uniform() < 0.3:  # a curved surface: quadratic bulge or dent, at most 0.2 px/px
            q = rng.uniform(-1, 1) * min(0.1 / half_w, 0.4 * room / half_w ** 2)
            qy = rng.uniform(-1, 1) * min(0.1 / half_h, 0.4 * room / half_h ** 2)
            disparity += q * (xx - cx) ** 2 + qy * (yy - cy) ** 2
        return np.clip(disparity, 0.0, c.max_disparity).astype(np.float32)

    def _shape_mask(self, rng: np.random.Generator, h: int, w: int, large: bool) -> np.ndarray:
        """Coverage in [0, 1] with anti-aliased edges (drawn at 255 with cv2.LINE_AA)."""
        c = self.config
        mask = np.zeros((h, w), np.uint8)
        scale = min(c.height, c.width)
        cx, cy = rng.uniform(0, c.width), rng.uniform(0, h)
        size = (0.35, 0.8) if large else (0.05, 0.4)
        kinds = ["ellipse", "polygon", "blob", "bar", "railing", "spokes"]
        kind = rng.choice(kinds[:3]) if large else rng.choice(kinds, p=[0.22, 0.26, 0.16, 0.18, 0.1, 0.08])
        aa = cv2.LINE_AA
        shift = 4  # sub-pixel coordinates for cv2's drawing functions
        fixed = lambda v: int(round(v * (1 << shift)))  # noqa: E731
        if kind == "ellipse":
            axes = (fixed(rng.uniform(*size) * scale), fixed(rng.uniform(*size) * scale))
            cv2.ellipse(mask, (fixed(cx), fixed(cy)), axes, rng.uniform(0, 180), 0, 360, 255, -1, aa, shift)
        elif kind == "polygon":
            n = rng.integers(3, 9)
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(*size, n) * scale
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            cv2.fillPoly(mask, [np.round(pts * (1 << shift)).astype(np.int32)], 255, aa, shift)
        elif kind == "blob":
            noise = cv2.resize(rng.standard_normal((6, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
            yy, xx = np.mgrid[0:h, 0:w]
            radius = (0.6 if large else 0.3) * scale
            field = noise - ((xx - cx) / radius) ** 2 - ((yy - cy) / radius) ** 2 - rng.uniform(-0.5, 0.5)
            # A soft threshold over about one pixel gives a mixed edge.
            gradient = np.hypot(*np.gradient(field)) + 1e-6
            return np.clip(0.5 + field / gradient, 0.0, 1.0).astype(np.float32)
        else:  # thin structures (poles, wires, railings, spokes): what learned stereo must keep
            length = rng.uniform(0.3, 1.2) * scale
            angle = rng.uniform(0, np.pi)
            count = {"bar": 1, "railing": int(rng.integers(3, 9)), "spokes": int(rng.integers(4, 13))}[kind]
            gap = rng.uniform(4, 14)
            thickness = int(rng.integers(1, 4)) if kind != "bar" else int(rng.integers(1, 7))
            for k in range(count):
                theta = angle + (np.pi * k / count if kind == "spokes" else 0.0)
                dx, dy = 0.5 * length * np.cos(theta), 0.5 * length * np.sin(theta)
                ox = (k - count / 2) * gap * np.sin(angle) if kind == "railing" else 0.0
                oy = -(k - count / 2) * gap * np.cos(angle) if kind == "railing" else 0.0
                cv2.line(mask, (fixed(cx + ox - dx), fixed(cy + oy - dy)), (fixed(cx + ox + dx), fixed(cy + oy + dy)),
                         255, thickness, aa, shift)
        return mask.astype(np.float32) / 255.0

    # -- textures -------------------------------------------------------------------------------
    def _texture(self, rng: np.random.Generator, h: int, w: int, rotated: bool) -> np.ndarray:
        u = rng.uniform()
        if u < self.config.textureless:
            texture = np.ones((h, w, 3), np.float32) * rng.uniform(20, 235, 3).astype(np.float32)
            texture += rng.normal(0, 1.0, (h, w, 1)).astype(np.float32)  # almost flat
        elif u < 0.65:
            texture = self._photo_crop(rng, h, w)
        else:
            texture = self._noise_texture(rng, h, w)
        if rotated:
            texture = self._homography(rng, texture)
        # Smooth shading across the surface (light fall-off).
        gradient = cv2.resize(rng.uniform(0.6, 1.2, (2, 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        return texture * gradient[..., None]

    @staticmethod
    def _homography(rng: np.random.Generator, texture: np.ndarray) -> np.ndarray:
        """The texture as seen on a plane rotated in 3-D: a random perspective warp
        (foreshortening and converging lines in the left view already)."""
        h, w = texture.shape[:2]
        corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        jitter = rng.uniform(-0.3, 0.3, (4, 2)).astype(np.float32) * np.float32([w, h]) * 0.5
        matrix = cv2.getPerspectiveTransform(corners, corners + jitter)
        return cv2.warpPerspective(texture, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT101)

    def _photo_crop(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        photo = self.photos[rng.integers(len(self.photos))]
        scale = rng.uniform(0.5, 2.0) * max(1.0, 400 / max(photo.shape[:2]))
        angle = rng.uniform(-30, 30)
        ph, pw = photo.shape[:2]
        matrix = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, scale)
        # Centre a random point of the photo in the crop.
        matrix[:, 2] += [w / 2 - rng.uniform(0.2, 0.8) * pw, h / 2 - rng.uniform(0.2, 0.8) * ph]
        crop = cv2.warpAffine(photo, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        crop = crop[..., rng.permutation(3)].astype(np.float32)  # colour variety
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
        """Z-buffered view, layers far to near. Returns (H x W x 3 float image,
        H x W disparity of the surface covering each pixel)."""
        h, w = self.config.height, self.config.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        image = np.zeros((h, w, 3), np.float32)
        zbuf = np.full((h, w), -np.inf, np.float32)
        for layer in layers:
            x_left = self._right_view_source(layer.disparity, xx, yy) if right else xx
            disp = cv2.remap(layer.disparity, x_left, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            coverage = cv2.remap(layer.mask, x_left, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0)
            alpha = np.where(disp > zbuf, coverage, 0.0)[..., None]
            texture = cv2.remap(layer.texture, x_left, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
            image += alpha * (texture - image)
            owner = alpha[..., 0] > 0.5
            zbuf[owner] = disp[owner]
        return image, zbuf

    @staticmethod
    def _right_view_source(disparity: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        """Left-view x of the surface point seen at right-view pixel (xx, yy): the
        fixed point of x = xx + d(x, yy), unique while |dd/dx| < 1."""
        x = xx + cv2.remap(disparity, xx, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        for _ in range(RIGHT_VIEW_ITERATIONS):
            previous = x
            x = xx + cv2.remap(disparity, x, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            if np.abs(x - previous).max() < 1e-3:  # planes converge in one step
                break
        return x

    def _photometric_pair(self, left: np.ndarray, right: np.ndarray,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One camera model for both views in most pairs, two unmatched ones in
        ``asymmetric`` of them; sensor noise is always each view's own."""
        shared = self._photometric_draw(rng)
        asymmetric = rng.uniform() < self.config.asymmetric
        right_draw = self._photometric_draw(rng) if asymmetric else shared
        noise = rng.uniform(0, 4.0 if asymmetric else 2.0)
        return (self._apply(left, shared) + rng.normal(0, noise, left.shape),
                self._apply(right, right_draw) + rng.normal(0, noise, right.shape))

    @staticmethod
    def _photometric_draw(rng: np.random.Generator) -> dict[str, float | np.ndarray]:
        return {"gamma": rng.uniform(0.8, 1.25), "gain": rng.uniform(0.8, 1.2),
                "colour": rng.uniform(0.95, 1.05, 3), "blur": rng.uniform(0, 1.0)}

    @staticmethod
    def _apply(image: np.ndarray, draw: dict[str, float | np.ndarray]) -> np.ndarray:
        image = np.clip(image, 0, 255) / 255.0
        image = image ** draw["gamma"] * draw["gain"] * draw["colour"] * 255.0
        if draw["blur"] > 0.2:
            image = cv2.GaussianBlur(image, (0, 0), float(draw["blur"]))
        return image
