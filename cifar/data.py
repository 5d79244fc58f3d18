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
import io
import json
import logging
import math
import numbers
import os
import pickle
import posixpath
import secrets
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from cifar import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES
from cifar.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CACHE_VERSION = 1        # bump when decoding changes, so old caches are not reused
CACHE_KEEP = 3           # cached datasets kept (~180 MB each); least recently used go first
MAX_MEMBER_BYTES = 64 << 20  # largest file read from an archive; a real batch is ~31 MB

ALTERNATIVES = (
    "Use a local copy instead with --data PATH, where PATH is one of:\n"
    "  - cifar-10-python.tar.gz (the canonical archive from "
    "https://www.cs.toronto.edu/~kriz/cifar.html) or its unpacked cifar-10-batches-py/ folder\n"
    "  - a class-folder tree train/<class>/*.png|jpg and test/<class>/*.png|jpg "
    f"(classes: {', '.join(CLASS_NAMES)}), or a .tar.gz/.tgz/.tar/.zip of one")


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
        key, build, name = _source_key(path), (lambda: _load_path(path)), path.name

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


# ---------------------------------------------------------------- local files and archives

@dataclass
class _Tree:
    """The files of a folder or an archive by relative POSIX path, hidden entries left out."""

    root: Path
    is_archive: bool
    files: dict[str, Callable[[], bytes]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"{'archive' if self.is_archive else 'folder'} '{self.root}'"

    def where(self, name: str) -> str:
        """How a message names one entry: a full path, or a member and its archive."""
        return f"'{name}' in {self.label}" if self.is_archive else f"'{self.root / name}'"


def _load_path(path: Path):
    tree = _open_tree(path)
    layout, prefix = _find_layout(tree)
    if layout == "batches":
        kind = f"canonical python batches {'archive' if tree.is_archive else 'folder'}"
        return _read_batches(tree, prefix), kind, ""
    arrays, formats = _read_class_folders(tree, prefix)
    kind = f"class-folder {'archive' if tree.is_archive else 'tree'}"
    return arrays, kind, f"({' and '.join(sorted(formats))} copy)"


def _is_skipped(parts) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _open_tree(path: Path) -> _Tree:
    if path.is_dir():
        return _folder_tree(path)
    try:
        if tarfile.is_tarfile(path):
            return _tar_tree(path)
        if zipfile.is_zipfile(path):
            return _zip_tree(path)
    except OSError as exc:
        raise DataError(f"cannot read '{path}': {exc}") from exc
    raise DataError(f"'{path}' is neither a folder nor a .tar.gz/.tgz/.tar/.zip archive. {ALTERNATIVES}")


def _folder_tree(root: Path) -> _Tree:
    files, dirs = {}, set()
    for here, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(here).relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        dirnames[:] = sorted(d for d in dirnames if not _is_skipped([d]))
        dirs.update(rel + d for d in dirnames)
        for name in filenames:
            if not _is_skipped([name]):
                files[rel + name] = (lambda p=Path(here, name): p.read_bytes())
    return _Tree(root, is_archive=False, files=files, dirs=dirs)


def _clean_member(name: str, archive: Path) -> str | None:
    """An archive member's path, normalised; None for the root or hidden entries."""
    name = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
    parts = name.split("/")
    if ".." in parts:
        raise DataError(f"archive '{archive}' holds an unsafe path '{name}'; it was not read. "
                        "Re-create the archive with relative paths only.")
    if name in ("", ".") or _is_skipped(parts):
        return None
    return name


def _add_member(tree: _Tree, name: str, size: int, read: Callable[[], bytes], archive: Path):
    if size > MAX_MEMBER_BYTES:
        raise DataError(f"'{name}' in archive '{archive}' is {size >> 20} MB, too big for a "
                        "CIFAR-10 file; check that this is the right archive.")
    data = read()
    tree.files[name] = lambda: data
    tree.dirs.update(name.rsplit("/", k)[0] for k in range(1, name.count("/") + 1))


def _tar_tree(path: Path) -> _Tree:
    tree = _Tree(path, is_archive=True)
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # one streaming pass; nothing is written to disk
                name = _clean_member(member.name, path)
                if name is None:
                    continue
                if member.isdir():
                    tree.dirs.add(name)
                elif member.isfile():
                    _add_member(tree, name, member.size, tar.extractfile(member).read, path)
                else:
                    raise DataError(f"'{name}' in archive '{path}' is a link or special file; only "
                                    "regular files are read. Re-create the archive without links.")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"archive '{path}' is damaged or truncated ({exc}); "
                        "download or copy it again.") from exc
    return tree


def _zip_tree(path: Path) -> _Tree:
    tree = _Tree(path, is_archive=True)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = _clean_member(info.filename, path)
                if name is None:
                    continue
                if info.is_dir():
                    tree.dirs.add(name)
                else:
                    _add_member(tree, name, info.file_size, lambda i=info: archive.read(i), path)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"archive '{path}' is damaged or truncated ({exc}); "
                        "download or copy it again.") from exc
    return tree


def _find_layout(tree: _Tree) -> tuple[str, str]:
    """("batches" or "folders", the path prefix where that layout starts)."""
    top = sorted(d for d in tree.dirs if "/" not in d)
    for prefix in ["", *(d + "/" for d in top)]:
        if any(prefix + name in tree.files for name in BATCH_FILES):
            return "batches", prefix
    if any(split in tree.dirs for split in SPLITS):
        return "folders", ""
    if len(top) == 1 and any(f"{top[0]}/{split}" in tree.dirs for split in SPLITS):
        return "folders", top[0] + "/"
    archives = [f for f in tree.files if "/" not in f and f.lower().endswith(ARCHIVE_SUFFIXES)]
    hint = f" Did you mean --data {tree.root / archives[0]}?" if archives and not tree.is_archive else ""
    raise DataError(f"no train/ or test/ split and no python batches found in {tree.label}.{hint} "
                    f"Expected train/<class>/ and test/<class>/ folders (optionally inside one top "
                    f"folder), or cifar-10-batches-py/ with {', '.join(BATCH_FILES)}. {ALTERNATIVES}")


# ---------------------------------------------------------------- canonical python batches

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays; any other global is refused, so a
    user's file can never run code while it is read."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which is not allowed")
        if module == "_codecs":
            import _codecs
            return _codecs.encode
        if module == "numpy":
            return getattr(np, name)
        from numpy._core import multiarray, numeric  # numpy.core is a deprecated alias
        return getattr(multiarray if name == "_reconstruct" else numeric, name)


def _read_batches(tree: _Tree, prefix: str):
    xs, ys = [], []
    for file in BATCH_FILES:
        name = prefix + file
        if name not in tree.files:
            raise DataError(f"python batch {tree.where(name)} is missing; a complete "
                            f"cifar-10-batches-py/ holds {', '.join(BATCH_FILES)}.")
        x, y = _parse_batch(tree.files[name](), tree.where(name))
        xs.append(x)
        ys.append(y)
    return (np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5])


def _parse_batch(raw: bytes, where: str):
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # a refused global, a damaged file, not a pickle at all ...
        raise DataError(f"{where} is not a readable CIFAR-10 python batch ({exc}); "
                        "replace it with the file from cifar-10-python.tar.gz.") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{where} holds a {type(batch).__name__}, expected a dict with "
                        "b'data' and b'labels'.")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{where} has keys {sorted(map(repr, batch))}, expected b'data' and b'labels'.")
    pixels = int(np.prod(IMAGE_SHAPE))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == pixels and data.shape[0] > 0):
        shape = getattr(data, "shape", None)
        raise DataError(f"{where} has data of shape {shape} and type {getattr(data, 'dtype', type(data))}, "
                        f"expected uint8 of shape (N, {pixels}).")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where} has {labels.shape} labels for {len(data)} images, "
                        "expected one integer label per image.")
    # Rows are 1024 red, then 1024 green, then 1024 blue values (CHW order).
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, labels.astype(np.int64)


# ---------------------------------------------------------------- class-folder trees

def _read_class_folders(tree: _Tree, prefix: str):
    expected = f"expected the {NUM_CLASSES} class folders {', '.join(CLASS_NAMES)}"
    for name in sorted(tree.dirs):
        if name.startswith(prefix) and "/" not in name[len(prefix):] and name[len(prefix):] not in SPLITS:
            raise DataError(f"unexpected folder {tree.where(name)}; only train/ and test/ are read. "
                            "Move it out of the dataset.")
    arrays, formats = [], set()
    for split in SPLITS:
        base = prefix + split
        if base not in tree.dirs:
            raise DataError(f"no {split}/ split: {tree.where(base)} is missing; a class-folder "
                            f"dataset needs both train/ and test/, each with the {NUM_CLASSES} class folders.")
        by_class: dict[str, list[str]] = {}
        for name in sorted(d for d in tree.dirs if d.startswith(base + "/")):
            parts = name[len(base) + 1:].split("/")
            if len(parts) > 1:
                raise DataError(f"unexpected subfolder {tree.where(name)}; images must sit directly "
                                f"in {split}/<class>/.")
            if parts[0] not in CLASS_NAMES:
                raise DataError(f"unknown class folder {tree.where(name)}; {expected}.")
            by_class[parts[0]] = []
        for name in sorted(f for f in tree.files if f.startswith(base + "/")):
            parts = name[len(base) + 1:].split("/")
            if len(parts) == 1:
                raise DataError(f"stray file {tree.where(name)}; images must sit in {split}/<class>/.")
            if not name.lower().endswith(IMAGE_SUFFIXES):
                raise DataError(f"{tree.where(name)} is not an image file (expected "
                                f"{', '.join(IMAGE_SUFFIXES)}); remove it from the class folder.")
            by_class[parts[0]].append(name)
        if not by_class:
            raise DataError(f"the {split}/ split {tree.where(base)} is empty; {expected}.")
        missing = [c for c in CLASS_NAMES if c not in by_class]
        if missing:
            raise DataError(f"missing class folder(s) {', '.join(missing)} in {tree.where(base)}; {expected}.")
        for cls, names in by_class.items():
            if not names:
                raise DataError(f"class folder {tree.where(f'{base}/{cls}')} is empty; every class "
                                f"needs at least one image.")
        names = [(label, n) for label, cls in enumerate(CLASS_NAMES) for n in by_class[cls]]
        x = np.empty((len(names), *IMAGE_SHAPE), dtype=np.uint8)
        for i, (_, name) in enumerate(names):
            x[i], image_format = _decode_image(tree.files[name](), tree.where(name))
            formats.add(image_format)
        arrays += [x, np.array([label for label, _ in names], dtype=np.int64)]
    return tuple(arrays), formats


def _decode_image(raw: bytes, where: str) -> tuple[np.ndarray, str]:
    """One 32x32 PNG or JPEG as uint8 RGB. Full decode, so truncation is caught
    (Pillow's LOAD_TRUNCATED_IMAGES is left at False on purpose)."""
    try:
        image = Image.open(io.BytesIO(raw), formats=("PNG", "JPEG"))
    except Exception as exc:
        raise DataError(f"{where} is not a readable PNG or JPEG image ({exc.__class__.__name__}); "
                        "replace or remove it.") from exc
    if image.size != IMAGE_SHAPE[1::-1]:
        raise DataError(f"{where} is {image.size[0]}x{image.size[1]} pixels; CIFAR-10 images must be "
                        "32x32. Resize or remove it.")
    try:
        image.load()
        rgb = np.asarray(image.convert("RGB"))
    except Exception as exc:
        raise DataError(f"{where} is truncated or damaged ({exc}); replace or remove it.") from exc
    return rgb, image.format


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
        for here, dirnames, filenames in os.walk(path, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(here, name)
                stat = full.stat()
                digest.update(f"{full.relative_to(path).as_posix()}\0{stat.st_size}\0"
                              f"{stat.st_mtime_ns}\n".encode())
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
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **dict(zip(_ARRAY_NAMES, arrays)), meta=np.array(json.dumps(meta)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not cache the decoded dataset in %s (%s)", path.parent, exc)
        tmp.unlink(missing_ok=True)
        return
    with contextlib.suppress(OSError):  # another process may be pruning too
        entries = sorted(path.parent.glob("cifar10-v*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[CACHE_KEEP:]:
            old.unlink(missing_ok=True)
