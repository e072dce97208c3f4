"""idx files (MNIST, Fashion-MNIST) and Colored Fashion-MNIST, on tiny files written here."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from rest_fair.datasets import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    IDX_FILES,
    DatasetNotFoundError,
    load_fashion_mnist,
    load_mnist_idx,
    read_idx,
)
from rest_fair.exceptions import DatasetFormatError

_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of ``array``: magic number, big-endian uint32 dims, big-endian data."""
    array = np.asarray(array)
    code = _CODES[array.dtype.str[1:]]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, *, gz: bool = False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def tiny_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images with a bright square, and labels cycling through 0-9."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 8:20, 8:20] = rng.integers(100, 256, size=(n, 12, 12), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_folder(root, n_train: int = 200, n_test: int = 100, *, gz: bool = True):
    """A folder holding the four MNIST-named idx files."""
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = tiny_images(n, seed)
        images_name, labels_name = IDX_FILES[split]
        write_idx(root / f"{images_name}{suffix}", images, gz=gz)
        write_idx(root / f"{labels_name}{suffix}", labels, gz=gz)
    return root


# -- idx files ----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    out = read_idx(write_idx(tmp_path / "a.idx", array, gz=gz))
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, array)


def test_read_idx_labels_and_images(tmp_path):
    images, labels = tiny_images(30, 0)
    got_images = read_idx(write_idx(tmp_path / "i", images, gz=True))
    got_labels = read_idx(write_idx(tmp_path / "l", labels))
    assert got_images.dtype == np.uint8 and got_images.shape == (30, 28, 28)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (30,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b"\x00\x01" + b[2:], "not an idx file"),
        (lambda b: b[:2] + b"\x07" + b[3:], "not an idx file"),
        (lambda b: b[:3], "truncated: its header"),
        (lambda b: b[:6], "truncated: its header"),
        (lambda b: b[:-5], "truncated: 115 of the 120 data bytes"),
        (lambda b: b + b"\x00", "after the 120 bytes"),
        (lambda b: b[:4] + np.asarray([2**31, 2**31], ">u4").tobytes() + b[12:],
         "more than can be allocated|truncated"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_damaged_idx_files_are_named(tmp_path, mutate, match, gz):
    data = mutate(idx_bytes(np.ones((10, 12), np.uint8)))
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_damaged_gzip_is_named(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(5000, dtype=np.uint8).reshape(50, 100) % 7))
    truncated = tmp_path / "cut.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="gzip") as info:
        read_idx(truncated)
    assert str(truncated) in str(info.value)
    flipped = bytearray(data)
    flipped[-6] ^= 0xFF  # the CRC of the uncompressed data
    bad_crc = tmp_path / "crc.gz"
    bad_crc.write_bytes(bytes(flipped))
    with pytest.raises(DatasetFormatError, match="gzip"):
        read_idx(bad_crc)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.idx"):
        read_idx(tmp_path / "nothing.idx")


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx_reads_both_splits(tmp_path, gz):
    root = write_folder(tmp_path / "mnist", gz=gz)
    for split, n, seed in (("train", 200, 0), ("test", 100, 1)):
        images, labels = load_mnist_idx(root, split=split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        expected_images, expected_labels = tiny_images(n, seed)
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


def test_load_mnist_idx_accepts_dotted_names(tmp_path):
    images, labels = tiny_images(20, 0)
    write_idx(tmp_path / "train-images.idx3-ubyte", images)
    write_idx(tmp_path / "train-labels.idx1-ubyte", labels)
    got, _ = load_mnist_idx(tmp_path, split="train")
    np.testing.assert_array_equal(got, images)


def test_images_and_labels_must_match(tmp_path):
    images, labels = tiny_images(20, 0)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:19])
    with pytest.raises(DatasetFormatError, match="do not form a data set"):
        load_mnist_idx(tmp_path)


def test_missing_files_name_files_folder_and_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    images, _ = tiny_images(5, 0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, gz=True)
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(tmp_path, split="test")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "t10k-labels-idx1-ubyte" in message and "t10k-images" not in message
    assert str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert FASHION_MNIST_ENV in message
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte, train-labels"):
        load_mnist_idx(tmp_path / "empty")


def test_default_folder_and_environment_variable(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "fmnist", n_train=30, n_test=20)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(root))
    images, _ = load_fashion_mnist(split="test")
    assert len(images) == 20
    monkeypatch.delenv(FASHION_MNIST_ENV)
    if not FASHION_MNIST_DIR.is_dir():
        with pytest.raises(DatasetNotFoundError, match=str(FASHION_MNIST_DIR)):
            load_fashion_mnist()


def test_bad_split_is_named(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist_idx(tmp_path, split="valid")
