"""The local job backend: training (or evaluation) processes on this machine, queued in SQLite.

- One worker process (`python -m cifar jobs worker`, or `python -m
  cifar.jobs_local` when `submit` starts one on demand) holds `worker.lock` (flock, so a crash frees it) and every
  second reaps its children, settles jobs whose processes have gone, and
  starts queued jobs oldest first while fewer than `max_concurrent` run.
  Every state change happens inside `BEGIN IMMEDIATE`, so two workers or two
  submitters never start or record the same job twice.
- Each attempt is `/bin/sh` wrapping the training in its own session
  (process group); the shell writes the exit status to `<job>.exit`, so any
  process, not only the parent, can tell a clean failure (exit 1..127) from
  a kill (128+signal) or a vanished machine (no file, another boot id).
- The heartbeat is progress.json's `updated_at` (written by the training at
  least once a second during an epoch). A job whose process group is gone
  without a result turns `lost` once that heartbeat is `heartbeat_timeout`
  seconds old; a live process is never declared lost, because data loading
  and test evaluation legitimately go quiet for a while. A robustness
  evaluation writes no progress file (its progress is read from the Keras
  progress bar in its log), so its heartbeat is its start time.
- Cancel sends SIGTERM to the group, SIGKILL after `cancel_grace` seconds,
  then deletes the run's work folder (and the run, if it was published in
  the same instant), so nothing from a cancelled training is visible. A
  robustness evaluation writes its table in one atomic step at its end, so
  cancelling one only stops it: the run keeps what it had.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cifar import artifacts
from cifar.errors import CifarError
from cifar.jobs import (DEFAULT_ROBUSTNESS_IMAGES, WHAT, Job, JobBackend, JobError, JobSettings,
                        job_command, prepare_request, prepare_robustness, result_in_place, result_summary)
from cifar.jobs_store import (LOG_TAIL_LINES, PACKAGE_PARENT, RESULT_OF, JobDatabaseError, JobStore,
                              check_resumable, error_line, lost_note, refuse_a_second_evaluation)


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,          -- the run a training makes, or the run an evaluation reads
    model TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'train',  -- 'train' or 'robustness' (cifar.jobs.KINDS)
    config TEXT NOT NULL,          -- JSON of the resolved RunConfig a training job trains ('{}' otherwise)
    payload TEXT NOT NULL DEFAULT '{}',  -- JSON of a robustness job's request: images, data
    config_key TEXT NOT NULL,      -- sha256 of the request (the resolved RunConfig), for dedupe
    status TEXT NOT NULL,
    submitted_by TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    queued_at REAL NOT NULL,       -- FIFO order; reset when a job is resumed
    started_at REAL,
    finished_at REAL,
    attempt INTEGER NOT NULL DEFAULT 0,
    pgid INTEGER,
    boot_id TEXT,
    cancel_requested_at REAL,
    exit_code INTEGER,
    error TEXT,
    log_tail TEXT,
    last_progress TEXT             -- progress.json (or the evaluation's result) when the job ended
);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, queued_at);
CREATE UNIQUE INDEX IF NOT EXISTS one_training_per_run ON jobs (run_id) WHERE kind = 'train';
"""


# ---------------------------------------------------------------- processes

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _group_alive(pgid: int | None, boot_id: str | None) -> bool:
    """Does any process of this group still run? Zombies do not count: an orphaned
    job's shell may never be reaped where PID 1 does not reap (some containers)."""
    if not pgid or (boot_id and boot_id != _boot_id()):
        return False
    if not Path("/proc/self/stat").exists():  # not Linux: ask the kernel directly
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        if int(group) == pgid and state not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int | None, sig: int) -> None:
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * lines))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# The shell stays in the job's process group and records how the training ended.
_WRAPPER = 'exit_file="$1"; shift; "$@"; echo $? > "$exit_file.tmp" && mv "$exit_file.tmp" "$exit_file"'
# A double fork: the shell exits at once, so the worker is nobody's zombie.
_DETACH = 'log="$1"; shift; "$@" </dev/null >>"$log" 2>&1 &'


class LocalProcessBackend(JobStore, JobBackend):
    """Jobs as detached process groups on this machine, recorded in SQLite."""

    def __init__(self, settings: JobSettings | None = None, **overrides):
        self.settings = settings or JobSettings.from_env(**overrides)
        self.dir = artifacts.jobs_dir()
        self.db_path = artifacts.jobs_database_path()

    # ------------------------------------------------------------ storage (cifar/jobs_store.py)

    SCHEMA, INDEXES = SCHEMA, INDEXES

    def _prepare(self, con: sqlite3.Connection) -> None:
        con.execute("PRAGMA journal_mode=WAL")  # readers never wait for the worker
        super()._prepare(con)

    def _migrate(self, con: sqlite3.Connection) -> None:
        _migrate_command_lines(con)

    def _evaluation_log_tail(self, row: sqlite3.Row) -> str:
        return _tail(self.log_path(row["id"]), 5)

    def log_path(self, job_id: int) -> Path:
        return artifacts.job_log_path(job_id)

    def _exit_path(self, job_id: int) -> Path:
        return artifacts.job_exit_path(job_id)

    # ------------------------------------------------------------ the interface

    def submit(self, model: str, overrides: dict | None = None, submitted_by: str = "",
               resources=None) -> Job:
        # `resources` is for backends that schedule by them (Ray); here max_concurrent limits.
        config, key = prepare_request(model, overrides)
        return self._enqueue("train", config.model, key, config=config.to_dict(), submitted_by=submitted_by)

    def submit_robustness(self, run_id: str, images: int = DEFAULT_ROBUSTNESS_IMAGES, data: str | None = None,
                          submitted_by: str = "", resources=None) -> Job:
        payload, model, key = prepare_robustness(run_id, images, data)
        return self._enqueue("robustness", model, key, payload=payload, run_id=run_id, submitted_by=submitted_by)

    def _enqueue(self, kind: str, model: str, key: str, config: dict | None = None, payload: dict | None = None,
                 run_id: str | None = None, submitted_by: str = "") -> Job:
        """Record a queued job (a training's run id is made now), or return the identical
        queued, running or just-submitted one; then make sure a worker will start it."""
        now = time.time()
        with self._transaction() as con:
            row = con.execute(
                "SELECT * FROM jobs WHERE config_key = ? AND (status IN ('queued', 'running') OR "
                "(status != 'cancelled' AND created_at > ?)) ORDER BY id DESC LIMIT 1",
                (key, now - self.settings.dedupe_window)).fetchone()
            if row is None:
                refuse_a_second_evaluation(con, kind, run_id)
                job_id = con.execute(
                    "INSERT INTO jobs (run_id, model, kind, config, payload, config_key, status, submitted_by, "
                    "created_at, queued_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                    (run_id or artifacts.new_run_id(model), model, kind, json.dumps(config or {}),
                     json.dumps(payload or {}), key, submitted_by, now, now)).lastrowid
                row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                reused = False
            else:
                reused = True
        self.ensure_worker()
        return self._job(row, reused=reused)

    def get(self, job_id: int) -> Job:
        self._settle(self._row(job_id))
        return self._job(self._row(job_id))

    def list_jobs(self, limit: int = 20) -> list[Job]:
        rows = self._rows("SELECT * FROM jobs WHERE status = 'running'")
        for row in rows:
            self._settle(row)
        if self._rows("SELECT id FROM jobs WHERE status = 'queued' LIMIT 1"):
            self.ensure_worker()  # e.g. after a reboot, when no worker came back
        rows = self._rows("SELECT * FROM jobs ORDER BY status NOT IN ('queued', 'running'), id DESC "
                          "LIMIT ?", (int(limit),))
        return [self._job(row) for row in rows]

    def cancel(self, job_id: int, wait: float = 0.0) -> Job:
        now = time.time()
        with self._transaction() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is None:
                raise JobError(f"no job {job_id}; list jobs with: python -m cifar jobs list")
            if row["status"] == "queued":
                con.execute("UPDATE jobs SET status = 'cancelled', finished_at = ?, "
                            "cancel_requested_at = ?, error = 'cancelled before it started' WHERE id = ?",
                            (now, now, row["id"]))
            elif row["status"] == "running" and row["cancel_requested_at"] is None:
                con.execute("UPDATE jobs SET cancel_requested_at = ? WHERE id = ?", (now, row["id"]))
            elif row["status"] != "running":
                raise JobError(f"job {job_id} already {row['status']}; nothing to cancel")
        if row["status"] == "running":
            _signal_group(row["pgid"], signal.SIGTERM)
            deadline = time.monotonic() + wait
            while True:
                self._settle(self._row(job_id))
                if self._row(job_id)["status"] != "running" or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
        return self.get(job_id)

    def logs(self, job_id: int, lines: int = 200) -> str:
        self._row(job_id)
        return _tail(self.log_path(job_id), lines)

    def resume(self, job_id: int) -> Job:
        with self._transaction() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is None:
                raise JobError(f"no job {job_id}; list jobs with: python -m cifar jobs list")
            check_resumable(row)
            con.execute("UPDATE jobs SET status = 'queued', queued_at = ?, finished_at = NULL, "
                        "error = NULL, exit_code = NULL, cancel_requested_at = NULL WHERE id = ?",
                        (time.time(), row["id"]))
        self.ensure_worker()
        return self.get(job_id)

    # ------------------------------------------------------------ settling finished processes

    def _settle(self, row: sqlite3.Row) -> None:
        """Escalate an overdue cancel; record the outcome of a job whose processes are gone."""
        if row["status"] != "running":
            return
        now = time.time()
        if _group_alive(row["pgid"], row["boot_id"]):
            requested = row["cancel_requested_at"]
            if requested is not None and now - requested > self.settings.cancel_grace:
                _signal_group(row["pgid"], signal.SIGKILL)
            return
        exit_code = _read_exit(self._exit_path(row["id"]))
        kind, what = row["kind"], WHAT.get(row["kind"], row["kind"])
        training = kind == "train"
        progress = artifacts.read_json_or_empty(artifacts.progress_path(row["run_id"])) if training else {}
        done = result_in_place(kind, row["run_id"]) and (training or exit_code == 0)
        tail = _tail(self.log_path(row["id"]), LOG_TAIL_LINES)
        if row["cancel_requested_at"] is not None:
            if training:  # a cancel that raced the final rename still must leave nothing visible
                shutil.rmtree(artifacts.work_dir(row["run_id"]), ignore_errors=True)
                if done:
                    artifacts.delete_run(row["run_id"])
            status, error = "cancelled", "cancelled by request"
        elif done:
            status, error = "succeeded", None
            progress = result_summary(kind, row["run_id"])
        elif exit_code is not None and 0 < exit_code < 128:
            status, error = "failed", error_line(tail) or f"the {what} exited with code {exit_code}"
        elif exit_code == 0:
            status, error = "failed", f"the {what} exited without {RESULT_OF[kind]}"
        else:
            heartbeat = max(progress.get("updated_at") or 0, row["started_at"] or 0)
            if now - heartbeat < self.settings.heartbeat_timeout:
                return
            how = f"killed by signal {exit_code - 128}" if exit_code else "vanished (no exit status)"
            status = "lost"
            error = f"the {what} process {how}; {lost_note(kind, progress, row['id'])}"
        with self._transaction() as con:
            current = con.execute("SELECT status, attempt FROM jobs WHERE id = ?", (row["id"],)).fetchone()
            if current["status"] != "running" or current["attempt"] != row["attempt"]:
                return  # someone else settled it first
            con.execute("UPDATE jobs SET status = ?, finished_at = ?, exit_code = ?, error = ?, "
                        "log_tail = ?, last_progress = ? WHERE id = ?",
                        (status, now, exit_code, error, tail if status != "succeeded" else None,
                         json.dumps(progress), row["id"]))

    # ------------------------------------------------------------ the worker

    def _lock(self, owner: bool = False):
        """The worker lock, held (an open file), or None if another worker holds it.
        The owner writes its pid into it, for people and for tests."""
        path = artifacts.jobs_worker_lock_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        if owner:
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        return handle

    def worker_alive(self) -> bool:
        handle = self._lock()
        if handle is None:
            return True
        handle.close()
        return False

    def ensure_worker(self) -> None:
        """Start a worker in the background unless one is alive."""
        if self.worker_alive():
            return
        env = {**os.environ, **self.settings.as_env(), "CIFAR_ARTIFACTS": str(artifacts.root())}
        # `python -m cifar.jobs_local`, not `python -m cifar jobs worker`: the full CLI imports
        # TensorFlow (~9 s, ~700 MB), which a worker that only starts processes never needs.
        command = [sys.executable, "-m", "cifar.jobs_local", "--idle-exit", str(self.settings.worker_idle_exit)]
        subprocess.run(["/bin/sh", "-c", _DETACH, "cifar-jobs", str(artifacts.jobs_worker_log_path()), *command],
                       cwd=PACKAGE_PARENT, env=env, check=True, start_new_session=True)

    def run_worker(self, idle_exit: float | None = None) -> None:
        """Start queued jobs as slots free up; return after `idle_exit` idle seconds (None: never)."""
        lock = self._lock(owner=True)
        if lock is None:
            return
        children: dict[int, subprocess.Popen] = {}
        idle_since = None
        while True:
            for job_id, process in list(children.items()):
                if process.poll() is not None:
                    del children[job_id]
            try:
                for row in self._rows("SELECT * FROM jobs WHERE status = 'running'"):
                    self._settle(row)
                self._start_queued(children)
            except JobDatabaseError as exc:  # e.g. locked for 30 s by a stuck writer
                if not isinstance(exc.__cause__, sqlite3.OperationalError):
                    raise  # a damaged file stays damaged: retrying every second helps nobody
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker: {exc}; retrying", file=sys.stderr,
                      flush=True)
            if children or self._rows("SELECT id FROM jobs WHERE status IN ('queued', 'running') LIMIT 1"):
                idle_since = None
            elif idle_exit is not None:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= idle_exit:
                    lock.close()  # then look once more, so a submit that saw us alive is not stranded
                    if not self._rows("SELECT id FROM jobs WHERE status = 'queued' LIMIT 1"):
                        return
                    lock = self._lock(owner=True)
                    if lock is None:
                        return
                    idle_since = None
            time.sleep(self.settings.poll_interval)

    def _start_queued(self, children: dict[int, subprocess.Popen]) -> None:
        if not self._rows("SELECT id FROM jobs WHERE status = 'queued' LIMIT 1"):
            return  # the common case, without taking the write lock
        with self._transaction() as con:
            running = con.execute("SELECT COUNT(*) FROM jobs WHERE status = 'running'").fetchone()[0]
            free = self.settings.max_concurrent - running
            if free <= 0:
                return
            queued = con.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY queued_at, id "
                                 "LIMIT ?", (free,)).fetchall()
            for row in queued:
                try:
                    process = self._spawn(row)
                except (OSError, CifarError) as exc:
                    con.execute("UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                                (time.time(), f"could not start the {WHAT.get(row['kind'], 'job')}: {exc}",
                                 row["id"]))
                    continue
                children[row["id"]] = process
                con.execute("UPDATE jobs SET status = 'running', attempt = attempt + 1, started_at = ?, "
                            "pgid = ?, boot_id = ?, exit_code = NULL, error = NULL, log_tail = NULL, "
                            "last_progress = NULL, cancel_requested_at = NULL WHERE id = ?",
                            (time.time(), process.pid, _boot_id(), row["id"]))

    def _spawn(self, row: sqlite3.Row) -> subprocess.Popen:
        args = job_command(self._job(row))  # a training's later attempt resumes from the last checkpoint
        exit_path = self._exit_path(row["id"])
        exit_path.unlink(missing_ok=True)
        command = [sys.executable, "-m", "cifar", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_ARTIFACTS": str(artifacts.root())}
        log_path = self.log_path(row["id"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"=== job {row['id']} attempt {row['attempt'] + 1} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: python -m cifar {shlex.join(args)}\n".encode())
            log.flush()
            return subprocess.Popen(["/bin/sh", "-c", _WRAPPER, "cifar-job", str(exit_path), *command],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=PACKAGE_PARENT, env=env, start_new_session=True)


def _migrate_command_lines(con: sqlite3.Connection) -> None:
    """Older versions stored each job's command line (`args`), not its config.
    Each job gets the settings its command line gave as its config (the recipe
    fills in the rest when it trains); a queued job whose line cannot be read
    back (`--track-test True`, one of that format's bugs) is failed with a note
    to submit it again. Runs once, whoever opens the old database first."""
    if "args" not in {row["name"] for row in con.execute("PRAGMA table_info(jobs)")}:
        return
    con.execute("BEGIN IMMEDIATE")
    try:
        if "args" in {row["name"] for row in con.execute("PRAGMA table_info(jobs)")}:
            con.execute("ALTER TABLE jobs ADD COLUMN config TEXT NOT NULL DEFAULT '{}'")
            for row in con.execute("SELECT id, status, args FROM jobs").fetchall():
                try:
                    config = _config_from_command_line(json.loads(row["args"]))
                except (ValueError, TypeError) as exc:
                    config = {}
                    if row["status"] == "queued":
                        con.execute("UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                                    (time.time(), f"queued by an older version whose command line cannot be "
                                     f"read back ({exc}); submit it again", row["id"]))
                con.execute("UPDATE jobs SET config = ? WHERE id = ?", (json.dumps(config), row["id"]))
            con.execute("ALTER TABLE jobs DROP COLUMN args")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _config_from_command_line(argv: list[str]) -> dict:
    """The settings of an old job's `train MODEL --run-id ID --quiet --flag value ...`."""
    import argparse

    from cifar.config import add_config_flags, config_overrides
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for name in ("command", "model"):
        parser.add_argument(name)
    parser.add_argument("--run-id")
    parser.add_argument("--quiet", action="store_true")
    add_config_flags(parser)
    try:
        args, extra = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ValueError(str(exc)) from None
    if extra or args.command != "train":
        raise ValueError(f"unexpected arguments {extra or [args.command]}")
    return {"model": args.model, **config_overrides(args)}


def _read_exit(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    """`python -m cifar.jobs_local [--idle-exit SECONDS]`: the worker, started on demand by submit."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m cifar.jobs_local", description="Run the job worker.")
    parser.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS")
    try:
        LocalProcessBackend().run_worker(idle_exit=parser.parse_args(argv).idle_exit)
    except CifarError as exc:  # one line in worker.log, like the CLI's
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker stopped: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
