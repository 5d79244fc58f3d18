"""Tiny CIFAR-10-shaped datasets on disk, in every format `cifar.data` reads
(for tests, benches and demos: no real data needed).

Each writer puts a dataset under `root` (usually pytest's `tmp_path`) and
returns the path to pass as a source to `load_cifar10`. The images are seeded
and class-dependent (a base colour per class plus noise), so a model can learn
them a little, and `tiny_arrays()` returns exactly what a lossless format
(PNG, python batches) loads back:

    from cifar.sample_data import make_class_folders, tiny_arrays
    source = make_class_folders(tmp_path)          # 4 train + 2 test PNGs per class
    data = load_cifar10(source)
    x_train, y_train, x_test, y_test = tiny_arrays()
    assert (data.x_train == x_train).all()

Class-folder loads come out grouped by class (label 0 first) in file-name
order; `tiny_arrays()` uses that same order, and the python-batch writer keeps
it, so all formats load to the same arrays (JPEG aside, which is lossy).
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from cifar import CLASS_NAMES


def tiny_arrays(per_class_train: int = 4, per_class_test: int = 2, seed: int = 0):
    """(x_train, y_train, x_test, y_test): uint8 (N, 32, 32, 3) and int64 labels, class-grouped."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(len(CLASS_NAMES), 3))
    arrays = []
    for per_class in (per_class_train, per_class_test):
        y = np.repeat(np.arange(len(CLASS_NAMES), dtype=np.int64), per_class)
        noise = rng.integers(-40, 41, size=(len(y), 32, 32, 3))
        arrays += [np.clip(colours[y][:, None, None, :] + noise, 0, 255).astype(np.uint8), y]
    return tuple(arrays)


def image_bytes(pixels: np.ndarray, fmt: str = "png") -> bytes:
    """Encode one uint8 (H, W, 3) image as PNG or JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG" if fmt in ("jpg", "jpeg") else "PNG")
    return buffer.getvalue()


def class_folder_files(fmt="png", per_class_train=4, per_class_test=2, seed=0, top="") -> dict[str, bytes]:
    """Relative path -> bytes of a class-folder dataset: {top/}{train,test}/<class>/NNNN.<fmt>."""
    x_train, y_train, x_test, y_test = tiny_arrays(per_class_train, per_class_test, seed)
    suffix = "jpg" if fmt in ("jpg", "jpeg") else "png"
    files = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        for i, (pixels, label) in enumerate(zip(x, y)):
            files[f"{top}{split}/{CLASS_NAMES[label]}/{i:04d}.{suffix}"] = image_bytes(pixels, fmt)
    return files


def make_class_folders(root, fmt="png", per_class_train=4, per_class_test=2, nested=False, seed=0) -> Path:
    """Write root/cifar-tiny/{train,test}/<class>/NNNN.png (or .jpg); return root/cifar-tiny.

    nested=True adds one more level, cifar-tiny/cifar10-tiny/{train,test}/...,
    like the unpacked cifar10-jpeg.tar.gz.
    """
    source = Path(root) / "cifar-tiny"
    top = "cifar10-tiny/" if nested else ""
    for name, data in class_folder_files(fmt, per_class_train, per_class_test, seed, top).items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    return source


def write_archive(path, files: dict[str, bytes]) -> Path:
    """Pack relative path -> bytes into a .zip, .tar, .tar.gz or .tgz chosen by `path`'s name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return path
    mode = "w" if path.name.endswith(".tar") else "w:gz"
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def make_archive(root, kind="tar.gz", fmt="png", per_class_train=4, per_class_test=2,
                 nested=True, seed=0) -> Path:
    """Write root/cifar-tiny.<kind> (tar.gz, tgz, tar or zip) holding a class-folder tree.

    nested=True (the default, like cifar10-jpeg.tar.gz) puts the tree under a
    cifar10-tiny/ top folder inside the archive.
    """
    top = "cifar10-tiny/" if nested else ""
    files = class_folder_files(fmt, per_class_train, per_class_test, seed, top)
    return write_archive(Path(root) / f"cifar-tiny.{kind}", files)


class _Python2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 'str' strings, as in the real CIFAR-10 files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def batch_bytes(batch: dict, style="python2") -> bytes:
    """Pickle one batch dict: "python2" like the real files, or an int protocol (2..5)."""
    if style == "python2":
        buffer = io.BytesIO()
        _Python2Pickler(buffer, protocol=2).dump(batch)
        # Numpy 1.x, which wrote the real files, named its module numpy.core.
        return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    return pickle.dumps(batch, protocol=style)


def python_batch_files(per_class_train=4, per_class_test=2, seed=0, style="python2") -> dict[str, bytes]:
    """File name -> bytes of data_batch_1..5, test_batch and batches.meta (canonical layout)."""
    x_train, y_train, x_test, y_test = tiny_arrays(per_class_train, per_class_test, seed)
    chunks = list(zip(np.array_split(x_train, 5), np.array_split(y_train, 5)))
    files = {}
    for name, (x, y) in zip([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                            chunks + [(x_test, y_test)]):
        rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))  # CHW rows
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in y], b"data": rows,
                 b"filenames": [f"{i:04d}.png".encode() for i in range(len(y))]}
        files[name] = batch_bytes(batch, style)
    files["batches.meta"] = batch_bytes(
        {b"label_names": [c.encode() for c in CLASS_NAMES], b"num_vis": 3072}, style)
    return files


def make_python_batches(root, packed: bool = False, per_class_train=4, per_class_test=2,
                        seed=0, style="python2") -> Path:
    """Write root/cifar-10-batches-py/ (returned), or with packed=True
    root/cifar-10-python.tar.gz holding that folder (returned)."""
    files = {f"cifar-10-batches-py/{name}": data for name, data
             in python_batch_files(per_class_train, per_class_test, seed, style).items()}
    if packed:
        return write_archive(Path(root) / "cifar-10-python.tar.gz", files)
    for name, data in files.items():
        (Path(root) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / name).write_bytes(data)
    return Path(root) / "cifar-10-batches-py"
