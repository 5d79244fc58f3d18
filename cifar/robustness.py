"""Corruption robustness of a run (CIFAR-10-C style) and the tables the Robustness page shows.

`python -m cifar evaluate RUN --robustness [--images N] [--data PATH]` runs
`evaluate_run`: a seeded, class-stratified subset of the test set (default
1,000 images) under each of the 15 corruptions of `cifar.corruptions` at its
5 severities, plus the clean subset; the run gains `robustness.parquet`
(docs/ARTIFACTS.md). Everything is computed before anything is written, and
the table goes in through `artifacts.add_optional_table` (temp file, then
os.replace), so a crash or Ctrl-C leaves the run as it was.

Every accuracy carries a 95% Wilson interval (`cifar.compare.accuracy_interval`): at 1,000
images an accuracy of 0.80 is known to about +-0.025. The summary follows
Hendrycks & Dietterich (2019): the corruption error CE of a corruption is the
model's error summed over severities divided by the reference model's
(`cnn_baseline` here, AlexNet in the paper), mCE its mean over corruptions;
relative mCE does the same with each error minus the model's clean error.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd

from cifar import NUM_CLASSES, artifacts
from cifar.compare import accuracy_interval
from cifar.corruptions import CORRUPTIONS, SEVERITIES, STAND_INS, corrupt, title
from cifar.errors import CifarError, RunError

TABLE = "robustness"
DEFAULT_IMAGES = 1000
REFERENCE_MODEL = "cnn_baseline"
CLEAN = "clean"



# ---------------------------------------------------------------- statistics

def stratified_subset(labels: np.ndarray, n_images: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `n_images` test images, as equal a share of each class as
    the classes allow; all of them when n_images >= len(labels)."""
    labels = np.asarray(labels)
    if n_images <= 0:
        raise CifarError(f"--images must be at least 1, got {n_images}")
    if n_images >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(NUM_CLASSES)]
    wanted = np.full(NUM_CLASSES, n_images // NUM_CLASSES)
    wanted[rng.permutation(NUM_CLASSES)[:n_images % NUM_CLASSES]] += 1
    chosen = []
    for _ in range(NUM_CLASSES):  # a class short of images passes its share to the others
        short = sum(max(0, w - len(idx)) for w, idx in zip(wanted, by_class))
        wanted = np.minimum(wanted, [len(idx) for idx in by_class])
        room = [c for c in range(NUM_CLASSES) if wanted[c] < len(by_class[c])]
        for c in room[:short]:
            wanted[c] += 1
        if not short:
            break
    for idx, count in zip(by_class, wanted):
        chosen.extend(idx[:count])
    return np.sort(np.array(chosen, dtype=np.int64))


# ---------------------------------------------------------------- evaluation

def conditions() -> list[tuple[str, int]]:
    """(corruption, severity) pairs in table order, the clean images first."""
    return [(CLEAN, 0)] + [(name, s) for name in CORRUPTIONS for s in SEVERITIES]


def evaluate_images(model, images: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                    on_step: Callable[[int, str, int], None] | None = None,
                    batch_size: int = 256) -> pd.DataFrame:
    """Accuracy of `model` on the clean images and every corruption and severity."""
    rows = []
    for step, (name, severity) in enumerate(conditions()):
        start = time.perf_counter()
        shown = images if name == CLEAN else corrupt(images, name, severity, seed)
        probabilities = np.asarray(model.predict(shown, batch_size=batch_size, verbose=0))
        correct = int((probabilities.argmax(axis=1) == labels).sum())
        rows.append({"corruption": name, "severity": severity, "n_images": len(labels),
                     "n_correct": correct, "seconds": time.perf_counter() - start})
        if on_step:
            on_step(step + 1, name, severity)
    table = pd.DataFrame(rows)
    table.insert(4, "accuracy", table.n_correct / table.n_images)
    low, high = accuracy_interval(table.n_correct, table.n_images)
    table.insert(5, "ci_low", low)
    table.insert(6, "ci_high", high)
    table["seed"] = seed
    return table


def evaluate_run(run_id: str, data_source: str | None = None, n_images: int = DEFAULT_IMAGES, seed: int = 0,
                 progress: bool = True) -> pd.DataFrame:
    """Evaluate a published run under every corruption and add the table to it.

    `data_source` defaults to the data the run was trained on (its recorded
    source); the subset is drawn from that source's test set."""
    from cifar.data import load_cifar10
    from cifar.predict import load_model

    info = artifacts.get_run(run_id)
    recorded = (info.metadata.get("data") or {}).get("source") or info.metadata.get("config", {}).get("data")
    source = data_source or recorded
    if not source:
        raise RunError(f"run {run_id} records no data source; pass --data PATH (a CIFAR-10 copy)")
    try:
        data = load_cifar10(source)
    except CifarError as exc:
        raise CifarError(f"{exc} (pass --data PATH to evaluate on another copy of CIFAR-10)") from None
    model = load_model(run_id)
    chosen = stratified_subset(data.y_test, n_images, seed)
    bar = _progress_bar(len(conditions())) if progress else None
    table = evaluate_images(model, data.x_test[chosen], data.y_test[chosen], seed=seed,
                            on_step=(lambda step, *_: bar.update(step)) if bar else None)
    table["data_fingerprint"] = data.fingerprint
    artifacts.add_optional_table(run_id, TABLE, table)
    return table


def _progress_bar(steps: int):
    import keras
    return keras.utils.Progbar(steps, unit_name="condition")


# ---------------------------------------------------------------- what the page shows

def curves(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long table for accuracy-against-severity charts: one row per run, corruption
    and severity, with each corruption's clean accuracy as its severity 0."""
    frames = []
    for label, table in tables.items():
        clean = table[table.corruption == CLEAN]
        for name in CORRUPTIONS:
            rows = pd.concat([clean.assign(corruption=name), table[table.corruption == name]])
            frames.append(rows.assign(run=label))
    if not frames:
        return pd.DataFrame(columns=["Run", "Corruption", "Severity", "Accuracy", "Low", "High", "Above", "Below"])
    long = pd.concat(frames, ignore_index=True)
    return pd.DataFrame({"Run": long.run, "Corruption": long.corruption.map(title),
                         "Severity": long.severity, "Accuracy": long.accuracy,
                         "Low": long.ci_low, "High": long.ci_high,
                         "Above": long.ci_high - long.accuracy, "Below": long.accuracy - long.ci_low})


def _clean_row(table: pd.DataFrame) -> pd.Series:
    """The table's clean-images row; all NaN for a table without one (the schema
    checks columns, not which conditions a table holds)."""
    clean = table[table.corruption == CLEAN]
    return clean.iloc[0] if len(clean) else pd.Series(np.nan, index=table.columns)


def _errors(table: pd.DataFrame) -> tuple[float, pd.Series]:
    """Clean error and, per corruption, the error summed over severities."""
    clean = 1 - float(_clean_row(table).accuracy)
    corrupted = table[table.corruption != CLEAN]
    return clean, (1 - corrupted.accuracy).groupby(corrupted.corruption).sum()


def summary(tables: dict[str, pd.DataFrame], reference: str | None) -> pd.DataFrame:
    """One row per run: clean accuracy (and interval), mean corruption accuracy
    (and a conservative interval), relative drop, mCE and relative mCE against
    the `reference` run's table (None: those two columns stay empty).

    The mean's interval is Wilson's at n = the number of images: each image's
    accuracy averaged over the 75 conditions lies in [0, 1], so its variance is
    at most p(1-p)/n whatever the correlation between conditions."""
    ref = _errors(tables[reference]) if reference in tables else None
    rows = []
    for label, table in tables.items():
        clean_row = _clean_row(table)
        corrupted = table[table.corruption != CLEAN]
        mean = float(corrupted.accuracy.mean())
        n = int(clean_row.n_images) if pd.notna(clean_row.n_images) else int(table.n_images.max())
        low, high = accuracy_interval(mean * n, n)
        row = {"Run": label, "Images": n, "Clean accuracy": float(clean_row.accuracy),
               "Clean 95% interval": _interval_text(clean_row.ci_low, clean_row.ci_high),
               "Mean corruption accuracy": mean, "Mean 95% interval": _interval_text(low, high),
               "Relative drop": (float(clean_row.accuracy) - mean) / float(clean_row.accuracy)
               if clean_row.accuracy > 0 else np.nan,
               "mCE": np.nan, "Relative mCE": np.nan}
        if ref is not None:
            clean_error, errors = _errors(table)
            ref_clean, ref_errors = ref
            names = errors.index.intersection(ref_errors.index)
            with np.errstate(invalid="ignore", divide="ignore"):
                row["mCE"] = float((errors[names] / ref_errors[names]).mean())
                relative = (errors[names] - len(SEVERITIES) * clean_error) / \
                    (ref_errors[names] - len(SEVERITIES) * ref_clean)
                row["Relative mCE"] = float(relative.replace([np.inf, -np.inf], np.nan).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _interval_text(low, high) -> str:
    return f"{low:.3f} to {high:.3f}"


def pick_reference(labels_and_models: dict[str, str], tables: dict[str, pd.DataFrame]) -> str | None:
    """The label of the first shown run of REFERENCE_MODEL that has a table."""
    return next((label for label, model in labels_and_models.items()
                 if model == REFERENCE_MODEL and label in tables), None)


def comparable(tables: dict[str, pd.DataFrame]) -> bool:
    """Whether the runs were evaluated on the same images (same count, seed and data)."""
    keys = {(int(t.n_images.iloc[0]), t.get("seed", pd.Series([None])).iloc[0],
             t.get("data_fingerprint", pd.Series([""])).iloc[0]) for t in tables.values() if len(t)}
    return len(keys) <= 1


def examples(image: np.ndarray, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """{corruption title: [severity 1 .. 5 images]} of one uint8 image."""
    return {title(name): [corrupt(image, name, s, seed) for s in SEVERITIES] for name in CORRUPTIONS}


STAND_IN_NOTE = (f"{', '.join(title(n) for n in STAND_INS)} uses a generated frost texture instead of the "
                 "paper's frost photographs (no package ships them), so its numbers are comparable between "
                 "these runs but not with published CIFAR-10-C frost results.")
