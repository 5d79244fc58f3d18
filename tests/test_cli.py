"""The CLI end to end through real subprocesses: help, train, runs, evaluate, predict, data check."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.datasets import make_class_folders

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["models", "train", "resume", "evaluate", "runs", "predict", "data"]


def cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cifar", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_clear_line(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = cli(command, "--help", timeout=60)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_train_then_runs_evaluate_and_predict(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class_train=3, per_class_test=2)
    trained = cli("train", "cnn_baseline", "--data", data, "--epochs", "1", "--limit-per-class", "3",
                  "--val-size", "10", "--batch-size", "8", "--quiet")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "test accuracy" in trained.stdout
    run_id = trained.stdout.split("run ", 1)[1].split(":", 1)[0]

    listed = cli("runs")
    assert listed.returncode == 0 and run_id in listed.stdout and "cnn_baseline" in listed.stdout

    shown = cli("evaluate", run_id)
    assert shown.returncode == 0 and "test_accuracy" in shown.stdout and "cat" in shown.stdout

    image = next((Path(data) / "test" / "cat").iterdir())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    predicted = cli("predict", run_id, image, broken)
    assert predicted.returncode == 2, "a bad file makes the command fail, after the good ones"
    [good_line] = predicted.stdout.strip().splitlines()
    assert good_line.startswith(str(image)) and "%" in good_line
    [bad_line] = predicted.stderr.strip().splitlines()  # nothing else: no TensorFlow start-up lines
    assert "broken.png: error:" in bad_line


def test_bad_input_gets_one_clear_line(tmp_path):
    assert_one_clear_line(cli("train", "resnet9000"), "unknown model", "cnn_baseline")
    assert_one_clear_line(cli("train", "cnn_baseline", "--epochs", "many"), "expected a whole number")
    assert_one_clear_line(cli("train", "cnn_baseline", "--data", tmp_path / "missing"), "does not exist")
    assert_one_clear_line(cli("train", "cnn_baseline", "--weights", "none"), "only to transfer models")
    assert_one_clear_line(cli("evaluate", "not-a-run"), "not a run id")
    assert_one_clear_line(cli("train", "vgg16_finetune", "--weights", "none", "--input-size", "32"),
                          "vgg16_transfer")


def test_data_check_reports_counts_and_names_broken_files(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class_train=2, per_class_test=1)
    report = cli("data", "check", data, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "20" in report.stdout and "cat" in report.stdout
    (Path(data) / "train" / "cat" / "9999.png").write_bytes(b"not an image")
    broken = cli("data", "check", data, timeout=120)
    assert_one_clear_line(broken, "9999.png")


def test_a_subset_gets_a_tenth_for_validation_and_a_relative_data_path_is_stored_absolute(tmp_path, monkeypatch):
    from cifar.config import resolve_config
    monkeypatch.chdir(tmp_path)
    subset = resolve_config("cnn_regularized", data="copy/cifar10-jpeg.tar.gz", limit_per_class=500)
    assert subset.val_size == 500, "5,000 of 5,000 kept images would leave nothing to train on"
    assert subset.data == str(tmp_path / "copy" / "cifar10-jpeg.tar.gz")
    assert resolve_config("cnn_regularized", limit_per_class=500, val_size=50).val_size == 50
    assert resolve_config("cnn_regularized").val_size == 5000
    assert resolve_config("cnn_regularized", limit_per_class=4000).val_size == 4000
    assert resolve_config("fast_cnn", limit_per_class=500).val_size == 0, "fast_cnn trains on every image"
    assert resolve_config("cnn_baseline").data == "keras"
    assert resolve_config("cnn_baseline", data="~/cifar").data == os.path.expanduser("~/cifar")
