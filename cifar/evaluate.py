"""Test-set evaluation: accuracy, loss, F1, confusion, per-image probabilities, speed.

Classification metrics come from scikit-learn. Speed is measured on the
machine that runs this: `eval_images_per_s` is batched `predict` throughput
over the whole test set (after a warm-up batch), `latency_ms` the median of
single-image `predict_on_batch` calls (the dashboard's live-prediction path).

Where a run holds a validation split, its probabilities are kept too (the
optional `val_predictions` table): the Compare page fits a temperature on
them. `store_validation_predictions` adds them to a run evaluated before.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support, top_k_accuracy_score

from cifar import CLASS_NAMES, NUM_CLASSES
from cifar.predict import predict_probabilities

GALLERY_PER_PAIR = 16      # misclassified images kept per (true, predicted) pair
GALLERY_CORRECT_PER_CLASS = 6  # correctly classified images kept per class
LATENCY_CALLS = 30


@dataclass
class Evaluation:
    metrics: pd.DataFrame       # one row
    per_class: pd.DataFrame
    confusion: pd.DataFrame     # long form
    predictions: pd.DataFrame
    gallery: pd.DataFrame
    val_predictions: pd.DataFrame | None = None  # None: the run has no validation split


def measure_throughput(model, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, float]:
    """Class probabilities for every image (cifar.predict.predict_probabilities), and images/s."""
    # Warm up both batch shapes predict will use (full and the remainder),
    # so tracing is not timed.
    predict_probabilities(model, images[:batch_size + len(images) % batch_size], batch_size)
    start = time.perf_counter()
    probabilities = predict_probabilities(model, images, batch_size)
    seconds = time.perf_counter() - start
    return probabilities, len(images) / max(seconds, 1e-9)


def single_image_latency_ms(model, image: np.ndarray, calls: int = LATENCY_CALLS) -> float:
    batch = image[None]
    model.predict_on_batch(batch)
    timings = []
    for _ in range(calls):
        start = time.perf_counter()
        model.predict_on_batch(batch)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1000)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def evaluate(model, x_test: np.ndarray, y_test: np.ndarray, batch_size: int = 256,
             seed: int = 0, x_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> Evaluation:
    probabilities, images_per_s = measure_throughput(model, x_test, batch_size)
    has_validation = x_val is not None and len(x_val) > 0
    return evaluation_tables(x_test, y_test, probabilities, images_per_s=images_per_s,
                             latency_ms=single_image_latency_ms(model, x_test[0]), seed=seed,
                             val_probabilities=predict_probabilities(model, x_val, batch_size) if has_validation
                             else None, y_val=y_val)


def evaluation_tables(x_test: np.ndarray, y_test: np.ndarray, probabilities: np.ndarray, *,
                      images_per_s: float, latency_ms: float, seed: int = 0,
                      val_probabilities: np.ndarray | None = None, y_val: np.ndarray | None = None,
                      encode: Callable[[np.ndarray], bytes] = png_bytes) -> Evaluation:
    """Every table of an evaluation from the test set and the model's class
    probabilities (no model needed: the dashboard's sample runs come from here
    too), with the validation split's when given. `encode` turns a gallery
    image into its stored bytes."""
    predicted = probabilities.argmax(axis=1)
    labels = list(range(NUM_CLASSES))
    clipped = np.clip(probabilities, 1e-7, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_test, predicted, labels=labels, zero_division=0)
    summary = {"n_test": len(y_test),
               "test_accuracy": float((predicted == y_test).mean()),
               "test_loss": float(log_loss(y_test, clipped, labels=labels)),
               "top3_accuracy": float(top_k_accuracy_score(y_test, probabilities, k=3, labels=labels))}
    # sklearn's "macro" and "weighted" averages are these means of its per-class
    # scores (plain, and weighted by support): taken here, not computed twice more.
    for average, weights in (("macro", None), ("weighted", support if support.sum() else None)):
        summary.update({f"{name}_{average}": float(np.average(values, weights=weights))
                        for name, values in (("precision", precision), ("recall", recall), ("f1", f1))})
    summary["eval_images_per_s"] = float(images_per_s)
    summary["latency_ms"] = float(latency_ms)

    per_class = pd.DataFrame({"class_index": labels, "class_name": list(CLASS_NAMES),
                              "precision": precision, "recall": recall, "f1": f1,
                              "support": support.astype(np.int64)})
    matrix = confusion_matrix(y_test, predicted, labels=labels)
    true_idx, pred_idx = np.meshgrid(labels, labels, indexing="ij")
    confusion = pd.DataFrame({"true_index": true_idx.ravel(), "pred_index": pred_idx.ravel(),
                              "count": matrix.ravel().astype(np.int64)})
    confusion.insert(1, "true_class", [CLASS_NAMES[i] for i in confusion.true_index])
    confusion.insert(3, "pred_class", [CLASS_NAMES[i] for i in confusion.pred_index])

    validation = None if val_probabilities is None else prediction_table(val_probabilities, y_val)
    return Evaluation(pd.DataFrame([summary]), per_class, confusion, prediction_table(probabilities, y_test),
                      build_gallery(x_test, y_test, predicted, seed, encode), validation)


def prediction_table(probabilities: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per image: index (position in its split), true_index, pred_index, prob_<class>."""
    table = pd.DataFrame({"index": np.arange(len(labels)), "true_index": labels.astype(np.int64),
                          "pred_index": probabilities.argmax(axis=1).astype(np.int64)})
    for i, name in enumerate(CLASS_NAMES):
        table[f"prob_{name}"] = probabilities[:, i]
    return table


def store_validation_predictions(run_id: str, source: str) -> dict:
    """Re-predict a published run's validation split (rebuilt from its config:
    same data, same --limit-per-class and --val-size, same seed) and add it to
    the run as `val_predictions`. Refuses other data than the run's."""
    from cifar import artifacts
    from cifar.data import limit_per_class, load_cifar10, split_validation
    from cifar.errors import RunError
    from cifar.predict import load_model

    info = artifacts.get_run(run_id)
    config, recorded = info.metadata.get("config") or {}, info.metadata.get("data") or {}
    if not recorded.get("n_val"):
        raise RunError(f"run {run_id} held no validation split out (it trained on all its training images); "
                       "there is nothing to store")
    data = load_cifar10(source)
    if data.fingerprint != recorded.get("fingerprint"):
        raise RunError(f"'{source}' is data {data.fingerprint}, but run {run_id} was trained on "
                       f"{recorded.get('fingerprint')}; pass the run's own data ({recorded.get('source')})")
    seed = config.get("seed", 0)
    x, y = limit_per_class(data.x_train, data.y_train, config.get("limit_per_class"), seed)
    _, _, x_val, y_val = split_validation(x, y, config.get("val_size", 0), seed)
    if len(y_val) != recorded["n_val"]:
        raise RunError(f"the rebuilt validation split has {len(y_val)} images, the run recorded "
                       f"{recorded['n_val']}; it cannot be rebuilt from this config")
    table = prediction_table(predict_probabilities(load_model(run_id), x_val), y_val)
    artifacts.add_optional_table(run_id, "val_predictions", table)
    return {"images": len(table), "accuracy": float((table.pred_index == table.true_index).mean())}


def build_gallery(x_test, y_test, predicted, seed: int = 0,
                  encode: Callable[[np.ndarray], bytes] = png_bytes) -> pd.DataFrame:
    """A compact sample of test images so the dashboard needs no dataset:
    up to GALLERY_PER_PAIR misclassified images per (true, predicted) pair and
    a few correct ones per class, stored as PNG bytes."""
    rng = np.random.default_rng(seed)
    chosen = []
    for true in range(NUM_CLASSES):
        for pred in range(NUM_CLASSES):
            idx = np.flatnonzero((y_test == true) & (predicted == pred))
            keep = GALLERY_CORRECT_PER_CLASS if true == pred else GALLERY_PER_PAIR
            if len(idx) > keep:
                idx = np.sort(rng.choice(idx, keep, replace=False))
            chosen.extend(idx.tolist())
    chosen = np.array(sorted(chosen), dtype=np.int64)
    return pd.DataFrame({"index": chosen, "true_index": y_test[chosen].astype(np.int64),
                         "pred_index": predicted[chosen].astype(np.int64),
                         "correct": y_test[chosen] == predicted[chosen],
                         "png": [encode(x_test[i]) for i in chosen]})
