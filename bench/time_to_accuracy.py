"""Time to accuracy: accuracy against training time, for runs of different models.

    python -m bench.time_to_accuracy [RUN_ID ...] [--thresholds 0.90 0.92 0.93 0.94]
                                     [--label RUN_ID=TEXT ...] [--out docs/time_to_accuracy]

Without run ids it takes the newest run of fast_cnn, cnn_regularized and
cnn_baseline under the artifacts root (`$CIFAR_ARTIFACTS`, default artifacts/)
among complete runs; runs copied without their model.keras (from a lent GPU)
are read when named.
For each run, one point per epoch:
- x: time spent in training batches so far (history `train_seconds_total`,
  or the sum of the epochs' `seconds` for runs from before it existed):
  no evaluation, saving or start-up, as airbench counts its time; in
  minutes, or in seconds when every run ends within two minutes (a GPU's);
- y: the test accuracy measured after that epoch when the run was trained
  with `--track-test` (one view per image), otherwise the validation accuracy
  (held-out training images, never seen in training);
plus the run's final test accuracy (the shipped model, with fast_cnn's
test-time augmentation) at the end of its training. The legend names each run
as the dashboard does (model, run-id suffix, start time), with its seed and
epochs; `--label RUN_ID=TEXT` adds what the run itself does not record (which
recipe version it trained, say).

Writes OUT.csv (every plotted point) and OUT.png (the chart, drawn by
headless Chromium through Playwright: test-only packages, see
requirements-test.txt), and prints a markdown table of the training minutes
each run took to first reach each threshold: "(final model)" where only the
final model reached it (fast_cnn's test-time augmentation; or, for a run
without `--track-test`, its test figure where the epochs' validation figures
stayed below), seconds under two minutes; `--label` text follows the run id.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifar import artifacts  # noqa: E402
from cifar.browser import save_figure_png  # noqa: E402
from cifar.errors import RunError  # noqa: E402
from cifar.dashboard import run_label, training_seconds  # noqa: E402

DEFAULT_MODELS = ("fast_cnn", "cnn_regularized", "cnn_baseline")
FINAL = "test, final model"  # the `measure` of a run's last point: its shipped model
SECONDS_BELOW = 2  # minutes: shorter times are shown in seconds, in the table and on the chart
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",  # one colour a run
           "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def run_points(run_id: str) -> pd.DataFrame:
    """Every (training minutes, accuracy) point of one run, per epoch and final."""
    # Two small tables and the metadata, not load_run's predictions and gallery too; no
    # model file needed (runs trained on a lent GPU come back without model.keras).
    meta = artifacts.get_run(run_id, allow_missing_model=True).metadata
    history = artifacts.read_table(run_id, "history", allow_missing_model=True)
    metrics = artifacts.read_table(run_id, "metrics", allow_missing_model=True)
    seconds = training_seconds(history)
    if "test_accuracy" in history:
        measure, accuracy = "test, single view, after each epoch", history["test_accuracy"]
    elif "val_accuracy" in history:
        measure, accuracy = "validation, after each epoch", history["val_accuracy"]
    else:  # fast_cnn trains on all 50,000 images: no validation split
        raise RunError(f"run {run_id} has no accuracy per epoch (no validation split, no --track-test): "
                       f"train it again with --track-test to plot it")
    environment = meta.get("environment", {})
    run = {"run_id": run_id, "model": meta["model"], "seed": meta["config"].get("seed"),  # on every point
           "machine": environment.get("hardware", {}).get("label", "?"),
           "backend": environment.get("backend", "?"), "precision": meta["config"].get("precision", "?"),
           "data": meta.get("data", {}).get("description", "?")}
    points = pd.DataFrame({**run,
                           "epoch": history["epoch"],
                           "train_minutes": seconds / 60, "accuracy": accuracy, "measure": measure})
    final = pd.DataFrame([{**run,
                           "epoch": int(history["epoch"].iloc[-1]),
                           "train_minutes": float(seconds.iloc[-1]) / 60,
                           "accuracy": float(metrics["test_accuracy"].iloc[0]),
                           "measure": FINAL}])
    return pd.concat([points, final], ignore_index=True)


def first_reached(points: pd.DataFrame, threshold: float) -> pd.Series | None:
    """The earliest point at or above `threshold`; an epoch's point before the
    final model's, which comes at the same time (the rows keep that order)."""
    reached = points[points.accuracy >= threshold]
    return reached.loc[reached.train_minutes.idxmin()] if len(reached) else None


def time_to(points: pd.DataFrame, threshold: float) -> float | None:
    first = first_reached(points, threshold)
    return None if first is None else float(first.train_minutes)


def duration(minutes: float) -> str:
    """Minutes as the table shows them; seconds under two minutes (GPU runs), as the chart."""
    return f"{minutes:.1f} min" if minutes >= SECONDS_BELOW else f"{minutes * 60:.1f} s"


def time_to_cell(points: pd.DataFrame, threshold: float) -> str:
    """The table cell: when `threshold` was first reached, and by what."""
    first = first_reached(points, threshold)
    if first is None:
        return "not reached"
    return duration(first.train_minutes) + (" (final model)" if first.measure == FINAL else "")


def legend_name(run: pd.DataFrame, extra: str | None = None) -> str:
    """Legend name of one run: the dashboard's label of it (model, run-id suffix,
    start time), then its seed, what --label adds and its epochs."""
    first = run.iloc[0]
    seed = "" if pd.isna(first.seed) else f" · seed {int(first.seed)}"
    extra = f", {extra}" if extra else ""
    return f"{run_label(first.run_id, {'model': first.model})}{seed}{extra} · {run.epoch.max()} epochs"


def setting(points: pd.DataFrame) -> str:
    """Where the runs trained, for the chart's subtitle: machine, backend, precision, data."""
    return " · ".join(" / ".join(points[column].unique()) for column in ("machine", "backend", "precision", "data"))


def figure(points: pd.DataFrame, thresholds: list[float], labels: dict[str, str] | None = None) -> go.Figure:
    fig = go.Figure()
    # Seconds for runs that all end within two minutes (a GPU's), minutes otherwise.
    scale, unit = (60, "seconds") if points.train_minutes.max() < SECONDS_BELOW else (1, "minutes")
    mixed_precision = points.precision.nunique() > 1  # then each legend entry says its own
    for (run_id, run), colour in zip(points.groupby("run_id", sort=False), PALETTE * 10):
        extra = [(labels or {}).get(run_id)] + ([run.precision.iloc[0]] if mixed_precision else [])
        label = legend_name(run, ", ".join(filter(None, extra)) or None)
        curve = run[run.measure != FINAL]
        final = run[run.measure == FINAL]
        fig.add_trace(go.Scatter(x=curve.train_minutes * scale, y=curve.accuracy, mode="lines+markers",
                                 line=dict(color=colour), name=f"{label}: {curve.measure.iloc[0]}",
                                 legendgroup=run_id))
        fig.add_trace(go.Scatter(x=final.train_minutes * scale, y=final.accuracy, mode="markers",
                                 marker=dict(symbol="star", size=16, color=colour, line=dict(width=1, color="black")),
                                 name=f"{label}: final test {final.accuracy.iloc[0]:.2%}", legendgroup=run_id))
    for threshold in thresholds:  # labelled outside the plot, right: the y-axis has its own "90%"
        fig.add_hline(y=threshold, line=dict(color="#999", width=1, dash="dot"),
                      annotation_text=f"{threshold:.0%}", annotation_font_size=9, annotation_position="right")
    fig.update_layout(title=f"CIFAR-10 accuracy against training time<br><sup>{setting(points)}</sup>",
                      xaxis_title=f"training time ({unit}, training batches only)", xaxis_rangemode="tozero",
                      yaxis_title="accuracy", yaxis_tickformat=".0%", template="plotly_white",
                      # The legend goes under the plot (inside, it hid the curves), 50 px a run.
                      width=1100, height=660 + 50 * points.run_id.nunique(),
                      legend=dict(x=0, y=-0.12, xanchor="left", yanchor="top"))
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run ids (default: the newest run of each of "
                                                + ", ".join(DEFAULT_MODELS) + ")")
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.90, 0.92, 0.93, 0.94])
    parser.add_argument("--label", action="append", default=[], metavar="RUN_ID=TEXT",
                        help="add TEXT to a run's legend name (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("docs/time_to_accuracy"))
    args = parser.parse_args()
    labels = dict(item.split("=", 1) for item in args.label if "=" in item)
    if len(labels) != len(args.label):
        parser.error("--label takes RUN_ID=TEXT, for example --label 20261125T165241Z-fast_cnn-f903='recipe v1'")

    newest = {run.model: run.run_id for run in artifacts.list_runs()}  # listed oldest first
    run_ids = args.runs or [newest[model] for model in DEFAULT_MODELS if model in newest]
    if not run_ids:
        sys.exit(f"no runs of {', '.join(DEFAULT_MODELS)} under {artifacts.runs_dir()}")
    try:
        points = pd.concat([run_points(run_id) for run_id in run_ids], ignore_index=True)
    except RunError as error:
        sys.exit(f"error: {error}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    points.to_csv(args.out.with_suffix(".csv"), index=False, float_format="%.4f")
    save_figure_png(figure(points, args.thresholds, labels), args.out.with_suffix(".png"))

    print("| run | model | epochs | " + " | ".join(f"to {t:.0%}" for t in args.thresholds)
          + " | final test acc | training time |")
    print("|---" * (len(args.thresholds) + 5) + "|")
    for run_id, run in points.groupby("run_id", sort=False):
        cells = [time_to_cell(run, t) for t in args.thresholds]
        final = run[run.measure == FINAL].iloc[0]
        name = f"`{run_id}`" + (f" ({labels[run_id]})" if run_id in labels else "")
        print(f"| {name} | {final.model} | {final.epoch} | " + " | ".join(cells)
              + f" | {final.accuracy:.4f} | {duration(final.train_minutes)} |")
    print(f"wrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
