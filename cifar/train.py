"""Training: one resumable run from a frozen config to a published run folder.

Each epoch is one `model.fit` call on a permutation seeded by (seed, epoch),
so a run resumed after a crash sees exactly the batches it would have seen.
After every epoch the compiled model (weights + optimizer state) is saved to
the run's work folder as a new checkpoint, then `state.json` is replaced to
point at it: a SIGKILL at any instant leaves the previous consistent pair.
Early stopping is decided from the saved history, so it survives resumes too.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
import time

import keras
import numpy as np

from cifar import NUM_CLASSES, artifacts
from cifar.config import RunConfig, resolve_config
from cifar.data import Dataset, limit_per_class, load_cifar10, split_validation
from cifar.environment import describe_environment
from cifar.errors import RunError, TrainingError
from cifar.evaluate import evaluate
from cifar.models import build_model, count_params, describe, get_spec
from cifar.progress import ProgressFile

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
BEST_WEIGHTS = "best.weights.h5"


# ---------------------------------------------------------------- entry points

def start_run(config: RunConfig, run_id: str | None = None, verbose: int = 1) -> str:
    """Train a new run and publish it; returns its run id."""
    run_id = run_id or artifacts.new_run_id(config.model)
    work = artifacts.work_dir(run_id)
    if (work / STATE_FILE).exists() or artifacts.run_dir(run_id).exists():
        raise RunError(f"run {run_id} already exists; resume it with: python -m cifar resume {run_id}")
    work.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(work / CONFIG_FILE, config.to_dict())
    return _train(run_id, config, verbose)


def resume_run(run_id: str, verbose: int = 1) -> str:
    """Continue an interrupted run from its last completed epoch."""
    work = artifacts.work_dir(run_id)
    if artifacts.run_dir(run_id).exists():
        raise RunError(f"run {run_id} is already complete; nothing to resume")
    if not (work / CONFIG_FILE).exists():
        raise RunError(f"no interrupted run {run_id} under {work.parent}; "
                       "list runs in progress with: python -m cifar runs --all")
    config = RunConfig.from_dict(artifacts.read_json(work / CONFIG_FILE))
    return _train(run_id, config, verbose)


def interrupted_runs() -> list[dict]:
    """Runs with a work folder but no published result (crashed or running)."""
    base = artifacts.root() / "work"
    found = []
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        state = _read_state(path)
        progress = artifacts.read_json(path / "progress.json") if (path / "progress.json").exists() else {}
        found.append({"run_id": path.name, "completed_epochs": state.get("completed_epochs", 0),
                      "status": progress.get("status", "unknown"), "updated_at": progress.get("updated_at")})
    return found


# ---------------------------------------------------------------- the run

def _train(run_id: str, config: RunConfig, verbose: int) -> str:
    work = artifacts.work_dir(run_id)
    keras.config.set_dtype_policy(config.precision)
    keras.utils.set_random_seed(config.seed)
    started = time.time()

    data = load_cifar10(config.data)
    x_train, y_train = limit_per_class(data.x_train, data.y_train, config.limit_per_class, config.seed)
    x_train, y_train, x_val, y_val = split_validation(x_train, y_train, config.val_size, config.seed)
    if config.early_stopping_patience and len(x_val) == 0:
        raise TrainingError("early stopping needs a validation set: use --val-size > 0 or --patience 0")
    validation = (x_val, _one_hot(y_val)) if len(x_val) else None

    state = _read_state(work)
    if state and state.get("data_fingerprint") != data.fingerprint:
        raise RunError(f"run {run_id} was trained on data {state.get('data_fingerprint')} but "
                       f"'{config.data}' is {data.fingerprint}; resume it with the same data")
    model, source = _model_for(config, state, work, x_train)
    history = state.get("history", [])
    # Wall time of earlier attempts of this run (0 unless resumed); read once.
    earlier_seconds = state.get("elapsed_seconds", 0.0)
    progress = ProgressFile(artifacts.progress_path(run_id), run_id, config, len(x_train))
    progress.update(status="running", epoch=len(history))

    train_seconds = state.get("train_seconds", 0.0)
    y_train_hot = _one_hot(y_train)
    for epoch in range(len(history), config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(x_train))
        progress.epoch_started(epoch)
        start = time.perf_counter()
        fit = model.fit(x_train[order], y_train_hot[order], batch_size=config.batch_size,
                        epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                        validation_data=validation, verbose=verbose,
                        callbacks=[progress.callback(), keras.callbacks.TerminateOnNaN()])
        seconds = time.perf_counter() - start
        logs = {k: float(v[-1]) for k, v in fit.history.items()}
        if not math.isfinite(logs.get("loss", float("nan"))):
            progress.update(status="failed", error="loss became NaN")
            raise TrainingError(f"run {run_id}: the loss became NaN in epoch {epoch + 1}. "
                                "Lower the learning rate (--lr) or use --precision float32")
        train_seconds += progress.last_train_seconds or seconds
        history.append({"epoch": epoch + 1, **logs, "learning_rate": _current_lr(model),
                        "optimizer_steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
                        "seconds": seconds, "train_images_per_s": len(x_train) / max(progress.last_train_seconds or seconds, 1e-9),
                        "elapsed_seconds": time.time() - started + earlier_seconds})
        best_epoch = _best_epoch(history)
        if best_epoch == epoch + 1 and config.early_stopping_patience:
            _save_weights_atomic(model, work / BEST_WEIGHTS)
        _checkpoint(model, work, epoch + 1, history, data.fingerprint, train_seconds, source)
        if config.early_stopping_patience and epoch + 1 - best_epoch >= config.early_stopping_patience:
            break

    progress.update(status="evaluating", epoch=len(history))
    best_epoch = _best_epoch(history)
    if config.early_stopping_patience and (work / BEST_WEIGHTS).exists():
        model.load_weights(work / BEST_WEIGHTS)
    final_model = _inference_copy(model, config)
    result = evaluate(final_model, data.x_test, data.y_test, seed=config.seed)
    metadata = _metadata(run_id, config, data, final_model, history, best_epoch, source,
                         train_seconds, len(x_train), len(x_val), time.time() - started + earlier_seconds)
    _publish(run_id, final_model, history, result, metadata)
    progress.update(status="completed", epoch=len(history))
    shutil.rmtree(work, ignore_errors=True)
    return run_id


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def _model_for(config: RunConfig, state: dict, work, x_train: np.ndarray) -> tuple[keras.Model, dict]:
    """The model to train: restored from the last checkpoint, or freshly built."""
    if state:
        path = work / state["checkpoint"]
        try:
            model = keras.saving.load_model(path, safe_mode=True)
        except Exception as exc:
            raise RunError(f"checkpoint {path} cannot be loaded ({exc}); start a new run") from exc
        return model, state.get("source", {})
    spec = get_spec(config.model)
    source = {"weights": config.weights}
    if config.init_from_run:
        model = build_model(config.model, input_size=config.input_size, weights="none",
                            augment=config.augment, seed=config.seed)
        source = _copy_weights_from_run(model, config.init_from_run)
    else:
        model = build_model(config.model, input_size=config.input_size, weights=config.weights,
                            augment=config.augment, seed=config.seed)
        if spec.prepare:
            spec.prepare(model, x_train)
    if not spec.is_transfer:
        source = {"weights": None}
    compile_for_training(model, config, steps_per_epoch=math.ceil(len(x_train) / config.batch_size))
    return model, source


def compile_for_training(model: keras.Model, config: RunConfig, steps_per_epoch: int | None = None) -> None:
    """The optimizer, loss and metrics of a run (one-hot labels, so smoothing works)."""
    model.compile(optimizer=_optimizer(config, steps_per_epoch),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=["accuracy"])


def _copy_weights_from_run(model: keras.Model, run_id: str) -> dict:
    info = artifacts.get_run(run_id)
    donor = keras.saving.load_model(artifacts.model_path(run_id), safe_mode=True, compile=False)
    try:
        model.set_weights(donor.get_weights())
    except ValueError as exc:
        raise RunError(f"run {run_id} ({info.model}) does not match {model.name}'s architecture "
                       f"(same --input-size needed): {exc}") from exc
    return {"weights": info.metadata.get("pretrained_weights"), "init_from_run": run_id}


def _optimizer(config: RunConfig, steps_per_epoch: int | None):
    recipe = get_spec(config.model).recipe
    learning_rate = config.learning_rate
    if recipe.warmup_fraction and steps_per_epoch:
        total = steps_per_epoch * config.epochs
        warmup = max(1, int(total * recipe.warmup_fraction))
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate * 0.2, decay_steps=max(1, total - warmup),
            warmup_target=config.learning_rate, warmup_steps=warmup)
    options = {"weight_decay": recipe.weight_decay}
    if recipe.ema_momentum is not None:
        options.update(use_ema=True, ema_momentum=recipe.ema_momentum, ema_overwrite_frequency=5)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate, **options)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, **options)
    return keras.optimizers.SGD(learning_rate, momentum=recipe.momentum, nesterov=True, **options)


def _current_lr(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def _best_epoch(history: list[dict]) -> int:
    key = "val_accuracy" if history and "val_accuracy" in history[0] else "accuracy"
    return int(max(history, key=lambda row: row[key])["epoch"]) if history else 0


def _read_state(work) -> dict:
    path = work / STATE_FILE
    return artifacts.read_json(path) if path.exists() else {}


def _save_weights_atomic(model, path) -> None:
    tmp = path.with_name("tmp-" + path.name)
    model.save_weights(tmp)
    os.replace(tmp, path)


def _checkpoint(model, work, epochs_done, history, fingerprint, train_seconds, source) -> None:
    name = f"checkpoint-{epochs_done:04d}.keras"
    model.save(work / name)
    old = _read_state(work).get("checkpoint")
    artifacts.write_json_atomic(work / STATE_FILE, {
        "completed_epochs": epochs_done, "checkpoint": name, "history": history,
        "data_fingerprint": fingerprint, "train_seconds": train_seconds, "source": source,
        "elapsed_seconds": history[-1]["elapsed_seconds"]})
    if old and old != name:
        (work / old).unlink(missing_ok=True)


def _inference_copy(model: keras.Model, config: RunConfig) -> keras.Model:
    """The trained weights in a fresh float32, uncompiled model: what we ship.

    Dropping the optimizer keeps model files small; float32 keeps them
    loadable and exact on any machine."""
    keras.config.set_dtype_policy("float32")
    clean = build_model(config.model, input_size=config.input_size, weights="none",
                        augment=config.augment)
    clean.set_weights(model.get_weights())
    return clean


def _metadata(run_id, config, data: Dataset, model, history, best_epoch, source,
              train_seconds, n_train, n_val, wall_seconds) -> dict:
    spec = get_spec(config.model)
    weights = source.get("weights")
    speeds = [row["train_images_per_s"] for row in history[1:]] or [history[0]["train_images_per_s"]]
    return {
        "run_id": run_id, "model": config.model, "config": config.to_dict(),
        "study_section": spec.study_section, "recipe_summary": spec.recipe.summary,
        "created_at": run_id.split("-")[0],
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "is_transfer": spec.is_transfer,
        "pretrained_weights": weights,
        "imagenet_weights": weights == "imagenet" if spec.is_transfer else None,
        "init_from_run": source.get("init_from_run"),
        "params": count_params(model), **describe(model),
        "augmentation": config.augment, "optimizer": config.optimizer,
        "epochs_planned": config.epochs, "epochs_run": len(history), "best_epoch": best_epoch,
        "stopped_early": len(history) < config.epochs,
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        "train_images_per_s": float(np.median(speeds)),
        "data": {"source": config.data, "fingerprint": data.fingerprint, "description": data.description,
                 "n_train": n_train, "n_val": n_val, "n_test": len(data.y_test)},
        "environment": describe_environment(),
    }


def _publish(run_id, model, history, result, metadata) -> None:
    import pandas as pd
    staging = artifacts.stage_run(run_id)
    try:
        staging.write_table("history", pd.DataFrame(history))
        staging.write_table("metrics", result.metrics)
        staging.write_table("per_class", result.per_class)
        staging.write_table("confusion", result.confusion)
        staging.write_table("predictions", result.predictions)
        staging.write_table("gallery", result.gallery)
        model.save(staging.model_path)
        staging.write_metadata(metadata)
        staging.publish()
    except BaseException:
        staging.discard()
        raise


def train(model: str, run_id: str | None = None, verbose: int = 1, **overrides) -> str:
    """Convenience: resolve a config from a model name and overrides, then train."""
    return start_run(resolve_config(model, **overrides), run_id=run_id, verbose=verbose)
