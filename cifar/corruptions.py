"""The 15 CIFAR-10-C corruptions of Hendrycks & Dietterich (2019), 5 severities each.

Parameters are the paper's CIFAR-scale ones, from its released generator
(hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py, Apache-2.0); they
differ from the ImageNet-C ones. No maintained package provides them:
`imagecorruptions` (last release 2020) carries the ImageNet-scale parameters
and pulls in scikit-image and OpenCV. So each corruption is a short function
here, on numpy and scipy.ndimage (scipy comes with scikit-learn; pinned in
requirements.txt), driven by a seeded `numpy.random.Generator`.

Where the released code relied on other libraries, the equivalent is written
out: skimage's Gaussian filter is `scipy.ndimage.gaussian_filter` with the
same modes; OpenCV's `filter2D`/`warpAffine` use reflect-101 borders
(scipy's "mirror"); ImageMagick's motion blur (through Wand) is
`_motion_blur`, a one-sided Gaussian along the motion direction, sampled at
rounded offsets with edge pixels repeated, as MagickCore's MotionBlurImage does.
Glass blur reproduces what the released code actually does: its "swap" of
numpy views copies the neighbour into the pixel and leaves the neighbour as it was.

Frost is a stand-in: the paper blends crops of six frost photographs that no
package ships; `_frost_texture` generates a bluish-white fractal texture
instead, blended with the paper's weights. Frost accuracies are therefore not
comparable with published CIFAR-10-C frost numbers (every other corruption is).

Every function takes float images (N, 32, 32, 3) in [0, 1] and returns the
same; `corrupt` is the public entry point on uint8 images, and like the
released generator it truncates to uint8.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image
from scipy import ndimage

SEVERITIES = (1, 2, 3, 4, 5)
SIDE = 32


# ---------------------------------------------------------------- helpers

def _gaussian(images: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage.filters.gaussian per channel (its default mode is 'nearest')."""
    return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode=mode, truncate=truncate)


def _clipped_zoom(images: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre of every image by `factor` and crop back to SIDE: the
    paper's scipy.ndimage.zoom (order 1), written as one interpolation matrix
    per axis because zooming a whole 4-D batch with scipy is 100x slower."""
    crop = int(np.ceil(SIDE / factor))
    top = (SIDE - crop) // 2
    size = round(crop * factor)  # scipy's output length
    position = np.arange(size) * (crop - 1) / (size - 1)  # its sample positions (grid_mode=False)
    low = np.minimum(np.floor(position).astype(int), crop - 2)
    weight = position - low
    matrix = np.zeros((size, crop))
    matrix[np.arange(size), low] = 1 - weight
    matrix[np.arange(size), low + 1] = weight
    trim = (size - SIDE) // 2
    matrix = matrix[trim:trim + SIDE]
    rows = np.einsum("ij,njkc->nikc", matrix, images[:, top:top + crop, top:top + crop], optimize=True)
    return np.einsum("nikc,lk->nilc", rows, matrix, optimize=True)


def _plasma_fractal(rng: np.random.Generator, size: int = SIDE, decay: float = 3.0) -> np.ndarray:
    """Diamond-square height map in [0, 1] (the paper's fog texture)."""
    heights = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled_mean(total):
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = heights[0:size:step, 0:size:step]
        squares = corners + np.roll(corners, -1, axis=0)
        squares += np.roll(squares, -1, axis=1)
        heights[half:size:step, half:size:step] = wibbled_mean(squares)
        centres = heights[half:size:step, half:size:step]
        corners = heights[0:size:step, 0:size:step]
        across = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        heights[0:size:step, half:size:step] = wibbled_mean(across)
        down = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        heights[half:size:step, 0:size:step] = wibbled_mean(down)
        step //= 2
        wibble /= decay
    heights -= heights.min()
    return heights / heights.max()


def _motion_blur(image: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage on one (H, W, C) image: a one-sided Gaussian
    of 2*ceil(radius)+1 taps along `angle` degrees, edge pixels repeated."""
    width = int(2 * np.ceil(radius) + 1)
    taps = np.arange(width)
    kernel = np.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    dx = np.ceil(taps * np.cos(np.deg2rad(angle)) - 0.5).astype(int)
    dy = np.ceil(taps * np.sin(np.deg2rad(angle)) - 0.5).astype(int)
    rows, cols = np.arange(image.shape[0]), np.arange(image.shape[1])
    out = np.zeros_like(image, dtype=np.float64)
    for weight, oy, ox in zip(kernel, dy, dx):
        out += weight * image[np.clip(rows + oy, 0, rows[-1])][:, np.clip(cols + ox, 0, cols[-1])]
    return out


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The paper's defocus disk, anti-aliased by a 3x3 Gaussian (as cv2.GaussianBlur)."""
    span = np.arange(-8, 9)
    xx, yy = np.meshgrid(span, span)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_blur ** 2))
    taps /= taps.sum()
    return ndimage.correlate(disk, np.outer(taps, taps), mode="mirror")


@functools.lru_cache(maxsize=1)
def _frost_texture() -> np.ndarray:
    """A fixed 256x256 stand-in for the paper's frost photographs: a fine-grained
    fractal (ice grain) in bluish white, values 0..255 like a photo."""
    grain = _plasma_fractal(np.random.default_rng(2019), size=256, decay=1.6)
    tint = np.array([0.82, 0.9, 1.0])
    return (60 + 195 * grain)[..., None] * tint


# ---------------------------------------------------------------- noise

def gaussian_noise(x, severity, rng):
    scale = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    return x + rng.normal(size=x.shape, scale=scale)


def shot_noise(x, severity, rng):
    photons = (500, 250, 100, 75, 50)[severity - 1]
    return rng.poisson(x * photons) / photons


def impulse_noise(x, severity, rng):
    """Salt and pepper on each channel value independently (skimage's 's&p')."""
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(x.dtype), x)


# ---------------------------------------------------------------- blur

def defocus_blur(x, severity, rng):
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[severity - 1]
    kernel = _disk_kernel(radius, alias)
    return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")


def glass_blur(x, severity, rng):
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[severity - 1]
    pixels = np.uint8(np.clip(_gaussian(x, sigma), 0, 1) * 255)
    batch = np.arange(len(x))
    for _ in range(iterations):
        for h in range(SIDE - delta, delta, -1):
            for w in range(SIDE - delta, delta, -1):
                dy, dx = rng.integers(-delta, delta, size=(2, len(x)))
                pixels[batch, h, w] = pixels[batch, h + dy, w + dx]
    return _gaussian(pixels / 255.0, sigma)


def motion_blur(x, severity, rng):
    radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[severity - 1]
    angles = rng.uniform(-45, 45, len(x))
    # Wand wrote the image as 8-bit PNG and read the result back as 8-bit.
    blurred = [_motion_blur(np.rint(image * 255), radius, sigma, a) for image, a in zip(x, angles)]
    return np.round(np.stack(blurred)) / 255.0


def zoom_blur(x, severity, rng):
    top = (1.06, 1.11, 1.16, 1.21, 1.26)[severity - 1]
    factors = np.arange(1, top, 0.01)
    out = x.copy()
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return out / (len(factors) + 1)


# ---------------------------------------------------------------- weather

def snow(x, severity, rng):
    loc, scale, zoom, threshold, radius, sigma, keep = (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))[severity - 1]
    flakes = _clipped_zoom(rng.normal(loc, scale, (len(x), SIDE, SIDE, 1)), zoom)
    flakes[flakes < threshold] = 0
    flakes = np.uint8(np.clip(flakes, 0, 1) * 255)
    angles = rng.uniform(-135, -45, len(x))
    flakes = np.stack([_motion_blur(f, radius, sigma, a) for f, a in zip(flakes, angles)])
    flakes = np.round(flakes) / 255.0
    grey = x @ np.array([0.299, 0.587, 0.114])
    x = keep * x + (1 - keep) * np.maximum(x, grey[..., None] * 1.5 + 0.5)
    return x + flakes + np.rot90(flakes, k=2, axes=(1, 2))


def frost(x, severity, rng):
    """Stand-in texture (see the module docstring), blended with the paper's weights."""
    keep, add = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[severity - 1]
    texture = _frost_texture()
    starts = rng.integers(0, len(texture) - SIDE, size=(len(x), 2))
    crops = np.stack([texture[r:r + SIDE, c:c + SIDE] for r, c in starts])
    return (keep * x * 255 + add * crops) / 255


def fog(x, severity, rng):
    amount, decay = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[severity - 1]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    haze = np.stack([_plasma_fractal(rng, SIDE, decay) for _ in range(len(x))])[..., None]
    return (x + amount * haze) * peak / (peak + amount)


def brightness(x, severity, rng):
    """Add to HSV value, keep hue and saturation: every channel scales by v'/v
    (a black pixel becomes grey v'), which is exactly skimage's HSV round trip."""
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    value = x.max(axis=-1, keepdims=True)
    brighter = np.clip(value + shift, 0, 1)
    return np.where(value > 0, x * brighter / np.where(value > 0, value, 1), brighter)


# ---------------------------------------------------------------- digital

def contrast(x, severity, rng):
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * factor + means


def elastic_transform(x, severity, rng):
    """A random affine warp, then a smooth random displacement field (bilinear)."""
    alpha, smooth, jitter = (SIDE * np.array(c) for c in (
        (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))[severity - 1])
    centre, size = SIDE // 2, SIDE // 3
    source = np.array([[centre + size, centre + size], [centre + size, centre - size],
                       [centre - size, centre - size]], dtype=np.float64)  # (x, y) as OpenCV
    rows, cols = np.mgrid[:SIDE, :SIDE].astype(np.float64)
    out = np.empty_like(x)
    for i, image in enumerate(x):
        target = source + rng.uniform(-jitter, jitter, source.shape)
        # warpAffine samples the source at the inverse map: solve target -> source.
        inverse = np.linalg.solve(np.c_[target, np.ones(3)], source).T  # 2x3, (x, y)
        src_x = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
        src_y = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]
        warped = np.stack([ndimage.map_coordinates(image[..., ch], [src_y, src_x], order=1, mode="mirror")
                           for ch in range(3)], axis=-1)
        dx, dy = (_gaussian(rng.uniform(-1, 1, (1, SIDE, SIDE, 1)), smooth, "reflect", 3)[0, ..., 0] * alpha
                  for _ in range(2)) if smooth > 0 else (np.zeros((SIDE, SIDE)),) * 2
        out[i] = np.stack([ndimage.map_coordinates(warped[..., ch], [rows + dy, cols + dx], order=1, mode="reflect")
                           for ch in range(3)], axis=-1)
    return out


def pixelate(x, severity, rng):
    side = int(SIDE * (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1])
    return _per_pil_image(x, lambda im: im.resize((side, side), Image.Resampling.BOX)
                          .resize((SIDE, SIDE), Image.Resampling.BOX))


def jpeg_compression(x, severity, rng):
    quality = (80, 65, 58, 50, 40)[severity - 1]

    def recompress(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer).convert("RGB")
    return _per_pil_image(x, recompress)


def _per_pil_image(x, transform) -> np.ndarray:
    pixels = np.uint8(np.rint(np.clip(x, 0, 1) * 255))
    return np.stack([np.asarray(transform(Image.fromarray(p))) for p in pixels]) / 255.0


# ---------------------------------------------------------------- registry

CORRUPTIONS = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness,
    "contrast": contrast, "elastic_transform": elastic_transform, "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
FAMILIES = {"noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
            "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
            "weather": ("snow", "frost", "fog", "brightness"),
            "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression")}
STAND_INS = ("frost",)


def title(name: str) -> str:
    """'motion_blur' -> 'Motion blur', 'jpeg_compression' -> 'JPEG compression'."""
    return name.replace("_", " ").capitalize().replace("Jpeg", "JPEG")


def corruption_rng(seed: int, name: str, severity: int) -> np.random.Generator:
    """One generator per (seed, corruption, severity), so results do not depend on order."""
    return np.random.default_rng([seed, list(CORRUPTIONS).index(name), severity])


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """uint8 images (N, 32, 32, 3), or one (32, 32, 3), corrupted -> uint8 of the same shape."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1 to 5, got {severity}")
    images = np.asarray(images)
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.shape[1:] != (SIDE, SIDE, 3) or batch.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    out = CORRUPTIONS[name](batch / 255.0, severity, corruption_rng(seed, name, severity))
    out = np.uint8(np.clip(out, 0, 1) * 255)  # truncation, as the released generator's np.uint8
    return out[0] if single else out
