"""The artifact layout: the only module that knows where runs live on disk.

Layout (schema version SCHEMA_VERSION, documented in docs/ARTIFACTS.md):

    <root>/runs/<run_id>/        a complete run, visible to every reader
        metadata.json            config, environment, data fingerprint, summary
        history.parquet          one row per epoch
        metrics.parquet          one row: test loss/accuracy, F1, speed ...
        per_class.parquet        one row per class: precision, recall, F1
        confusion.parquet        long form: true, predicted, count
        predictions.parquet      one row per test image: labels + probabilities
        gallery.parquet          misclassified (and a few correct) test images
        model.keras              the trained model, no optimizer state
        manifest.json            sha256 and size of every file above
        val_predictions.parquet  optional: the validation split's predictions (Compare page)
        robustness.parquet       optional, added later: accuracy under corruptions
    <root>/work/<run_id>/        a run in progress
        config.json              the run's RunConfig, written before training starts
        state.json               completed epochs, history, which checkpoint is current
        checkpoint-NNNN.keras    the model with optimizer state after epoch NNNN
        best-NNNN.weights.h5     weights of the best epoch so far (early stopping)
        progress.json            live progress for other processes (cifar.progress)
        lock                     held by the one process training the run
    <root>/.staging/<run_id>.<host>-<pid>.<hex>/   where a finished run is assembled
    <root>/jobs/                 the local job queue: jobs.sqlite, worker.lock,
                                 worker.log, logs/job-<id>.log and .exit
    <root>/run_marks.json        the team's marks: reference and hidden runs

A run becomes visible only by one atomic rename from `.staging/` into
`runs/`, so a reader never sees half a run. Readers skip broken or foreign
folders with a reason instead of crashing: listing a run checks its
metadata and every table's columns against `cifar.run_schema`, and every
file's size against the manifest; reading a file checks its sha256 (once
per file size and modification time).

The root is `artifacts/` next to the package, or $CIFAR_ARTIFACTS.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from cifar import run_schema
from cifar.atomic import atomic_file
from cifar.errors import RunError

SCHEMA_VERSION = 1
TABLES = ("history", "metrics", "per_class", "confusion", "predictions", "gallery")
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"
# Tables a run may lack (runs from before they existed still read): see docs/ARTIFACTS.md.
# Optional tables (val_predictions, robustness): their schemas live in cifar.run_schema.
OPTIONAL_TABLES = tuple(name for name, schema in run_schema.TABLE_SCHEMAS.items() if not schema.required)
REQUIRED_FILES = (METADATA_FILE, MANIFEST_FILE, MODEL_FILE) + tuple(f"{t}.parquet" for t in TABLES)
# Files of a run's work folder (see the layout above).
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
PROGRESS_FILE = "progress.json"
LOCK_FILE = "lock"
# A staging folder older than this is abandoned whoever made it: publishing
# takes seconds to minutes, and a pid may have been reused since.
STAGING_MAX_AGE_SECONDS = 6 * 3600

_RUN_ID = re.compile(r"(?P<created>\d{8}T\d{6}Z)-(?P<model>[a-z0-9_]+)-(?P<suffix>[0-9a-f]{4})")
_CREATED_FORMAT = "%Y%m%dT%H%M%SZ"


# ---------------------------------------------------------------- locations

def root() -> Path:
    """The artifacts root; $CIFAR_ARTIFACTS overrides it (tests, other disks)."""
    env = os.environ.get("CIFAR_ARTIFACTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "artifacts"


def runs_dir() -> Path:
    return root() / "runs"


def run_dir(run_id: str) -> Path:
    return runs_dir() / check_run_id(run_id)


def work_root() -> Path:
    """Where runs in progress keep their work folders."""
    return root() / "work"


def work_dir(run_id: str) -> Path:
    """Scratch folder of a run in progress: checkpoints, progress, state."""
    return work_root() / check_run_id(run_id)


def progress_path(run_id: str) -> Path:
    return work_dir(run_id) / PROGRESS_FILE


def checkpoint_name(epoch: int) -> str:
    """The work folder's checkpoint after `epoch` completed epochs."""
    return f"checkpoint-{epoch:04d}.keras"


def best_weights_name(epoch: int) -> str:
    """The work folder's weights of the best epoch so far, `epoch` (1-based)."""
    return f"best-{epoch:04d}.weights.h5"


def saved_weight_files(work: Path) -> list[Path]:
    """Every checkpoint and best-weights file in a work folder."""
    return sorted(work.glob("checkpoint-*.keras")) + sorted(work.glob("best-*.weights.h5"))


def marks_path() -> Path:
    """The team's marks on runs (reference, hidden): kept beside runs/, so a
    published run's own files are never edited to mark it."""
    return root() / "run_marks.json"


def jobs_dir() -> Path:
    """Where the background job runner keeps its database and logs."""
    return root() / "jobs"


def jobs_database_path() -> Path:
    """The local job backend's SQLite database."""
    return jobs_dir() / "jobs.sqlite"


def ray_jobs_database_path() -> Path:
    """The Ray job backend's records (written only by the machines that submit)."""
    return jobs_dir() / "ray-jobs.sqlite"


def jobs_worker_lock_path() -> Path:
    """Held (flock) by the one local job worker; holds its pid."""
    return jobs_dir() / "worker.lock"


def jobs_worker_log_path() -> Path:
    return jobs_dir() / "worker.log"


def job_log_path(job_id: int) -> Path:
    """A job's training output, every attempt appended."""
    return jobs_dir() / "logs" / f"job-{int(job_id)}.log"


def job_exit_path(job_id: int) -> Path:
    """The exit status of a job's latest attempt, written when its process ends."""
    return jobs_dir() / "logs" / f"job-{int(job_id)}.exit"


def new_run_id(model_name: str, now: _dt.datetime | None = None) -> str:
    """Ids sort by creation time and say which model they hold."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}Z-{model_name}-{secrets.token_hex(2)}"


def is_run_id(name) -> bool:
    """True for a whole run id and nothing else (no trailing newline or path)."""
    return isinstance(name, str) and _RUN_ID.fullmatch(name) is not None


def check_run_id(run_id: str) -> str:
    """Reject anything that is not a run id, so ids never escape the root."""
    if not is_run_id(run_id):
        raise RunError(
            f"{run_id!r} is not a run id (expected like 20261125T132500Z-cnn_baseline-1a2b). "
            "List runs with: python -m cifar runs")
    return run_id


class RunIdParts(NamedTuple):
    created_at: _dt.datetime  # UTC
    model: str
    suffix: str               # the 4 random hex digits that tell same-second runs apart

    @property
    def created_stamp(self) -> str:
        """The creation time as the id writes it (metadata's `created_at`)."""
        return self.created_at.strftime(_CREATED_FORMAT)


def parse_run_id(run_id: str) -> RunIdParts:
    """The parts of a run id; RunError for anything that is not one."""
    found = _RUN_ID.fullmatch(check_run_id(run_id))
    try:
        created = _dt.datetime.strptime(found["created"], _CREATED_FORMAT).replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        raise RunError(f"{run_id!r} is not a run id: its time {found['created']} is not a date") from None
    return RunIdParts(created, found["model"], found["suffix"])


# ---------------------------------------------------------------- atomic writes

def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON so a reader sees the old file or the new one, never half."""
    with atomic_file(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)


# Every JSON file of the layout is a few kB; a bigger one is not ours and would
# cost gigabytes of memory to parse.
MAX_JSON_BYTES = 16 << 20


def read_json(path: Path) -> dict:
    """A JSON file; ValueError (as for bad JSON) when it is over MAX_JSON_BYTES or
    nested too deeply to parse, so every caller's `except ValueError` covers it."""
    with open(path, "rb") as f:
        text = f.read(MAX_JSON_BYTES + 1)
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"{path} is over {MAX_JSON_BYTES >> 20} MB, far more than this project writes")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to parse") from None


def read_json_or_empty(path: Path) -> dict:
    """A JSON object from `path`, or {} when it is missing, unreadable or not an
    object: for files another process may not have written yet (progress.json)."""
    try:
        payload = read_json(path)
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def process_alive(pid) -> bool:
    """Whether process `pid` runs on this machine (someone else's counts too)."""
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    return True


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def interrupted_runs() -> list[dict]:
    """Runs with a work folder but no published result (crashed or running):
    what `python -m cifar runs --all` lists, read without loading Keras. A
    damaged state or progress file shows as nothing done, status unknown."""
    base = work_root()
    found = []
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        if not is_run_id(path.name) or run_dir(path.name).exists():
            continue  # not a run's folder; or published, and only the clean-up was interrupted
        state, progress = read_json_or_empty(path / STATE_FILE), read_json_or_empty(progress_path(path.name))
        status = progress.get("status") if isinstance(progress.get("status"), str) else "unknown"
        if status == "running" and not process_alive(progress.get("pid")):
            status = "interrupted"
        epochs = state.get("completed_epochs")
        found.append({"run_id": path.name, "completed_epochs": epochs if type(epochs) is int else 0,
                      "status": status, "updated_at": progress.get("updated_at")})
    return found


# ---------------------------------------------------------------- writing a run

@dataclass
class RunStaging:
    """A run being assembled out of sight; `publish()` makes it visible."""

    run_id: str
    path: Path

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        if name not in TABLES + OPTIONAL_TABLES:
            raise ValueError(f"unknown table {name!r}; known: {TABLES + OPTIONAL_TABLES}")
        frame.to_parquet(self.path / f"{name}.parquet", index=False)

    def write_metadata(self, metadata: dict) -> None:
        write_json_atomic(self.path / METADATA_FILE, {"schema_version": SCHEMA_VERSION, **metadata})

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def publish(self) -> Path:
        """Checksum everything, then rename the folder into runs/ in one step."""
        missing = [f for f in REQUIRED_FILES if f != MANIFEST_FILE and not (self.path / f).exists()]
        if missing:
            raise RunError(f"run {self.run_id} is incomplete, missing {missing}; nothing was published")
        files = sorted(p.name for p in self.path.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
        manifest = {"schema_version": SCHEMA_VERSION, "files": {n: sha256_file(self.path / n) for n in files},
                    "sizes": {n: (self.path / n).stat().st_size for n in files}}
        write_json_atomic(self.path / MANIFEST_FILE, manifest)
        final = run_dir(self.run_id)
        if final.exists():
            raise RunError(f"run {self.run_id} already exists; refusing to overwrite it")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.path, final)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def staging_root() -> Path:
    return root() / ".staging"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def stage_run(run_id: str) -> RunStaging:
    """Start assembling a run in .staging/ (same filesystem, so rename is atomic).

    The folder's name records who assembles it (host and pid), so that folders
    left by a publisher killed mid-way are cleaned up by the next one."""
    clean_stale_staging()
    path = staging_root() / staging_folder_name(run_id)
    path.mkdir(parents=True)
    return RunStaging(run_id, path)


def staging_folder_name(run_id: str, pid: int | None = None) -> str:
    """`<run_id>.<host>-<pid>.<hex>`: the folder a process (this one by default) stages a run in."""
    return f"{check_run_id(run_id)}.{_host()}-{os.getpid() if pid is None else pid}.{secrets.token_hex(3)}"


def clean_stale_staging(now: float | None = None) -> list[str]:
    """Delete staging folders nobody will publish: their process on this host is
    dead, or they are older than STAGING_MAX_AGE_SECONDS (a folder of another
    host, or from before folders named their owner). Returns the names deleted;
    a live publisher's folder is never among them."""
    base = staging_root()
    if not base.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for path in base.iterdir():
        owner = re.fullmatch(r"[^.]+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[0-9a-f]+", path.name)
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue  # published or discarded meanwhile
        dead = owner is not None and owner["host"] == _host() and not process_alive(owner["pid"])
        if dead or age > STAGING_MAX_AGE_SECONDS:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


# ---------------------------------------------------------------- reading runs

@dataclass
class Skipped:
    """A folder under runs/ that is not a readable run, and why."""

    name: str
    reason: str


@dataclass
class RunInfo:
    run_id: str
    path: Path
    metadata: dict = field(repr=False)
    manifest: dict = field(default_factory=dict, repr=False)

    @property
    def model(self) -> str:
        return self.metadata.get("model", "?")


def _inspect(path: Path, allow_missing_model: bool = False) -> RunInfo | Skipped:
    name = path.name
    if not path.is_dir():
        return Skipped(name, "not a folder")
    if not is_run_id(name):
        return Skipped(name, "folder name is not a run id")
    try:
        parse_run_id(name)
    except RunError:  # 20261399T..., say: every reader of a run's label would fail on it
        return Skipped(name, "folder name is not a run id (its time is not a date)")
    required = [f for f in REQUIRED_FILES if not (allow_missing_model and f == MODEL_FILE)]
    try:
        missing = [f for f in required if not (path / f).is_file()]
    except OSError as exc:  # a folder we may not enter: skip it, do not fail the whole listing
        return Skipped(name, f"cannot be read ({exc.strerror or exc.__class__.__name__})")
    if missing:
        return Skipped(name, f"incomplete run, missing {', '.join(missing)}")
    try:
        metadata = read_json(path / METADATA_FILE)
    except (OSError, ValueError) as exc:
        return Skipped(name, f"metadata.json is unreadable ({exc.__class__.__name__})")
    if not isinstance(metadata, dict):
        return Skipped(name, "metadata.json is not an object")
    version = metadata.get("schema_version")
    if version != SCHEMA_VERSION:
        return Skipped(name, f"schema version {version!r}, this code reads {SCHEMA_VERSION}")
    manifest = _checked_manifest(path, metadata, allow_missing_model)
    return Skipped(name, manifest) if isinstance(manifest, str) else RunInfo(name, path, metadata, manifest)


def scan_runs() -> tuple[list[RunInfo], list[Skipped]]:
    """Every readable run (oldest first) and every folder skipped, with a reason."""
    base = runs_dir()
    if not base.is_dir():
        return [], []
    runs, skipped = [], []
    for path in sorted(base.iterdir()):
        if path.name.startswith("."):
            continue
        found = _inspect(path)
        (runs if isinstance(found, RunInfo) else skipped).append(found)
    return runs, skipped


def list_runs() -> list[RunInfo]:
    return scan_runs()[0]


def runs_signature() -> tuple:
    """Cheap fingerprint of what is on disk, for caches keyed on change."""
    base = runs_dir()
    if not base.is_dir():
        return ()
    found = []
    for path in base.iterdir():
        try:
            found.append((path.name, path.stat().st_mtime_ns))
        except OSError:  # deleted since it was listed: it is not there any more
            continue
    return tuple(sorted(found))


def get_run(run_id: str, *, allow_missing_model: bool = False) -> RunInfo:
    """A complete run; with `allow_missing_model`, also a copy of its record without
    model.keras (what benchmarks read of runs whose weights stayed on a lent machine)."""
    path = run_dir(run_id)
    if not path.exists():
        raise RunError(f"no run '{run_id}' under {runs_dir()}. List runs with: python -m cifar runs")
    found = _inspect(path, allow_missing_model)
    if isinstance(found, Skipped):
        raise RunError(f"run '{run_id}' cannot be read: {found.reason}")
    return found


def read_table(run_id: str, name: str, *, allow_missing_model: bool = False) -> pd.DataFrame:
    if name not in TABLES + OPTIONAL_TABLES:
        raise ValueError(f"unknown table {name!r}; known: {TABLES + OPTIONAL_TABLES}")
    info = get_run(run_id, allow_missing_model=allow_missing_model)
    if name in OPTIONAL_TABLES and not (info.path / f"{name}.parquet").is_file():
        raise RunError(f"run {run_id} has no {name} table yet; docs/ARTIFACTS.md gives the command that adds it")
    return _read_checked_table(info, name, "delete the run folder or re-run it")


def read_optional_table(run_id: str, name: str) -> pd.DataFrame | None:
    """An OPTIONAL_TABLES table of a run, or None when the run has none (or its
    manifest does not list it: an addition that never finished)."""
    if name not in OPTIONAL_TABLES:
        raise ValueError(f"unknown optional table {name!r}; known: {OPTIONAL_TABLES}")
    info = get_run(run_id)
    path = info.path / f"{name}.parquet"
    if not path.is_file() or path.name not in info.manifest.get("files", {}):
        return None
    return _read_checked_table(info, name, "delete that file to read the run without it")


def read_metrics(info: RunInfo) -> dict:
    """A listed run's one-row metrics table as a dict, checked like read_table.

    What listings read for every run (the dashboard's run list, `python -m
    cifar runs`): straight from Arrow, without re-inspecting the run scan_runs
    just inspected or building a pandas frame per run (a third of the
    dashboard's cold start went to listing 50 runs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    # Every metrics column is a number: types and row count are the whole schema check.
    table = _read_checked(info, "metrics", "delete the run folder or re-run it",
                          lambda data: pq.read_table(pa.BufferReader(data)),
                          lambda table: run_schema.check_footer("metrics", table.schema, table.num_rows))
    return {column: float("nan") if value is None else value for column, value in table.to_pylist()[0].items()}


def _read_checked_table(info: RunInfo, name: str, remedy: str) -> pd.DataFrame:
    """A table's bytes checked against the manifest, parsed, and checked against its schema."""
    return _read_checked(info, name, remedy, lambda data: pd.read_parquet(io.BytesIO(data)),
                         lambda frame: run_schema.check_table(name, frame))


def _read_checked(info: RunInfo, name: str, remedy: str, parse, problems_of):
    """Table `name`'s bytes checked against the manifest, `parse`d, and refused
    with `remedy` when `problems_of` the result names any."""
    data = (info.path / f"{name}.parquet").read_bytes()
    _verified(info, f"{name}.parquet", data)
    try:
        parsed = parse(data)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise RunError(f"table {name} of run {info.run_id} is damaged ({exc.__class__.__name__}); "
                       f"{remedy}") from exc
    problems = problems_of(parsed)
    if problems:
        raise RunError(f"table {name} of run {info.run_id} does not match its schema "
                       f"({'; '.join(problems)}); {remedy}")
    return parsed


def add_optional_table(run_id: str, name: str, frame: pd.DataFrame) -> None:
    """Add (or replace) an optional table of a published run, and its manifest entry.

    Both files are written in full under temporary names first and then
    renamed over the old ones (os.replace), the table before the manifest:
    an interruption before the renames leaves the run exactly as it was."""
    if name not in OPTIONAL_TABLES:
        raise ValueError(f"only optional tables can be added to a published run: {OPTIONAL_TABLES}")
    problems = run_schema.check_table(name, frame)
    if problems:
        raise RunError(f"table {name} does not match its schema ({'; '.join(problems)}); nothing was written")
    folder = get_run(run_id).path
    final = folder / f"{name}.parquet"
    table_tmp = folder / f".{final.name}.{secrets.token_hex(4)}.tmp"
    manifest_tmp = folder / f".{MANIFEST_FILE}.{secrets.token_hex(4)}.tmp"
    try:
        frame.to_parquet(table_tmp, index=False)
        manifest = read_json(folder / MANIFEST_FILE)
        manifest.setdefault("files", {})[final.name] = sha256_file(table_tmp)
        manifest["files"] = dict(sorted(manifest["files"].items()))
        if isinstance(manifest.get("sizes"), dict):
            manifest["sizes"][final.name] = table_tmp.stat().st_size
            manifest["sizes"] = dict(sorted(manifest["sizes"].items()))
        with open(manifest_tmp, "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(table_tmp, final)
        os.replace(manifest_tmp, folder / MANIFEST_FILE)
    finally:
        table_tmp.unlink(missing_ok=True)
        manifest_tmp.unlink(missing_ok=True)


def load_run(run_id: str) -> dict:
    """Metadata plus every table of one run, as {"metadata": ..., name: DataFrame}."""
    info = get_run(run_id)
    return {"metadata": info.metadata, **{name: read_table(run_id, name) for name in TABLES}}


def all_runs_table(name: str) -> pd.DataFrame:
    """One table across all readable runs, with a leading run_id column."""
    frames = []
    for info in list_runs():
        try:
            frame = read_table(info.run_id, name)
        except RunError:
            continue
        frames.append(frame.assign(run_id=info.run_id)[["run_id", *frame.columns]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"run_id": []})


def verify_run(run_id: str) -> list[str]:
    """Files whose sha256 no longer matches the manifest (empty list: intact).
    Works on a run that listing skips, to say which files changed."""
    path = run_dir(run_id)
    manifest = _read_manifest(path)
    if isinstance(manifest, str):
        raise RunError(f"run '{run_id}' cannot be verified: {manifest}")
    return [n for n, digest in manifest["files"].items()
            if not (path / n).is_file() or sha256_file(path / n) != digest]


def model_path(run_id: str) -> Path:
    """The run's model file, checked against its manifest checksum."""
    info = get_run(run_id)
    _verified(info, MODEL_FILE)
    return info.path / MODEL_FILE


def run_file_paths(run_id: str) -> dict[str, Path]:
    """Name -> path of every file of a run, for download buttons."""
    info = get_run(run_id)
    return {p.name: p for p in sorted(info.path.iterdir()) if p.is_file()}


def run_file_sizes(run_id: str) -> dict[str, int]:
    """Name -> size in bytes of every file of a run (one deleted since the
    listing, as by a run being replaced, is left out rather than failing)."""
    sizes = {}
    for name, path in run_file_paths(run_id).items():
        with contextlib.suppress(FileNotFoundError):
            sizes[name] = path.stat().st_size
    return sizes


def read_run_file(run_id: str, name: str) -> bytes:
    """The bytes of one file of a run (a download), checked against the
    manifest when it lists the file."""
    info = get_run(run_id)
    if name not in {p.name for p in info.path.iterdir() if p.is_file()}:
        raise RunError(f"run {run_id} has no file {name!r}")
    data = (info.path / name).read_bytes()
    if name in info.manifest.get("files", {}):
        _verified(info, name, data)
    return data


def delete_run(run_id: str) -> None:
    shutil.rmtree(run_dir(run_id))


# ---------------------------------------------------------------- checking runs

def _checked_manifest(path: Path, metadata: dict, allow_missing_model: bool) -> dict | str:
    """A run's manifest once its metadata, its tables' columns and its files'
    sizes are found to match the schema; otherwise why they do not."""
    problems = run_schema.check_metadata(metadata)
    if problems:
        return "metadata.json " + "; ".join(problems)
    problems = [p for table in run_schema.TABLE_SCHEMAS if (path / f"{table}.parquet").is_file()
                for p in _footer_problems(path / f"{table}.parquet", table)]
    if problems:
        return "; ".join(problems)
    manifest = _read_manifest(path)
    if isinstance(manifest, str):
        return manifest
    return _size_problem(path, manifest, allow_missing_model) or manifest


def _footer_problems(path: Path, table: str) -> tuple[str, ...]:
    try:
        stat = path.stat()
    except OSError:  # deleted since the run was listed
        return (f"{table}.parquet vanished while the run was read",)
    return _footer_problems_cached(str(path), stat.st_size, stat.st_mtime_ns, table)


@functools.lru_cache(maxsize=4096)
def _footer_problems_cached(path: str, size: int, mtime_ns: int, table: str) -> tuple[str, ...]:
    """A table's columns and row count from its parquet footer alone (a few
    kB): cheap enough for every table of every run each time runs are listed."""
    import pyarrow.parquet as pq
    try:
        footer = pq.read_metadata(path)
        return tuple(run_schema.check_footer(table, footer.schema.to_arrow_schema(), footer.num_rows))
    except Exception as exc:  # pyarrow raises several types for damaged files
        return (f"{table}.parquet is damaged ({exc.__class__.__name__})",)


def _read_manifest(path: Path) -> dict | str:
    """The run's manifest, or why it cannot be used."""
    try:
        manifest = read_json(path / MANIFEST_FILE)
    except (OSError, ValueError) as exc:
        return f"manifest.json is unreadable ({exc.__class__.__name__})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(n, str) and isinstance(d, str) and Path(n).name == n
                                              for n, d in files.items()):
        return "manifest.json holds no list of checksums"
    unlisted = [f for f in REQUIRED_FILES if f != MANIFEST_FILE and f not in files]
    if unlisted:
        return f"manifest.json does not list {', '.join(unlisted)}"
    return manifest


def _size_problem(path: Path, manifest: dict, allow_missing_model: bool) -> str | None:
    """A listed file that is gone or whose size changed since publication.
    Runs published before sizes were recorded are checked by checksum only."""
    sizes = manifest.get("sizes") if isinstance(manifest.get("sizes"), dict) else {}
    for name in manifest["files"]:
        if allow_missing_model and name == MODEL_FILE:
            continue
        try:
            size = (path / name).stat().st_size
        except OSError:
            return f"{name} is listed in manifest.json but missing"
        if name in sizes and size != sizes[name]:
            return (f"{name} is {size:,} bytes, manifest.json says {sizes[name]:,}: changed since the run "
                    "was published")
    return None


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 found to match


def _verified(info: RunInfo, name: str, data: bytes | None = None) -> None:
    """Raise RunError unless the file's sha256 is the manifest's. A file is
    hashed once per size and modification time; `data`: its bytes, if read."""
    path = info.path / name
    stat = path.stat()
    key, expected = (str(path), stat.st_size, stat.st_mtime_ns), info.manifest.get("files", {}).get(name)
    if expected is None:
        raise RunError(f"{name} of run {info.run_id} is not listed in manifest.json; delete the run folder "
                       "or re-run it")
    if _VERIFIED.get(key) == expected:
        return
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
    if digest != expected:
        raise RunError(f"{name} of run {info.run_id} does not match its checksum in manifest.json (changed "
                       "since the run was published); delete the run folder or re-run it")
    _VERIFIED[key] = expected
