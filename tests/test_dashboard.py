"""The dashboard: data shaping in cifar/dashboard.py, then every page through
Streamlit's AppTest over fixture runs (none, one, several, a broken one),
asserting what each page shows."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

import broken_runs
import fixture_runs
from cifar import CLASS_NAMES, artifacts, dashboard as d, streamlit_compat

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "streamlit_app.py"
PAGES = ["pages/models.py", "pages/curves.py", "pages/confusion.py", "pages/predict.py", "pages/run_details.py"]
CAT, DOG = CLASS_NAMES.index("cat"), CLASS_NAMES.index("dog")


@pytest.fixture(autouse=True)
def fresh_server_state(request):
    """Empty caches and, except for the test of a server's first request,
    the state every later request sees (see fixture_runs.past_first_request)."""
    st.cache_data.clear()
    st.cache_resource.clear()
    if "first_request" in request.node.name:
        yield
        return
    with fixture_runs.past_first_request():
        yield


def open_page(page: str = PAGES[0], runs: list[str] | None = None) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60)
    if runs is not None:
        app.query_params["run"] = runs
    app.run()
    if page != PAGES[0]:
        app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def png_bytes(size=(40, 30), colour="red", fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def open_tab(app: AppTest, key: str, label: str) -> AppTest:
    app.session_state[key] = label
    app.run()
    assert not app.exception, app.exception
    return app


def frame(app: AppTest, containing: str) -> pd.DataFrame:
    """The first dataframe shown with a column named `containing`."""
    return next(f.value for f in app.dataframe if containing in f.value.columns)


# ---------------------------------------------------------------- data shaping

def test_study_table_is_every_published_row_marked_as_the_study():
    study = d.study_results()
    assert len(study) == 11 and set(study.source) == {"Published study (Figure 2.1)"}
    rows = d.study_rows(study)
    assert (rows[d.SOURCE] == d.STUDY_SOURCE).all() and rows.run_id.isna().all()
    first = rows.iloc[0]
    assert (first[d.PARAMS], first[d.ACCURACY], first[d.LOSS], first[d.EPOCHS]) == (2_196_810, 0.81, 0.77, 15)
    assert rows[d.ACCURACY].max() == 0.96


def test_comparison_table_has_one_row_per_run_and_labels_runs_without_imagenet():
    made = fixture_runs.make_study_runs()
    runs = [(info.run_id, info.metadata) for info in artifacts.list_runs()]
    metrics = {r: artifacts.read_table(r, "metrics").iloc[0].to_dict() for r, _ in runs}
    table = d.comparison_table(runs, metrics)
    assert len(table) == 4 and list(table.run_id) == [r.run_id for r in reversed(made)]
    resnet = table[table[d.MODEL] == "resnet50_transfer"].iloc[0]
    assert resnet[d.RUN].endswith("no ImageNet weights") and resnet[d.IMAGENET] == "No (trained without)"
    assert table[table[d.MODEL] == "cnn_baseline"].iloc[0][d.IMAGENET].startswith("n/a")
    assert resnet[d.ACCURACY] == pytest.approx(metrics[resnet.run_id]["test_accuracy"])


def test_best_cells_crown_measured_runs_only_in_the_right_direction():
    table = pd.DataFrame({d.SOURCE: [d.MEASURED_SOURCE, d.MEASURED_SOURCE, d.STUDY_SOURCE],
                          d.ACCURACY: [0.8, 0.9, 0.99], d.LOSS: [0.5, 0.7, 0.1], d.PARAMS: [10, 5, 1],
                          d.F1: np.nan, d.RECALL: np.nan, d.TRAIN_MINUTES: np.nan, d.LATENCY: [2.0, 1.0, np.nan]})
    best = d.best_cells(table)
    assert best[d.ACCURACY].tolist() == [False, True, False]
    assert best[d.LOSS].tolist() == [True, False, False]
    assert best[d.PARAMS].tolist() == [False, True, False]
    assert not best[d.F1].any()


def test_pareto_frontier_keeps_only_runs_nothing_beats():
    table = pd.DataFrame({d.PARAMS: [1, 2, 3, 4], d.ACCURACY: [0.5, 0.4, 0.8, 0.7]})
    assert d.pareto_frontier(table, d.PARAMS).index.tolist() == [0, 2]


def test_smoothing_is_a_debiased_moving_average():
    values = pd.Series([1.0, 1.0, 1.0, 5.0])
    assert d.smooth(values, 0).tolist() == values.tolist()
    smoothed = d.smooth(values, 0.5)
    assert smoothed[0] == 1.0 and 1.0 < smoothed[3] < 5.0  # debiased: no pull toward zero


def test_confusion_normalisation_difference_and_pairs():
    made = fixture_runs.make_run("cnn_baseline", seed=3)
    confusion = artifacts.read_table(made.run_id, "confusion")
    counts = d.confusion_matrix(confusion)
    assert (counts.to_numpy() == made.confusion).all()
    shares = d.confusion_matrix(confusion, normalize=True)
    assert np.allclose(shares.sum(axis=1), 1.0)
    same = d.confusion_difference(confusion, confusion)
    assert (same.to_numpy() == 0).all()
    better = d.difference_is_better(pd.DataFrame(np.ones((10, 10))))
    assert better.to_numpy()[0, 0] == 1 and better.to_numpy()[0, 1] == -1
    pairs = d.most_confused_pairs({"run": confusion}, top=5)
    off_diagonal = made.confusion * (1 - np.eye(10, dtype=int))
    assert pairs["run"].iloc[0] == off_diagonal.max() and len(pairs) == 5


def test_gallery_for_a_pair_shows_its_images_with_their_probabilities():
    made = fixture_runs.make_run("cnn_baseline", seed=5)
    gallery, predictions = (artifacts.read_table(made.run_id, t) for t in ("gallery", "predictions"))
    images = d.gallery_for_pair(gallery, predictions, CAT, DOG)
    assert len(images) == min(made.confusion[CAT, DOG], 24)
    assert all(re.match(r"#\d+: dog \d+%", caption) for caption in images.caption)


def test_gap_table_and_best_epoch_marks():
    history = pd.DataFrame({"epoch": [1, 2, 3], "accuracy": [0.5, 0.7, 0.9], "val_accuracy": [0.5, 0.6, 0.55],
                            "loss": [1.0, 0.6, 0.3], "val_loss": [1.0, 0.8, 0.9],
                            "elapsed_seconds": [60, 120, 180], "learning_rate": 1e-3})
    gap = d.generalization_gap({"run": history}, {"run": 2}).iloc[0]
    assert gap["Accuracy gap at best epoch"] == pytest.approx(0.1)
    assert gap["Accuracy gap at last epoch"] == pytest.approx(0.35)
    marks = d.best_epoch_points({"run": history}, {"run": 2}, "Accuracy", "Wall time (minutes)")
    assert marks.iloc[0][["x", "value"]].tolist() == [2.0, 0.6]


def test_tracked_test_accuracy_is_a_third_curve_and_training_time_an_axis():
    tracked = pd.DataFrame({"epoch": [1, 2], "accuracy": [0.5, 0.8], "test_accuracy": [0.6, 0.9],
                            "seconds": [70, 70], "train_seconds_total": [60, 120], "elapsed_seconds": [80, 160]})
    older = pd.DataFrame({"epoch": [1, 2], "accuracy": [0.4, 0.6], "val_accuracy": [0.45, 0.55],
                          "seconds": [30, 90], "elapsed_seconds": [40, 130]})
    long = d.curves_long({"fast": tracked, "old": older}, "Accuracy", "Training time (minutes)")
    test = long[long.split == "Test"]
    assert test.run.tolist() == ["fast", "fast"] and test.raw.tolist() == [0.6, 0.9]
    assert test.x.tolist() == [1.0, 2.0]  # train_seconds_total, not wall time
    assert long[(long.run == "old") & (long.split == "Validation")].x.tolist() == [0.5, 2.0]  # summed epochs
    assert set(d.curves_long({"fast": tracked}, "Loss").split) == set()  # no loss columns here


def test_default_selection_is_the_newest_run_of_each_model():
    runs = [("20260101T000000Z-a-0001", {"model": "a"}), ("20260102T000000Z-b-0002", {"model": "b"}),
            ("20260103T000000Z-a-0003", {"model": "a"})]
    assert d.default_selection(runs) == ["20260102T000000Z-b-0002", "20260103T000000Z-a-0003"]


# ---------------------------------------------------------------- pages

def test_without_runs_every_page_says_how_to_train_one():
    app = open_page()
    assert d.TRAIN_COMMAND in [c.value for c in app.code]
    assert len(frame(app, d.ACCURACY)) == 11  # the study's rows still show
    for page in PAGES[1:]:
        app.switch_page(page).run()
        assert not app.exception
        assert [c.value for c in app.code] == [d.TRAIN_COMMAND], page


def test_models_page_lists_every_run_beside_the_study_and_names_the_broken_one():
    made = fixture_runs.make_study_runs()
    broken = fixture_runs.make_broken_run()
    app = open_page()
    table = frame(app, d.ACCURACY)
    assert len(table) == len(made) + 11
    assert (table[d.SOURCE] == d.MEASURED_SOURCE).sum() == len(made)
    assert any(label.endswith("no ImageNet weights") for label in table[d.RUN])
    warning = " ".join(w.value for w in app.warning)
    assert broken in warning and "incomplete run, missing" in warning
    app.toggle[0].set_value(False).run()
    assert len(frame(app, d.ACCURACY)) == len(made)
    app.main.multiselect[0].set_value(["cnn_regularized"]).run()
    assert frame(app, d.ACCURACY)[d.MODEL].tolist() == ["cnn_regularized"]


def test_models_page_with_one_run():
    fixture_runs.make_run("cnn_baseline")
    app = open_page()
    assert len(frame(app, d.ACCURACY)) == 1 + 11
    assert not app.warning and not app.error


def test_selection_is_read_from_and_written_to_the_url():
    made = fixture_runs.make_study_runs()
    wanted = [made[2].run_id, made[0].run_id]
    app = open_page(PAGES[1], runs=wanted)
    assert app.sidebar.multiselect[0].value == wanted
    assert app.query_params["run"] == wanted
    assert len(frame(app, "Accuracy gap at best epoch")) == 2
    app.sidebar.multiselect[0].unselect(made[0].run_id).run()
    assert app.query_params["run"] in (made[2].run_id, [made[2].run_id])  # AppTest unwraps one value
    app.switch_page(PAGES[2]).run()  # another page keeps the selection
    open_tab(app, "confusion_view", "Cat versus dog")
    assert frame(app, "Cats predicted as dog").Run.tolist() == [d.run_label(made[2].run_id, made[2].metadata)]


def test_learning_curves_page_overlays_the_selected_runs():
    made = fixture_runs.make_study_runs()
    app = open_page(PAGES[1])
    gap = frame(app, "Accuracy gap at best epoch")
    assert len(gap) == len(made)
    assert gap["Best epoch"].tolist() == [r.metadata["best_epoch"] for r in made]
    assert len(app.get("plotly_chart")) == 1
    app.button_group[0].set_value("Loss").run()
    app.slider[0].set_value(0.6).run()
    assert not app.exception and '"text":"Loss"' in app.get("plotly_chart")[0].proto.spec.replace(" ", "")


def test_confusion_page_cat_and_dog_numbers_are_the_runs_confusion_counts():
    made = fixture_runs.make_study_runs()
    app = open_page(PAGES[2])
    assert len(app.get("plotly_chart")) == 3  # two matrices and their change; other tabs wait until opened
    open_tab(app, "confusion_view", "Cat versus dog")
    cat_dog = frame(app, "Cats predicted as dog")
    assert cat_dog["Cats predicted as dog"].tolist() == [int(r.confusion[CAT, DOG]) for r in made]
    assert cat_dog["Dogs predicted as cat"].tolist() == [int(r.confusion[DOG, CAT]) for r in made]
    assert cat_dog.Run.iloc[-1].endswith("no ImageNet weights")

    open_tab(app, "confusion_view", "Most-confused pairs")
    assert len(frame(app, "Predicted as")) == 10
    assert len(app.image) == min(made[0].confusion[CAT, DOG], 24)  # first run's cat -> dog images
    app.selectbox(key="true_class").set_value("truck").run()
    app.selectbox(key="predicted_class").set_value("bird").run()
    assert len(app.image) == min(made[0].confusion[CLASS_NAMES.index("truck"), CLASS_NAMES.index("bird")], 24)

    open_tab(app, "confusion_view", "Per-class scores")
    per_class = frame(app, "Class")
    assert per_class.Class.tolist() == list(CLASS_NAMES)
    assert per_class[d.run_label(made[0].run_id, made[0].metadata)].between(0, 1).all()


def test_predict_page_explains_each_bad_file_and_still_predicts_the_good_ones():
    made = fixture_runs.make_study_runs()
    app = open_page(PAGES[3])
    assert app.info  # nothing chosen yet: it says what to do
    bomb, animated, cmyk = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")  # 81 million pixels (162 MB to decode) in a few kB
    frames = [Image.new("P", (40, 40), colour) for colour in (1, 2)]
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    Image.new("CMYK", (50, 50), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    app.file_uploader[0].set_value([
        ("notes.txt", b"just some text", "text/plain"),
        ("cut.png", png_bytes()[:60], "image/png"),
        ("big.png", b"\x89PNG" + bytes(11_000_000), "image/png"),
        ("bomb.png", bomb.getvalue(), "image/png"),
        ("photo.jpg", png_bytes((300, 200), "blue", "JPEG"), "image/jpeg"),
        ("animated.gif", animated.getvalue(), "image/gif"),
        ("print.jpg", cmyk.getvalue(), "image/jpeg"),
    ]).run()
    errors = [e.value for e in app.error]
    assert len(errors) == 4
    assert "'notes.txt' is not a supported image" in errors[0]
    assert "'cut.png'" in errors[1] and "truncated" in errors[1]
    assert "'big.png'" in errors[2] and "MB" in errors[2]
    assert "'bomb.png'" in errors[3] and "pixels" in errors[3]
    # An animated GIF (first frame) and a CMYK JPEG are odd but readable: they are predicted.
    assert [s.value for s in app.subheader] == ["photo.jpg", "animated.gif", "print.jpg"]
    predictions = frame(app, "Best guess")
    assert len([f for f in app.dataframe if "Best guess" in f.value.columns]) == 3
    assert len(predictions) == len(made) and predictions["Best guess"].isin(CLASS_NAMES).all()
    assert (predictions["Time (ms)"] > 0).all() and predictions["Probability"].between(0, 1).all()


def test_predict_page_draws_a_random_test_image():
    fixture_runs.make_run("cnn_baseline")
    app = open_page(PAGES[3])
    app.button[0].click().run()
    assert app.subheader[0].value.startswith("Random test image #")
    assert frame(app, "Best guess")["Correct"].isin(["Yes", "No"]).all()  # words, not empty checkboxes


def test_run_details_page_shows_the_run_and_offers_its_files():
    made = fixture_runs.make_run("cnn_regularized", note="with a note")
    app = open_page(PAGES[4])
    metrics = artifacts.read_table(made.run_id, "metrics").iloc[0]
    assert app.metric[0].label == "Test accuracy" and app.metric[0].value == f"{metrics.test_accuracy:.1%}"
    settings = frame(app, "Setting").set_index("Setting").Value
    assert settings["Model"] == "cnn_regularized" and settings["Note"] == "with a note"
    open_tab(app, "details_view", "Per-epoch history")
    assert len(frame(app, "Validation accuracy")) == made.metadata["epochs_run"]
    open_tab(app, "details_view", "Files and downloads")
    files = artifacts.run_file_paths(made.run_id)
    assert len(app.get("download_button")) == len(files) == len(artifacts.REQUIRED_FILES)


def test_a_deep_link_as_a_servers_first_request_still_gets_the_whole_page():
    fixture_runs.make_run("cnn_baseline")
    app = open_page(PAGES[1])  # every AppTest run here is a "first request" (legacy pages/ mode)
    assert app.sidebar.multiselect[0].label == "Runs to compare" and app.sidebar.multiselect[0].value
    assert app.title[0].value == "Learning curves"


# ---------------------------------------------------------------- damaged runs

def assert_damaged_runs_named(app: AppTest, broken: dict[str, str]) -> None:
    """One notice names every damaged run with its reason; nothing failed."""
    assert not app.exception and not app.error, (app.exception, app.error)
    [notice] = [w.value for w in app.warning if broken["metadata_types"] in w.value]
    for kind, run_id in broken.items():
        line = next((line for line in notice.splitlines() if run_id in line), "")
        assert broken_runs.REASONS[kind] in line, (kind, notice)


def test_every_page_names_each_damaged_run_and_shows_the_good_ones(broken_set):
    good, broken = broken_set
    labels = [d.run_label(run_id, artifacts.get_run(run_id).metadata) for run_id in good]
    app = open_page()
    assert_damaged_runs_named(app, broken)
    assert sorted(app.sidebar.multiselect[0].options) == sorted(labels)
    assert sorted(frame(app, d.ACCURACY).dropna(subset=["run_id"]).run_id) == sorted(good)
    open_tab(app, "models_view", "Accuracy against cost")
    assert_damaged_runs_named(app, broken)
    assert len(app.get("plotly_chart")) == 2

    app.switch_page(PAGES[1]).run()
    assert_damaged_runs_named(app, broken)
    assert sorted(frame(app, "Accuracy gap at best epoch").Run) == sorted(labels)

    app.switch_page(PAGES[2]).run()
    assert_damaged_runs_named(app, broken)
    for tab, shows in (("Cat versus dog", "Cats predicted as dog"), ("Most-confused pairs", "Predicted as"),
                       ("Per-class scores", "Class")):
        open_tab(app, "confusion_view", tab)
        assert_damaged_runs_named(app, broken)
        assert len(frame(app, shows)) > 0
        if tab == "Most-confused pairs":  # a good run's gallery of cats taken for dogs
            next(box for box in app.selectbox if box.label == "Run").set_value(good[1]).run()
            assert len(app.image) > 0

    app.switch_page(PAGES[3]).run()
    app.button[0].click().run()
    assert_damaged_runs_named(app, broken)
    assert len(frame(app, "Best guess")) == len(good)

    app.switch_page(PAGES[4]).run()
    assert_damaged_runs_named(app, broken)
    assert app.metric[0].label == "Test accuracy"

    app.switch_page("pages/compare.py").run()
    assert_damaged_runs_named(app, broken)
    offered = {option for box in app.selectbox for option in box.options if "·" in str(option)}
    assert offered and offered <= set(labels)

    app.switch_page("pages/robustness.py").run()
    assert_damaged_runs_named(app, broken)


def test_the_retrain_page_keeps_working_beside_damaged_runs(broken_set):
    good, broken = broken_set
    app = AppTest.from_file(APP, default_timeout=60)
    app.secrets.update({"retrain": {}})
    app.run()
    app.switch_page("pages/retrain.py").run()
    assert_damaged_runs_named(app, broken)
    assert app.selectbox(key="retrain_data").options[-1] == "keras"


# ---------------------------------------------------------------- what pages import

PAGE_IMPORTS = """
import importlib.abc, json, sys
from streamlit.testing.v1 import AppTest
from cifar.streamlit_compat import every_request_a_later_one
HEAVY = ("keras", "tensorflow", "jax", "torch")
asked = set()

class Refuse(importlib.abc.MetaPathFinder):
    # Records and refuses every import of a framework: a page that asks for
    # one is caught without paying for the import (TensorFlow takes seconds).
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HEAVY:
            asked.add(name.partition(".")[0])
            raise ImportError("refused by the test: " + name)

sys.meta_path.insert(0, Refuse())
found = {}
with every_request_a_later_one():
    app = AppTest.from_file(sys.argv[1], default_timeout=120).run()
    for page in json.loads(sys.argv[2]):
        app.switch_page(page).run()
        found[page] = sorted(asked | {m for m in HEAVY if m in sys.modules})
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def page_imports(tmp_path_factory):
    """{page: frameworks imported or asked for once it and the pages before
    it were drawn (nothing predicted)}, in one fresh interpreter."""
    root = tmp_path_factory.mktemp("imports") / "artifacts"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFAR_ARTIFACTS", str(root))
        fixture_runs.make_run("cnn_baseline")
    pages = [*PAGES, "pages/compare.py", "pages/robustness.py", "pages/retrain.py"]
    result = subprocess.run([sys.executable, "-c", PAGE_IMPORTS, str(APP), json.dumps(pages)], cwd=REPO,
                            env={**os.environ, "CIFAR_ARTIFACTS": str(root), "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pages_that_run_no_model_import_no_deep_learning_framework(page_imports):
    # Predict imports keras only to predict; drawn without an image, it imports nothing either.
    for page, frameworks in page_imports.items():
        assert frameworks == [], page


def test_the_streamlit_internal_behind_the_first_request_workaround_is_still_there(tmp_path):
    """cifar/streamlit_compat.py depends on PagesManager.uses_pages_directory:
    set from a pages/ folder when a server starts, and kept once switched off."""
    from streamlit.runtime.pages_manager import PagesManager

    (tmp_path / "pages").mkdir()
    (tmp_path / "app.py").write_text("")
    saved = PagesManager.uses_pages_directory
    try:
        PagesManager.uses_pages_directory = None
        PagesManager(str(tmp_path / "app.py"))
        assert PagesManager.uses_pages_directory is True
        streamlit_compat.leave_legacy_pages_mode()
        PagesManager(str(tmp_path / "app.py"))
        assert PagesManager.uses_pages_directory is False
    finally:
        PagesManager.uses_pages_directory = saved
