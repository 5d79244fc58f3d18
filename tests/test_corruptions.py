"""The CIFAR-10-C corruptions: shapes, seeds, severity order, and known values
against direct computations of the paper's definitions."""

import colorsys
import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cifar import corruptions
from cifar.corruptions import CORRUPTIONS, corrupt
from fixture_runs import synthetic_image


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return np.stack([synthetic_image(i % 10, rng) for i in range(6)])


def _change(a, b) -> float:
    return float(np.abs(a.astype(float) - b).mean())


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_dtype_seed_and_severity(name, images):
    out = corrupt(images, name, 3, seed=1)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert corrupt(images[0], name, 3, seed=1).shape == images[0].shape
    np.testing.assert_array_equal(out, corrupt(images, name, 3, seed=1))
    mild, harsh = _change(corrupt(images, name, 1), images), _change(corrupt(images, name, 5), images)
    assert mild > 0 and harsh > 0
    if name == "elastic_transform":
        # The paper's elastic severities trade a random affine jitter (largest at
        # severity 1: 2.6 px) for a local displacement field (largest at 5), so
        # raw pixel change does not grow with severity; they must still differ.
        assert not np.array_equal(corrupt(images, name, 1), corrupt(images, name, 5))
    else:
        assert mild < harsh


def test_random_corruptions_depend_on_the_seed(images):
    for name in ("gaussian_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "fog", "elastic_transform"):
        assert not np.array_equal(corrupt(images, name, 2, seed=0), corrupt(images, name, 2, seed=1)), name


def test_contrast_is_the_direct_formula(images):
    x = images / 255.0
    means = x.mean(axis=(1, 2), keepdims=True)
    expected = np.uint8(np.clip((x - means) * 0.4 + means, 0, 1) * 255)
    np.testing.assert_array_equal(corrupt(images, "contrast", 3), expected)


def test_brightness_matches_an_hsv_round_trip(images):
    out = corrupt(images, "brightness", 4)  # +0.2 on HSV value
    for y, x in [(0, 0), (5, 17), (16, 16), (31, 2)]:
        h, s, v = colorsys.rgb_to_hsv(*(images[1, y, x] / 255.0))
        expected = np.uint8(np.clip(colorsys.hsv_to_rgb(h, s, min(v + 0.2, 1.0)), 0, 1) * 255)
        assert np.abs(out[1, y, x].astype(int) - expected).max() <= 1
    black = corrupt(np.zeros((1, 32, 32, 3), np.uint8), "brightness", 5)
    assert (black == np.uint8(0.3 * 255)).all()  # hue-less black turns grey


def test_jpeg_is_a_pillow_round_trip_at_the_papers_quality(images):
    buffer = io.BytesIO()
    Image.fromarray(images[2]).save(buffer, "JPEG", quality=50)  # severity 4
    np.testing.assert_array_equal(corrupt(images[2], "jpeg_compression", 4), np.asarray(Image.open(buffer)))


def test_pixelate_averages_blocks():
    # Severity 4 shrinks to 24 pixels (0.75 x 32). A picture made of 4x4 blocks
    # of one colour each: box-shrinking and box-enlarging keeps flat areas flat.
    blocks = np.kron(np.arange(64).reshape(8, 8) * 4, np.ones((4, 4))).astype(np.uint8)
    image = np.repeat(blocks[..., None], 3, axis=2)
    out = corrupt(image, "pixelate", 4)
    small = Image.fromarray(image).resize((24, 24), Image.Resampling.BOX).resize((32, 32), Image.Resampling.BOX)
    np.testing.assert_array_equal(out, np.asarray(small))
    assert out[1, 1, 0] == image[1, 1, 0] and out[30, 30, 0] == image[30, 30, 0]  # block interiors kept
    flat = np.full((32, 32, 3), 77, np.uint8)
    np.testing.assert_array_equal(corrupt(flat, "pixelate", 5), flat)


def test_zoom_matches_scipy_zoom():
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32, 3))
    for factor in (1.05, 1.13, 1.25, 1.75, 2.25):
        crop = int(np.ceil(32 / factor))
        top = (32 - crop) // 2
        zoomed = ndimage.zoom(x[:, top:top + crop, top:top + crop], (1, factor, factor, 1), order=1)
        trim = (zoomed.shape[1] - 32) // 2
        np.testing.assert_allclose(corruptions._clipped_zoom(x, factor), zoomed[:, trim:trim + 32, trim:trim + 32],
                                   atol=1e-9)


def test_motion_blur_follows_the_motion_direction():
    # A single bright pixel smears along the angle: at 0 degrees to the left of
    # where it was (each output pixel averages pixels to its right), nowhere else.
    image = np.zeros((32, 32, 1))
    image[16, 16] = 255
    blurred = corruptions._motion_blur(image, radius=6, sigma=2, angle=0)
    assert blurred[16, 4:17, 0].min() > 0 and blurred[16, 17:, 0].max() == 0
    assert np.delete(blurred, 16, axis=0).max() == 0
    assert blurred.sum() == pytest.approx(255)


def test_bad_arguments_are_rejected(images):
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(images, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(images, "fog", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.astype(float), "fog", 1)
