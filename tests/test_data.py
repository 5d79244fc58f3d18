"""cifar.data: every source format loads the same arrays, every broken input
fails with a DataError that names the culprit, and the cache and splits behave."""

import functools
import io
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from cifar import CLASS_NAMES
from cifar import data_files
from cifar.data import cache_dir, check_source, limit_per_class, load_cifar10, split_validation
from cifar.errors import DataError
from tests.datasets import (
    class_folder_files, image_bytes, make_archive, make_class_folders, make_python_batches, python_batch_files,
    tiny_arrays, write_archive,
)

EXPECTED = tiny_arrays()  # x_train, y_train, x_test, y_test for the default 4 + 2 per class


def assert_cifar_shaped(dataset, per_class_train=4, per_class_test=2):
    for x, y, per_class in ((dataset.x_train, dataset.y_train, per_class_train),
                            (dataset.x_test, dataset.y_test, per_class_test)):
        assert x.shape == (10 * per_class, 32, 32, 3) and x.dtype == np.uint8
        assert y.shape == (10 * per_class,) and y.dtype == np.int64
        assert np.bincount(y, minlength=10).tolist() == [per_class] * 10
    assert len(dataset.fingerprint) == 16


def assert_same_arrays(dataset, expected=EXPECTED):
    for got, want in zip((dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test), expected):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- every format loads

@pytest.mark.parametrize("nested", [False, True])
def test_png_class_folders_round_trip_pixels(tmp_path, nested):
    dataset = load_cifar10(make_class_folders(tmp_path, nested=nested))
    assert_cifar_shaped(dataset)
    assert_same_arrays(dataset)
    assert dataset.description == "class-folder tree cifar-tiny (PNG copy)"


def test_jpeg_class_folders_load_close_to_the_originals(tmp_path):
    dataset = load_cifar10(make_class_folders(tmp_path, fmt="jpeg", nested=True))
    assert_cifar_shaped(dataset)
    np.testing.assert_array_equal(dataset.y_train, EXPECTED[1])
    assert "(JPEG copy)" in dataset.description
    # JPEG is lossy, but the per-class colour must survive.
    error = np.abs(dataset.x_train.astype(int) - EXPECTED[0].astype(int)).mean()
    assert error < 30


@pytest.mark.parametrize("kind", ["tar.gz", "tgz", "tar", "zip"])
def test_class_folder_archives(tmp_path, kind):
    dataset = load_cifar10(make_archive(tmp_path, kind=kind))
    assert_same_arrays(dataset)
    assert dataset.description == f"class-folder archive cifar-tiny.{kind} (PNG copy)"


def gray_png(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (32, 32), color=level).save(buffer, format="PNG")
    return buffer.getvalue()


def test_unnested_archive_and_grayscale_images(tmp_path):
    files = {f"{split}/{name}/{i}.png": gray_png(100 + i)
             for split, per_class in (("train", 2), ("test", 1))
             for name in CLASS_NAMES for i in range(per_class)}
    dataset = load_cifar10(write_archive(tmp_path / "flat.zip", files))
    assert dataset.x_train.shape == (20, 32, 32, 3)
    assert (dataset.x_train[1] == 101).all()  # gray level copied to all three channels


@pytest.mark.parametrize("style", ["python2", 2, 5])
@pytest.mark.parametrize("packed", [False, True])
def test_python_batches_round_trip(tmp_path, packed, style):
    source = make_python_batches(tmp_path, packed=packed, style=style)
    dataset = load_cifar10(source)
    assert_cifar_shaped(dataset)
    assert_same_arrays(dataset)
    assert dataset.description.startswith("canonical python batches")


def test_folder_that_contains_the_batches_folder(tmp_path):
    make_python_batches(tmp_path / "downloads")
    assert_same_arrays(load_cifar10(tmp_path / "downloads"))


def test_same_images_give_the_same_fingerprint_in_every_lossless_format(tmp_path):
    fingerprints = {
        load_cifar10(make_class_folders(tmp_path / "a")).fingerprint,
        load_cifar10(make_archive(tmp_path / "b", kind="zip")).fingerprint,
        load_cifar10(make_python_batches(tmp_path / "c", packed=True)).fingerprint,
    }
    assert len(fingerprints) == 1
    other = load_cifar10(make_class_folders(tmp_path / "d", seed=1)).fingerprint
    assert other not in fingerprints


def test_hidden_files_are_skipped_and_truncation_stays_strict(tmp_path):
    source = make_class_folders(tmp_path)
    (source / "train" / "cat" / ".DS_Store").write_bytes(b"\0junk")
    (source / ".git").mkdir()
    (source / "README.md").write_text("top-level files beside train/ and test/ are fine")
    assert_same_arrays(load_cifar10(source))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ---------------------------------------------------------------- broken inputs name the culprit

def load_error(source) -> str:
    with pytest.raises(DataError) as info:
        load_cifar10(source)
    return str(info.value)


def test_wrong_size_image(tmp_path):
    source = make_class_folders(tmp_path)
    bad = source / "train" / "dog" / "0021.png"
    bad.write_bytes(image_bytes(np.zeros((31, 32, 3), np.uint8)))
    message = load_error(source)
    assert str(bad) in message and "32x31" in message and "32x32" in message


def test_truncated_png(tmp_path):
    source = make_class_folders(tmp_path)
    bad = source / "test" / "ship" / "0016.png"
    bad.write_bytes(bad.read_bytes()[:-40])
    message = load_error(source)
    assert str(bad) in message and "truncated" in message


def test_garbage_bytes_named_png(tmp_path):
    source = make_class_folders(tmp_path)
    bad = source / "train" / "bird" / "0008.png"
    bad.write_bytes(b"this is not an image at all")
    message = load_error(source)
    assert str(bad) in message and "not a readable PNG or JPEG" in message


def test_non_image_file_in_a_class_folder(tmp_path):
    source = make_class_folders(tmp_path)
    (source / "train" / "cat" / "Thumbs.db").write_bytes(b"\0")
    message = load_error(source)
    assert "Thumbs.db" in message and "not an image file" in message


def test_unknown_class_folder_lists_the_expected_names(tmp_path):
    source = make_class_folders(tmp_path)
    (source / "train" / "cat").rename(source / "train" / "kitten")
    message = load_error(source)
    assert str(source / "train" / "kitten") in message
    assert all(name in message for name in CLASS_NAMES)


def test_missing_class_folder(tmp_path):
    source = make_class_folders(tmp_path)
    for image in (source / "test" / "frog").iterdir():
        image.unlink()
    (source / "test" / "frog").rmdir()
    message = load_error(source)
    assert "missing class folder(s) frog" in message and str(source / "test") in message


def test_empty_class_folder(tmp_path):
    source = make_class_folders(tmp_path)
    for image in (source / "test" / "deer").iterdir():
        image.unlink()
    message = load_error(source)
    assert str(source / "test" / "deer") in message and "empty" in message


def test_empty_split(tmp_path):
    source = make_class_folders(tmp_path)
    for folder in (source / "test").iterdir():
        for image in folder.iterdir():
            image.unlink()
        folder.rmdir()
    message = load_error(source)
    assert str(source / "test") in message and "empty" in message


def test_missing_split(tmp_path):
    source = make_class_folders(tmp_path)
    (source / "test").rename(tmp_path / "elsewhere")
    message = load_error(source)
    assert "no test/ split" in message and str(source / "test") in message


def test_no_layout_at_all(tmp_path):
    (tmp_path / "photos" / "holiday").mkdir(parents=True)
    message = load_error(tmp_path / "photos")
    assert "no train/ or test/ split" in message and "--data PATH" in message


def test_folder_holding_only_an_archive_suggests_the_archive(tmp_path):
    archive = make_archive(tmp_path / "downloads", kind="zip")
    assert f"Did you mean --data {archive}?" in load_error(tmp_path / "downloads")


@pytest.mark.parametrize("stray, culprit, expected", [
    ("val/cat", "val", "unexpected folder"),
    ("train/cat/more", "train/cat/more", "unexpected subfolder"),
])
def test_stray_folders_are_refused(tmp_path, stray, culprit, expected):
    source = make_class_folders(tmp_path)
    (source / stray).mkdir(parents=True)
    message = load_error(source)
    assert expected in message and f"'{source / culprit}'" in message


def test_path_that_does_not_exist(tmp_path):
    message = load_error(tmp_path / "nowhere.tar.gz")
    assert "nowhere.tar.gz" in message and "does not exist" in message


def test_file_of_unknown_kind(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    message = load_error(path)
    assert str(path) in message and ".zip" in message


def test_bad_image_inside_an_archive_names_member_and_archive(tmp_path):
    files = {name: image_bytes(np.zeros((32, 32, 3), np.uint8))
             for name in [f"{s}/{c}/0.png" for s in ("train", "test") for c in CLASS_NAMES]}
    files["train/horse/0.png"] = b"garbage"
    path = write_archive(tmp_path / "broken.tar.gz", files)
    message = load_error(path)
    assert "'train/horse/0.png' in archive" in message and str(path) in message


def test_truncated_archive(tmp_path):
    path = make_archive(tmp_path, kind="tar.gz")
    path.write_bytes(path.read_bytes()[:2000])
    message = load_error(path)
    assert str(path) in message and "damaged or truncated" in message


def test_archive_member_with_parent_path_is_refused(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../train/cat/0.png", b"x")
    assert "unsafe path" in load_error(path)


def test_batch_with_wrong_shape(tmp_path):
    folder = make_python_batches(tmp_path)
    batch = {b"data": np.zeros((5, 1000), np.uint8), b"labels": [0] * 5}
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    message = load_error(folder)
    assert "data_batch_3" in message and "(5, 1000)" in message and "(N, 3072)" in message


def test_batch_with_wrong_keys(tmp_path):
    folder = make_python_batches(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"pixels": 1}, protocol=2))
    message = load_error(folder)
    assert "test_batch" in message and "b'labels'" in message


def test_missing_batch_file(tmp_path):
    folder = make_python_batches(tmp_path)
    (folder / "data_batch_5").unlink()
    message = load_error(folder)
    assert str(folder / "data_batch_5") in message and "missing" in message


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    files = python_batch_files()
    marker = tmp_path / "code-ran"
    files["data_batch_1"] = pickle.dumps({b"data": _RunsCode(str(marker)), b"labels": []})
    path = write_archive(tmp_path / "cifar-10-python.tar.gz",
                         {f"cifar-10-batches-py/{n}": b for n, b in files.items()})
    message = load_error(path)
    assert "data_batch_1" in message and "not allowed" in message
    assert not marker.exists()


# ---------------------------------------------------------------- keras download

def test_keras_offline_names_the_local_alternatives(monkeypatch):
    import keras

    def offline():
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/: no route to host")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    for source in ("keras", None):
        message = load_error(source)
        for alternative in ("--data PATH", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                            "train/<class>", ".zip", "no route to host"):
            assert alternative in message


def test_keras_download_is_flattened_and_cached(monkeypatch):
    import keras

    calls = []
    x_train, y_train, x_test, y_test = EXPECTED

    def fake_load_data():
        calls.append(1)
        return (x_train, y_train.reshape(-1, 1).astype(np.uint8)), (x_test, y_test.reshape(-1, 1))

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", fake_load_data)
    first = load_cifar10()
    second = load_cifar10("keras")
    assert len(calls) == 1  # the second load came from our cache
    for dataset in (first, second):
        assert_same_arrays(dataset)
        assert dataset.source == "keras" and "keras" in dataset.description


# ---------------------------------------------------------------- cache

def test_cache_hit_returns_identical_arrays_without_decoding(tmp_path, monkeypatch):
    source = make_class_folders(tmp_path)
    first = load_cifar10(source)
    assert len(list(cache_dir().glob("*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("a cache hit must not decode images")

    monkeypatch.setattr(data_files, "_decode_image", no_decoding)
    second = load_cifar10(source)
    assert_same_arrays(second, (first.x_train, first.y_train, first.x_test, first.y_test))
    assert (second.fingerprint, second.description) == (first.fingerprint, first.description)


def test_corrupt_cache_file_is_rebuilt(tmp_path):
    source = make_class_folders(tmp_path)
    load_cifar10(source)
    (cached,) = cache_dir().glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:5000])  # a torn write
    assert_same_arrays(load_cifar10(source))
    assert_same_arrays(load_cifar10(source))  # and the rebuilt file is good
    cached.write_bytes(b"not a zip file")
    assert_same_arrays(load_cifar10(source))


def test_changed_folder_misses_the_cache_and_no_cache_writes_nothing(tmp_path):
    source = make_class_folders(tmp_path)
    load_cifar10(source, use_cache=False)
    assert not cache_dir().exists() or not list(cache_dir().iterdir())
    load_cifar10(source)
    extra = source / "train" / "cat" / "9999.png"
    extra.write_bytes(image_bytes(np.full((32, 32, 3), 7, np.uint8)))
    dataset = load_cifar10(source)
    assert dataset.x_train.shape[0] == 41 and (dataset.x_train[16] == 7).all()


def test_check_source_report(tmp_path):
    source = make_python_batches(tmp_path, packed=True)
    report = check_source(str(source))
    dataset = load_cifar10(source)
    assert dataset.fingerprint in report
    assert "40 images" in report and "20 images" in report and "uint8" in report
    assert all(name in report for name in CLASS_NAMES)


# ---------------------------------------------------------------- splits and limits

def labelled(per_class=20, classes=10):
    """x holds each image's index, so splits can be checked for overlap."""
    y = np.repeat(np.arange(classes), per_class)
    return np.arange(len(y)), y


def test_split_validation_is_stratified_deterministic_and_disjoint():
    x, y = labelled()
    x_train, y_train, x_val, y_val = split_validation(x, y, val_size=50, seed=3)
    assert np.bincount(y_val).tolist() == [5] * 10
    assert np.bincount(y_train).tolist() == [15] * 10
    assert sorted(np.concatenate([x_train, x_val]).tolist()) == x.tolist()
    np.testing.assert_array_equal(y[x_val], y_val)
    again = split_validation(x, y, val_size=50, seed=3)
    np.testing.assert_array_equal(again[2], x_val)
    other = split_validation(x, y, val_size=50, seed=4)
    assert set(other[2]) != set(x_val)


def test_split_validation_fraction_and_zero():
    x, y = labelled()
    assert len(split_validation(x, y, val_size=0.1)[2]) == 20
    x_train, y_train, x_val, y_val = split_validation(x, y, val_size=0)
    assert len(x_train) == 200 and x_val.shape == (0,) and y_val.shape == (0,)


@pytest.mark.parametrize("val_size", [5, 196, 200, 5000, -1, 1.0, "10"])
def test_split_validation_rejects_impossible_sizes(val_size):
    x, y = labelled()
    with pytest.raises(DataError, match="val_size"):
        split_validation(x, y, val_size=val_size)


def test_limit_per_class():
    y = np.concatenate([np.repeat(np.arange(10), 20), [10] * 3])  # class 10 is under the limit
    x = np.arange(len(y))
    x_small, y_small = limit_per_class(x, y, 5, seed=1)
    assert np.bincount(y_small).tolist() == [5] * 10 + [3]
    np.testing.assert_array_equal(y[x_small], y_small)
    assert len(set(x_small)) == len(x_small)
    np.testing.assert_array_equal(limit_per_class(x, y, 5, seed=1)[0], x_small)
    assert set(limit_per_class(x, y, 5, seed=2)[0]) != set(x_small)
    unchanged = limit_per_class(x, y, None)
    assert unchanged[0] is x and unchanged[1] is y
    for bad in (0, -2, 2.5):
        with pytest.raises(DataError, match="at least 1"):
            limit_per_class(x, y, bad)


# ---------------------------------------------------------------- archives are listed before read

@functools.lru_cache(maxsize=2)
def deflated_zeros(size: int) -> tuple[bytes, int]:
    """`size` zero bytes as raw deflate data, and their CRC-32."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    return deflate.compress(bytes(size)) + deflate.flush(), zlib.crc32(bytes(size))


def zip_of_zero_members(path, names, size):
    """A zip whose members are `size` zero bytes each, deflated once and stored
    len(names) times (building it with zipfile would deflate each copy)."""
    data, crc = deflated_zeros(size)
    date, local, central = 0x21, bytearray(), bytearray()
    for name in names:
        encoded, offset = name.encode(), len(local)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, date, crc, len(data), size,
                             len(encoded), 0) + encoded + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, date, crc, len(data), size,
                               len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(names), len(names), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


@pytest.fixture
def member_reads(monkeypatch) -> list:
    """Every archive member read (zip or tar): a test's proof that nothing was."""
    import tarfile
    reads, zip_open, tar_extract = [], zipfile.ZipFile.open, tarfile.TarFile.extractfile

    def zip_spy(self, member, mode="r", *args, **kwargs):
        if mode == "r":  # writing a test archive opens its members too
            reads.append(getattr(member, "filename", member))
        return zip_open(self, member, mode, *args, **kwargs)

    def tar_spy(self, member, *args, **kwargs):
        reads.append(getattr(member, "name", member))
        return tar_extract(self, member, *args, **kwargs)
    monkeypatch.setattr(zipfile.ZipFile, "open", zip_spy)
    monkeypatch.setattr(tarfile.TarFile, "extractfile", tar_spy)
    return reads


@pytest.mark.parametrize("folder", ["train/cat", "junk"])
def test_zip_bomb_is_refused_from_its_listing(tmp_path, folder, member_reads):
    # 25 zero-filled 60 MB members: 1.5 GB inflated from a 1.5 MB file.
    path = zip_of_zero_members(tmp_path / "bomb.zip", [f"{folder}/{i}.png" for i in range(25)], 60 << 20)
    assert path.stat().st_size < 2_000_000
    message = load_error(path)
    assert "more than 1,024 MB of files uncompressed" in message and str(path) in message
    assert member_reads == []


def test_too_many_members_are_refused_from_the_listing(tmp_path, monkeypatch, member_reads):
    monkeypatch.setattr(data_files, "MAX_MEMBERS", 50)
    path = zip_of_zero_members(tmp_path / "many.zip", [f"train/cat/{i}.png" for i in range(51)], 10)
    assert "more than 50 files" in load_error(path)
    assert member_reads == []


def test_tar_gz_listing_stops_at_the_size_cap(tmp_path, monkeypatch, member_reads):
    monkeypatch.setattr(data_files, "MAX_TOTAL_BYTES", 1 << 20)
    files = {f"train/cat/{i}.png": bytes(300_000) for i in range(5)}
    message = load_error(write_archive(tmp_path / "big.tar.gz", files))
    assert "more than 1 MB of files uncompressed" in message
    assert member_reads == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_layout_is_checked_before_any_image_is_read(tmp_path, kind, member_reads):
    files = {name: data for name, data in class_folder_files().items() if not name.startswith("test/dog/")}
    message = load_error(write_archive(tmp_path / f"no-test-dog.{kind}", files))
    assert "missing class folder(s) dog" in message
    assert member_reads == [], "train/ was not decoded before test/ was found incomplete"
    assert_cifar_shaped(load_cifar10(write_archive(tmp_path / f"whole.{kind}", class_folder_files())))
