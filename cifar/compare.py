"""Trustworthy comparisons of runs: is one model really better, can its
confidence be trusted, and on which test images do the models part ways.

Pure functions over the `predictions` tables runs already store (every test
image's probabilities), so nothing is retrained; `load_runs` is the one
reader, through `cifar.artifacts`. The Compare page and `python -m cifar
compare` show exactly what is computed here.

- Paired tests: two runs are paired only if they were evaluated on the same
  test set (same data fingerprint, same images, same labels). McNemar's test
  comes from statsmodels (the exact binomial when fewer than EXACT_BELOW
  images are discordant); Holm's correction is three lines (see `holm`).
  The accuracy difference's interval is a paired percentile bootstrap
  (RESAMPLES resamples, seeded): each image's difference is -1, 0 or +1, so a
  resample's mean depends only on how many of each it draws, which is one
  multinomial draw. That gives the bootstrap distribution of resampling
  10,000 image indices 2,000 times at the cost of 2,000 draws (tested
  against scipy.stats.bootstrap).
- Calibration: top-label expected calibration error (ECE, BINS equal-width
  bins, each bin weighted by its share of images), classwise ECE (Kull et
  al. 2019: the ECE of each class's probability, averaged over classes),
  negative log-likelihood and the multiclass Brier score (sum over classes,
  0 is perfect, 2 the worst). No library in the pinned stack computes ECE,
  so these are a few lines each, tested against closed forms.
- Temperature scaling (Guo et al. 2017): one temperature T fitted by
  minimising the validation NLL of softmax(log p / T), which equals scaling
  the logits since log p differs from them by a constant per image.
- Label doubts: test images that every selected run confidently assigns to
  one other class, and cleanlab's label-issue ranking of the same images.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cifar import CLASS_NAMES, artifacts
from cifar.errors import CifarError

PROB_COLUMNS = [f"prob_{name}" for name in CLASS_NAMES]
BINS = 15
RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
SIGNIFICANCE = 0.05
EXACT_BELOW = 25          # discordant images below which McNemar uses the exact binomial
DOUBT_CONFIDENCE = 0.8    # every run at least this sure of one other class: a label doubt
_EPS = 1e-12

# The explorer's filters; "A" and "B" are the two runs chosen on the page.
DISAGREE, A_ONLY, B_ONLY, ALL_WRONG = "They disagree", "A right, B wrong", "B right, A wrong", "All wrong"
FILTERS = (DISAGREE, A_ONLY, B_ONLY, ALL_WRONG)


class PairingError(CifarError):
    """Runs that cannot be compared image by image."""


# ---------------------------------------------------------------- aligned runs

@dataclass(frozen=True)
class Aligned:
    """Runs evaluated on one test set, image by image (rows in index order)."""

    names: tuple[str, ...]
    index: np.ndarray          # (n,) test image indices
    truth: np.ndarray          # (n,) true class
    probabilities: np.ndarray  # (runs, n, classes)
    predicted: np.ndarray      # (runs, n) the class each run predicted

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.truth

    def at(self, name: str) -> int:
        return self.names.index(name)


def _probabilities(frame: pd.DataFrame) -> np.ndarray:
    return frame[PROB_COLUMNS].to_numpy(dtype=np.float64)


def pairing_problem(first: tuple[dict, pd.DataFrame], other: tuple[dict, pd.DataFrame]) -> str | None:
    """Why two runs (metadata, predictions) cannot be paired, or None if they can."""
    (meta_a, pred_a), (meta_b, pred_b) = first, other
    print_a = (meta_a.get("data") or {}).get("fingerprint")
    print_b = (meta_b.get("data") or {}).get("fingerprint")
    if print_a and print_b and print_a != print_b:
        return f"they were evaluated on different data (fingerprints {print_a} and {print_b})"
    if len(pred_a) != len(pred_b):
        return f"they were evaluated on different numbers of test images ({len(pred_a):,} and {len(pred_b):,})"
    a, b = pred_a.sort_values("index"), pred_b.sort_values("index")
    if not np.array_equal(a["index"].to_numpy(), b["index"].to_numpy()):
        return "their test images are not the same ones"
    if not np.array_equal(a["true_index"].to_numpy(), b["true_index"].to_numpy()):
        return "their test images carry different labels"
    return None


def split_pairable(runs: dict[str, tuple[dict, pd.DataFrame]]) -> tuple[list[str], dict[str, str]]:
    """The runs that pair with the first one, and for each other run, why not."""
    names = list(runs)
    kept, problems = names[:1], {}
    for name in names[1:]:
        problem = pairing_problem(runs[names[0]], runs[name])
        if problem:
            problems[name] = f"{name} cannot be paired with {names[0]}: {problem}"
        else:
            kept.append(name)
    return kept, problems


def align(predictions: dict[str, pd.DataFrame]) -> Aligned:
    """Stack pairable runs' predictions (check with split_pairable first)."""
    frames = {name: frame.sort_values("index") for name, frame in predictions.items()}
    first = next(iter(frames.values()))
    return Aligned(names=tuple(frames), index=first["index"].to_numpy(np.int64),
                   truth=first["true_index"].to_numpy(np.int64),
                   probabilities=np.stack([_probabilities(f) for f in frames.values()]),
                   predicted=np.stack([f["pred_index"].to_numpy(np.int64) for f in frames.values()]))


# ---------------------------------------------------------------- is the difference real?

def accuracy_interval(correct, total, confidence: float = CONFIDENCE):
    """Wilson score interval of an accuracy of `correct` out of `total` images:
    (low, high) as floats, or as arrays when given arrays; nan where total is 0.

    The closed form, not statsmodels' `proportion_confint` (tested equal): that
    import costs about a second, and the Models page, every visitor's first
    page, shows this interval."""
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    correct, total = np.asarray(correct, dtype=float), np.asarray(total, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.where(total > 0, total, np.nan)
        p = correct / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    return (float(low), float(high)) if low.ndim == 0 else (low, high)


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's test on the 2x2 right/wrong table of two runs on the same images.

    Exact binomial when fewer than EXACT_BELOW images are discordant, else the
    chi-squared statistic with continuity correction (statsmodels)."""
    from statsmodels.stats.contingency_tables import mcnemar
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    discordant = int(table[0, 1] + table[1, 0])
    exact = discordant < EXACT_BELOW
    p_value = 1.0 if discordant == 0 else float(mcnemar(table, exact=exact, correction=True).pvalue)
    return {"both_right": int(table[0, 0]), "a_only": int(table[0, 1]), "b_only": int(table[1, 0]),
            "both_wrong": int(table[1, 1]), "exact": exact, "p_value": min(p_value, 1.0)}


def paired_bootstrap_interval(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = RESAMPLES,
                              seed=SEED, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of accuracy(A) - accuracy(B), resampling images in pairs.

    Each image contributes -1, 0 or +1; a resample of n images is a
    multinomial draw of how many of each, so this is the paired bootstrap
    without materialising resamples x n indices."""
    difference = np.asarray(correct_a, int) - np.asarray(correct_b, int)
    n = len(difference)
    if n == 0:
        return float("nan"), float("nan")
    shares = np.array([np.sum(difference == -1), np.sum(difference == 0), np.sum(difference == 1)]) / n
    counts = np.random.default_rng(seed).multinomial(n, shares, size=resamples)
    means = (counts[:, 2] - counts[:, 0]) / n
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values: the i-th smallest times (m - i), kept
    non-decreasing, at most 1. The same as statsmodels' multipletests(method="holm")
    (the tests compare them), which is not called because its Holm branch runs a
    full gc.collect() on every call: a second in a process holding TensorFlow."""
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty_like(p_values)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(p_values[order] * np.arange(len(p_values), 0, -1)))
    return adjusted


def pair_row(aligned: Aligned, a: str, b: str, resamples: int = RESAMPLES, seed=SEED,
             rows: np.ndarray | None = None) -> dict:
    """Accuracies, difference with its interval, and McNemar's test of A against B
    (on the images selected by boolean `rows`, all by default)."""
    correct = aligned.correct
    ca, cb = correct[aligned.at(a)], correct[aligned.at(b)]
    if rows is not None:
        ca, cb = ca[rows], cb[rows]
    test = mcnemar_test(ca, cb)
    n = len(ca)
    low, high = paired_bootstrap_interval(ca, cb, resamples, seed)
    return {"A": a, "B": b, "images": n, "accuracy_a": ca.mean() if n else np.nan,
            "accuracy_b": cb.mean() if n else np.nan, "difference": (ca.mean() - cb.mean()) if n else np.nan,
            "ci_low": low, "ci_high": high, **test}


def reversed_pair(row: dict) -> dict:
    """A pair_row read the other way round (B against A): same test, same interval."""
    return {**row, "A": row["B"], "B": row["A"], "accuracy_a": row["accuracy_b"], "accuracy_b": row["accuracy_a"],
            "difference": -row["difference"], "ci_low": -row["ci_high"], "ci_high": -row["ci_low"],
            "a_only": row["b_only"], "b_only": row["a_only"]}


def pairwise(aligned: Aligned, resamples: int = RESAMPLES, seed=SEED) -> pd.DataFrame:
    """Every pair of runs (in selection order), with Holm-corrected p-values."""
    pairs = [pair_row(aligned, a, b, resamples, (seed, i))
             for i, (a, b) in enumerate(itertools.combinations(aligned.names, 2))]
    table = pd.DataFrame(pairs)
    if not table.empty:
        table["p_holm"] = holm(table.p_value)
    return table


def per_class(aligned: Aligned, a: str, b: str, resamples: int = RESAMPLES, seed=SEED) -> pd.DataFrame:
    """The pair's comparison within each true class; Holm over the 10 classes."""
    rows = [{"class": name, **pair_row(aligned, a, b, resamples, (seed, 1000 + c), aligned.truth == c)}
            for c, name in enumerate(CLASS_NAMES)]
    table = pd.DataFrame(rows).drop(columns=["A", "B"])
    table["p_holm"] = holm(table.p_value)
    return table


def pair_matrix(pairs: pd.DataFrame, names, column: str) -> pd.DataFrame:
    """A runs x runs matrix of one pairwise column; differences are row minus column."""
    matrix = pd.DataFrame(np.nan, index=list(names), columns=list(names))
    for row in pairs.itertuples():
        value = getattr(row, column)
        matrix.loc[row.A, row.B] = value
        matrix.loc[row.B, row.A] = -value if column == "difference" else value
    return matrix


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def headline(row: dict) -> str:
    """One plain sentence for a stakeholder about a pair (a pair_row, with p_holm
    when it comes from a family of comparisons)."""
    p = row.get("p_holm", row["p_value"])
    points = 100 * row["difference"]
    interval = f"95% CI {100 * row['ci_low']:+.1f} to {100 * row['ci_high']:+.1f}"
    if p >= SIGNIFICANCE:
        return (f"No evidence of a difference between {row['A']} and {row['B']} at this test size "
                f"({row['images']:,} images): {points:+.1f} points of accuracy ({interval}), {p_text(p)}.")
    net = row["a_only"] - row["b_only"]
    if net >= 0:
        better, worse, low, high = row["A"], row["B"], row["ci_low"], row["ci_high"]
    else:
        better, worse, low, high = row["B"], row["A"], -row["ci_high"], -row["ci_low"]
    return (f"{better} is right on {abs(net):,} more of the {row['images']:,} test images than {worse}: "
            f"+{abs(points):.1f} points of accuracy (95% CI {100 * low:.1f} to {100 * high:.1f}), {p_text(p)}.")


# ---------------------------------------------------------------- can the confidence be trusted?

def _bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bins over [0, 1], each (lower, upper]; 0 falls in the first."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def _binned_gap(confidence: np.ndarray, hit: np.ndarray, bins: int) -> float:
    """Sum over bins of (share of images) x |mean hit - mean confidence|."""
    which = _bin_of(confidence, bins)
    gap = np.bincount(which, weights=hit, minlength=bins) - np.bincount(which, weights=confidence, minlength=bins)
    return float(np.abs(gap).sum() / max(len(confidence), 1))


def reliability_table(probabilities: np.ndarray, truth: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Per confidence bin: its bounds, image count, mean confidence and accuracy."""
    confidence = probabilities.max(axis=1)
    hit = (probabilities.argmax(axis=1) == truth).astype(float)
    which = _bin_of(confidence, bins)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=hit, minlength=bins) / counts
    edges = np.linspace(0, 1, bins + 1)
    return pd.DataFrame({"bin": np.arange(bins), "lower": edges[:-1], "upper": edges[1:], "count": counts,
                         "confidence": mean_confidence, "accuracy": accuracy})


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = BINS) -> float:
    """Top-label ECE: how far the top class's probability is from being right."""
    hit = (probabilities.argmax(axis=1) == truth).astype(float)
    return _binned_gap(probabilities.max(axis=1), hit, bins)


def classwise_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = BINS) -> float:
    """Each class's probability binned against whether the image is of that
    class, averaged over the classes."""
    return float(np.mean([_binned_gap(probabilities[:, c], (truth == c).astype(float), bins)
                          for c in range(probabilities.shape[1])]))


def negative_log_likelihood(probabilities: np.ndarray, truth: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probabilities[np.arange(len(truth)), truth], _EPS, 1.0))))


def brier_score(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Mean over images of the squared distance to the one-hot label (0 to 2)."""
    one_hot = np.eye(probabilities.shape[1])[truth]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same as dividing the logits by T."""
    logits = np.log(np.clip(probabilities, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The temperature (0.05 to 20) that minimises the NLL of these probabilities."""
    from scipy.optimize import minimize_scalar
    result = minimize_scalar(lambda log_t: negative_log_likelihood(with_temperature(probabilities, np.exp(log_t)),
                                                                   truth),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def calibration_row(probabilities: np.ndarray, truth: np.ndarray) -> dict:
    return {"ece": expected_calibration_error(probabilities, truth),
            "classwise_ece": classwise_calibration_error(probabilities, truth),
            "nll": negative_log_likelihood(probabilities, truth), "brier": brier_score(probabilities, truth)}


def no_validation_reason(metadata: dict) -> str:
    """Why a run has no validation probabilities to fit a temperature on."""
    data = metadata.get("data") or {}
    if data.get("n_val") == 0:
        return (f"no validation split: it trained on all {data.get('n_train', 0):,} training images, "
                "so there is nothing held out to fit a temperature on")
    return ("it stores no validation probabilities (evaluated before they were kept); add them with "
            "python -m cifar evaluate RUN_ID --store-validation --data PATH")


def calibration(aligned: Aligned, validation: dict[str, pd.DataFrame | None],
                metadata: dict[str, dict]) -> pd.DataFrame:
    """Per run: ECE, classwise ECE, NLL, Brier on test, and where the run stores
    validation probabilities, the fitted temperature and ECE/NLL after it."""
    rows = []
    for k, name in enumerate(aligned.names):
        probabilities = aligned.probabilities[k]
        row = {"run": name, **calibration_row(probabilities, aligned.truth)}
        val = validation.get(name)
        if val is not None and len(val):
            temperature = fit_temperature(_probabilities(val), val["true_index"].to_numpy(np.int64))
            scaled = with_temperature(probabilities, temperature)
            row.update(temperature=temperature, validation_images=len(val),
                       ece_scaled=expected_calibration_error(scaled, aligned.truth),
                       nll_scaled=negative_log_likelihood(scaled, aligned.truth), note="")
        else:
            row.update(temperature=np.nan, validation_images=0, ece_scaled=np.nan, nll_scaled=np.nan,
                       note=f"No temperature scaling: {no_validation_reason(metadata.get(name, {}))}.")
        rows.append(row)
    return pd.DataFrame(rows)


def reliability(aligned: Aligned, temperatures: dict[str, float] | None = None, bins: int = BINS) -> pd.DataFrame:
    """Every run's reliability table, stacked with `run` and `scaled` columns (for
    one overlaid diagram); a run given a temperature also appears after it."""
    tables = []
    for k, name in enumerate(aligned.names):
        tables.append(reliability_table(aligned.probabilities[k], aligned.truth, bins).assign(run=name, scaled=False))
        temperature = (temperatures or {}).get(name)
        if temperature is not None and np.isfinite(temperature):
            scaled = with_temperature(aligned.probabilities[k], temperature)
            tables.append(reliability_table(scaled, aligned.truth, bins).assign(run=name, scaled=True))
    return pd.concat(tables, ignore_index=True)


# ---------------------------------------------------------------- where do they differ?

def _masks(aligned: Aligned, a: str, b: str) -> dict[str, np.ndarray]:
    correct, predicted = aligned.correct, aligned.predicted
    return {DISAGREE: (predicted != predicted[:1]).any(axis=0),
            A_ONLY: correct[aligned.at(a)] & ~correct[aligned.at(b)],
            B_ONLY: correct[aligned.at(b)] & ~correct[aligned.at(a)],
            ALL_WRONG: ~correct.any(axis=0)}


def disagreement_counts(aligned: Aligned, a: str, b: str) -> dict[str, int]:
    """How many test images fall under each filter (before class and confidence)."""
    return {kind: int(mask.sum()) for kind, mask in _masks(aligned, a, b).items()}


def wrong_confidence(aligned: Aligned) -> np.ndarray:
    """Per image: the highest probability any run gives to the wrong answer it
    predicted (NaN where every run is right)."""
    wrong_top = np.where(aligned.correct, -np.inf, aligned.probabilities.max(axis=2)).max(axis=0)
    return np.where(np.isinf(wrong_top), np.nan, wrong_top)


def disagreements(aligned: Aligned, a: str, b: str, kind: str = DISAGREE, true_class: str | None = None,
                  min_confidence: float = 0.0) -> pd.DataFrame:
    """The test images under one filter, of one true class (None: all), whose
    wrong answer is at least `min_confidence` sure; most confident first.
    Columns: position (row in `aligned`), index, true_class, wrong_confidence."""
    if kind not in FILTERS:
        raise ValueError(f"unknown filter {kind!r}; known: {FILTERS}")
    confidence = wrong_confidence(aligned)
    keep = _masks(aligned, a, b)[kind]
    if true_class is not None:
        keep &= aligned.truth == CLASS_NAMES.index(true_class)
    if min_confidence > 0:
        keep &= np.nan_to_num(confidence, nan=-1.0) >= min_confidence
    rows = np.flatnonzero(keep)
    table = pd.DataFrame({"position": rows, "index": aligned.index[rows],
                          "true_class": [CLASS_NAMES[t] for t in aligned.truth[rows]],
                          "wrong_confidence": confidence[rows]})
    return table.sort_values(["wrong_confidence", "index"], ascending=[False, True],
                             na_position="last", kind="stable").reset_index(drop=True)


def top_k_lines(aligned: Aligned, position: int, k: int = 3) -> list[dict]:
    """Each run's top-k classes for one image: run, text ("dog 62% · cat 30% · ..."), correct."""
    lines = []
    for r, name in enumerate(aligned.names):
        row = aligned.probabilities[r, position]
        order = np.argsort(-row, kind="stable")[:k]
        lines.append({"run": name, "correct": bool(aligned.correct[r, position]),
                      "text": " · ".join(f"{CLASS_NAMES[c]} {row[c]:.0%}" for c in order)})
    return lines


def image_lookup(galleries) -> dict[int, bytes]:
    """Test index -> PNG from every gallery given (each run keeps only a sample)."""
    found = {}
    for gallery in galleries:
        found.update(zip(gallery["index"].tolist(), gallery["png"].tolist()))
    return found


def label_doubts(aligned: Aligned, threshold: float = DOUBT_CONFIDENCE) -> pd.DataFrame:
    """Test images every run assigns to one same other class with at least
    `threshold` probability: candidates for a wrong label. Columns: position,
    index, true_class, agreed_class, lowest_confidence (the least sure run's
    probability of the agreed class); the surest first."""
    agreed = aligned.predicted[0]
    same = (aligned.predicted == agreed).all(axis=0) & (agreed != aligned.truth)
    lowest = aligned.probabilities[:, np.arange(len(agreed)), agreed].min(axis=0)
    rows = np.flatnonzero(same & (lowest >= threshold))
    table = pd.DataFrame({"position": rows, "index": aligned.index[rows],
                          "true_class": [CLASS_NAMES[t] for t in aligned.truth[rows]],
                          "agreed_class": [CLASS_NAMES[c] for c in agreed[rows]],
                          "lowest_confidence": lowest[rows]})
    return table.sort_values(["lowest_confidence", "index"], ascending=[False, True]).reset_index(drop=True)


def cleanlab_unavailable(aligned: Aligned) -> str | None:
    """Why cleanlab cannot rank these runs' labels, or None when it can."""
    if len(np.unique(aligned.truth)) < 2:
        return "cleanlab needs test images of at least two classes"
    probabilities = aligned.probabilities
    if not np.isfinite(probabilities).all() or (probabilities < 0).any() or \
            not (probabilities.mean(axis=0).sum(axis=1) > 0).all():
        return "cleanlab needs a probability for every class of every test image, and some runs lack them"
    return None


def cleanlab_issues(aligned: Aligned, top: int = 50) -> pd.DataFrame:
    """cleanlab's label issues on the runs' mean test probabilities (out of
    sample: no run trained on test images), worst first: position, index,
    true_class, likely_class, label_quality (cleanlab's self-confidence)."""
    mean = aligned.probabilities.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = mean / mean.sum(axis=1, keepdims=True)
    if cleanlab_unavailable(aligned) or not np.isfinite(mean).all():
        return pd.DataFrame({"position": [], "index": [], "true_class": [], "likely_class": [], "label_quality": []})
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    issues = find_label_issues(aligned.truth, mean, return_indices_ranked_by="self_confidence")[:top]
    quality = get_label_quality_scores(aligned.truth, mean, method="self_confidence")
    return pd.DataFrame({"position": issues, "index": aligned.index[issues],
                         "true_class": [CLASS_NAMES[t] for t in aligned.truth[issues]],
                         "likely_class": [CLASS_NAMES[c] for c in mean[issues].argmax(axis=1)],
                         "label_quality": quality[issues]})


# ---------------------------------------------------------------- runs on disk, and the report

@dataclass
class LoadedRun:
    run_id: str
    metadata: dict
    predictions: pd.DataFrame
    validation: pd.DataFrame | None   # the optional val_predictions table


def short_names(run_ids: list[str], metadata: dict[str, dict]) -> dict[str, str]:
    """Run id -> its model name, or model-suffix where two runs share a model."""
    parts = {r: artifacts.parse_run_id(r) for r in run_ids}
    models = {r: metadata[r].get("model") or parts[r].model for r in run_ids}
    return {r: m if list(models.values()).count(m) == 1 else f"{m}-{parts[r].suffix}" for r, m in models.items()}


def load_runs(run_ids: list[str]) -> dict[str, LoadedRun]:
    """What a comparison reads of each run (RunError for a bad or missing id)."""
    if len(set(run_ids)) != len(run_ids):
        raise PairingError("the same run is named twice; give two or more different run ids")
    loaded = {}
    for run_id in run_ids:
        info = artifacts.get_run(run_id)
        loaded[run_id] = LoadedRun(run_id, info.metadata, artifacts.read_table(run_id, "predictions"),
                                   artifacts.read_optional_table(run_id, "val_predictions"))
    return loaded


def report(run_ids: list[str], resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Every figure of the comparison of these runs, JSON-ready: each run's
    accuracy with its Wilson interval, every pair (the sentence, the 2x2 table,
    McNemar, the bootstrap interval, Holm), per class for two runs, and calibration."""
    if len(run_ids) < 2:
        raise PairingError("compare needs two or more run ids (list them with: python -m cifar runs)")
    loaded = load_runs(run_ids)
    names = short_names(run_ids, {r: run.metadata for r, run in loaded.items()})
    runs = {names[r]: (run.metadata, run.predictions) for r, run in loaded.items()}
    kept, problems = split_pairable(runs)
    if problems:
        raise PairingError(next(iter(problems.values())))
    aligned = align({name: runs[name][1] for name in kept})
    pairs = pairwise(aligned, resamples, seed)
    accuracy = aligned.correct.sum(axis=1)
    result = {
        "test_images": len(aligned.truth), "resamples": resamples, "seed": seed,
        "runs": [{"name": names[r], "run_id": r, "accuracy": accuracy[i] / len(aligned.truth),
                  "accuracy_ci95": accuracy_interval(accuracy[i], len(aligned.truth))}
                 for i, r in enumerate(run_ids)],
        "pairs": [{"headline": headline(row), **row} for row in pairs.to_dict("records")],
        "calibration": calibration(aligned, {names[r]: run.validation for r, run in loaded.items()},
                                   {names[r]: run.metadata for r, run in loaded.items()}).to_dict("records"),
    }
    if len(run_ids) == 2:
        result["per_class"] = per_class(aligned, *aligned.names, resamples, seed).to_dict("records")
    return _plain(result)


def _plain(value):
    """numpy scalars and NaN made JSON-friendly (NaN -> None)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    return value


def _number(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def format_report(result: dict) -> str:
    """The report as text tables (what `python -m cifar compare` prints)."""
    lines = [f"{result['test_images']:,} test images, paired. Intervals: 95%; accuracy: Wilson; "
             f"differences: paired bootstrap ({result['resamples']:,} resamples, seed {result['seed']}).", ""]
    lines += [f"{'run':24} {'accuracy':>9}  95% CI", *[
        f"{r['name']:24} {r['accuracy']:9.4f}  {r['accuracy_ci95'][0]:.4f} to {r['accuracy_ci95'][1]:.4f}"
        for r in result["runs"]], ""]
    lines.append(f"{'A':20} {'B':20} {'A-B pts':>8} {'95% CI':>15} {'A only':>7} {'B only':>7} "
                 f"{'McNemar p':>10} {'Holm p':>9}")
    for p in result["pairs"]:
        ci = f"{100 * p['ci_low']:+.1f} to {100 * p['ci_high']:+.1f}"
        lines.append(f"{p['A']:20} {p['B']:20} {100 * p['difference']:+8.1f} {ci:>15} {p['a_only']:7,} "
                     f"{p['b_only']:7,} {p['p_value']:10.2g} {p['p_holm']:9.2g}"
                     + ("  (exact)" if p["exact"] else ""))
    lines += ["", *[p["headline"] for p in result["pairs"]], ""]
    if "per_class" in result:
        lines.append(f"per class (A = {result['pairs'][0]['A']}, B = {result['pairs'][0]['B']}; Holm over classes)")
        lines.append(f"{'class':12} {'A':>7} {'B':>7} {'A-B pts':>8} {'95% CI':>15} {'Holm p':>9}")
        for c in result["per_class"]:
            ci = f"{100 * c['ci_low']:+.1f} to {100 * c['ci_high']:+.1f}"
            lines.append(f"{c['class']:12} {c['accuracy_a']:7.3f} {c['accuracy_b']:7.3f} "
                         f"{100 * c['difference']:+8.1f} {ci:>15} {c['p_holm']:9.2g}")
        lines.append("")
    lines.append(f"calibration on test ({BINS} bins)")
    lines.append(f"{'run':24} {'ECE':>6} {'cw-ECE':>7} {'NLL':>6} {'Brier':>6} {'T':>5} {'ECE@T':>6} {'NLL@T':>6}")
    for c in result["calibration"]:
        lines.append(f"{c['run']:24} {c['ece']:6.3f} {c['classwise_ece']:7.4f} {c['nll']:6.3f} {c['brier']:6.3f} "
                     f"{_number(c['temperature'], '5.2f'):>5} {_number(c['ece_scaled'], '6.3f'):>6} "
                     f"{_number(c['nll_scaled'], '6.3f'):>6}")
    lines += [f"{c['run']}: {c['note']}" for c in result["calibration"] if c["note"]]
    return "\n".join(lines)
