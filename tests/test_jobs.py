"""cifar.jobs (its local backend) and cifar.auth with real processes: tiny trainings run, queue,
cancel, die and resume exactly as they would behind the dashboard.

Each tiny training costs ~10-15 s of TensorFlow start-up, so the scenarios
are grouped to start as few of them as possible (five in all)."""

import os
import re
import signal
import time

import pytest

from cifar import artifacts, auth, cli
from cifar.errors import CifarError
from cifar.jobs import JobError
from cifar.jobs_local import LocalProcessBackend
from tests.datasets import make_class_folders
from tests.waiting import wait_for

HEARTBEAT_TIMEOUT = 3.0


@pytest.fixture
def backend(monkeypatch):
    for name, value in {"HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT, "CANCEL_GRACE": 3, "POLL_INTERVAL": 0.3,
                        "WORKER_IDLE_EXIT": 2, "MAX_CONCURRENT": 1, "DEDUPE_WINDOW": 10}.items():
        monkeypatch.setenv(f"CIFAR_JOBS_{name}", str(value))
    runner = LocalProcessBackend()
    yield runner
    stop_everything(runner)


def stop_everything(runner: LocalProcessBackend) -> None:
    """Kill what this test started, by id: job process groups, then the worker."""
    for row in runner._rows("SELECT pgid FROM jobs WHERE pgid IS NOT NULL"):
        try:
            os.killpg(row["pgid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    lock_file = runner.dir / "worker.lock"
    if runner.worker_alive() and lock_file.exists():
        try:
            os.kill(int(lock_file.read_text().split()[0]), signal.SIGKILL)
        except (ValueError, IndexError, ProcessLookupError):
            pass


@pytest.fixture
def data(tmp_path):
    return str(make_class_folders(tmp_path))


def tiny(data, **overrides):
    """A training of a few seconds once TensorFlow is up: 30 train, 10 validation images."""
    return {"data": data, "epochs": 2, "limit_per_class": 4, "val_size": 10, "batch_size": 4, **overrides}


def group_alive(pgid) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------- the whole happy path

def test_queue_runs_jobs_in_order_survives_a_new_runner_and_shows_failures(backend, data):
    first = backend.submit("cnn_baseline", tiny(data), submitted_by="alice")
    again = backend.submit("cnn_baseline", tiny(data), submitted_by="alice")  # a double click
    # The second job fails in training: 100 validation images out of 40.
    second = backend.submit("cnn_baseline", tiny(data, epochs=1, val_size=100))
    assert again.id == first.id and again.reused and not first.reused
    assert [j.id for j in backend.list_jobs()] == [second.id, first.id]

    wait_for(lambda: backend.get(first.id).status == "running", 60, "the first job to start")
    assert backend.get(second.id).status == "queued"  # a limit of one: it waits its turn

    # A "dashboard restart": a fresh runner object still tracks the job to its end.
    del backend
    restarted = LocalProcessBackend()
    done = wait_for(lambda: (j := restarted.get(first.id)).status != "running" and j, 90, "the first job")
    assert done.status == "succeeded", restarted.logs(first.id)
    assert [r.run_id for r in artifacts.list_runs()] == [first.run_id]
    assert not artifacts.work_dir(first.run_id).exists()
    assert done.submitted_by == "alice" and done.attempt == 1

    failed = wait_for(lambda: (j := restarted.get(second.id)).status not in ("queued", "running") and j,
                      90, "the second job")
    assert failed.started_at >= done.finished_at  # one after the other
    assert failed.status == "failed"
    assert "val_size 100" in failed.error
    assert "val_size 100" in failed.log_tail and "attempt 1" in failed.log_tail
    assert [r.run_id for r in artifacts.list_runs()] == [first.run_id]
    stop_everything(restarted)


# ---------------------------------------------------------------- cancel

def test_cancel_mid_epoch_kills_the_group_and_leaves_no_run(backend, data):
    job = backend.submit("cnn_baseline", tiny(data, epochs=50, batch_size=1))
    running = wait_for(lambda: (j := backend.get(job.id)).progress.get("batch") and j, 90,
                       "the training to be mid-epoch")
    assert running.status == "running" and 0 < running.fraction_done < 1
    assert re.search(r"^epoch \d+/50 · batch \d+/30 · ", running.describe_progress())

    cancelled = backend.cancel(job.id, wait=15)
    assert cancelled.status == "cancelled"
    wait_for(lambda: not group_alive(running.pgid), 5, "the worker to reap the job's shell")
    with pytest.raises(ProcessLookupError):
        os.kill(running.progress["pid"], 0)
    assert artifacts.list_runs() == []
    assert not artifacts.work_dir(job.run_id).exists()
    with pytest.raises(JobError, match="already cancelled"):
        backend.cancel(job.id)


# ---------------------------------------------------------------- lost and resumed

def test_killed_training_turns_lost_then_resume_finishes_it(backend, data):
    job = backend.submit("cnn_baseline", tiny(data, epochs=4, batch_size=2))
    running = wait_for(lambda: (j := backend.get(job.id)).progress.get("epoch", 0) >= 1 and j, 90,
                       "the first epoch to complete")
    os.kill(running.progress["pid"], signal.SIGKILL)
    killed_at = time.monotonic()

    lost = wait_for(lambda: (j := backend.get(job.id)).status == "lost" and j, HEARTBEAT_TIMEOUT + 10,
                    "the job to turn lost")
    assert time.monotonic() - killed_at < HEARTBEAT_TIMEOUT + 5
    assert "signal 9" in lost.error and f"jobs resume {job.id}" in lost.error
    assert "attempt 1" in lost.log_tail
    assert artifacts.list_runs() == []

    resumed = backend.resume(job.id)
    assert resumed.status in ("queued", "running")
    done = wait_for(lambda: (j := backend.get(job.id)).status not in ("queued", "running") and j, 90,
                    "the resumed job")
    assert done.status == "succeeded", backend.logs(job.id)
    assert done.attempt == 2
    assert f"resume {job.run_id}" in backend.logs(job.id)
    [run] = artifacts.list_runs()
    assert run.run_id == job.run_id and run.metadata["epochs_run"] == 4
    with pytest.raises(JobError, match="only lost or failed"):
        backend.resume(job.id)


# ---------------------------------------------------------------- without training

@pytest.fixture
def no_worker(backend):
    """Hold the worker lock, so submitted jobs stay queued and nothing trains."""
    lock = backend._lock()
    yield backend
    lock.close()


def test_cli_submit_dedupe_list_cancel_and_logs(no_worker, data, capsys):
    flags = ["--data", data, "--epochs", "1", "--limit-per-class", "2", "--val-size", "10"]
    assert cli.main(["jobs", "submit", "cnn_baseline", *flags]) == 0
    assert cli.main(["jobs", "submit", "cnn_baseline", *flags]) == 0
    out = capsys.readouterr().out
    assert "queued job 1" in out and "already queued as job 1" in out

    assert cli.main(["jobs", "list"]) == 0
    assert "queued" in capsys.readouterr().out
    assert cli.main(["jobs", "cancel", "1"]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert cli.main(["jobs", "logs", "1"]) == 0
    assert cli.main(["jobs", "resume", "1"]) == 2
    assert "only lost or failed" in capsys.readouterr().err
    assert cli.main(["jobs", "cancel", "7"]) == 2
    assert "no job 7" in capsys.readouterr().err

    # A cancelled job is not reused: the same request queues a new one.
    job = no_worker.submit("cnn_baseline", {"data": data, "epochs": 1, "limit_per_class": 2, "val_size": 10})
    assert job.id == 2 and not job.reused


def test_submit_rejects_bad_requests_before_queueing(no_worker, tmp_path):
    with pytest.raises(CifarError, match="unknown model 'nope'"):
        no_worker.submit("nope", {})
    with pytest.raises(CifarError, match="does not exist"):
        no_worker.submit("cnn_baseline", {"data": str(tmp_path / "missing")})
    with pytest.raises(CifarError, match="unknown training settings"):
        no_worker.submit("cnn_baseline", {"colour": "red"})
    assert no_worker.list_jobs() == []


def test_a_second_worker_steps_aside(no_worker):
    started = time.monotonic()
    no_worker.run_worker(idle_exit=None)  # returns at once: the lock is taken
    assert time.monotonic() - started < 2
    assert no_worker.worker_alive()


# ---------------------------------------------------------------- who may retrain

def test_token_mode_refuses_a_missing_or_wrong_token():
    policy = auth.policy_from({}, environ={auth.TOKEN_ENV: "s3cret"})
    assert policy.needs_token and policy.banner() is None and "s3cret" not in repr(policy)
    for wrong in (None, "", "s3cre", "s3cret "):
        with pytest.raises(auth.NotAllowed, match="token"):
            auth.authorize(policy, token=wrong)
    assert auth.authorize(policy, token="s3cret") == "team token"
    # The secrets file wins over the environment.
    assert auth.policy_from({"retrain": {"token": "abc"}}, environ={auth.TOKEN_ENV: "xyz"}).token == "abc"


def test_login_mode_allows_only_the_allowlist():
    policy = auth.policy_from({"auth": {"redirect_uri": "x"},
                               "retrain": {"allowed_emails": ["Ana@Example.org"], "token": "ignored"}})
    assert policy.needs_login and policy.allowed_emails == {"ana@example.org"}
    with pytest.raises(auth.NotAllowed, match="sign in"):
        auth.authorize(policy, user={"is_logged_in": False})
    with pytest.raises(auth.NotAllowed, match="not allowed"):
        auth.authorize(policy, user={"is_logged_in": True, "email": "eve@example.org"})
    with pytest.raises(auth.NotAllowed, match="token"):
        auth.authorize(auth.policy_from({}, environ={auth.TOKEN_ENV: "t"}), user={"is_logged_in": True})
    with pytest.raises(auth.NotAllowed, match="verified"):
        auth.authorize(policy, user={"is_logged_in": True, "email": "ana@example.org",
                                     "email_verified": False})
    member = {"is_logged_in": True, "email": " ANA@example.org"}
    assert auth.authorize(policy, user=member) == "ana@example.org"
    assert "no one" in auth.policy_from({"auth": {}}).banner()


def test_open_mode_allows_anyone_and_says_so():
    policy = auth.policy_from({}, environ={})
    assert policy.mode == "open" and "anyone" in policy.banner()
    assert auth.authorize(policy).startswith("anyone")
