"""The job records both backends keep in SQLite: one table `jobs`, a schema
and indexes each backend names, opened, migrated and read the same way.

`LocalProcessBackend` (cifar/jobs_local.py) and `RayJobsBackend`
(cifar/jobs_ray.py) inherit this; each says where its database lives, what
its schema is, and how a running evaluation's log tail is read.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from cifar import artifacts
from cifar.jobs import Job, JobError, evaluation_progress


class JobStore:
    """SQLite storage for a JobBackend; subclasses set `db_path`, `SCHEMA` and `INDEXES`."""

    db_path: Path
    SCHEMA: str
    INDEXES: str
    _schema_ready = False

    def _connect(self) -> sqlite3.Connection:
        if not self._schema_ready:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        if not self._schema_ready:  # once per backend object: schema, migrations, indexes
            self._prepare(con)
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
    def _transaction(self):
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def _rows(self, sql: str, params=()) -> list[sqlite3.Row]:
        con = self._connect()
        try:
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
            progress = json.loads(row["last_progress"] or "{}")
        return Job(id=row["id"], run_id=row["run_id"], model=row["model"], config=json.loads(row["config"]),
                   status=row["status"], submitted_by=row["submitted_by"], created_at=row["created_at"],
                   queued_at=row["queued_at"], started_at=row["started_at"],
                   finished_at=row["finished_at"], attempt=row["attempt"], error=row["error"],
                   log_tail=row["log_tail"], cancel_requested=row["cancel_requested_at"] is not None,
                   pgid=row["pgid"] if "pgid" in row.keys() else None, progress=progress, reused=reused,
                   kind=row["kind"], payload=json.loads(row["payload"]))


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
