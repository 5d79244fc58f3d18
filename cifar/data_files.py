"""Reading CIFAR-10 from local files: a folder or a .tar.gz/.tgz/.tar/.zip
archive (read in memory, never extracted) holding either the canonical python
batches or class folders. `load_path(path)` gives the four arrays, what kind of
copy it was and a note; every problem is a DataError naming the file. The
formats and rules are described in `cifar.data`, the public entry point.

A source is checked from its list of files before any file is read: the
number of files and their total declared size are capped (MAX_MEMBERS,
MAX_TOTAL_BYTES; a tar.gz is listed in one streaming pass that stops as
soon as a cap is passed), then the layout is checked from the names alone.
Only then are the files read, so a small archive of huge members ("zip
bomb") or a wrong archive costs nothing.
Decoded arrays are cached by `cifar.data`: a change to what this module
returns must bump `cifar.data.CACHE_VERSION`, or stale caches stay in use.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import posixpath
import stat
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
# Real copies: the canonical batches are 6 files, 186 MB; the JPEG class-folder
# copy 60,023 entries, 55 MB; a PNG one about 150 MB. The caps leave room for
# other encodings while refusing a bomb before its first byte is inflated.
MAX_MEMBERS = 200_000
MAX_TOTAL_BYTES = 1 << 30

ALTERNATIVES = (
    "Use a local copy instead with --data PATH, where PATH is one of:\n"
    "  - cifar-10-python.tar.gz (the canonical archive from "
    "https://www.cs.toronto.edu/~kriz/cifar.html) or its unpacked cifar-10-batches-py/ folder\n"
    "  - a class-folder tree train/<class>/*.png|jpg and test/<class>/*.png|jpg "
    f"(classes: {', '.join(CLASS_NAMES)}), or a .tar.gz/.tgz/.tar/.zip of one")


# ---------------------------------------------------------------- folders and archives

@dataclass
class _Tree:
    """The files of a folder or an archive by relative POSIX path (hidden entries
    left out), with their declared sizes; nothing is read until `read`."""

    root: Path
    is_archive: bool
    sizes: dict[str, int] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    reader: Callable[[str], bytes] | None = None
    total_bytes: int = 0

    @property
    def label(self) -> str:
        return f"{'archive' if self.is_archive else 'folder'} '{self.root}'"

    def where(self, name: str) -> str:
        """How a message names one entry: a full path, or a member and its archive."""
        return f"'{name}' in {self.label}" if self.is_archive else f"'{self.root / name}'"

    def add_file(self, name: str, size: int) -> None:
        """Record one file, refusing the source as soon as a cap is passed."""
        if size > MAX_MEMBER_BYTES:
            raise DataError(f"{self.where(name)} is {size >> 20} MB, too big for a CIFAR-10 file; "
                            "check that this is the right dataset.")
        self.sizes[name] = size
        self.total_bytes += size
        if len(self.sizes) > MAX_MEMBERS:
            raise DataError(f"{self.label} holds more than {MAX_MEMBERS:,} files; CIFAR-10 has 60,000 "
                            "images. Check that this is the right dataset; nothing was read.")
        if self.total_bytes > MAX_TOTAL_BYTES:
            raise DataError(f"{self.label} holds more than {MAX_TOTAL_BYTES >> 20:,} MB of files "
                            f"uncompressed; CIFAR-10 takes under 200 MB. Check that this is the right "
                            "dataset; nothing was read.")
        self.dirs.update(name.rsplit("/", k)[0] for k in range(1, name.count("/") + 1))

    def read(self, name: str) -> bytes:
        return self.reader(name)


@contextlib.contextmanager
def _opened_tree(path: Path):
    """The listed _Tree of a folder or an archive, readable while the context is open."""
    if path.is_dir():
        yield _folder_tree(path)
        return
    try:
        is_tar, is_zip = tarfile.is_tarfile(path), zipfile.is_zipfile(path)
    except OSError as exc:
        raise DataError(f"cannot read '{path}': {exc}") from exc
    if not (is_tar or is_zip):
        raise DataError(f"'{path}' is neither a folder nor a .tar.gz/.tgz/.tar/.zip archive. {ALTERNATIVES}")
    damaged = (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error)
    try:
        if is_tar:
            yield _tar_tree(path)
        else:
            with zipfile.ZipFile(path) as archive:
                yield _zip_tree(path, archive)
    except damaged as exc:
        raise DataError(f"archive '{path}' is damaged or truncated ({exc}); "
                        "download or copy it again.") from exc


def load_path(path: Path):
    """((x_train, y_train, x_test, y_test), kind, note) from a local folder or archive."""
    with _opened_tree(path) as tree:
        layout, prefix = _find_layout(tree)
        source = "archive" if tree.is_archive else "folder"
        if layout == "batches":
            names = _batch_names(tree, prefix)
            return _read_batches(tree, names), f"canonical python batches {source}", ""
        _check_split_folders(tree, prefix)
        names_by_split = [_class_folder_names(tree, prefix, split) for split in SPLITS]
        arrays, formats = _read_class_folders(tree, names_by_split)
        kind = f"class-folder {'archive' if tree.is_archive else 'tree'}"
        return arrays, kind, f"({' and '.join(sorted(formats))} copy)"


def _is_skipped(parts) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def walk_folder(root: Path, skip: Callable[[str], bool] = lambda name: False):
    """os.walk of a dataset folder, following links as a user's copy may use them,
    sorted, without the names `skip` rejects. Refuses instead of looping or
    silently leaving files out: a folder reached twice (a symbolic link loop)
    and a folder that cannot be listed are DataErrors."""
    seen = set()

    def unreadable(exc: OSError):
        raise DataError(f"cannot read folder '{exc.filename}' ({exc.strerror or exc}); check that you may "
                        "read it, or remove it from the dataset.")
    for here, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        try:
            info = os.stat(here)
        except OSError as exc:
            unreadable(exc)
        if (info.st_dev, info.st_ino) in seen:
            raise DataError(f"'{here}' is a link back to a folder already read (a symbolic link loop); "
                            "remove the link from the dataset.")
        seen.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not skip(d))
        yield here, dirnames, sorted(f for f in filenames if not skip(f))


def _folder_tree(root: Path) -> _Tree:
    def read(name: str) -> bytes:
        try:
            return (root / name).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read '{root / name}': {exc.strerror or exc}") from exc
    tree = _Tree(root, is_archive=False, reader=read)
    for here, dirnames, filenames in walk_folder(root, skip=lambda name: _is_skipped([name])):
        rel = Path(here).relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        tree.dirs.update(rel + d for d in dirnames)
        for name in filenames:
            try:
                info = os.stat(Path(here, name))
            except OSError as exc:
                raise DataError(f"cannot read '{Path(here, name)}': {exc.strerror or exc}") from exc
            if not stat.S_ISREG(info.st_mode):  # reading a pipe or a device would never end
                raise DataError(f"'{Path(here, name)}' is not a regular file (a pipe, socket or device); "
                                "remove it from the dataset.")
            tree.add_file(rel + name, info.st_size)
    return tree


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


def _tar_tree(path: Path) -> _Tree:
    """A tar's listing from one pass over its headers (data skipped, never kept);
    its files are read in a second streaming pass, in archive order, on first use."""
    tree = _Tree(path, is_archive=True)
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            name = _clean_member(member.name, path)
            if name is None:
                continue
            if member.isdir():
                tree.dirs.add(name)
            elif member.isfile():
                tree.add_file(name, member.size)
            else:
                raise DataError(f"'{name}' in archive '{path}' is a link or special file; only "
                                "regular files are read. Re-create the archive without links.")
    contents: dict[str, bytes] = {}

    def read(name: str) -> bytes:
        if not contents:
            with tarfile.open(path, "r|*") as stream:  # forward-only: no re-inflating to seek back
                for member in stream:
                    kept = _clean_member(member.name, path)
                    if member.isfile() and kept in tree.sizes:
                        contents[kept] = stream.extractfile(member).read()
        return contents[name]
    tree.reader = read
    return tree


def _zip_tree(path: Path, archive: zipfile.ZipFile) -> _Tree:
    """A zip's listing from its central directory alone; members are inflated on use."""
    tree, infos = _Tree(path, is_archive=True), {}
    for info in archive.infolist():
        name = _clean_member(info.filename, path)
        if name is None:
            continue
        if info.is_dir():
            tree.dirs.add(name)
        else:
            tree.add_file(name, info.file_size)
            infos[name] = info
    tree.reader = lambda name: archive.read(infos[name])
    return tree


def _find_layout(tree: _Tree) -> tuple[str, str]:
    """("batches" or "folders", the path prefix where that layout starts)."""
    top = sorted(d for d in tree.dirs if "/" not in d)
    for prefix in ["", *(d + "/" for d in top)]:
        if any(prefix + name in tree.sizes for name in BATCH_FILES):
            return "batches", prefix
    if any(split in tree.dirs for split in SPLITS):
        return "folders", ""
    if len(top) == 1 and any(f"{top[0]}/{split}" in tree.dirs for split in SPLITS):
        return "folders", top[0] + "/"
    archives = [f for f in tree.sizes if "/" not in f and f.lower().endswith(ARCHIVE_SUFFIXES)]
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


def _batch_names(tree: _Tree, prefix: str) -> list[str]:
    """The six batch files' names, all checked present before any is read."""
    for file in BATCH_FILES:
        if prefix + file not in tree.sizes:
            raise DataError(f"python batch {tree.where(prefix + file)} is missing; a complete "
                            f"cifar-10-batches-py/ holds {', '.join(BATCH_FILES)}.")
    return [prefix + file for file in BATCH_FILES]


def _read_batches(tree: _Tree, names: list[str]):
    xs, ys = [], []
    for name in names:
        x, y = _parse_batch(tree.read(name), tree.where(name))
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

def _check_split_folders(tree: _Tree, prefix: str) -> None:
    for name in sorted(tree.dirs):
        if name.startswith(prefix) and "/" not in name[len(prefix):] and name[len(prefix):] not in SPLITS:
            raise DataError(f"unexpected folder {tree.where(name)}; only train/ and test/ are read. "
                            "Move it out of the dataset.")


def _class_folder_names(tree: _Tree, prefix: str, split: str) -> list[tuple[int, str]]:
    """(label, file name) of every image of one split, checked from the names alone."""
    expected = f"expected the {NUM_CLASSES} class folders {', '.join(CLASS_NAMES)}"
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
    for name in sorted(f for f in tree.sizes if f.startswith(base + "/")):
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
    return [(label, n) for label, cls in enumerate(CLASS_NAMES) for n in by_class[cls]]


def _read_class_folders(tree: _Tree, names_by_split: list[list[tuple[int, str]]]):
    arrays, formats = [], set()
    for names in names_by_split:
        x = np.empty((len(names), *IMAGE_SHAPE), dtype=np.uint8)
        for i, (_, name) in enumerate(names):
            x[i], image_format = _decode_image(tree.read(name), tree.where(name))
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
