"""`python -m cifar jobs ...`: the background job queue from a shell.

Anyone with a shell here can already run `python -m cifar train`, so these
commands need no token; the dashboard's retrain rights live in cifar.auth.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time

JOBS_EXAMPLES = """examples:
  python -m cifar jobs submit cnn_baseline --data ~/data/cifar10-jpeg.tar.gz --epochs 5
  python -m cifar jobs submit fast_cnn --seeds 0-4   # a seed sweep: one job per seed
  python -m cifar jobs robustness RUN_ID --images 1000   # evaluate --robustness, in the background
  CIFAR_JOBS_BACKEND=ray RAY_ADDRESS=http://127.0.0.1:8265 python -m cifar jobs submit fast_cnn --gpus 1
  python -m cifar jobs list
  python -m cifar jobs logs 3 --follow
  python -m cifar jobs cancel 3
  python -m cifar jobs resume 3      # a lost or failed job, from its last completed epoch
  python -m cifar jobs worker        # keep a worker running (e.g. under systemd)
"""


def add_jobs_parser(subparsers) -> None:
    from cifar.config import add_config_flags, whole_number
    from cifar.jobs import DEFAULT_ROBUSTNESS_IMAGES
    jobs = subparsers.add_parser("jobs", help="queue trainings and robustness evaluations in the background "
                                      "(as the dashboard does)",
                                 epilog=JOBS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")

    listing = sub.add_parser("list", help="queued and running jobs, then recent ones")
    listing.add_argument("--limit", type=_positive_whole, default=20, help="at most this many jobs (default 20)")
    listing.add_argument("--json", action="store_true")

    submit = sub.add_parser("submit", help="queue a training; prints the job id")
    submit.add_argument("model", help="a registry name (see: python -m cifar models)")
    submit.add_argument("--wait", action="store_true",
                        help="block until the job ends; exit 0 only if it succeeded")
    submit.add_argument("--seeds", metavar="LIST",
                        help="queue one job per seed: a range (0-4) or a list (0,2,5); instead of --seed")
    submit.add_argument("--cpus", type=_non_negative, default=1.0,
                        help="CPUs each job reserves on a Ray cluster (default 1)")
    submit.add_argument("--gpus", type=_non_negative, default=0.0,
                        help="GPUs each job reserves on a Ray cluster (default 0); the local backend "
                             "ignores both and runs $CIFAR_JOBS_MAX_CONCURRENT jobs at a time")
    add_config_flags(submit)

    robustness = sub.add_parser("robustness", help="queue `evaluate RUN --robustness` for a run; prints the job id")
    robustness.add_argument("run_id", help="a published run (see: python -m cifar runs)")
    robustness.add_argument("--images", type=whole_number, default=DEFAULT_ROBUSTNESS_IMAGES,
                            help="test images, a seeded class-stratified subset (default 1000; 10000 for all)")
    robustness.add_argument("--data", help="the CIFAR-10 copy whose test images to use (default: the run's "
                                           "recorded data source)")
    robustness.add_argument("--wait", action="store_true",
                            help="block until the job ends; exit 0 only if it succeeded")
    robustness.add_argument("--cpus", type=_non_negative, default=1.0,
                            help="CPUs the job reserves on a Ray cluster (default 1)")
    robustness.add_argument("--gpus", type=_non_negative, default=0.0,
                            help="GPUs the job reserves on a Ray cluster (default 0)")

    cancel = sub.add_parser("cancel", help="stop a queued or running job (nothing of it is kept)")
    cancel.add_argument("job_id", type=_job_id)

    logs = sub.add_parser("logs", help="the job's training output")
    logs.add_argument("job_id", type=_job_id)
    logs.add_argument("--lines", type=_positive_whole, default=200, help="last lines shown (default 200)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")

    resume = sub.add_parser("resume", help="re-queue a lost or failed job from its last completed epoch")
    resume.add_argument("job_id", type=_job_id)

    worker = sub.add_parser("worker", help="run the worker that starts queued jobs (one per machine)")
    worker.add_argument("--idle-exit", type=_non_negative, default=None, metavar="SECONDS",
                        help="exit after this long with nothing queued or running (default: never)")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0 <= value < 1e6:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1e6, got '{text}'")
    return value


# SQLite integers are 64-bit; a bigger id or limit would overflow inside the query.
_MAX_ID = 2**63 - 1


def _positive_whole(text: str) -> int:
    """argparse type: a whole number >= 1 (a count of jobs or lines)."""
    from cifar.config import whole_number
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got '{text}'")
    return value


def _job_id(text: str) -> int:
    """argparse type: a job id as `jobs list` shows it (1, 2, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a job id (a number from: python -m cifar jobs list), "
                                         f"got '{text}'") from None
    if not 1 <= value <= _MAX_ID:
        raise argparse.ArgumentTypeError(f"no job has the id '{text}'; ids are numbers from 1 "
                                         "(see: python -m cifar jobs list)")
    return value


def run_jobs_command(args) -> int:
    from cifar import jobs
    backend = jobs.get_backend()
    command = args.jobs_command
    if command == "list":
        found = backend.list_jobs(limit=args.limit)
        if args.json:
            print(json.dumps([job.__dict__ for job in found], indent=2, default=str))
        elif not found:
            print("no jobs yet. Queue one with: python -m cifar jobs submit cnn_baseline --epochs 1")
        for job in found:
            print(_line(job))
        return 0
    if command == "submit":
        from cifar.config import config_overrides
        overrides, resources = config_overrides(args), jobs.Resources(cpus=args.cpus, gpus=args.gpus)
        if args.seeds is not None:
            submitted = jobs.submit_seeds(backend, args.model, overrides, jobs.parse_seeds(args.seeds),
                                          submitted_by=_whoami(), resources=resources)
        else:
            submitted = [backend.submit(args.model, overrides, submitted_by=_whoami(), resources=resources)]
        for job in submitted:
            print(f"{'already queued as' if job.reused else 'queued'} job {job.id} (run {job.run_id})")
        return max(_wait(backend, job.id) for job in submitted) if args.wait else 0
    if command == "robustness":
        job = backend.submit_robustness(args.run_id, args.images, args.data,
                                        submitted_by=_whoami(),
                                        resources=jobs.Resources(cpus=args.cpus, gpus=args.gpus))
        print(f"{'already queued as' if job.reused else 'queued'} job {job.id} "
              f"(robustness of run {job.run_id})")
        return _wait(backend, job.id) if args.wait else 0
    if command == "cancel":
        job = backend.cancel(args.job_id, wait=backend.settings.cancel_grace + 5)
        print(_line(job))
        return 0 if job.status == "cancelled" else 1
    if command == "logs":
        print(backend.logs(args.job_id, lines=args.lines))
        if args.follow:
            _follow(backend, args.job_id)
        return 0
    if command == "resume":
        print(_line(backend.resume(args.job_id)))
        return 0
    if command == "worker":
        if not hasattr(backend, "run_worker"):
            raise jobs.JobError(f"the {backend.name} backend needs no worker here: its cluster starts the jobs")
        print(f"worker started (at most {backend.settings.max_concurrent} training(s) at once)", flush=True)
        backend.run_worker(idle_exit=args.idle_exit)
        return 0
    raise AssertionError(command)


def _line(job) -> str:
    try:
        when = _dt.datetime.fromtimestamp(job.created_at).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OverflowError, OSError):  # a damaged record's time
        when = "?" * 16
    try:
        detail = job.error or job.describe_progress()
    except (TypeError, ValueError, KeyError, AttributeError):  # a damaged record's progress
        detail = ""
    return f"{job.id!s:>4}  {job.status!s:10} {when}  {job.kind!s:10} {job.run_id!s:42} {detail}"


def _whoami() -> str:
    import getpass
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _wait(backend, job_id: int) -> int:
    last = None
    while (job := backend.get(job_id)).active:
        line = _line(job)
        if line != last:
            print(line, flush=True)
            last = line
        time.sleep(2)
    print(_line(job))
    return 0 if job.status == "succeeded" else 1


def _follow(backend, job_id: int) -> None:
    printed = len(backend.logs(job_id, lines=1_000_000).splitlines())
    while True:
        active = backend.get(job_id).active
        lines = backend.logs(job_id, lines=1_000_000).splitlines()
        for line in lines[printed:]:
            print(line, flush=True)
        printed = len(lines)
        if not active:
            return
        time.sleep(1)
