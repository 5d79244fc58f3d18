"""Training end to end on tiny data: publish, artifacts round trip, resume after SIGKILL, NaN."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cifar import artifacts
from cifar.config import resolve_config
from cifar.errors import RunError, TrainingError
from cifar.sample_runs import images_for, make_run, pooled_png, probabilities_for, simulate_predictions
from tests.datasets import make_class_folders
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(limit_per_class=4, val_size=10, batch_size=8, seed=1)


@pytest.fixture
def tiny_data(tmp_path):
    return str(make_class_folders(tmp_path / "data", per_class_train=5, per_class_test=2))


def test_train_publishes_a_complete_readable_run_that_cannot_be_resumed(tiny_data):
    from cifar.train import start_run
    config = resolve_config("cnn_baseline", data=tiny_data, epochs=2, **TINY)
    started = time.time()
    run_id = start_run(config, verbose=0)
    real_seconds = time.time() - started

    assert [r.run_id for r in artifacts.list_runs()] == [run_id]
    assert not artifacts.work_dir(run_id).exists(), "the work folder is cleaned up"
    run = artifacts.load_run(run_id)
    meta = run["metadata"]
    assert meta["config"] == config.to_dict()
    assert meta["epochs_run"] == 2 and meta["params"]["total"] == 2_196_810
    assert meta["recipe_epochs"] == 15  # so the dashboard can label it a short run (and a subset one)
    assert meta["imagenet_weights"] is None and meta["data"]["n_train"] == 30
    assert meta["environment"]["backend"] == "tensorflow" and meta["environment"]["hardware"]["cores"] >= 1
    assert list(run["history"].epoch) == [1, 2]
    elapsed = run["history"].elapsed_seconds
    assert elapsed.is_monotonic_increasing and elapsed.iloc[-1] <= meta["wall_seconds"] <= real_seconds
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"} <= set(run["history"])
    assert run["confusion"]["count"].sum() == 20 and len(run["confusion"]) == 100
    assert len(run["predictions"]) == 20
    np.testing.assert_allclose(run["predictions"].filter(like="prob_").sum(axis=1), 1, rtol=1e-4)
    metrics = run["metrics"].iloc[0]
    assert 0 <= metrics.test_accuracy <= 1 and metrics.latency_ms > 0 and metrics.eval_images_per_s > 0
    assert artifacts.verify_run(run_id) == []

    # One table across runs carries the run id.
    table = artifacts.all_runs_table("metrics")
    assert list(table.run_id) == [run_id]

    # The saved model loads in safe mode and reproduces the stored predictions.
    from cifar.predict import load_model
    from cifar.data import load_cifar10
    model = load_model(run_id)
    probabilities = model.predict(load_cifar10(tiny_data).x_test, verbose=0)
    np.testing.assert_allclose(probabilities, run["predictions"].filter(like="prob_").to_numpy(), atol=1e-5)

    # A finished run cannot be resumed, and stays as it was published.
    from cifar.train import resume_run
    with pytest.raises(RunError, match="already complete"):
        resume_run(run_id, verbose=0)
    assert artifacts.verify_run(run_id) == [] and not artifacts.work_dir(run_id).exists()
    assert artifacts.load_run(run_id)["metadata"] == meta

    # Sample runs (the dashboard's test data) have exactly the columns a real run has.
    sample = artifacts.load_run(make_run("cnn_baseline", n_test=20).run_id)
    for name in artifacts.TABLES:
        assert set(sample[name].columns) == set(run[name].columns), name
    assert set(sample["metadata"]) == set(meta) and set(sample["metadata"]["data"]) == set(meta["data"])


def test_evaluation_averages_are_sklearns():
    from sklearn.metrics import precision_recall_fscore_support
    from cifar.evaluate import evaluation_tables
    rng = np.random.default_rng(0)
    truth, predicted = simulate_predictions(0.6, 97, rng)
    probabilities = probabilities_for(predicted, rng)
    metrics = evaluation_tables(images_for(truth), truth, probabilities, images_per_s=1.0, latency_ms=1.0,
                                encode=pooled_png).metrics.iloc[0]
    for average in ("macro", "weighted"):
        expected = precision_recall_fscore_support(truth, predicted, labels=list(range(10)), average=average,
                                                   zero_division=0)[:3]
        found = [metrics[f"{name}_{average}"] for name in ("precision", "recall", "f1")]
        np.testing.assert_allclose(found, expected)


def test_early_stopping_restores_the_best_epoch(tiny_data):
    from cifar.train import start_run
    config = resolve_config("cnn_baseline", data=tiny_data, epochs=6, early_stopping_patience=1,
                            learning_rate=0.05, **TINY)
    run_id = start_run(config, verbose=0)
    meta = artifacts.get_run(run_id).metadata
    history = artifacts.read_table(run_id, "history")
    assert meta["best_epoch"] == int(history.loc[history.val_accuracy.idxmax(), "epoch"])
    assert meta["epochs_run"] <= 6


def test_nan_loss_fails_the_run_visibly(tiny_data):
    from cifar.train import start_run
    config = resolve_config("cnn_baseline", data=tiny_data, epochs=2, learning_rate=1e12, **TINY)
    with pytest.raises(TrainingError, match="NaN"):
        start_run(config, verbose=0)
    assert artifacts.list_runs() == []


def test_crash_while_publishing_leaves_no_visible_run(tiny_data, monkeypatch):
    from cifar import train
    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    config = resolve_config("cnn_baseline", data=tiny_data, epochs=1, **TINY)
    with pytest.raises(OSError):
        train.start_run(config, verbose=0)
    assert artifacts.scan_runs() == ([], [])
    assert not any((artifacts.root() / ".staging").iterdir())


def test_resume_refuses_unknown_runs_and_what_is_not_a_run_id():
    from cifar.train import resume_run
    with pytest.raises(RunError, match="no interrupted run"):
        resume_run("20261125T000000Z-cnn_baseline-abcd")
    with pytest.raises(RunError, match="not a run id"):
        resume_run("../../etc")
    with pytest.raises(RunError, match="not a run id"):
        resume_run("20261125T000000Z-cnn_baseline-abcd\n")


def test_sigkill_mid_run_then_resume_finishes_all_epochs(tiny_data):
    """A real training subprocess is SIGKILLed mid-run; `resume` completes it."""
    run_id = artifacts.new_run_id("cnn_baseline")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "cifar", "train", "cnn_baseline", "--run-id", run_id, "--quiet",
               "--data", tiny_data, "--epochs", "4", "--limit-per-class", "5", "--val-size", "10",
               "--batch-size", "2", "--seed", "3"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = artifacts.work_dir(run_id) / artifacts.STATE_FILE
    progress = artifacts.progress_path(run_id)

    def mid_second_epoch():
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.stderr.read().decode()[-2000:]}")
        try:
            done = json.loads(state.read_text())["completed_epochs"]
            now = json.loads(progress.read_text())
        except (OSError, ValueError, KeyError):
            return False
        return done >= 1 and now.get("batch", 0) >= 2
    wait_for(mid_second_epoch, 240, "the second epoch to start")
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    # What a kill during publishing leaves: a staging folder of the dead process.
    left = artifacts.staging_root() / artifacts.staging_folder_name(run_id, pid=process.pid)
    left.mkdir(parents=True)
    (left / "history.parquet").write_bytes(b"half")

    completed = json.loads(state.read_text())["completed_epochs"]
    assert 1 <= completed < 4
    assert artifacts.list_runs() == []
    listing = subprocess.run([sys.executable, "-m", "cifar", "runs", "--all"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert run_id in listing.stdout and "resume" in listing.stdout

    resumed = subprocess.run([sys.executable, "-m", "cifar", "resume", run_id, "--quiet"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    history = artifacts.read_table(run_id, "history")
    assert list(history.epoch) == [1, 2, 3, 4], "every epoch recorded exactly once"
    meta = artifacts.get_run(run_id).metadata
    assert meta["epochs_run"] == 4
    # The optimizer state survived the kill: its step counter kept counting
    # (40 training images / batch 2 = 20 steps per epoch), not restarting at 0.
    assert list(history.optimizer_steps) == [20, 40, 60, 80]
    assert not any(artifacts.staging_root().iterdir()), "the dead publisher's staging folder is cleaned"


def test_one_process_per_run_and_damaged_work_folders_are_reported(tiny_data):
    from cifar.train import _exclusive, resume_run
    run_id = artifacts.new_run_id("cnn_baseline")
    work = artifacts.work_dir(run_id)
    with _exclusive(work, run_id):
        with pytest.raises(RunError, match="another process"):
            with _exclusive(work, run_id):
                pass
    config = resolve_config("cnn_baseline", data=tiny_data, epochs=1, **TINY)
    artifacts.write_json_atomic(work / artifacts.CONFIG_FILE, config.to_dict())
    (work / artifacts.STATE_FILE).write_text("{half a json")
    artifacts.write_json_atomic(artifacts.progress_path(run_id), {"status": "running", "pid": 2**22 + 12345})
    assert [(r["run_id"], r["status"]) for r in artifacts.interrupted_runs()] == [(run_id, "interrupted")]
    with pytest.raises(RunError, match="damaged"):
        resume_run(run_id, verbose=0)
    assert json.loads(artifacts.progress_path(run_id).read_text())["status"] == "failed"


@pytest.mark.parametrize("state, named", [
    ([1, 2], "not an object"),
    ({"completed_epochs": "2", "checkpoint": "c.keras", "history": [], "data_fingerprint": "f"}, "completed_epochs"),
    ({"completed_epochs": 1, "checkpoint": "../../elsewhere.keras", "history": [], "data_fingerprint": "f"},
     "checkpoint"),
    ({"completed_epochs": 1, "checkpoint": "c.keras", "history": [{"seconds": "x"}], "data_fingerprint": "f"},
     "history rows"),
    ({"completed_epochs": 1, "checkpoint": "c.keras", "history": [], "data_fingerprint": "f", "source": None},
     "source")])
def test_a_state_file_of_the_wrong_shape_is_named_damaged_before_anything_loads(state, named):
    from cifar.train import _read_state
    work = artifacts.work_dir(artifacts.new_run_id("cnn_baseline"))
    work.mkdir(parents=True)
    artifacts.write_json_atomic(work / artifacts.STATE_FILE, state)
    with pytest.raises(RunError, match=rf"damaged \(.*{named}.* not as written\); start a new run"):
        _read_state(work)


def test_track_test_records_test_accuracy_each_epoch_without_touching_training(tiny_data):
    from cifar.train import start_run
    # No early stopping, so the final evaluation uses the last epoch's weights.
    config = resolve_config("cnn_baseline", data=tiny_data, epochs=2, track_test=True,
                            early_stopping_patience=0, **TINY)
    run = artifacts.load_run(start_run(config, verbose=0))
    history, metrics = run["history"], run["metrics"].iloc[0]
    assert {"test_accuracy", "test_seconds", "train_seconds_total"} <= set(history)
    assert history.test_accuracy.between(0, 1).all() and (history.test_seconds > 0).all()
    # The last epoch's tracked accuracy is the final evaluation's (no TTA here).
    assert history.test_accuracy.iloc[-1] == pytest.approx(metrics.test_accuracy)
    # Training time excludes the tracking: the total is the sum of the epochs' training.
    assert history.train_seconds_total.is_monotonic_increasing
    assert history.train_seconds_total.iloc[-1] <= history.elapsed_seconds.iloc[-1] - history.test_seconds.sum()
    assert run["metadata"]["config"]["track_test"] is True


@pytest.mark.parametrize("augment", [True, False])
def test_fast_cnn_trains_on_each_epochs_augmented_images_with_the_triangle_schedule(tiny_data, monkeypatch,
                                                                                    augment):
    import dataclasses

    from cifar import fast_cnn, models
    from cifar.train import start_run
    seen = []

    def spy(images, epoch, seed):
        seen.append((len(images), epoch, seed))
        return fast_cnn.epoch_images(images, epoch, seed)

    spec = models.REGISTRY["fast_cnn"]
    monkeypatch.setitem(models.REGISTRY, "fast_cnn", dataclasses.replace(spec, epoch_augment=spy))
    config = resolve_config("fast_cnn", data=tiny_data, epochs=2, augment=augment, **TINY)
    run = artifacts.load_run(start_run(config, verbose=0))
    n_train = 40 - TINY["val_size"]
    assert seen == ([(n_train, 0, 1), (n_train, 1, 1)] if augment else [])
    history = run["history"]
    assert history.optimizer_steps.iloc[-1] == 2 * 4  # 30 images in batches of 8
    # After the last step the learning rate has come down to 0.07 of the peak.
    assert history.learning_rate.iloc[-1] == pytest.approx(0.07 * config.learning_rate, rel=1e-5)


def test_resume_refuses_a_checkpoint_of_another_network_version(tiny_data):
    """A work folder whose checkpoint the current code would not build (as a
    fast_cnn saved with in-network augmentation, resumed by code that augments
    the data) is refused with a message, and left as it was."""
    from cifar.data import load_cifar10
    from cifar.models import build_model
    from cifar.train import resume_run
    run_id = artifacts.new_run_id("cnn_baseline")
    work = artifacts.work_dir(run_id)
    work.mkdir(parents=True)
    config = resolve_config("cnn_baseline", data=tiny_data, epochs=2, **TINY)
    artifacts.write_json_atomic(work / artifacts.CONFIG_FILE, config.to_dict())
    checkpoint = artifacts.checkpoint_name(1)
    build_model("cnn_regularized").save(work / checkpoint)  # "another version"
    state = {"completed_epochs": 1, "checkpoint": checkpoint, "history": [],
             "data_fingerprint": load_cifar10(tiny_data).fingerprint}
    artifacts.write_json_atomic(work / artifacts.STATE_FILE, state)
    before = sorted(p.name for p in work.iterdir())

    with pytest.raises(RunError, match=r"another version of cnn_baseline: its layer \d+ is \w+ with weights "
                                       r"\[.*\] in the checkpoint, \w+ with weights \[.*\] in the current "
                                       r"code.*start a new run.*delete .*" + run_id):
        resume_run(run_id, verbose=0)
    assert (work / checkpoint).exists() and json.loads((work / artifacts.STATE_FILE).read_text()) == state
    assert set(before) <= {p.name for p in work.iterdir()}
