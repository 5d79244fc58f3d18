"""What a Ray job costs over a local one, and a seed sweep's wall time on Ray.

    RAY_ADDRESS=http://127.0.0.1:8265 python -m bench.jobs_overhead --data PATH [--seeds 3] [--repeat 2]

For the same 1-epoch training (cnn_baseline on `--limit-per-class` images per
class), times submit -> `succeeded` through the local backend, then through
the Ray backend at $RAY_ADDRESS, `--repeat` times each, alternating; then
queues `--seeds` seeds at once on Ray (1 CPU each) and times the whole sweep.
Each figure is wall time as a user sees it (process start, TensorFlow import,
data loading, training, test evaluation, publishing). The training's own
seconds (`train_seconds` in the run's metadata) are printed beside it, so the
difference is the job machinery plus start-up. Runs go to a temporary
artifacts folder, deleted at the end. Without --data, a tiny generated
class-folder set (cifar/sample_data.py) is used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed_job(backend, overrides: dict) -> tuple[float, float]:
    """(wall seconds from submit to the job's end, the run's own training seconds)."""
    from cifar import artifacts, jobs
    started = time.perf_counter()
    job = backend.submit("cnn_baseline", overrides)
    while (job := backend.get(job.id)).status in jobs.ACTIVE:
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if job.status != "succeeded":
        sys.exit(f"job {job.id} {job.status}: {job.error}\n{backend.logs(job.id, 30)}")
    return wall, float(artifacts.get_run(job.run_id).metadata.get("train_seconds") or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a CIFAR-10 copy (default: a tiny generated one)")
    parser.add_argument("--limit-per-class", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if not os.environ.get("RAY_ADDRESS"):
        sys.exit("set RAY_ADDRESS to a Ray job server (e.g. ray start --head; http://127.0.0.1:8265)")
    with tempfile.TemporaryDirectory(prefix="jobs-overhead-") as temp:
        os.environ["CIFAR_ARTIFACTS"] = str(Path(temp) / "artifacts")
        os.environ["CIFAR_JOBS_POLL_INTERVAL"] = "0.2"
        os.environ["CIFAR_JOBS_WORKER_IDLE_EXIT"] = "1"  # gone before the folder is deleted
        data = args.data
        if not data:
            from cifar.sample_data import make_class_folders
            data = str(make_class_folders(Path(temp), per_class_train=args.limit_per_class))
        from cifar import jobs
        from cifar.jobs_local import LocalProcessBackend
        from cifar.jobs_ray import RayJobsBackend
        backends = {"local": LocalProcessBackend(), "ray": RayJobsBackend()}
        base = {"data": os.path.abspath(data), "epochs": 1, "limit_per_class": args.limit_per_class,
                "val_size": 0, "batch_size": 16}
        jobs.prepare_request("cnn_baseline", base)  # import TensorFlow here, before any clock starts
        results: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        for attempt in range(args.repeat):
            for name, backend in backends.items():
                results[name].append(timed_job(backend, {**base, "seed": 100 + attempt}))
                print(f"{name} #{attempt + 1}: {results[name][-1][0]:.1f} s wall, "
                      f"{results[name][-1][1]:.1f} s training", flush=True)
        started = time.perf_counter()
        sweep = jobs.submit_seeds(backends["ray"], "cnn_baseline", base, list(range(args.seeds)))
        while any(backends["ray"].get(job.id).status in jobs.ACTIVE for job in sweep):
            time.sleep(0.2)
        sweep_wall = time.perf_counter() - started
        statuses = [backends["ray"].get(job.id).status for job in sweep]
        capacity = backends["ray"].capacity()
        time.sleep(3)  # the local worker's idle exit

    print("\n| backend | wall seconds (median) | training seconds (median) | runs |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in rows):.1f} | "
              f"{statistics.median(r[1] for r in rows):.1f} | {len(rows)} |")
    overhead = statistics.median(r[0] for r in results["ray"]) - statistics.median(r[0] for r in results["local"])
    print(f"\nRay over local: {overhead:+.1f} s per job")
    print(f"{args.seeds}-seed sweep on Ray ({capacity.total_cpus:g} CPUs, 1 per job): {sweep_wall:.1f} s wall, "
          f"statuses {statuses}")


if __name__ == "__main__":
    main()
