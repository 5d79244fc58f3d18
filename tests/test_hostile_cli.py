"""The command line against hostile input: damaged job databases and records,
out-of-range numbers, data sources that would hang or loop, JSON built to
exhaust the parser, unreadable run folders, Ctrl-C and failures nobody
foresaw. Each answer is one line on stderr and a non-zero exit, never a
traceback, and nothing already saved is changed.

Most cases call `cifar.cli.main` in this process (milliseconds each); the
Ctrl-C cases need a real process to signal.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from cifar import artifacts, cli
from cifar.config import RunConfig, config_from_source, resolve_config, validate
from cifar.data import check_source, load_cifar10
from cifar.errors import CifarError, DataError
from cifar.jobs import JobSettings, parse_seeds
from tests.datasets import make_class_folders

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two published sample runs, made once; each test copies them into its own root."""
    from fixture_runs import make_run
    saved = os.environ.get("CIFAR_ARTIFACTS")
    source = tmp_path_factory.mktemp("hostile-runs")
    os.environ["CIFAR_ARTIFACTS"] = str(source)
    try:
        ids = [make_run("cnn_baseline", seed=seed, n_test=20).run_id for seed in (0, 1)]
    finally:
        if saved is None:
            os.environ.pop("CIFAR_ARTIFACTS")
        else:
            os.environ["CIFAR_ARTIFACTS"] = saved
    return source, ids


@pytest.fixture
def runs(two_runs):
    source, ids = two_runs
    shutil.copytree(source / "runs", artifacts.runs_dir())
    return ids


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@contextmanager
def no_hang(seconds: int = 20):
    """Fail instead of waiting forever on a read that never ends (a pipe, a device)."""
    def expire(signum, frame):
        raise AssertionError(f"still running after {seconds} s: it hangs")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- the job database

@pytest.mark.parametrize("damage", ["garbage", "directory", "text"])
def test_a_job_database_that_cannot_be_used_gets_one_line_and_is_left_as_it_was(capsys, damage):
    database = artifacts.jobs_database_path()
    database.parent.mkdir(parents=True)
    if damage == "directory":
        database.mkdir()
    else:
        database.write_bytes(os.urandom(4096) if damage == "garbage" else b"SQLite format 3\n" + b"x" * 200)
    before = database.read_bytes() if database.is_file() else None
    for argv in (["jobs", "list"], ["jobs", "logs", "1"], ["jobs", "cancel", "1"], ["jobs", "resume", "1"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2
        assert "job database" in one_error_line(err) and str(database) in err
    assert (database.read_bytes() if database.is_file() else None) == before


def test_damaged_job_records_are_listed_with_the_others(capsys):
    assert run_cli(capsys, "jobs", "list")[0] == 0  # creates the database
    now = time.time()
    with sqlite3.connect(artifacts.jobs_database_path()) as con:
        for run_id, config, payload, created in (("20261120T090000Z-cnn_baseline-00a1", "not json", "{}", now),
                                                 ("20261120T090000Z-cnn_baseline-00a2", "{}", "[1]", 1e300),
                                                 ("20261120T090000Z-cnn_baseline-00a3", "{}", "{}", now)):
            con.execute("INSERT INTO jobs (run_id, model, kind, config, payload, config_key, status, created_at, "
                        "queued_at) VALUES (?, 'cnn_baseline', 'train', ?, ?, ?, 'failed', ?, ?)",
                        (run_id, config, payload, run_id, created, now))
    code, out, _ = run_cli(capsys, "jobs", "list")
    assert code == 0 and all(f"cnn_baseline-00a{i}" in out for i in (1, 2, 3))
    code, out, _ = run_cli(capsys, "jobs", "list", "--json")
    assert code == 0 and out.count('"run_id"') == 3


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize("argv, flag", [
    (["jobs", "logs", "9" * 30], "job_id"),
    (["jobs", "cancel", "0"], "job_id"),
    (["jobs", "resume", "-3"], "job_id"),
    (["jobs", "list", "--limit", "9" * 30], "--limit"),
    (["jobs", "list", "--limit", "0"], "--limit"),
    (["jobs", "logs", "1", "--lines", "-5"], "--lines"),
    (["jobs", "worker", "--idle-exit", "nan"], "--idle-exit"),
    (["jobs", "worker", "--idle-exit", "-1"], "--idle-exit"),
    (["predict", "20261120T090000Z-cnn_baseline-0000", "x.png", "--top", "11"], "--top"),
    (["predict", "20261120T090000Z-cnn_baseline-0000", "x.png", "--top", "0"], "--top"),
    (["evaluate", "20261120T090000Z-cnn_baseline-0000", "--images", "9" * 30], "--images"),
])
def test_numbers_out_of_range_are_refused_before_anything_runs(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {flag}" in err and "Traceback" not in err


def test_a_seed_range_too_long_is_refused_without_expanding_it():
    with no_hang(), pytest.raises(CifarError, match="at most 100 seeds"):
        parse_seeds("0-" + "9" * 30)  # expanding it first would never finish
    assert parse_seeds("3-5,1") == [3, 4, 5, 1]


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e400"])
def test_job_settings_from_the_environment_must_be_finite(monkeypatch, value):
    for name in ("CIFAR_JOBS_MAX_CONCURRENT", "CIFAR_JOBS_POLL_INTERVAL"):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(CifarError, match=f"\\${name} must be a finite number"):
                JobSettings.from_env()


@pytest.mark.parametrize("setting, value, message", [
    ("learning_rate", math.inf, "--lr must be a finite number"),
    ("weight_decay", math.nan, "--weight-decay must be a finite number"),
    ("epochs", 10**20, "--epochs must be between 1 and"),
    ("batch_size", 10**12, "--batch-size must be between 1 and"),
    ("val_size", 10**20, "--val-size must be between 0 and"),
])
def test_training_numbers_must_be_finite_and_of_a_sane_size(setting, value, message):
    with pytest.raises(CifarError, match=message):
        validate(RunConfig(model="cnn_baseline", **{setting: value}))


@pytest.mark.parametrize("data", ["", "   "])
def test_an_empty_data_source_is_refused_not_read_as_the_current_folder(data):
    with pytest.raises(CifarError, match="--data is empty"):
        resolve_config("cnn_baseline", {"data": data})


@pytest.mark.parametrize("run_id, message", [("20261120T090000Z-fast_cnn-0000", "names model fast_cnn"),
                                             ("20269999T999999Z-cnn_baseline-0000", "is not a date")])
def test_train_refuses_a_run_id_that_names_another_model_or_no_date(capsys, run_id, message):
    code, _, err = run_cli(capsys, "train", "cnn_baseline", "--run-id", run_id, "--data", "/nowhere")
    assert code == 2 and message in one_error_line(err)
    assert not artifacts.work_dir(run_id).exists() and not artifacts.run_dir(run_id).exists()


def test_train_with_the_id_of_a_published_run_says_so_and_leaves_it_alone(capsys, runs):
    before = artifacts.read_json(artifacts.run_dir(runs[0]) / artifacts.METADATA_FILE)
    code, _, err = run_cli(capsys, "train", "cnn_baseline", "--run-id", runs[0], "--data", "/nowhere")
    assert code != 0 and "already published; leave --run-id out" in one_error_line(err)
    assert artifacts.read_json(artifacts.run_dir(runs[0]) / artifacts.METADATA_FILE) == before
    assert not artifacts.work_dir(runs[0]).exists()


# ---------------------------------------------------------------- JSON built to exhaust the parser

def test_a_config_nested_too_deeply_is_one_clear_error(tmp_path):
    nested = '{"model": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(CifarError, match="not valid JSON"):
        config_from_source(nested)
    (tmp_path / "deep.json").write_text(nested)
    with pytest.raises(CifarError, match="cannot be read as JSON"):
        config_from_source(str(tmp_path / "deep.json"))


@pytest.mark.parametrize("content", ["[" * 100_000 + "]" * 100_000, " " * (artifacts.MAX_JSON_BYTES + 1) + "{}"])
def test_a_run_whose_metadata_is_deeply_nested_or_huge_is_skipped_and_the_others_listed(capsys, runs, content):
    bad, good = runs
    (artifacts.run_dir(bad) / artifacts.METADATA_FILE).write_text(content)
    code, out, err = run_cli(capsys, "runs")
    assert code == 0 and good in out and f"skipped {bad}: metadata.json is unreadable" in err
    code, _, err = run_cli(capsys, "evaluate", bad)
    assert code == 2 and bad in one_error_line(err)


def test_a_run_folder_that_cannot_be_entered_is_skipped_not_fatal(capsys, runs, monkeypatch):
    bad, good = runs
    is_file = pathlib.Path.is_file

    def refused(path):  # what a folder without read or search permission does (root bypasses chmod)
        if bad in path.parts:
            raise PermissionError(13, "Permission denied", str(path))
        return is_file(path)
    monkeypatch.setattr(pathlib.Path, "is_file", refused)
    code, out, err = run_cli(capsys, "runs")
    assert code == 0 and good in out and f"skipped {bad}: cannot be read (Permission denied)" in err


def test_an_artifacts_root_that_is_a_file_is_named(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_ARTIFACTS", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a folder")
    for argv in (["runs"], ["jobs", "list"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "is a file, not a folder" in one_error_line(err)
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_evaluate_refuses_an_empty_recompute_source_and_two_jobs_at_once(capsys, runs):
    code, _, err = run_cli(capsys, "evaluate", runs[0], "--recompute", "")
    assert code == 2 and "no data source given" in err
    code, _, err = run_cli(capsys, "evaluate", runs[0], "--robustness", "--store-validation")
    assert code == 2 and "one of them at a time" in one_error_line(err)
    code, _, err = run_cli(capsys, "evaluate", runs[0], "--data", "/some/copy")
    assert code == 2 and "--recompute DATA" in one_error_line(err)


def test_output_that_the_terminal_cannot_encode_is_escaped_not_fatal(runs, monkeypatch):
    import io
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")  # PYTHONIOENCODING=ascii, a C locale
    monkeypatch.setattr(sys, "stdout", stdout)
    assert cli.main(["compare", *runs]) == 0  # its table marks missing values with an em dash
    stdout.flush()
    assert "\\u2014" in stdout.buffer.getvalue().decode("ascii")


# ---------------------------------------------------------------- data sources

def test_data_sources_that_never_end_are_refused_without_reading_them(tmp_path):
    fifo = tmp_path / "cifar.tar.gz"
    os.mkfifo(fifo)
    folder = make_class_folders(tmp_path / "data", per_class_train=1, per_class_test=1)
    os.mkfifo(folder / "train" / "cat" / "9999.png")
    with no_hang():
        for source, message in ((fifo, "not a folder or a file"), ("/dev/zero", "not a folder or a file"),
                                (folder, "9999.png' is not a regular file")):
            with pytest.raises(DataError, match=message):
                load_cifar10(source, use_cache=False)


def test_a_symbolic_link_loop_in_a_dataset_folder_is_named(tmp_path):
    folder = make_class_folders(tmp_path / "data", per_class_train=1, per_class_test=1)
    (folder / "train" / "cat" / "up").symlink_to("../..")
    with no_hang(), pytest.raises(DataError, match="symbolic link loop"):
        load_cifar10(folder, use_cache=False)


def test_a_file_name_that_is_not_utf8_still_loads(tmp_path):
    folder = make_class_folders(tmp_path / "data", per_class_train=1, per_class_test=1)
    cat = folder / "train" / "cat"
    image = next(cat.iterdir())
    os.rename(bytes(image), bytes(cat) + b"/\xff\xfe.png")
    assert "train:       10 images" in check_source(str(folder))
    assert load_cifar10(folder).x_train.shape[0] == 10  # the cached path hashes the name too


# ---------------------------------------------------------------- failures nobody foresaw, Ctrl-C

def test_an_unforeseen_failure_is_one_line_and_its_traceback_is_on_request(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("something nobody foresaw")
    monkeypatch.setitem(cli.COMMANDS, "runs", broken)
    code, _, err = run_cli(capsys, "runs")
    assert code == 1 and "unexpected RuntimeError: something nobody foresaw" in one_error_line(err)
    assert "CIFAR_TRACEBACK=1" in err
    monkeypatch.setenv("CIFAR_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        cli.main(["runs"])


@pytest.mark.parametrize("argv, says", [(["runs"], "nothing already saved was lost"),
                                        (["jobs", "submit", "cnn_baseline"], "carry on in the background")])
def test_ctrl_c_says_what_was_kept(capsys, monkeypatch, argv, says):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "start_backend_quietly", lambda: None)
    monkeypatch.setitem(cli.COMMANDS, argv[0], interrupted)
    code, _, err = run_cli(capsys, *argv)
    assert code == 130 and says in err


def _cli_process(*argv) -> subprocess.Popen:
    """`python -m cifar ARGV` as from a terminal: with Ctrl-C's default action,
    which a suite started in the background (`cmd &`) would pass on as ignored."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "cifar", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_to_a_real_process_exits_130_without_a_traceback():
    worker = _cli_process("jobs", "worker", "--idle-exit", "120")
    assert "worker started" in worker.stdout.readline()
    starting = _cli_process("models")  # imports Keras
    # Mid-way through importing Keras (seconds), well past Python's own start-up
    # (site-packages, ~30 ms), where a Ctrl-C is Python's to report, not ours.
    time.sleep(1.5)
    for process in (worker, starting):
        process.send_signal(signal.SIGINT)
    for process in (worker, starting):
        _, err = process.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert process.returncode in ((130,) if process is worker else (0, 130)), err
    assert worker.returncode == 130


def test_runs_all_lists_damaged_work_folders_without_loading_keras(tmp_path):
    work = artifacts.work_dir("20261120T090000Z-cnn_baseline-00a1")
    work.mkdir(parents=True)
    (work / artifacts.STATE_FILE).write_text("[1, 2]")
    (work / artifacts.PROGRESS_FILE).write_text('{"status": 5, "pid": "x"}')
    probe = ("import sys; from cifar import cli; code = cli.main(['runs', '--all']); "
             "print('keras loaded' if 'keras' in sys.modules else 'no keras'); sys.exit(code)")
    listed = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert listed.returncode == 0 and listed.stderr == ""
    line = next(line for line in listed.stdout.splitlines() if "00a1" in line)
    assert "in progress or interrupted after 0 epochs (unknown)" in line
    assert listed.stdout.rstrip().endswith("no keras")
