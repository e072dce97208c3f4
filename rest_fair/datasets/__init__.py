"""Debiasing data sets, all read offline.

* colour-biased sets (:data:`COLORED_DATASETS`, :func:`make_colored_dataset`): Colored
  MNIST (:func:`make_colored_mnist`), Colored Digits (:func:`make_colored_digits`) and
  Colored Fashion-MNIST (:func:`make_colored_fashion_mnist`), painted by :func:`colorize`;
* idx files of MNIST and Fashion-MNIST (:func:`load_fashion_mnist`, :func:`load_mnist_idx`,
  :func:`read_idx`);
* DFA-format release folders (:func:`load_dfa`, :class:`DFAImageFolder`).

The torch Datasets (DFA folders, :class:`ColoredImages`) are imported on first access, so
that the numpy-only builders stay cheap to import.
"""

from __future__ import annotations

import sys
from typing import Any

from .._lazy import lazy_attributes
from ..exceptions import DatasetNotFoundError
from .colored import (
    PALETTE,
    BiasedImageData,
    Split,
    colorize,
    load_mnist_5k,
    make_colored_digits,
    make_colored_mnist,
    n_conflicting,
)
from .idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    IDX_FILES,
    load_fashion_mnist,
    load_mnist_idx,
    read_idx,
)

__all__ = [
    "COLORED_DATASETS",
    "DFA_DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "IDX_FILES",
    "PALETTE",
    "BiasedImageData",
    "ColoredImages",
    "DFAImageFolder",
    "DatasetNotFoundError",
    "Split",
    "colorize",
    "load_dfa",
    "load_fashion_mnist",
    "load_mnist_5k",
    "load_mnist_idx",
    "make_colored_dataset",
    "make_colored_digits",
    "make_colored_fashion_mnist",
    "make_colored_mnist",
    "n_conflicting",
    "pct_folder",
    "read_idx",
]

#: The colour-biased data sets by name (the names ``rest-fair bench --dataset`` uses), with
#: the function of this package that builds each; see :func:`make_colored_dataset`.
COLORED_DATASETS: dict[str, str] = {
    "mnist_5k": "make_colored_mnist",
    "digits": "make_colored_digits",
    "fashion_mnist": "make_colored_fashion_mnist",
}

_UNKNOWN_NAME = "Unknown colour-biased data set {name!r}; expected one of {names}."


def make_colored_dataset(name: str, **kwargs: Any) -> BiasedImageData:
    """Build a colour-biased data set by its name in :data:`COLORED_DATASETS`.

    Parameters
    ----------
    name : {"mnist_5k", "digits", "fashion_mnist"}
        :func:`make_colored_mnist`, :func:`make_colored_digits` or
        :func:`make_colored_fashion_mnist`.
    **kwargs
        Passed to the builder; all three take ``conflict_ratio``, ``split_sizes``,
        ``image_size``, ``color_std``, ``palette`` and ``random_state``.

    Returns
    -------
    BiasedImageData
    """
    if name not in COLORED_DATASETS:
        raise ValueError(_UNKNOWN_NAME.format(name=name, names=tuple(COLORED_DATASETS)))
    builder = getattr(sys.modules[__name__], COLORED_DATASETS[name])
    return builder(**kwargs)


__getattr__, __dir__ = lazy_attributes(__name__, {
    ".dfa": ["DFA_DATASETS", "DFAImageFolder", "load_dfa", "pct_folder"],
    ".fashion": ["ColoredImages", "make_colored_fashion_mnist"],
})
