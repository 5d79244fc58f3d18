"""Reading CIFAR-10 from local files: a folder or a .tar.gz/.tgz/.tar/.zip
archive (read in memory, never extracted) holding either the canonical python
batches or class folders. `load_path(path)` gives the four arrays, what kind of
copy it was and a note; every problem is a DataError naming the file. The
formats and rules are described in `cifar.data`, the public entry point.
Decoded arrays are cached by `cifar.data`: a change to what this module
returns must bump `cifar.data.CACHE_VERSION`, or stale caches stay in use.
"""

from __future__ import annotations

import io
import os
import pickle
import posixpath
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

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
MAX_MEMBER_BYTES = 64 << 20  # largest file read from an archive; a real batch is ~31 MB

ALTERNATIVES = (
    "Use a local copy instead with --data PATH, where PATH is one of:\n"
    "  - cifar-10-python.tar.gz (the canonical archive from "
    "https://www.cs.toronto.edu/~kriz/cifar.html) or its unpacked cifar-10-batches-py/ folder\n"
    "  - a class-folder tree train/<class>/*.png|jpg and test/<class>/*.png|jpg "
    f"(classes: {', '.join(CLASS_NAMES)}), or a .tar.gz/.tgz/.tar/.zip of one")


# ---------------------------------------------------------------- folders and archives

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


def load_path(path: Path):
    """((x_train, y_train, x_test, y_test), kind, note) from a local folder or archive."""
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
