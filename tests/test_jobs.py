"""cifar.jobs and cifar.auth with real processes: tiny trainings run, queue, cancel, die and
resume exactly as they would behind the dashboard, on both backends: local processes, and
a real Ray head on loopback (tests/conftest.py's `ray_head`, shared by every Ray test).

Each tiny training costs ~10-15 s of TensorFlow start-up, so the scenarios
are grouped to start as few of them as possible."""

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from cifar import artifacts, auth, cli, jobs
from cifar.errors import CifarError
from cifar.jobs import JobError, Resources
from cifar.jobs_local import LocalProcessBackend
from tests.datasets import make_class_folders
from tests.waiting import wait_for

HEARTBEAT_TIMEOUT = 3.0
BACKENDS = ["local", "ray"]
# On Ray, a job that asks for more CPUs than the cluster has waits, queued, and nothing trains.
HOLD = {"local": Resources(), "ray": Resources(cpus=64)}


def job_settings(monkeypatch) -> None:
    for name, value in {"HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT, "CANCEL_GRACE": 3, "POLL_INTERVAL": 0.3,
                        "WORKER_IDLE_EXIT": 2, "MAX_CONCURRENT": 1, "DEDUPE_WINDOW": 10}.items():
        monkeypatch.setenv(f"CIFAR_JOBS_{name}", str(value))


@pytest.fixture
def backend(monkeypatch):
    """The local backend (the Retrain page's tests use it too)."""
    job_settings(monkeypatch)
    runner = LocalProcessBackend()
    yield runner
    stop_everything(runner)


@pytest.fixture(params=BACKENDS)
def each_backend(request, monkeypatch):
    """The backend $CIFAR_JOBS_BACKEND selects, once per backend: local, then Ray."""
    job_settings(monkeypatch)
    monkeypatch.setenv("CIFAR_JOBS_BACKEND", request.param)
    if request.param == "ray":
        monkeypatch.setenv("RAY_ADDRESS", request.getfixturevalue("ray_head"))
    runner = jobs.get_backend()
    assert runner.name == request.param
    yield runner
    stop_everything(runner)


def stop_everything(runner) -> None:
    """Stop what this test started, by id: Ray jobs, or job process groups and the worker."""
    if runner.name == "ray":
        for row in runner._rows("SELECT submission_id FROM jobs WHERE status IN ('queued', 'running')"):
            runner.client.stop_job(row["submission_id"])
        return
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

def test_queue_runs_jobs_survives_a_new_runner_and_shows_failures(each_backend, data):
    backend = each_backend
    first = backend.submit("cnn_baseline", tiny(data), submitted_by="alice")
    again = backend.submit("cnn_baseline", tiny(data), submitted_by="alice")  # a double click
    # The second job fails in training: 100 validation images out of 40.
    second = backend.submit("cnn_baseline", tiny(data, epochs=1, val_size=100))
    assert again.id == first.id and again.reused and not first.reused
    assert [j.id for j in backend.list_jobs()] == [second.id, first.id]

    wait_for(lambda: backend.get(first.id).status == "running", 90, "the first job to start")
    if backend.name == "local":
        assert backend.get(second.id).status == "queued"  # a limit of one: it waits its turn

    # A "dashboard restart": a fresh runner object still tracks the job to its end.
    del backend
    restarted = jobs.get_backend()
    done = wait_for(lambda: (j := restarted.get(first.id)).status not in jobs.ACTIVE and j, 150, "the first job")
    assert done.status == "succeeded", restarted.logs(first.id)
    assert [r.run_id for r in artifacts.list_runs()] == [first.run_id]
    assert not artifacts.work_dir(first.run_id).exists()
    assert done.submitted_by == "alice" and done.attempt == 1

    failed = wait_for(lambda: (j := restarted.get(second.id)).status not in jobs.ACTIVE and j,
                      150, "the second job")
    if restarted.name == "local":
        assert failed.started_at >= done.finished_at  # one after the other
    assert failed.status == "failed"
    assert "val_size 100" in failed.error
    assert "val_size 100" in failed.log_tail and "attempt 1" in failed.log_tail
    assert [r.run_id for r in artifacts.list_runs()] == [first.run_id]
    stop_everything(restarted)


# ---------------------------------------------------------------- cancel

def process_alive(pid: int) -> bool:
    """Is `pid` running (a zombie, dead but not yet reaped, does not count)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_cancel_mid_epoch_kills_the_process_tree_and_leaves_no_run(each_backend, data):
    backend = each_backend
    job = backend.submit("cnn_baseline", tiny(data, epochs=50, batch_size=1))
    running = wait_for(lambda: (j := backend.get(job.id)).progress.get("batch") and j, 120,
                       "the training to be mid-epoch")
    assert running.status == "running" and 0 < running.fraction_done < 1
    assert re.search(r"^epoch \d+/50 · batch \d+/30 · ", running.describe_progress())
    training = running.progress["pid"]
    shell = parent_of(training)  # the job's shell: the worker's wrapper, or Ray's entrypoint shell

    cancelled = backend.cancel(job.id, wait=15)
    assert cancelled.status == "cancelled"
    wait_for(lambda: not process_alive(training) and not process_alive(shell), 10,
             "the training and its shell to be gone")
    if backend.name == "local":
        wait_for(lambda: not group_alive(running.pgid), 5, "the worker to reap the job's shell")
    assert artifacts.list_runs() == []
    assert not artifacts.work_dir(job.run_id).exists()
    with pytest.raises(JobError, match="already cancelled"):
        backend.cancel(job.id)


# ---------------------------------------------------------------- lost and resumed

def test_killed_training_turns_lost_then_resume_finishes_it(each_backend, data):
    backend = each_backend
    job = backend.submit("cnn_baseline", tiny(data, epochs=3, batch_size=2))
    running = wait_for(lambda: (j := backend.get(job.id)).progress.get("epoch", 0) >= 1 and j, 120,
                       "the first epoch to complete")
    os.kill(running.progress["pid"], signal.SIGKILL)  # from outside, as a crash or the OOM killer would

    lost = wait_for(lambda: (j := backend.get(job.id)).status == "lost" and j, HEARTBEAT_TIMEOUT + 30,
                    "the job to turn lost")
    assert "signal 9" in lost.error and f"jobs resume {job.id}" in lost.error
    assert "attempt 1" in lost.log_tail
    assert artifacts.list_runs() == []

    resumed = backend.resume(job.id)
    assert resumed.status in ("queued", "running")
    done = wait_for(lambda: (j := backend.get(job.id)).status not in ("queued", "running") and j, 120,
                    "the resumed job")
    assert done.status == "succeeded", backend.logs(job.id)
    assert done.attempt == 2
    assert f"resume {job.run_id}" in backend.logs(job.id)
    [run] = artifacts.list_runs()
    assert run.run_id == job.run_id and run.metadata["epochs_run"] == 3
    with pytest.raises(JobError, match="only lost or failed"):
        backend.resume(job.id)


# ---------------------------------------------------------------- without training

@pytest.fixture
def no_worker(backend):
    """Hold the worker lock, so submitted jobs stay queued and nothing trains."""
    lock = backend._lock()
    yield backend
    lock.close()


@pytest.fixture
def held(each_backend):
    """Submitted jobs stay queued and nothing trains: locally the worker lock is taken;
    on Ray the test's jobs ask for more CPUs than the cluster has (HOLD)."""
    lock = each_backend._lock() if each_backend.name == "local" else None
    yield each_backend
    if lock:
        lock.close()


def test_cli_submit_dedupe_seeds_list_cancel_and_logs(held, data, capsys):
    hold = HOLD[held.name]
    flags = ["--data", data, "--epochs", "1", "--limit-per-class", "2", "--val-size", "10",
             "--cpus", str(hold.cpus)]
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
    job = held.submit("cnn_baseline", {"data": data, "epochs": 1, "limit_per_class": 2, "val_size": 10},
                      resources=hold)
    assert job.id == 2 and not job.reused

    # A seed sweep: one job per seed, the same settings otherwise.
    assert cli.main(["jobs", "submit", "cnn_baseline", *flags, "--seeds", "3-4,7"]) == 0
    assert capsys.readouterr().out.count("queued job") == 3
    swept = [j for j in held.list_jobs() if j.id > 2]
    assert sorted(job_seed(j) for j in swept) == [3, 4, 7]
    assert all(j.status == "queued" for j in swept)
    assert cli.main(["jobs", "submit", "cnn_baseline", *flags, "--seeds", "0,2", "--seed", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main(["jobs", "submit", "cnn_baseline", *flags, "--seeds", "two"]) == 2
    assert "0-4 or 0,2,5" in capsys.readouterr().err
    assert len(held.list_jobs()) == 5


def job_seed(job) -> int:
    """The seed a job will train with, from its stored config."""
    return job.config["seed"]


def test_seed_lists_parse_as_ranges_and_lists():
    assert jobs.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert jobs.parse_seeds("0,2,5") == [0, 2, 5]
    assert jobs.parse_seeds("5, 0-1, 1") == [5, 0, 1]
    for bad in ("", "a", "3-1", "-2", "0-1000"):
        with pytest.raises(CifarError):
            jobs.parse_seeds(bad)


def test_submit_rejects_bad_requests_before_queueing(held, tmp_path):
    with pytest.raises(CifarError, match="unknown model 'nope'"):
        held.submit("nope", {})
    with pytest.raises(CifarError, match="does not exist"):
        held.submit("cnn_baseline", {"data": str(tmp_path / "missing")})
    with pytest.raises(CifarError, match="unknown training settings"):
        held.submit("cnn_baseline", {"colour": "red"})
    with pytest.raises(CifarError, match="at least some CPUs or GPUs"):
        held.submit("cnn_baseline", {}, resources=Resources(cpus=0, gpus=0))
    assert held.list_jobs() == []


@pytest.fixture
def no_worker(backend):
    """Hold the worker lock, so submitted jobs stay queued and nothing trains."""
    lock = backend._lock()
    yield backend
    lock.close()


def test_a_second_worker_steps_aside(no_worker):
    second = threading.Thread(target=no_worker.run_worker, kwargs={"idle_exit": None}, daemon=True)
    second.start()
    second.join(timeout=60)  # a worker that did not step aside would loop forever
    assert not second.is_alive()
    assert no_worker.worker_alive()


def test_the_ray_backend_says_what_is_missing(monkeypatch):
    monkeypatch.setenv("CIFAR_JOBS_BACKEND", "ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(CifarError, match="needs RAY_ADDRESS"):
        jobs.get_backend()
    monkeypatch.setenv("CIFAR_JOBS_BACKEND", "slurm")
    with pytest.raises(CifarError, match="known: local, ray"):
        jobs.get_backend()
    # Without ray installed (None in sys.modules makes its import fail): one line saying what to install.
    monkeypatch.setenv("CIFAR_JOBS_BACKEND", "ray")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    backend = jobs.get_backend()  # the page can start; using the cluster says what is missing
    with pytest.raises(CifarError, match="needs the ray package"):
        backend.submit("cnn_baseline", {"epochs": 1})
    assert "needs the ray package" in backend.capacity().error


def test_an_unreachable_ray_cluster_is_one_clear_error(monkeypatch, capsys, data):
    pytest.importorskip("ray.job_submission", reason="ray is not installed (pip install -r requirements.txt)")
    from tests.conftest import _free_port
    monkeypatch.setenv("CIFAR_JOBS_BACKEND", "ray")
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    backend = jobs.get_backend()
    assert "unreachable" in backend.capacity().error
    assert cli.main(["jobs", "submit", "cnn_baseline", "--data", data, "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and "ray start --head" in err and "Traceback" not in err
    assert backend.list_jobs() == []  # nothing recorded for a job that never reached the cluster


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
