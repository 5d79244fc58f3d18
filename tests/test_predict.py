"""cifar.predict: decoding hostile and unusual images, loading models, top-k.

Every test image is generated here with Pillow; nothing is downloaded and
no binary fixture is committed.
"""

import io
import os
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar import CLASS_NAMES, artifacts
from cifar.errors import ImageError, RunError
from cifar.predict import (
    MAX_UPLOAD_FILES, UploadBudget, _fit_to_model, decode_image, decode_upload, load_model,
    load_model_from_path, predict_files, predict_probabilities, predict_top_k, predict_with_timing,
    top_k_from_probabilities,
)

ROOT = Path(__file__).resolve().parent.parent
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
UNSUPPORTED = "not a supported image (JPEG, PNG, WebP, BMP, GIF)"


# ---------------------------------------------------------------- corpus helpers

def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def halves(mode: str, size: tuple[int, int], left, right) -> Image.Image:
    """Left half one colour, right half another."""
    img = Image.new(mode, size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# PNG colour types: (type, bit depth, bits per pixel)
PNG_MODES = {"1": (0, 1, 1), "L": (0, 8, 8), "I;16": (0, 16, 16), "RGB": (2, 8, 24), "RGBA": (6, 8, 32)}


def lying_png(width: int, height: int, mode: str = "1", rows: int | None = None,
              before_data: bytes = b"", after_data: bytes = b"") -> bytes:
    """A valid all-black PNG; tiny on disk, width*height pixels decoded.

    `rows` < height writes only that many rows, i.e. a header that lies;
    `before_data`/`after_data` are extra chunks around the image data.
    """
    colour_type, depth, bits = PNG_MODES[mode]
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width * bits + 7) // 8)  # filter byte + packed pixels
    body = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    body += compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + before_data + png_chunk(b"IDAT", body)
            + after_data + png_chunk(b"IEND", b""))


def one_bit_png(width: int, height: int, rows: int | None = None) -> bytes:
    return lying_png(width, height, "1", rows)


@pytest.fixture
def loads(monkeypatch) -> list:
    """The (size, mode) of every image Pillow decodes: a test's proof of what was decoded."""
    from PIL import ImageFile
    seen, original = [], ImageFile.ImageFile.load

    def spy(self):
        if self.tile:  # pixels still to decode (load() is called again on a loaded image)
            seen.append((self.size, self.mode))
        return original(self)
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return seen


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def assert_colour(array: np.ndarray, colour, tolerance: int = 6) -> None:
    assert array.dtype == np.uint8
    difference = np.abs(array.reshape(-1, 3).astype(int) - np.array(colour)).max()
    assert difference <= tolerance, f"expected {colour}, max difference {difference}"


def decode_ok(content: bytes) -> np.ndarray:
    out = decode_image(content)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    return out


# ---------------------------------------------------------------- supported formats

@pytest.mark.parametrize("fmt, options, tolerance", [
    ("JPEG", {"quality": 95}, 6),
    ("PNG", {}, 0),
    ("WEBP", {"lossless": True}, 0),
    ("BMP", {}, 0),
    ("GIF", {}, 0),
])
def test_each_allowed_format_decodes_to_its_colour(fmt, options, tolerance):
    img = Image.new("RGB", (48, 40), (200, 40, 10) if fmt != "GIF" else RED)
    out = decode_ok(encode(img, fmt, **options))
    assert_colour(out, (200, 40, 10) if fmt != "GIF" else RED, tolerance)


def test_32x32_png_passes_unchanged(tmp_path):
    img = noise((32, 32))
    path = write(tmp_path, "exact.png", encode(img, "PNG"))
    np.testing.assert_array_equal(decode_image(path), np.asarray(img))
    np.testing.assert_array_equal(decode_image(str(path)), np.asarray(img))


def test_wide_image_is_centre_cropped_not_squashed():
    img = Image.new("RGB", (96, 32), BLUE)
    img.paste(RED, (32, 0, 64, 32))  # only the centre square is red
    assert_colour(decode_ok(encode(img, "PNG")), RED, tolerance=0)


def test_tiny_1x1_image_is_upscaled():
    assert_colour(decode_ok(encode(Image.new("RGB", (1, 1), (10, 120, 230)), "PNG")), (10, 120, 230), 0)


def test_large_photo_is_draft_decoded_and_centre_cropped(loads):
    img = Image.new("RGB", (4000, 3000), RED)
    img.paste(GREEN, (0, 0, 450, 3000))  # outside the centred 3000x3000 square
    content = encode(img, "JPEG", quality=90)
    assert_colour(decode_ok(content), RED, tolerance=8)
    assert loads == [((500, 375), "RGB")], "decoded at 1/8 scale, the most that keeps 128 pixels a side"


def test_a_jpeg_is_budgeted_at_its_draft_size_a_png_at_its_full_size(loads):
    img = Image.new("RGB", (1024, 1024), BLUE)
    budget = 4 * 128 * 128  # bytes: one 128x128 RGB image
    assert_colour(decode_image(encode(img, "JPEG"), max_decode_bytes=budget), BLUE, 8)
    with pytest.raises(ImageError, match="1024x1024 RGB pixels need 4 MB"):
        decode_image(encode(img, "PNG"), max_decode_bytes=budget)
    assert loads == [((128, 128), "RGB")], "the PNG was refused before any pixel was decoded"


# ---------------------------------------------------------------- colour modes

def test_transparent_rgba_pixels_become_white():
    img = halves("RGBA", (64, 64), (255, 0, 0, 0), (0, 0, 255, 255))  # hidden red, opaque blue
    out = decode_ok(encode(img, "PNG"))
    assert_colour(out[:, :12], WHITE, 0)
    assert_colour(out[:, 20:], BLUE, 0)


def test_half_transparent_pixels_blend_with_white():
    out = decode_ok(encode(Image.new("RGBA", (8, 8), (0, 0, 0, 128)), "PNG"))
    assert_colour(out, (127, 127, 127), 1)


def test_la_transparent_pixels_become_white():
    img = halves("LA", (64, 64), (0, 0), (50, 255))
    out = decode_ok(encode(img, "PNG"))
    assert_colour(out[:, :12], WHITE, 0)
    assert_colour(out[:, 20:], (50, 50, 50), 0)


def test_palette_with_transparent_index_becomes_white():
    img = Image.new("P", (64, 64), 1)
    img.putpalette([0, 255, 0, 255, 0, 0])  # index 0 green, index 1 red
    img.paste(0, (32, 0, 64, 64))
    out = decode_ok(encode(img, "PNG", transparency=1))  # red is transparent
    assert_colour(out[:, :12], WHITE, 0)
    assert_colour(out[:, 20:], GREEN, 0)


def test_cmyk_jpeg_becomes_rgb():
    out = decode_ok(encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95))
    assert_colour(out, RED, tolerance=8)


def test_16_bit_greyscale_png_keeps_its_brightness():
    values = np.full((32, 32), 65535, dtype=np.uint16)
    values[:, 16:] = 32768
    img = Image.fromarray(values)
    content = encode(img, "PNG")
    assert Image.open(io.BytesIO(content)).mode == "I;16"
    out = decode_ok(content)
    assert_colour(out[:, :16], WHITE, 0)
    assert_colour(out[:, 16:], (128, 128, 128), 0)


def test_16_bit_greyscale_png_is_resized_in_full_precision():
    img = Image.fromarray(np.full((48, 64), 1000, dtype=np.uint16))
    assert_colour(decode_ok(encode(img, "PNG")), (4, 4, 4), 0)  # 1000 * 255/65535 = 3.9


@pytest.mark.parametrize("mode, values, expected", [
    ("I", [0, 65535], [0, 255]),          # 16-bit data in a 32-bit container
    ("I", [-1000, 1000], [0, 255]),       # anything else is stretched min..max
    ("F", [0.0, 1.0], [0, 255]),
    ("F", [-5.0, 5.0], [0, 255]),
    ("I;16B", [0, 65535], [0, 255]),
])
def test_high_bit_depth_modes_are_scaled_not_clipped(mode, values, expected):
    array = np.array([[values[0]] * 16 + [values[1]] * 16] * 32,
                     dtype={"I": np.int32, "F": np.float32, "I;16B": ">u2"}[mode])
    img = Image.frombytes(mode, (32, 32), array.tobytes())
    out = _fit_to_model(img, "x")
    assert_colour(out[:, :16], (expected[0],) * 3, 0)
    assert_colour(out[:, 16:], (expected[1],) * 3, 0)


def test_one_bit_and_greyscale_become_rgb():
    one_bit = halves("1", (40, 40), 1, 0)
    out = decode_ok(encode(one_bit, "PNG"))
    assert_colour(out[:, :12], WHITE, 0)
    assert_colour(out[:, 20:], (0, 0, 0), 0)
    assert_colour(decode_ok(encode(Image.new("L", (40, 40), 77), "PNG")), (77, 77, 77), 0)


@pytest.mark.parametrize("mode, colour, expected", [
    ("PA", (0, 0), WHITE),                 # palette + alpha, fully transparent
    ("La", (100, 0), WHITE),               # premultiplied luminance + alpha
    ("RGBa", (0, 0, 0, 0), WHITE),
    ("YCbCr", (76, 85, 255), RED),
    ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
])
def test_in_memory_modes_convert(mode, colour, expected):
    assert_colour(_fit_to_model(Image.new(mode, (40, 40), colour), "x"), expected, 2)


@pytest.mark.parametrize("fmt, options", [
    ("GIF", {"duration": 100, "loop": 0}),
    ("PNG", {"duration": 100}),
    ("WEBP", {"duration": 100, "lossless": True}),
])
def test_animation_uses_frame_0(fmt, options):
    red, blue = Image.new("RGB", (40, 40), RED), Image.new("RGB", (40, 40), BLUE)
    content = encode(red, fmt, save_all=True, append_images=[blue], **options)
    assert getattr(Image.open(io.BytesIO(content)), "n_frames", 1) == 2
    assert_colour(decode_ok(content), RED, 0)


def test_exif_orientation_is_applied():
    # Stored landscape, left half red; orientation 6 means "rotate 90 degrees
    # clockwise to display", which puts the red half on top.
    img = halves("RGB", (128, 64), RED, BLUE)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_ok(encode(img, "JPEG", quality=95, exif=exif))
    assert_colour(out[:12], RED, 10)
    assert_colour(out[20:], BLUE, 10)


# ---------------------------------------------------------------- hostile files

def test_valid_bomb_over_pillows_own_limit_is_refused_undecoded(tmp_path, loads):
    path = write(tmp_path, "bomb.png", one_bit_png(20000, 20000))  # 400 Mpx, ~60 KB
    assert path.stat().st_size < 200_000
    before = (list(warnings.filters), Image.MAX_IMAGE_PIXELS)
    with pytest.raises(ImageError, match="too large") as caught:
        decode_image(path)
    assert loads == []
    assert "bomb.png" in str(caught.value) and "400,000,000 pixels" in str(caught.value)
    assert (list(warnings.filters), Image.MAX_IMAGE_PIXELS) == before  # nothing leaked


def test_bomb_in_pillows_warning_range_is_an_error():
    content = one_bit_png(10000, 10000)  # 100 Mpx: Pillow only warns for this
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping would fail the test
        with pytest.raises(ImageError, match="too large"):
            decode_image(content, name="warn.png")


def test_bomb_under_pillows_limit_is_stopped_by_the_decoding_budget(loads):
    content = one_bit_png(9000, 9000, rows=1)  # 81 Mpx header (Pillow is silent), one real row
    assert "9000x9000 1 pixels need 162 MB, over the limit of 128 MB" in _error_of(content)
    assert loads == []


@pytest.mark.parametrize("mode, side, refused", [
    ("L", 6000, False),      # 36 MB: within the budget (then found truncated)
    ("RGB", 6000, True),     # 144 MB: Pillow stores RGB in 4 bytes a pixel
    ("RGBA", 4000, False),   # 128 MB, exactly the budget: 4 bytes + a premultiplied copy
    ("RGBA", 4001, True),
    ("I;16", 5000, True),    # 150 MB: 2 bytes + a 32-bit float copy
])
def test_the_decoding_budget_counts_each_modes_real_bytes(mode, side, refused, loads):
    outcome = _error_of(lying_png(side, side, mode, rows=1))
    assert ("too large to decode" in outcome) == refused, outcome
    assert loads == ([] if refused else [((side, side), mode)])


def test_max_decode_bytes_is_a_per_call_limit():
    content = encode(Image.new("RGB", (100, 100), RED), "PNG")  # 40,000 bytes decoded
    with pytest.raises(ImageError, match="over the limit of 0 MB"):
        decode_image(content, max_decode_bytes=39_999)
    assert_colour(decode_image(content, max_decode_bytes=40_000), RED, 0)


def test_an_upload_is_bounded_in_files_and_in_decoding(loads):
    small = encode(Image.new("RGB", (8, 8), RED), "PNG")
    results = decode_upload([(f"{i}.png", small) for i in range(MAX_UPLOAD_FILES + 1)])
    assert all(image is not None for _, image, _ in results[:MAX_UPLOAD_FILES])
    name, image, error = results[-1]
    assert image is None and name in error and f"at most {MAX_UPLOAD_FILES} images" in error
    assert len(loads) == MAX_UPLOAD_FILES

    loads.clear()
    full = lying_png(4000, 4000, "RGBA", rows=1)  # 128 MB each: four fit the 512 MB of an upload
    results = decode_upload([(f"big{i}.png", full) for i in range(5)])
    assert not any("budget" in (error or "") for _, _, error in results[:4])
    assert "decoding budget of 512 MB" in results[4][2] and "big4.png" in results[4][2]
    assert len(loads) == 4, "the fifth was refused before decoding"


def test_a_budget_is_charged_before_decoding():
    budget = UploadBudget(files_left=2, bytes_left=4 * 64 * 64)
    content = encode(Image.new("RGB", (64, 64), RED), "PNG")
    decode_image(content, budget=budget)
    with pytest.raises(ImageError, match="decoding budget"):
        decode_image(content, budget=budget)
    assert (budget.files_left, budget.bytes_left) == (1, 0)


def test_pipes_and_devices_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)  # no writer: reading it would wait forever
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_error_of(fifo)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert outcome and "not a regular file" in outcome[0] and "photo.png" in outcome[0]
    assert "not a regular file" in _error_of("/dev/zero")


def _error_of(path) -> str:
    try:
        decode_image(path)
    except ImageError as exc:
        return str(exc)
    return "decoded"


@pytest.mark.parametrize("where", ["before_data", "after_data"])
def test_png_text_chunk_bomb_is_named(where):
    bomb = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(bytes(5_000_000), 9))  # ~5 KB -> 5 MB
    content = lying_png(16, 16, "RGB", **{where: bomb})
    assert len(content) < 10_000
    with pytest.raises(ImageError, match="text metadata .* decompression bomb hidden in a text chunk"):
        decode_image(content, name="meta.png")


def test_max_bytes_is_checked_before_decoding(tmp_path):
    content = encode(noise((64, 64)), "PNG")
    path = write(tmp_path, "big.png", content)
    for source in (content, path):
        with pytest.raises(ImageError, match="over the limit of"):
            decode_image(source, max_bytes=len(content) - 1)
    assert decode_image(path, max_bytes=len(content)).shape == (32, 32, 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_errors(tmp_path, fmt):
    content = encode(noise((128, 128)), fmt)
    path = write(tmp_path, f"cut.{fmt.lower()}", content[: len(content) // 2])
    with pytest.raises(ImageError, match="damaged or truncated") as caught:
        decode_image(path)
    assert f"cut.{fmt.lower()}" in str(caught.value)


def test_damaged_png_header_says_so():
    content = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    with pytest.raises(ImageError, match="starts like a PNG file but its header is damaged"):
        decode_image(content, name="header.png")


def _unsupported_corpus() -> dict[str, bytes]:
    return {
        "empty.png": b"",
        "random.jpg": np.random.default_rng(1).bytes(4096),
        "notes.jpg": b"These are my holiday notes, not a picture.\n" * 20,
        "scan.tiff": encode(Image.new("RGB", (40, 40), RED), "TIFF"),
        "logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32">'
                    b'<rect width="32" height="32" fill="red"/></svg>',
        "paper.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
        "icon.ico": encode(Image.new("RGB", (32, 32), RED), "ICO"),
    }


@pytest.mark.parametrize("name", list(_unsupported_corpus()))
def test_unsupported_files_are_rejected_by_content(tmp_path, name):
    path = write(tmp_path, name, _unsupported_corpus()[name])
    with pytest.raises(ImageError, match=r"not a supported image \(JPEG, PNG, WebP, BMP, GIF\)") as caught:
        decode_image(path)
    assert name in str(caught.value)


def test_name_is_used_for_bytes_and_extension_is_ignored(tmp_path):
    with pytest.raises(ImageError, match="'upload.png'"):
        decode_image(b"%PDF-1.7\n", name="upload.png")
    with pytest.raises(ImageError, match="^The image is not a supported"):
        decode_image(b"%PDF-1.7\n")
    png_named_jpg = write(tmp_path, "really_a_png.jpg", encode(Image.new("RGB", (8, 8), RED), "PNG"))
    assert_colour(decode_image(png_named_jpg), RED, 0)


def test_missing_file_and_folder_are_image_errors(tmp_path):
    with pytest.raises(ImageError, match="nope.png' does not exist"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        decode_image(tmp_path)


def test_decode_image_does_not_import_keras(tmp_path):
    path = write(tmp_path, "ok.png", encode(Image.new("RGB", (8, 8), RED), "PNG"))
    code = ("import sys; from cifar.predict import decode_image; "
            f"assert decode_image({str(path)!r}).shape == (32, 32, 3); "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------- models and top-k

# Known, input-independent probabilities: zero kernel, bias = log(p).
PROBABILITIES = np.array([0.02, 0.30, 0.05, 0.20, 0.01, 0.25, 0.03, 0.04, 0.06, 0.04])


def build_model(num_classes: int = 10, with_lambda: bool = False):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    if with_lambda:
        x = keras.layers.Lambda(lambda t: t * 2)(x)
    x = keras.layers.Flatten()(x)
    dense = keras.layers.Dense(num_classes, activation="softmax")
    model = keras.Model(inputs, dense(x))
    if num_classes == 10:
        dense.set_weights([np.zeros((32 * 32 * 3, 10)), np.log(PROBABILITIES)])
    return model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.keras"
    build_model().save(path)
    return path


@pytest.fixture(scope="module")
def model(model_file):
    return load_model_from_path(model_file)


def make_run(model_file: Path, seed: int = 0) -> str:
    """A complete, published sample run (cifar.sample_runs) whose model file is `model_file`."""
    from cifar import sample_runs
    real = sample_runs.tiny_model_file
    sample_runs.tiny_model_file = lambda *args: model_file
    try:
        return sample_runs.make_run("cnn_baseline", seed=seed).run_id
    finally:
        sample_runs.tiny_model_file = real


def test_predict_top_k_orders_named_classes(model):
    images = np.stack([np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)])
    results = predict_top_k(model, images, k=3)
    assert len(results) == 2
    for top in results:
        assert [name for name, _ in top] == ["automobile", "dog", "cat"]
        np.testing.assert_allclose([p for _, p in top], [0.30, 0.25, 0.20], atol=1e-6)
    everything = predict_top_k(model, images[:1], k=10)[0]
    assert sorted(name for name, _ in everything) == sorted(CLASS_NAMES)
    assert sum(p for _, p in everything) == pytest.approx(1.0, abs=1e-5)
    assert [p for _, p in everything] == sorted((p for _, p in everything), reverse=True)


def test_predict_with_timing(model):
    top, probabilities, seconds = predict_with_timing(model, np.zeros((32, 32, 3), np.uint8), k=2)
    assert [name for name, _ in top] == ["automobile", "dog"]
    assert probabilities.shape == (10,)
    np.testing.assert_allclose(probabilities, PROBABILITIES, atol=1e-6)
    assert seconds > 0


def test_bad_inputs_to_prediction_are_value_errors(model):
    with pytest.raises(ValueError, match="k must be between 1 and 10"):
        predict_top_k(model, np.zeros((1, 32, 32, 3), np.uint8), k=0)
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 3\)"):
        predict_probabilities(model, np.zeros((1, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="raw uint8"):
        predict_probabilities(model, np.zeros((1, 32, 32, 3), np.float32))
    assert predict_probabilities(model, np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 10)


def test_many_images_go_through_predict_in_batches_with_the_same_result(model):
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    direct = predict_probabilities(model, images)
    batched = predict_probabilities(model, images, batch_size=16)
    assert direct.dtype == batched.dtype == np.float32 and batched.shape == (40, 10)
    np.testing.assert_allclose(batched, direct, atol=1e-6)


def test_top_k_ties_keep_class_order():
    top = top_k_from_probabilities(np.full(10, 0.1), k=3)[0]
    assert [name for name, _ in top] == ["airplane", "automobile", "bird"]


def test_unsafe_or_foreign_models_are_refused(tmp_path):
    lambda_path = tmp_path / "lambda.keras"
    build_model(with_lambda=True).save(lambda_path)
    with pytest.raises(RunError, match="was refused: it holds Python code") as refused:
        load_model_from_path(lambda_path)
    assert "safe_mode" not in str(refused.value), "never advise turning the safety check off"
    five_path = tmp_path / "five.keras"
    build_model(num_classes=5).save(five_path)
    with pytest.raises(RunError, match="not 10 class probabilities|not a CIFAR-10 classifier"):
        load_model_from_path(five_path)
    with pytest.raises(RunError, match="missing"):
        load_model_from_path(tmp_path / "absent.keras")
    garbage = write(tmp_path, "garbage.keras", b"not a zip file")
    with pytest.raises(RunError, match="cannot be loaded"):
        load_model_from_path(garbage)


def test_load_model_is_cached_until_the_file_changes(model_file):
    run_id = make_run(model_file)
    first = load_model(run_id)
    assert load_model(run_id) is first
    path = artifacts.model_path(run_id)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    assert load_model(run_id) is not first


def test_predict_files_reports_each_file(tmp_path, model_file):
    run_id = make_run(model_file)
    good = write(tmp_path, "cat.png", encode(Image.new("RGB", (40, 40), RED), "PNG"))
    bad = write(tmp_path, "doc.pdf", b"%PDF-1.4\n")
    results = predict_files(run_id, [good, bad, tmp_path / "gone.jpg", str(good)], k=2)
    assert [r["file"] for r in results] == [str(good), str(bad), str(tmp_path / "gone.jpg"), str(good)]
    assert [name for name, _ in results[0]["top_k"]] == ["automobile", "dog"]
    assert results[3]["top_k"] == results[0]["top_k"]
    assert UNSUPPORTED in results[1]["error"] and "doc.pdf" in results[1]["error"]
    assert "does not exist" in results[2]["error"]
    assert "top_k" not in results[1] and "error" not in results[0]


def test_bad_files_are_refused_before_keras_or_the_model_load(tmp_path):
    run_id = make_run(write(tmp_path, "garbage.keras", b"not a model: loading it would fail"))
    bad = write(tmp_path, "doc.pdf", b"%PDF-1.4\n")
    code = ("import sys; from cifar.predict import predict_files; "
            f"[result] = predict_files({run_id!r}, [{str(bad)!r}]); "
            "assert 'not a supported image' in result['error'], result; "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)

    cli = subprocess.run([sys.executable, "-m", "cifar", "predict", run_id, str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and cli.stdout == ""
    assert cli.stderr.splitlines() == [f"{bad}: error: {_error_of(bad)}"], \
        "one line on stderr: no traceback, no start-up lines, and the broken model never loaded"
