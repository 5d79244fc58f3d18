"""Background jobs: a durable queue that outlives the dashboard.

A job is one of two kinds (`Job.kind`). A "train" job is one training run
launched for someone: it stores the run's resolved config (`Job.config`, the
RunConfig as JSON, settled when it was submitted: fine-tuning's donor run
included), never a command line. A "robustness" job evaluates an existing
run under the CIFAR-10-C corruptions (`evaluate RUN --robustness`); it stores
its small request in `Job.payload` (images, data source). A backend runs
`python -m cifar` with `job_command(job)`, built here only. The local
backend records jobs in SQLite under `artifacts.jobs_dir()` so every
dashboard session, the CLI and a restarted Streamlit process all see the
same jobs:

    queued -> running -> succeeded | failed | cancelled | lost
                  lost | failed -> (resume) -> queued, as a new attempt

Pages talk to a `JobBackend` (submit, get, list_jobs, cancel, logs, resume,
capacity) and never learn how a job runs; $CIFAR_JOBS_BACKEND picks one
(`get_backend`). `LocalProcessBackend` (cifar/jobs_local.py, the default)
runs jobs on this machine, `max_concurrent` at a time; `RayJobsBackend`
(cifar/jobs_ray.py) hands each attempt to a Ray cluster's job server, with
`job_command(job)` as the entrypoint and the job's `Resources` (CPUs,
GPUs) reserved, so jobs run side by side up to the cluster's capacity.
`submit_seeds` queues one job per seed (a seed sweep) on either.

Outcomes (`result_in_place`): a training succeeds when its run is published;
an evaluation when its command exits 0 and the run holds its robustness
table. Cancelling an evaluation stops it and never touches the run.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cifar import artifacts
from cifar.config import RunConfig
from cifar.errors import CifarError

ACTIVE = ("queued", "running")
KINDS = ("train", "robustness")
WHAT = {"train": "training", "robustness": "robustness evaluation"}  # a kind, in words
ROBUSTNESS_TABLE = "robustness"  # cifar.robustness.TABLE; that module imports scipy, this one must not
DEFAULT_ROBUSTNESS_IMAGES = 1000  # `evaluate --robustness`'s default (cifar.robustness.DEFAULT_IMAGES)


class JobError(CifarError):
    """A job request that cannot be honoured (unknown id, wrong state)."""


# ---------------------------------------------------------------- settings and records

def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise CifarError(f"${name} must be a number (got '{text}')") from None
    if not 0 <= value < 1e9:  # NaN, infinity and negative waits would hang or crash the worker
        raise CifarError(f"${name} must be a finite number >= 0 (got '{text}'); unset it for the default")
    return value


@dataclass(frozen=True)
class JobSettings:
    """Runner knobs; each default can be overridden by $CIFAR_JOBS_<NAME>."""

    max_concurrent: int = 1          # trainings at once on this machine
    heartbeat_timeout: float = 60.0  # seconds of silence, after the process died, before `lost`
    cancel_grace: float = 10.0       # seconds between SIGTERM and SIGKILL
    dedupe_window: float = 10.0      # an identical submit this soon returns the earlier job
    poll_interval: float = 1.0       # worker loop period
    worker_idle_exit: float = 60.0   # an on-demand worker exits after this long with nothing to do

    @classmethod
    def from_env(cls, **overrides) -> "JobSettings":
        values = {}
        for f in dataclasses.fields(cls):
            value = _env_number(f"CIFAR_JOBS_{f.name.upper()}", f.default)
            values[f.name] = int(value) if f.type in (int, "int") else value
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["max_concurrent"] < 1:
            raise CifarError("max_concurrent must be at least 1")
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        return {f"CIFAR_JOBS_{k.upper()}": str(v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class Job:
    """What every page and CLI command sees of a job."""

    id: int
    run_id: str
    model: str
    config: dict  # the resolved RunConfig (RunConfig.to_dict()) the job trains
    status: str
    submitted_by: str
    created_at: float
    queued_at: float
    started_at: float | None
    finished_at: float | None
    attempt: int
    error: str | None
    log_tail: str | None
    cancel_requested: bool
    pgid: int | None = None  # the attempt's process group (local backend)
    progress: dict = field(default_factory=dict)  # live progress.json, or its last snapshot
    reused: bool = False  # submit returned an earlier identical job instead of a new one
    kind: str = "train"  # one of KINDS
    payload: dict = field(default_factory=dict)  # a robustness job's request: images, data

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def heartbeat_at(self) -> float | None:
        return self.progress.get("updated_at") or self.started_at

    @property
    def fraction_done(self) -> float:
        """0..1 over all epochs, counting the current epoch's batches (an
        evaluation: over its conditions, each corruption at each severity)."""
        if self.kind == "robustness":
            if self.status == "succeeded":
                return 1.0
            steps = self.progress.get("steps") or 0
            return min(1.0, (self.progress.get("step") or 0) / steps) if steps else 0.0
        epochs = self.progress.get("epochs") or 0
        if self.status == "succeeded" or self.progress.get("status") == "completed":
            return 1.0
        if not epochs:
            return 0.0
        batches = self.progress.get("batches") or 0
        within = (self.progress.get("batch") or 0) / batches if batches else 0.0
        return min(1.0, ((self.progress.get("epoch") or 0) + within) / epochs)

    def describe_progress(self) -> str:
        """One line: epoch, batch, latest metrics, ETA ('' for a job that never trained)."""
        p, running = self.progress, self.status == "running"
        if self.kind == "robustness":
            return self._describe_evaluation()
        if not p:
            return "starting: loading TensorFlow and the data" if running else ""
        if running and p.get("status") in ("evaluating", "completed"):
            return "finishing: evaluating on the test set and publishing the run"
        done, epochs = p.get("epoch") or 0, p.get("epochs") or 0
        parts = [f"epoch {min(done + 1, epochs)}/{epochs}" if running else f"{done}/{epochs} epochs done"]
        if running and p.get("batches") and p.get("batch"):
            parts.append(f"batch {p.get('batch', 0)}/{p['batches']}")
        parts += [f"{k} {v:.4f}" for k, v in (p.get("metrics") or {}).items() if isinstance(v, (int, float))]
        if running and p.get("eta_seconds") is not None:
            parts.append(f"ETA {_duration(p['eta_seconds'])}")
        return " · ".join(parts)

    def _describe_evaluation(self) -> str:
        p = self.progress
        if self.status == "succeeded" and "mean_corruption_accuracy" in p:
            return (f"clean accuracy {p['clean_accuracy']:.4f} · mean corruption accuracy "
                    f"{p['mean_corruption_accuracy']:.4f} on {p['images']:,} images")
        if self.status != "running":
            return ""
        if not p.get("step"):
            return "starting: loading the model and the test images"
        return f"condition {p['step']}/{p['steps']} (each corruption at each severity)"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


# ---------------------------------------------------------------- the interface

class JobBackend(abc.ABC):
    """Where jobs run. Pages and the CLI use only these methods."""

    name = "local"  # what the Retrain page and `jobs list` call this backend

    @abc.abstractmethod
    def submit(self, model: str, overrides: dict | None = None, submitted_by: str = "",
               resources: Resources | None = None) -> Job:
        """Queue a training: `model` with `overrides` of its recipe (RunConfig field
        names; None means the recipe's), resolved now by `prepare_request`. An
        identical queued or running request returns that job with `reused=True`.
        `resources` is what the job reserves where the backend schedules by
        resources (Ray)."""

    @abc.abstractmethod
    def submit_robustness(self, run_id: str, images: int = DEFAULT_ROBUSTNESS_IMAGES, data: str | None = None,
                          submitted_by: str = "", resources: Resources | None = None) -> Job:
        """Queue `evaluate RUN --robustness --images N [--data PATH]` for a published run,
        checked now by `prepare_robustness`. An identical queued or running request
        returns that job with `reused=True`; another one for the same run is refused."""

    @abc.abstractmethod
    def get(self, job_id: int) -> Job: ...

    @abc.abstractmethod
    def list_jobs(self, limit: int = 20) -> list[Job]:
        """Queued and running jobs, then the most recent others, newest first."""

    @abc.abstractmethod
    def cancel(self, job_id: int, wait: float = 0.0) -> Job: ...

    @abc.abstractmethod
    def logs(self, job_id: int, lines: int = 200) -> str: ...

    @abc.abstractmethod
    def resume(self, job_id: int) -> Job:
        """Queue a lost or failed job again; a training continues from its last completed
        epoch, an evaluation starts over (it keeps nothing until it is done)."""

    def capacity(self) -> Capacity:
        """Where jobs run and how many at once (this machine's default; Ray asks its cluster)."""
        slots = self.settings.max_concurrent
        return Capacity(backend=self.name, where="this machine",
                        summary=f"Jobs run on this machine, {slots} at a time "
                                f"($CIFAR_JOBS_MAX_CONCURRENT); the others wait their turn.")


BACKENDS = ("local", "ray")


def get_backend() -> JobBackend:
    """The backend named by $CIFAR_JOBS_BACKEND: "local" (the default) or "ray"
    (a Ray cluster's job server at $RAY_ADDRESS; see cifar/jobs_ray.py)."""
    name = (os.environ.get("CIFAR_JOBS_BACKEND") or "local").strip().lower()
    if name == "local":
        from cifar.jobs_local import LocalProcessBackend
        return LocalProcessBackend()
    if name == "ray":
        from cifar.jobs_ray import RayJobsBackend
        return RayJobsBackend()
    raise CifarError(f"unknown jobs backend '{name}' ($CIFAR_JOBS_BACKEND); known: {', '.join(BACKENDS)}")


# ---------------------------------------------------------------- resources, capacity, seed sweeps

@dataclass(frozen=True)
class Resources:
    """What one job reserves. Ray starts a job once a node has these free, so jobs
    run side by side up to the cluster's capacity; the local backend ignores them
    and runs `max_concurrent` jobs at a time instead."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self):
        for name in ("cpus", "gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e6:
                raise CifarError(f"{name} must be a number >= 0 (got {value!r})")
        if self.cpus == 0 and self.gpus == 0:
            raise CifarError("a job must reserve at least some CPUs or GPUs (cpus and gpus are both 0), "
                             "or nothing would limit how many run at once")


@dataclass(frozen=True)
class Capacity:
    """Where jobs run, for the Retrain page: one line for people, and the
    cluster's free and total CPUs/GPUs when the backend has a cluster."""

    backend: str
    where: str
    summary: str
    free_cpus: float | None = None
    total_cpus: float | None = None
    free_gpus: float | None = None
    total_gpus: float | None = None
    error: str | None = None  # the cluster could not be reached or read


MAX_SEEDS = 100  # a typo such as 0-10000 should not queue ten thousand jobs


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2,5' -> [0, 2, 5]; both forms mix ('0-2,7')."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise CifarError(f"seeds must look like 0-4 or 0,2,5 (got '{text}')") from None
        if first < 0 or last < first:
            raise CifarError(f"seeds must be whole numbers >= 0, ranges low-high (got '{part}')")
        if last - first >= MAX_SEEDS or last >= 2**32:  # before expanding: '0-10**20' must not hang
            raise CifarError(f"at most {MAX_SEEDS} seeds in one sweep, each below 2**32 (got '{text}')")
        seeds += [s for s in range(first, last + 1) if s not in seeds]
        if len(seeds) > MAX_SEEDS:
            raise CifarError(f"at most {MAX_SEEDS} seeds in one sweep (got '{text}')")
    return seeds


def submit_seeds(backend: JobBackend, model: str, overrides: dict | None, seeds: list[int],
                 submitted_by: str = "", resources: Resources | None = None) -> list[Job]:
    """One job per seed, same settings otherwise (a seed sweep, for bench.seed_spread)."""
    if (overrides or {}).get("seed") is not None:
        raise CifarError("give either one seed or a list of seeds, not both")
    return [backend.submit(model, {**(overrides or {}), "seed": seed}, submitted_by=submitted_by,
                           resources=resources) for seed in seeds]


def model_choices() -> dict[str, str]:
    """Registry names and their one-line summaries, read from cifar/models.py's
    `@register(...)` lines without importing it: the registry imports keras, and
    a page that only lists names should not pay for TensorFlow."""
    import ast
    tree = ast.parse((Path(__file__).parent / "models.py").read_text())
    choices = {}
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("build_")):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "register":
                choices[node.name.removeprefix("build_")] = _summary_of(decorator)
    return choices


def _summary_of(call) -> str:
    """`@register("summary", ...)`'s first argument (or its `summary=` keyword)."""
    import ast
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    for keyword in call.keywords:
        if keyword.arg == "summary" and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return ""


# ---------------------------------------------------------------- requests

def prepare_request(model: str, overrides: dict | None) -> tuple[RunConfig, str]:
    """Resolve a request as `train` would; return (its config, a key for dedupe).

    Fine-tuning's donor run is chosen now, so the job trains what was asked
    even if newer runs appear while it waits. A local data path must exist
    now (and becomes absolute), because the job does not run in the
    submitter's folder."""
    from cifar.config import resolve_config
    config = resolve_config(model, overrides)
    if config.data != "keras" and not Path(config.data).exists():
        raise CifarError(f"data source '{config.data}' does not exist on the training machine")
    key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    return config, key


def prepare_robustness(run_id: str, images: int, data: str | None) -> tuple[dict, str, str]:
    """Check a robustness request now; return (its payload, the run's model, a key
    for dedupe). The data source, given or the run's recorded one, must exist on
    this machine (a given one becomes absolute: the job runs in another folder)."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise CifarError(f"--images must be a whole number of at least 1 (got {images!r})")
    info = artifacts.get_run(run_id)
    if data and data != "keras":
        if not Path(data).exists():
            raise CifarError(f"data source '{data}' does not exist on this machine")
        data = str(Path(data).resolve())
    elif not data:
        recorded = (info.metadata.get("data") or {}).get("source") or \
            (info.metadata.get("config") or {}).get("data")
        if not recorded:
            raise CifarError(f"run {run_id} records no data source; give one (--data PATH)")
        if recorded != "keras" and not Path(recorded).exists():
            raise CifarError(f"run {run_id} was trained on '{recorded}', which is not on this machine; "
                             f"give a copy of CIFAR-10 (--data PATH)")
        if recorded != "keras" and not Path(recorded).is_absolute():
            data = str(Path(recorded).resolve())  # relative to this folder, not the job's
    payload = {"images": images, **({"data": data} if data else {})}
    key = hashlib.sha256(json.dumps({"kind": "robustness", "run_id": run_id, **payload},
                                    sort_keys=True).encode()).hexdigest()
    return payload, str(info.metadata.get("model") or artifacts.parse_run_id(run_id)[1]), key


def job_command(job: Job) -> list[str]:
    """The arguments after `python -m cifar` that run the job's next attempt.

    An evaluation runs `evaluate RUN --robustness` with its payload, every
    attempt alike. A training's first attempt trains from the stored config; a
    later one resumes from the run's last checkpoint when there is one (else
    it starts over, from the same config)."""
    if job.kind == "robustness":
        data = ["--data", job.payload["data"]] if job.payload.get("data") else []
        return ["evaluate", job.run_id, "--robustness", "--images", str(int(job.payload["images"])), *data]
    if job.kind != "train":
        raise JobError(f"job {job.id} is of an unknown kind '{job.kind}' (queued by a newer version?)")
    if job.attempt > 0 and artifacts.work_dir(job.run_id).exists():
        return ["resume", job.run_id, "--quiet"]
    if not job.config:
        raise JobError(f"job {job.id} has no stored config (queued by an older version); submit it again")
    return ["train", "--config", json.dumps(job.config, sort_keys=True), "--run-id", job.run_id, "--quiet"]


# ---------------------------------------------------------------- outcomes and progress

def result_in_place(kind: str, run_id: str) -> bool:
    """Whether a job's result exists: a training's published run; an evaluation's
    robustness table in its run (checked against the run's manifest)."""
    if kind != "robustness":
        return artifacts.run_dir(run_id).exists()
    try:
        return artifacts.read_optional_table(run_id, ROBUSTNESS_TABLE) is not None
    except CifarError:
        return False


def result_summary(kind: str, run_id: str) -> dict:
    """A finished job's result in its progress's shape: a training's epochs run
    and test metrics; an evaluation's clean and mean corruption accuracy."""
    try:
        if kind == "robustness":
            table = artifacts.read_optional_table(run_id, ROBUSTNESS_TABLE)
            clean = table[table.corruption == "clean"]
            corrupted = table[table.corruption != "clean"]
            return {"clean_accuracy": float(clean.accuracy.iloc[0]),
                    "mean_corruption_accuracy": float(corrupted.accuracy.mean()),
                    "images": int(clean.n_images.iloc[0])}
        metadata = artifacts.get_run(run_id).metadata
        metrics = artifacts.read_table(run_id, "metrics").iloc[0]
    except (CifarError, IndexError, AttributeError, TypeError):
        return {}
    return {"epoch": metadata.get("epochs_run"), "epochs": metadata.get("epochs_planned"),
            "metrics": {k: float(metrics[k]) for k in ("test_accuracy", "test_loss") if k in metrics}}


# Keras' progress bar as `evaluate --robustness` writes it to the job's log, colours
# removed: "\r 12/76 ━━━━━━ 31s 547ms/condition".
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CONDITION_STEP = re.compile(r"(\d+)/(\d+) ━[^\r\n]*?/condition")


def evaluation_progress(log_tail: str) -> dict:
    """{"step", "steps"} of a running evaluation, from the last progress bar in its log
    (the evaluation writes no progress file: it changes nothing until it is done)."""
    found = _CONDITION_STEP.findall(_ANSI.sub("", log_tail or ""))
    if not found:
        return {}
    step, steps = (int(n) for n in found[-1])
    return {"step": step, "steps": steps}


def data_source_choices() -> list[str]:
    """Data sources of earlier runs that exist on this machine, newest first,
    then "keras" (the download). A run trained elsewhere records a path that
    may not exist here, or only a file name or a relative path (which depends
    on the folder the dashboard runs from): it is never offered."""
    seen = []
    for info in reversed(artifacts.list_runs()):
        config = info.metadata.get("config")
        source = config.get("data") if isinstance(config, dict) else None
        if isinstance(source, str) and source not in seen and Path(source).is_absolute() and Path(source).exists():
            seen.append(source)
    return seen + ["keras"]
