"""Synthetic runs, written by the code that writes real runs: for the
dashboard's tests, its benchmark (bench/dashboard_bench.py), and a look at the
dashboard without training anything.

Only the predictions and the learning curves are simulated. Everything else
goes through the real writers, so a sample run cannot drift from a real one:
the config is `resolve_config` of a registry model, the network facts
(parameters, layers, BatchNorm, dropout) are `count_params`/`describe` of that
registry model as built, the tables are `evaluate.evaluation_tables` of the
simulated probabilities, the metadata is `train.run_metadata`, and the run is
published by `train.publish_run`. Each run ships a real, tiny keras model
(uint8 32x32x3 -> Rescaling -> Flatten -> Dense 10 softmax) so the Predict
page can load it.

    CIFAR_ARTIFACTS=/tmp/look python -m cifar.sample_runs [COUNT]

Writing one run with 200 test images took about 0.1 s (2 shared cores, under
load) once the model file and the registry model's facts are cached, once per
process each: building ResNet50 at 224 px for its facts takes 3-8 s there.
A fine-tuning model's run starts from a sample run of its donor model (the
newest one, or one made for it).
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cifar import CLASS_NAMES, NUM_CLASSES, artifacts

CAT, DOG = CLASS_NAMES.index("cat"), CLASS_NAMES.index("dog")
START = _dt.datetime(2026, 11, 20, 9, 0, tzinfo=_dt.timezone.utc)
DEFAULT_ACCURACY = 0.8
SAMPLE_DATA = {"source": "/data/cifar10-jpeg", "fingerprint": "sha256:fixture0123456789",
               "description": "synthetic sample data", "n_train": 45_000, "n_val": 5_000}


@dataclass(frozen=True)
class SampleRun:
    run_id: str
    confusion: np.ndarray   # counts, rows = true class, columns = predicted class
    metadata: dict


# ---------------------------------------------------------------- pieces

@functools.lru_cache(maxsize=None)
def tiny_model_file(seed: int = 0) -> Path:
    """A real saved keras classifier, built once per seed and process and
    copied into runs; each seed gives different weights, so runs disagree."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(32, 32, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
    path = Path(tempfile.mkdtemp(prefix="cifar-sample-model-")) / artifacts.MODEL_FILE
    keras.Model(inputs, outputs, name="sample").save(path)
    return path


@functools.lru_cache(maxsize=None)
def network_facts(model: str) -> dict:
    """What metadata says of a registry model's network (params, layers,
    BatchNorm, dropout), from the model as `build_model` builds it at its
    recipe's size: random weights, since the counts do not depend on them."""
    from cifar.models import build_model, count_params, describe, get_spec

    built = build_model(model, weights="none" if get_spec(model).is_transfer else None)
    return {"params": count_params(built), **describe(built)}


def synthetic_image(class_index: int, rng: np.random.Generator) -> np.ndarray:
    """A 32x32 picture whose colours hint at its class: sky, blob and noise."""
    hue = np.array([(class_index * 37) % 255, (class_index * 91 + 80) % 255, (class_index * 53 + 160) % 255])
    rows = np.linspace(0.6, 1.0, 32)[:, None, None]
    image = rows * hue[None, None, :] * np.ones((32, 32, 3))
    yy, xx = np.mgrid[:32, :32]
    centre = rng.integers(10, 22, size=2)
    blob = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < rng.integers(30, 80)
    image[blob] = 255 - hue
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


POOL_PER_CLASS = 6


@functools.lru_cache(maxsize=1)
def _image_pool() -> np.ndarray:
    """(10, POOL_PER_CLASS, 32, 32, 3): the few pictures every sample test set reuses."""
    rng = np.random.default_rng(7)
    return np.stack([np.stack([synthetic_image(c, rng) for _ in range(POOL_PER_CLASS)])
                     for c in range(NUM_CLASSES)])


def images_for(truth: np.ndarray) -> np.ndarray:
    """A test set for `truth`: image i is one of its class's pool pictures."""
    return _image_pool()[truth, np.arange(len(truth)) % POOL_PER_CLASS]


@functools.lru_cache(maxsize=NUM_CLASSES * POOL_PER_CLASS)
def _png_of(image_bytes: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.frombuffer(image_bytes, np.uint8).reshape(32, 32, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def pooled_png(image: np.ndarray) -> bytes:
    """evaluate's gallery encoder for pool pictures: each is encoded once per process."""
    return _png_of(np.ascontiguousarray(image).tobytes())


def simulate_predictions(accuracy: float, n_test: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Balanced true labels and predictions with about `accuracy` correct;
    every other cat or dog mistake (the first among them) goes to the other of
    the two, as in the study, so a run with such mistakes has cat-dog images."""
    truth = np.arange(n_test) % NUM_CLASSES
    predicted = truth.copy()
    wrong = rng.random(n_test) > accuracy
    to_partner = {CAT: True, DOG: True}
    for i in np.flatnonzero(wrong):
        label = int(truth[i])
        if label in to_partner and to_partner[label]:
            predicted[i] = DOG if label == CAT else CAT
        else:
            predicted[i] = (label + rng.integers(1, NUM_CLASSES)) % NUM_CLASSES
        if label in to_partner:
            to_partner[label] = not to_partner[label]
    return truth, predicted


def probabilities_for(predicted: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Softmax-like rows whose argmax is the prediction."""
    probabilities = rng.dirichlet(np.full(NUM_CLASSES, 0.4), size=len(predicted))
    top = probabilities.argmax(axis=1)
    rows = np.arange(len(predicted))
    swapped = probabilities[rows, predicted], probabilities[rows, top]
    probabilities[rows, top], probabilities[rows, predicted] = swapped
    probabilities[rows, predicted] += rng.uniform(0.3, 3.0, len(predicted))  # confident, like a trained model
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)


def history_for(final_accuracy: float, epochs: int, overfits: bool, seconds_per_epoch: float,
                rng: np.random.Generator, validation: bool = True) -> list[dict]:
    """Plausible curves, one row per epoch with every column training writes:
    training keeps improving; validation flattens (or turns back up, for a
    model that overfits). No validation columns for a run without a split."""
    epoch = np.arange(1, epochs + 1)
    progress = 1 - np.exp(-epoch / max(epochs / 4, 1))
    train_accuracy = 0.35 + (min(final_accuracy + (0.15 if overfits else 0.03), 0.995) - 0.35) * progress
    val_accuracy = 0.33 + (final_accuracy - 0.33) * progress + rng.normal(0, 0.008, epochs)
    train_loss = 1.9 * np.exp(-epoch / max(epochs / 3, 1)) + 0.05
    val_loss = 1.9 * np.exp(-epoch / max(epochs / 3, 1)) + 0.35 + rng.normal(0, 0.02, epochs)
    if overfits:
        val_loss += 0.04 * np.maximum(epoch - epochs / 2, 0)
    seconds = seconds_per_epoch * rng.uniform(0.95, 1.05, epochs)
    train_seconds = 0.9 * seconds  # validation takes the rest
    frame = pd.DataFrame({"epoch": epoch, "accuracy": train_accuracy, "loss": train_loss,
                          "val_accuracy": val_accuracy, "val_loss": val_loss,
                          "learning_rate": 1e-3 * 0.5 ** (epoch // 8), "optimizer_steps": epoch * 704,
                          "seconds": seconds, "train_images_per_s": SAMPLE_DATA["n_train"] / train_seconds,
                          "train_seconds_total": np.cumsum(train_seconds),
                          "elapsed_seconds": np.cumsum(seconds) + 5})
    if not validation:
        frame = frame.drop(columns=["val_loss", "val_accuracy"])
    return frame.to_dict("records")


def _sample_environment(hardware: str) -> dict:
    return {"hardware": {"cpu": "Sample CPU", "cores": 2, "gpus": [], "label": hardware, "hostname": "sample"},
            "backend": "tensorflow", "versions": {"python": "3.11.7", "keras": "3.15.1"},
            "git_commit": "0123abc", "platform": "Linux"}


# ---------------------------------------------------------------- runs

def make_run(model: str = "cnn_baseline", *, seed: int = 0, n_test: int = 200, accuracy: float | None = None,
             epochs: int | None = None, imagenet_weights: bool | None = True, minutes_after_start: int = 0,
             hardware: str = "2-core Sample CPU", precision: str = "float32", note: str = "",
             config_seed: int = 0) -> SampleRun:
    """Write and publish one run of registry model `model`; returns its id,
    confusion counts and metadata. `seed` varies the simulated results;
    `config_seed` is the --seed the run records; `epochs` is how many it ran
    of the recipe's (default: all of them; fewer: it stopped early)."""
    from cifar.config import resolve_config
    from cifar.evaluate import evaluation_tables
    from cifar.models import REGISTRY, get_spec
    from cifar.train import publish_run, run_metadata

    spec = get_spec(model)
    rng = np.random.default_rng(seed)
    network = network_facts(model)
    params = network["params"]["total"]
    settings = {"weights": ("imagenet" if imagenet_weights else "none") if spec.is_transfer else None}
    if spec.init_from:  # fine-tuning keeps its donor run's weights: a sample run of the donor model
        donors = [run.run_id for run in artifacts.list_runs() if run.model == spec.init_from]
        settings = {"init_from_run": donors[-1] if donors else make_run(
            spec.init_from, seed=seed, n_test=n_test, imagenet_weights=imagenet_weights,
            minutes_after_start=minutes_after_start - 1, hardware=hardware, config_seed=config_seed).run_id}
    # Planned: the recipe's epochs; a run of fewer (`epochs`) stopped early.
    config = resolve_config(model, data=SAMPLE_DATA["source"], seed=config_seed, precision=precision,
                            note=note, **settings)
    epochs_run = min(epochs or config.epochs, config.epochs)

    truth, predicted = simulate_predictions(DEFAULT_ACCURACY if accuracy is None else accuracy, n_test, rng)
    latency_ms = 1.5 + params / 2e6
    result = evaluation_tables(images_for(truth), truth, probabilities_for(predicted, rng),
                               images_per_s=1000 / latency_ms * 40, latency_ms=latency_ms, seed=seed,
                               encode=pooled_png)
    history = history_for(float(result.metrics.test_accuracy[0]), epochs_run, overfits=not config.augment,
                          seconds_per_epoch=20 + params / 100_000, rng=rng, validation=config.val_size > 0)
    when = START + _dt.timedelta(minutes=minutes_after_start)
    # Ids are deterministic (unique per model, seed and start time) so that
    # screenshots and labels are the same every time.
    run_id = f"{when:%Y%m%dT%H%M%S}Z-{model}-{seed % 0x10000:04x}"
    train_seconds = float(history[-1]["train_seconds_total"])
    metadata = run_metadata(run_id, config, history=history,
                            source={"weights": config.weights, "init_from_run": config.init_from_run},
                            environment=_sample_environment(hardware), network=network,
                            data={**SAMPLE_DATA, "n_val": config.val_size, "n_test": n_test},
                            train_seconds=train_seconds, wall_seconds=float(history[-1]["elapsed_seconds"]) + 30)
    model_file = tiny_model_file(list(REGISTRY).index(model))
    publish_run(run_id, history, result, metadata, lambda path: shutil.copyfile(model_file, path))
    matrix = result.confusion["count"].to_numpy().reshape(NUM_CLASSES, NUM_CLASSES)
    return SampleRun(run_id, matrix, artifacts.get_run(run_id).metadata)


def make_study_runs(n_test: int = 200) -> list[SampleRun]:
    """Four runs of the study's models, at about the study's accuracies; the
    ResNet50 one was trained WITHOUT ImageNet weights, so its label must say so."""
    return [make_run("cnn_baseline", seed=1, n_test=n_test, minutes_after_start=0, accuracy=0.81, epochs=15),
            make_run("cnn_regularized", seed=2, n_test=n_test, minutes_after_start=60, accuracy=0.90,
                     epochs=22, note="study recipe 3.2"),
            make_run("vgg16_transfer", seed=3, n_test=n_test, minutes_after_start=120, accuracy=0.78,
                     epochs=12, precision="mixed_bfloat16"),
            make_run("resnet50_transfer", seed=4, n_test=n_test, minutes_after_start=180, accuracy=0.62,
                     epochs=20, imagenet_weights=False)]


def make_many_runs(count: int, n_test: int = 10_000) -> list[SampleRun]:
    """`count` runs cycling through every registry model (the benchmark's 50 runs)."""
    from cifar.models import REGISTRY

    models = list(REGISTRY)
    return [make_run(models[i % len(models)], seed=100 + i, n_test=n_test, minutes_after_start=10 * i,
                     accuracy=DEFAULT_ACCURACY - 0.01 * (i % len(models)) - 0.002 * (i // len(models)))
            for i in range(count)]


def make_broken_run(kind: str = "incomplete") -> str:
    """A folder under runs/ that readers must skip with a reason.

    incomplete: a run id folder holding only metadata.json (a copy that was
    cut short); bad_metadata: every file present but metadata.json is not JSON."""
    run_id = artifacts.new_run_id("cnn_baseline", now=START - _dt.timedelta(days=1))
    path = artifacts.runs_dir() / run_id
    path.mkdir(parents=True)
    if kind == "incomplete":
        artifacts.write_json_atomic(path / artifacts.METADATA_FILE, {"schema_version": artifacts.SCHEMA_VERSION})
    elif kind == "bad_metadata":
        for name in artifacts.REQUIRED_FILES:
            (path / name).write_text("{ not json" if name == artifacts.METADATA_FILE else "")
    else:
        raise ValueError(f"unknown broken-run kind {kind!r}; use incomplete or bad_metadata")
    return run_id


def clear_runs() -> None:
    shutil.rmtree(artifacts.root(), ignore_errors=True)


if __name__ == "__main__":
    made = make_many_runs(int(sys.argv[1]), n_test=1000) if len(sys.argv) > 1 else make_study_runs()
    make_broken_run()
    print(f"{len(made)} runs and one broken folder under {artifacts.root()}")
