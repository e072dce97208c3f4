"""Lazy loader for the DFA-format debiasing releases (Colored MNIST, Corrupted CIFAR-10, BFFHQ).

Expected layout (the format of the DFA / LfF releases)::

    <root>/<pct>/align/<class>/<name>_<label>_<bias>.png     training, bias-aligned
    <root>/<pct>/conflict/<class>/<name>_<label>_<bias>.png  training, bias-conflicting
    <root>/<pct>/valid/**/<name>_<label>_<bias>.png          validation (flat or in sub-folders)
    <root>/test/**/<name>_<label>_<bias>.png                 test

where ``<pct>`` is the share of bias-conflicting training samples (``0.5pct``, ``1pct``,
``2pct``, ``5pct``), and label and bias attribute are the last two ``_``-separated fields
of the file name stem. BFFHQ's release keeps its validation images in ``<root>/valid/``,
read where ``<root>/<pct>/valid/`` does not exist. Labels, bias attributes, conflict flags
and groups come from the names, so they can be passed to
:meth:`rest_fair.RESTClassifier.fit` (``y=ds.labels, groups=ds.conflict``) without reading
an image; images are read (with PIL) one item at a time. Hidden files (names starting
with ``.``, such as the ``._<name>.png`` companions macOS writes on exFAT drives) are
skipped; folders that are symbolic links are read as folders. Nothing here downloads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._requirements import import_optional
from .._validation import Interval
from ..exceptions import DatasetNotFoundError
from .colored import _BAD_SPLIT, SPLITS, _check_image_size
from .transforms import dfa_transforms, pil_to_tensor

__all__ = ["DFA_DATASETS", "DFAImageFolder", "DatasetNotFoundError", "load_dfa", "pct_folder"]

#: Known releases: number of classes and of bias values, and the folder name used by DFA.
DFA_DATASETS: dict[str, dict[str, Any]] = {
    "cmnist": {"n_classes": 10, "n_bias": 10, "folder": "cmnist"},
    "cifar10c": {"n_classes": 10, "n_bias": 10, "folder": "cifar10c"},
    "bffhq": {"n_classes": 2, "n_bias": 2, "folder": "bffhq"},
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

_NO_DOWNLOAD = (
    "rest_fair never downloads data (this machine may be offline, and the DFA releases are "
    "hosted on Google Drive links, which need a browser). Download the {name!r} release "
    "from the DFA authors' repository (Lee et al., 'Learning Debiased Representation via "
    "Disentangled Feature Augmentation', NeurIPS 2021) on a machine with network access, "
    "extract it and place it so that {root} contains '<pct>pct/align', '<pct>pct/conflict', "
    "'<pct>pct/valid' and 'test'; then call load_dfa(root, download=False)."
)
_MISSING_DIR = "DFA data folder not found: {path} (expected layout: {layout})."
_EMPTY_DIR = "DFA data folder {path} contains no images ({suffixes})."
_BAD_NAME = (
    "Cannot parse label and bias from the file name {path}: the stem must end with "
    "'_<label>_<bias>' (two integers)."
)
_BAD_PCT = (
    "conflict_pct must be a share in (0, 1) like 0.01, or a percentage in (0, 100) written "
    "like '1pct'; got {value!r}."
)
_AUGMENT_EVAL = (
    "augment=True is only allowed for split='train': evaluation must not use random "
    "training augmentation (got split={split!r})."
)
_UNKNOWN_DATASET = "dataset must be one of {names} or None; got {value!r}."
_NEGATIVE = "the {what} {value} in the file name {path} is negative."
_BAD_TRANSFORM = "transform must be 'auto', None or a callable; got {value!r}."
_OUT_OF_RANGE = "{what} {value} in {path} is outside [0, {k}) for dataset {name!r}."
_SHARE = Interval(Real, 0, 1, "neither")


def pct_folder(conflict_pct: float | str) -> str:
    """Folder name of a conflicting share: ``0.005 -> '0.5pct'``, ``'1pct' -> '1pct'``.

    Parameters
    ----------
    conflict_pct : float or str
        A share in (0, 1) or a folder name ending in ``pct``.

    Returns
    -------
    str
    """
    if isinstance(conflict_pct, str):
        if conflict_pct.endswith("pct"):
            number = conflict_pct[:-3]
            try:
                pct = float(number)
            except ValueError:
                raise ValueError(_BAD_PCT.format(value=conflict_pct)) from None
            if number != number.strip() or not 0 < pct < 100:
                raise ValueError(_BAD_PCT.format(value=conflict_pct))
            return conflict_pct
        raise ValueError(_BAD_PCT.format(value=conflict_pct))
    if not _SHARE.accepts(conflict_pct):
        raise ValueError(_BAD_PCT.format(value=conflict_pct))
    return f"{round(float(conflict_pct) * 100, 6):g}pct"


def _parse(path: Path) -> tuple[int, int]:
    fields = path.stem.split("_")
    if len(fields) < 3:
        raise ValueError(_BAD_NAME.format(path=path))
    try:
        return int(fields[-2]), int(fields[-1])
    except ValueError:
        raise ValueError(_BAD_NAME.format(path=path)) from None


def _images_under(folder: Path, layout: str) -> list[Path]:
    """The image files under ``folder``, sorted; folders that are symbolic links are
    followed (each real folder once), as Path.rglob does not."""
    if not folder.is_dir():
        raise DatasetNotFoundError(_MISSING_DIR.format(path=folder, layout=layout))
    images, seen = [], set()
    for parent, folders, files in os.walk(folder, followlinks=True):
        if os.path.realpath(parent) in seen:  # a link back up the tree, or a second link
            folders.clear()
            continue
        seen.add(os.path.realpath(parent))
        folders.sort()  # in name order: which of two links to one folder is read is fixed
        images += [path for path in map(Path(parent).joinpath, files)
                   if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
                   and path.is_file()]
    return sorted(images)


class DFAImageFolder(Dataset):
    """One split of a DFA-format release, read lazily.

    Items are ``(image, label, bias)``: a float32 tensor ``(3, H, W)`` after ``transform``
    and two Python ints. Only the file names are read at construction.

    Parameters
    ----------
    root : str or Path
        Folder of one release (the one holding ``<pct>pct/`` and ``test/``); a leading
        ``~`` is expanded.
    split : {"train", "valid", "test"}, default="train"
    conflict_pct : float or str, default="1pct"
        Which training share to read (also selects ``<pct>pct/valid``, where it exists, else
        ``valid/`` beside it, as in BFFHQ's release); ignored for test.
    dataset : {"cmnist", "cifar10c", "bffhq"} or None, default="cmnist"
        Selects the default transforms and the number of bias values; None infers the
        numbers from the file names and uses no normalisation.
    transform : callable, "auto" or None, default="auto"
        Applied to the ``(C, H, W)`` tensor in [0, 1]. ``"auto"`` is the DFA pipeline of
        ``dataset`` (:func:`~rest_fair.datasets.transforms.dfa_transforms`): the eval one
        unless ``augment`` is True.
    augment : bool, default=False
        Use the random training augmentation (train split only; an error otherwise).
    image_size : int or None
        Override the side length of the automatic transforms.

    Attributes
    ----------
    paths : list of Path
    labels, bias : ndarray of int64
        Parsed from the file names.
    conflict : ndarray of bool
        Training split: the file lies under ``conflict/``. Valid/test: ``label != bias``.
    groups : ndarray of int64
        ``label * n_bias + bias``.
    n_bias : int
    """

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "train",
        conflict_pct: float | str = "1pct",
        dataset: str | None = "cmnist",
        transform: Callable | str | None = "auto",
        augment: bool = False,
        image_size: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(_BAD_SPLIT.format(splits=SPLITS, value=split))
        if dataset is not None and (not isinstance(dataset, str) or dataset not in DFA_DATASETS):
            raise ValueError(_UNKNOWN_DATASET.format(names=tuple(DFA_DATASETS), value=dataset))
        if augment and split != "train":
            raise ValueError(_AUGMENT_EVAL.format(split=split))
        _check_image_size(image_size)
        if not (transform is None or transform == "auto" or callable(transform)):
            raise ValueError(_BAD_TRANSFORM.format(value=transform))
        self.root = Path(root).expanduser()
        self.split = split
        self.dataset = dataset
        self.conflict_pct = pct_folder(conflict_pct)
        self.augment = bool(augment)
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                _MISSING_DIR.format(path=self.root, layout="<root>/<pct>pct/..., <root>/test/")
            )
        pct_dir = self.root / self.conflict_pct
        flags: np.ndarray | None = None  # train: conflict flags from the folders
        if split == "train":
            align = _images_under(pct_dir / "align", "<pct>pct/align/<class>/*_<label>_<bias>.png")
            conflict = _images_under(
                pct_dir / "conflict", "<pct>pct/conflict/<class>/*_<label>_<bias>.png"
            )
            paths = align + conflict
            flags = np.r_[np.zeros(len(align), bool), np.ones(len(conflict), bool)]
            where = pct_dir
        elif split == "valid":
            where = pct_dir / "valid"
            if not where.is_dir() and (self.root / "valid").is_dir():
                where = self.root / "valid"  # BFFHQ's one validation set, beside <pct>pct/
            paths = _images_under(
                where, "<pct>pct/valid/**/*_<label>_<bias>.png, or valid/ beside <pct>pct/")
        else:
            where = self.root / "test"
            paths = _images_under(where, "test/<class>/*_<label>_<bias>.png")
        if not paths:
            raise DatasetNotFoundError(_EMPTY_DIR.format(path=where, suffixes=IMAGE_SUFFIXES))
        parsed = np.array([_parse(p) for p in paths], dtype=np.int64).reshape(-1, 2)
        self.paths = paths
        self.labels = parsed[:, 0].copy()
        self.bias = parsed[:, 1].copy()
        self.conflict = self.labels != self.bias if flags is None else flags
        if dataset is None:
            for what, values in (("label", self.labels), ("bias", self.bias)):
                if values.min() < 0:
                    i = int(np.argmin(values))
                    raise ValueError(_NEGATIVE.format(what=what, value=values[i], path=paths[i]))
            self.n_classes = int(self.labels.max()) + 1
            self.n_bias = int(self.bias.max()) + 1
        else:
            self.n_classes = DFA_DATASETS[dataset]["n_classes"]
            self.n_bias = DFA_DATASETS[dataset]["n_bias"]
            for what, values, k in (
                ("label", self.labels, self.n_classes),
                ("bias", self.bias, self.n_bias),
            ):
                bad = np.flatnonzero((values < 0) | (values >= k))
                if bad.size:
                    raise ValueError(
                        _OUT_OF_RANGE.format(
                            what=what, value=values[bad[0]], path=paths[bad[0]], k=k, name=dataset
                        )
                    )
        self.groups = self.labels * self.n_bias + self.bias
        if transform == "auto" and dataset is not None:
            transform = dfa_transforms(dataset, image_size=image_size)[
                "train" if self.augment else "eval"
            ]
        self.transform = None if transform == "auto" else transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image_module = import_optional("PIL.Image", extra="vision", package="pillow",
                                       caller="DFAImageFolder")
        with image_module.open(self.paths[index]) as image:
            x = pil_to_tensor(image.convert("RGB"))
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index]), int(self.bias[index])

    def to_numpy(self) -> np.ndarray:
        """Read every image (through ``transform``) into one float32 array ``(n, C, H, W)``.

        Only for small releases such as Colored MNIST; large ones should stay lazy.
        """
        return np.stack([self[i][0].numpy() for i in range(len(self))]).astype(np.float32)

    def __repr__(self) -> str:
        return (
            f"DFAImageFolder(root={str(self.root)!r}, split={self.split!r}, "
            f"conflict_pct={self.conflict_pct!r}, n={len(self)}, "
            f"n_conflicting={int(self.conflict.sum())})"
        )


def load_dfa(
    root: str | Path,
    *,
    dataset: str | None = "cmnist",
    conflict_pct: float | str = "1pct",
    augment_train: bool = False,
    image_size: int | None = None,
    download: bool = False,
) -> dict[str, DFAImageFolder]:
    """The train, valid and test splits of a DFA-format release.

    Parameters
    ----------
    root, conflict_pct, image_size
        As for :class:`~rest_fair.datasets.DFAImageFolder`.
    dataset : {"cmnist", "cifar10c", "bffhq"} or None, default="cmnist"
        None infers the numbers of classes and bias values from the file names of the
        three splits together, so that a group number names the same (label, bias) cell
        in each split.
    augment_train : bool, default=False
        Random augmentation for the training split only (valid/test always use the
        evaluation transform).
    download : bool, default=False
        Must stay False: rest_fair does not download. True raises
        :class:`DatasetNotFoundError` explaining where to place the files.

    Returns
    -------
    dict
        ``{"train": DFAImageFolder, "valid": ..., "test": ...}``.

    Examples
    --------
    >>> splits = load_dfa("data/cmnist", dataset="cmnist", conflict_pct=0.01)  # doctest: +SKIP
    >>> tr, va = splits["train"], splits["valid"]                              # doctest: +SKIP
    >>> clf.fit(tr, tr.labels, groups=tr.conflict,
    ...         validation_data=(va, va.labels, va.conflict))                  # doctest: +SKIP
    """
    if download:
        raise DatasetNotFoundError(
            _NO_DOWNLOAD.format(name=dataset, root=Path(root).expanduser()))
    splits = {
        split: DFAImageFolder(
            root,
            split=split,
            conflict_pct=conflict_pct,
            dataset=dataset,
            augment=augment_train and split == "train",
            image_size=image_size,
        )
        for split in SPLITS
    }
    if dataset is None:  # counted over the three splits: one group numbering for all
        n_classes = max(part.n_classes for part in splits.values())
        n_bias = max(part.n_bias for part in splits.values())
        for part in splits.values():
            part.n_classes, part.n_bias = n_classes, n_bias
            part.groups = part.labels * n_bias + part.bias
    return splits
