"""VGG16 as the study built it (inputs scaled to 0-1, 'valid' pooling in the head)
and its caffe-preprocessing variant; random weights, no download."""

import keras
import numpy as np
import pytest

from cifar.models import build_model

# ImageNet channel means in BGR order, what keras.applications.vgg16.preprocess_input subtracts.
IMAGENET_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def head_pool_sides(model) -> list[int]:
    return [layer.output.shape[1] for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]


def base_input(model, images: np.ndarray) -> np.ndarray:
    """What the VGG16 base receives for `images`: the output of preprocessing."""
    base = model.get_layer("vgg16")
    feeding = keras.Model(model.inputs, base._inbound_nodes[-1].input_tensors[0])
    return np.asarray(feeding.predict(images, verbose=0))


@pytest.mark.parametrize("input_size, sides", [(224, [3, 1]), (64, [1, 1]), (32, [1, 1])])
def test_head_pools_with_valid_padding_as_the_study(input_size, sides):
    model = build_model("vgg16_transfer", weights="none", input_size=input_size)
    assert model.get_layer("vgg16").output.shape[1:3] == (input_size // 32,) * 2
    assert head_pool_sides(model) == sides  # 7 -> 3 -> 1 at 224, as printed in the study


def test_study_vgg16_scales_pixels_to_0_1_and_the_caffe_variant_uses_vgg_preprocessing():
    red = np.zeros((1, 32, 32, 3), np.uint8)
    red[..., 0] = 255
    study = base_input(build_model("vgg16_transfer", weights="none", input_size=32), red)
    np.testing.assert_allclose(study[0, 5, 5], [1.0, 0.0, 0.0], atol=1e-6)
    caffe = base_input(build_model("vgg16_transfer_caffe", weights="none", input_size=32), red)
    np.testing.assert_allclose(caffe[0, 5, 5], np.array([0.0, 0.0, 255.0]) - IMAGENET_MEAN_BGR, atol=1e-3)

