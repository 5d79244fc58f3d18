"""One frozen config per run: the recipe's defaults with the user's overrides.

The resolved config is saved with the run (metadata.json) and in the run's
work folder, so a resumed run continues with exactly the same settings.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from cifar.errors import CifarError

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
OPTIMIZERS = ("adam", "rmsprop", "sgd_nesterov")


@dataclass(frozen=True)
class RunConfig:
    model: str
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    augment: bool
    early_stopping_patience: int | None
    label_smoothing: float
    input_size: int | None       # transfer models only
    weights: str | None          # transfer models only: imagenet | none | path
    init_from_run: str | None    # fine-tuning: the run whose weights we start from
    data: str = "keras"          # "keras" (download) or a local path
    limit_per_class: int | None = None  # training images kept per class
    val_size: int = 5000         # carved from the training set, stratified
    seed: int = 0
    precision: str = "float32"
    note: str = ""               # free text shown beside the run
    # Reporting only: test accuracy after every epoch, for time-to-accuracy
    # curves. Nothing (early stopping, best epoch) ever reads it.
    track_test: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in names})


def resolve_config(model: str, **overrides) -> RunConfig:
    """Recipe defaults for `model`, replaced by every override that is not None."""
    from cifar.models import get_spec  # imports keras: keep it out of CLI start-up
    spec = get_spec(model)
    recipe = spec.recipe
    values = dict(
        model=model, epochs=recipe.epochs, batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate, optimizer=recipe.optimizer, augment=recipe.augment,
        early_stopping_patience=recipe.early_stopping_patience,
        label_smoothing=recipe.label_smoothing, input_size=recipe.input_size,
        weights=recipe.weights, init_from_run=None, val_size=recipe.val_size,
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("val_size") is None and values.get("limit_per_class"):
        # A subset keeps the recipe's share, a tenth (5,000 of 50,000): the full
        # 5,000 would swallow a subset of 500 per class whole.
        values["val_size"] = min(recipe.val_size, max(10, values["limit_per_class"]))
    if values.get("data") not in (None, "keras"):
        # Stored absolute, so `resume` and `evaluate --recompute` find it from any directory.
        values["data"] = os.path.abspath(os.path.expanduser(values["data"]))
    if values["early_stopping_patience"] == 0:  # --patience 0 turns early stopping off
        values["early_stopping_patience"] = None
    if not spec.is_transfer:
        for key in ("input_size", "weights"):
            if overrides.get(key) is not None:
                raise CifarError(f"--{key.replace('_', '-')} applies only to transfer models, not {model}")
        values["input_size"] = values["weights"] = None
    config = RunConfig(**values)
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    def bad(message):
        raise CifarError(message)
    if config.epochs < 1:
        bad(f"--epochs must be at least 1 (got {config.epochs})")
    if config.batch_size < 1:
        bad(f"--batch-size must be at least 1 (got {config.batch_size})")
    if not config.learning_rate > 0:
        bad(f"--lr must be positive (got {config.learning_rate})")
    if config.precision not in PRECISIONS:
        bad(f"--precision must be one of {', '.join(PRECISIONS)} (got {config.precision})")
    if config.optimizer not in OPTIMIZERS:
        bad(f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {config.optimizer})")
    if config.limit_per_class is not None and config.limit_per_class < 1:
        bad(f"--limit-per-class must be at least 1 (got {config.limit_per_class})")
    if not 0 <= config.seed < 2**32:
        bad(f"--seed must be between 0 and {2**32 - 1} (got {config.seed})")
    if config.early_stopping_patience is not None and config.early_stopping_patience < 1:
        bad(f"early-stopping patience must be at least 1 epoch (got {config.early_stopping_patience})")
    if config.val_size < 0:
        bad(f"--val-size cannot be negative (got {config.val_size})")
    if config.input_size is not None and not 32 <= config.input_size <= 512:
        bad(f"--input-size must be between 32 and 512 (got {config.input_size})")
    if not 0 <= config.label_smoothing < 1:
        bad(f"label smoothing must be in [0, 1) (got {config.label_smoothing})")
