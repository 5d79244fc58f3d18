"""Grad-CAM: the layer it picks, a known answer, fast_cnn's test-time views,
other backends, and the heatmaps on the Predict and Confusion pages."""

import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import streamlit as st
from keras import layers
from PIL import Image
from streamlit.testing.v1 import AppTest

import fixture_runs
from cifar import explain
from cifar.models import build_model

TOP_LEFT, BOTTOM_RIGHT = ((0, 16), (0, 16)), ((16, 0), (16, 0))


def quadrant_model(quadrant, seed: int = 0) -> keras.Model:
    """A classifier that sees only one quadrant: the rest of the image is cut
    away and replaced by zeros before its only (bias-free) convolution."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = layers.Rescaling(1 / 255)(inputs)
    kept = tuple((16 - a, 16 - b) for a, b in quadrant)  # what Cropping2D removes, ZeroPadding2D puts back
    x = layers.ZeroPadding2D(quadrant)(layers.Cropping2D(kept)(x))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, activation="relu", name="only_conv")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, activation="softmax")(x))


def images(count: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def mass_in(heat: np.ndarray, rows: slice, cols: slice) -> float:
    upscaled = explain.upscale(heat, 32)
    return float(upscaled[rows, cols].sum() / upscaled.sum())


@pytest.mark.parametrize("quadrant, rows, reach", [(TOP_LEFT, slice(0, 16), slice(0, 17)),
                                                  (BOTTOM_RIGHT, slice(16, 32), slice(15, 32))])
def test_heatmap_mass_sits_in_the_only_quadrant_the_model_sees(quadrant, rows, reach):
    model = quadrant_model(quadrant)
    assert explain.target_layer(model).name == "only_conv"
    pictures = images()
    predicted = model(pictures).numpy().argmax(axis=1)
    maps = explain.grad_cam(model, pictures, predicted)
    assert maps.shape == (3, 32, 32) and maps.max() == pytest.approx(1.0) and maps.min() >= 0
    for heat in maps:
        assert mass_in(heat, rows, rows) > 0.8
        assert mass_in(heat, reach, reach) > 0.999  # with the 3x3 convolution's one-pixel reach


def test_the_layer_is_found_inside_nested_models_and_past_same_size_layers():
    cnn = build_model("cnn_baseline")
    last_conv = [layer for layer in cnn.layers if isinstance(layer, layers.Conv2D)][-1]
    assert explain.target_layer(cnn) is last_conv  # the max pooling after it halves the size
    fast = build_model("fast_cnn")
    target = explain.target_layer(fast)
    assert isinstance(target, layers.Activation) and tuple(target.output.shape[1:3]) == (3, 3)

    inner = quadrant_model(TOP_LEFT)
    outer_input = keras.Input((32, 32, 3), dtype="uint8")
    nested = keras.Model(outer_input, inner(outer_input))
    assert explain.target_layer(nested).name == "only_conv"
    heat = explain.grad_cam(nested, images(1)[0], 3)
    assert heat.shape == (32, 32) and mass_in(heat, slice(0, 16), slice(0, 16)) > 0.8


def test_fast_cnn_views_are_merged_into_one_map_per_image():
    model = build_model("fast_cnn", seed=0)
    pictures = images(2)
    maps = explain.grad_cam(model, pictures, [1, 7])
    assert maps.shape == (2, 3, 3) and np.isfinite(maps).all() and maps.max() <= 1
    overlay = explain.explain(model, pictures[0], 1)
    assert overlay.shape == (128, 128, 3) and overlay.dtype == np.uint8


def test_other_backends_get_a_clear_message(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(explain.ExplainError, match="TensorFlow and JAX"):
        explain.grad_cam(quadrant_model(TOP_LEFT), images(1), 0)


def test_the_jax_backend_gives_the_same_answer():
    pytest.importorskip("jax")
    # Only keras and cifar.explain are imported there (not this module, which loads streamlit).
    script = ("import keras, numpy as np; from keras import layers; from cifar import explain; "
              "keras.utils.set_random_seed(0); i = keras.Input((32, 32, 3), dtype='uint8'); "
              "x = layers.ZeroPadding2D(((0, 16), (0, 16)))(layers.Cropping2D(((0, 16), (0, 16)))("
              "layers.Rescaling(1 / 255)(i))); "
              "x = layers.Conv2D(8, 3, padding='same', use_bias=False, activation='relu')(x); "
              "m = keras.Model(i, layers.Dense(10, activation='softmax')(layers.GlobalAveragePooling2D()(x))); "
              "h = explain.upscale(explain.grad_cam(m, np.random.default_rng(0).integers(0, 256, (32, 32, 3), "
              "dtype=np.uint8), 2), 32); print(round(float(h[:16, :16].sum() / h.sum()), 3))")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], cwd=fixture_runs.REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) > 0.8


def test_overlay_leaves_cold_areas_as_the_image():
    image = np.full((32, 32, 3), 100, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    picture = explain.overlay(image, heat, side=64)
    assert picture.shape == (64, 64, 3)
    assert (picture[-8:, -8:] == 100).all() and not (picture[:4, :4] == 100).all()


# ---------------------------------------------------------------- pages

def _app(page: str, run_ids: list[str]) -> AppTest:
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(fixture_runs.REPO / "streamlit_app.py", default_timeout=90)
    app.query_params["run"] = run_ids
    app.run()
    app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def test_predict_page_shows_a_heatmap_per_model_and_for_a_picked_class():
    runs = [fixture_runs.make_run("cnn_baseline", seed=1), fixture_runs.make_run("cnn_regularized", seed=2)]
    with fixture_runs.past_first_request():
        app = _app("pages/predict.py", [r.run_id for r in runs])
        buffer = io.BytesIO()
        Image.fromarray(images(1)[0]).save(buffer, format="PNG")
        app.file_uploader[0].set_value([("noise.png", buffer.getvalue(), "image/png")]).run()
        assert not app.exception, app.exception
        heatmaps = [image for image in app.image if image.proto.imgs and
                    any(i.caption.startswith("Predicted:") for i in image.proto.imgs)]
        assert len(heatmaps) == 2  # one per selected model
        app.selectbox(key="explain_noise.png").set_value("ship").run()
        assert not app.exception, app.exception
        captions = [i.caption for image in app.image for i in image.proto.imgs]
        assert captions.count("Class: ship") == 2


def test_confusion_mistakes_show_a_heatmap_beside_each_image():
    made = fixture_runs.make_run("cnn_baseline", seed=1)
    with fixture_runs.past_first_request():
        app = _app("pages/confusion.py", [made.run_id])
        app.session_state["confusion_view"] = "Most-confused pairs"
        app.run()
    assert not app.exception, app.exception
    gallery = [i for image in app.image for i in image.proto.imgs if "heatmap" in i.caption]
    assert len(gallery) == min(made.confusion[3, 5], 24) > 0
