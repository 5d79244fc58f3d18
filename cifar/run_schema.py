"""The documented schema of a run (docs/ARTIFACTS.md), as checks.

`cifar.artifacts` calls these when it reads a run, so that a run whose
metadata or tables do not match is skipped with a reason instead of taking
a page or a command down. Every check is a pure function that returns the
problems it found as short phrases a person can act on (an empty list:
the input matches); none of them raises on any input.

- `check_metadata(dict)`: required keys and their types, and the types of
  the optional ones that are present.
- `check_table(name, frame)`: required columns and their types, row count,
  and class indices within 0..9.
- `check_footer(name, arrow_schema, rows)`: the same columns, types and row
  count from a parquet file's footer alone, which is cheap enough to check
  every table of every run when the runs are listed.

A table is registered in TABLE_SCHEMAS. An optional table (`required=False`,
added by a later version of training) is checked only when a run has it;
a table with no schema registered is not checked at all.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from cifar import CLASS_NAMES, NUM_CLASSES

# ---------------------------------------------------------------- value kinds

# kind -> (description for messages, test on a Python value)
_VALUE_KINDS = {
    "int": ("a whole number", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    "number": ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("text", lambda v: isinstance(v, str)),
    "dict": ("an object", lambda v: isinstance(v, dict)),
    "list": ("a list", lambda v: isinstance(v, list)),
}


@dataclass(frozen=True)
class Key:
    """One metadata key: its kind, whether it may be null, and for objects
    the keys inside it."""

    kind: str
    nullable: bool = False
    required: bool = True
    inside: dict[str, Key] = field(default_factory=dict)


def _optional(kind: str, **inside: Key) -> Key:
    return Key(kind, nullable=True, required=False, inside=inside)


METADATA_SCHEMA: dict[str, Key] = {
    "schema_version": Key("int"),
    "run_id": Key("str"),
    "model": Key("str"),
    "config": Key("dict", inside={"model": Key("str"), "note": _optional("str"), "precision": _optional("str"),
                                  "seed": _optional("int"), "data": _optional("str")}),
    "params": Key("dict", inside={"total": Key("int"), "trainable": _optional("int"),
                                  "non_trainable": _optional("int")}),
    "epochs_run": Key("int"),
    "best_epoch": Key("int", nullable=True),
    "train_seconds": Key("number", nullable=True),
    "created_at": Key("str"),
    "data": Key("dict", inside={"source": _optional("str"), "n_train": _optional("int"),
                                "n_val": _optional("int"), "n_test": _optional("int")}),
    "environment": Key("dict", inside={"hardware": _optional("dict", label=_optional("str"),
                                                             gpus=_optional("list")),
                                       "backend": _optional("str"), "versions": _optional("dict")}),
    "layers": _optional("int"),
    "study_section": _optional("str"),
    "recipe_summary": _optional("str"),
    "finished_at": _optional("str"),
    "is_transfer": _optional("bool"),
    "pretrained_weights": _optional("str"),
    "imagenet_weights": _optional("bool"),
    "init_from_run": _optional("str"),
    "batchnorm": _optional("bool"),
    "dropout": _optional("bool"),
    "augmentation": _optional("bool"),
    "optimizer": _optional("str"),
    "epochs_planned": _optional("int"),
    "recipe_epochs": _optional("int"),
    "stopped_early": _optional("bool"),
    "wall_seconds": _optional("number"),
    "train_images_per_s": _optional("number"),
}


def check_metadata(metadata) -> list[str]:
    """What in metadata.json does not match the schema (empty: it matches)."""
    if not isinstance(metadata, dict):
        return ["metadata.json is not an object"]
    return _check_keys(metadata, METADATA_SCHEMA, "")


def _check_keys(values: dict, schema: dict[str, Key], prefix: str) -> list[str]:
    missing = [prefix + name for name, key in schema.items() if key.required and name not in values]
    problems = [f"lacks {', '.join(missing)}"] if missing else []
    for name, key in schema.items():
        if name not in values or (values[name] is None and key.nullable):
            continue
        description, fits = _VALUE_KINDS[key.kind]
        value = values[name]
        if not fits(value):
            problems.append(f"{prefix}{name} is {_shown(value)}, expected {description}")
        elif key.inside:
            problems += _check_keys(value, key.inside, f"{prefix}{name}.")
    return problems


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


# ---------------------------------------------------------------- tables

# Column kinds: int, number (int or float), bool, str, bytes, and class
# (an int that must be a class index, 0..NUM_CLASSES-1).
_COLUMN_KINDS = {"int": "whole numbers", "number": "numbers", "bool": "true/false", "str": "text",
                 "bytes": "bytes", "class": f"class indices 0..{NUM_CLASSES - 1}"}


@dataclass(frozen=True)
class TableSchema:
    """Columns a table must have (and optional ones, checked when present),
    and how many rows it may have (max_rows None: no limit)."""

    name: str
    columns: dict[str, str]
    optional_columns: dict[str, str] = field(default_factory=dict)
    min_rows: int = 1
    max_rows: int | None = None
    required: bool = True


_HISTORY_OPTIONAL = {c: "number" for c in ("val_loss", "val_accuracy", "learning_rate", "optimizer_steps",
                                           "seconds", "train_images_per_s", "train_seconds_total",
                                           "elapsed_seconds", "test_accuracy", "test_seconds")}
_METRICS = ("test_accuracy", "test_loss", "top3_accuracy", "precision_macro", "recall_macro", "f1_macro",
            "precision_weighted", "recall_weighted", "f1_weighted", "eval_images_per_s", "latency_ms")

TABLE_SCHEMAS: dict[str, TableSchema] = {s.name: s for s in (
    TableSchema("history", {"epoch": "int", "loss": "number", "accuracy": "number"}, _HISTORY_OPTIONAL),
    TableSchema("metrics", {"n_test": "int", **{c: "number" for c in _METRICS}}, max_rows=1),
    TableSchema("per_class", {"class_index": "class", "class_name": "str", "precision": "number",
                              "recall": "number", "f1": "number", "support": "int"}),
    TableSchema("confusion", {"true_index": "class", "true_class": "str", "pred_index": "class",
                              "pred_class": "str", "count": "int"}),
    TableSchema("predictions", {"index": "int", "true_index": "class", "pred_index": "class",
                                **{f"prob_{name}": "number" for name in CLASS_NAMES}}),
    TableSchema("gallery", {"index": "int", "true_index": "class", "pred_index": "class", "correct": "bool",
                            "png": "bytes"}, min_rows=0),
)}
# Optional tables: checked whenever a run has them; runs written before they existed stay readable.
TABLE_SCHEMAS["val_predictions"] = TableSchema(  # the validation split's predictions (Compare page)
    "val_predictions", TABLE_SCHEMAS["predictions"].columns, required=False)
TABLE_SCHEMAS["robustness"] = TableSchema(  # python -m cifar evaluate RUN --robustness
    "robustness", {"corruption": "str", "severity": "int", "n_images": "int", "n_correct": "int",
                   "accuracy": "number", "ci_low": "number", "ci_high": "number"},
    {"seconds": "number", "seed": "int", "data_fingerprint": "str"}, required=False)


def register_table(schema: TableSchema) -> None:
    """Add (or replace) a table's schema; a new, optional table passes
    `required=False` so runs written before it existed stay readable."""
    TABLE_SCHEMAS[schema.name] = schema


def check_table(name: str, frame: pd.DataFrame) -> list[str]:
    """What in a table does not match its schema (empty: it matches, or no
    schema is registered under `name`)."""
    if not isinstance(frame, pd.DataFrame):
        return [f"{name} is not a table"]
    problems = check_columns(name, frame) + check_row_count(name, len(frame))
    schema = TABLE_SCHEMAS.get(name)
    if schema and not problems:
        problems += _check_values(name, frame, {**schema.optional_columns, **schema.columns})
    return problems


def check_columns(name: str, frame: pd.DataFrame) -> list[str]:
    """Missing columns and columns of the wrong type, judged by dtype."""
    return _check_types(name, dict(zip(frame.columns, frame.dtypes)), _dtype_fits)


def check_footer(name: str, schema: pa.Schema, rows: int) -> list[str]:
    """check_table's columns, types and row count from a parquet footer."""
    types = dict(zip(schema.names, schema.types))
    return _check_types(name, types, _arrow_type_fits) + check_row_count(name, rows)


def _check_types(name: str, types: dict, fits) -> list[str]:
    schema = TABLE_SCHEMAS.get(name)
    if schema is None:
        return []
    missing = [c for c in schema.columns if c not in types]
    problems = [f"{name} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"] if missing else []
    for column, kind in {**schema.optional_columns, **schema.columns}.items():
        if column in types and not fits(types[column], kind):
            problems.append(f"{name}.{column} holds {types[column]}, expected {_COLUMN_KINDS[kind]}")
    return problems


def check_row_count(name: str, rows: int) -> list[str]:
    schema = TABLE_SCHEMAS.get(name)
    if schema is None:
        return []
    if rows < schema.min_rows:
        return [f"{name} is empty" if rows == 0 else f"{name} has {rows} rows, expected at least {schema.min_rows}"]
    if schema.max_rows is not None and rows > schema.max_rows:
        return [f"{name} has {rows} rows, expected {schema.max_rows}"]
    return []


def _dtype_fits(dtype, kind: str) -> bool:
    if kind in ("int", "class"):
        return pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if kind == "number":
        return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if kind == "bool":
        return pd.api.types.is_bool_dtype(dtype)
    if kind == "str":
        return pd.api.types.is_string_dtype(dtype) or dtype == object
    return dtype == object  # bytes


def _arrow_type_fits(dtype: pa.DataType, kind: str) -> bool:
    if kind in ("int", "class"):
        return pa.types.is_integer(dtype)
    if kind == "number":
        return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)
    if kind == "bool":
        return pa.types.is_boolean(dtype)
    if kind == "str":
        return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)
    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or pa.types.is_binary_view(dtype)


def _check_values(name: str, frame: pd.DataFrame, kinds: dict[str, str]) -> list[str]:
    """What dtypes cannot tell: text and bytes columns hold text and bytes,
    class indices are within range. Only on frames read in full."""
    problems = []
    for column, kind in kinds.items():
        if column not in frame.columns or frame.empty:
            continue
        values = frame[column]
        if kind == "class" and not values.between(0, NUM_CLASSES - 1).all():
            problems.append(f"{name}.{column} holds values outside 0..{NUM_CLASSES - 1}")
        elif kind in ("str", "bytes"):
            expected = str if kind == "str" else bytes
            if not values.map(lambda v: isinstance(v, expected)).all():
                problems.append(f"{name}.{column} holds values that are not {_COLUMN_KINDS[kind]}")
    return problems
