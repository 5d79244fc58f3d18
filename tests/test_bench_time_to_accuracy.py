"""bench/time_to_accuracy: the points, thresholds and legend names behind
BENCHMARKS' time-to-accuracy table and the README's plot."""

import sys

import pandas as pd
import pytest

from bench import time_to_accuracy as tta
from cifar import artifacts
from cifar.dashboard import run_label
from cifar.errors import RunError
from fixture_runs import make_run


def test_run_points_gives_each_epoch_then_the_final_model_at_the_end_of_training():
    run = make_run("cnn_regularized", epochs=5, accuracy=0.8)
    points = tta.run_points(run.run_id)
    curve = points[points.measure == "validation, after each epoch"]
    final = points[points.measure == "test, final model"].iloc[0]
    assert list(curve.epoch) == [1, 2, 3, 4, 5]
    assert curve.train_minutes.is_monotonic_increasing
    assert final.train_minutes == pytest.approx(curve.train_minutes.iloc[-1])
    assert final.accuracy == pytest.approx(artifacts.load_run(run.run_id)["metrics"].test_accuracy[0])
    assert final.epoch == 5 and final.seed == 0


def test_time_to_is_the_first_point_at_or_above_the_threshold_and_none_when_never_reached():
    run = make_run("cnn_regularized", epochs=6, accuracy=0.85)
    points = tta.run_points(run.run_id)
    threshold = float(points.accuracy.iloc[2])     # reached at the third epoch at the latest
    first = points[points.accuracy >= threshold].train_minutes.min()
    assert tta.time_to(points, threshold) == pytest.approx(first)
    assert tta.time_to(points, threshold) <= points.train_minutes.iloc[2]
    assert tta.time_to(points, 0.999) is None


def test_the_chart_legend_names_each_run_as_the_dashboard_does_with_seed_label_and_epochs():
    run = make_run("cnn_baseline", epochs=3, config_seed=7)
    points = tta.run_points(run.run_id)
    dashboard_label = run_label(run.run_id, run.metadata)
    assert artifacts.parse_run_id(run.run_id).suffix in dashboard_label
    assert tta.legend_name(points) == f"{dashboard_label} · seed 7 · 3 epochs"
    chart = tta.figure(points, [0.9], labels={run.run_id: "recipe v1"})
    curve, final = (trace.name for trace in chart.data)
    assert curve == f"{dashboard_label} · seed 7, recipe v1 · 3 epochs: validation, after each epoch"
    assert final.startswith(f"{dashboard_label} · seed 7, recipe v1 · 3 epochs: final test ")


def test_a_label_without_run_id_is_refused_with_an_example(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["time_to_accuracy", "--label", "recipe v1"])
    with pytest.raises(SystemExit) as exit_info:
        tta.main()
    assert exit_info.value.code == 2
    assert "RUN_ID=TEXT" in capsys.readouterr().err


def test_table_cells_say_seconds_under_two_minutes_and_when_only_the_final_model_got_there():
    assert tta.duration(89.94) == "89.9 min" and tta.duration(8.72 / 60) == "8.7 s"
    points = tta.run_points(make_run("cnn_regularized", epochs=4, accuracy=0.8).run_id)
    epochs = points.measure != "test, final model"
    points.loc[epochs, "accuracy"] = [0.5, 0.7, 0.89, 0.88]
    points.loc[~epochs, "accuracy"] = 0.91          # test-time augmentation lifts the final model
    third = tta.duration(points.train_minutes.iloc[2])
    assert tta.time_to_cell(points, 0.89) == third
    assert tta.time_to_cell(points, 0.90) == tta.duration(points.train_minutes.iloc[-1]) + " (final model)"
    assert tta.time_to_cell(points, 0.95) == "not reached"
    points.loc[epochs, "accuracy"] = [0.5, 0.7, 0.89, 0.91]   # the last epoch ties the final model
    assert tta.time_to_cell(points, 0.91) == tta.duration(points.train_minutes.iloc[3])


def test_runs_copied_without_their_model_file_are_still_plotted_and_the_cli_refuses_unknown_runs(
        monkeypatch, capsys):
    run = make_run("cnn_regularized", epochs=3)
    artifacts.model_path(run.run_id).unlink()      # as runs come back from a lent GPU
    assert len(tta.run_points(run.run_id)) == 4
    monkeypatch.setattr(sys, "argv", ["time_to_accuracy", "20991231T000000Z-fast_cnn-0000"])
    with pytest.raises(SystemExit) as exit_info:
        tta.main()
    assert "error: no run '20991231T000000Z-fast_cnn-0000'" in str(exit_info.value.code)


def test_the_chart_says_where_the_runs_trained_and_uses_seconds_for_runs_under_two_minutes():
    points = tta.run_points(make_run("cnn_baseline", epochs=3).run_id)
    meta = artifacts.get_run(points.run_id.iloc[0]).metadata
    title = tta.figure(points, [0.9]).layout.title.text
    for part in (meta["environment"]["hardware"]["label"], meta["environment"]["backend"],
                 meta["config"]["precision"], meta["data"]["description"]):
        assert part in title
    slow = tta.figure(points.assign(train_minutes=points.train_minutes + 5), [0.9])
    fast = tta.figure(points.assign(train_minutes=points.train_minutes / 1000), [0.9])
    assert "minutes" in slow.layout.xaxis.title.text and "seconds" in fast.layout.xaxis.title.text
    assert fast.data[0].x[0] == pytest.approx(points.train_minutes.iloc[0] / 1000 * 60)


def test_a_run_with_no_accuracy_per_epoch_gets_a_clear_error():
    run = make_run("fast_cnn", epochs=2)    # no validation split, trained without --track-test
    with pytest.raises(RunError, match="train it again with --track-test"):
        tta.run_points(run.run_id)


def test_each_legend_entry_names_its_precision_only_when_the_runs_differ():
    bf16 = tta.run_points(make_run("cnn_baseline", epochs=2, precision="mixed_bfloat16").run_id)
    f32 = tta.run_points(make_run("cnn_regularized", epochs=2, minutes_after_start=1).run_id)
    mixed = tta.figure(pd.concat([bf16, f32]), [0.9])
    assert "mixed_bfloat16" in mixed.data[0].name and "float32" in mixed.data[2].name
    assert "float32" not in tta.figure(f32, [0.9]).data[0].name


def test_table_and_chart_switch_to_minutes_at_two_minutes_alike():
    assert tta.duration(1.5) == "90.0 s" and tta.duration(2.0) == "2.0 min"
    points = tta.run_points(make_run("cnn_baseline", epochs=2).run_id)

    def chart_ending_at(minutes):
        scaled = points.assign(train_minutes=points.train_minutes / points.train_minutes.max() * minutes)
        return tta.figure(scaled, [0.9])
    under, at = chart_ending_at(1.5), chart_ending_at(2.0)
    assert "seconds" in under.layout.xaxis.title.text and max(under.data[1].x) == pytest.approx(90.0)
    assert "minutes" in at.layout.xaxis.title.text and max(at.data[1].x) == pytest.approx(2.0)
