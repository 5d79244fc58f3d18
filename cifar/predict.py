"""Top-k predictions of a saved run's model for any user image.

`decode_image` turns any file a user may upload into the (32, 32, 3) uint8
RGB array the saved models take; preprocessing (scaling) lives inside each
model. It treats every file as hostile:

- Only JPEG, PNG, WebP, BMP and GIF are decoded, judged by what Pillow
  detects in the bytes, never by the file name; no other decoder is tried.
- Bytes are capped before decoding and pixels are capped from the header
  before any pixel is allocated, so a small "decompression bomb" fails fast.
- A truncated or corrupt file is an error, never a half-grey image.
- Every failure is one `ImageError` whose message names the file and says
  what to do; the CLI and the dashboard show it without a traceback.

Conversion policy, in order:

1. Frame 0 of an animated GIF, PNG or WebP.
2. The EXIF orientation is applied, so a phone photo is upright.
3. Transparency (RGBA, LA, PA, palette or greyscale with a transparent
   colour) is composited onto white; CMYK, 1-bit, L, P go to RGB. 16-bit
   greyscale (I;16) is scaled by 255/65535, so 65535 -> 255 and
   32768 -> 128; mode I in 0..65535 is read as 16-bit, mode F in 0..1 is
   scaled by 255, and other I/F ranges are stretched min..max to 0..255
   (a transparent colour on 16-bit greyscale is ignored).
4. The largest centred square is cropped and resized to 32x32 with
   Lanczos. Cropping rather than squashing keeps the aspect ratio, and
   CIFAR-10 objects sit in the centre of the frame, so the centre is what
   the model was trained to look at. A 32x32 image passes unchanged.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cifar import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES, artifacts
from cifar.errors import ImageError, RunError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
SUPPORTED = "JPEG, PNG, WebP, BMP, GIF"
TARGET_SIDE = IMAGE_SHAPE[0]
# JPEG can decode at 1/2, 1/4 or 1/8 scale for free; keeping at least 4x the
# target side leaves Lanczos enough pixels for a clean downscale.
_JPEG_DRAFT_SIDE = 4 * TARGET_SIDE
_HIGH_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_BATCH_SIZE = 256
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))


# ---------------------------------------------------------------- decoding

def _label(name: str | None) -> str:
    return f"'{name}'" if name else "The image"


def _read_bytes(data: bytes | str | Path, max_bytes: int, label: str) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if len(data) > max_bytes:
            raise ImageError(_too_many_bytes(label, len(data), max_bytes))
        return data
    if not isinstance(data, (str, Path)):
        raise TypeError(f"decode_image takes bytes or a path, not {type(data).__name__}")
    try:
        with open(data, "rb") as f:
            # Reading one byte past the cap bounds memory even for a file that
            # grows while read or a device such as /dev/zero.
            content = f.read(max_bytes + 1)
            size = max(os.fstat(f.fileno()).st_size, len(content))
    except FileNotFoundError:
        raise ImageError(f"{label} does not exist. Check the path and try again.") from None
    except IsADirectoryError:
        raise ImageError(f"{label} is a folder, not an image file. Give the path of an image.") from None
    except OSError as exc:
        raise ImageError(f"{label} cannot be read ({exc.strerror or exc}). "
                         "Check that the file exists and that you may read it.") from None
    if len(content) > max_bytes:
        raise ImageError(_too_many_bytes(label, size, max_bytes))
    return content


def _human_size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size:,} bytes"


def _too_many_bytes(label: str, size: int, max_bytes: int) -> str:
    return (f"{label} is {_human_size(size)}, over the limit of {_human_size(max_bytes)}. "
            "Use a smaller image: it is shrunk to 32x32 pixels anyway.")


def _too_many_pixels(label: str, detail: str, max_pixels: int) -> str:
    return (f"{label} is too large: {detail}, over the limit of {max_pixels:,} pixels "
            "(it may be a decompression bomb). Resize it and try again.")


def _bomb_detail(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{int(found.group(1)):,} pixels" if found else "too many pixels"


def _sniff_format(content: bytes) -> str | None:
    """The allowed format the first bytes announce, for clearer messages."""
    for magic, fmt in _MAGIC:
        if content.startswith(magic):
            return fmt
    return "WebP" if content[:4] == b"RIFF" and content[8:12] == b"WEBP" else None


def decode_image(data: bytes | str | Path, *, name: str | None = None,
                 max_bytes: int = 20_000_000, max_pixels: int = 40_000_000) -> np.ndarray:
    """Any supported image file -> uint8 RGB array of shape (32, 32, 3).

    `data` is the file's bytes or its path; `name` (defaulting to the path)
    is used in error messages. Raises ImageError for every bad input.
    Pillow's global MAX_IMAGE_PIXELS guard still applies on top of
    `max_pixels`, so the effective limit is the smaller of the two.
    """
    if name is None and isinstance(data, (str, Path)):
        name = str(data)
    label = _label(name)
    content = _read_bytes(data, max_bytes, label)
    if not content:
        raise ImageError(f"{label} is empty (0 bytes), not a supported image ({SUPPORTED}). "
                         "It may not have finished saving or downloading; choose another file.")
    # Pillow's own bomb check runs inside open() with its global limit; make
    # its warning an error too. catch_warnings is process-wide, so under
    # threads this filter may briefly be off: the explicit size check below
    # is the guard that always holds, this one is the backstop.
    pillow_limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(content), formats=list(ALLOWED_FORMATS))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(_too_many_pixels(label, _bomb_detail(exc), pillow_limit)) from None
        except Exception:  # UnidentifiedImageError, or a plugin choking on its header
            claimed = _sniff_format(content)
            if claimed:
                raise ImageError(f"{label} starts like a {claimed} file but its header is damaged. "
                                 "Re-export or re-download it and try again.") from None
            raise ImageError(f"{label} is not a supported image ({SUPPORTED}). "
                             "Save it as PNG or JPEG and try again.") from None
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(_too_many_pixels(label, f"{width}x{height} pixels", max_pixels))
            if width < 1 or height < 1:
                raise ImageError(f"{label} has no pixels ({width}x{height}). Use another image.")
            img.draft(None, (_JPEG_DRAFT_SIDE, _JPEG_DRAFT_SIDE))  # no-op unless JPEG
            try:
                img.load()  # Pillow decodes lazily: force it so damage shows here
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageError(_too_many_pixels(label, _bomb_detail(exc), pillow_limit)) from None
            except Exception as exc:  # OSError, SyntaxError, ValueError ... depending on the damage
                raise ImageError(f"{label} is damaged or truncated: its {img.format} data could not be "
                                 f"decoded ({exc}). Re-export or re-download it and try again.") from None
            try:
                upright = ImageOps.exif_transpose(img)
            except Exception:
                upright = img  # a broken EXIF block should not make a good picture unusable
            return _fit_to_model(upright, label)


def _fit_to_model(img: Image.Image, label: str) -> np.ndarray:
    """Decoded image of any mode -> uint8 (32, 32, 3)."""
    try:
        if img.mode in _HIGH_BIT_GREY:
            return _high_bit_grey_to_rgb(img, label)
        return np.asarray(_crop_resize(_to_rgb(img)), dtype=np.uint8).copy()
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{label} uses colour mode {img.mode}, which could not be converted to RGB "
                         f"({exc}). Save it as an 8-bit RGB PNG or JPEG and try again.") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any 8-bit mode -> RGB, with transparent areas shown as white."""
    if img.mode == "La":  # premultiplied; Pillow converts it only to LA
        img = img.convert("LA")
    if img.has_transparency_data:  # alpha band, or info["transparency"] on P/L/RGB
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _crop_resize(img: Image.Image) -> Image.Image:
    """Largest centred square, resized to TARGET_SIDE with Lanczos."""
    width, height = img.size
    if (width, height) == (TARGET_SIDE, TARGET_SIDE):
        return img
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return img.resize((TARGET_SIDE, TARGET_SIDE), Image.Resampling.LANCZOS,
                      box=(left, top, left + side, top + side), reducing_gap=3.0)


def _high_bit_grey_to_rgb(img: Image.Image, label: str) -> np.ndarray:
    """16-bit or 32-bit greyscale -> RGB, scaled to 0..255 without clipping.

    Works in mode F (float32, exact for 16-bit integers) and resizes before
    scaling, so a large image never gets a float64 copy.
    """
    mode = img.mode
    floats = img if mode == "F" else img.convert("F")
    low, high = floats.getextrema()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ImageError(f"{label} contains values that are not finite numbers. "
                         "Save it as an 8-bit PNG or JPEG and try again.")
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        offset, scale = 0.0, 255.0 / 65535.0
    elif mode == "F" and low >= 0 and high <= 1:
        offset, scale = 0.0, 255.0
    else:
        offset, scale = low, (255.0 / (high - low) if high > low else 0.0)
    small = np.asarray(_crop_resize(floats), dtype=np.float64)
    # Clipping here only trims Lanczos ringing; the range itself was scaled.
    grey = np.clip(np.rint((small - offset) * scale), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


# ---------------------------------------------------------------- models

def load_model_from_path(path: str | Path):
    """Load a saved `.keras` model without ever running code stored in it."""
    import keras  # lazy: decoding images must not pay for importing TensorFlow

    import cifar.models  # the registry imports every model's custom layers, registering them

    path = Path(path)
    if not path.is_file():
        raise RunError(f"model file {path} is missing; the run is incomplete. Re-run the training.")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise RunError(f"model file {path} cannot be loaded ({exc.__class__.__name__}: {exc}). "
                       "It may be damaged or come from another program; re-run the training.") from None
    if tuple(model.output_shape)[-1:] != (NUM_CLASSES,):
        raise RunError(f"model file {path} outputs shape {model.output_shape}, not {NUM_CLASSES} "
                       "class probabilities; it is not a CIFAR-10 classifier from this project.")
    cifar.models.allow_jit_on_jax(model)
    return model


@functools.lru_cache(maxsize=4)
def _load_model_cached(run_id: str, path: str, mtime_ns: int):
    # The key holds the file's mtime, so a re-saved model is loaded afresh.
    return load_model_from_path(path)


def load_model(run_id: str):
    """The model of a saved run, cached while its file is unchanged."""
    path = artifacts.model_path(run_id)
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        raise RunError(f"run '{run_id}' has no readable {path.name}; re-run the training.") from None
    return _load_model_cached(run_id, str(path), mtime_ns)


# ---------------------------------------------------------------- predicting

def predict_probabilities(model, images: np.ndarray) -> np.ndarray:
    """Softmax probabilities, shape (N, 10), for uint8 images (N, 32, 32, 3).

    A single (32, 32, 3) image is taken as a batch of one.
    """
    import keras

    images = np.asarray(images)
    if images.shape == IMAGE_SHAPE:
        images = images[None]
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must have shape (N, 32, 32, 3), got {images.shape}; "
                         "decode files with decode_image first")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be raw uint8 pixels (the model scales them), got {images.dtype}")
    probabilities = np.zeros((len(images), NUM_CLASSES))
    for start in range(0, len(images), _BATCH_SIZE):
        batch = model(images[start:start + _BATCH_SIZE], training=False)
        probabilities[start:start + _BATCH_SIZE] = keras.ops.convert_to_numpy(batch).reshape(-1, NUM_CLASSES)
    return probabilities


def top_k_from_probabilities(probabilities: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
    """(class name, probability) pairs, most likely first; ties keep class order."""
    if not 1 <= k <= NUM_CLASSES:
        raise ValueError(f"k must be between 1 and {NUM_CLASSES}, got {k}")
    probabilities = np.atleast_2d(probabilities)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(CLASS_NAMES[c], float(row[c])) for c in top] for row, top in zip(probabilities, order)]


def predict_top_k(model, images: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each uint8 image in (N, 32, 32, 3)."""
    if not 1 <= k <= NUM_CLASSES:
        raise ValueError(f"k must be between 1 and {NUM_CLASSES}, got {k}")
    return top_k_from_probabilities(predict_probabilities(model, images), k)


def predict_with_timing(model, image: np.ndarray, k: int = 3) -> tuple[list[tuple[str, float]], np.ndarray, float]:
    """One image -> (top-k pairs, probabilities of shape (10,), seconds).

    Seconds is the wall time of the forward pass alone; the first call on a
    freshly loaded model also pays for tracing, so it is slower.
    """
    start = time.perf_counter()
    probabilities = predict_probabilities(model, image)[0]
    seconds = time.perf_counter() - start
    return top_k_from_probabilities(probabilities, k)[0], probabilities, seconds


def predict_files(run_id: str, paths: list[str | Path], k: int = 3) -> list[dict]:
    """Per file, {"file", "top_k"} or {"file", "error"}, in the order given.

    A file that cannot be decoded gets its error message and the others are
    still predicted; a run whose model cannot load raises RunError.
    """
    model = load_model(run_id)
    results, images, decoded = [], [], []
    for path in paths:
        try:
            images.append(decode_image(path))
            decoded.append(len(results))
            results.append({"file": str(path)})
        except ImageError as exc:
            results.append({"file": str(path), "error": str(exc)})
    if images:
        for index, top in zip(decoded, predict_top_k(model, np.stack(images), k)):
            results[index]["top_k"] = top
    return results
