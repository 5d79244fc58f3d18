"""Command line: `python -m cifar COMMAND ...` (see `python -m cifar --help`).

Every expected failure (bad flag value, unknown model, missing data, broken
image) exits non-zero with one clear line on stderr, never a traceback. An
unforeseen one still gets a single line naming the exception (exit 1;
CIFAR_TRACEBACK=1 shows the traceback), and Ctrl-C at any point exits 130
with a line saying what was kept: every write is atomic, so an interruption
never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cifar.config import whole_number  # noqa: E402
from cifar.errors import CifarError  # noqa: E402

# TensorFlow's native start-up lines (oneDNN, CUDA probing, CPU features) are
# written through absl before its logging is initialised, which ignores
# TF_CPP_MIN_LOG_LEVEL; they are dropped while the backend starts. Any other
# line written then (a real error) is passed on to stderr.
_BACKEND_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+\.cc:\d+\] "
    r"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+\.cc:\d+\] (failed call to cuInit|Unable to register cu)"
    r"|To enable the following instructions: ")

EXAMPLES = """examples:
  python -m cifar models
  python -m cifar train cnn_baseline --data ~/data/cifar-10-python.tar.gz --epochs 2
  python -m cifar train cnn_regularized --data ./cifar10-jpeg.tar.gz --limit-per-class 100 --epochs 1
  python -m cifar runs
  python -m cifar predict RUN_ID cat.jpg dog.png
"""


def build_parser() -> argparse.ArgumentParser:
    from cifar.config import add_config_flags
    parser = argparse.ArgumentParser(prog="python -m cifar", description="Train, evaluate and compare "
                                     "CIFAR-10 classifiers.", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("models", help="list the models of the registry and their recipes")

    train = sub.add_parser("train", help="train a model and publish the run",
                           description="Train a model with its recipe; each flag overrides one setting. "
                                       "--config RUN_ID trains a run's exact settings again (a new run).")
    train.add_argument("model", nargs="?", help="a registry name (see: python -m cifar models); "
                       "optional with --config")
    train.add_argument("--config", metavar="RUN_ID|JSON|PATH",
                       help="start from these settings instead of the recipe: a run's (its metadata's config), "
                            "a JSON object, or a JSON file; the other flags still override them")
    train.add_argument("--run-id", help="use this run id (default: a new one)")
    train.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    add_config_flags(train)

    resume = sub.add_parser("resume", help="continue an interrupted run from its last epoch")
    resume.add_argument("run_id")
    resume.add_argument("--quiet", action="store_true")

    evaluate = sub.add_parser("evaluate", help="show a run's test metrics (add --recompute to re-evaluate)")
    evaluate.add_argument("run_id")
    evaluate.add_argument("--recompute", metavar="DATA", help="re-evaluate the saved model on this data source")
    evaluate.add_argument("--robustness", action="store_true",
                          help="accuracy under the 15 CIFAR-10-C corruptions at 5 severities; adds "
                               "robustness.parquet to the run")
    evaluate.add_argument("--images", type=whole_number, default=1000,
                          help="--robustness: test images, a seeded class-stratified subset (default 1000; "
                               "10000 for all)")
    evaluate.add_argument("--seed", type=whole_number, default=0, help="--robustness: subset and noise seed")
    evaluate.add_argument("--store-validation", action="store_true",
                          help="re-predict the run's validation split (from its config and --data) and "
                               "add it to the run, for temperature scaling on the Compare page")
    evaluate.add_argument("--data", help="the CIFAR-10 copy to read: needed by --store-validation (the run's "
                                         "data source); --robustness takes its test images from it (default: "
                                         "the run's recorded data source)")

    compare = sub.add_parser("compare", help="paired tests, calibration and per-class differences of runs")
    compare.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="two or more runs on the same test set")
    compare.add_argument("--json", action="store_true")

    runs = sub.add_parser("runs", help="list published runs (and interrupted ones with --all)")
    runs.add_argument("--all", action="store_true", help="also list runs in progress or interrupted")
    runs.add_argument("--json", action="store_true")

    predict = sub.add_parser("predict", help="top-3 classes of image files with a run's model")
    predict.add_argument("run_id")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--top", type=_top_k, default=3, help="classes shown per image, 1 to 10 (default 3)")

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    check = data_sub.add_parser("check", help="load and validate a CIFAR-10 source, print a report")
    check.add_argument("source")

    try:
        from cifar.jobs_cli import add_jobs_parser
    except ImportError:
        add_jobs_parser = None
    if add_jobs_parser:
        add_jobs_parser(sub)
    return parser


def _top_k(text: str) -> int:
    """argparse type of predict's --top: 1..10 classes."""
    from cifar import NUM_CLASSES
    value = whole_number(text)
    if not 1 <= value <= NUM_CLASSES:
        raise argparse.ArgumentTypeError(f"expected 1 to {NUM_CLASSES} classes, got '{text}'")
    return value


def _exit_on_sigterm(signum, frame):
    # SystemExit unwinds through `finally`/`except BaseException`, so a
    # cancelled training discards its half-assembled run instead of leaving it.
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _native_stderr_filtered():
    """Capture file descriptor 2 (where C++ libraries write), then pass on
    every line that is not _BACKEND_NOISE."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line.strip() and not _BACKEND_NOISE.match(line):
                    print(line, file=sys.stderr)


def start_backend_quietly() -> None:
    """Import Keras (and its backend) and touch the device once, without the
    backend's start-up lines on stderr. Later imports are free."""
    if "keras" in sys.modules:
        return
    with _native_stderr_filtered():
        import keras
        keras.ops.convert_to_numpy(keras.ops.zeros(1))  # device start-up (CUDA probing) happens here


def _needs_backend(args) -> bool:
    """Whether the command imports Keras at once (predict does, but only after decoding)."""
    return (args.command in ("models", "train", "resume")
            or (args.command == "evaluate" and any(getattr(args, flag, False) for flag in
                                                   ("recompute", "robustness", "store_validation")))
            or (args.command == "data" and getattr(args, "source", None) == "keras")
            or (args.command == "jobs" and getattr(args, "jobs_command", None) == "submit"))


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _safe_output()
    args = None
    try:
        args = build_parser().parse_args(argv)
        _check_artifacts_root(args)
        if _needs_backend(args):
            start_backend_quietly()
        return COMMANDS[args.command](args) or 0
    except CifarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions: say which file, no traceback
        print(f"error: {_describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; {_after_interrupt(args)}", file=sys.stderr)
        return 130
    except RecursionError:  # a hostile file nested thousands of levels deep (JSON, pickle)
        print("error: a file read is nested too deeply to be read (it is damaged or not one this tool "
              "wrote); re-run with CIFAR_TRACEBACK=1 to see which", file=sys.stderr)
        if os.environ.get("CIFAR_TRACEBACK"):
            raise
        return 1
    except Exception as exc:  # the backstop: an input no check foresaw still gets one line
        if os.environ.get("CIFAR_TRACEBACK"):
            raise
        print(f"error: unexpected {exc.__class__.__name__}: {str(exc)[:500]}. Re-run with CIFAR_TRACEBACK=1 "
              "for the details and report them", file=sys.stderr)
        return 1


def _safe_output() -> None:
    """Never fail on printing: a file name with undecodable bytes goes back out
    as those bytes on a UTF-8 stdout, and any text is escaped on a narrower one
    (PYTHONIOENCODING=ascii, a non-UTF-8 locale)."""
    for stream in (sys.stdout, sys.stderr):
        if not hasattr(stream, "reconfigure"):
            continue  # replaced (pytest's capture, a StringIO)
        utf8 = (stream.encoding or "").lower().replace("-", "") == "utf8"
        with contextlib.suppress(ValueError, OSError):
            stream.reconfigure(errors="surrogateescape" if utf8 and stream is sys.stdout else "backslashreplace")


def _check_artifacts_root(args) -> None:
    """$CIFAR_ARTIFACTS must name a folder (or nothing yet): a file there would
    otherwise read as 'no runs' and fail later with a bare OSError."""
    if args.command in ("models", "data"):
        return
    from cifar import artifacts
    root = artifacts.root()
    if root.exists() and not root.is_dir():
        raise CifarError(f"the artifacts folder {root} is a file, not a folder; point $CIFAR_ARTIFACTS "
                         "at a folder (it is created if missing) or unset it")


def _describe_os_error(exc: OSError) -> str:
    what = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    if isinstance(exc, PermissionError):
        return (f"{what}. Check that you may read and write it; runs, work and jobs live under "
                f"$CIFAR_ARTIFACTS (or artifacts/ beside the package)")
    return what


def _after_interrupt(args) -> str:
    """What an interrupted command left, and what to do next."""
    command = getattr(args, "command", None)
    if command in ("train", "resume"):
        return ("the run keeps its completed epochs; resume with: python -m cifar resume RUN_ID "
                "(see python -m cifar runs --all)")
    if command == "jobs" and getattr(args, "jobs_command", None) in ("submit", "robustness", "logs"):
        return "queued jobs carry on in the background; see python -m cifar jobs list"
    return "nothing already saved was lost or half-written"


# ---------------------------------------------------------------- commands

def cmd_models(args) -> int:
    from cifar.models import REGISTRY
    print(f"{'model':20} {'study':6} {'epochs':>6} {'batch':>5} {'lr':>8} {'opt':12} {'aug':4} summary")
    for spec in REGISTRY.values():
        r = spec.defaults
        print(f"{spec.name:20} {spec.study_section:6} {r.epochs:>6} {r.batch_size:>5} {r.learning_rate:>8g} "
              f"{r.optimizer:12} {'yes' if r.augment else 'no':4} {spec.summary}")
    print("every setting of a recipe: python -m cifar train MODEL --help, and each run's metadata.json")
    return 0


def cmd_train(args) -> int:
    from cifar.config import config_from_source, config_overrides, resolve_config
    from cifar.train import start_run
    overrides = config_overrides(args)
    base, source_run = config_from_source(args.config) if args.config else (None, None)
    if source_run and "note" not in overrides:
        overrides["note"] = f"retrain of {source_run}"
    config = resolve_config(args.model, overrides, base=base)
    if args.run_id is not None:
        _check_run_id_for(args.run_id, config.model)
    print(f"training {config.model}: {json.dumps(config.to_dict())}", flush=True)
    run_id = start_run(config, run_id=args.run_id, verbose=2 if args.quiet else 1)
    _print_summary(run_id)
    return 0


def _check_run_id_for(run_id: str, model: str) -> None:
    """A chosen run id must be a real one (its time a date) and name the model trained:
    listings, the dashboard and `--config` read the model from it."""
    from cifar import artifacts
    parts = artifacts.parse_run_id(run_id)
    if parts.model != model:
        raise CifarError(f"--run-id {run_id} names model {parts.model}, but this trains {model}; leave "
                         f"--run-id out for a new id, or use one like {artifacts.new_run_id(model)}")


def cmd_resume(args) -> int:
    from cifar.train import resume_run
    run_id = resume_run(args.run_id, verbose=2 if args.quiet else 1)
    _print_summary(run_id)
    return 0


def _print_summary(run_id: str) -> None:
    from cifar import artifacts
    metrics = artifacts.read_table(run_id, "metrics").iloc[0]
    print(f"run {run_id}: test accuracy {metrics.test_accuracy:.4f}, test loss {metrics.test_loss:.4f}, "
          f"macro F1 {metrics.f1_macro:.4f}")
    print(f"saved under {artifacts.run_dir(run_id)}")


def cmd_evaluate(args) -> int:
    from cifar import artifacts
    info = artifacts.get_run(args.run_id)
    modes = [flag for flag, given in (("--recompute", args.recompute is not None), ("--robustness", args.robustness),
                                      ("--store-validation", args.store_validation)) if given]
    if len(modes) > 1:
        raise CifarError(f"{' and '.join(modes)} are separate jobs: give one of them at a time")
    if args.data is not None and not (args.robustness or args.store_validation):
        raise CifarError("--data is read only with --robustness or --store-validation; to re-evaluate on "
                         "another copy use --recompute DATA")
    if args.robustness:
        return _evaluate_robustness(args)
    if args.store_validation:
        from cifar.evaluate import store_validation_predictions
        if not args.data:
            raise CifarError("--store-validation needs --data PATH: the data source the run was trained on")
        stored = store_validation_predictions(args.run_id, args.data)
        print(f"run {args.run_id}: stored {stored['images']:,} validation predictions "
              f"(validation accuracy {stored['accuracy']:.4f})")
        return 0
    if args.recompute is not None:
        from cifar.data import load_cifar10
        from cifar.evaluate import evaluate
        from cifar.predict import load_model
        data = load_cifar10(args.recompute)
        result = evaluate(load_model(args.run_id), data.x_test, data.y_test)
        metrics, per_class = result.metrics.iloc[0], result.per_class
    else:
        metrics = artifacts.read_table(args.run_id, "metrics").iloc[0]
        per_class = artifacts.read_table(args.run_id, "per_class")
    print(f"run {info.run_id} ({info.model})")
    for key, value in metrics.items():
        print(f"  {key:20} {value:.4f}" if isinstance(value, float) else f"  {key:20} {value}")
    print(per_class.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _evaluate_robustness(args) -> int:
    from cifar.robustness import evaluate_run, summary
    table = evaluate_run(args.run_id, args.data, args.images, args.seed)
    row = summary({args.run_id: table}, None).iloc[0]
    print(f"run {args.run_id}: clean accuracy {row['Clean accuracy']:.4f} ({row['Clean 95% interval']}), "
          f"mean corruption accuracy {row['Mean corruption accuracy']:.4f} on {row['Images']} images, "
          f"{table.seconds.sum():.0f} s; written to robustness.parquet")
    return 0


def cmd_compare(args) -> int:
    from cifar.compare import format_report, report
    result = report(args.run_ids)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def cmd_runs(args) -> int:
    from cifar import artifacts
    runs, skipped = artifacts.scan_runs()
    rows = []
    for info in runs:
        try:  # a table changed since publication shows only when read: the run is skipped, with why
            m = artifacts.read_metrics(info)
        except CifarError as exc:
            skipped.append(artifacts.Skipped(info.run_id, str(exc)))
            continue
        rows.append({"run_id": info.run_id, "model": info.model,
                     "epochs": info.metadata.get("epochs_run"),
                     "test_accuracy": float(m["test_accuracy"]),
                     "imagenet_weights": info.metadata.get("imagenet_weights")})
    if args.json:
        print(json.dumps({"runs": rows, "skipped": [s.__dict__ for s in skipped]}, indent=2))
        return 0
    if not rows:
        print("no runs yet. Train one with: python -m cifar train cnn_baseline --data PATH --epochs 1")
    for row in rows:
        acc = f"{row['test_accuracy']:.4f}" if row["test_accuracy"] is not None else "?"
        flag = "  (no ImageNet weights)" if row["imagenet_weights"] is False else ""
        epochs = row["epochs"] if row["epochs"] is not None else "?"
        print(f"{row['run_id']:45} {row['model']:20} epochs {epochs:>3}  test acc {acc}{flag}")
    for s in skipped:
        print(f"skipped {s.name}: {s.reason}", file=sys.stderr)
    if args.all:
        for row in artifacts.interrupted_runs():
            print(f"{row['run_id']:45} in progress or interrupted after {row['completed_epochs']} epochs "
                  f"({row['status']}); resume with: python -m cifar resume {row['run_id']}")
    return 0


def cmd_predict(args) -> int:
    from cifar.predict import decode_files, model_file, predict_decoded
    model_file(args.run_id)  # a bad run id fails before any file is read
    decoded = decode_files(args.images)  # every file is checked before Keras and the model load
    if any("image" in result for result in decoded):
        start_backend_quietly()
    failures = 0
    for result in predict_decoded(args.run_id, decoded, k=args.top):
        if "error" in result:
            failures += 1
            print(f"{result['file']}: error: {result['error']}", file=sys.stderr)
        else:
            ranked = ", ".join(f"{name} {p:.1%}" for name, p in result["top_k"])
            print(f"{result['file']}: {ranked}")
    return 2 if failures else 0


def cmd_data(args) -> int:
    from cifar.data import check_source
    print(check_source(args.source))
    return 0


def cmd_jobs(args) -> int:
    from cifar.jobs_cli import run_jobs_command
    return run_jobs_command(args)


COMMANDS = {"models": cmd_models, "train": cmd_train, "resume": cmd_resume, "evaluate": cmd_evaluate,
            "runs": cmd_runs, "predict": cmd_predict, "data": cmd_data, "jobs": cmd_jobs,
            "compare": cmd_compare}
