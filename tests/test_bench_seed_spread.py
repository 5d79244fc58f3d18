"""bench/seed_spread: the mean, spread and gap BENCHMARKS states for "94% mean over 3 seeds"."""

import sys

import pytest

from bench import seed_spread
from cifar import artifacts
from fixture_runs import make_run


def _main(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["seed_spread", *argv])
    seed_spread.main()


def test_mean_spread_and_gap_of_three_seeds(monkeypatch, capsys):
    runs = [make_run("cnn_regularized", seed=10 + i, accuracy=a, minutes_after_start=i, config_seed=i).run_id
            for i, a in enumerate((0.90, 0.91, 0.92))]
    table = seed_spread.seed_table(runs)
    s = seed_spread.summary(table, 0.94)
    assert s["mean"] == pytest.approx(table.test_accuracy.mean())
    assert s["std"] == pytest.approx(table.test_accuracy.std(ddof=1))
    assert s["gap_points"] == pytest.approx((0.94 - s["mean"]) * 100)
    assert list(table.seed) == [0, 1, 2]
    _main(monkeypatch, *runs)
    out = capsys.readouterr().out
    assert f"3 seeds of cnn_regularized: mean {s['mean']:.4f}" in out
    assert "points short of 94.00%" in out


def test_seeds_copied_without_their_model_files_are_still_counted():
    runs = [make_run("cnn_baseline", seed=20 + i, minutes_after_start=i, config_seed=i).run_id for i in range(2)]
    for run_id in runs:
        artifacts.model_path(run_id).unlink()          # as runs come back from a lent GPU
    assert list(seed_spread.seed_table(runs).seed) == [0, 1]


def test_runs_that_are_not_seeds_of_one_recipe_are_refused(monkeypatch):
    a = make_run("cnn_regularized", seed=20)
    b = make_run("cnn_baseline", seed=21, minutes_after_start=1)
    with pytest.raises(SystemExit, match="different models"):
        _main(monkeypatch, a.run_id, b.run_id)
    c = make_run("cnn_regularized", seed=22, minutes_after_start=2)   # recorded seed 0, as a's
    with pytest.raises(SystemExit, match="same seed"):
        _main(monkeypatch, a.run_id, c.run_id)
    with pytest.raises(SystemExit, match="CIFAR_ARTIFACTS"):
        _main(monkeypatch, "20990101T000000Z-fast_cnn-0000")
