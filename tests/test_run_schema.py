"""Runs that cannot break anything: the schema checks themselves, then every
damaged run of tests/broken_runs.py through the reading module and every
CLI command, which must name the run with its reason and go on with the rest."""

import shutil
import signal

import numpy as np
import pandas as pd
import pytest

import broken_runs
from cifar import artifacts, cli, run_schema
from cifar.errors import RunError
from fixture_runs import make_run


# ---------------------------------------------------------------- the checks

def test_metadata_of_the_wrong_shape_is_described_not_raised():
    assert run_schema.check_metadata("a list") == ["metadata.json is not an object"]
    problems = run_schema.check_metadata({"schema_version": 1, "run_id": "r", "model": "m", "config": "x",
                                          "params": {"total": "lots"}, "epochs_run": True, "best_epoch": None,
                                          "train_seconds": 1, "created_at": "now", "data": {},
                                          "environment": {"hardware": []}, "imagenet_weights": "yes"})
    assert problems == ["config is 'x', expected an object", "params.total is 'lots', expected a whole number",
                        "epochs_run is True, expected a whole number",
                        "environment.hardware is [], expected an object",
                        "imagenet_weights is 'yes', expected true or false"]


def test_a_fixture_runs_metadata_and_tables_match(broken_set):
    good, _ = broken_set
    info = artifacts.get_run(good[0])
    assert run_schema.check_metadata(info.metadata) == []
    for name in artifacts.TABLES:
        assert run_schema.check_table(name, artifacts.read_table(good[0], name)) == [], name


def test_tables_are_checked_for_columns_types_rows_and_class_indices():
    history = pd.DataFrame({"epoch": [1.5], "loss": ["low"], "val_accuracy": [True]})
    assert run_schema.check_table("history", history) == [
        "history lacks column accuracy", "history.val_accuracy holds bool, expected numbers",
        "history.epoch holds float64, expected whole numbers", f"history.loss holds {history.loss.dtype}, "
        "expected numbers"]
    confusion = pd.DataFrame({"true_index": [3, 12], "true_class": ["cat", 5], "pred_index": [5, 5],
                              "pred_class": ["dog", "dog"], "count": [1, 2]})
    assert run_schema.check_table("confusion", confusion) == [
        "confusion.true_index holds values outside 0..9", "confusion.true_class holds values that are not text"]
    metrics = pd.DataFrame({"n_test": [1, 2], **{c: [0.5, 0.5] for c in run_schema.TABLE_SCHEMAS["metrics"].columns
                                                  if c != "n_test"}})
    assert run_schema.check_table("metrics", metrics) == ["metrics has 2 rows, expected 1"]
    assert run_schema.check_table("metrics", metrics.iloc[:0]) == ["metrics is empty"]
    assert run_schema.check_table("gallery", pd.DataFrame(
        {"index": [], "true_index": [], "pred_index": [], "correct": [], "png": []}).astype(
        {"index": int, "true_index": int, "pred_index": int, "correct": bool, "png": object})) == []


def test_an_optional_table_is_checked_only_when_present(monkeypatch):
    monkeypatch.setitem(run_schema.TABLE_SCHEMAS, "robustness", run_schema.TableSchema(
        "robustness", {"corruption": "str", "accuracy": "number"}, required=False))
    assert run_schema.check_table("robustness", pd.DataFrame({"corruption": ["blur"], "accuracy": [0.7]})) == []
    assert run_schema.check_table("robustness", pd.DataFrame({"corruption": ["blur"]})) == [
        "robustness lacks column accuracy"]
    assert run_schema.check_table("not_registered", pd.DataFrame({"x": [np.nan]})) == []


# ---------------------------------------------------------------- reading damaged runs

def test_listing_skips_each_damaged_run_with_its_reason_and_keeps_the_good_ones(broken_set):
    good, broken = broken_set
    runs, skipped = artifacts.scan_runs()
    reasons = {s.name: s.reason for s in skipped}
    assert [r.run_id for r in runs] == sorted([*good, broken["modified_table"]])
    for kind, run_id in broken.items():
        if kind != "modified_table":  # its size was never recorded: only reading it tells
            assert broken_runs.REASONS[kind] in reasons[run_id], (kind, reasons[run_id])
    with pytest.raises(RunError, match=broken_runs.REASONS["modified_table"]):
        artifacts.read_table(broken["modified_table"], "metrics")
    assert artifacts.read_table(broken["modified_table"], "history").epoch.iloc[0] == 1  # untouched tables read
    assert set(artifacts.all_runs_table("metrics").run_id) == set(good)


def test_listing_reads_metrics_as_read_table_does_and_refuses_what_it_refuses(broken_set, tmp_path):
    good, broken = broken_set
    # read_metrics checks types and row count only: right while every metrics column is a number.
    schema = run_schema.TABLE_SCHEMAS["metrics"]
    assert set({**schema.columns, **schema.optional_columns}.values()) <= {"int", "number"}
    runs = {info.run_id: info for info in artifacts.scan_runs()[0]}
    for run_id in good:
        expected = artifacts.read_table(run_id, "metrics").iloc[0].to_dict()
        assert artifacts.read_metrics(runs[run_id]) == pytest.approx(expected, nan_ok=True)
    with pytest.raises(RunError, match=broken_runs.REASONS["modified_table"]):
        artifacts.read_metrics(runs[broken["modified_table"]])
    info = runs[good[0]]
    info = artifacts.RunInfo(info.run_id, shutil.copytree(info.path, tmp_path / info.run_id), info.metadata)
    for damaged, reason in ((pd.DataFrame({"n_test": [1]}), "metrics lacks columns test_accuracy"),
                            (pd.read_parquet(info.path / "metrics.parquet").iloc[:0], "metrics is empty")):
        damaged.to_parquet(info.path / "metrics.parquet")
        manifest = artifacts.read_json(info.path / artifacts.MANIFEST_FILE)
        manifest["files"]["metrics.parquet"] = artifacts.sha256_file(info.path / "metrics.parquet")
        with pytest.raises(RunError, match=reason):
            artifacts.read_metrics(artifacts.RunInfo(info.run_id, info.path, info.metadata, manifest))


def test_a_checksum_is_computed_once_per_file_version(broken_set, monkeypatch):
    good, _ = broken_set
    artifacts.read_table(good[1], "predictions")
    hashed = []
    monkeypatch.setattr(artifacts.hashlib, "sha256", lambda data=b"": hashed.append(len(data)))
    artifacts.read_table(good[1], "predictions")
    assert hashed == []


def test_a_swapped_model_file_is_refused(tmp_path):
    first, second = (make_run(model, seed=7) for model in ("cnn_baseline", "vgg16_transfer"))
    assert artifacts.model_path(first.run_id).is_file()
    target = artifacts.run_dir(second.run_id) / artifacts.MODEL_FILE
    target.write_bytes(target.read_bytes()[:-1] + b"!")  # same size, other bytes
    with pytest.raises(RunError, match="model.keras of run .* does not match its checksum"):
        artifacts.model_path(second.run_id)
    assert artifacts.verify_run(second.run_id) == [artifacts.MODEL_FILE]


# ---------------------------------------------------------------- the CLI

def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`python -m cifar ARGS` in this process: exit code, stdout, stderr."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = cli.main(list(args))
    finally:
        signal.signal(signal.SIGTERM, handler)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_cli_runs_lists_the_good_runs_and_names_every_damaged_one(broken_set, capsys):
    good, broken = broken_set
    code, out, err = run_cli(capsys, "runs")
    assert code == 0 and all(run_id in out for run_id in good)
    for kind, run_id in broken.items():
        assert run_id not in out
        line = next(line for line in err.splitlines() if run_id in line)
        assert broken_runs.REASONS[kind] in line, (kind, line)


@pytest.mark.parametrize("kind", ["empty_metrics", "metadata_types", "garbage_manifest", "modified_table"])
def test_cli_evaluate_and_predict_name_a_damaged_run_and_its_reason(broken_set, capsys, kind, tmp_path):
    good, broken = broken_set
    code, _, err = run_cli(capsys, "evaluate", broken[kind])
    assert code == 2 and broken[kind] in err and broken_runs.REASONS[kind] in err
    if kind != "modified_table":  # its model is intact: it predicts
        code, _, err = run_cli(capsys, "predict", broken[kind], str(tmp_path / "any.png"))
        assert code == 2 and broken[kind] in err and broken_runs.REASONS[kind] in err
    code, out, _ = run_cli(capsys, "evaluate", good[1])
    assert code == 0 and "test_accuracy" in out


def test_cli_resume_of_a_damaged_published_run_says_what_it_is(broken_set, capsys):
    _, broken = broken_set
    code, _, err = run_cli(capsys, "resume", broken["empty_metrics"])
    assert code == 2 and broken["empty_metrics"] in err and "already complete" in err
