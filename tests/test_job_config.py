"""Training settings have one source (cifar.config.RunConfig) and jobs carry a resolved config.

The two bugs of a job queue that stored command lines, through the real local
worker: a queued fine-tune job with a donor run failed (`--weights imagenet`
was added to its command line, which fine-tuning refuses), and `jobs submit
--track-test` became `--track-test True`. Then: every setting has a flag and
help, a run's metadata reproduces its config, bad settings get one clear
line, and old job databases are migrated."""

import dataclasses
import json
import os
import signal
import sqlite3
import time

import pytest

from cifar import artifacts, cli
from cifar.config import FIELDS, RunConfig, config_overrides, flag_of, resolve_config
from cifar.errors import CifarError
from cifar.jobs import training_command
from cifar.jobs_local import LocalProcessBackend
from cifar.models import REGISTRY
from tests.datasets import make_class_folders
from tests.fixture_runs import make_run


@pytest.fixture
def backend(monkeypatch):
    for name, value in {"HEARTBEAT_TIMEOUT": 30, "POLL_INTERVAL": 0.3, "WORKER_IDLE_EXIT": 2,
                        "MAX_CONCURRENT": 2, "DEDUPE_WINDOW": 10}.items():
        monkeypatch.setenv(f"CIFAR_JOBS_{name}", str(value))
    runner = LocalProcessBackend()
    yield runner
    for row in runner._rows("SELECT pgid FROM jobs WHERE pgid IS NOT NULL"):  # what this test started, by id
        try:
            os.killpg(row["pgid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    lock = artifacts.jobs_worker_lock_path()
    if runner.worker_alive() and lock.exists():
        try:
            os.kill(int(lock.read_text().split()[0]), signal.SIGKILL)
        except (ValueError, IndexError, ProcessLookupError):
            pass


@pytest.fixture
def no_worker(backend):
    """Hold the worker lock, so submitted jobs stay queued and nothing trains."""
    lock = backend._lock()
    yield backend
    lock.close()


def wait_until_done(backend, job_id, timeout=150):
    deadline = time.monotonic() + timeout
    while (job := backend.get(job_id)).active:
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}: {backend.logs(job_id)}"
        time.sleep(0.3)
    return job


# ---------------------------------------------------------------- the two bugs, through the real worker

def test_a_fine_tune_job_and_a_track_test_job_both_succeed_in_the_worker(backend, tmp_path, capsys, monkeypatch):
    from cifar.train import start_run
    data = str(make_class_folders(tmp_path, per_class_train=2, per_class_test=1))
    tiny = {"data": data, "epochs": 1, "limit_per_class": 1, "val_size": 0, "batch_size": 10}
    # Bug 2: an on/off flag given on the command line of `jobs submit`.
    assert cli.main(["jobs", "submit", "cnn_baseline", "--track-test", "--data", data, "--epochs", "1",
                     "--limit-per-class", "1", "--val-size", "0", "--batch-size", "10"]) == 0
    tracked_id = int(capsys.readouterr().out.split("job ")[1].split()[0])
    assert backend.get(tracked_id).config["track_test"] is True

    # Bug 1: the donor run is picked at submit time; the worker must not be handed --weights.
    # (The donor trains here while the worker starts the job above.)
    donor = start_run(resolve_config("vgg16_transfer", tiny, weights="none", input_size=32), verbose=0)
    fine_tune = backend.submit("vgg16_finetune", tiny)
    assert fine_tune.config["init_from_run"] == donor and fine_tune.config["input_size"] == 32

    for job_id in (fine_tune.id, tracked_id):
        done = wait_until_done(backend, job_id)
        assert done.status == "succeeded", backend.logs(job_id)
    tuned = artifacts.get_run(fine_tune.run_id).metadata
    assert tuned["init_from_run"] == donor and tuned["config"] == fine_tune.config
    assert "test_accuracy" in artifacts.read_table(backend.get(tracked_id).run_id, "history")

    # The fine-tuned run's metadata alone reproduces it: `train --config RUN_ID`, a new run.
    trained = []
    monkeypatch.setattr("cifar.train.start_run", lambda config, **kw: trained.append(config) or donor)
    assert cli.main(["train", "--config", fine_tune.run_id]) == 0
    [again] = trained
    assert dataclasses.replace(again, note="") == RunConfig.from_dict({**tuned["config"], "note": ""})
    assert again.note == f"retrain of {fine_tune.run_id}"


# ---------------------------------------------------------------- one source for settings

def test_every_setting_has_a_flag_with_help_and_round_trips_through_it():
    import argparse
    sample = {"model": "fast_cnn", "data": "/data/copy", "epochs": 3, "batch_size": 32, "learning_rate": 0.5,
              "optimizer": "sgd_nesterov", "momentum": 0.8, "weight_decay": 0.001, "warmup_fraction": 0.1,
              "ema_momentum": 0.9, "label_smoothing": 0.1, "augment": False, "early_stopping_patience": 4,
              "limit_per_class": 20, "val_size": 15, "seed": 7, "precision": "mixed_bfloat16",
              "input_size": 64, "weights": "none", "init_from_run": "20261125T132500Z-cnn_baseline-1a2b",
              "note": "a b", "track_test": True}
    assert set(sample) == set(FIELDS), "a new RunConfig field needs a sample value here"
    for parser_path in (["train"], ["jobs", "submit"]):
        parser = cli.build_parser()
        for name in parser_path:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        actions = {a.dest: a for a in parser._actions}
        argv = ["fast_cnn"]
        for name, value in sample.items():
            if name == "model":
                continue
            assert actions[name].help, f"{flag_of(name)} has no help text"
            argv += [flag_of(name) if value is not False else "--no-" + flag_of(name)[2:]]
            argv += [] if isinstance(value, bool) else [str(value)]
        assert config_overrides(parser.parse_args(argv)) == {k: v for k, v in sample.items() if k != "model"}


@pytest.mark.parametrize("model", sorted(REGISTRY))
def test_each_recipe_is_a_valid_config_that_resolves_to_itself(model, monkeypatch):
    spec = REGISTRY[model]
    assert set(spec.recipe) <= set(FIELDS) - {"model"}
    if spec.init_from:  # a donor run, for fine-tuning (any transfer model's synthetic results will do)
        make_run(spec.init_from)
        other = make_run("cnn_baseline").run_id
        with pytest.raises(CifarError, match=f"{model} starts from a {spec.init_from} run"):
            resolve_config(model, init_from_run=other)
    config = resolve_config(model)
    assert {k: getattr(config, k) for k in spec.recipe if k not in ("weights", "input_size")} == \
        {k: v for k, v in spec.recipe.items() if k not in ("weights", "input_size")}
    assert resolve_config(None, base=config.to_dict()) == config, "a resolved config is stable"
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_config_saved_before_the_optimizer_settings_existed_gets_its_recipe_values():
    old = {k: v for k, v in resolve_config("fast_cnn").to_dict().items()
           if k not in ("momentum", "weight_decay", "warmup_fraction", "ema_momentum")}
    restored = RunConfig.from_dict(old)
    assert (restored.momentum, restored.weight_decay, restored.warmup_fraction, restored.ema_momentum) == \
        (0.85, 8.9e-3, 0.23, 0.95), "the lookahead and schedule it trained with, not RunConfig's defaults"


@pytest.mark.parametrize("argv, message", [
    (["train", "cnn_baseline", "--config", '{"colour": "red"}'], "unknown training settings: colour"),
    (["train", "cnn_baseline", "--config", '{"epochs": "5"}'], "--epochs must be a whole number"),
    (["train", "cnn_baseline", "--config", "{not json"], "--config is not valid JSON"),
    (["train", "cnn_baseline", "--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["train", "cnn_baseline", "--ema-momentum", "0.9"], "--ema-momentum needs --optimizer sgd_nesterov"),
    (["train", "--epochs", "1"], "give a model name"),
    (["jobs", "submit", "cnn_baseline", "--weight-decay", "-1"], "--weight-decay cannot be negative"),
])
def test_bad_settings_get_one_clear_line(no_worker, capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert no_worker.list_jobs() == []


def test_zero_turns_off_an_optional_setting_and_a_job_request_is_type_checked(no_worker):
    assert resolve_config("fast_cnn", ema_momentum=0, weight_decay=0).ema_momentum is None
    assert resolve_config("cnn_regularized", early_stopping_patience=0).early_stopping_patience is None
    with pytest.raises(CifarError, match="--track-test must be true or false"):
        no_worker.submit("cnn_baseline", {"track_test": "True"})


# ---------------------------------------------------------------- jobs store a config

def test_first_attempt_trains_the_stored_config_and_a_later_one_resumes(no_worker, tmp_path):
    job = no_worker.submit("cnn_baseline", {"data": str(tmp_path), "epochs": 1, "note": "it's 'quoted'"})
    command = training_command(job)
    assert command[:2] == ["train", "--config"] and command[3:] == ["--run-id", job.run_id, "--quiet"]
    assert json.loads(command[2]) == job.config == resolve_config("cnn_baseline", data=str(tmp_path), epochs=1,
                                                                  note="it's 'quoted'").to_dict()
    artifacts.work_dir(job.run_id).mkdir(parents=True)
    assert training_command(dataclasses.replace(job, attempt=1)) == ["resume", job.run_id, "--quiet"]


OLD_SCHEMA = """CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL, args TEXT NOT NULL, config_key TEXT NOT NULL, status TEXT NOT NULL,
    submitted_by TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, queued_at REAL NOT NULL, started_at REAL,
    finished_at REAL, attempt INTEGER NOT NULL DEFAULT 0, pgid INTEGER, boot_id TEXT, cancel_requested_at REAL,
    exit_code INTEGER, error TEXT, log_tail TEXT, last_progress TEXT)"""


def test_an_older_database_of_command_lines_is_migrated(tmp_path):
    path = artifacts.jobs_database_path()
    path.parent.mkdir(parents=True)
    con = sqlite3.connect(path)
    con.execute(OLD_SCHEMA)
    for status, flags in (("succeeded", ["--epochs", "2"]), ("queued", ["--augment", "--lr", "0.01"]),
                          ("queued", ["--track-test", "True"])):
        run_id = artifacts.new_run_id("cnn_baseline")
        con.execute("INSERT INTO jobs (run_id, model, args, config_key, status, created_at, queued_at) "
                    "VALUES (?, 'cnn_baseline', ?, 'k', ?, 1, 1)",
                    (run_id, json.dumps(["train", "cnn_baseline", "--run-id", run_id, "--quiet", *flags]), status))
    con.commit()
    con.close()
    backend = LocalProcessBackend()
    lock = backend._lock()  # no worker: only the migration is under test
    try:
        done, readable, unreadable = sorted(backend.list_jobs(), key=lambda job: job.id)
    finally:
        lock.close()
    assert done.config == {"model": "cnn_baseline", "epochs": 2} and done.status == "succeeded"
    assert readable.config == {"model": "cnn_baseline", "augment": True, "learning_rate": 0.01}
    assert readable.status == "queued"
    assert unreadable.status == "failed" and "submit it again" in unreadable.error
    assert resolve_config(None, base=readable.config).learning_rate == 0.01, "trains as it was asked"
