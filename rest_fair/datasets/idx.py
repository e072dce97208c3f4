"""Read the idx files of MNIST and Fashion-MNIST from disk (gzipped or not), offline.

The idx format is a 4-byte magic number -- two zero bytes, a type code (``0x08`` unsigned
byte, ``0x09`` signed byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E``
float64) and the number of dimensions -- then one big-endian uint32 per dimension, then
the values, big-endian, in C order. MNIST and Fashion-MNIST ship the same four files::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]

(``train-images.idx3-ubyte`` with a dot is accepted too). Debian's package
``dataset-fashion-mnist`` installs Fashion-MNIST's under ``/usr/share/datasets/fashion-mnist``.
Nothing here downloads: a missing file raises
:class:`~rest_fair.exceptions.DatasetNotFoundError` naming the files and the folder.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..exceptions import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "IDX_FILES",
    "load_fashion_mnist",
    "load_mnist_idx",
    "read_idx",
]

#: The images and labels files of each split, as MNIST and Fashion-MNIST name them
#: (each may also end in ``.gz``).
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Where Debian's ``dataset-fashion-mnist`` package installs the Fashion-MNIST idx files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable naming another folder of Fashion-MNIST idx files.
FASHION_MNIST_ENV = "REST_FAIR_FASHION_MNIST"
#: The ten Fashion-MNIST classes, by label.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

_BAD_MAGIC = (
    "{path} is not an idx file: its magic number {magic} should be two zero bytes, a type "
    "code in {codes} and the number of dimensions."
)
_BAD_SPLIT = "split must be one of {splits}; got {value!r}."
_SHORT_HEADER = "{path} is truncated: its header ends after {got} of {want} bytes."
_TRUNCATED = "{path} is truncated: {got} of the {want} data bytes its header {dims} declares."
_TRAILING = "{path} has data after the {want} bytes its header {dims} declares."
_TOO_BIG = "{path} declares dimensions {dims} ({want} bytes), more than can be allocated."
_BAD_GZIP = "{path} is not a readable gzip file ({error})."
_MISSING_FILE = "No idx file {path}."
_A_FOLDER = (
    "{path} is a folder; read_idx reads one idx file (load_mnist_idx and "
    "load_fashion_mnist read a folder's four)."
)
_NOT_A_FOLDER = (
    "{what}: root {root} is a file, not a folder; point root at the folder holding the "
    "four idx files."
)
_MISSING_FILES = (
    "{what}: missing {names} in {root} (each file may also end in '.gz'). {hint}"
)
_MNIST_HINT = (
    "Point root at a folder holding the four idx files of MNIST or Fashion-MNIST "
    "(rest_fair never downloads)."
)
_FASHION_HINT = (
    "Install Debian's package with `apt-get install dataset-fashion-mnist` (31 MB, into "
    "{default}), or point root or the {env} environment variable at a folder holding the "
    "four idx files; rest_fair never downloads."
)
_BAD_IMAGE_SHAPE = "{path} holds images of {got} pixels; {what} images are {want}."
_BAD_LABEL_RANGE = (
    "{path} holds labels outside 0-{top} (e.g. {values}); {what} labels are the classes 0-{top}."
)
_MISMATCH = (
    "{images} and {labels} do not form a data set: images must be uint8 of shape "
    "(n, height, width) and labels uint8 of shape (n,); got {ishape} {idtype} and "
    "{lshape} {ldtype}."
)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One idx file as an array (a gzipped file is recognised by its first bytes).

    Parameters
    ----------
    path : str or path-like
        The file, plain or gzipped (a leading ``~`` is expanded).

    Returns
    -------
    ndarray
        Shape and dtype from the header (uint8 for the MNIST images and labels), in the
        machine's byte order.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    IsADirectoryError
        If ``path`` is a folder.
    DatasetFormatError
        If the file is not an idx file, is truncated, has bytes after the declared data, or
        is a damaged gzip file; the message names the file and the fault.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(_A_FOLDER.format(path=path))
    if not path.is_file():
        raise FileNotFoundError(_MISSING_FILE.format(path=path))
    with path.open("rb") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as stream:
            return _read_stream(stream, path)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DatasetFormatError(_BAD_GZIP.format(path=path, error=error)) from error


def _read_stream(stream: BinaryIO, path: Path) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) < 4:
        raise DatasetFormatError(_SHORT_HEADER.format(path=path, got=len(magic), want=4))
    if magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
        raise DatasetFormatError(
            _BAD_MAGIC.format(
                path=path, magic=magic.hex(" "), codes=[hex(c) for c in _DTYPES]
            )
        )
    dtype, ndim = _DTYPES[magic[2]], magic[3]
    header = stream.read(4 * ndim)
    if len(header) < 4 * ndim:
        raise DatasetFormatError(
            _SHORT_HEADER.format(path=path, got=4 + len(header), want=4 + 4 * ndim)
        )
    dims = tuple(int(d) for d in np.frombuffer(header, dtype=">u4"))
    want = math.prod(dims) * dtype.itemsize
    try:
        out = np.empty(dims, dtype=dtype)
    except (MemoryError, ValueError):
        raise DatasetFormatError(_TOO_BIG.format(path=path, dims=dims, want=want)) from None
    # buffered files and gzip streams fill the buffer unless the data ends first
    got = stream.readinto(memoryview(out.reshape(-1).view(np.uint8))) or 0
    if got < want:
        raise DatasetFormatError(_TRUNCATED.format(path=path, got=got, want=want, dims=dims))
    if stream.read(1):
        raise DatasetFormatError(_TRAILING.format(path=path, want=want, dims=dims))
    return out.astype(dtype.newbyteorder("="), copy=False)


def _find(root: Path, name: str) -> Path | None:
    dotted = name.replace("-idx", ".idx")
    for stem in dict.fromkeys((name, dotted)):
        for candidate in (root / stem, root / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load(root: Path, split: str, *, what: str, hint: str, image_shape: tuple | None = None,
          n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(split, str) or split not in IDX_FILES:
        raise ValueError(_BAD_SPLIT.format(splits=tuple(IDX_FILES), value=split))
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(_NOT_A_FOLDER.format(what=what, root=root))
    names = IDX_FILES[split]
    found = [_find(root, name) for name in names]
    missing = [name for name, path in zip(names, found, strict=True) if path is None]
    if missing:
        raise DatasetNotFoundError(
            _MISSING_FILES.format(what=what, names=", ".join(missing), root=root, hint=hint)
        )
    images_path, labels_path = found
    images, labels = read_idx(images_path), read_idx(labels_path)
    if (
        images.dtype != np.uint8
        or labels.dtype != np.uint8
        or images.ndim != 3
        or labels.ndim != 1
        or len(images) != len(labels)
    ):
        raise DatasetFormatError(
            _MISMATCH.format(
                images=images_path, labels=labels_path, ishape=images.shape,
                idtype=images.dtype, lshape=labels.shape, ldtype=labels.dtype,
            )
        )
    if image_shape is not None and images.shape[1:] != image_shape:
        raise DatasetFormatError(_BAD_IMAGE_SHAPE.format(
            path=images_path, got=images.shape[1:], what=what, want=image_shape))
    if n_classes is not None and len(labels) and int(labels.max()) >= n_classes:
        outside = sorted({int(v) for v in labels[labels >= n_classes][:1000]})[:5]
        raise DatasetFormatError(_BAD_LABEL_RANGE.format(
            path=labels_path, values=outside, what=what, top=n_classes - 1))
    return images, labels.astype(np.int64)


def load_mnist_idx(
    root: str | os.PathLike, *, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split from a folder holding MNIST-named idx files.

    Reads the original MNIST files, Fashion-MNIST's, or any data set distributed under
    the same four names (see :data:`IDX_FILES`), plain or gzipped.

    Parameters
    ----------
    root : str or path-like
        The folder (a leading ``~`` is expanded).
    split : {"train", "test"}, default="train"
        ``"train"``: the ``train-*`` files (60,000 images for MNIST); ``"test"``: the
        ``t10k-*`` files (10,000).

    Returns
    -------
    images : ndarray of uint8, shape (n, height, width)
        Grey levels 0-255.
    labels : ndarray of int64, shape (n,)

    Raises
    ------
    DatasetNotFoundError
        If a file of the split is missing; the message names the missing files and ``root``.
    NotADirectoryError
        If ``root`` is a file.
    DatasetFormatError
        If a file is damaged, or images and labels do not match.
    """
    return _load(Path(root).expanduser(), split, what="MNIST idx files", hint=_MNIST_HINT)


def load_fashion_mnist(
    root: str | os.PathLike | None = None, *, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """The real Fashion-MNIST images (Zalando, MIT licence) of one split, read offline.

    Parameters
    ----------
    root : str, path-like or None, default=None
        Folder of the four idx files (a leading ``~`` is expanded, also in the
        environment variable). None reads the environment variable
        :data:`FASHION_MNIST_ENV` (``REST_FAIR_FASHION_MNIST``) if set, else
        :data:`FASHION_MNIST_DIR`, where ``apt-get install dataset-fashion-mnist`` puts them.
    split : {"train", "test"}, default="train"
        60,000 training or 10,000 test images.

    Returns
    -------
    images : ndarray of uint8, shape (n, 28, 28)
        Grey levels 0-255 (the garment is bright on a black background).
    labels : ndarray of int64, shape (n,)
        Classes 0-9, named in :data:`FASHION_MNIST_CLASSES`; 6,000 (train) or 1,000 (test)
        of each.

    Raises
    ------
    DatasetNotFoundError
        If a file is missing; the message names the files, the folder searched and the
        install command ``apt-get install dataset-fashion-mnist``.
    NotADirectoryError
        If the folder is a file.
    DatasetFormatError
        If a file is damaged, holds images other than 28 x 28 or labels outside 0-9.

    Examples
    --------
    >>> from rest_fair.datasets import load_fashion_mnist
    >>> images, labels = load_fashion_mnist(split="test")  # doctest: +SKIP
    >>> images.shape, images.dtype                         # doctest: +SKIP
    ((10000, 28, 28), dtype('uint8'))
    """
    if root is None:
        root = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR
    hint = _FASHION_HINT.format(default=FASHION_MNIST_DIR, env=FASHION_MNIST_ENV)
    return _load(Path(root).expanduser(), split, what="Fashion-MNIST", hint=hint,
                 image_shape=(28, 28),
                 n_classes=len(FASHION_MNIST_CLASSES))
