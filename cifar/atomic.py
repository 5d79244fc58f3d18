"""Atomic file replacement: a reader sees the old file or the new one, never half.

Every file the project rewrites in place (progress and state files, run
metadata, the decoded-data cache) goes through `atomic_file`: write a hidden
temporary file beside the target, fsync it, then `os.replace` it over the
target in one step. A crash leaves at most a stray `.NAME.XXXX.tmp`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w"):
    """Yield a file open for writing that replaces `path` when the block ends
    without an exception; on an exception `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
