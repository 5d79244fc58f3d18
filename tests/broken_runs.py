"""Damaged copies of fixture runs: every way a run folder was seen to break
the dashboard and the CLI (issue 15), each one made from a good run.

`damage(run_id, kind)` breaks a published run in place. Kinds that stand
for a run written wrong (wrong types, wrong columns, an empty table) also
rewrite its manifest, so only the schema check can catch them; kinds that
stand for a run changed after publication (a swapped or modified table, a
garbage manifest) leave the manifest as it was.
"""

from __future__ import annotations

import shutil

import pandas as pd

from cifar import artifacts
from fixture_runs import make_run

# kind -> the words the reason given for skipping it must contain
REASONS = {
    "metadata_types": "config is 'x', expected an object",
    "metadata_alone": "metadata.json lacks run_id, model, config",
    "history_columns": "history lacks columns epoch",
    "confusion_columns": "confusion lacks columns",
    "gallery_columns": "gallery lacks columns index, pred_index, png",
    "empty_metrics": "metrics is empty",
    "garbage_manifest": "manifest.json is unreadable",
    "swapped_table": "history.parquet is",  # its size differs from the manifest's
    "modified_table": "does not match its checksum",
}


def damage(run_id: str, kind: str, donor: str | None = None) -> None:
    """Break run `run_id` the way `kind` says (swapped_table and
    modified_table take their table from the run `donor`)."""
    path = artifacts.run_dir(run_id)
    if kind == "metadata_types":
        metadata = artifacts.read_json(path / artifacts.METADATA_FILE)
        artifacts.write_json_atomic(path / artifacts.METADATA_FILE, {**metadata, "config": "x", "params": "lots"})
    elif kind == "metadata_alone":
        artifacts.write_json_atomic(path / artifacts.METADATA_FILE, {"schema_version": artifacts.SCHEMA_VERSION})
    elif kind.endswith("_columns"):
        table = kind.removesuffix("_columns")
        frame = pd.read_parquet(path / f"{table}.parquet")
        frame.rename(columns={c: f"{c}_old" for c in frame.columns[::2]}).to_parquet(path / f"{table}.parquet")
    elif kind == "empty_metrics":
        pd.read_parquet(path / "metrics.parquet").iloc[:0].to_parquet(path / "metrics.parquet")
    elif kind == "garbage_manifest":
        (path / artifacts.MANIFEST_FILE).write_text("this is not { json")
        return
    elif kind == "swapped_table":
        shutil.copyfile(artifacts.run_dir(donor) / "history.parquet", path / "history.parquet")
        return
    elif kind == "modified_table":
        # As a run published before manifests recorded sizes: only the checksum can tell.
        manifest = artifacts.read_json(path / artifacts.MANIFEST_FILE)
        manifest.pop("sizes", None)
        artifacts.write_json_atomic(path / artifacts.MANIFEST_FILE, manifest)
        shutil.copyfile(artifacts.run_dir(donor) / "metrics.parquet", path / "metrics.parquet")
        return
    else:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(REASONS)}")
    reseal(run_id)


def reseal(run_id: str) -> None:
    """Rewrite a run's manifest to match its files as they are now."""
    path = artifacts.run_dir(run_id)
    files = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != artifacts.MANIFEST_FILE)
    artifacts.write_json_atomic(path / artifacts.MANIFEST_FILE, {
        "schema_version": artifacts.SCHEMA_VERSION, "files": {n: artifacts.sha256_file(path / n) for n in files},
        "sizes": {n: (path / n).stat().st_size for n in files}})


def make_broken_set() -> tuple[list[str], dict[str, str]]:
    """Two good runs (the newest of their models) and one damaged run of
    every kind, under the current artifacts root: (good ids, {kind: id})."""
    donor = make_run("vgg16_transfer", seed=90, epochs=3, minutes_after_start=0)
    broken = {}
    for i, kind in enumerate(REASONS):
        run = make_run("cnn_baseline" if i % 2 else "cnn_regularized", seed=100 + i, minutes_after_start=1 + i)
        damage(run.run_id, kind, donor=donor.run_id)
        broken[kind] = run.run_id
    good = [make_run(model, seed=200 + i, minutes_after_start=100 + i).run_id
            for i, model in enumerate(("cnn_baseline", "cnn_regularized"))]
    return [donor.run_id, *good], broken
