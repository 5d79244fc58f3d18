"""Robustness evaluations as background jobs: `python -m cifar jobs robustness RUN`
runs `evaluate RUN --robustness` through the real local worker and the table lands
in the run; the request is checked at submit time, one evaluation of a run runs at
a time, cancelling one never touches its run, and older job databases (run ids
unique, no kinds) keep working."""

import json
import sqlite3

import pytest

from cifar import artifacts, cli, jobs, robustness
from cifar.errors import CifarError
from cifar.jobs import JobError
from cifar.jobs_local import LocalProcessBackend
from tests import fixture_runs
from tests.datasets import make_class_folders
from tests.test_jobs import backend  # noqa: F401 - fixture


@pytest.fixture
def no_worker(backend):  # noqa: F811
    """Hold the worker lock, so submitted jobs stay queued and nothing runs."""
    lock = backend._lock()
    yield backend
    lock.close()


@pytest.fixture
def run_and_data(tmp_path):
    run = fixture_runs.make_run("cnn_baseline")  # a real (tiny) model file and simulated tables
    return run.run_id, str(make_class_folders(tmp_path / "data", per_class_train=1, per_class_test=2))


def test_a_queued_evaluation_runs_in_the_worker_and_its_table_lands_in_the_run(backend, run_and_data,  # noqa: F811
                                                                                capsys):
    run_id, data = run_and_data
    assert cli.main(["jobs", "robustness", run_id, "--images", "10", "--data", data, "--wait"]) == 0
    out = capsys.readouterr().out
    assert f"queued job 1 (robustness of run {run_id})" in out
    job = backend.get(1)
    assert job.status == "succeeded", backend.logs(1)
    assert (job.kind, job.model, job.payload) == ("robustness", "cnn_baseline", {"images": 10, "data": data})
    table = artifacts.read_table(run_id, robustness.TABLE)
    assert len(table) == len(robustness.conditions()) and (table.n_images == 10).all()
    assert artifacts.verify_run(run_id) == []
    assert job.fraction_done == 1.0
    assert f"mean corruption accuracy {table[table.corruption != 'clean'].accuracy.mean():.4f} on 10 images" \
        in job.describe_progress()
    assert f"/{len(robustness.conditions())}" in backend.logs(1)  # the progress bar the page reads

    assert cli.main(["jobs", "list"]) == 0
    assert "succeeded" in (listed := capsys.readouterr().out) and "robustness" in listed
    with pytest.raises(JobError, match="only lost or failed"):
        backend.resume(1)


def test_the_command_and_the_progress_come_from_one_place(no_worker, run_and_data):
    run_id, data = run_and_data
    job = no_worker.submit_robustness(run_id, 25, data)
    assert jobs.job_command(job) == ["evaluate", run_id, "--robustness", "--images", "25", "--data", data]
    assert jobs.DEFAULT_ROBUSTNESS_IMAGES == robustness.DEFAULT_IMAGES  # the page's default, without scipy
    assert jobs.ROBUSTNESS_TABLE == robustness.TABLE
    bar = "\r\x1b[1m 7/76\x1b[0m \x1b[32m━━\x1b[0m\x1b[37m━━━━\x1b[0m \x1b[1m4s\x1b[0m 70ms/condition\x08\x08"
    assert jobs.evaluation_progress("loading\n" + bar.replace("7/", "6/") + bar) == {"step": 7, "steps": 76}
    assert jobs.evaluation_progress("epoch 1/2 ━━ 5s 30ms/step") == {}
    running = jobs.Job(**{**job.__dict__, "status": "running", "progress": {"step": 19, "steps": 76}})
    assert running.fraction_done == 0.25 and running.describe_progress() == \
        "condition 19/76 (each corruption at each severity)"


def test_requests_are_checked_and_one_evaluation_of_a_run_runs_at_a_time(no_worker, run_and_data):
    run_id, data = run_and_data
    with pytest.raises(CifarError, match="/data/cifar10-jpeg.*not on this machine.*--data"):
        no_worker.submit_robustness(run_id, 10)  # the run's recorded source is elsewhere
    with pytest.raises(CifarError, match="--images must be"):
        no_worker.submit_robustness(run_id, 0, data)
    with pytest.raises(CifarError, match="no-such-run|not a run|no run"):
        no_worker.submit_robustness("20261125T133344Z-cnn_baseline-0000", 10, data)
    first = no_worker.submit_robustness(run_id, 10, data)
    assert no_worker.submit_robustness(run_id, 10, data).reused
    with pytest.raises(JobError, match=f"already has a robustness evaluation queued or running \\(job {first.id}"):
        no_worker.submit_robustness(run_id, 20, data)
    assert [j.id for j in no_worker.list_jobs()] == [first.id]


def test_cancelling_a_running_evaluation_keeps_the_run(no_worker, run_and_data):
    run_id, data = run_and_data
    job = no_worker.submit_robustness(run_id, 10, data)
    before = {p.name: p.read_bytes() for p in artifacts.run_dir(run_id).iterdir()}
    with no_worker._transaction() as con:  # as the worker records a started process (long gone here)
        con.execute("UPDATE jobs SET status = 'running', attempt = 1, started_at = 1, pgid = 1999999 "
                    "WHERE id = ?", (job.id,))
    assert no_worker.cancel(job.id).status == "cancelled"
    assert {p.name: p.read_bytes() for p in artifacts.run_dir(run_id).iterdir()} == before


OLD_SCHEMA = """CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL, config TEXT NOT NULL, config_key TEXT NOT NULL, status TEXT NOT NULL,
    submitted_by TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, queued_at REAL NOT NULL, started_at REAL,
    finished_at REAL, attempt INTEGER NOT NULL DEFAULT 0, pgid INTEGER, boot_id TEXT, cancel_requested_at REAL,
    exit_code INTEGER, error TEXT, log_tail TEXT, last_progress TEXT);
CREATE INDEX jobs_by_status ON jobs (status, queued_at);"""


def test_a_database_from_before_job_kinds_keeps_its_jobs_and_takes_evaluations(run_and_data):
    run_id, data = run_and_data
    path = artifacts.jobs_database_path()
    path.parent.mkdir(parents=True)
    con = sqlite3.connect(path)
    con.executescript(OLD_SCHEMA)
    for job_id in (1, 2, 3):
        con.execute("INSERT INTO jobs (id, run_id, model, config, config_key, status, created_at, queued_at) "
                    "VALUES (?, ?, 'cnn_baseline', ?, 'k', 'succeeded', 1, 1)",
                    (job_id, run_id if job_id == 1 else f"{run_id[:-4]}000{job_id}",
                     json.dumps({"model": "cnn_baseline", "epochs": job_id})))
    con.execute("DELETE FROM jobs WHERE id = 3")  # its id must not be handed out again
    con.commit()
    con.close()
    runner = LocalProcessBackend()
    lock = runner._lock()  # no worker: only the database is under test
    try:
        old = sorted(runner.list_jobs(), key=lambda job: job.id)
        assert [(j.id, j.kind, j.config["epochs"]) for j in old] == [(1, "train", 1), (2, "train", 2)]
        evaluation = runner.submit_robustness(run_id, 10, data)  # the same run id as job 1's
        assert evaluation.id == 4 and evaluation.kind == "robustness"
        with pytest.raises(sqlite3.IntegrityError):  # trainings still make one run each
            with runner._transaction() as con:
                con.execute("INSERT INTO jobs (run_id, model, config, config_key, status, created_at, queued_at) "
                            "VALUES (?, 'cnn_baseline', '{}', 'k2', 'queued', 1, 1)", (run_id,))
    finally:
        lock.close()
