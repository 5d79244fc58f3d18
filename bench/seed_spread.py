"""Mean and spread of the final test accuracy over several seeds of one recipe.

    python -m bench.seed_spread RUN_ID [RUN_ID ...] [--target 0.94]

Reads each run's `metrics.parquet` under the artifacts root (`$CIFAR_ARTIFACTS`,
default artifacts/) and prints a markdown table (run, seed, test accuracy,
training minutes) and the mean, sample standard deviation, range and the gap
from the mean to the target: how BENCHMARKS states "94% mean over 3 seeds".
Refuses runs of different models, or two runs with the same seed: they would
not be seeds of one recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifar import artifacts  # noqa: E402
from cifar.errors import RunError  # noqa: E402


def seed_table(run_ids: list[str]) -> pd.DataFrame:
    """One row per run: run_id, model, seed, test_accuracy, train_minutes."""
    rows = []
    for run_id in run_ids:
        # The run's record is enough (runs trained on a lent GPU come back without model.keras).
        meta = artifacts.get_run(run_id, allow_missing_model=True).metadata
        metrics = artifacts.read_table(run_id, "metrics", allow_missing_model=True)
        rows.append({"run_id": run_id, "model": meta["model"], "seed": meta["config"].get("seed"),
                     "test_accuracy": float(metrics["test_accuracy"].iloc[0]),
                     "train_minutes": float(meta.get("train_seconds") or 0) / 60})
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame, target: float) -> dict[str, float]:
    accuracy = table.test_accuracy
    return {"runs": len(table), "mean": float(accuracy.mean()),
            "std": float(accuracy.std(ddof=1)) if len(table) > 1 else 0.0,
            "min": float(accuracy.min()), "max": float(accuracy.max()),
            "gap_points": (target - float(accuracy.mean())) * 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run ids, one per seed")
    parser.add_argument("--target", type=float, default=0.94, help="the accuracy the mean is compared with")
    args = parser.parse_args()
    try:
        table = seed_table(args.runs)
    except RunError as error:
        sys.exit(f"{error} (runs are read from {artifacts.runs_dir()}; set CIFAR_ARTIFACTS to read another root)")
    if table.model.nunique() > 1:
        sys.exit("these runs are of different models (" + ", ".join(table.model.unique())
                 + "): give seeds of one recipe")
    if table.seed.duplicated().any():
        sys.exit(f"two runs have the same seed ({table.seed[table.seed.duplicated()].iloc[0]}): "
                 "give one run per seed")
    print("| run | seed | test accuracy | training minutes |")
    print("|---|---|---|---|")
    for row in table.itertuples():
        print(f"| `{row.run_id}` | {row.seed} | {row.test_accuracy:.4f} | {row.train_minutes:.1f} |")
    s = summary(table, args.target)
    print(f"\n{s['runs']} seeds of {table.model.iloc[0]}: mean {s['mean']:.4f}, standard deviation "
          f"{s['std']:.4f}, range {s['min']:.4f}-{s['max']:.4f}; {s['gap_points']:.2f} points "
          f"{'short of' if s['gap_points'] > 0 else 'above'} {args.target:.2%}")


if __name__ == "__main__":
    main()
