"""Colored Fashion-MNIST: the Colored MNIST protocol on 70,000 real images, painted on access.

Painted float32, the full 54,000 / 6,000 / 10,000 images would take 660 MB; each split is
kept as a :class:`ColoredImages` instead -- uint8 grey images plus one colour per sample,
about 56 MB in all -- that paints only the items and arrays asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.utils.data import Dataset

from .._validation import GENERATOR_SEED, POSITIVE_INT, check_param
from .colored import (
    BiasedImageData,
    Split,
    _check_image_size,
    _check_palette,
    _check_ratio,
    _check_split_sizes,
    _colored_splits,
    _paint,
    _resize,
    _stratified_split,
)
from .idx import load_fashion_mnist

__all__ = ["ColoredImages", "make_colored_fashion_mnist"]

#: Share of the training file held out, stratified, as the validation split by default.
VALID_FRACTION = 0.1

_BAD_IMAGES = "images must be uint8 of shape (n, height, width); got {dtype} {shape}."
_BAD_LENGTHS = (
    "labels, bias and colors must have one entry per image ({n}); got shapes "
    "{labels}, {bias} and {colors} (colors: (n, 3))."
)
_BAD_IDS = (
    "{name} must be integers in [0, {top}) (groups are labels * n_bias + bias); got {got}."
)
_BAD_COLORS = "colors must be RGB values in [0, 1]; got values outside [0, 1] or NaN."
_BAD_INDICES = (
    "indices must be integer positions or a boolean mask of the {n} images; got {dtype} values."
)
_BAD_COUNTS = (
    "split_sizes must be None or three positive integers (train, valid, test) with "
    "train + valid <= {n_train} (the training file) and test <= {n_test} (the test file); "
    "got {value!r}."
)


class ColoredImages(Dataset):
    """Grey-scale images kept as uint8 and painted, one colour per sample, on access.

    A map-style torch Dataset: :class:`~rest_fair.RESTClassifier` reads it batch by batch
    (``fit(ds, ds.labels, groups=ds.conflict)``), and only the batch is ever painted.
    Painting is :func:`~rest_fair.datasets.colorize`'s (pixel = grey level / 255 x colour).

    Parameters
    ----------
    images : ndarray of uint8, shape (n, H, W)
        Grey levels; kept as given (not copied).
    labels : array-like of int, shape (n,)
        Class of each image.
    bias : array-like of int, shape (n,)
        Colour index of each image (the bias attribute).
    colors : array-like of float, shape (n, 3)
        RGB stroke colour of each image, in [0, 1].
    n_bias : int
        Number of colours (for :attr:`groups`): every ``bias`` lies in ``[0, n_bias)``.
    image_size : int or None, default=None
        Resize the (square) images to this side (bilinear, as
        :func:`~rest_fair.datasets.make_colored_mnist` does) when they are painted.

    Attributes
    ----------
    images, labels, bias, colors, n_bias, image_size
        The parameters, ``labels`` and ``bias`` as int64, ``colors`` as float32.
    conflict : ndarray of bool, shape (n,)
        ``bias != labels``.
    groups : ndarray of int64, shape (n,)
        ``labels * n_bias + bias``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: ArrayLike,
        bias: ArrayLike,
        colors: ArrayLike,
        *,
        n_bias: int,
        image_size: int | None = None,
    ) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(
                _BAD_IMAGES.format(
                    dtype=getattr(images, "dtype", type(images).__name__),
                    shape=getattr(images, "shape", None),
                )
            )
        _check_image_size(image_size)
        check_param("n_bias", n_bias, [POSITIVE_INT])
        labels, bias = np.asarray(labels), np.asarray(bias)
        colors = np.asarray(colors, dtype=np.float32)
        n = len(images)
        if labels.shape != (n,) or bias.shape != (n,) or colors.shape != (n, 3):
            raise ValueError(
                _BAD_LENGTHS.format(
                    n=n, labels=labels.shape, bias=bias.shape, colors=colors.shape
                )
            )
        for name, values, top in (("labels", labels, float("inf")), ("bias", bias, n_bias)):
            if not n:
                continue
            if not np.issubdtype(values.dtype, np.integer):
                raise ValueError(_BAD_IDS.format(name=name, top=top, got=f"{values.dtype} values"))
            if values.min() < 0 or values.max() >= top:  # groups would be negative or collide
                raise ValueError(_BAD_IDS.format(
                    name=name, top=top, got=f"values from {values.min()} to {values.max()}"))
        if not np.all((colors >= 0) & (colors <= 1)):
            raise ValueError(_BAD_COLORS)
        labels, bias = labels.astype(np.int64), bias.astype(np.int64)
        self.images = images
        self.labels = labels
        self.bias = bias
        self.colors = colors
        self.conflict = bias != labels
        self.groups = labels * int(n_bias) + bias
        self.n_bias = int(n_bias)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(3, H, W)`` of one painted image."""
        if self.image_size is None:
            return (3, *self.images.shape[1:])
        return (3, self.image_size, self.image_size)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays of this data set (images, labels, colours, groups)."""
        arrays = (self.images, self.labels, self.bias, self.colors, self.conflict, self.groups)
        return sum(a.nbytes for a in arrays)

    def to_numpy(self, indices: ArrayLike | None = None) -> np.ndarray:
        """Paint the images at ``indices`` (all when None) into one float32 array.

        Parameters
        ----------
        indices : array-like of int or bool, or None, default=None
            Positions to paint, in the order wanted, or a boolean mask of the images (e.g.
            ``ds.conflict``), as numpy indexes.

        Returns
        -------
        ndarray of float32, shape (n_indices, 3, H, W)
            Values in [0, 1]. The whole full-size training split takes 507 MB.

        Raises
        ------
        IndexError
            If ``indices`` holds values that are neither integers nor booleans, or positions
            out of range.
        """
        index = slice(None) if indices is None else np.asarray(indices)
        if not isinstance(index, slice) and index.dtype.kind not in "iub":
            if index.size:  # a float position, cut to an integer, would paint another image
                raise IndexError(_BAD_INDICES.format(n=len(self), dtype=index.dtype))
            index = index.astype(np.intp)  # [] is float64
        grey = self.images[index]
        if self.image_size is not None:
            grey = _resize(grey.astype(np.float32) / 255.0, self.image_size)
        return _paint(grey, self.colors[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int, int]]:
        """A batch of items, painted together (the DataLoader's batched fetch)."""
        X = torch.from_numpy(self.to_numpy(indices))
        return [
            (X[i], int(self.labels[j]), int(self.bias[j])) for i, j in enumerate(indices)
        ]

    def __repr__(self) -> str:
        return (
            f"ColoredImages(n={len(self)}, image_shape={self.image_shape}, "
            f"n_conflicting={int(self.conflict.sum())}, nbytes={self.nbytes})"
        )


def _resolve_counts(
    split_sizes: Sequence[int] | None, n_train_file: int, n_test_file: int
) -> tuple[int, int, int]:
    if split_sizes is None:
        n_valid = round(VALID_FRACTION * n_train_file)
        return n_train_file - n_valid, n_valid, n_test_file
    message = _BAD_COUNTS.format(n_train=n_train_file, n_test=n_test_file, value=split_sizes)
    try:
        sizes = [float(s) for s in split_sizes]
        counts = [int(s) for s in sizes]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite size
        raise ValueError(message) from None
    if (
        len(counts) != 3
        or counts != sizes
        or min(counts) <= 0
        or any(isinstance(s, bool) for s in split_sizes)
        or counts[0] + counts[1] > n_train_file
        or counts[2] > n_test_file
    ):
        raise ValueError(message)
    return counts[0], counts[1], counts[2]


def _stratified(
    index: np.ndarray, size: int, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` positions of ``index`` drawn stratified by label, and the others (sorted)."""
    chosen, others = _stratified_split(index, size, labels, seed)
    return np.sort(chosen), np.sort(others)


def make_colored_fashion_mnist(
    *,
    conflict_ratio: float = 0.01,
    split_sizes: Sequence[int] | None = None,
    image_size: int | None = None,
    color_std: float = 0.0,
    palette: ArrayLike | None = None,
    random_state: int | None = 0,
    root: str | os.PathLike | None = None,
) -> BiasedImageData:
    """Colored Fashion-MNIST, full size (54k / 6k / 10k) or subsampled, stored as uint8.

    The Colored MNIST protocol of :func:`~rest_fair.datasets.make_colored_mnist` on the
    real Fashion-MNIST images: the validation split is drawn, stratified by class, from the
    60,000 training images (6,000 by default), the training split is (a stratified
    subsample of) the rest, and the test split is (a stratified subsample of) the 10,000
    test images. The training split is biased with exactly
    :func:`n_conflicting(conflict_ratio, n_train) <rest_fair.datasets.n_conflicting>`
    bias-conflicting samples (270 / 540 / 1,080 / 2,700 of 54,000 at 0.5 / 1 / 2 / 5 %);
    validation and test are unbiased (60 and 100 images per (class, colour) cell at full
    size). For a given seed the validation split does not depend on the training size.

    Parameters
    ----------
    conflict_ratio, color_std, palette, random_state
        As for :func:`~rest_fair.datasets.make_colored_mnist`.
    split_sizes : three ints or None, default=None
        Train, valid and test sizes. None: 90 % / 10 % of the training file and the whole
        test file (54,000 / 6,000 / 10,000).
    image_size : int or None, default=None
        Resize the images to this side when they are painted; None keeps 28.
    root : str, path-like or None, default=None
        Folder of the idx files, as for :func:`~rest_fair.datasets.load_fashion_mnist`
        (None: the environment variable ``REST_FAIR_FASHION_MNIST``, else Debian's folder).
        A folder of the original MNIST idx files gives Colored MNIST at the same scale.

    Returns
    -------
    BiasedImageData
        ``X_train``, ``X_valid`` and ``X_test`` are :class:`ColoredImages`; the label,
        bias, conflict and group arrays are those of the data sets (not copies).

    Raises
    ------
    DatasetNotFoundError
        If the idx files are not there; the message gives the install command
        ``apt-get install dataset-fashion-mnist``.

    Examples
    --------
    >>> from rest_fair.datasets import make_colored_fashion_mnist
    >>> data = make_colored_fashion_mnist(conflict_ratio=0.01)   # doctest: +SKIP
    >>> len(data.X_train), int(data.conflict_train.sum())        # doctest: +SKIP
    (54000, 540)
    >>> batch = data.X_train.to_numpy(range(256))                # doctest: +SKIP
    >>> batch.shape, batch.dtype                                 # doctest: +SKIP
    ((256, 3, 28, 28), dtype('float32'))
    """
    _check_ratio(conflict_ratio)
    check_param("random_state", random_state, GENERATOR_SEED)
    palette = _check_palette(palette)
    _check_image_size(image_size)
    train_images, train_labels = load_fashion_mnist(root, split="train")
    test_images, test_labels = load_fashion_mnist(root, split="test")
    n_train, n_valid, n_test = _resolve_counts(split_sizes, len(train_labels), len(test_labels))
    _check_split_sizes((n_train, n_valid, n_test), train_labels, split_sizes)
    seeds = [int(s) for s in np.random.default_rng(random_state).integers(0, 2**31 - 1, size=6)]
    valid_idx, rest = _stratified(np.arange(len(train_labels)), n_valid, train_labels, seeds[0])
    train_idx, _ = _stratified(rest, n_train, train_labels, seeds[1])
    test_idx, _ = _stratified(np.arange(len(test_labels)), n_test, test_labels, seeds[2])

    def to_split(images: np.ndarray, y: np.ndarray, bias: np.ndarray, colors: np.ndarray) -> Split:
        ds = ColoredImages(images, y, bias, colors, n_bias=len(palette), image_size=image_size)
        return Split(ds, ds.labels, ds.bias, ds.conflict, ds.groups)

    parts = [(train_images[train_idx], train_labels[train_idx]),
             (train_images[valid_idx], train_labels[valid_idx]),
             (test_images[test_idx], test_labels[test_idx])]
    source = "fashion_mnist" if root is None else f"idx:{Path(root).expanduser()}"
    return _colored_splits(parts, seeds[3:], to_split, conflict_ratio=conflict_ratio,
                           palette=palette, color_std=color_std, source=source,
                           random_state=random_state)
