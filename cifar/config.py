"""Training settings: `RunConfig` is their only list, and resolution lives here.

Each field of `RunConfig` is one training setting with its default and its
help text; `add_config_flags` turns the fields into the flags of `train` and
`jobs submit`, and a model's recipe (cifar/models.py) is a small dict of
overrides of the defaults. `resolve_config` builds a run's config in order:

1. RunConfig's defaults, then the model's recipe;
2. a base config, if any (`train --config`: a saved run's complete config,
   or part of one);
3. the user's overrides (flags, a job request): every value that is not None;
4. derived values: a subset's validation share, an absolute data path, 0 for
   "off", and fine-tuning's donor run with its input size and weights;
5. checks of every type, range and combination, each failure one clear line.

The resolved config is saved with the run (metadata.json, the optimizer's
full recipe included) and in its work folder, so a resumed run continues with
the same settings and `python -m cifar train --config RUN_ID` trains it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from cifar.errors import CifarError, RunError

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
OPTIMIZERS = ("adam", "rmsprop", "sgd_nesterov")


def setting(default, help: str, *, flags: tuple[str, ...] | None = None,
            choices: tuple[str, ...] | None = None, off=None):
    """A RunConfig field: `flags` default to --the-field-name; a user value equal
    to `off` means None (e.g. --patience 0 turns early stopping off)."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices, "off": off})


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one training run. Defaults are the study's home-made CNN recipe."""

    model: str = field(metadata={"help": "a registry name (see: python -m cifar models)", "flags": (),
                                 "choices": None, "off": None})
    data: str = setting("keras", "'keras' (download, the default) or a local CIFAR-10 copy: "
                        "cifar-10-python.tar.gz, cifar-10-batches-py/, or a class-folder tree/archive "
                        "(stored absolute)")
    epochs: int = setting(15, "epochs to train (at most, with early stopping)")
    batch_size: int = setting(64, "images per training step")
    learning_rate: float = setting(1e-3, "learning rate (the peak, with --warmup-fraction)",
                                   flags=("--lr", "--learning-rate"))
    optimizer: str = setting("adam", "the optimizer", choices=OPTIMIZERS)
    momentum: float = setting(0.9, "Nesterov momentum (sgd_nesterov only)")
    weight_decay: float | None = setting(None, "decoupled weight decay, scaled by the current learning "
                                         "rate (0 turns it off)", off=0)
    warmup_fraction: float = setting(0.0, "share of the steps spent warming the learning rate up from 0.2x, "
                                     "before a linear decay to 0.07x (0: a constant learning rate)")
    ema_momentum: float | None = setting(None, "airbench-style lookahead toward an average of the weights, "
                                         "this momentum per step (sgd_nesterov only; 0 turns it off)", off=0)
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy loss")
    augment: bool = setting(False, "the recipe's augmentation on or off (study models: random rotation/flip/"
                            "shift; fast_cnn: alternating flips and 2-pixel shifts)")
    early_stopping_patience: int | None = setting(
        None, "early stopping on validation accuracy after this many epochs without progress, best weights "
        "restored (0 turns it off)", flags=("--patience",), off=0)
    limit_per_class: int | None = setting(None, "training images kept per class (default: all)")
    val_size: int = setting(5000, "validation images held out of the training set, stratified (default: the "
                            "recipe's, 5000 for the study models, 0 for fast_cnn; with --limit-per-class, a "
                            "tenth of the images kept)")
    seed: int = setting(0, "seed of the initial weights, the data order, the split and augmentation")
    precision: str = setting("float32", "the Keras dtype policy", choices=PRECISIONS)
    input_size: int | None = setting(None, "transfer models: images are resized to this inside the model")
    weights: str | None = setting(None, "transfer models: imagenet | none | path to a no-top .h5 file")
    init_from_run: str | None = setting(None, "start from this run's weights (fine-tuning's default: the "
                                        "newest run of the model it fine-tunes)", flags=("--from-run",))
    note: str = setting("", "free text stored with the run")
    # Reporting only: test accuracy after every epoch, for time-to-accuracy
    # curves. Nothing (early stopping, best epoch) ever reads it.
    track_test: bool = setting(False, "also measure test accuracy after every epoch, for time-to-accuracy "
                               "curves (reporting only: never used to pick or stop anything)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> "RunConfig":
        """A stored config, as saved. Settings it lacks (runs saved before they
        existed trained with the recipe's values) come from the model's recipe."""
        _check_known(payload)
        if not isinstance(payload.get("model"), str) or not payload["model"]:
            raise CifarError("a config needs its 'model' (a registry name)")
        values = dict(payload)
        if set(FIELDS) - set(values):
            values = {**recipe_values(values["model"]), **values}
        config = cls(**_typed(values))
        validate(config)
        return config


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_TYPES = typing.get_type_hints(RunConfig)


def flag_of(name: str) -> str:
    """The flag users know a setting by ('--lr' for learning_rate)."""
    flags = FIELDS[name].metadata["flags"]
    if flags == ():
        return name
    return flags[0] if flags else "--" + name.replace("_", "-")


def recipe_values(model: str) -> dict:
    """RunConfig's defaults with `model`'s recipe applied (no user settings)."""
    from cifar.models import get_spec  # imports keras: keep it out of CLI start-up
    defaults = {name: f.default for name, f in FIELDS.items()}
    return {**defaults, **get_spec(model).recipe, "model": model}


# ---------------------------------------------------------------- resolution

def resolve_config(model: str | None, overrides: dict | None = None, *, base: dict | None = None,
                   **more) -> RunConfig:
    """The config of a new run of `model` (see the module docstring for the order).

    `overrides` (or keyword arguments) are the user's settings, None meaning
    "not given"; `base` is a config to start from instead of the bare recipe."""
    base = dict(base or {})
    user = {k: v for k, v in {**(overrides or {}), **more}.items() if v is not None}
    _check_known(base)
    _check_known(user, allow_model=False)
    model = _pick_model(model, base.pop("model", None))
    from cifar.models import get_spec
    spec = get_spec(model)
    values = _typed({**recipe_values(model), **base, **user})

    for name, f in FIELDS.items():
        if f.metadata["off"] is not None and values[name] == f.metadata["off"]:
            values[name] = None
    limit = values["limit_per_class"]
    if limit and ("val_size" not in user) and ("limit_per_class" in user or "val_size" not in base):
        # A subset keeps the recipe's share, a tenth (5,000 of 50,000): the full
        # 5,000 would swallow a subset of 500 per class whole.
        values["val_size"] = min(spec.recipe.get("val_size", FIELDS["val_size"].default), max(10, limit))
    if not values["data"].strip():
        raise CifarError("--data is empty: give 'keras' (the download) or the path of a CIFAR-10 copy")
    if values["data"] != "keras":
        # Stored absolute, so `resume` and `evaluate --recompute` find it from any directory.
        values["data"] = os.path.abspath(os.path.expanduser(values["data"]))
    if not spec.is_transfer:
        for name in ("input_size", "weights"):
            if values[name] is not None:
                raise CifarError(f"{flag_of(name)} applies only to transfer models, not {model}")
    if spec.init_from or values["init_from_run"]:
        _fill_from_donor(values, spec, user, base)
    config = RunConfig(**values)
    validate(config)
    return config


def config_from_source(source: str) -> tuple[dict, str | None]:
    """`--config`'s settings: (the config dict, the run id it came from or None).

    `source` is a published run's id (its metadata.json's config), a JSON
    object, or a JSON file holding a config or a run's whole metadata.json."""
    from cifar import artifacts
    text = source.strip()
    if text.startswith("{"):
        try:
            return json.loads(text), None
        except (ValueError, RecursionError) as exc:
            raise CifarError(f"--config is not valid JSON ({exc})") from None
    try:
        run_id = artifacts.check_run_id(text)
    except RunError:
        run_id = None
    if run_id:
        return dict(artifacts.get_run(run_id).metadata.get("config") or {}), run_id
    path = Path(text).expanduser()
    if not path.is_file():
        raise CifarError(f"--config takes a run id, a JSON object or a JSON file; '{source}' is none of these")
    try:
        payload = artifacts.read_json(path)
    except (OSError, ValueError, RecursionError) as exc:
        raise CifarError(f"--config file {path} cannot be read as JSON ({exc})") from None
    if isinstance(payload, dict) and isinstance(payload.get("config"), dict) and "run_id" in payload:
        return dict(payload["config"]), payload["run_id"]  # a run's metadata.json
    return payload, None


def _pick_model(given: str | None, from_base) -> str:
    if from_base is not None and not isinstance(from_base, str):
        raise CifarError(f"a config's model must be a registry name (got {from_base!r})")
    if given and from_base and given != from_base:
        raise CifarError(f"the config given is a {from_base} run, not {given}: leave out the model name "
                         "or give the config of a run of that model")
    if not (given or from_base):
        raise CifarError("give a model name (see: python -m cifar models) or --config RUN_ID")
    return given or from_base


def _fill_from_donor(values: dict, spec, user: dict, base: dict) -> None:
    """Fine-tuning (or --from-run) starts from a run's weights: pick the donor run
    now, so a queued job trains what was asked even if newer runs appear, and
    take its input size and weights, which a different value would not fit."""
    from cifar import artifacts
    if values["init_from_run"] is None:
        donors = [r for r in artifacts.list_runs() if r.model == spec.init_from]
        if not donors:
            raise RunError(f"{spec.name} fine-tunes a {spec.init_from} run and there is none yet. "
                           f"Train one first: python -m cifar train {spec.init_from} ... "
                           f"or pass {flag_of('init_from_run')} RUN_ID")
        values["init_from_run"] = donors[-1].run_id
    if "weights" in user:
        raise CifarError(f"{flag_of('weights')} does not apply when starting from a run "
                         f"({flag_of('init_from_run')}): the donor run's weights are kept")
    donor = artifacts.get_run(values["init_from_run"])
    if spec.init_from and donor.model not in (spec.init_from, spec.name):
        raise CifarError(f"{spec.name} starts from a {spec.init_from} run (or another {spec.name} run); "
                         f"{donor.run_id} is a {donor.model} run")
    chosen_now = "init_from_run" in user or not base.get("init_from_run")
    if chosen_now or values["input_size"] is None:
        values["input_size"] = user.get("input_size") or (donor.metadata.get("config") or {}).get("input_size")
    if chosen_now:
        values["weights"] = donor.metadata.get("pretrained_weights")
    if not spec.is_transfer:
        values["input_size"] = values["weights"] = None


def _check_known(values: dict, allow_model: bool = True) -> None:
    if not isinstance(values, dict):
        raise CifarError(f"a config must be a JSON object of settings (got {type(values).__name__})")
    known = set(FIELDS) - (set() if allow_model else {"model"})
    unknown = sorted(set(values) - known)
    if unknown:
        raise CifarError(f"unknown training settings: {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _typed(values: dict) -> dict:
    """Check each value's type (JSON and page input are not argparse-checked);
    whole numbers are accepted where a float is expected."""
    out = {}
    for name, value in values.items():
        kind = _TYPES[name]
        optional = isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)
        base = next(t for t in typing.get_args(kind) if t is not type(None)) if optional else kind
        if value is None and optional:
            out[name] = None
        elif base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, base) and not (base is int and isinstance(value, bool)):
            out[name] = value
        else:
            what = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}[base]
            raise CifarError(f"{flag_of(name)} must be {what}{' or null' if optional else ''} "
                             f"(got {value!r})")
    return out


# Far above any real use, low enough that no library overflows on them.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20
MAX_COUNT = 1 << 31  # images per class, validation images


def validate(config: RunConfig) -> None:
    def bad(name, message):
        raise CifarError(f"{flag_of(name)} {message} (got {getattr(config, name)})")
    for name, kind in _TYPES.items():
        value = getattr(config, name)
        if float in typing.get_args(kind) + (kind,) and value is not None and not math.isfinite(value):
            bad(name, "must be a finite number")
    if not 1 <= config.epochs <= MAX_EPOCHS:
        bad("epochs", f"must be between 1 and {MAX_EPOCHS:,}")
    if not 1 <= config.batch_size <= MAX_BATCH_SIZE:
        bad("batch_size", f"must be between 1 and {MAX_BATCH_SIZE:,}")
    if not config.learning_rate > 0:
        bad("learning_rate", "must be positive")
    for name in ("precision", "optimizer"):
        choices = FIELDS[name].metadata["choices"]
        if getattr(config, name) not in choices:
            bad(name, f"must be one of {', '.join(choices)}")
    if config.limit_per_class is not None and not 1 <= config.limit_per_class <= MAX_COUNT:
        bad("limit_per_class", f"must be between 1 and {MAX_COUNT:,}")
    if not 0 <= config.seed < 2**32:
        bad("seed", f"must be between 0 and {2**32 - 1}")
    if config.early_stopping_patience is not None and not 1 <= config.early_stopping_patience <= MAX_EPOCHS:
        bad("early_stopping_patience", "must be at least 1 epoch, or 0 for no early stopping")
    if not 0 <= config.val_size <= MAX_COUNT:
        bad("val_size", f"must be between 0 and {MAX_COUNT:,}")
    if config.input_size is not None and not 32 <= config.input_size <= 512:
        bad("input_size", "must be between 32 and 512")
    for name in ("label_smoothing", "momentum", "warmup_fraction"):
        if not 0 <= getattr(config, name) < 1:
            bad(name, "must be in [0, 1)")
    if config.weight_decay is not None and config.weight_decay < 0:
        bad("weight_decay", "cannot be negative")
    if config.ema_momentum is not None:
        if not 0 < config.ema_momentum < 1:
            bad("ema_momentum", "must be in (0, 1), or 0 for no lookahead")
        if config.optimizer != "sgd_nesterov":
            raise CifarError("--ema-momentum needs --optimizer sgd_nesterov (the lookahead wraps Nesterov SGD), "
                             f"not {config.optimizer}; --ema-momentum 0 turns it off")


# ---------------------------------------------------------------- command-line flags

def whole_number(text: str) -> int:
    """argparse type: an integer >= 0 (flags of every command use it), below 2**63
    so that no library it reaches (numpy, SQLite) overflows."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'")
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"expected a number below 2**63, got '{text}'")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field (but `model`). Unset flags are None: the recipe's value."""
    for name, f in FIELDS.items():
        if f.metadata["flags"] == ():
            continue
        kind = _TYPES[name]
        base = next(t for t in typing.get_args(kind) if t is not type(None)) \
            if isinstance(kind, types.UnionType) else kind
        options = {"dest": name, "default": None, "help": f.metadata["help"]}
        if base is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = {int: whole_number, float: _number, str: str}[base]
            if f.metadata["choices"]:
                options["choices"] = f.metadata["choices"]
        flags = f.metadata["flags"] or ("--" + name.replace("_", "-"),)
        if base is not bool and not f.metadata["choices"]:
            options["metavar"] = flags[0].lstrip("-").replace("-", "_").upper()
        parser.add_argument(*flags, **options)


def config_overrides(args: argparse.Namespace) -> dict:
    """The settings a user gave on the command line (the flags of add_config_flags)."""
    return {name: getattr(args, name) for name in FIELDS
            if getattr(args, name, None) is not None and name != "model"}
