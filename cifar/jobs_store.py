"""The job records both backends keep in SQLite: one table `jobs`, a schema
and indexes each backend names, opened, migrated and read the same way.

`LocalProcessBackend` (cifar/jobs_local.py) and `RayJobsBackend`
(cifar/jobs_ray.py) inherit this; each says where its database lives, what
its schema is, and how a running evaluation's log tail is read. What both
decide alike about a record lives here too: the error line a failed job
keeps, what a lost job had done, which jobs may be resumed, and that a run
has one robustness evaluation at a time.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from cifar import artifacts
from cifar.jobs import Job, JobError, evaluation_progress

PACKAGE_PARENT = Path(__file__).resolve().parent.parent  # where `python -m cifar` is importable
LOG_TAIL_LINES = 40  # lines of a job's log kept with a failed or lost record
# What each kind of job leaves behind when it succeeds.
RESULT_OF = {"train": "publishing a run", "robustness": "writing the run's robustness table"}


class JobStore:
    """SQLite storage for a JobBackend; subclasses set `db_path`, `SCHEMA` and `INDEXES`."""

    db_path: Path
    SCHEMA: str
    INDEXES: str
    _schema_ready = False

    def _connect(self) -> sqlite3.Connection:
        with self._database_errors():
            if not self._schema_ready:
                self.db_path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            con.row_factory = sqlite3.Row
            if not self._schema_ready:  # once per backend object: schema, migrations, indexes
                try:
                    self._prepare(con)
                except BaseException:
                    con.close()
                    raise
                self._schema_ready = True
            return con

    def _prepare(self, con: sqlite3.Connection) -> None:
        con.executescript(self.SCHEMA)
        self._migrate(con)
        migrate_job_kinds(con, self.SCHEMA)
        con.executescript(self.INDEXES)

    def _migrate(self, con: sqlite3.Connection) -> None:
        """A backend's own migrations of older databases (none by default)."""

    @contextlib.contextmanager
    def _database_errors(self):
        """SQLite's failures as one JobDatabaseError saying what to do with the file.
        A broken constraint is the caller's to handle (a second training of one
        run id, say), not a sign of a damaged file: it passes through as is."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            raise JobDatabaseError(self.db_path, exc) from exc

    @contextlib.contextmanager
    def _transaction(self):
        con = self._connect()
        try:
            with self._database_errors():
                con.execute("BEGIN IMMEDIATE")
                yield con
                con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # a broken file may refuse even this
                    con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def _rows(self, sql: str, params=()) -> list[sqlite3.Row]:
        con = self._connect()
        try:
            with self._database_errors():
                return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def _row(self, job_id: int) -> sqlite3.Row:
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", (int(job_id),))
        if not rows:
            raise JobError(f"no job {job_id}; list jobs with: python -m cifar jobs list")
        return rows[0]

    def _evaluation_log_tail(self, row: sqlite3.Row) -> str:
        """The last lines of a running robustness job's log (its progress bar)."""
        raise NotImplementedError

    def _job(self, row: sqlite3.Row, reused: bool = False) -> Job:
        if row["status"] == "running" and row["kind"] == "robustness":
            progress = evaluation_progress(self._evaluation_log_tail(row))
        elif row["status"] == "running":
            progress = artifacts.read_json_or_empty(artifacts.progress_path(row["run_id"]))
            if not progress and artifacts.run_dir(row["run_id"]).exists():
                progress = {"status": "completed"}  # published; the process is exiting
        else:
            progress = _json_object(row["last_progress"])
        return Job(id=row["id"], run_id=row["run_id"], model=row["model"], config=_json_object(row["config"]),
                   status=row["status"], submitted_by=row["submitted_by"], created_at=row["created_at"],
                   queued_at=row["queued_at"], started_at=row["started_at"],
                   finished_at=row["finished_at"], attempt=row["attempt"], error=row["error"],
                   log_tail=row["log_tail"], cancel_requested=row["cancel_requested_at"] is not None,
                   pgid=row["pgid"] if "pgid" in row.keys() else None, progress=progress, reused=reused,
                   kind=row["kind"], payload=_json_object(row["payload"]))


def _json_object(text) -> dict:
    """A record's JSON column as a dict; {} for NULL or damage (a hand-edited or torn
    database), so one bad record never hides the others. Such a job then fails on
    resume with a message, instead of `jobs list` failing."""
    try:
        value = json.loads(text) if isinstance(text, (str, bytes)) else None
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


class JobDatabaseError(JobError):
    """The job database cannot be opened, read or written."""

    def __init__(self, path: Path, exc: sqlite3.DatabaseError):
        reason = str(exc)
        if "locked" in reason or "busy" in reason:
            advice = "another process holds it (a worker or a submit); try again in a moment"
        elif "readonly" in reason or "unable to open" in reason:
            advice = ("check that it is a file you may read and write, in a folder you may write "
                      "($CIFAR_ARTIFACTS moves it)")
        else:
            advice = ("it is damaged or not a job database: move it aside (the jobs it recorded are "
                      "forgotten; runs are not touched) and try again")
        super().__init__(f"the job database {path} cannot be used ({reason}); {advice}")
        self.transient = "locked" in reason or "busy" in reason


def migrate_job_kinds(con: sqlite3.Connection, schema: str) -> None:
    """Databases from before robustness jobs: every job becomes a "train" job, and
    run ids stop being unique (several evaluations may read one run; the
    one_training_per_run index keeps trainings apart). SQLite cannot drop a
    UNIQUE constraint, so the table is rebuilt from `schema` and its rows,
    ids and id counter copied, in one transaction. Runs once, whoever opens
    the old database first; the Ray backend's database uses it too."""
    def columns():
        return [row[1] for row in con.execute("PRAGMA table_info(jobs)")]
    if not columns() or "kind" in columns():
        return
    con.execute("BEGIN IMMEDIATE")
    try:
        old = columns()
        if old and "kind" not in old:
            table = schema[:schema.index("\n);") + 3]  # the CREATE TABLE statement (comments hold ';')
            con.execute(table.replace("CREATE TABLE IF NOT EXISTS jobs", "CREATE TABLE jobs_new", 1))
            new = [row[1] for row in con.execute("PRAGMA table_info(jobs_new)")]
            shared = ", ".join(name for name in old if name in new)
            con.execute(f"INSERT INTO jobs_new ({shared}) SELECT {shared} FROM jobs")
            counter = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
            con.execute("DROP TABLE jobs")
            con.execute("ALTER TABLE jobs_new RENAME TO jobs")
            if counter is not None:  # ids of deleted jobs are never handed out again
                con.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'jobs'", (counter[0],))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


# ---------------------------------------------------------------- what both backends decide alike

def error_line(tail: str) -> str | None:
    """The CLI's one-line `error: ...`, else the last line (a traceback's exception)."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    return lines[-1] if lines else None


def lost_note(kind: str, progress: dict, job_id: int) -> str:
    """What a lost job had done, and how to resume it."""
    if kind == "train":
        return (f"{progress.get('epoch', 0)} epochs were complete. "
                f"Resume with: python -m cifar jobs resume {job_id}")
    return f"the run is as it was. Start it again with: python -m cifar jobs resume {job_id}"


def check_resumable(row: sqlite3.Row) -> None:
    """Refuse to resume a job that is not lost or failed, a training whose run is
    already published, or an evaluation whose run is gone."""
    if row["status"] not in ("lost", "failed"):
        raise JobError(f"job {row['id']} is {row['status']}; only lost or failed jobs can be resumed")
    if row["kind"] == "train" and artifacts.run_dir(row["run_id"]).exists():
        raise JobError(f"run {row['run_id']} of job {row['id']} is already published")
    if row["kind"] == "robustness":
        artifacts.get_run(row["run_id"])  # a RunError saying the run is gone


def refuse_a_second_evaluation(con: sqlite3.Connection, kind: str, run_id: str | None) -> None:
    """One robustness evaluation of a run at a time: two would race to write its table."""
    if kind != "robustness":
        return
    other = con.execute("SELECT id FROM jobs WHERE kind = 'robustness' AND run_id = ? AND "
                        "status IN ('queued', 'running') LIMIT 1", (run_id,)).fetchone()
    if other is not None:
        raise JobError(f"run {run_id} already has a robustness evaluation queued or running (job {other['id']}); "
                       f"wait for it, or cancel it first")
