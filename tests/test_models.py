"""Every registry model builds, predicts and trains a step; study parameter counts hold."""

from pathlib import Path

import keras
import numpy as np
import pytest

from cifar.errors import ModelError
from cifar.models import REGISTRY, build_model, count_params, get_spec, leaf_layers

# Transfer models are tested with random weights on 32x32 input: no download, fast.
SMALL = {"input_size": 32, "weights": "none"}


def _kwargs(name):
    return SMALL if get_spec(name).is_transfer else {}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_model_takes_raw_uint8_predicts_and_trains_a_step(name):
    model = build_model(name, seed=0, **_kwargs(name))
    assert model.inputs[0].dtype == "uint8"
    # Lambda layers cannot be loaded with safe_mode=True, which every loader uses.
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in leaf_layers(model))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    probabilities = np.asarray(model.predict(images, verbose=0))
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)

    labels = np.eye(10, dtype="float32")[[0, 1, 2, 3]]
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="categorical_crossentropy")
    before = [np.array(w) for w in model.trainable_weights[-2:]]
    logs = model.fit(images, labels, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])
    after = [np.array(w) for w in model.trainable_weights[-2:]]
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), "a training step changed nothing"


# The study's layer tables (sections 3.1 and 3.2), transcribed: type, output shape, parameters.
BLOCKS = [("Conv2D", (32, 32, 64), 1792), ("Conv2D", (32, 32, 64), 36928), ("MaxPooling2D", (16, 16, 64), 0),
          ("Conv2D", (16, 16, 128), 73856), ("Conv2D", (16, 16, 128), 147584), ("MaxPooling2D", (8, 8, 128), 0),
          ("Conv2D", (8, 8, 256), 295168), ("Conv2D", (8, 8, 256), 590080), ("MaxPooling2D", (4, 4, 256), 0),
          ("Flatten", (4096,), 0), ("Dense", (256,), 1048832)]
STUDY_LAYERS = {
    "cnn_baseline": (BLOCKS + [("Dense", (10,), 2570)], (2_196_810, 2_196_810)),
    "cnn_regularized": ([row for layer in BLOCKS for row in
                         ([layer, ("BatchNormalization", layer[1], 4 * layer[1][-1])] if layer[0] == "Conv2D"
                          else [layer])] + [("Dropout", (256,), 0), ("Dense", (10,), 2570)],
                        (2_200_394, 2_198_602)),
}


@pytest.mark.parametrize("name", sorted(STUDY_LAYERS))
def test_home_made_cnns_have_the_study_layer_tables(name):
    model = build_model(name)
    study_kinds = {kind for kind, _, _ in STUDY_LAYERS[name][0]}
    built = [(type(layer).__name__, tuple(layer.output.shape[1:]), layer.count_params())
             for layer in leaf_layers(model, open_sequential=False) if type(layer).__name__ in study_kinds]
    assert built == STUDY_LAYERS[name][0]
    params = count_params(model)
    assert (params["total"], params["trainable"]) == STUDY_LAYERS[name][1]


def test_transfer_parameter_counts_at_224():
    # Study 4.1 total and 4.2's printed trainable split; study 5.2's totals. The
    # facts of resnet50_transfer are the ones sample runs record (built once a process).
    from cifar.sample_runs import network_facts
    vgg = count_params(build_model("vgg16_finetune", weights="none"))
    assert (vgg["total"], vgg["trainable"]) == (17_477_450, 9_839_114)
    resnet = network_facts("resnet50_transfer")["params"]
    assert (resnet["total"], resnet["trainable"], resnet["non_trainable"]) == (49_723_082, 40_909_770, 8_813_312)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ModelError) as error:
        get_spec("resnet9000")
    assert "cnn_baseline" in str(error.value) and "resnet50_transfer" in str(error.value)


def test_missing_imagenet_weights_give_a_clear_error(monkeypatch, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        build_model("vgg16_transfer", weights=str(tmp_path / "nope.h5"), input_size=32)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    import keras.src.utils.file_utils as file_utils
    monkeypatch.setattr(file_utils, "get_file", offline)
    import keras.src.applications.vgg16 as vgg16_module
    monkeypatch.setattr(vgg16_module.file_utils, "get_file", offline)
    with pytest.raises(ModelError, match="--weights"):
        build_model("vgg16_transfer", input_size=32)


def test_weights_from_a_local_file_are_loaded(tmp_path):
    import keras
    from keras.applications import vgg16
    base = vgg16.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    base.save_weights(path)
    model = build_model("vgg16_transfer", weights=str(path), input_size=32)
    inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    np.testing.assert_array_equal(inner.get_weights()[0], base.get_weights()[0])


def test_fast_cnn_whitening_and_test_time_augmentation():
    from cifar.fast_cnn import TTA_WEIGHTS, single_view
    model = build_model("fast_cnn", seed=0)
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    get_spec("fast_cnn").prepare(model, images)
    # The first 12 whitening channels are decorrelated with unit variance on the data.
    whitened = keras.Model(model.input, model.get_layer("whiten").output).predict(images, verbose=0)
    covariance = np.cov(whitened[..., :12].reshape(-1, 12).T)
    np.testing.assert_allclose(np.diag(covariance), 1, atol=0.1)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.1
    # At inference the prediction is the softmax of the weighted mean of the
    # logits of six views: the image, its mirror, and both shifted one pixel
    # up-left and down-right (reflect-padded). Log-probabilities are logits up
    # to a per-image constant, which the softmax of a mean with weights summing to 1 ignores.
    batch = images[:4]
    both = np.concatenate([batch, batch[:, :, ::-1]])
    padded = np.pad(both, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    views = np.concatenate([both, padded[:, :-2, :-2], padded[:, 2:, 2:]]).reshape(6, 4, 32, 32, 3)
    with single_view(model):
        log_p = np.stack([np.log(model.predict(view, verbose=0)) for view in views])
    mean = np.tensordot(np.asarray(TTA_WEIGHTS), log_p, axes=1)
    expected = np.exp(mean - mean.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    probabilities = model.predict(batch, verbose=0)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-3, atol=1e-5)
    # A mirrored image gets nearly the same prediction (only the shifted views differ).
    np.testing.assert_allclose(probabilities, model.predict(batch[:, :, ::-1], verbose=0), atol=0.05)


def test_fast_cnn_single_view_switches_test_time_augmentation_off_and_back():
    from cifar.fast_cnn import single_view
    model = build_model("fast_cnn", seed=0)
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    get_spec("fast_cnn").prepare(model, images)
    with_tta = model.predict(images, verbose=0)
    with single_view(model):
        plain = model.predict(images, verbose=0)
        mirrored = model.predict(images[:, :, ::-1], verbose=0)
    # TTA's prediction is the weighted mean of the variants' logits; the plain
    # and mirrored views are two of them, so these differ from it...
    assert not np.allclose(plain, with_tta, atol=1e-4)
    assert not np.allclose(plain, mirrored, atol=1e-4)
    # ...and afterwards the model predicts with all six variants again.
    np.testing.assert_allclose(model.predict(images, verbose=0), with_tta, rtol=1e-5, atol=1e-6)
    # Models without test-time augmentation pass through unchanged.
    baseline = build_model("cnn_baseline", seed=0)
    with single_view(baseline) as same:
        assert same is baseline


def test_a_saved_fast_cnn_loads_in_a_fresh_process(tmp_path):
    """Its custom layers must be registered by the loader itself: a process
    that only predicts (the CLI, the dashboard) never imports the registry."""
    import subprocess
    import sys
    model = build_model("fast_cnn", seed=0)
    images = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    get_spec("fast_cnn").prepare(model, images)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "expected.npy", model.predict(images, verbose=0))
    np.save(tmp_path / "images.npy", images)
    code = ("import sys, numpy as np; from cifar.predict import load_model_from_path; "
            f"d = {str(tmp_path)!r}; m = load_model_from_path(d + '/model.keras'); "
            "np.testing.assert_allclose(m.predict(np.load(d + '/images.npy'), verbose=0), "
            "np.load(d + '/expected.npy'), rtol=1e-4, atol=1e-5); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_lookahead_moves_weights_to_the_slow_copy_every_5_steps_and_at_the_very_end_only():
    import keras
    from cifar.fast_cnn import LookaheadSGD

    def weights(model):
        return [np.array(w) for w in model.trainable_weights]

    def slow_copy(model):
        return [np.array(a) for a in model.optimizer._model_variables_moving_average]

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=LookaheadSGD(total_steps=12, learning_rate=0.1, momentum=0.5), loss="mse")
    x, y = np.random.default_rng(0).normal(size=(12, 4)), np.random.default_rng(1).normal(size=(12, 2))
    model.fit(x[:5], y[:5], batch_size=1, shuffle=False, verbose=0)  # steps 1-5: step 5 syncs
    for w, a in zip(weights(model), slow_copy(model)):
        np.testing.assert_allclose(w, a)
    model.fit(x[5:7], y[5:7], batch_size=1, shuffle=False, verbose=0)  # steps 6-7: an epoch ends mid-period
    assert any(not np.allclose(w, a) for w, a in zip(weights(model), slow_copy(model))), \
        "the end of an epoch must not roll steps 6-7 back"
    model.fit(x[7:], y[7:], batch_size=1, shuffle=False, verbose=0)  # steps 8-12: the end of training
    for w, a in zip(weights(model), slow_copy(model)):
        np.testing.assert_allclose(w, a)


def test_fast_cnn_epoch_images_alternate_flips_and_shift_by_whole_pixels():
    from cifar.fast_cnn import epoch_images
    rng = np.random.default_rng(3)
    # Left-right asymmetric images with distinct rows, so flips and shifts are recognisable.
    images = rng.integers(0, 256, (400, 32, 32, 3), dtype=np.uint8)
    epochs = [epoch_images(images, epoch, seed=5) for epoch in range(3)]
    assert all(e.shape == images.shape and e.dtype == np.uint8 for e in epochs)
    np.testing.assert_array_equal(epoch_images(images, 1, seed=5), epochs[1])  # deterministic
    assert not np.array_equal(epoch_images(images, 1, seed=6), epochs[1])

    def flipped_and_shift(original, seen):
        """Which (flip, dy, dx) turns `original` into `seen` (centre must match exactly)."""
        padded = [np.pad(o, ((2, 2), (2, 2), (0, 0)), mode="reflect") for o in (original, original[:, ::-1])]
        for flip in (False, True):
            for dy in range(5):
                for dx in range(5):
                    if np.array_equal(padded[flip][dy:dy + 32, dx:dx + 32], seen):
                        return flip, dy - 2, dx - 2
        raise AssertionError("not a flip plus a whole-pixel mirror-padded shift")

    found = [[flipped_and_shift(images[i], e[i]) for i in range(len(images))] for e in epochs]
    flips = np.array([[f for f, _, _ in epoch] for epoch in found])
    # Epoch 0 flips about half the images; each image then alternates sides.
    assert 0.4 < flips[0].mean() < 0.6
    np.testing.assert_array_equal(flips[1], ~flips[0])
    np.testing.assert_array_equal(flips[2], flips[0])
    shifts = np.array([[(dy, dx) for _, dy, dx in epoch] for epoch in found])
    assert set(np.unique(shifts)) == {-2, -1, 0, 1, 2}  # all 5 shifts per axis occur
    assert (shifts[0] != shifts[1]).any(axis=1).mean() > 0.8  # drawn afresh every epoch
    # Shifts are independent of flips: both sides see every shift, in every epoch.
    for epoch in range(3):
        for side in (flips[epoch], ~flips[epoch]):
            assert set(shifts[epoch][side, 0]) == set(shifts[epoch][side, 1]) == {-2, -1, 0, 1, 2}


def test_fast_cnn_learning_rate_is_airbench_triangle_and_survives_saving():
    import keras
    from cifar.fast_cnn import WarmupLinearDecay
    schedule = WarmupLinearDecay(peak=2.0, total_steps=100, warmup_fraction=0.23)
    lr = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 23, 100, 150)]
    np.testing.assert_allclose(lr, [0.4, 2.0, 0.14, 0.14], rtol=1e-6)  # 0.2x, peak, 0.07x, held
    midway = float(keras.ops.convert_to_numpy(schedule(23 + 77 // 2)))
    assert 0.14 < midway < 2.0 and abs(midway - (2.0 + 0.14) / 2) < 0.03  # linear, not cosine
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(keras.ops.convert_to_numpy(restored(50))) == pytest.approx(
        float(keras.ops.convert_to_numpy(schedule(50))))


def test_the_lookahead_slow_copy_starts_as_the_weights_not_at_zero():
    """In a 5-step run the first lookahead sync is also the last, with rho =
    0.95**5: a slow copy left at Keras' zero start would shrink the weights to
    23% there (collapsing short runs to one constant prediction)."""
    from cifar.config import resolve_config
    from cifar.train import compile_for_training

    model = build_model("fast_cnn", seed=0)
    compile_for_training(model, resolve_config("fast_cnn", epochs=1, learning_rate=0.05), steps_per_epoch=5)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.eye(10)[rng.integers(0, 10, 40)]
    kernel = model.trainable_weights[0]
    model.train_on_batch(x[:8], y[:8])
    np.testing.assert_array_equal(np.array(model.optimizer._model_variables_moving_average[0]), np.array(kernel))
    for step in range(1, 4):
        model.train_on_batch(x[8 * step:8 * step + 8], y[8 * step:8 * step + 8])
    before_sync = np.abs(np.array(kernel)).mean()
    model.train_on_batch(x[32:], y[32:])                 # step 5: average, then copy back
    assert int(model.optimizer.iterations) == 5
    assert np.abs(np.array(kernel)).mean() == pytest.approx(before_sync, rel=0.05)


def test_a_fast_cnn_checkpoint_keeps_the_lookahead_slow_copy_and_schedule(tmp_path):
    """What `resume` of a fast_cnn run relies on: the .keras checkpoint brings
    back the optimizer's step count and lookahead slow weights, not fresh ones."""
    import keras
    from cifar.config import resolve_config
    from cifar.models import build_model
    from cifar.train import compile_for_training

    model = build_model("fast_cnn", seed=0)
    compile_for_training(model, resolve_config("fast_cnn", epochs=2), steps_per_epoch=3)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), np.eye(10)[rng.integers(0, 10, 24)]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 3 of 6 steps: between lookahead syncs
    model.save(tmp_path / "checkpoint.keras")
    restored = keras.saving.load_model(tmp_path / "checkpoint.keras", safe_mode=True)

    assert int(restored.optimizer.iterations) == 3
    assert restored.optimizer.total_steps == 6
    slow = [np.array(v) for v in model.optimizer._model_variables_moving_average]
    slow_restored = [np.array(v) for v in restored.optimizer._model_variables_moving_average]
    assert len(slow) == len(slow_restored) == len(model.trainable_weights)
    for a, b in zip(slow, slow_restored):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, np.array(w)) for a, w in zip(slow, model.trainable_weights)), \
        "mid-period, the slow copy differs from the weights"
    assert float(restored.optimizer.learning_rate) == pytest.approx(float(model.optimizer.learning_rate))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="checks the TensorFlow backend")
def test_allow_jit_on_jax_leaves_tensorflow_models_as_keras_builds_them():
    model = build_model("cnn_regularized")
    rotation = model.get_layer("augmentation").layers[0]
    assert isinstance(rotation, keras.layers.RandomRotation) and rotation.supports_jit is False
    assert model.jit_compile is False     # Keras' own choice for these layers on TensorFlow
