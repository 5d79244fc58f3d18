"""The artifact layout: atomic publish, skipped broken folders, guarded run ids."""

import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cifar import artifacts, run_schema
from cifar.errors import RunError
from fixture_runs import make_run

_VALUES = {"int": 1, "class": 0, "number": 0.5, "bool": True, "str": "cat", "bytes": b"png"}
METADATA = {"model": "cnn_baseline", "config": {"model": "cnn_baseline"}, "params": {"total": 10},
            "epochs_run": 2, "best_epoch": 2, "train_seconds": 1.0, "created_at": "20261125T000000Z",
            "data": {}, "environment": {}}


def _schema_table(name: str) -> pd.DataFrame:
    """The smallest table its schema accepts: one row of plain values."""
    return pd.DataFrame([{c: _VALUES[kind] for c, kind in run_schema.TABLE_SCHEMAS[name].columns.items()}])


def _publish_minimal(run_id):
    staging = artifacts.stage_run(run_id)
    for name in artifacts.TABLES:
        staging.write_table(name, _schema_table(name))
    staging.model_path.write_bytes(b"model")
    staging.write_metadata({"run_id": run_id, **METADATA})
    return staging


def test_round_trip_and_manifest():
    run_id = artifacts.new_run_id("cnn_baseline")
    _publish_minimal(run_id).publish()
    run = artifacts.load_run(run_id)
    assert run["metadata"]["schema_version"] == artifacts.SCHEMA_VERSION
    assert list(run["history"].epoch) == [1]
    assert artifacts.verify_run(run_id) == []
    table = artifacts.all_runs_table("metrics")
    assert list(table.columns)[:3] == ["run_id", "n_test", "test_accuracy"] and set(table.run_id) == {run_id}
    (artifacts.run_dir(run_id) / "model.keras").write_bytes(b"tampered")
    assert artifacts.verify_run(run_id) == ["model.keras"]


def test_staged_run_is_invisible_until_published():
    run_id = artifacts.new_run_id("cnn_baseline")
    staging = _publish_minimal(run_id)
    assert artifacts.scan_runs() == ([], [])
    staging.publish()
    assert [r.run_id for r in artifacts.list_runs()] == [run_id]
    with pytest.raises(RunError, match="already exists"):
        _publish_minimal(run_id).publish()


def test_incomplete_staging_refuses_to_publish():
    run_id = artifacts.new_run_id("cnn_baseline")
    staging = artifacts.stage_run(run_id)
    staging.write_table("history", _schema_table("history"))
    with pytest.raises(RunError, match="incomplete"):
        staging.publish()
    assert artifacts.scan_runs() == ([], [])


def test_broken_and_foreign_folders_are_skipped_with_a_reason():
    good = artifacts.new_run_id("cnn_baseline")
    _publish_minimal(good).publish()
    base = artifacts.runs_dir()
    (base / "holiday-photos").mkdir()
    half = base / artifacts.new_run_id("cnn_regularized")
    half.mkdir()
    (half / "history.parquet").write_bytes(b"PAR1")
    bad_meta = artifacts.new_run_id("fast_cnn")
    _publish_minimal(bad_meta).publish()
    (base / bad_meta / "metadata.json").write_text("{not json")
    runs, skipped = artifacts.scan_runs()
    assert [r.run_id for r in runs] == [good]
    reasons = {s.name: s.reason for s in skipped}
    assert "not a run id" in reasons["holiday-photos"]
    assert "incomplete" in reasons[half.name]
    assert "unreadable" in reasons[bad_meta]


def test_damaged_table_raises_a_clear_error():
    run_id = artifacts.new_run_id("cnn_baseline")
    _publish_minimal(run_id).publish()
    (artifacts.run_dir(run_id) / "metrics.parquet").write_bytes(b"garbage")
    with pytest.raises(RunError, match="damaged"):
        artifacts.read_table(run_id, "metrics")
    assert artifacts.all_runs_table("metrics").empty


@pytest.mark.parametrize("bad", ["../etc", "x", "20261125T000000Z-cnn/../../x-abcd", "",
                                 "20261125T000000Z-cnn_baseline-abcd\n", " 20261125T000000Z-cnn_baseline-abcd"])
def test_run_ids_cannot_escape_the_root(bad):
    with pytest.raises(RunError):
        artifacts.run_dir(bad)
    assert not artifacts.is_run_id(bad)


def test_a_run_id_parses_into_its_creation_time_model_and_suffix():
    when = datetime.datetime(2026, 11, 25, 13, 25, 0, tzinfo=datetime.timezone.utc)
    run_id = artifacts.new_run_id("fast_cnn", now=when)
    parts = artifacts.parse_run_id(run_id)
    assert (parts.created_at, parts.model) == (when, "fast_cnn")
    assert run_id == f"{parts.created_stamp}-fast_cnn-{parts.suffix}" and len(parts.suffix) == 4
    with pytest.raises(RunError, match="not a date"):
        artifacts.parse_run_id("20261399T000000Z-fast_cnn-abcd")


def _staging_folder(name, age_seconds=0.0):
    path = artifacts.staging_root() / name
    path.mkdir(parents=True)
    (path / "history.parquet").write_bytes(b"half a run")
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


def test_staging_left_by_a_killed_publisher_is_cleaned_but_a_live_one_is_kept():
    run_id = artifacts.new_run_id("cnn_baseline")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = _staging_folder(artifacts.staging_folder_name(run_id, pid=dead.pid))   # kill -9 mid-publish
    live = _staging_folder(artifacts.staging_folder_name(run_id))                   # a publisher at work
    elsewhere = _staging_folder(f"{run_id}.otherhost-{dead.pid}.0a0a0a")           # pid means nothing here
    old = _staging_folder(f"{run_id}.0b0b0b", age_seconds=artifacts.STAGING_MAX_AGE_SECONDS + 60)
    staging = artifacts.stage_run(run_id)                                   # what a resume does
    assert not killed.exists() and not old.exists()
    assert live.exists() and elsewhere.exists() and staging.path.exists()
    assert artifacts.clean_stale_staging(now=time.time() + artifacts.STAGING_MAX_AGE_SECONDS + 60)
    assert not elsewhere.exists()


def test_a_run_without_its_model_file_is_incomplete_except_for_readers_of_its_record():
    run = make_run("cnn_baseline", epochs=2)
    artifacts.model_path(run.run_id).unlink()
    with pytest.raises(RunError, match="incomplete run, missing model.keras"):
        artifacts.get_run(run.run_id)
    assert run.run_id not in [r.run_id for r in artifacts.list_runs()]   # the dashboard skips it
    assert artifacts.get_run(run.run_id, allow_missing_model=True).metadata["model"] == "cnn_baseline"
    assert len(artifacts.read_table(run.run_id, "history", allow_missing_model=True)) == 2


def test_docs_artifacts_names_every_file_the_code_writes():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "ARTIFACTS.md").read_text()
    written = [*artifacts.REQUIRED_FILES, artifacts.CONFIG_FILE, artifacts.STATE_FILE, artifacts.PROGRESS_FILE,
               artifacts.LOCK_FILE, artifacts.checkpoint_name(7), artifacts.best_weights_name(12)]
    for name in written:
        as_documented = re.escape(name.replace("0007", "NNNN").replace("0012", "NNNN"))
        assert re.search(rf"(?<![\w.-]){as_documented}(?![\w.-])", doc), name
    run_id = artifacts.new_run_id("cnn_baseline")
    assert artifacts.work_dir(run_id).parent.name == "work" and "work/<run_id>/" in doc
    assert artifacts.staging_folder_name(run_id).startswith(f"{run_id}.") and ".staging/<run_id>.<host>-<pid>.<hex>/" in doc


def test_file_sizes_leave_out_a_file_deleted_since_the_listing(monkeypatch):
    from fixture_runs import make_run
    run_id = make_run("cnn_baseline", seed=3, n_test=20).run_id
    listed = artifacts.run_file_paths(run_id)
    gone = artifacts.run_dir(run_id) / "vanished.parquet"
    monkeypatch.setattr(artifacts, "run_file_paths", lambda _: {**listed, gone.name: gone})
    sizes = artifacts.run_file_sizes(run_id)
    assert gone.name not in sizes and set(sizes) == set(listed) and all(size > 0 for size in sizes.values())
