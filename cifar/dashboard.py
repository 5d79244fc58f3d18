"""Data shaping for the Streamlit dashboard: pure functions over DataFrames.

The pages under `pages/` only render; every table and number they show is
computed here from what `cifar.artifacts` reads, so it can be tested without
a browser. Nothing here touches Streamlit, keras or a file path, except
`study_results()`, which reads the study's table shipped with the package.
Column names are the labels a stakeholder reads, so pages show them as is.

`study_results.csv` is the study's Figure 2.1 transcribed row by row; the
one column not in the figure, `imagenet_weights`, follows the study's text
(its VGG16 and ResNet50 models start from ImageNet weights).
"""

from __future__ import annotations

import datetime as _dt
import io
from importlib import resources

import numpy as np
import pandas as pd
from PIL import Image

from cifar import CLASS_NAMES
from cifar.predict import top_k_from_probabilities

TRAIN_COMMAND = "python -m cifar train cnn_baseline --data /path/to/cifar10 --epochs 2"
STUDY_SOURCE = "Study (Fig. 2.1)"
MEASURED_SOURCE = "Measured here"
MAX_DEFAULT_SELECTION = 6

# ---------------------------------------------------------------- run labels

def run_label(run_id: str, metadata: dict) -> str:
    """What a person reads for a run: model, id suffix, start time, and a
    warning when a transfer model was trained without ImageNet weights."""
    model = metadata.get("model") or run_id.split("-")[1]
    try:
        started = _dt.datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").strftime("%d %b %H:%M")
    except ValueError:
        started = run_id[:16]
    label = f"{model} · {run_id[-4:]} · {started}"
    return label + " · no ImageNet weights" if metadata.get("imagenet_weights") is False else label


def imagenet_text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return "n/a (not a transfer model)"
    return "Yes" if bool(value) else "No (trained without)"


def yes_no(value) -> str:
    return "Yes" if bool(value) else "No"


def default_selection(runs: list[tuple[str, dict]], limit: int = MAX_DEFAULT_SELECTION) -> list[str]:
    """The newest run of each model (runs come oldest first), at most `limit`."""
    newest: dict[str, str] = {}
    for run_id, metadata in runs:
        newest[metadata.get("model", run_id)] = run_id
    return sorted(newest.values())[-limit:]


# ---------------------------------------------------------------- models table

SOURCE, RUN, MODEL = "Source", "Run", "Model"
PARAMS, LAYERS, EPOCHS, BEST_EPOCH = "Parameters", "Layers", "Epochs run", "Best epoch"
AUGMENT, BATCHNORM, DROPOUT, OPTIMIZER = "Augmentation", "BatchNorm", "Dropout", "Optimizer"
ACCURACY, LOSS, F1, RECALL = "Test accuracy", "Test loss", "Macro F1", "Macro recall"
ACCURACY_CI = "Accuracy 95% CI"  # Wilson score interval over the run's test images
TRAIN_MINUTES, HARDWARE, PRECISION = "Training time (min)", "Hardware", "Precision"
IMAGENET, LATENCY, NOTES = "ImageNet weights", "Latency (ms)", "Notes"
TABLE_COLUMNS = [SOURCE, RUN, MODEL, PARAMS, LAYERS, EPOCHS, BEST_EPOCH, AUGMENT, BATCHNORM, DROPOUT,
                 OPTIMIZER, ACCURACY, ACCURACY_CI, LOSS, F1, RECALL, TRAIN_MINUTES, HARDWARE, PRECISION,
                 IMAGENET, LATENCY, NOTES]
# Which way is better for each highlighted column: fewer parameters is
# cheaper to serve, so it counts as better on the cost side of the frontier.
BEST_IS = {ACCURACY: "max", F1: "max", RECALL: "max", LOSS: "min", TRAIN_MINUTES: "min",
           LATENCY: "min", PARAMS: "min"}


def measured_row(run_id: str, metadata: dict, metrics: dict) -> dict:
    """One run as a row of the results table (metrics: the run's metrics row)."""
    params = metadata.get("params") or {}
    config = metadata.get("config") or {}
    hardware = ((metadata.get("environment") or {}).get("hardware") or {}).get("label")
    return {
        "run_id": run_id, SOURCE: MEASURED_SOURCE, RUN: run_label(run_id, metadata),
        MODEL: metadata.get("model"), PARAMS: params.get("total"), LAYERS: metadata.get("layers"),
        EPOCHS: metadata.get("epochs_run"), BEST_EPOCH: metadata.get("best_epoch"),
        AUGMENT: yes_no(metadata.get("augmentation")), BATCHNORM: yes_no(metadata.get("batchnorm")),
        DROPOUT: yes_no(metadata.get("dropout")), OPTIMIZER: metadata.get("optimizer"),
        ACCURACY: metrics.get("test_accuracy"), ACCURACY_CI: accuracy_interval_text(metrics),
        LOSS: metrics.get("test_loss"),
        F1: metrics.get("f1_macro"), RECALL: metrics.get("recall_macro"),
        TRAIN_MINUTES: _minutes(metadata.get("train_seconds")), HARDWARE: hardware,
        PRECISION: config.get("precision"), IMAGENET: imagenet_text(metadata.get("imagenet_weights")),
        LATENCY: metrics.get("latency_ms"), NOTES: config.get("note") or "",
    }


def accuracy_interval_text(metrics: dict) -> str | None:
    """"89.9% to 91.0%": the Wilson 95% interval of a run's test accuracy."""
    accuracy, images = metrics.get("test_accuracy"), metrics.get("n_test")
    if accuracy is None or not images or pd.isna(accuracy):
        return None
    from cifar.compare import accuracy_interval
    low, high = accuracy_interval(round(float(accuracy) * int(images)), int(images))
    return f"{low:.1%} to {high:.1%}"


def _minutes(seconds) -> float | None:
    return None if seconds is None else float(seconds) / 60


def comparison_table(runs: list[tuple[str, dict]], metrics: dict[str, dict]) -> pd.DataFrame:
    """Every measured run as one row of the results table, newest first."""
    rows = [measured_row(run_id, metadata, metrics.get(run_id, {})) for run_id, metadata in reversed(runs)]
    return _typed(pd.DataFrame(rows, columns=["run_id", *TABLE_COLUMNS]))


def study_results() -> pd.DataFrame:
    """The study's Figure 2.1 as shipped in cifar/reference/study_results.csv."""
    with resources.files("cifar").joinpath("reference/study_results.csv").open() as f:
        return pd.read_csv(f)


def study_rows(study: pd.DataFrame) -> pd.DataFrame:
    """The published results in the results table's columns, marked as such."""
    rows = pd.DataFrame({
        "run_id": None, SOURCE: STUDY_SOURCE,
        RUN: "Study: " + study.model_architecture + " (" + study.developer + ")",
        MODEL: study.model_architecture, PARAMS: study.params, LAYERS: study.total_layers,
        EPOCHS: study.epochs, BEST_EPOCH: np.nan,
        AUGMENT: study.data_augmentation.map(yes_no), BATCHNORM: study.batchnorm.map(yes_no),
        DROPOUT: study.dropout.map(yes_no), OPTIMIZER: study.optimizer,
        ACCURACY: study.test_accuracy, LOSS: study.test_loss, F1: study.f1_score, RECALL: study.recall,
        ACCURACY_CI: "—",  # the study reports no interval
        TRAIN_MINUTES: np.nan, HARDWARE: "not reported", PRECISION: "not reported",
        IMAGENET: study.imagenet_weights.map(lambda v: imagenet_text(None if pd.isna(v) else v)),
        LATENCY: np.nan, NOTES: study.comments.fillna(""),
    })
    return _typed(rows[["run_id", *TABLE_COLUMNS]])


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    numeric = [PARAMS, LAYERS, EPOCHS, BEST_EPOCH, ACCURACY, LOSS, F1, RECALL, TRAIN_MINUTES, LATENCY]
    table[numeric] = table[numeric].apply(pd.to_numeric, errors="coerce")
    return table.reset_index(drop=True)


def filter_table(table: pd.DataFrame, models: list[str] | None = None, text: str = "") -> pd.DataFrame:
    """Rows whose model is in `models` (all when empty) and whose run, model
    or notes contain `text` (case-insensitive)."""
    keep = pd.Series(True, index=table.index)
    if models:
        keep &= table[MODEL].isin(models)
    if text.strip():
        haystack = table[RUN].fillna("") + " " + table[MODEL].fillna("") + " " + table[NOTES].fillna("")
        keep &= haystack.str.contains(text.strip(), case=False, regex=False)
    return table[keep]


def best_cells(table: pd.DataFrame) -> pd.DataFrame:
    """True where a measured run holds the best value of a BEST_IS column.

    Published rows never count: they were measured elsewhere, on other
    hardware, so they are compared by eye, not crowned."""
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    measured = table[table[SOURCE] == MEASURED_SOURCE]
    for column, direction in BEST_IS.items():
        values = measured[column].dropna()
        if not values.empty:
            best = values.max() if direction == "max" else values.min()
            mask.loc[values.index[values == best], column] = True
    return mask


def pareto_frontier(table: pd.DataFrame, cost: str, value: str = ACCURACY) -> pd.DataFrame:
    """Rows no other row beats on both cost (lower) and value (higher), by cost."""
    points = table.dropna(subset=[cost, value]).sort_values([cost, value], ascending=[True, False])
    best, keep = -np.inf, []
    for index, score in points[value].items():
        if score > best:
            keep.append(index)
            best = score
    return points.loc[keep]


# ---------------------------------------------------------------- learning curves

# metric -> (training, validation, test) history columns; test accuracy exists
# only for runs trained with --track-test.
CURVE_METRICS = {"Loss": ("loss", "val_loss", None), "Accuracy": ("accuracy", "val_accuracy", "test_accuracy"),
                 "Learning rate": ("learning_rate", None, None)}
CURVE_SPLITS = ("Training", "Validation", "Test")
CURVE_X = {"Epoch": "epoch", "Wall time (minutes)": "minutes", "Training time (minutes)": "train_minutes"}


def smooth(values: pd.Series, weight: float) -> pd.Series:
    """TensorBoard's smoothing: a debiased exponential moving average.

    weight 0 returns the values unchanged; 0.9 averages over about 10 points.
    Debiasing keeps the first points from being dragged toward zero."""
    if not weight:
        return values.astype(float)
    return values.astype(float).ewm(alpha=1 - weight, adjust=True).mean()


def training_seconds(history: pd.DataFrame) -> pd.Series:
    """Seconds in training batches up to each epoch: no evaluation, saving or
    start-up. Older runs lack the running total: the sum of their epochs'
    seconds stands in, a few percent more as it also counts the validation pass."""
    if "train_seconds_total" in history:
        return history["train_seconds_total"]
    return history["seconds"].cumsum()


def _x_values(history: pd.DataFrame, x_axis: str) -> pd.Series:
    if CURVE_X[x_axis] == "minutes":
        return history["elapsed_seconds"] / 60
    if CURVE_X[x_axis] == "train_minutes":
        return training_seconds(history) / 60
    return history["epoch"]


def curves_long(histories: dict[str, pd.DataFrame], metric: str, x_axis: str = "Epoch",
                smoothing: float = 0.0) -> pd.DataFrame:
    """One row per (run, split, epoch): run, split, x, value (smoothed), raw."""
    frames = []
    for label, history in histories.items():
        for split, column in zip(CURVE_SPLITS, CURVE_METRICS[metric]):
            if column is None or column not in history:
                continue
            split_name = "Learning rate" if metric == "Learning rate" else split
            frames.append(pd.DataFrame({"run": label, "split": split_name, "x": _x_values(history, x_axis),
                                        "value": smooth(history[column], smoothing),
                                        "raw": history[column].astype(float)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run", "split", "x", "value", "raw"])


def best_epoch_points(histories: dict[str, pd.DataFrame], best_epochs: dict[str, int], metric: str,
                      x_axis: str = "Epoch", smoothing: float = 0.0) -> pd.DataFrame:
    """Where each run's best epoch sits on its validation (or only) curve."""
    long = curves_long(histories, metric, x_axis, smoothing)
    rows = []
    for label, history in histories.items():
        epoch = best_epochs.get(label)
        split = "Learning rate" if metric == "Learning rate" else "Validation"
        curve = long[(long.run == label) & (long.split == split)]
        at = history.index[history["epoch"] == epoch]
        if epoch and len(at) and not curve.empty:
            position = history.index.get_loc(at[0])
            rows.append({"run": label, "epoch": int(epoch), "x": curve.x.iloc[position],
                         "value": curve.value.iloc[position]})
    return pd.DataFrame(rows, columns=["run", "epoch", "x", "value"])


def generalization_gap(histories: dict[str, pd.DataFrame], best_epochs: dict[str, int]) -> pd.DataFrame:
    """Training minus validation accuracy (and validation minus training loss)
    at each run's best epoch and at its last epoch: a big gap is overfitting."""
    rows = []
    for label, history in histories.items():
        if not {"accuracy", "val_accuracy", "loss", "val_loss"} <= set(history.columns) or history.empty:
            continue
        by_epoch = history.set_index("epoch")
        best = best_epochs.get(label) if best_epochs.get(label) in by_epoch.index else by_epoch.index[-1]
        last = by_epoch.index[-1]
        rows.append({
            "Run": label, "Best epoch": int(best),
            "Training accuracy": by_epoch.accuracy[best], "Validation accuracy": by_epoch.val_accuracy[best],
            "Accuracy gap at best epoch": by_epoch.accuracy[best] - by_epoch.val_accuracy[best],
            "Accuracy gap at last epoch": by_epoch.accuracy[last] - by_epoch.val_accuracy[last],
            "Loss gap at last epoch": by_epoch.val_loss[last] - by_epoch.loss[last],
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- confusion

CAT, DOG = CLASS_NAMES.index("cat"), CLASS_NAMES.index("dog")


def confusion_matrix(confusion: pd.DataFrame, normalize: bool = False) -> pd.DataFrame:
    """10x10, rows = true class, columns = predicted class, in CLASS_NAMES order.

    Normalised, each row is the share of that true class (rows sum to 1; a
    class with no test images stays all zero)."""
    counts = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=np.int64)
    np.add.at(counts, (confusion.true_index.to_numpy(), confusion.pred_index.to_numpy()),
              confusion["count"].to_numpy())
    matrix = pd.DataFrame(counts, index=pd.Index(CLASS_NAMES, name="True class"),
                          columns=pd.Index(CLASS_NAMES, name="Predicted class"))
    if not normalize:
        return matrix
    totals = matrix.sum(axis=1).replace(0, np.nan)
    return matrix.div(totals, axis=0).fillna(0.0)


def confusion_difference(first: pd.DataFrame, second: pd.DataFrame, normalize: bool = True) -> pd.DataFrame:
    """second minus first: positive cells are where the second run predicts more."""
    return confusion_matrix(second, normalize) - confusion_matrix(first, normalize)


def difference_is_better(difference: pd.DataFrame) -> pd.DataFrame:
    """Sign a confusion difference by whether it helps: more on the diagonal
    (correct) and less off it (mistakes) are both positive."""
    sign = np.where(np.eye(len(difference), dtype=bool), 1, -1)
    return difference * sign


def most_confused_pairs(confusions: dict[str, pd.DataFrame], top: int = 10) -> pd.DataFrame:
    """Off-diagonal (true, predicted) pairs ranked by their average share of
    the true class over the given runs; one count column per run."""
    if not confusions:
        return pd.DataFrame(columns=["True class", "Predicted as", "Average share of true class"])
    counts = {label: confusion_matrix(c).to_numpy() for label, c in confusions.items()}
    shares = np.mean([confusion_matrix(c, normalize=True).to_numpy() for c in confusions.values()], axis=0)
    true_idx, pred_idx = np.nonzero(~np.eye(len(CLASS_NAMES), dtype=bool))
    order = np.argsort(-shares[true_idx, pred_idx], kind="stable")[:top]
    true_idx, pred_idx = true_idx[order], pred_idx[order]
    table = pd.DataFrame({"True class": [CLASS_NAMES[i] for i in true_idx],
                          "Predicted as": [CLASS_NAMES[i] for i in pred_idx],
                          "Average share of true class": shares[true_idx, pred_idx]})
    for label, matrix in counts.items():
        table[label] = matrix[true_idx, pred_idx]
    return table


def cat_dog_table(confusions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """For every run: cats predicted as dog and dogs predicted as cat."""
    rows = []
    for label, confusion in confusions.items():
        matrix = confusion_matrix(confusion).to_numpy()
        cats, dogs = matrix[CAT].sum(), matrix[DOG].sum()
        rows.append({"Run": label,
                     "Cats predicted as dog": int(matrix[CAT, DOG]),
                     "Share of cats": matrix[CAT, DOG] / cats if cats else np.nan,
                     "Dogs predicted as cat": int(matrix[DOG, CAT]),
                     "Share of dogs": matrix[DOG, CAT] / dogs if dogs else np.nan,
                     "Cat test images": int(cats), "Dog test images": int(dogs)})
    return pd.DataFrame(rows)


def per_class_comparison(per_class: dict[str, pd.DataFrame], metric: str = "f1") -> pd.DataFrame:
    """One row per class: Class, then one column per run holding `metric`
    (precision, recall or f1)."""
    table = pd.DataFrame({label: frame.set_index("class_name")[metric] for label, frame in per_class.items()})
    return table.reindex(list(CLASS_NAMES)).rename_axis("Class").reset_index()


def top_k_text(probabilities: np.ndarray, k: int = 3) -> str:
    """"dog 62% · cat 30% · deer 3%": the k most likely classes."""
    return " · ".join(f"{name} {p:.0%}" for name, p in top_k_from_probabilities(probabilities, k)[0])


def gallery_for_pair(gallery: pd.DataFrame, predictions: pd.DataFrame, true_index: int,
                     pred_index: int, k: int = 3) -> pd.DataFrame:
    """The gallery's test images of one (true, predicted) pair, each with a
    caption of the model's top-k probabilities: index, png, caption."""
    chosen = gallery[(gallery.true_index == true_index) & (gallery.pred_index == pred_index)]
    columns = [f"prob_{name}" for name in CLASS_NAMES]
    probabilities = predictions.set_index("index")[columns]
    captions = [f"#{index}: " + top_k_text(probabilities.loc[index].to_numpy(), k)
                if index in probabilities.index else f"#{index}" for index in chosen["index"]]
    return pd.DataFrame({"index": chosen["index"].to_numpy(), "png": chosen["png"].to_numpy(),
                         "caption": captions})


# ---------------------------------------------------------------- predict

def enlarge(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour upscaling, so the 32x32 input shows as crisp pixels."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def enlarge_png(png: bytes, factor: int = 4) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return enlarge(np.asarray(image.convert("RGB")), factor)


def prediction_rows(results: dict[str, tuple], true_class: str | None = None) -> pd.DataFrame:
    """{run label: predict_with_timing's (top-k pairs, probabilities, seconds)}
    -> one row per model: its best guess and probability, the next two
    guesses, its time and, when the true class is known, whether it is right."""
    rows = []
    for label, (top, _probabilities, seconds) in results.items():
        (best, probability), *others = top
        row = {"Model run": label, "Best guess": best, "Probability": probability}
        if true_class is not None:
            row["Correct"] = best == true_class
        row["Time (ms)"] = seconds * 1000
        for rank, (name, p) in zip(("2nd guess", "3rd guess"), others):
            row[rank] = f"{name} {p:.0%}"
        rows.append(row)
    return pd.DataFrame(rows)


def pick_random_image(galleries: dict[str, pd.DataFrame], rng: np.random.Generator) -> dict | None:
    """One random image from the runs' galleries: png, true class and test index."""
    pool = [gallery for gallery in galleries.values() if not gallery.empty]
    if not pool:
        return None
    gallery = pool[rng.integers(len(pool))]
    row = gallery.iloc[rng.integers(len(gallery))]
    return {"png": bytes(row.png), "true_class": CLASS_NAMES[int(row.true_index)], "index": int(row["index"])}


# ---------------------------------------------------------------- run details

def settings_table(metadata: dict) -> pd.DataFrame:
    """The run's resolved config and summary facts as Setting / Value rows."""
    config = metadata.get("config") or {}
    params = metadata.get("params") or {}
    rows = {**{k.replace("_", " "): v for k, v in config.items()},
            "parameters (total)": params.get("total"), "parameters (trainable)": params.get("trainable"),
            "layers": metadata.get("layers"), "epochs run": metadata.get("epochs_run"),
            "best epoch": metadata.get("best_epoch"), "stopped early": metadata.get("stopped_early"),
            "ImageNet weights": imagenet_text(metadata.get("imagenet_weights")),
            "initialised from run": metadata.get("init_from_run"),
            "training time (s)": metadata.get("train_seconds"), "wall time (s)": metadata.get("wall_seconds"),
            "training speed (images/s)": metadata.get("train_images_per_s"),
            "study section": metadata.get("study_section"), "recipe": metadata.get("recipe_summary"),
            "finished at": metadata.get("finished_at")}
    return _as_rows(rows)


def environment_table(metadata: dict) -> pd.DataFrame:
    environment = metadata.get("environment") or {}
    hardware = environment.get("hardware") or {}
    rows = {"hardware": hardware.get("label"), "GPUs": ", ".join(hardware.get("gpus") or []) or "none",
            "keras backend": environment.get("backend"), "git commit": environment.get("git_commit"),
            "platform": environment.get("platform"),
            **{f"version of {k}": v for k, v in (environment.get("versions") or {}).items()}}
    return _as_rows(rows)


def data_table(metadata: dict) -> pd.DataFrame:
    data = metadata.get("data") or {}
    return _as_rows({"source": data.get("source"), "fingerprint": data.get("fingerprint"),
                     "description": data.get("description"), "training images": data.get("n_train"),
                     "validation images": data.get("n_val"), "test images": data.get("n_test")})


def _as_rows(values: dict) -> pd.DataFrame:
    # Values are shown as text: one column may mix numbers, flags and names.
    return pd.DataFrame({"Setting": list(values),
                         "Value": ["—" if v is None else str(v) for v in values.values()]})


def file_sizes(sizes: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame({"File": list(sizes), "Size": [human_size(s) for s in sizes.values()]})


def human_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} bytes"
