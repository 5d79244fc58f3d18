"""The team's marks on runs: which are reference runs, which are hidden.

A reference run keeps its place in every visitor's default selection; a
hidden run leaves the dashboard's pickers and tables (its files stay, and
Run details can show it again). The marks live in one small JSON file beside
`runs/` (`artifacts.marks_path()`), written atomically, so marking never
edits a published run. Who may mark is decided by `cifar.auth`, the same
rights as retraining; callers check them before `set_mark`.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass

from cifar import artifacts
from cifar.errors import CifarError

MARKS = ("reference", "hidden")
MAX_BYTES = 1_000_000  # some 20,000 marked runs; the file is read on every page view


@dataclass(frozen=True)
class Marks:
    reference: frozenset[str] = frozenset()
    hidden: frozenset[str] = frozenset()


def read_marks() -> Marks:
    """The current marks; a missing or unreadable file means no marks (it is
    advisory: a damaged file must not take the dashboard down)."""
    path = artifacts.marks_path()
    try:
        # Not a regular file (a folder, a pipe that would block the page) or
        # far larger than marks ever grow: ignored like an unreadable one.
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            return Marks()
        payload = artifacts.read_json(path)
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return Marks()
    if not isinstance(payload, dict):
        return Marks()
    return Marks(**{mark: _run_ids(payload.get(mark)) for mark in MARKS})


def _run_ids(listed) -> frozenset[str]:
    """The run ids in one mark's list; anything else (a string, a number, an
    object, a path) is ignored: only a list of run ids marks runs."""
    if not isinstance(listed, list):
        return frozenset()
    return frozenset(r for r in listed if artifacts.is_run_id(r))


def set_mark(run_id: str, mark: str, on: bool, by: str = "") -> Marks:
    """Add or remove one mark on one run; returns the marks now in force.

    A lock file serialises writers, so two people marking at once both win."""
    artifacts.check_run_id(run_id)
    if mark not in MARKS:
        raise CifarError(f"unknown mark '{mark}'; use one of {', '.join(MARKS)}")
    path = artifacts.marks_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = read_marks()
        marked = set(getattr(current, mark))
        (marked.add if on else marked.discard)(run_id)
        updated = Marks(**{**{m: getattr(current, m) for m in MARKS}, mark: frozenset(marked)})
        artifacts.write_json_atomic(path, {"schema_version": 1, "last_changed_by": by,
                                           **{m: sorted(getattr(updated, m)) for m in MARKS}})
    return updated
