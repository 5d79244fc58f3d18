"""The Ray job backend: the same queue as cifar/jobs_local.py, run by a Ray cluster.

Selected by `CIFAR_JOBS_BACKEND=ray` with `RAY_ADDRESS` set to the cluster's
job server (`http://HEAD:8265`). Every attempt of a job is one Ray job
(`JobSubmissionClient.submit_job`), running `python -m cifar
job_command(job)` (a training or a robustness evaluation) on whichever
node has the job's CPUs/GPUs free (`entrypoint_num_cpus`,
`entrypoint_num_gpus`), so jobs run side by side up to the cluster's
capacity. Ray uploads this code with each job (`runtime_env.working_dir`);
the nodes need the pinned requirements installed.

- Records: the job list lives in SQLite beside the local backend's
  (`artifacts.ray_jobs_database_path()`), not in Ray's job table. Job ids
  are small integers people type (`jobs cancel 3`), dedupe needs a
  transaction, a job spans several Ray jobs (one per attempt), and Ray's job
  table dies with a head that restarts without external Redis; the database
  is only written by the machines that submit (dashboard, CLI), never by
  the trainings.
- Artifacts: each job gets `CIFAR_ARTIFACTS` (absolute) in its
  `runtime_env.env_vars`, so every node must mount that folder at the same
  path (NFS, EFS, GCS-Fuse). Runs publish by one atomic rename there, as on
  one machine; progress.json there is the heartbeat.
- Outcomes (read from Ray when a job is looked at): a published run is
  `succeeded` (an evaluation: a Ray job that SUCCEEDED and the run's
  robustness table in place); exit 1..127 is `failed` with the log's error
  line; a kill
  (signal, `ray job stop` from outside, a dead node, a head that forgot the
  job) is `lost` once the heartbeat is `heartbeat_timeout` old, and resume
  queues a new Ray job that continues from the last checkpoint, on any node.
- Cancel: `stop_job`; Ray sends SIGTERM to the training's whole process tree
  and SIGKILL after `RAY_JOB_STOP_WAIT_TIME_S` (3 s), then the run's work
  folder is deleted, as locally (an evaluation's run is never touched). A
  queued job is cancelled at once; Ray stops it the moment it would have started.
- Ray fails a job still waiting for resources after
  `RAY_JOB_START_TIMEOUT_SECONDS` (15 min); such a job never ran, so it is
  submitted again and stays `queued` here: a sweep longer than the cluster
  can run at once still drains.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import secrets
import shutil
import sqlite3
import time
from urllib.parse import urlparse

from cifar import artifacts
from cifar.errors import CifarError
from cifar.jobs import (ACTIVE, DEFAULT_ROBUSTNESS_IMAGES, WHAT, Capacity, Job, JobBackend, JobError,
                        JobSettings, Resources, job_command, prepare_request, prepare_robustness,
                        result_in_place, result_summary)
from cifar.jobs_store import (LOG_TAIL_LINES, PACKAGE_PARENT, RESULT_OF, JobStore, check_resumable, error_line,
                              lost_note, refuse_a_second_evaluation)

CONNECT_TIMEOUT = 3.0  # seconds; a dashboard must not hang on a cluster that is down
# Not uploaded with each job: results, data archives, version control.
CODE_EXCLUDES = [".git", "/artifacts/", "*.tar.gz", "*.zip", ".cache", "__pycache__", ".pytest_cache"]
# Settings of this process that the training must see too.
PASSED_ENV = ("CIFAR_CACHE_DIR", "KERAS_BACKEND", "KERAS_HOME", "TF_CPP_MIN_LOG_LEVEL")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,          -- the run a training makes, or the run an evaluation reads
    model TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'train',  -- 'train' or 'robustness' (cifar.jobs.KINDS)
    config TEXT NOT NULL,          -- the resolved RunConfig (JSON) of a training ('{}' otherwise)
    payload TEXT NOT NULL DEFAULT '{}',  -- a robustness job's request (JSON): images, data
    config_key TEXT NOT NULL,      -- sha256 of the request, for dedupe
    status TEXT NOT NULL,
    submitted_by TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempt INTEGER NOT NULL DEFAULT 0,  -- Ray jobs submitted for it
    cpus REAL NOT NULL,
    gpus REAL NOT NULL,
    submission_id TEXT,            -- the current attempt's Ray job
    log_ids TEXT NOT NULL DEFAULT '[]',  -- every attempt's Ray job, oldest first, for logs
    cancel_requested_at REAL,
    error TEXT,
    log_tail TEXT,
    last_progress TEXT
);
"""
INDEXES = "CREATE UNIQUE INDEX IF NOT EXISTS one_training_per_run ON jobs (run_id) WHERE kind = 'train';"


def _unreachable(address: str, reason) -> CifarError:
    return CifarError(f"the Ray cluster at {address} ($RAY_ADDRESS) is unreachable ({reason}). Start one with "
                      f"`ray start --head`, fix RAY_ADDRESS, or unset CIFAR_JOBS_BACKEND to train on this machine")


class RayJobsBackend(JobStore, JobBackend):
    """Jobs as Ray jobs on a cluster, recorded in SQLite next to the artifacts."""

    name = "ray"

    def __init__(self, address: str | None = None, settings: JobSettings | None = None, **overrides):
        self.address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
        if not self.address:
            raise CifarError("CIFAR_JOBS_BACKEND=ray needs RAY_ADDRESS, the cluster's job server "
                             "(e.g. http://127.0.0.1:8265)")
        self.settings = settings or JobSettings.from_env(**overrides)
        self.dir = artifacts.jobs_dir()
        self.db_path = artifacts.ray_jobs_database_path()
        self._client = None

    # ------------------------------------------------------------ the cluster

    @property
    def client(self):
        """The job server's client, connected on first use (the page starts without it)."""
        if self._client is None:
            try:
                from ray.job_submission import JobSubmissionClient
                # Ray logs each code upload at INFO/WARNING; a submit should print one line.
                for name in ("ray", "ray.dashboard.modules.dashboard_sdk"):  # the second sets its own level
                    logging.getLogger(name).setLevel(logging.ERROR)
            except ImportError:
                raise CifarError("CIFAR_JOBS_BACKEND=ray needs the ray package: "
                                 "pip install -r requirements.txt") from None
            url = urlparse(self.address if "://" in self.address else f"http://{self.address}")
            if url.scheme in ("http", "https") and url.hostname:
                try:
                    port = url.port or (443 if url.scheme == "https" else 80)
                    socket.create_connection((url.hostname, port), CONNECT_TIMEOUT).close()
                except OSError as exc:
                    raise _unreachable(self.address, exc) from None
            try:
                self._client = JobSubmissionClient(self.address)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise _unreachable(self.address, exc) from None
        return self._client

    def _ray_call(self, method: str, *args, **kwargs):
        """A job server request, with an unreachable cluster as one CifarError."""
        import requests
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except (ConnectionError, requests.exceptions.ConnectionError) as exc:
            raise _unreachable(self.address, exc) from None

    def _ray_info(self, submission_id: str):
        """The Ray job's details, or None if the cluster does not know it (a restarted head)."""
        try:
            return self._ray_call("get_job_info", submission_id)
        except RuntimeError as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return None
            raise CifarError(f"the Ray job server refused a request: {exc}") from None

    def capacity(self) -> Capacity:
        where = self.address
        try:
            import requests
            response = requests.get(f"{self.client.get_address()}/api/cluster_status", timeout=5)
            usage = response.json()["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
        except CifarError as exc:
            return Capacity(backend=self.name, where=where, summary=str(exc), error=str(exc))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            error = f"the Ray cluster at {where} did not say its resources ({exc.__class__.__name__})"
            return Capacity(backend=self.name, where=where, summary=error, error=error)
        if "CPU" not in usage:  # the head's monitor reports a few seconds after it starts
            return Capacity(backend=self.name, where=where,
                            summary=f"Jobs run on the Ray cluster at {where}; it has not reported its "
                                    f"CPUs and GPUs yet.")
        used_cpus, total_cpus = usage.get("CPU", [0.0, 0.0])
        used_gpus, total_gpus = usage.get("GPU", [0.0, 0.0])
        free_cpus, free_gpus = total_cpus - used_cpus, total_gpus - used_gpus
        return Capacity(backend=self.name, where=where,
                        summary=f"Jobs run on the Ray cluster at {where}: {free_cpus:g} of {total_cpus:g} CPUs "
                                f"and {free_gpus:g} of {total_gpus:g} GPUs free. Each job reserves the CPUs and "
                                f"GPUs it asks for; jobs run side by side while they fit.",
                        free_cpus=free_cpus, total_cpus=total_cpus, free_gpus=free_gpus, total_gpus=total_gpus)

    # ------------------------------------------------------------ storage (cifar/jobs_store.py)

    SCHEMA, INDEXES = SCHEMA, INDEXES

    def _evaluation_log_tail(self, row: sqlite3.Row) -> str:
        try:
            return self.logs(row["id"], 5)
        except (CifarError, RuntimeError):  # the cluster went away: no progress, not an error
            return ""

    def _update(self, row: sqlite3.Row, **values) -> bool:
        """Write `values` unless someone else changed the job's status or attempt first."""
        with self._transaction() as con:
            current = con.execute("SELECT status, attempt FROM jobs WHERE id = ?", (row["id"],)).fetchone()
            if (current["status"], current["attempt"]) != (row["status"], row["attempt"]):
                return False
            con.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                        (*values.values(), row["id"]))
        return True

    # ------------------------------------------------------------ the interface

    def submit(self, model: str, overrides: dict | None = None, submitted_by: str = "",
               resources: Resources | None = None) -> Job:
        config, key = prepare_request(model, overrides)
        return self._enqueue("train", model, key, resources, config=config.to_dict(), submitted_by=submitted_by)

    def submit_robustness(self, run_id: str, images: int = DEFAULT_ROBUSTNESS_IMAGES, data: str | None = None,
                          submitted_by: str = "", resources: Resources | None = None) -> Job:
        payload, model, key = prepare_robustness(run_id, images, data)
        return self._enqueue("robustness", model, key, resources, payload=payload, run_id=run_id,
                             submitted_by=submitted_by)

    def _enqueue(self, kind: str, model: str, key: str, resources: Resources | None, config: dict | None = None,
                 payload: dict | None = None, run_id: str | None = None, submitted_by: str = "") -> Job:
        """Record the job and submit its first attempt, or return the identical recent one."""
        resources = resources or Resources()
        self.client  # noqa: B018 - a cluster that is down refuses the job before it is recorded
        now = time.time()
        with self._transaction() as con:
            row = con.execute(
                "SELECT * FROM jobs WHERE config_key = ? AND (status IN ('queued', 'running') OR "
                "(status != 'cancelled' AND created_at > ?)) ORDER BY id DESC LIMIT 1",
                (key, now - self.settings.dedupe_window)).fetchone()
            if row is not None:
                return self._job(row, reused=True)
            refuse_a_second_evaluation(con, kind, run_id)
            job_id = con.execute(
                "INSERT INTO jobs (run_id, model, kind, config, payload, config_key, status, submitted_by, "
                "created_at, queued_at, cpus, gpus) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (run_id or artifacts.new_run_id(model), model, kind, json.dumps(config or {}),
                 json.dumps(payload or {}), key, submitted_by, now, now, resources.cpus,
                 resources.gpus)).lastrowid
        row = self._row(job_id)
        try:
            self._submit_attempt(row)
        except CifarError:
            with self._transaction() as con:
                con.execute("DELETE FROM jobs WHERE id = ?", (job_id,))  # nothing ran: forget it
            raise
        return self._job(self._row(job_id))

    def get(self, job_id: int) -> Job:
        self._settle(self._row(job_id))
        return self._job(self._row(job_id))

    def list_jobs(self, limit: int = 20) -> list[Job]:
        for row in self._rows("SELECT * FROM jobs WHERE status IN ('queued', 'running')"):
            self._settle(row)
        rows = self._rows("SELECT * FROM jobs ORDER BY status NOT IN ('queued', 'running'), id DESC "
                          "LIMIT ?", (int(limit),))
        return [self._job(row) for row in rows]

    def cancel(self, job_id: int, wait: float = 0.0) -> Job:
        self._settle(self._row(job_id))  # a job Ray already started is cancelled as a running one
        now = time.time()
        with self._transaction() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is None:
                raise JobError(f"no job {job_id}; list jobs with: python -m cifar jobs list")
            if row["status"] not in ACTIVE:
                raise JobError(f"job {job_id} already {row['status']}; nothing to cancel")
            if row["status"] == "queued":
                con.execute("UPDATE jobs SET status = 'cancelled', finished_at = ?, cancel_requested_at = ?, "
                            "error = 'cancelled before it started' WHERE id = ?", (now, now, row["id"]))
            elif row["cancel_requested_at"] is None:
                con.execute("UPDATE jobs SET cancel_requested_at = ? WHERE id = ?", (now, row["id"]))
        self._ray_call("stop_job", row["submission_id"])
        deadline = time.monotonic() + wait
        while self.get(job_id).status == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.get(job_id)

    def logs(self, job_id: int, lines: int = 200) -> str:
        """Every attempt's output, oldest first, as Ray kept it."""
        row = self._row(job_id)
        text = "".join(self._attempt_log(row, attempt, submission_id)
                       for attempt, submission_id in enumerate(json.loads(row["log_ids"]), start=1))
        return "\n".join(text.splitlines()[-lines:])

    def resume(self, job_id: int) -> Job:
        row = self._row(job_id)
        check_resumable(row)
        if not self._update(row, status="queued", queued_at=time.time(), finished_at=None, error=None,
                            cancel_requested_at=None):
            raise JobError(f"job {job_id} changed while resuming it; look again")
        try:
            self._submit_attempt(self._row(job_id))
        except CifarError:
            self._update(self._row(job_id), status=row["status"], finished_at=row["finished_at"],
                         error=row["error"])  # as it was: it can be resumed again later
            raise
        return self.get(job_id)

    # ------------------------------------------------------------ attempts

    def _submit_attempt(self, row: sqlite3.Row, again: bool = False) -> None:
        """Submit the job's next attempt to Ray (or, `again`, the same attempt anew)."""
        job = self._job(row)
        command = job_command(job)
        attempt = row["attempt"] if again else row["attempt"] + 1
        submission_id = f"cifar-{row['run_id']}-{attempt}-{secrets.token_hex(2)}"
        env = {name: os.environ[name] for name in PASSED_ENV if os.environ.get(name)}
        env.update(CIFAR_ARTIFACTS=str(artifacts.root().resolve()), PYTHONUNBUFFERED="1")
        header = f"=== job {row['id']} attempt {attempt} on Ray: python -m cifar {shlex.join(command)}"
        self._ray_call("submit_job", submission_id=submission_id,
                       entrypoint=f"echo {shlex.quote(header)} && python -m cifar {shlex.join(command)}",
                       runtime_env={"working_dir": str(PACKAGE_PARENT), "excludes": CODE_EXCLUDES,
                                    "env_vars": env},
                       entrypoint_num_cpus=row["cpus"], entrypoint_num_gpus=row["gpus"],
                       metadata={"cifar_job": str(row["id"]), "run_id": row["run_id"], "attempt": str(attempt)})
        ids = json.loads(row["log_ids"])
        ids = ids[:-1] + [submission_id] if again and ids else ids + [submission_id]
        with self._transaction() as con:
            con.execute("UPDATE jobs SET attempt = ?, submission_id = ?, log_ids = ? WHERE id = ?",
                        (attempt, submission_id, json.dumps(ids), row["id"]))

    def _attempt_log(self, row: sqlite3.Row, attempt: int, submission_id: str) -> str:
        try:
            text = self._ray_call("get_job_logs", submission_id)
            return text if text.endswith("\n") or not text else text + "\n"
        except RuntimeError:
            return f"=== job {row['id']} attempt {attempt}: its log is gone (the Ray head forgot the job)\n"

    # ------------------------------------------------------------ settling

    def _settle(self, row: sqlite3.Row) -> None:
        """Bring an active job's record up to date with what Ray says of its attempt."""
        if row["status"] not in ACTIVE or not row["submission_id"]:
            return
        info = self._ray_info(row["submission_id"])
        state = info.status.value if info else "MISSING"
        now = time.time()
        if state == "PENDING":
            return
        if state == "RUNNING":
            if row["status"] == "queued":
                self._update(row, status="running", started_at=now)
            return
        if (state == "FAILED" and row["status"] == "queued" and row["cancel_requested_at"] is None
                and getattr(info.error_type, "value", info.error_type) == "JOB_SUPERVISOR_ACTOR_START_TIMEOUT"):
            self._submit_attempt(row, again=True)  # it waited too long for resources, never ran
            return
        kind, what = row["kind"], WHAT.get(row["kind"], row["kind"])
        training = kind == "train"
        progress = artifacts.read_json_or_empty(artifacts.progress_path(row["run_id"])) if training else {}
        done = result_in_place(kind, row["run_id"]) and (training or state == "SUCCEEDED")
        exit_code = info.driver_exit_code if info else None
        if row["cancel_requested_at"] is not None:
            if training:
                shutil.rmtree(artifacts.work_dir(row["run_id"]), ignore_errors=True)
                if done:
                    artifacts.delete_run(row["run_id"])
            status, error = "cancelled", "cancelled by request"
        elif done:
            status, error = "succeeded", None
            progress = result_summary(kind, row["run_id"])
        elif state == "SUCCEEDED":
            status, error = "failed", f"the {what} exited without {RESULT_OF[kind]}"
        elif state == "FAILED" and exit_code is not None and 0 < exit_code < 128:
            tail = self.logs(row["id"], LOG_TAIL_LINES)
            status, error = "failed", error_line(tail) or f"the {what} exited with code {exit_code}"
        elif state == "FAILED" and exit_code is None and info.error_type and "DIED" not in str(info.error_type):
            status, error = "failed", f"Ray could not run it: {info.message}"
        else:
            heartbeat = max(progress.get("updated_at") or 0, row["started_at"] or 0)
            if now - heartbeat < self.settings.heartbeat_timeout:
                return
            if exit_code is not None and (exit_code < 0 or exit_code >= 128):
                how = f"was killed by signal {abs(exit_code) % 128 or abs(exit_code)}"
            elif state == "STOPPED":
                how = "was stopped from outside (ray job stop)"
            elif info is None:
                how = "is unknown to the Ray cluster (was its head restarted?)"
            else:
                how = f"ended without an exit status ({info.message})"
            status = "lost"
            error = f"the {what} {how}; {lost_note(kind, progress, row['id'])}"
        tail = self.logs(row["id"], LOG_TAIL_LINES) if status in ("failed", "lost") else None
        started = row["started_at"] or (info.start_time / 1000 if info and info.start_time else now)
        self._update(row, status=status, started_at=started, finished_at=now, error=error, log_tail=tail,
                     last_progress=json.dumps(progress))
