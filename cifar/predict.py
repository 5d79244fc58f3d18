"""Top-k predictions of a saved run's model for any user image.

`decode_image` turns any file a user may upload into the (32, 32, 3) uint8
RGB array the saved models take; preprocessing (scaling) lives inside each
model. It treats every file as hostile:

- Only regular files are opened (a FIFO or a device would block or never
  end), and at most `max_bytes` of them are read.
- Only JPEG, PNG, WebP, BMP and GIF are decoded, judged by what Pillow
  detects in the bytes, never by the file name; no other decoder is tried.
- The decoding budget is checked from the header, before any pixel is
  decoded (Pillow opens lazily), so a small "decompression bomb" costs
  nothing. JPEGs are decoded at reduced scale (Pillow's draft mode, 1/2 to
  1/8) to near 4x the 32-pixel target, so a 48-megapixel phone photo is
  decoded as 0.75 megapixels.
- A truncated or corrupt file is an error, never a half-grey image; a PNG
  whose text chunks decompress to megabytes (a text-chunk bomb) is named
  as such.
- Every failure is one `ImageError` whose message names the file and says
  what to do; the CLI and the dashboard show it without a traceback.

The decoding budget, MAX_DECODE_BYTES = 128 MB per image, counts the
memory decoding really takes, from the header's size and colour mode
(`decode_cost`): Pillow's storage of the decoded image (RGB is padded to 4
bytes a pixel) plus the full-size copies made before it is shrunk (RGBA
premultiplied for averaging, a palette widened to RGB(A), 16-bit greyscale
as 32-bit floats). Why 128 MB: the largest image a user plausibly uploads
that is not a JPEG is a 24-megapixel camera photo saved as PNG (6000x4000
RGB: 96 MB) or a 12-megapixel phone photo with transparency (RGBA: 97 MB);
JPEG photos of any camera fit once draft-decoded (a 48-megapixel one costs
3 MB). A shared server thus spends at most about 128 MB on one image (one
more full-size copy if its EXIF says to rotate it; phone photos are JPEGs,
decoded small), and shrinks it to 128 pixels a side before any colour
conversion; a 12-megapixel PNG took 0.2-2 s on a busy 2-core machine. One upload (`decode_upload`, the dashboard) has a budget too:
at most MAX_UPLOAD_FILES files and MAX_UPLOAD_DECODE_BYTES of decoding in
all, one image after another. docs/BENCHMARKS.md has measured costs.

Conversion policy, in order:

1. Frame 0 of an animated GIF, PNG or WebP.
2. The EXIF orientation is applied, so a phone photo is upright.
3. The largest centred square is cropped and shrunk by a whole factor to at
   least 128 pixels a side (box filter), in the image's own mode (palette,
   1-bit and 16-bit images are first widened to RGB(A), L and 32-bit float).
4. Transparency (RGBA, LA, PA, palette or greyscale with a transparent
   colour) is composited onto white; CMYK, 1-bit, L, P go to RGB. 16-bit
   greyscale (I;16) is scaled by 255/65535, so 65535 -> 255 and
   32768 -> 128; mode I in 0..65535 is read as 16-bit, mode F in 0..1 is
   scaled by 255, and other I/F ranges are stretched min..max to 0..255
   (a transparent colour on 16-bit greyscale is ignored).
5. The square is resized to 32x32 with Lanczos. Cropping rather than
   squashing keeps the aspect ratio, and CIFAR-10 objects sit in the centre
   of the frame, so the centre is what the model was trained to look at.
   A 32x32 image passes unchanged.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cifar import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES, artifacts
from cifar.errors import ImageError, RunError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
SUPPORTED = "JPEG, PNG, WebP, BMP, GIF"
TARGET_SIDE = IMAGE_SHAPE[0]
MAX_FILE_BYTES = 20_000_000
MAX_DECODE_BYTES = 128_000_000          # memory one image may take to decode; why: the module docstring
MAX_UPLOAD_FILES = 20                   # images decoded per upload
MAX_UPLOAD_DECODE_BYTES = 512_000_000   # decoding per upload: four images at the full budget
# Bytes a pixel costs while decoding, by the mode the header declares: Pillow's
# storage of it, plus the full-size copies _fit_to_model makes before shrinking.
_DECODE_BYTES_PER_PIXEL = {
    "1": 2, "L": 1, "P": 5,                            # 1 byte; widened to L, or to RGB (4)
    "RGB": 4, "RGBX": 4, "CMYK": 4, "YCbCr": 4, "F": 4,  # 4 bytes, reduced as they are
    "LA": 8, "La": 8, "RGBA": 8, "RGBa": 8, "I": 8,    # + a premultiplied (or float) copy
    "PA": 12,                                          # + RGBA + its premultiplied copy
    "I;16": 6, "I;16L": 6, "I;16B": 6, "I;16N": 6,     # 2 bytes + a 32-bit float copy
}
# With a transparent colour key they are widened to RGBA and premultiplied instead.
_DECODE_BYTES_WITH_KEY = {"P": 9, "L": 9, "RGB": 12}
# Images are shrunk to at least this side before colour conversion, and JPEGs
# decoded at 1/2..1/8 scale to at least this side: 4x the target leaves
# Lanczos enough pixels for a clean downscale.
_WORKING_SIDE = 4 * TARGET_SIDE
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
        # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever.
        # The type is then checked on the open file itself, so it cannot be swapped.
        fd = os.open(data, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageError(f"{label} does not exist. Check the path and try again.") from None
    except IsADirectoryError:
        raise ImageError(f"{label} is a folder, not an image file. Give the path of an image.") from None
    except OSError as exc:
        raise ImageError(f"{label} cannot be read ({exc.strerror or exc}). "
                         "Check that the file exists and that you may read it.") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{label} is a folder, not an image file. Give the path of an image.")
        raise ImageError(f"{label} is not a regular file (a pipe, socket or device); "
                         "only image files are read. Save the image to a file and give its path.")
    with open(fd, "rb", closefd=True) as f:
        if info.st_size > max_bytes:
            raise ImageError(_too_many_bytes(label, info.st_size, max_bytes))
        try:
            # One byte past the cap bounds memory even for a file that grows while read.
            content = f.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(f"{label} cannot be read ({exc.strerror or exc}). "
                             "Check that the file exists and that you may read it.") from None
    if len(content) > max_bytes:
        raise ImageError(_too_many_bytes(label, len(content), max_bytes))
    return content


def _human_size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size:,} bytes"


def _too_many_bytes(label: str, size: int, max_bytes: int) -> str:
    return (f"{label} is {_human_size(size)}, over the limit of {_human_size(max_bytes)}. "
            "Use a smaller image: it is shrunk to 32x32 pixels anyway.")


def _too_many_pixels(label: str, detail: str, max_pixels: int) -> str:
    return (f"{label} is too large: {detail}, over the limit of {max_pixels:,} pixels "
            "(it may be a decompression bomb). Resize it and try again.")


def _too_costly(label: str, img: Image.Image, cost: int, max_bytes: int) -> str:
    width, height = img.size
    return (f"{label} is too large to decode: {width}x{height} {img.mode} pixels need "
            f"{cost / 1e6:,.0f} MB, over the limit of {max_bytes / 1e6:,.0f} MB (it may be a "
            "decompression bomb). Resize it, or save it as JPEG, and try again.")


def decode_cost(img: Image.Image) -> int:
    """Bytes decoding `img` takes at its (draft) size, known from its header alone."""
    width, height = img.size
    per_pixel = _DECODE_BYTES_PER_PIXEL.get(img.mode, 8)
    if "transparency" in img.info:
        per_pixel = _DECODE_BYTES_WITH_KEY.get(img.mode, per_pixel)
    return width * height * per_pixel


def _bomb_detail(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{int(found.group(1)):,} pixels" if found else "too many pixels"


def _text_chunk_bomb(label: str) -> str:
    return (f"{label} was refused: its PNG text metadata (a zTXt or iTXt chunk) decompresses to more "
            "than Pillow's safety limit, the mark of a decompression bomb hidden in a text chunk. "
            "Re-save the picture without metadata and try again.")


def _is_text_chunk_bomb(exc: Exception) -> bool:
    # Pillow's PNG plugin: MAX_TEXT_CHUNK per chunk, MAX_TEXT_MEMORY over all text chunks.
    return isinstance(exc, ValueError) and ("MAX_TEXT_CHUNK" in str(exc) or "MAX_TEXT_MEMORY" in str(exc))


def _sniff_format(content: bytes) -> str | None:
    """The allowed format the first bytes announce, for clearer messages."""
    for magic, fmt in _MAGIC:
        if content.startswith(magic):
            return fmt
    return "WebP" if content[:4] == b"RIFF" and content[8:12] == b"WEBP" else None


@dataclass
class UploadBudget:
    """What one upload may still cost: files and decoded pixels (see the module docstring)."""

    files_left: int = MAX_UPLOAD_FILES
    bytes_left: int = MAX_UPLOAD_DECODE_BYTES

    def charge(self, cost: int, label: str) -> None:
        """Take one file and `cost` decoding bytes, or refuse the image before it is decoded."""
        if self.files_left <= 0:
            raise ImageError(f"{label} was not decoded: one upload takes at most {MAX_UPLOAD_FILES} "
                             "images. Upload the others separately.")
        if cost > self.bytes_left:
            raise ImageError(f"{label} was not decoded: this upload's earlier images used most of its "
                             f"decoding budget of {MAX_UPLOAD_DECODE_BYTES / 1e6:,.0f} MB ({cost / 1e6:,.0f} MB "
                             f"needed, {self.bytes_left / 1e6:,.0f} MB left). Upload fewer large images at once.")
        self.files_left -= 1
        self.bytes_left -= cost


def decode_image(data: bytes | str | Path, *, name: str | None = None, max_bytes: int = MAX_FILE_BYTES,
                 max_decode_bytes: int = MAX_DECODE_BYTES, budget: UploadBudget | None = None) -> np.ndarray:
    """Any supported image file -> uint8 RGB array of shape (32, 32, 3).

    `data` is the file's bytes or its path; `name` (defaulting to the path)
    is used in error messages. `max_bytes` caps the file, `max_decode_bytes`
    the memory decoding takes (`decode_cost`, after JPEG draft scaling);
    `budget`, when given, is charged before decoding. Raises ImageError for
    every bad input. Pillow's global MAX_IMAGE_PIXELS guard still applies.
    """
    if name is None and isinstance(data, (str, Path)):
        name = str(data)
    label = _label(name)
    if budget is not None and budget.files_left <= 0:
        budget.charge(0, label)  # refuses before the file is even read
    content = _read_bytes(data, max_bytes, label)
    if not content:
        raise ImageError(f"{label} is empty (0 bytes), not a supported image ({SUPPORTED}). "
                         "It may not have finished saving or downloading; choose another file.")
    # Pillow's own bomb check runs inside open() with its global limit; make
    # its warning an error too. catch_warnings is process-wide, so under
    # threads this filter may briefly be off: the explicit size check below
    # is the guard that always holds, this one is the backstop.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(content), formats=list(ALLOWED_FORMATS))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(_too_many_pixels(label, _bomb_detail(exc), pillow_limit)) from None
        except Exception as exc:  # UnidentifiedImageError, or a plugin choking on its header
            if _is_text_chunk_bomb(exc):
                raise ImageError(_text_chunk_bomb(label)) from None
            claimed = _sniff_format(content)
            if claimed:
                raise ImageError(f"{label} starts like a {claimed} file but its header is damaged. "
                                 "Re-export or re-download it and try again.") from None
            raise ImageError(f"{label} is not a supported image ({SUPPORTED}). "
                             "Save it as PNG or JPEG and try again.") from None
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageError(f"{label} has no pixels ({width}x{height}). Use another image.")
            # JPEG only (a no-op otherwise): the size Pillow will decode, known before decoding.
            img.draft(None, (_WORKING_SIDE, _WORKING_SIDE))
            cost = decode_cost(img)
            if cost > max_decode_bytes:
                raise ImageError(_too_costly(label, img, cost, max_decode_bytes))
            if budget is not None:
                budget.charge(cost, label)
            try:
                img.load()  # Pillow decodes lazily: force it so damage shows here
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageError(_too_many_pixels(label, _bomb_detail(exc), pillow_limit)) from None
            except Exception as exc:  # OSError, SyntaxError, ValueError ... depending on the damage
                if _is_text_chunk_bomb(exc):
                    raise ImageError(_text_chunk_bomb(label)) from None
                raise ImageError(f"{label} is damaged or truncated: its {img.format} data could not be "
                                 f"decoded ({exc}). Re-export or re-download it and try again.") from None
            try:
                # In place: without an orientation to apply, no full-size copy is made.
                ImageOps.exif_transpose(img, in_place=True)
            except Exception:
                pass  # a broken EXIF block should not make a good picture unusable
            return _fit_to_model(img, label)


def decode_upload(files: list[tuple[str, bytes]], max_bytes: int = MAX_FILE_BYTES,
                  ) -> list[tuple[str, np.ndarray | None, str | None]]:
    """One upload's (name, bytes) pairs -> (name, image or None, error or None), in order.

    The files are decoded one after another under one UploadBudget, so the
    whole upload's cost is bounded, not only each file's.
    """
    budget, decoded = UploadBudget(), []
    for name, content in files:
        try:
            decoded.append((name, decode_image(content, name=name, max_bytes=max_bytes, budget=budget), None))
        except ImageError as exc:
            decoded.append((name, None, str(exc)))
    return decoded


def _fit_to_model(img: Image.Image, label: str) -> np.ndarray:
    """Decoded image of any mode -> uint8 (32, 32, 3)."""
    try:
        mode = img.mode
        if mode in _HIGH_BIT_GREY:
            floats = img if mode == "F" else img.convert("F")
            return _high_bit_grey_to_rgb(_shrink(floats), mode, label)
        return np.asarray(_crop_resize(_to_rgb(_shrink(_reducible(img)))), dtype=np.uint8).copy()
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{label} uses colour mode {img.mode}, which could not be converted to RGB "
                         f"({exc}). Save it as an 8-bit RGB PNG or JPEG and try again.") from None


def _reducible(img: Image.Image) -> Image.Image:
    """A mode whose pixels may be averaged: palette and 1-bit images are widened,
    and a transparent colour key (which averaging would break) becomes alpha."""
    if img.mode in ("P", "PA") or (img.mode in ("L", "RGB") and "transparency" in img.info):
        return img.convert("RGBA" if img.has_transparency_data else "RGB")
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "La":  # premultiplied; Pillow converts it only to LA
        return img.convert("LA")
    return img


def _shrink(img: Image.Image) -> Image.Image:
    """The largest centred square, shrunk by a whole factor to at least _WORKING_SIDE."""
    width, height = img.size
    side = min(width, height)
    factor = side // _WORKING_SIDE
    if factor < 2:
        return img
    left, top = (width - side) // 2, (height - side) // 2
    return img.reduce(factor, box=(left, top, left + side, top + side))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any 8-bit mode -> RGB, with transparent areas shown as white."""
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


def _high_bit_grey_to_rgb(floats: Image.Image, mode: str, label: str) -> np.ndarray:
    """16-bit or 32-bit greyscale, already as mode F -> RGB, scaled to 0..255 without clipping.

    `mode` is the image's original mode, which decides the scaling. Mode F
    is exact for 16-bit integers, and the image is resized before scaling,
    so a large image never gets a float64 copy.
    """
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
        if "safe_mode" in str(exc):  # Keras' advice in that message is to turn the check off: never
            raise RunError(f"model file {path} was refused: it holds Python code (a Lambda layer or a "
                           "stored function), and this project never runs code from a model file. "
                           "Use a model trained by this project (python -m cifar train ...).") from None
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


def model_file(run_id: str) -> tuple[Path, int]:
    """A run's model file and its mtime, checked without importing Keras."""
    path = artifacts.model_path(run_id)
    try:
        return path, path.stat().st_mtime_ns
    except OSError:
        raise RunError(f"run '{run_id}' has no readable {path.name}; re-run the training.") from None


def load_model(run_id: str):
    """The model of a saved run, cached while its file is unchanged."""
    path, mtime_ns = model_file(run_id)
    return _load_model_cached(run_id, str(path), mtime_ns)


# ---------------------------------------------------------------- predicting

def predict_probabilities(model, images: np.ndarray, batch_size: int = _BATCH_SIZE) -> np.ndarray:
    """Softmax probabilities, float32 of shape (N, 10), for uint8 images (N, 32, 32, 3).

    A single (32, 32, 3) image is taken as a batch of one. Up to one batch is
    a direct call (no `predict` set-up cost: the dashboard's one-image path);
    more go through `model.predict`, batch by batch.
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
    if len(images) == 0:
        return np.zeros((0, NUM_CLASSES), np.float32)
    if len(images) <= batch_size:
        probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    else:
        probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    return np.asarray(probabilities, dtype=np.float32).reshape(-1, NUM_CLASSES)


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


def decode_files(paths: list[str | Path]) -> list[dict]:
    """Per file, {"file", "image"} or {"file", "error"}, in the order given; no Keras needed."""
    results = []
    for path in paths:
        try:
            results.append({"file": str(path), "image": decode_image(path)})
        except ImageError as exc:
            results.append({"file": str(path), "error": str(exc)})
    return results


def predict_decoded(run_id: str, decoded: list[dict], k: int = 3) -> list[dict]:
    """`decode_files`' results with "top_k" added to each decoded file.

    The model is loaded only when at least one file decoded; a run whose
    model cannot load raises RunError.
    """
    good = [result for result in decoded if "image" in result]
    if good:
        model = load_model(run_id)
        for result, top in zip(good, predict_top_k(model, np.stack([r["image"] for r in good]), k)):
            result["top_k"] = top
    return decoded


def predict_files(run_id: str, paths: list[str | Path], k: int = 3) -> list[dict]:
    """Per file, {"file", "top_k"} or {"file", "error"}, in the order given.

    The run's model file is checked first and every file decoded before
    Keras and the model load, so a bad file or run costs nothing. A file
    that cannot be decoded gets its error message and the others are still
    predicted; a run whose model cannot load raises RunError.
    """
    model_file(run_id)
    results = predict_decoded(run_id, decode_files(paths), k)
    return [{key: value for key, value in result.items() if key != "image"} for result in results]
