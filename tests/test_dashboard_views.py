"""What a stakeholder sees first: results before architecture, reference and
hidden runs, subset and short runs labelled, readable tables and charts, and
every view kept in a copied link. Pure functions first, then pages (AppTest)."""

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import fixture_runs
from broken_runs import reseal
from cifar import artifacts, auth, dashboard as d, jobs, run_marks
from test_dashboard import APP, PAGES, frame, open_page


@pytest.fixture(autouse=True)
def fresh_server_state():
    st.cache_data.clear()
    st.cache_resource.clear()
    with fixture_runs.past_first_request():
        yield


def rewrite_metadata(run_id: str, **changes) -> dict:
    """Change a fixture run's metadata (config keys go under "config")."""
    path = artifacts.run_dir(run_id) / artifacts.METADATA_FILE
    metadata = artifacts.read_json(path)
    config = {**metadata["config"], **changes.pop("config", {})}
    metadata = {**metadata, **changes, "config": config}
    artifacts.write_json_atomic(path, metadata)
    reseal(run_id)  # a changed file no longer matches the manifest, and the run would be skipped
    return metadata


# ---------------------------------------------------------------- labels and the default view

def test_subset_and_short_runs_are_labelled_and_never_displace_full_runs():
    def run(day, model, **metadata):
        return f"202611{day:02d}T000000Z-{model}-{day:04x}", {"model": model, **metadata}
    full, subset = run(2, "cnn_baseline"), run(3, "cnn_baseline", config={"limit_per_class": 50})
    short = run(4, "cnn_baseline", epochs_planned=1, recipe_epochs=15)
    only_quick = run(5, "fast_cnn", config={"limit_per_class": 50})
    hidden, reference = run(6, "cnn_regularized"), run(1, "vgg16_transfer")
    runs = [reference, full, subset, short, only_quick, hidden]
    assert d.run_label(*subset).endswith("· subset 50/class")
    assert d.run_label(*short).endswith("· short 1/15 epochs")
    assert d.run_label(*reference, reference=True).startswith("★ vgg16_transfer")
    assert d.run_label(*full) == "cnn_baseline · 0002 · 02 Nov 00:00"
    assert d.run_type(short[1], False) == "Short 1/15 epochs" and d.run_type(full[1], True) == "★ Reference"
    assert d.run_type(full[1], False) == "Full run"
    chosen = d.default_selection(runs, reference=frozenset({reference[0]}), hidden=frozenset({hidden[0]}))
    # the full cnn_baseline run beats its two newer quick runs; fast_cnn has only a quick run, so it shows
    assert chosen == sorted([reference[0], full[0], only_quick[0]])


def test_marks_are_one_file_beside_the_runs_and_survive_damage():
    run_id = "20261120T090000Z-cnn_baseline-0001"
    assert run_marks.read_marks() == run_marks.Marks()
    run_marks.set_mark(run_id, "reference", True, by="test")
    run_marks.set_mark(run_id, "hidden", True)
    run_marks.set_mark(run_id, "hidden", False)
    assert run_marks.read_marks() == run_marks.Marks(reference=frozenset({run_id}))
    assert not artifacts.runs_dir().exists()  # marking writes no run folder
    with pytest.raises(Exception, match="not a run id"):
        run_marks.set_mark("../etc", "hidden", True)
    with pytest.raises(Exception, match="unknown mark"):
        run_marks.set_mark(run_id, "favourite", True)
    artifacts.marks_path().write_text("{ damaged")
    assert run_marks.read_marks() == run_marks.Marks()


def test_a_partial_run_is_never_crowned_best():
    table = pd.DataFrame({d.SOURCE: d.MEASURED_SOURCE, "partial": [False, True], d.ACCURACY: [0.9, 0.1],
                          d.LOSS: [0.5, 2.0], d.F1: np.nan, d.RECALL: np.nan, d.TRAIN_MINUTES: [90.0, 0.5],
                          d.LATENCY: [16.0, 2.0], d.PARAMS: [2e6, 2e6]})
    best = d.best_cells(table)
    assert best[d.TRAIN_MINUTES].tolist() == [True, False] and best[d.LATENCY].tolist() == [True, False]


def test_study_rows_have_unique_names_and_the_table_puts_results_first():
    rows = d.study_rows(d.study_results())
    assert rows[d.RUN].is_unique
    assert "Study: ResNet50 TransLearn (Alexandre, 24 epochs)" in set(rows[d.RUN])
    assert d.RESULT_COLUMNS[:6] == [d.RUN, d.ACCURACY, d.ACCURACY_CI, d.LOSS, d.F1, d.LATENCY]
    assert set(d.TABLE_COLUMNS) == set(d.RESULT_COLUMNS) | set(d.DETAIL_COLUMNS)


# ---------------------------------------------------------------- curves, confusion, predict, details

def test_no_best_epoch_star_without_validation_or_with_one_epoch():
    validated = pd.DataFrame({"epoch": [1, 2, 3], "accuracy": [0.5, 0.6, 0.7], "val_accuracy": [0.4, 0.6, 0.5],
                              "learning_rate": [1e-3] * 3})
    no_validation = validated.drop(columns="val_accuracy")
    one_epoch = validated.iloc[:1]
    histories = {"validated": validated, "no validation": no_validation, "one epoch": one_epoch}
    best = {"validated": 2, "no validation": 3, "one epoch": 1}
    for metric in ("Accuracy", "Learning rate"):
        assert d.best_epoch_points(histories, best, metric).run.tolist() == ["validated"], metric
    assert d.label_smoothing_note({"a": 0.0, "b": None}) is None
    assert "not comparable" in d.label_smoothing_note({"a": 0.2, "b": 0.0})


def test_confusion_cells_never_show_a_signed_zero():
    assert [d.cell_text(v, True, True) for v in (0.004, -0.005, 0.0049, 0.013, -0.2)] == ["", "", "", "+1%", "-20%"]
    assert [d.cell_text(v, False, False) for v in (0, 3)] == ["", "3"]


def test_random_draw_follows_the_whole_test_set_not_the_mistakes():
    made = fixture_runs.make_run("cnn_regularized", n_test=1000, accuracy=0.9)
    gallery, predictions = (artifacts.read_table(made.run_id, t) for t in ("gallery", "predictions"))
    assert (~gallery.correct).mean() > 0.5  # the stored pictures are mostly mistakes
    rng = np.random.default_rng(0)
    draws = [d.pick_random_image(gallery, predictions, rng) for _ in range(400)]
    accuracy = (predictions.true_index == predictions.pred_index).mean()
    assert abs(np.mean([draw["correct"] for draw in draws]) - accuracy) < 0.06
    assert all(draw["index"] in set(gallery["index"]) for draw in draws)


def test_prediction_rows_say_right_or_wrong_and_flag_unsure_guesses():
    results = {"sure": ([("cat", 0.9), ("dog", 0.05), ("frog", 0.02)], None, 0.004),
               "unsure": ([("dog", 0.4), ("cat", 0.3), ("frog", 0.1)], None, 0.006)}
    rows = d.prediction_rows(results, "cat").set_index("Model run")
    assert rows.Correct.tolist() == ["Yes", "No"]
    assert rows.Confidence.tolist() == ["High", "Low (unsure)"]
    assert rows["Time (ms)"].tolist() == pytest.approx([4.0, 6.0])
    orange = np.full((32, 32, 3), (255, 140, 0), dtype=np.uint8)
    assert d.unlike_cifar(orange) and d.unlike_cifar(fixture_runs.synthetic_image(3, np.random.default_rng(0))) is None


def test_run_settings_read_as_words_and_rounded_numbers():
    metadata = fixture_runs.make_run("cnn_regularized").metadata
    settings = d.settings_table({**metadata, "wall_seconds": 5394.962295151003}).set_index("Setting").Value
    assert settings["Batch size"] == "64" and settings["Data augmentation"] == "Yes"
    assert settings["Stopped early"] == d.yes_no(metadata["stopped_early"])
    assert settings["Early stopping patience"] == str(metadata["config"]["early_stopping_patience"])
    assert settings["Wall time"] == "89.9 min" and settings["Label smoothing"] == "0"
    assert d.display_value(0.123456789) == "0.1235" and d.display_value(None) == "—"


def test_retrain_data_sources_are_only_paths_that_exist_here(tmp_path):
    here = tmp_path / "cifar10.tar.gz"
    here.write_bytes(b"")
    for source, minutes in ((str(here), 0), ("../shared/cifar10.tar.gz", 10), ("/nowhere/cifar10.tar.gz", 20),
                            ("cifar10-jpeg.tar.gz", 30)):
        rewrite_metadata(fixture_runs.make_run("cnn_baseline", seed=minutes, minutes_after_start=minutes).run_id,
                         config={"data": source})
    assert jobs.data_source_choices() == [str(here), "keras"]


# ---------------------------------------------------------------- pages

def test_models_page_shows_the_selection_then_every_visible_run_with_details_on_demand():
    made = fixture_runs.make_study_runs()
    quick = fixture_runs.make_run("cnn_baseline", seed=9, epochs=1, minutes_after_start=300)
    rewrite_metadata(quick.run_id, config={"limit_per_class": 50})
    run_marks.set_mark(made[3].run_id, "hidden", True)
    app = open_page(PAGES[0])
    selection = app.sidebar.multiselect[0]
    assert quick.run_id not in selection.value and made[0].run_id in selection.value  # the full run stays
    assert made[3].run_id not in selection.options and made[3].run_id not in selection.value
    table = frame(app, d.ACCURACY)
    assert set(table.run_id.dropna()) == set(selection.value)
    assert any("selected in the sidebar" in c.value for c in app.caption)
    app.toggle(key="all_runs").set_value(True).run()
    measured = frame(app, d.ACCURACY).dropna(subset=["run_id"]).set_index("run_id")
    assert set(measured.index) == {r.run_id for r in made[:3]} | {quick.run_id}  # the hidden one stays out
    assert measured.loc[quick.run_id, d.RUN_TYPE].startswith("Subset 50/class")


def test_a_copied_link_reopens_the_same_confusion_pair_and_run_details_run():
    made = fixture_runs.make_study_runs()
    ids = [r.run_id for r in made]
    app = AppTest.from_file(APP, default_timeout=60)
    app.switch_page(PAGES[2])  # the link's page opens first
    app.query_params.update({"run": ids, "first": made[2].run_id, "second": made[0].run_id})
    app.run()
    assert not app.exception, app.exception
    assert (app.selectbox(key="first").value, app.selectbox(key="second").value) == (made[2].run_id, made[0].run_id)
    app.selectbox(key="first").set_value(made[1].run_id).run()
    assert app.query_params["first"] in (made[1].run_id, [made[1].run_id])

    app.selectbox(key="second").set_value(None).run()
    assert app.query_params["second"] in ("none", ["none"]) and not app.get("plotly_chart")[1:]

    models = AppTest.from_file(APP, default_timeout=60)
    models.query_params.update({"run": ids, "search": "resnet", "study": "false"})
    models.run()
    assert frame(models, d.ACCURACY).run_id.tolist() == [made[3].run_id]  # search and toggle came from the link

    details = AppTest.from_file(APP, default_timeout=60)
    details.switch_page(PAGES[4])
    details.query_params.update({"run": ids, "details_run": made[3].run_id})
    details.run()
    assert details.selectbox(key="details_run").value == made[3].run_id


def open_directly(page: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60)
    app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def test_the_team_marks_runs_on_run_details_with_retraining_rights(monkeypatch):
    made = fixture_runs.make_run("cnn_baseline")
    app = open_directly(PAGES[4])
    app.button[0].click().run()  # open mode: anyone may, as for retraining
    assert run_marks.read_marks().reference == {made.run_id}
    assert app.selectbox(key="details_run").options[0].startswith("★ cnn_baseline")

    monkeypatch.setenv(auth.TOKEN_ENV, "s3cret")
    app.button[1].click().run()
    assert made.run_id not in run_marks.read_marks().hidden
    assert any("Not changed" in e.value and "token" in e.value for e in app.error)
    app.session_state["marks_token"] = "s3cret"
    app.button[1].click().run()
    assert run_marks.read_marks().hidden == {made.run_id}


def test_learning_curves_explain_a_run_without_validation():
    made = fixture_runs.make_run("cnn_regularized")
    path = artifacts.run_dir(made.run_id) / "history.parquet"
    pd.read_parquet(path).drop(columns=["val_accuracy", "val_loss"]).to_parquet(path, index=False)
    reseal(made.run_id)
    app = open_directly(PAGES[1])
    assert any("No gap for" in i.value and "no validation split" in i.value for i in app.info)
    assert not [f for f in app.dataframe if "Accuracy gap at best epoch" in f.value.columns]
    assert '"showlegend":true' in app.get("plotly_chart")[0].proto.spec.replace(" ", "")
