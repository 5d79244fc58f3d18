"""Training: one resumable run from a frozen config to a published run folder.

Each epoch is one `model.fit` call on a permutation seeded by (seed, epoch),
so a run resumed after a crash sees its batches in the same order (random
augmentation and dropout draws are not checkpointed, so it is not bit-exact).
After every epoch the compiled model (weights + optimizer state) is saved to
the run's work folder as a new checkpoint, then `state.json` is replaced to
point at it: a SIGKILL at any instant leaves the previous consistent pair.
Early stopping is decided from the saved history, so it survives resumes too.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from cifar import NUM_CLASSES, artifacts
from cifar.artifacts import CONFIG_FILE, STATE_FILE  # the work folder's files, named where the layout lives
from cifar.config import RunConfig
from cifar.data import Dataset, limit_per_class, load_cifar10, split_validation
from cifar.environment import describe_environment
from cifar.errors import RunError, TrainingError
from cifar.evaluate import Evaluation, evaluate
from cifar.fast_cnn import WarmupLinearDecay, single_view
from cifar.models import allow_jit_on_jax, build_model, count_params, describe, get_spec
from cifar.progress import ProgressFile, read_progress


# ---------------------------------------------------------------- entry points

def start_run(config: RunConfig, run_id: str | None = None, verbose: int = 1) -> str:
    """Train a new run and publish it; returns its run id."""
    run_id = run_id or artifacts.new_run_id(config.model)
    work = artifacts.work_dir(run_id)
    if artifacts.run_dir(run_id).exists():
        raise RunError(f"run {run_id} is already published; leave --run-id out to train a new run")
    if (work / STATE_FILE).exists():
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
    try:
        config = RunConfig.from_dict(artifacts.read_json(work / CONFIG_FILE))
    except (OSError, ValueError, TypeError) as exc:
        raise RunError(f"the config of run {run_id} is damaged ({exc}); start a new run") from exc
    return _train(run_id, config, verbose)


# ---------------------------------------------------------------- the run

def _train(run_id: str, config: RunConfig, verbose: int) -> str:
    work = artifacts.work_dir(run_id)
    with _exclusive(work, run_id):
        try:
            return _train_locked(run_id, config, verbose, work)
        except BaseException as exc:
            progress = read_progress(artifacts.progress_path(run_id))
            if progress and progress.get("status") not in ("failed", "completed"):
                artifacts.write_json_atomic(artifacts.progress_path(run_id), {
                    **progress, "status": "failed", "error": str(exc)[:300] or exc.__class__.__name__,
                    "updated_at": time.time()})
            raise


@contextlib.contextmanager
def _exclusive(work, run_id: str):
    """One process per run: a second `resume` of a live run is refused."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / artifacts.LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"run {run_id} is being trained by another process right now") from None
        yield


def _train_locked(run_id: str, config: RunConfig, verbose: int, work) -> str:
    keras.config.set_dtype_policy(config.precision)
    keras.utils.set_random_seed(config.seed)
    started = time.time()
    environment = describe_environment()  # now: the code that trains, not the code at the end

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
    progress.epoch_seconds = [row["seconds"] for row in history]
    progress.update(status="running", epoch=len(history))

    train_seconds = state.get("train_seconds", 0.0)
    y_train_hot = _one_hot(y_train)
    epoch_augment = get_spec(config.model).epoch_augment if config.augment else None
    for epoch in range(len(history), config.epochs):
        if _early_stop(history, config):  # also after a resume of a run that had stopped
            break
        order = np.random.default_rng([config.seed, epoch]).permutation(len(x_train))
        progress.epoch_started(epoch)
        start = time.perf_counter()
        images = epoch_augment(x_train, epoch, config.seed) if epoch_augment else x_train
        augment_seconds = time.perf_counter() - start  # part of training time, like airbench's
        fit = model.fit(images[order], y_train_hot[order], batch_size=config.batch_size,
                        epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                        validation_data=validation, verbose=verbose, callbacks=[progress.callback()])
        seconds = time.perf_counter() - start
        progress.epoch_seconds.append(seconds)
        logs = {k: float(v[-1]) for k, v in fit.history.items()}
        if not math.isfinite(logs.get("loss", float("nan"))):
            progress.update(status="failed", error="loss became NaN")
            raise TrainingError(f"run {run_id}: the loss became NaN in epoch {epoch + 1}. "
                                "Lower the learning rate (--lr) or use --precision float32")
        train_time = progress.last_train_seconds + augment_seconds if progress.last_train_seconds else seconds
        train_seconds += train_time
        row = {"epoch": epoch + 1, **logs, "learning_rate": _current_lr(model),
               "optimizer_steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
               "seconds": seconds, "train_images_per_s": len(x_train) / max(train_time, 1e-9),
               "train_seconds_total": train_seconds}
        if config.track_test:
            row.update(_test_accuracy(model, data, config.batch_size))
        history.append({**row, "elapsed_seconds": time.time() - started + earlier_seconds})
        best = None
        if config.early_stopping_patience and _best_epoch(history) == epoch + 1:
            best = artifacts.best_weights_name(epoch + 1)
            model.save_weights(work / best)
        _checkpoint(model, work, epoch + 1, history, data.fingerprint, train_seconds, source, best)

    progress.update(status="evaluating", epoch=len(history))
    best_weights = _read_state(work).get("best_weights")
    if config.early_stopping_patience and best_weights:
        model.load_weights(work / best_weights)
    final_model = _inference_copy(model, config)
    result = evaluate(final_model, data.x_test, data.y_test, seed=config.seed, x_val=x_val, y_val=y_val)
    metadata = run_metadata(run_id, config, history=history, source=source, environment=environment,
                            network={"params": count_params(final_model), **describe(final_model)},
                            data={"source": config.data, "fingerprint": data.fingerprint,
                                  "description": data.description, "n_train": len(x_train),
                                  "n_val": len(x_val), "n_test": len(data.y_test)},
                            train_seconds=train_seconds, wall_seconds=time.time() - started + earlier_seconds)
    publish_run(run_id, history, result, metadata, final_model.save)
    progress.update(status="completed", epoch=len(history))
    shutil.rmtree(work, ignore_errors=True)
    return run_id


def _test_accuracy(model: keras.Model, data: Dataset, batch_size: int) -> dict:
    """Test accuracy of the weights as they are now (`--track-test`), from a
    single view of each image: without fast_cnn's test-time augmentation,
    which would cost six forward passes. Its time counts in elapsed_seconds
    but not in train_seconds_total (airbench times training the same way)."""
    start = time.perf_counter()
    with single_view(model):
        probabilities = model.predict(data.x_test, batch_size=batch_size, verbose=0)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == data.y_test))
    return {"test_accuracy": accuracy, "test_seconds": time.perf_counter() - start}


def _early_stop(history: list[dict], config: RunConfig) -> bool:
    patience = config.early_stopping_patience
    return bool(patience and history and len(history) - _best_epoch(history) >= patience)


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def _model_for(config: RunConfig, state: dict, work, x_train: np.ndarray) -> tuple[keras.Model, dict]:
    """The model to train: restored from the last checkpoint, or freshly built."""
    if state:
        path = work / state["checkpoint"]
        try:
            with warnings.catch_warnings():
                # A checkpoint saved jitted on JAX is recompiled before allow_jit_on_jax can mark
                # its fresh augmentation layers, so Keras warns that it drops jit: we restore it.
                warnings.filterwarnings("ignore", message="Model doesn't support `jit_compile=True`")
                model = keras.saving.load_model(path, safe_mode=True)
        except Exception as exc:
            raise RunError(f"checkpoint {path} cannot be loaded ({exc}); start a new run") from exc
        _check_same_network(model, config, work)
        allow_jit_on_jax(model)
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
        source["weights"] = None
    compile_for_training(model, config, steps_per_epoch=math.ceil(len(x_train) / config.batch_size))
    return model, source


def _layer_signature(model: keras.Model) -> list[tuple]:
    return [(layer.__class__.__name__, tuple(tuple(w.shape) for w in layer.weights)) for layer in model.layers]


def _check_same_network(checkpoint: keras.Model, config: RunConfig, work) -> None:
    """Refuse to resume a checkpoint whose network the current code no longer
    builds: e.g. a fast_cnn saved with augmentation layers inside it, by code
    that now augments the data per epoch, would be augmented twice. Costs one
    extra model build per resume (seconds, even for ResNet50 at 224)."""
    current = build_model(config.model, input_size=config.input_size, weights="none", augment=config.augment)
    old, new = _layer_signature(checkpoint), _layer_signature(current)
    if old != new:
        first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))

        def describe(signature):
            if first >= len(signature):
                return "nothing"
            name, shapes = signature[first]
            return f"{name} with weights {list(shapes)}"
        raise RunError(f"run {work.name} was checkpointed by another version of {config.model}: its layer "
                       f"{first + 1} is {describe(old)} in the checkpoint, {describe(new)} in the current "
                       f"code. It cannot be resumed: start a new run (python -m cifar train {config.model} "
                       f"...) and delete {work}")


def compile_for_training(model: keras.Model, config: RunConfig, steps_per_epoch: int | None = None) -> None:
    """The optimizer, loss and metrics of a run (one-hot labels, so smoothing works)."""
    model.compile(optimizer=_optimizer(config, steps_per_epoch),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=["accuracy"])


def _copy_weights_from_run(model: keras.Model, run_id: str) -> dict:
    info = artifacts.get_run(run_id)
    from cifar.predict import load_model_from_path  # wraps a broken file in RunError
    donor = load_model_from_path(artifacts.model_path(run_id))
    try:
        model.set_weights(donor.get_weights())
    except ValueError as exc:
        raise RunError(f"run {run_id} ({info.model}) does not match {model.name}'s architecture "
                       f"(same --input-size needed): {exc}") from exc
    return {"weights": info.metadata.get("pretrained_weights"), "init_from_run": run_id}


def _optimizer(config: RunConfig, steps_per_epoch: int | None):
    """The run's optimizer, from its config alone (saved with the run, so a
    later change of a recipe never changes how an existing run resumes)."""
    learning_rate = config.learning_rate
    if config.warmup_fraction and steps_per_epoch:
        total = steps_per_epoch * config.epochs
        learning_rate = WarmupLinearDecay(config.learning_rate, total, config.warmup_fraction)
    options = {"weight_decay": config.weight_decay}
    if config.ema_momentum is not None:
        from cifar.fast_cnn import LookaheadSGD
        total = (steps_per_epoch or 1) * config.epochs
        return LookaheadSGD(total_steps=total, base=config.ema_momentum, learning_rate=learning_rate,
                            momentum=config.momentum, nesterov=True, **options)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate, **options)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, **options)
    return keras.optimizers.SGD(learning_rate, momentum=config.momentum, nesterov=True, **options)


def _current_lr(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def _best_epoch(history: list[dict]) -> int:
    key = "val_accuracy" if history and "val_accuracy" in history[0] else "accuracy"
    return int(max(history, key=lambda row: row[key])["epoch"]) if history else 0


# What _checkpoint writes to state.json and resuming relies on; the optional
# keys came later, so older work folders may lack them (read with defaults).
_STATE_TYPES = {"completed_epochs": int, "checkpoint": str, "history": list, "data_fingerprint": str}
_OPTIONAL_STATE_TYPES = {"train_seconds": (int, float), "elapsed_seconds": (int, float), "source": dict,
                         "best_weights": (str, type(None))}


def _state_problems(state) -> list[str]:
    if not isinstance(state, dict):
        return ["not an object"]
    kinds = _STATE_TYPES | {key: kind for key, kind in _OPTIONAL_STATE_TYPES.items() if key in state}
    problems = [key for key, kind in kinds.items()
                if isinstance(state.get(key), bool) or not isinstance(state.get(key), kind)]
    if "history" not in problems and not all(isinstance(row, dict) and isinstance(row.get("seconds"), (int, float))
                                             for row in state["history"]):
        problems.append("history rows")
    for key in ("checkpoint", "best_weights"):  # files of the work folder, never paths out of it
        if key not in problems and state.get(key) and Path(state[key]).name != state[key]:
            problems.append(key)
    return problems


def _read_state(work) -> dict:
    """The work folder's state.json, {} before the first checkpoint; RunError
    when it is unreadable or not what _checkpoint writes."""
    path = work / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = artifacts.read_json(path)
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} is damaged ({exc.__class__.__name__}); start a new run") from exc
    problems = _state_problems(state)
    if problems:
        raise RunError(f"{path} is damaged ({', '.join(problems)} not as written); start a new run")
    return state


def _checkpoint(model, work, epochs_done, history, fingerprint, train_seconds, source, best) -> None:
    """Save the model, then switch state.json to it in one atomic replace.

    Files are only deleted after the switch, so a SIGKILL anywhere leaves a
    consistent (checkpoint, best weights, history) triple."""
    name = artifacts.checkpoint_name(epochs_done)
    model.save(work / name)
    best = best or _read_state(work).get("best_weights")
    artifacts.write_json_atomic(work / STATE_FILE, {
        "completed_epochs": epochs_done, "checkpoint": name, "best_weights": best, "history": history,
        "data_fingerprint": fingerprint, "train_seconds": train_seconds, "source": source,
        "elapsed_seconds": history[-1]["elapsed_seconds"]})
    keep = {name, best}
    for path in artifacts.saved_weight_files(work):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def _inference_copy(model: keras.Model, config: RunConfig) -> keras.Model:
    """The trained weights in a fresh float32, uncompiled model: what we ship.

    Dropping the optimizer keeps model files small; float32 keeps them
    loadable and exact on any machine."""
    keras.config.set_dtype_policy("float32")
    clean = build_model(config.model, input_size=config.input_size, weights="none",
                        augment=config.augment)
    clean.set_weights(model.get_weights())
    return clean


def run_metadata(run_id: str, config: RunConfig, *, history: list[dict], source: dict, environment: dict,
                 network: dict, data: dict, train_seconds: float, wall_seconds: float) -> dict:
    """metadata.json of a finished run (docs/ARTIFACTS.md). `network`: the shipped
    model's `count_params` as "params" and its `describe` facts; `data`: source,
    fingerprint, description and the train/validation/test sizes."""
    spec = get_spec(config.model)
    weights = source.get("weights")
    speeds = [row["train_images_per_s"] for row in history[1:]] or [history[0]["train_images_per_s"]]
    return {
        "run_id": run_id, "model": config.model, "config": config.to_dict(),
        "study_section": spec.study_section, "recipe_summary": spec.summary,
        "created_at": artifacts.parse_run_id(run_id).created_stamp,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "is_transfer": spec.is_transfer,
        "pretrained_weights": weights,
        # A local no-top file is the offline route to the same ImageNet weights.
        "imagenet_weights": weights not in (None, "none") if spec.is_transfer else None,
        "init_from_run": source.get("init_from_run"),
        **network,
        "augmentation": config.augment, "optimizer": config.optimizer,
        "epochs_planned": config.epochs, "recipe_epochs": spec.defaults.epochs,
        "epochs_run": len(history), "best_epoch": _best_epoch(history),
        "stopped_early": len(history) < config.epochs,
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        "train_images_per_s": float(np.median(speeds)),
        "data": data,
        "environment": environment,
    }


def publish_run(run_id: str, history, result: Evaluation, metadata: dict,
                save_model: Callable[[Path], object]) -> None:
    """Write every file of a finished run out of sight, then make it visible in
    one step; `save_model(path)` writes model.keras (the shipped model's `save`)."""
    import pandas as pd
    staging = artifacts.stage_run(run_id)
    try:
        staging.write_table("history", pd.DataFrame(history))
        staging.write_table("metrics", result.metrics)
        staging.write_table("per_class", result.per_class)
        staging.write_table("confusion", result.confusion)
        staging.write_table("predictions", result.predictions)
        staging.write_table("gallery", result.gallery)
        if result.val_predictions is not None:
            staging.write_table("val_predictions", result.val_predictions)
        save_model(staging.model_path)
        staging.write_metadata(metadata)
        staging.publish()
    except BaseException:
        staging.discard()
        raise

