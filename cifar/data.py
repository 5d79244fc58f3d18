"""CIFAR-10 as uint8 arrays, from a download or from any local copy.

`load_cifar10(source)` returns x as uint8 (N, 32, 32, 3) and y as int64 labels
0..9 in the canonical order of `CLASS_NAMES`. A source is one of:

- "keras" (the default): `keras.datasets.cifar10.load_data()`, the standard
  cached download. Offline, this fails with a DataError naming the local
  alternatives below and the `--data PATH` flag.
- the canonical `cifar-10-python.tar.gz`, its unpacked `cifar-10-batches-py/`
  folder, or a folder that contains that folder. The pickles are read with an
  unpickler that only allows the numpy globals such files need.
- a class-folder tree `train/<class>/*.png|jpg` and `test/<class>/*.png|jpg`,
  possibly inside one top folder, or a .tar.gz/.tgz/.tar/.zip of one. Archives
  are read in memory and never extracted to disk.

Nothing is silently dropped: an image that is not 32x32, a damaged image, an
unknown, missing or empty class folder, a stray non-image file, or a missing
split raises a DataError that names the file or folder. Hidden entries (a name
starting with ".", such as .DS_Store or macOS "._x.png" files) and macOS
`__MACOSX/` folders are skipped; so are plain files beside train/ and test/
(README, LICENSE). Class-folder images come out grouped by class, sorted by
file name within a class; python batches keep their file order.

Decoded arrays are cached under `cache_dir()` in one uncompressed .npz per
source, written atomically. The cache key is cheap to compute from the source
(sha256 of an archive's bytes; paths, sizes and mtimes of a folder's files), so
editing a folder invalidates it. `Dataset.fingerprint` is different: it hashes
the decoded arrays, so the same images give the same fingerprint whichever
format they came in. Measured on the 19 MB cifar10-jpeg.tar.gz (60,000 JPEG
images) on 2 CPU cores shared with a training run: 23 s to read and decode the
first time (about 5 s of it reading the tar), 0.15-0.7 s for a cached load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES
from cifar.atomic import atomic_file
from cifar.data_files import ALTERNATIVES, SPLITS, load_path, walk_folder
from cifar.errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1        # bump when decoding (here or in data_files) changes, so old caches are not reused
CACHE_KEEP = 3           # cached datasets kept (~180 MB each); least recently used go first


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str          # what the user passed
    fingerprint: str     # 16 hex digits of sha256 over the decoded arrays
    description: str     # e.g. "class-folder archive cifar10-jpeg.tar.gz (JPEG copy)"


# ---------------------------------------------------------------- public API

def load_cifar10(source: str | os.PathLike | None = "keras", *, use_cache: bool = True) -> Dataset:
    """Load CIFAR-10 from `source` ("keras" or a local path), cached after the first time."""
    source = "keras" if source is None else os.fspath(source)
    if not source.strip():
        raise DataError(f"no data source given. Pass --data keras (the download) or --data PATH. {ALTERNATIVES}")
    if source == "keras":
        key, build, name = hashlib.sha256(b"keras").hexdigest(), _load_keras, ""
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data source '{source}' does not exist. {ALTERNATIVES}")
        if not (path.is_dir() or path.is_file()):  # reading a pipe or a device would never end
            raise DataError(f"data source '{source}' is not a folder or a file (a pipe, socket or device). "
                            f"{ALTERNATIVES}")
        key, build, name = _source_key(path), (lambda: load_path(path)), path.name

    cached = _read_cache(key) if use_cache else None
    if cached is not None:
        arrays, meta = cached
    else:
        arrays, kind, note = build()
        _check_arrays(arrays, f"data from '{source}'")
        meta = {"kind": kind, "note": note, "fingerprint": _content_fingerprint(arrays)}
        if use_cache:
            _write_cache(key, arrays, meta)
    # The name comes from this call, not the cache: a copy of a folder keeps its own name.
    description = " ".join(filter(None, [meta["kind"], name, meta["note"]]))
    return Dataset(*arrays, source=source, fingerprint=meta["fingerprint"], description=description)


def split_validation(x, y, val_size: int | float = 5000, seed: int = 0):
    """Stratified, seeded split into (x_train, y_train, x_val, y_val).

    An int `val_size` is a count, a float in (0, 1) a fraction; 0 gives empty
    validation arrays. The same inputs and seed always give the same split.
    """
    from sklearn.model_selection import train_test_split  # slow import, only needed here

    x, y = _check_pair(x, y)
    total = len(y)
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Real):
        raise DataError(f"val_size must be a count or a fraction, got {val_size!r}")
    if val_size == 0:
        return x, y, x[:0], y[:0]
    if isinstance(val_size, numbers.Integral):
        count = int(val_size)
    elif 0 < val_size < 1:
        count = math.ceil(float(val_size) * total)  # how scikit-learn rounds a fraction
    else:
        raise DataError(f"val_size {val_size} is not a count or a fraction in (0, 1); "
                        "use e.g. 5000 or 0.1, or 0 for no validation split")
    classes = len(np.unique(y))
    if not classes <= count <= total - classes:
        raise DataError(
            f"val_size {val_size} asks for {count} validation images out of {total}; a stratified "
            f"split of {classes} classes needs between {classes} and {total - classes}. "
            "Choose a val_size in that range (or 0 for no validation split).")
    try:
        train_idx, val_idx = train_test_split(
            np.arange(total), test_size=count, stratify=y, random_state=seed)
    except ValueError as exc:  # e.g. a class with a single image cannot be stratified
        raise DataError(f"cannot split {count} validation images out of {total}: {exc}. "
                        "Use more images per class or val_size 0.") from exc
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def limit_per_class(x, y, n: int | None, seed: int = 0):
    """Keep at most `n` images per class, chosen by a seeded shuffle (None keeps all).

    The result is in that shuffled order; classes with fewer than n keep all.
    """
    if n is None:
        return x, y
    x, y = _check_pair(x, y)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise DataError(f"images per class must be a whole number of at least 1 (or none "
                        f"for all images), got {n!r}")
    order = np.random.default_rng(seed).permutation(len(y))
    shuffled = y[order]
    rank = np.empty(len(y), dtype=np.int64)  # position of each image within its class
    for label in np.unique(shuffled):
        members = shuffled == label
        rank[members] = np.arange(members.sum())
    keep = order[rank < n]
    return x[keep], y[keep]


def check_source(source: str) -> str:
    """Load `source` without the cache and describe it, for `python -m cifar data check`."""
    data = load_cifar10(source, use_cache=False)
    lines = [
        f"source:      {data.source}",
        f"kind:        {data.description}",
        f"fingerprint: {data.fingerprint}",
    ]
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        lines.append(f"{split + ':':<13}{len(y)} images, x {x.shape} {x.dtype}, y {y.shape} {y.dtype}, "
                     f"pixels {x.min()}..{x.max()}")
    train_counts = np.bincount(data.y_train, minlength=NUM_CLASSES)
    test_counts = np.bincount(data.y_test, minlength=NUM_CLASSES)
    lines.append(f"{'label':>5}  {'class':<11}{'train':>7}{'test':>7}")
    for label, name in enumerate(CLASS_NAMES):
        lines.append(f"{label:>5}  {name:<11}{train_counts[label]:>7}{test_counts[label]:>7}")
    return "\n".join(lines)


def cache_dir() -> Path:
    """Where decoded datasets are cached: $CIFAR_CACHE_DIR or ~/.cache/cifar."""
    env = os.environ.get("CIFAR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "cifar"


# ---------------------------------------------------------------- keras download

def _load_keras():
    try:
        import keras
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # offline machines fail in many ways (URLError, Exception, ...)
        reason = f"{exc.__class__.__name__}: {exc}"
        raise DataError(f"could not download CIFAR-10 through Keras ({reason[:300]}). "
                        f"This machine may be offline. {ALTERNATIVES}") from exc
    arrays = []
    for x, y in ((x_train, y_train), (x_test, y_test)):
        x = np.asarray(x, dtype=np.uint8)
        if x.ndim == 4 and x.shape[1] == 3:  # Keras set to channels_first
            x = x.transpose(0, 2, 3, 1)
        arrays += [np.ascontiguousarray(x), np.asarray(y, dtype=np.int64).reshape(-1)]
    return tuple(arrays), "canonical CIFAR-10 downloaded by keras.datasets.cifar10", ""


# ---------------------------------------------------------------- checks and fingerprints

def _check_pair(x, y):
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1 or len(x) != len(y):
        raise DataError(f"images and labels do not match: x has shape {x.shape}, y has shape {y.shape}")
    return x, y


def _check_arrays(arrays, what: str) -> None:
    for split, (x, y) in zip(SPLITS, (arrays[:2], arrays[2:])):
        if not (x.dtype == np.uint8 and x.shape[1:] == IMAGE_SHAPE and len(x) > 0):
            raise DataError(f"{what}: {split} images have shape {x.shape} and type {x.dtype}, "
                            f"expected uint8 (N, 32, 32, 3) with N > 0")
        if not (y.dtype == np.int64 and y.shape == (len(x),)):
            raise DataError(f"{what}: {split} labels have shape {y.shape}, expected ({len(x)},)")
        if y.min() < 0 or y.max() >= NUM_CLASSES:
            raise DataError(f"{what}: {split} labels span {y.min()}..{y.max()}, expected 0..{NUM_CLASSES - 1}")


def _content_fingerprint(arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()[:16]


def _source_key(path: Path) -> str:
    """Cheap cache key: an archive's sha256, or a folder's paths, sizes and mtimes."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    if path.is_dir():
        for here, _, filenames in walk_folder(path):
            for name in filenames:
                full = Path(here, name)
                try:
                    stat = full.stat()
                except OSError as exc:
                    raise DataError(f"cannot read '{full}': {exc.strerror or exc}") from exc
                # surrogateescape: a file name that is not UTF-8 still has a key
                digest.update(f"{full.relative_to(path).as_posix()}\0{stat.st_size}\0"
                              f"{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- cache

_ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")


def _cache_path(key: str) -> Path:
    return cache_dir() / f"cifar10-v{CACHE_VERSION}-{key[:32]}.npz"


def _read_cache(key: str):
    path = _cache_path(key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = tuple(stored[name] for name in _ARRAY_NAMES)
            meta = json.loads(str(stored["meta"]))
        _check_arrays(arrays, f"cache file {path}")
        if not {"kind", "note", "fingerprint"} <= set(meta):
            raise ValueError("metadata incomplete")
    except Exception as exc:  # a torn or foreign file: rebuild rather than crash
        log.warning("ignoring unreadable cache file %s (%s); rebuilding it", path, exc)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # marks it recently used, for pruning
    return arrays, meta


def _write_cache(key: str, arrays, meta: dict) -> None:
    """Write the cache atomically; a failure to cache never fails a load."""
    path = _cache_path(key)
    try:
        with atomic_file(path, "wb") as f:
            np.savez(f, **dict(zip(_ARRAY_NAMES, arrays)), meta=np.array(json.dumps(meta)))
    except OSError as exc:
        log.warning("could not cache the decoded dataset in %s (%s)", path.parent, exc)
        return
    with contextlib.suppress(OSError):  # another process may be pruning too
        entries = sorted(path.parent.glob("cifar10-v*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[CACHE_KEEP:]:
            old.unlink(missing_ok=True)
