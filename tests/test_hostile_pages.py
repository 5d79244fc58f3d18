"""The dashboard attacked: hostile addresses, a marks file that is anything
but marks, runs whose tables pass the schema but hold extreme values, stored
pictures that are not pictures, and a run whose files vanish while a page
reads it. Every page must answer with a readable message, never a traceback
or "This page could not be shown", and keep showing the other runs.

Each failure here was seen before its fix; the pure functions are tested
directly (fast), the pages once each through AppTest over two shared runs."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import fixture_runs
from broken_runs import reseal
from cifar import CLASS_NAMES, artifacts, compare as c, dashboard as d, robustness as r, run_marks
from cifar.errors import RunError
from test_dashboard import APP

CRASH = "could not be shown"  # what pages/_common.friendly_errors says when a page fails unexpectedly
PAGES = ["pages/models.py", "pages/curves.py", "pages/confusion.py", "pages/compare.py", "pages/predict.py",
         "pages/run_details.py", "pages/robustness.py", "pages/retrain.py"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two good runs, written once for the module: (root, first id, second id)."""
    root = tmp_path_factory.mktemp("hostile") / "artifacts"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFAR_ARTIFACTS", str(root))
        first = fixture_runs.make_run("cnn_baseline", seed=1, minutes_after_start=0)
        second = fixture_runs.make_run("cnn_regularized", seed=2, minutes_after_start=60)
    return root, first.run_id, second.run_id


@pytest.fixture
def runs(two_runs, tmp_path, monkeypatch):
    """A private copy of the two runs (a test may damage it): (first id, second id)."""
    root, first, second = two_runs
    shutil.copytree(root, tmp_path / "artifacts", dirs_exist_ok=True)
    monkeypatch.setenv("CIFAR_ARTIFACTS", str(tmp_path / "artifacts"))
    st.cache_data.clear()
    st.cache_resource.clear()
    with fixture_runs.past_first_request():
        yield first, second


def table(run_id: str, name: str) -> pd.DataFrame:
    return pd.read_parquet(artifacts.run_dir(run_id) / f"{name}.parquet")


def replace_table(run_id: str, name: str, frame: pd.DataFrame) -> None:
    """A table written as training would (manifest resealed): only what it holds is hostile."""
    frame.to_parquet(artifacts.run_dir(run_id) / f"{name}.parquet", index=False)
    reseal(run_id)


def change_metadata(run_id: str, **changes) -> None:
    path = artifacts.run_dir(run_id) / artifacts.METADATA_FILE
    metadata = artifacts.read_json(path)
    for key, value in changes.items():
        metadata[key] = {**metadata[key], **value} if isinstance(value, dict) else value
    artifacts.write_json_atomic(path, metadata)
    reseal(run_id)


def robustness_table(**columns) -> pd.DataFrame:
    rows = [{"corruption": name, "severity": severity, "n_images": 100, "n_correct": 50, "accuracy": 0.5,
             "ci_low": 0.4, "ci_high": 0.6, "seed": 0} for name, severity in r.conditions()]
    return pd.DataFrame(rows).assign(**columns)


def open_at(page: str, run_ids: list[str], **params) -> AppTest:
    """`page` opened from an address holding `run_ids` and `params`, as a pasted link is."""
    app = AppTest.from_file(APP, default_timeout=60)
    app.query_params["run"] = run_ids
    for key, value in params.items():
        app.query_params[key] = value
    if page != PAGES[0]:
        app.switch_page(page)
    return app.run()


def assert_usable(app: AppTest, page: str) -> None:
    """No traceback and no "could not be shown": every message is one a person can act on."""
    assert not app.exception, (page, [e.value for e in app.exception])
    crashed = [e.value for e in app.error if CRASH in e.value]
    assert not crashed, (page, crashed)


# ---------------------------------------------------------------- the address bar

HOSTILE_RUNS = ["../../etc/passwd", "", "20991120T090000Z-cnn_baseline-0001", "x" * 10_000, "💥\u202e\x00"]
# Every key a page binds to the address, emptied: Streamlit leaves such a control unset (None),
# even one marked required; unknown values are ignored by Streamlit itself.
EMPTIED = {key: "" for key in ("models_view", "model", "search", "study", "all_runs", "details", "metric", "x",
                               "smooth", "shade", "first", "second", "share", "true_class", "predicted_class",
                               "score", "details_run", "details_view", "compare_view")}
TAB_OF = {"pages/confusion.py": [("confusion_view", "Most-confused pairs"), ("confusion_view", "Per-class scores")]}


@pytest.mark.parametrize("page", PAGES)
def test_an_address_of_garbage_leaves_every_page_usable(runs, page):
    for tab_key, tab in TAB_OF.get(page, [(None, None)]):
        params = {**EMPTIED, **({tab_key: tab} if tab_key else {})}
        app = open_at(page, [*runs, *HOSTILE_RUNS], **params)
        assert_usable(app, page)
        # The garbage ids dropped out; the runs named beside them are still the selection.
        assert app.session_state["selected_runs"] == list(runs), page
        assert app.query_params["run"] == list(runs), page


def test_a_run_id_given_a_thousand_times_empty_is_no_selection(runs):
    app = open_at(PAGES[1], [""] * 1000)
    assert_usable(app, PAGES[1])
    assert app.session_state["selected_runs"] == sorted(runs)  # the default view instead


# ---------------------------------------------------------------- the marks file

@pytest.mark.parametrize("content", [
    "{{{ not json", "[1, 2]", json.dumps({"reference": 5, "hidden": "abc"}),
    json.dumps({"reference": {"a": 1}, "hidden": [["x"], 3, "../../etc"]}), "[" * 100_000, "\x00\x01"])
def test_a_marks_file_that_is_not_marks_means_no_marks(content, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_ARTIFACTS", str(tmp_path))
    artifacts.marks_path().write_text(content)
    assert run_marks.read_marks() == run_marks.Marks()


def test_a_marks_path_that_is_a_folder_a_pipe_or_huge_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_ARTIFACTS", str(tmp_path))
    path = artifacts.marks_path()
    path.mkdir()
    assert run_marks.read_marks() == run_marks.Marks()
    path.rmdir()
    os.mkfifo(path)  # reading a pipe would wait for a writer forever, and the page with it
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reading = pool.submit(run_marks.read_marks)
        try:
            assert reading.result(timeout=10) == run_marks.Marks()
        finally:
            if not reading.done():  # let the stuck reader finish, so the test fails instead of hanging
                with open(path, "w"):
                    pass
    path.unlink()
    run_id = "20261120T090000Z-cnn_baseline-0001"
    path.write_text(json.dumps({"hidden": [run_id], "padding": "x" * run_marks.MAX_BYTES}))
    assert run_marks.read_marks() == run_marks.Marks()
    path.write_text(json.dumps({"hidden": [run_id, "not-a-run"]}))
    assert run_marks.read_marks().hidden == {run_id}


def test_marks_naming_runs_that_do_not_exist_hide_nothing_else(runs):
    first, second = runs
    missing = "20991120T090000Z-cnn_baseline-0001"
    artifacts.marks_path().write_text(json.dumps({"reference": [missing], "hidden": [missing, first]}))
    app = open_at(PAGES[0], [])
    assert_usable(app, PAGES[0])
    assert app.session_state["selected_runs"] == [second]


# ---------------------------------------------------------------- valid tables, extreme values

def test_extreme_metrics_give_no_interval_instead_of_failing():
    for accuracy, images in ((np.inf, 200), (np.nan, 200), (1.5, 200), (-0.2, 200), (0.5, 0), (0.5, -5),
                             (0.5, np.inf), (None, 200)):
        assert d.accuracy_interval_text({"test_accuracy": accuracy, "n_test": images}) is None, (accuracy, images)
    assert d.accuracy_interval_text({"test_accuracy": 0.9, "n_test": 1000}) == "88.0% to 91.7%"
    table = d.comparison_table([("20261120T090000Z-cnn_baseline-0001", {"model": "cnn_baseline"})],
                               {"20261120T090000Z-cnn_baseline-0001": {"test_accuracy": np.inf, "n_test": 10,
                                                                       "latency_ms": -np.inf}})
    assert table[d.ACCURACY_CI].isna().all()


def test_curves_leave_out_runs_that_did_not_time_their_epochs():
    timed = pd.DataFrame({"epoch": [1, 2], "loss": [2.0, 1.0], "accuracy": [0.3, 0.6], "seconds": [10.0, 10.0],
                          "elapsed_seconds": [12.0, 24.0]})
    untimed = timed[["epoch", "loss", "accuracy"]]
    histories = {"timed": timed, "untimed": untimed}
    for axis in ("Wall time (minutes)", "Training time (minutes)"):
        assert d.runs_without_x(histories, axis) == ["untimed"]
        assert set(d.curves_long(histories, "Accuracy", axis).run) == {"timed"}
    assert d.runs_without_x(histories, "Epoch") == []
    assert d.training_seconds(untimed) is None


def test_a_repeated_epoch_counts_once_in_the_gap_table():
    history = pd.DataFrame({"epoch": [1, 1, 2], "loss": [2.0, 1.5, 1.0], "accuracy": [0.3, 0.4, 0.8],
                            "val_loss": [2.1, 1.6, 1.4], "val_accuracy": [0.3, 0.35, 0.6]})
    gap = d.generalization_gap({"run": history}, {"run": 1})
    assert gap["Validation accuracy"].tolist() == [0.35]  # epoch 1 as last written
    assert gap["Accuracy gap at last epoch"].iloc[0] == pytest.approx(0.2)


def test_label_smoothing_that_is_not_a_number_is_left_out_of_the_note():
    assert d.label_smoothing_note({"a": "lots", "b": 0.1}) is None
    assert "a: 0, b: 0.1" in d.label_smoothing_note({"a": None, "b": 0.1, "c": [1]})


def test_per_class_scores_go_by_class_index_not_by_the_names_beside_it():
    frame = pd.DataFrame({"class_index": range(10), "class_name": ["cat"] * 10, "precision": np.linspace(0, 0.9, 10),
                          "recall": 0.5, "f1": 0.5, "support": 10})
    table = d.per_class_comparison({"run": frame.iloc[:9], "other": pd.concat([frame, frame])}, "precision")
    assert table.Class.tolist() == list(CLASS_NAMES)
    assert table.run.iloc[1] == pytest.approx(0.1) and np.isnan(table.run.iloc[9])
    assert table.other.tolist() == pytest.approx(frame.precision.tolist())


def test_gpus_and_stored_pictures_of_any_kind_are_shown_or_refused_in_words():
    assert "1, None" in d.environment_table({"environment": {"hardware": {"gpus": [1, None]}}}).Value.tolist()
    assert d.stored_picture(b"not a png") is None and d.enlarge_png(b"") is None
    gallery = pd.DataFrame({"index": [7], "true_index": [3], "pred_index": [3], "correct": [True],
                            "png": [b"not a png"]})
    predictions = gallery[["index", "true_index", "pred_index"]]
    with pytest.raises(RunError, match="stored picture of test image #7 is damaged"):
        d.pick_random_image(gallery, predictions, np.random.default_rng(0))
    big = fixture_runs.synthetic_image(3, np.random.default_rng(0)).repeat(3, axis=0).repeat(3, axis=1)
    import io
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    assert d.enlarge_png(buffer.getvalue()).shape == (128, 128, 3)  # any size comes out as 32x32, enlarged


def test_robustness_tables_without_a_clean_row_or_a_seed_are_summarised():
    full = robustness_table()
    tables = {"no clean": full[full.corruption != r.CLEAN], "no seed": full.drop(columns="seed"), "full": full}
    summary = r.summary(tables, "no clean").set_index("Run")
    assert np.isnan(summary.loc["no clean", "Clean accuracy"])
    assert summary.loc["full", "Mean corruption accuracy"] == pytest.approx(0.5)
    assert not r.comparable(tables)
    assert r.comparable({"full": full, "again": full})


def test_cleanlab_is_skipped_with_a_reason_when_it_cannot_rank():
    truth = np.full(20, 3)
    probabilities = np.full((2, 20, 10), 0.1)
    one_class = c.Aligned(("a", "b"), np.arange(20), truth, probabilities, np.full((2, 20), 3))
    assert "two classes" in c.cleanlab_unavailable(one_class)
    assert c.cleanlab_issues(one_class).empty
    probabilities = probabilities.copy()
    probabilities[0, 0, 0] = np.nan
    missing = c.Aligned(("a", "b"), np.arange(20), np.arange(20) % 10, probabilities, np.full((2, 20), 3))
    assert "probability for every class" in c.cleanlab_unavailable(missing)
    assert c.cleanlab_issues(missing).empty


# ---------------------------------------------------------------- pages over an extreme run

def test_every_page_over_a_run_of_extreme_but_valid_tables(runs):
    extreme, good = runs
    metrics = table(extreme, "metrics").assign(test_accuracy=np.inf, test_loss=np.inf, latency_ms=-np.inf)
    replace_table(extreme, "metrics", metrics)
    history = table(extreme, "history")[["epoch", "loss", "accuracy"]]
    replace_table(extreme, "history", pd.concat([history, history.tail(1)], ignore_index=True))
    replace_table(extreme, "per_class", table(extreme, "per_class").assign(class_name="cat"))
    # One picture (no slider to pick another on Robustness), and not a picture at all.
    replace_table(extreme, "gallery", table(extreme, "gallery").head(1).assign(
        true_index=CLASS_NAMES.index("dog"), pred_index=CLASS_NAMES.index("cat"), correct=False, png=b"not a png"))
    replace_table(extreme, "robustness", robustness_table().query("corruption != 'clean'").drop(columns="seed"))
    replace_table(good, "robustness", robustness_table())
    change_metadata(extreme, environment={"hardware": {"label": "x", "gpus": [1, None]}},
                    config={"label_smoothing": "lots"})
    views = [(PAGES[0], {}), (PAGES[0], {"models_view": "Accuracy against cost"}),
             (PAGES[1], {"x": "Wall time (minutes)", "metric": "Loss"}),
             (PAGES[2], {"confusion_view": "Most-confused pairs"}), (PAGES[2], {"confusion_view": "Per-class scores"}),
             (PAGES[3], {"compare_view": "Where they differ"}), (PAGES[5], {"details_view": "Environment"}),
             (PAGES[2], {"confusion_view": "Most-confused pairs", "true_class": "dog", "predicted_class": "cat"}),
             (PAGES[6], {})]
    for page, params in views:
        app = open_at(page, [extreme, good], **params)
        assert_usable(app, page)
        if params.get("true_class") == "dog":
            assert any("stored picture is damaged" in caption.value for caption in app.caption)
        if page == PAGES[6]:
            assert any("stored picture is not an image" in w.value for w in app.warning)
            summary = app.dataframe[0].value  # both runs, the one without a clean row too
            assert len(summary) == 2 and d.run_label(good, artifacts.get_run(good).metadata) in summary.Run.tolist()
    assert any("did not record the time of each epoch" in i.value for i in open_at(PAGES[1], [extreme, good],
                                                                                  x="Wall time (minutes)").info)
    app = open_at(PAGES[4], [extreme, good])
    app.button[0].click().run()
    assert_usable(app, PAGES[4])
    assert any("stored picture of test image" in e.value for e in app.error)


def test_a_run_whose_files_vanish_while_a_page_reads_it(runs):
    gone, good = runs
    app = open_at(PAGES[0], [gone, good])  # lists the runs (cached until the runs folder changes)
    folder = artifacts.run_dir(gone)
    before = folder.stat()
    for name in ("history", "confusion", "predictions", "per_class"):
        (folder / f"{name}.parquet").unlink()
    # The folder keeps its time, so the cached listing still names the run.
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    for page in PAGES[1:4]:
        app.switch_page(page).run()
        assert_usable(app, page)
        assert any("is left out here" in w.value and "missing history.parquet" in w.value for w in app.warning), page


def test_a_run_deleted_between_its_check_and_its_read(runs, monkeypatch):
    gone, good = runs

    def vanishing(read):
        def read_or_vanish(first, *args, **kwargs):
            if gone in (first, getattr(first, "run_id", None)):
                raise FileNotFoundError(2, "No such file or directory")
            return read(first, *args, **kwargs)
        return read_or_vanish
    monkeypatch.setattr(artifacts, "read_table", vanishing(artifacts.read_table))
    monkeypatch.setattr(artifacts, "read_metrics", vanishing(artifacts.read_metrics))
    app = open_at(PAGES[1], [gone, good])
    assert_usable(app, PAGES[1])
    [notice] = [w.value for w in app.warning if gone in w.value]
    assert "changed on disk while this page read them" in notice
    assert app.session_state["selected_runs"] == [good]
    assert len(app.get("plotly_chart")) == 1


def test_a_listing_survives_deep_json_and_a_run_id_that_is_no_date(runs):
    deep, good = runs
    no_date = "20261399T990000Z-cnn_baseline-0001"  # the shape of a run id, but month 13
    shutil.copytree(artifacts.run_dir(good), artifacts.runs_dir() / no_date)
    (artifacts.run_dir(deep) / artifacts.METADATA_FILE).write_text("[" * 100_000)
    listed, skipped = artifacts.scan_runs()
    assert [run.run_id for run in listed] == [good]
    reasons = {s.name: s.reason for s in skipped}
    assert "metadata.json is unreadable (ValueError)" in reasons[deep]
    assert "its time is not a date" in reasons[no_date]


# ---------------------------------------------------------------- the jobs database

def test_the_retrain_page_lists_jobs_whose_records_are_damaged_with_the_others(runs):
    import sqlite3
    import time

    from cifar import jobs
    jobs.get_backend().list_jobs()  # creates the database with its schema
    now = time.time()
    with sqlite3.connect(artifacts.jobs_database_path()) as con:
        for suffix, config, payload, created in (("00a1", "not json", "{}", now), ("00a2", "{}", "[1]", 1e300),
                                                 ("00a3", '{"epochs": "many"}', "{}", now)):
            run_id = f"20261120T090000Z-cnn_baseline-{suffix}"
            con.execute("INSERT INTO jobs (run_id, model, kind, config, payload, config_key, status, created_at, "
                        "queued_at) VALUES (?, 'cnn_baseline', 'train', ?, ?, ?, 'failed', ?, ?)",
                        (run_id, config, payload, run_id, created, now))
    app = AppTest.from_file(APP, default_timeout=60)
    app.secrets.update({"retrain": {}})
    app.run()
    app.switch_page(PAGES[-1]).run()
    assert_usable(app, PAGES[-1])
    assert not [e.value for e in app.error if "job" in e.value.lower()]
    shown = " ".join(str(getattr(element, "value", "")) for element in app.main)
    assert all(f"00a{i}" in shown for i in (1, 2, 3)), shown[:2000]


@pytest.mark.parametrize("damage", ["garbage", "folder"])
def test_the_retrain_page_says_when_the_jobs_database_is_damaged(runs, damage):
    database = artifacts.jobs_database_path()
    database.parent.mkdir(parents=True, exist_ok=True)
    if damage == "garbage":
        database.write_bytes(b"this is not a database " * 100)
    else:
        database.mkdir()
    app = AppTest.from_file(APP, default_timeout=60)
    app.secrets.update({"retrain": {}})
    app.run()
    app.switch_page(PAGES[-1]).run()
    assert_usable(app, PAGES[-1])
    assert any("job database" in e.value and "cannot be used" in e.value for e in app.error), [
        e.value for e in app.error]
    assert app.selectbox(key="robustness_run").options  # the forms are still there


# ---------------------------------------------------------------- runs that read alike

def test_runs_that_read_alike_are_both_shown(runs):
    first, _ = runs
    twin = first.replace("0000Z", "0030Z")  # the same model, suffix and minute: the same label
    shutil.copytree(artifacts.run_dir(first), artifacts.runs_dir() / twin)
    labels = d.distinct_labels({first: "a", twin: "a", "other": "b"})
    assert labels == {first: f"a · {first}", twin: f"a · {twin}", "other": "b"}
    app = open_at(PAGES[1], [first, twin])
    assert_usable(app, PAGES[1])
    gap = next(f.value for f in app.dataframe if "Run" in f.value.columns)
    label = d.run_label(first, artifacts.get_run(first).metadata)
    assert sorted(gap.Run) == sorted(f"{label} · {r}" for r in (first, twin))
