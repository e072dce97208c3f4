"""idx files for tests: encode arrays, write small MNIST-named folders (no download)."""

from __future__ import annotations

import gzip

import numpy as np

from rest_fair.datasets import IDX_FILES

__all__ = ["idx_bytes", "tiny_images", "write_folder", "write_idx"]

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
