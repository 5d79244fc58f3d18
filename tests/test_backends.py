"""The model and training code on the JAX backend, which a lent GPU machine
has instead of TensorFlow. The backend is fixed when keras is first imported,
so each check runs in its own process."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# fast_cnn's custom pieces are what JAX is strict about: the test-time
# augmentation layers reshape a symbolic batch, the lookahead update and its
# final copy-back touch optimizer variables, and JAX's predict donates buffers.
# Five steps: the lookahead averages at the fifth, which is also the last, so
# its copy-back into the model happens inside this fit.
FAST_CNN_ON_JAX = textwrap.dedent("""
    import sys
    import keras
    import numpy as np
    from cifar.config import resolve_config
    from cifar.fast_cnn import single_view
    from cifar.models import build_model, get_spec
    from cifar.train import compile_for_training

    assert keras.backend.backend() == "jax"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (320, 32, 32, 3), dtype=np.uint8)
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 320)]
    model = build_model("fast_cnn", seed=0)
    get_spec("fast_cnn").prepare(model, x)
    compile_for_training(model, resolve_config("fast_cnn", epochs=1), steps_per_epoch=5)
    history = model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert int(model.optimizer.iterations.numpy()) == 5
    tta = model.predict(x[:8], verbose=0)
    with single_view(model):
        single = model.predict(x[:8], verbose=0)
    assert tta.shape == single.shape == (8, 10) and not np.allclose(tta, single)
    model.save(sys.argv[1])   # optimizer state included, as a checkpoint is
    again = keras.saving.load_model(sys.argv[1], safe_mode=True).predict(x[:8], verbose=0)
    np.testing.assert_allclose(again, tta, rtol=1e-5, atol=1e-6)
    print("ok")
""")


def _run_on_jax(script: str, *args) -> subprocess.CompletedProcess:
    assert importlib.util.find_spec("jax"), "JAX is missing: pip install -r requirements-test.txt"
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    try:   # about 40 s each on a busy 2-core CPU
        return subprocess.run([sys.executable, "-c", script, *map(str, args)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the JAX check ran over 300 s; its output so far:\n{exc.stderr}") from exc


def test_fast_cnn_trains_predicts_with_and_without_tta_and_saves_on_jax(tmp_path):
    result = _run_on_jax(FAST_CNN_ON_JAX, tmp_path / "checkpoint.keras")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]


# Keras never jits a model holding RandomRotation/RandomTranslation, which on
# JAX ran cnn_regularized op by op (120x slower on a GPU). allow_jit_on_jax
# lifts that for a new model, one resumed from a checkpoint and one loaded to
# predict; the augmentation must still draw new transforms at every jitted step.
# On TensorFlow nothing changes (test_models).
REGULARIZED_JITS_ON_JAX = textwrap.dedent("""
    import sys
    import warnings
    from pathlib import Path
    import numpy as np
    from cifar.config import resolve_config
    from cifar.models import build_model
    from cifar.predict import load_model_from_path
    from cifar.train import _model_for, compile_for_training

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8)
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 128)]
    model = build_model("cnn_regularized", seed=0)
    assert model.jit_compile is True, "a new cnn_regularized predicts op by op on JAX"
    config = resolve_config("cnn_regularized", epochs=1)
    compile_for_training(model, config, steps_per_epoch=2)
    assert model.jit_compile is True, "cnn_regularized is not jitted on JAX"
    rotation = model.get_layer("augmentation").layers[0]
    seed_before = np.array(rotation.generator.state.numpy())
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert not np.array_equal(seed_before, rotation.generator.state.numpy()), "augmentation seed frozen"
    checkpoint = Path(sys.argv[1])
    model.save(checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # Keras' "doesn't support jit_compile" warning is a false alarm here
        restored, _ = _model_for(config, {"checkpoint": checkpoint.name}, checkpoint.parent, x)  # resume's path
    assert restored.jit_compile is True, "a resumed cnn_regularized is not jitted on JAX"
    shipped = load_model_from_path(checkpoint)   # what evaluation and the dashboard predict with
    assert shipped.jit_compile is True, "a loaded cnn_regularized predicts op by op on JAX"
    assert shipped.predict(x[:4], verbose=0).shape == (4, 10)
    print("ok")
""")


def test_cnn_regularized_is_jitted_on_jax_despite_its_augmentation_layers(tmp_path):
    result = _run_on_jax(REGULARIZED_JITS_ON_JAX, tmp_path / "checkpoint.keras")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]
