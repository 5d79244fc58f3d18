"""Corruption robustness: intervals, the stratified subset, the evaluation
writing its table atomically into a published run, mCE, and the Robustness page."""

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import fixture_runs
from cifar import artifacts, cli, robustness as r
from cifar.compare import accuracy_interval
from cifar.corruptions import CORRUPTIONS, SEVERITIES
from cifar.errors import RunError
from datasets import make_class_folders

APP = fixture_runs.REPO / "streamlit_app.py"


def fake_table(clean: float, drop: float, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """A robustness table whose accuracy falls by `drop` per severity."""
    rows = [(name, s, clean - drop * s) for name, s in r.conditions()]
    table = pd.DataFrame(rows, columns=["corruption", "severity", "accuracy"])
    table["n_images"] = n
    table["n_correct"] = np.round(table.accuracy * n).astype(int)
    table["accuracy"] = table.n_correct / n
    table["ci_low"], table["ci_high"] = accuracy_interval(table.n_correct, n)
    table["seconds"], table["seed"], table["data_fingerprint"] = 0.1, seed, "fixture"
    return table


def test_wilson_interval_known_values():
    low, high = accuracy_interval([8, 0, 10], [10, 10, 10])
    np.testing.assert_allclose([low[0], high[0]], [0.4902, 0.9433], atol=1e-4)
    assert low[1] == pytest.approx(0) and 0.27 < high[1] < 0.28
    assert high[2] == pytest.approx(1) and low[2] == pytest.approx(1 - 0.2775, abs=1e-3)


def test_subset_is_stratified_seeded_and_sorted():
    labels = np.repeat(np.arange(10), [50] * 9 + [5])  # the last class is short of images
    chosen = r.stratified_subset(labels, 100, seed=1)
    assert len(chosen) == 100 and len(set(chosen)) == 100 and (np.diff(chosen) > 0).all()
    counts = np.bincount(labels[chosen], minlength=10)
    assert counts[9] == 5 and counts[:9].min() >= 10 and counts.max() - counts[:9].min() <= 1
    np.testing.assert_array_equal(chosen, r.stratified_subset(labels, 100, seed=1))
    assert not np.array_equal(chosen, r.stratified_subset(labels, 100, seed=2))
    np.testing.assert_array_equal(r.stratified_subset(labels, 10_000), np.arange(len(labels)))


def test_summary_gives_the_papers_mce_against_the_reference():
    tables = {"base": fake_table(0.8, 0.08), "better": fake_table(0.9, 0.04), "same": fake_table(0.8, 0.08)}
    summary = r.summary(tables, "base").set_index("Run")
    assert summary.loc["base", "mCE"] == pytest.approx(1.0) and summary.loc["same", "mCE"] == pytest.approx(1.0)
    # Errors summed over severities: base 5*0.2 + 0.08*15 = 2.2, better 5*0.1 + 0.04*15 = 1.1.
    assert summary.loc["better", "mCE"] == pytest.approx(0.5)
    assert summary.loc["better", "Relative mCE"] == pytest.approx(0.5)  # 0.6 extra error against 1.2
    assert summary.loc["better", "Mean corruption accuracy"] == pytest.approx(0.9 - 0.04 * 3)
    assert summary.loc["base", "Relative drop"] == pytest.approx(0.24 / 0.8)
    assert summary.loc["base", "Clean 95% interval"].startswith("0.7")
    assert r.summary(tables, None)["mCE"].isna().all()


@pytest.fixture()
def tiny_run(tmp_path):
    run = fixture_runs.make_run("cnn_baseline")
    return run.run_id, str(make_class_folders(tmp_path, per_class_train=1, per_class_test=3))


def test_evaluation_writes_every_corruption_and_severity_into_the_run(tiny_run, capsys):
    run_id, data = tiny_run
    assert cli.main(["evaluate", run_id, "--robustness", "--images", "20", "--data", data]) == 0
    assert "mean corruption accuracy" in capsys.readouterr().out
    table = artifacts.read_table(run_id, r.TABLE)
    assert set(zip(table.corruption, table.severity)) == {(r.CLEAN, 0)} | {
        (name, s) for name in CORRUPTIONS for s in SEVERITIES}
    assert (table.n_images == 20).all() and table.accuracy.between(0, 1).all()
    assert (table.ci_low <= table.accuracy).all() and (table.accuracy <= table.ci_high).all()
    assert artifacts.verify_run(run_id) == []  # the manifest lists the new table with its checksum
    assert "robustness.parquet" in artifacts.read_json(artifacts.run_dir(run_id) / artifacts.MANIFEST_FILE)["files"]


def _snapshot(run_id):
    folder = artifacts.run_dir(run_id)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_crash_midway_leaves_the_run_as_it_was(tiny_run, monkeypatch):
    run_id, data = tiny_run
    artifacts.add_optional_table(run_id, r.TABLE, fake_table(0.5, 0.01))  # an earlier evaluation
    before = _snapshot(run_id)
    calls, real_corrupt = [], r.corrupt

    def crash_on_the_fifth(images, name, severity, seed=0):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as Ctrl-C would
        return images
    monkeypatch.setattr(r, "corrupt", crash_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        r.evaluate_run(run_id, data, n_images=10, progress=False)
    assert _snapshot(run_id) == before and artifacts.verify_run(run_id) == []

    def crash_while_renaming(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(r, "corrupt", real_corrupt)
    monkeypatch.setattr(artifacts.os, "replace", crash_while_renaming)
    with pytest.raises(OSError):
        artifacts.add_optional_table(run_id, r.TABLE, fake_table(0.9, 0.01))
    assert _snapshot(run_id) == before  # no temporary file left behind either


def test_missing_table_and_bad_data_say_what_to_do(tiny_run, capsys):
    run_id, _ = tiny_run
    with pytest.raises(RunError, match="no robustness table"):
        artifacts.read_table(run_id, r.TABLE)
    assert cli.main(["evaluate", run_id, "--robustness", "--data", "/no/such/copy"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_robustness_page_shows_summary_chart_and_examples():
    st.cache_data.clear()
    base = fixture_runs.make_run("cnn_baseline", seed=1)
    other = fixture_runs.make_run("cnn_regularized", seed=2, minutes_after_start=60)
    bare = fixture_runs.make_run("vgg16_transfer", seed=3, minutes_after_start=120)
    artifacts.add_optional_table(base.run_id, r.TABLE, fake_table(0.8, 0.08))
    artifacts.add_optional_table(other.run_id, r.TABLE, fake_table(0.9, 0.04))
    with fixture_runs.past_first_request():
        app = AppTest.from_file(APP, default_timeout=60)
        app.query_params["run"] = [base.run_id, other.run_id, bare.run_id]
        app.run()
        app.switch_page("pages/robustness.py").run()
    assert not app.exception, app.exception
    assert any(bare.run_id in c.value for c in app.code)  # the command that computes the missing table
    summary = next(f.value for f in app.dataframe if "mCE" in f.value.columns).set_index("Run")
    assert summary["mCE"].tolist() == pytest.approx([1.0, 0.5])
    assert len(app.get("plotly_chart")) == 1
    assert len(app.image) == len(CORRUPTIONS)  # one row of five severities per corruption
    assert any("frost" in c.value.lower() for c in app.caption)  # the stand-in is said
