"""cifar.compare, the Compare page and `python -m cifar compare`: known
answers for the statistics, the explorer's counts against pandas on fixture
runs, and what the page and the command show."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from scipy import stats
from sklearn.metrics import brier_score_loss, log_loss
from statsmodels.stats.multitest import multipletests
from streamlit.testing.v1 import AppTest

import datasets
import fixture_runs
from cifar import CLASS_NAMES, NUM_CLASSES, artifacts, cli, compare as c, dashboard as d
from cifar.errors import RunError

APP = Path(__file__).resolve().parent.parent / "streamlit_app.py"


# ---------------------------------------------------------------- synthetic models

def outcomes(table: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image right/wrong of runs A and B realising a 2x2 table
    [[both right, A only], [B only, both wrong]]."""
    (both, a_only), (b_only, neither) = table
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, bool)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, bool)
    return a, b


def confident_rows(confidence: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Probability rows whose top class is `predicted`, at `confidence` (>= 0.1)."""
    rows = np.repeat(((1 - confidence) / (NUM_CLASSES - 1))[:, None], NUM_CLASSES, axis=1)
    rows[np.arange(len(predicted)), predicted] = confidence
    return rows


def labels_right_with(share_right: np.ndarray, predicted: np.ndarray, rng) -> np.ndarray:
    """True labels: the prediction with probability `share_right`, another class otherwise."""
    right = rng.random(len(predicted)) < share_right
    other = (predicted + rng.integers(1, NUM_CLASSES, len(predicted))) % NUM_CLASSES
    return np.where(right, predicted, other)


# ---------------------------------------------------------------- is the difference real?

def test_mcnemar_on_a_small_table_is_the_exact_binomial_by_hand():
    test = c.mcnemar_test(*outcomes([[10, 3], [12, 20]]))
    # 15 discordant images, 3 of them for A: two-sided exact binomial with p = 1/2.
    by_hand = 2 * sum(math.comb(15, k) for k in range(4)) / 2 ** 15
    assert test["exact"] and test["p_value"] == pytest.approx(by_hand, rel=1e-12)
    assert (test["both_right"], test["a_only"], test["b_only"], test["both_wrong"]) == (10, 3, 12, 20)


def test_mcnemar_on_a_large_table_is_chi_squared_with_continuity_correction():
    test = c.mcnemar_test(*outcomes([[500, 60], [30, 100]]))
    by_hand = stats.chi2.sf((abs(60 - 30) - 1) ** 2 / 90, df=1)
    assert not test["exact"] and test["p_value"] == pytest.approx(by_hand, rel=1e-9)


def test_bootstrap_interval_is_reproducible_and_covers_the_true_difference():
    rng = np.random.default_rng(0)
    n, true_difference, covered = 1000, 0.05, 0
    # Images where A alone is right with 12%, B alone with 7%: A - B = 0.05 on average.
    for experiment in range(200):
        draw = rng.choice(3, size=n, p=[0.07, 0.81, 0.12])  # 0: B only, 1: same, 2: A only
        a, b = draw == 2, draw == 0
        low, high = c.paired_bootstrap_interval(a, b, seed=experiment)
        covered += low <= true_difference <= high
        if experiment == 0:
            assert (low, high) == c.paired_bootstrap_interval(a, b, seed=0)
            assert len({c.paired_bootstrap_interval(a, b, seed=s) for s in range(1, 6)}) > 1
    assert 0.90 <= covered / 200 <= 0.99


def test_bootstrap_interval_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(1)
    a, b = rng.random(600) < 0.8, rng.random(600) < 0.7
    ours = c.paired_bootstrap_interval(a, b, resamples=4000)
    theirs = stats.bootstrap((a.astype(float), b.astype(float)), lambda x, y, axis: x.mean(axis) - y.mean(axis),
                             paired=True, vectorized=True, n_resamples=4000, method="percentile",
                             random_state=2).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.01)


def test_pairwise_holm_and_headline():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, NUM_CLASSES, 2000)
    runs = {}
    for name, accuracy in (("strong", 0.9), ("weak", 0.7), ("twin", 0.7)):
        predicted = np.where(rng.random(2000) < accuracy, truth, (truth + 1) % NUM_CLASSES)
        runs[name] = confident_rows(np.full(2000, 0.6), predicted)
    frames = {name: fixture_predictions(truth, probabilities) for name, probabilities in runs.items()}
    aligned = c.align(frames)
    pairs = c.pairwise(aligned)
    assert list(zip(pairs.A, pairs.B)) == [("strong", "weak"), ("strong", "twin"), ("weak", "twin")]
    assert pairs.p_holm.to_numpy() == pytest.approx(multipletests(pairs.p_value, method="holm")[1])
    for p_values in ([0.01, 0.04, 0.03, 0.5], [0.2, 0.01, 0.2, 0.9, 0.02], [0.5]):
        assert c.holm(p_values) == pytest.approx(multipletests(p_values, method="holm")[1])
    strong_weak = pairs.iloc[0].to_dict()
    assert strong_weak["difference"] == pytest.approx(aligned.correct[0].mean() - aligned.correct[1].mean())
    net = strong_weak["a_only"] - strong_weak["b_only"]
    assert c.headline(strong_weak).startswith(f"strong is right on {net:,} more of the 2,000 test images than weak")
    assert c.headline(pairs.iloc[2].to_dict()).startswith("No evidence of a difference between weak and twin")
    swapped = c.pair_row(aligned, "weak", "strong")
    reverse = c.reversed_pair(strong_weak)
    assert {k: reverse[k] for k in swapped if k not in ("ci_low", "ci_high")} == pytest.approx(
        {k: v for k, v in swapped.items() if k not in ("ci_low", "ci_high")})
    assert (reverse["ci_low"], reverse["ci_high"]) == (-strong_weak["ci_high"], -strong_weak["ci_low"])
    matrix = c.pair_matrix(pairs, aligned.names, "difference")
    assert matrix.loc["weak", "strong"] == -matrix.loc["strong", "weak"]


def test_accuracy_interval_is_wilson_and_shows_on_the_models_table():
    low, high = c.accuracy_interval(9044, 10_000)
    z, p, n = stats.norm.ppf(0.975), 0.9044, 10_000
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n
                                                                                        + z * z / (4 * n * n))
    assert (low, high) == pytest.approx((centre - half, centre + half))
    from statsmodels.stats.proportion import proportion_confint
    counts, totals = np.array([0, 3, 9044, 50]), np.array([10, 10, 10_000, 50])
    assert np.allclose(c.accuracy_interval(counts, totals),
                       proportion_confint(counts, totals, alpha=0.05, method="wilson"))
    row = d.measured_row("20261125T202131Z-fast_cnn-2048", {}, {"test_accuracy": 0.9044, "n_test": 10_000})
    assert row[d.ACCURACY_CI] == f"{low:.1%} to {high:.1%}"


# ---------------------------------------------------------------- calibration

def test_ece_is_about_zero_for_a_calibrated_model():
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.1, 1.0, 200_000)
    predicted = rng.integers(0, NUM_CLASSES, len(confidence))
    truth = labels_right_with(confidence, predicted, rng)
    assert c.expected_calibration_error(confident_rows(confidence, predicted), truth) < 0.01


def test_ece_of_an_over_confident_model_is_the_closed_form():
    # Half the images: 90% sure and right 60% of the time; half: 55% sure and right 55%.
    n = 2000
    confidence = np.repeat([0.9, 0.55], n // 2)
    predicted = np.arange(n) % NUM_CLASSES
    right = np.concatenate([np.arange(n // 2) % 10 < 6, np.arange(n // 2) % 20 < 11])
    truth = np.where(right, predicted, (predicted + 1) % NUM_CLASSES)
    probabilities = confident_rows(confidence, predicted)
    assert c.expected_calibration_error(probabilities, truth) == pytest.approx(0.5 * 0.3 + 0.5 * 0.0)
    table = c.reliability_table(probabilities, truth)
    assert table["count"].sum() == n and table.loc[13, "count"] == n // 2  # 0.9 is in (13/15, 14/15]
    assert table.loc[13, "accuracy"] == pytest.approx(0.6) and table.loc[13, "confidence"] == pytest.approx(0.9)
    assert c.negative_log_likelihood(probabilities, truth) == pytest.approx(
        log_loss(truth, probabilities, labels=range(NUM_CLASSES)))
    assert c.brier_score(probabilities, truth) == pytest.approx(
        brier_score_loss(truth, probabilities, labels=range(NUM_CLASSES)))


def test_classwise_ece_is_zero_for_a_sure_and_right_model_and_positive_otherwise():
    truth = np.arange(500) % NUM_CLASSES
    assert c.classwise_calibration_error(np.eye(NUM_CLASSES)[truth], truth) == 0
    assert c.classwise_calibration_error(np.eye(NUM_CLASSES)[(truth + 1) % 10], truth) == pytest.approx(0.2)


def test_temperature_scaling_lowers_the_nll_of_an_over_confident_model():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 1.5, (6000, NUM_CLASSES))
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(NUM_CLASSES, p=row) for row in calibrated])
    over_confident = c.with_temperature(calibrated, 1 / 3)  # logits tripled
    temperature = c.fit_temperature(over_confident[:3000], truth[:3000])
    assert temperature == pytest.approx(3, rel=0.15)
    scaled = c.with_temperature(over_confident[3000:], temperature)
    assert c.negative_log_likelihood(scaled, truth[3000:]) < c.negative_log_likelihood(over_confident[3000:],
                                                                                       truth[3000:]) - 0.3
    assert c.expected_calibration_error(scaled, truth[3000:]) < 0.03


# ---------------------------------------------------------------- fixture runs

def fixture_predictions(truth: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"index": np.arange(len(truth)), "true_index": truth,
                          "pred_index": probabilities.argmax(axis=1)})
    for i, name in enumerate(CLASS_NAMES):
        frame[f"prob_{name}"] = probabilities[:, i]
    return frame


@pytest.fixture
def three_runs():
    made = [fixture_runs.make_run("cnn_baseline", seed=1, n_test=400),
            fixture_runs.make_run("cnn_regularized", seed=2, n_test=400, minutes_after_start=60),
            fixture_runs.make_run("vgg16_transfer", seed=3, n_test=400, minutes_after_start=120, accuracy=0.5)]
    return [run.run_id for run in made]


def test_explorer_counts_and_filters_equal_pandas(three_runs):
    frames = {r: artifacts.read_table(r, "predictions") for r in three_runs}
    aligned = c.align(frames)
    a, b, third = three_runs
    wide = pd.concat({r: f.set_index("index") for r, f in frames.items()}, axis=1)
    right = pd.DataFrame({r: wide[r].pred_index == wide[r].true_index for r in three_runs})
    predicted = pd.DataFrame({r: wide[r].pred_index for r in three_runs})
    counts = c.disagreement_counts(aligned, a, b)
    assert counts == {c.DISAGREE: int((predicted.nunique(axis=1) > 1).sum()),
                      c.A_ONLY: int((right[a] & ~right[b]).sum()), c.B_ONLY: int((right[b] & ~right[a]).sum()),
                      c.ALL_WRONG: int((~right).all(axis=1).sum())}
    assert counts[c.A_ONLY] > 0 and counts[c.ALL_WRONG] > 0

    top = pd.DataFrame({r: wide[r][c.PROB_COLUMNS].max(axis=1) for r in three_runs})
    wrong_confidence = top.where(~right).max(axis=1)
    found = c.disagreements(aligned, a, b, c.B_ONLY, "cat", 0.5)
    expected = right.index[(right[b] & ~right[a] & (wide[a].true_index == 3) & (wrong_confidence >= 0.5))]
    assert sorted(found["index"]) == sorted(expected) and len(expected) > 0
    assert found.wrong_confidence.is_monotonic_decreasing
    assert found.wrong_confidence.to_numpy() == pytest.approx(wrong_confidence[found["index"]].to_numpy())

    doubts = c.label_doubts(aligned, 0.3)
    agreed = (predicted.nunique(axis=1) == 1) & ~right.any(axis=1)
    sure = pd.DataFrame({r: wide[r][c.PROB_COLUMNS].to_numpy()[np.arange(400), predicted[r]]
                         for r in three_runs}, index=wide.index).min(axis=1) >= 0.3
    assert sorted(doubts["index"]) == sorted(right.index[agreed & sure])
    issues = c.cleanlab_issues(aligned, top=5)
    assert len(issues) <= 5 and issues.label_quality.is_monotonic_increasing

    gallery = artifacts.read_table(a, "gallery")
    assert set(c.image_lookup([gallery])) == set(gallery["index"])


def test_runs_on_other_test_sets_are_not_paired(three_runs):
    other = fixture_runs.make_run("cnn_baseline", seed=9, n_test=300, minutes_after_start=300).run_id
    runs = {r: (artifacts.get_run(r).metadata, artifacts.read_table(r, "predictions")) for r in [*three_runs, other]}
    kept, problems = c.split_pairable(runs)
    assert kept == three_runs and "different numbers of test images (400 and 300)" in problems[other]
    foreign = ({"data": {"fingerprint": "abc"}}, runs[other][1])
    assert "different data" in c.pairing_problem(({"data": {"fingerprint": "def"}}, runs[other][1]), foreign)


def test_compare_command_prints_the_figures_and_refuses_bad_ids(three_runs, capsys):
    a, b, _ = three_runs
    assert cli.main(["compare", a, b, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    aligned = c.align({r: artifacts.read_table(r, "predictions") for r in (a, b)})
    pair = result["pairs"][0]
    assert (pair["a_only"], pair["b_only"]) == (int((aligned.correct[0] & ~aligned.correct[1]).sum()),
                                                int((aligned.correct[1] & ~aligned.correct[0]).sum()))
    assert [r["name"] for r in result["runs"]] == ["cnn_baseline", "cnn_regularized"]
    assert len(result["per_class"]) == NUM_CLASSES and "No temperature scaling" in result["calibration"][0]["note"]

    assert cli.main(["compare", a, b]) == 0
    assert pair["headline"] in capsys.readouterr().out

    other = fixture_runs.make_run("cnn_baseline", seed=9, n_test=300, minutes_after_start=300).run_id
    for argv in (["compare", a, "nonsense"], ["compare", a], ["compare", a, other]):
        assert cli.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err


def test_validation_probabilities_are_an_optional_table(three_runs, tmp_path):
    run_id = three_runs[0]
    assert artifacts.read_optional_table(run_id, "val_predictions") is None  # an older run still reads
    unlisted = artifacts.run_dir(three_runs[2]) / "val_predictions.parquet"
    artifacts.read_table(three_runs[2], "predictions").to_parquet(unlisted)  # an addition cut short
    assert artifacts.read_optional_table(three_runs[2], "val_predictions") is None
    rng = np.random.default_rng(5)
    truth = rng.integers(0, NUM_CLASSES, 300)
    table = fixture_predictions(truth, confident_rows(np.full(300, 0.95), truth))
    artifacts.add_optional_table(run_id, "val_predictions", table)
    pd.testing.assert_frame_equal(artifacts.read_optional_table(run_id, "val_predictions"), table)
    with pytest.raises(RunError, match="does not match its schema"):
        artifacts.add_optional_table(run_id, "val_predictions", table.drop(columns="prob_cat"))
    assert artifacts.verify_run(run_id) == [] and "val_predictions.parquet" in artifacts.read_json(
        artifacts.run_dir(run_id) / artifacts.MANIFEST_FILE)["files"]
    aligned = c.align({r: artifacts.read_table(r, "predictions") for r in three_runs[:2]})
    scores = c.calibration(aligned, {three_runs[0]: table}, {})
    assert scores.temperature[0] > 0 and scores.validation_images[0] == 300 and pd.isna(scores.temperature[1])
    from cifar.evaluate import store_validation_predictions
    tiny_data = datasets.make_class_folders(tmp_path / "data")
    with pytest.raises(RunError, match="is data .* but run .* was trained on sha256:fixture"):
        store_validation_predictions(three_runs[1], str(tiny_data))


# ---------------------------------------------------------------- the page

def test_compare_page_shows_the_computed_figures(three_runs):
    st.cache_data.clear()
    a, b, third = three_runs
    aligned = c.align({r: artifacts.read_table(r, "predictions") for r in three_runs})
    pairs = c.pairwise(aligned)
    with fixture_runs.past_first_request():
        app = AppTest.from_file(APP, default_timeout=60)
        app.query_params["run"] = three_runs
        app.run()
        app.switch_page("pages/compare.py").run()
        assert not app.exception, app.exception
        labels = {r: d.run_label(r, artifacts.get_run(r).metadata) for r in three_runs}
        row = pairs.iloc[0].to_dict()
        row.update(A=labels[a], B=labels[b])
        assert app.markdown[0].value == f"#### {c.headline(row)}"
        metrics = {m.label: m.value for m in app.metric}
        assert metrics["Accuracy of A"] == f"{aligned.correct[0].mean():.1%}"
        assert metrics["A − B"] == f"{100 * row['difference']:+.1f} points"
        holm = next(f.value for f in app.dataframe if labels[third] in f.value.columns and len(f.value) == 3)
        assert holm.loc[labels[a], labels[b]] == pytest.approx(row["p_holm"])

        app.session_state["compare_view"] = "Where they differ"
        app.run()
        assert not app.exception, app.exception
        counts = c.disagreement_counts(aligned, a, b)
        shown = [m.value for m in app.metric]
        assert shown == [f"{counts[k]:,}" for k in c.FILTERS]
        galleries = pd.concat([artifacts.read_table(r, "gallery") for r in three_runs])
        disagree = c.disagreements(aligned, a, b)
        pictured = int(disagree["index"].isin(galleries["index"]).sum())
        assert any(m.value.startswith(f"**{counts[c.DISAGREE]:,} test images** match, {pictured:,} of them with a "
                                      "stored picture") for m in app.markdown)
        assert len(app.image) == min(pictured, 24)

        app.session_state["compare_view"] = "Calibration"
        app.run()
        assert not app.exception, app.exception
        table = next(f.value for f in app.dataframe if "ECE" in f.value.columns)
        assert table.ECE.to_numpy() == pytest.approx(
            [c.expected_calibration_error(aligned.probabilities[k], aligned.truth) for k in range(3)])
        assert any("No temperature scaling" in i.value for i in app.info)

        other = fixture_runs.make_run("cnn_baseline", seed=9, n_test=300, minutes_after_start=300).run_id
        app.session_state["selected_runs"] = [a, other]
        app.run()
        assert not app.exception, app.exception
        assert any("different numbers of test images (400 and 300)" in w.value for w in app.warning)
        assert any("Choose two or more runs evaluated on the same test set" in i.value for i in app.info)


def test_evaluation_keeps_the_validation_probabilities():
    import keras

    from cifar.evaluate import evaluate
    model = keras.saving.load_model(fixture_runs.tiny_model_file(0))
    x, y, *_ = datasets.tiny_arrays(per_class_train=3, per_class_test=2)
    result = evaluate(model, x[:20], y[:20], x_val=x[20:], y_val=y[20:])
    assert list(result.val_predictions.columns) == list(result.predictions.columns)
    assert result.val_predictions.true_index.tolist() == y[20:].tolist()
    assert result.val_predictions[c.PROB_COLUMNS].to_numpy() == pytest.approx(model.predict(x[20:], verbose=0),
                                                                              abs=1e-6)
    assert evaluate(model, x[:20], y[:20]).val_predictions is None
