"""Synthetic but schema-correct runs for the dashboard's tests and benchmark.

Every table has the columns `cifar.evaluate` and `cifar.train` write, every
number is consistent with the others (confusion, per-class scores, metrics
and predictions all come from one set of simulated predictions), and each
run carries a real, tiny keras model (uint8 32x32x3 -> Rescaling -> Flatten
-> Dense 10 softmax) so the Predict page can load it. Runs are written with
`artifacts.stage_run(...)` + `publish()`, exactly as training writes them.

Writing one run with 200 test images takes a few milliseconds after the
model file has been saved once per process.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cifar import CLASS_NAMES, NUM_CLASSES, artifacts

CAT, DOG = CLASS_NAMES.index("cat"), CLASS_NAMES.index("dog")
START = _dt.datetime(2026, 11, 20, 9, 0, tzinfo=_dt.timezone.utc)


@dataclass(frozen=True)
class Profile:
    """What a run of one model looks like: the numbers the study reports."""

    accuracy: float
    params: int
    layers: int
    batchnorm: bool
    dropout: bool
    augmentation: bool
    optimizer: str
    epochs: int
    latency_ms: float
    seconds_per_epoch: float
    transfer: bool = False
    overfits: bool = False


PROFILES = {
    "cnn_baseline": Profile(0.81, 2_196_810, 14, False, False, False, "adam", 15, 1.9, 40, overfits=True),
    "cnn_regularized": Profile(0.90, 2_200_394, 22, True, True, True, "adam", 22, 2.3, 55),
    "vgg16_transfer": Profile(0.78, 17_477_450, 31, True, True, False, "adam", 12, 24.0, 300, transfer=True),
    "vgg16_finetune": Profile(0.84, 17_477_450, 31, True, True, False, "adam", 8, 24.5, 420, transfer=True),
    "resnet50_transfer": Profile(0.95, 49_723_082, 190, True, True, False, "rmsprop", 20, 38.0, 700,
                                 transfer=True),
    "resnet50_finetune": Profile(0.96, 49_723_082, 190, True, True, False, "rmsprop", 4, 38.5, 1500,
                                 transfer=True),
}


@dataclass(frozen=True)
class FixtureRun:
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
    path = Path(tempfile.mkdtemp(prefix="cifar-fixture-model-")) / artifacts.MODEL_FILE
    keras.Model(inputs, outputs, name="fixture").save(path)
    return path


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


@functools.lru_cache(maxsize=1)
def _png_pool() -> tuple[tuple[bytes, ...], ...]:
    rng = np.random.default_rng(7)
    pool = []
    for c in range(NUM_CLASSES):
        images = []
        for _ in range(6):
            buffer = io.BytesIO()
            Image.fromarray(synthetic_image(c, rng)).save(buffer, format="PNG")
            images.append(buffer.getvalue())
        pool.append(tuple(images))
    return tuple(pool)


def simulate_predictions(accuracy: float, n_test: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Balanced true labels and predictions with about `accuracy` correct;
    half of the cat and dog mistakes go to the other of the two, as in the study."""
    truth = np.arange(n_test) % NUM_CLASSES
    predicted = truth.copy()
    wrong = rng.random(n_test) > accuracy
    for i in np.flatnonzero(wrong):
        partner = {CAT: DOG, DOG: CAT}.get(int(truth[i]))
        if partner is not None and rng.random() < 0.5:
            predicted[i] = partner
        else:
            predicted[i] = (truth[i] + rng.integers(1, NUM_CLASSES)) % NUM_CLASSES
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


def tables_for(truth, predicted, probabilities, latency_ms: float) -> dict[str, pd.DataFrame]:
    """metrics, per_class, confusion, predictions and gallery, as evaluate writes them."""
    labels = np.arange(NUM_CLASSES)
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    tp = np.diag(matrix).astype(float)
    precision = np.divide(tp, matrix.sum(axis=0), out=np.zeros(NUM_CLASSES), where=matrix.sum(axis=0) > 0)
    recall = np.divide(tp, matrix.sum(axis=1), out=np.zeros(NUM_CLASSES), where=matrix.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(NUM_CLASSES),
                   where=(precision + recall) > 0)
    support = matrix.sum(axis=1)
    weights = support / support.sum()
    true_probability = np.clip(probabilities[np.arange(len(truth)), truth], 1e-7, 1)
    top3 = np.argsort(-probabilities, axis=1)[:, :3]
    metrics = pd.DataFrame([{
        "n_test": len(truth), "test_accuracy": float((truth == predicted).mean()),
        "test_loss": float(-np.log(true_probability).mean()),
        "top3_accuracy": float((top3 == truth[:, None]).any(axis=1).mean()),
        "precision_macro": precision.mean(), "recall_macro": recall.mean(), "f1_macro": f1.mean(),
        "precision_weighted": (precision * weights).sum(), "recall_weighted": (recall * weights).sum(),
        "f1_weighted": (f1 * weights).sum(), "eval_images_per_s": 1000 / latency_ms * 40,
        "latency_ms": latency_ms}])
    per_class = pd.DataFrame({"class_index": labels, "class_name": list(CLASS_NAMES), "precision": precision,
                              "recall": recall, "f1": f1, "support": support})
    true_idx, pred_idx = np.meshgrid(labels, labels, indexing="ij")
    confusion = pd.DataFrame({"true_index": true_idx.ravel(), "pred_index": pred_idx.ravel(),
                              "count": matrix.ravel()})
    confusion.insert(1, "true_class", [CLASS_NAMES[i] for i in confusion.true_index])
    confusion.insert(3, "pred_class", [CLASS_NAMES[i] for i in confusion.pred_index])
    predictions = pd.DataFrame({"index": np.arange(len(truth)), "true_index": truth, "pred_index": predicted})
    for i, name in enumerate(CLASS_NAMES):
        predictions[f"prob_{name}"] = probabilities[:, i]
    return {"metrics": metrics, "per_class": per_class, "confusion": confusion,
            "predictions": predictions, "gallery": gallery_for(truth, predicted)}


def gallery_for(truth: np.ndarray, predicted: np.ndarray, per_pair: int = 24, per_class: int = 6) -> pd.DataFrame:
    """Like evaluate.build_gallery, but with PNGs drawn from a small shared pool."""
    pool = _png_pool()
    chosen = []
    for t in range(NUM_CLASSES):
        for p in range(NUM_CLASSES):
            idx = np.flatnonzero((truth == t) & (predicted == p))
            chosen.extend(idx[:per_class if t == p else per_pair].tolist())
    chosen = np.array(sorted(chosen), dtype=np.int64)
    return pd.DataFrame({"index": chosen, "true_index": truth[chosen], "pred_index": predicted[chosen],
                         "correct": truth[chosen] == predicted[chosen],
                         "png": [pool[truth[i]][i % len(pool[0])] for i in chosen]})


def history_for(profile: Profile, final_accuracy: float, epochs: int, rng: np.random.Generator) -> pd.DataFrame:
    """Plausible curves: training keeps improving; validation flattens (or
    turns back up, for a model that overfits)."""
    epoch = np.arange(1, epochs + 1)
    progress = 1 - np.exp(-epoch / max(epochs / 4, 1))
    train_accuracy = 0.35 + (min(final_accuracy + (0.15 if profile.overfits else 0.03), 0.995) - 0.35) * progress
    val_accuracy = 0.33 + (final_accuracy - 0.33) * progress + rng.normal(0, 0.008, epochs)
    train_loss = 1.9 * np.exp(-epoch / max(epochs / 3, 1)) + 0.05
    val_loss = 1.9 * np.exp(-epoch / max(epochs / 3, 1)) + 0.35 + rng.normal(0, 0.02, epochs)
    if profile.overfits:
        val_loss += 0.04 * np.maximum(epoch - epochs / 2, 0)
    seconds = profile.seconds_per_epoch * rng.uniform(0.95, 1.05, epochs)
    return pd.DataFrame({"epoch": epoch, "accuracy": train_accuracy, "loss": train_loss,
                         "val_accuracy": val_accuracy, "val_loss": val_loss,
                         "learning_rate": 1e-3 * 0.5 ** (epoch // 8),
                         "seconds": seconds, "train_images_per_s": 45_000 / seconds,
                         "elapsed_seconds": np.cumsum(seconds) + 5})


def metadata_for(run_id: str, model: str, profile: Profile, history: pd.DataFrame, n_test: int,
                 imagenet_weights: bool | None, hardware: str, precision: str, note: str,
                 config_seed: int = 0) -> dict:
    """metadata.json as train._metadata writes it."""
    best_epoch = int(history.loc[history.val_accuracy.idxmax(), "epoch"])
    weights = None if not profile.transfer else ("imagenet" if imagenet_weights else "none")
    config = {"model": model, "epochs": int(history.epoch.max()), "batch_size": 64, "learning_rate": 1e-3,
              "optimizer": profile.optimizer, "augment": profile.augmentation,
              "early_stopping_patience": 8 if profile.augmentation else None, "label_smoothing": 0.0,
              "input_size": 224 if profile.transfer else None, "weights": weights, "init_from_run": None,
              "data": "/data/cifar10-jpeg", "limit_per_class": None, "val_size": 5000, "seed": config_seed,
              "precision": precision, "note": note}
    train_seconds = float(history.seconds.sum())
    return {
        "run_id": run_id, "model": model, "config": config, "study_section": "3.1",
        "recipe_summary": f"fixture run of {model}", "created_at": run_id.split("-")[0],
        "finished_at": "2026-11-20T10:00:00+00:00", "is_transfer": profile.transfer,
        "pretrained_weights": weights, "imagenet_weights": (weights == "imagenet") if profile.transfer else None,
        "init_from_run": None,
        "params": {"total": profile.params, "trainable": profile.params, "non_trainable": 0},
        "layers": profile.layers, "batchnorm": profile.batchnorm, "dropout": profile.dropout,
        "augmentation": profile.augmentation, "optimizer": profile.optimizer,
        "epochs_planned": config["epochs"], "epochs_run": len(history), "best_epoch": best_epoch,
        "stopped_early": False, "train_seconds": train_seconds, "wall_seconds": train_seconds + 30,
        "train_images_per_s": float(history.train_images_per_s.median()),
        "data": {"source": config["data"], "fingerprint": "sha256:fixture0123456789",
                 "description": "synthetic fixture data", "n_train": 45_000, "n_val": 5_000, "n_test": n_test},
        "environment": {"hardware": {"cpu": "Fixture CPU", "cores": 2, "gpus": [], "label": hardware,
                                     "hostname": "fixture"},
                        "backend": "tensorflow", "versions": {"python": "3.11.7", "keras": "3.15.1"},
                        "git_commit": "0123abc", "platform": "Linux"},
    }


# ---------------------------------------------------------------- runs

def make_run(model: str = "cnn_baseline", *, seed: int = 0, n_test: int = 200, accuracy: float | None = None,
             epochs: int | None = None, imagenet_weights: bool | None = True, minutes_after_start: int = 0,
             hardware: str = "2-core Fixture CPU", precision: str = "float32", note: str = "",
             config_seed: int = 0) -> FixtureRun:
    """Write and publish one run; returns its id, confusion counts and metadata.
    `seed` varies the simulated results; `config_seed` is the --seed the run records."""
    profile = PROFILES[model]
    rng = np.random.default_rng(seed)
    truth, predicted = simulate_predictions(profile.accuracy if accuracy is None else accuracy, n_test, rng)
    tables = tables_for(truth, predicted, probabilities_for(predicted, rng), profile.latency_ms)
    history = history_for(profile, float(tables["metrics"].test_accuracy[0]), epochs or profile.epochs, rng)
    when = START + _dt.timedelta(minutes=minutes_after_start)
    # Ids are deterministic (unique per model, seed and start time) so that
    # screenshots and labels are the same on every run of the tests.
    run_id = f"{when:%Y%m%dT%H%M%S}Z-{model}-{seed % 0x10000:04x}"
    metadata = metadata_for(run_id, model, profile, history, n_test, imagenet_weights, hardware, precision, note,
                            config_seed)
    staging = artifacts.stage_run(run_id)
    for name, frame in {"history": history, **tables}.items():
        staging.write_table(name, frame)
    shutil.copyfile(tiny_model_file(list(PROFILES).index(model)), staging.model_path)
    staging.write_metadata(metadata)
    staging.publish()
    matrix = tables["confusion"]["count"].to_numpy().reshape(NUM_CLASSES, NUM_CLASSES)
    return FixtureRun(run_id, matrix, {"schema_version": artifacts.SCHEMA_VERSION, **metadata})


def make_study_runs(n_test: int = 200) -> list[FixtureRun]:
    """Four runs shaped like the study's models; the ResNet50 one was trained
    WITHOUT ImageNet weights, so its label must say so."""
    return [make_run("cnn_baseline", seed=1, n_test=n_test, minutes_after_start=0),
            make_run("cnn_regularized", seed=2, n_test=n_test, minutes_after_start=60, note="study recipe 3.2"),
            make_run("vgg16_transfer", seed=3, n_test=n_test, minutes_after_start=120, precision="mixed_bfloat16"),
            make_run("resnet50_transfer", seed=4, n_test=n_test, minutes_after_start=180, accuracy=0.62,
                     imagenet_weights=False)]


def make_many_runs(count: int, n_test: int = 10_000) -> list[FixtureRun]:
    """`count` runs cycling through every model (the benchmark's 50 runs)."""
    models = list(PROFILES)
    return [make_run(models[i % len(models)], seed=100 + i, n_test=n_test, minutes_after_start=10 * i,
                     accuracy=PROFILES[models[i % len(models)]].accuracy - 0.002 * (i // len(models)))
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
    # CIFAR_ARTIFACTS=/tmp/look python -m tests.fixture_runs [COUNT]: runs to look at by hand.
    made = make_many_runs(int(sys.argv[1]), n_test=1000) if len(sys.argv) > 1 else make_study_runs()
    make_broken_run()
    print(f"{len(made)} runs and one broken folder under {artifacts.root()}")


# ---------------------------------------------------------------- serving the dashboard

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(port: int, log_path: Path, script: Path = REPO / "streamlit_app.py"):
    """`streamlit run streamlit_app.py` on a local port, over $CIFAR_ARTIFACTS;
    yields the process (already started, maybe not yet listening)."""
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def open_when_up(page, url: str, timeout: float = 120) -> None:
    """Playwright `page.goto(url)`, retried until the server listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            page.goto(url)
            return
        except Exception:  # connection refused until the server listens
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def past_first_request():
    """Every AppTest run in the state a server is in after its first request
    (see cifar.streamlit_compat), so a click is not swallowed by start_page's rerun."""
    from cifar.streamlit_compat import every_request_a_later_one

    return every_request_a_later_one()


# JavaScript: true once Streamlit has finished its script run and drawn it.
PAGE_IDLE = """() => !document.querySelector('[data-testid="stStatusWidget"]')
    && !document.querySelector('[data-stale="true"]')
    && [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('.main-svg'))
    && [...document.images].every(image => image.complete)"""
