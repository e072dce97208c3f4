"""From a WILDS dataset to what :meth:`RESTClassifier.fit` takes: ``X``, ``y``, ``groups``.

- ``y`` is the WILDS label array.
- ``groups`` are the ids of a WILDS :class:`~wilds.common.grouper.CombinatorialGrouper`
  over the dataset's group fields, built on the full dataset exactly as WILDS builds
  its own (Waterbirds: ``background + 2 * y``; CelebA: ``male + 2 * y``;
  CivilComments: ``black + 2 * y``).
- ``X`` is a lazily loading torch Dataset of transformed image tensors, or an object
  array of raw strings for text (featurize them yourself, e.g. with a
  :class:`~sklearn.feature_extraction.text.TfidfVectorizer`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._requirements import import_optional
from .._validation import GENERATOR_SEED, POSITIVE_INT, Interval, check_param
from ._compat import import_wilds_module
from .datasets import DATASETS, _check_split, dataset_spec

__all__ = [
    "WILDSImageDataset",
    "WILDSSplit",
    "default_image_transform",
    "from_wilds",
    "split_wilds",
    "wilds_grouper",
]

_NOT_WILDS = "Expected a WILDSDataset or WILDSSubset; got {!r}."
_BAD_FIELDS = "groupby_fields {fields} are not metadata fields of {name}: {available}."
_BAD_TRANSFORM = "transform must be a callable, 'default' or None; got {!r}."
_FRAC = Interval(Real, 0, 1, "right")
_A_STRING = (
    "{name} must be a sequence of {what} names, e.g. [{value!r}]; got the string {value!r}."
)
_NO_GROUP_FIELDS = (
    "No default group fields for WILDS dataset {name!r}; pass groupby_fields=[...] "
    "(metadata fields: {available})."
)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class WILDSSplit:
    """One split of a WILDS dataset in the form :class:`RESTClassifier` takes.

    Attributes
    ----------
    X : torch.utils.data.Dataset or ndarray of str
        Inputs: a :class:`WILDSImageDataset` for images, an object array of strings
        for text (``""`` for an empty text, which wilds reads from its table as NaN).
    y : ndarray of shape (n_samples,)
        Labels.
    groups : ndarray of shape (n_samples,)
        WILDS grouper ids (see :attr:`group_names`).
    group_names : dict
        Group id -> WILDS group string, e.g. ``"y:landbird_background:land"`` (the
        part after ``acc_`` in WILDS' metric keys).
    metadata : pandas.DataFrame
        All metadata fields, one column each.
    metadata_array : torch.Tensor
        The raw WILDS metadata, as ``dataset.eval`` wants it.
    dataset_name, split : str
        Where it comes from; ``split`` is ``"all"`` for a whole dataset.
    subset : WILDSSubset or WILDSDataset
        The wrapped WILDS object.
    """

    X: Any
    y: np.ndarray
    groups: np.ndarray
    group_names: dict
    metadata: pd.DataFrame
    metadata_array: torch.Tensor
    dataset_name: str
    split: str
    subset: Any = field(repr=False)

    def __len__(self) -> int:
        return len(self.y)

    def validation_data(self, X: Any = None) -> tuple:
        """``(X, y, groups)`` for ``RESTClassifier.fit(validation_data=...)``.

        Parameters
        ----------
        X : optional
            Featurized inputs to use instead of :attr:`X` (e.g. TF-IDF of the text).
        """
        return (self.X if X is None else X, self.y, self.groups)


class WILDSImageDataset(torch.utils.data.Dataset):
    """Lazily loaded, transformed images of a WILDS dataset or subset.

    Item ``i`` is the transformed image tensor of sample ``i`` (no label: labels are
    given to ``fit`` as ``y``). Images are read from disk only when indexed.

    Parameters
    ----------
    subset : WILDSDataset or WILDSSubset
        Source of the images.
    transform : callable
        PIL image -> tensor, e.g. :func:`default_image_transform`.
    """

    def __init__(self, subset: Any, transform: Callable) -> None:
        self.dataset, self.indices = _base_and_indices(subset)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.dataset.get_input(int(self.indices[i])))


class _SquareCenterCrop:
    """Center crop to the largest square (CelebA faces are 178 x 218)."""

    def __call__(self, img: Any) -> Any:
        width, height = img.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return img.crop((left, top, left + side, top + side))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def default_image_transform(dataset: str | Any, *, image_size: int = 224) -> Callable:
    """Evaluation transform of WILDS' example code, at a chosen resolution.

    - Waterbirds: resize to ``image_size * 256 / 224``, center crop ``image_size``;
    - CelebA: center crop to a square, resize to ``image_size``;
    - others: resize to ``image_size`` x ``image_size``;

    then convert to a tensor and normalize with the ImageNet mean and std.
    ``image_size=224`` is WILDS' own setting; smaller sizes make CPU training cheap.

    Parameters
    ----------
    dataset : str or WILDSDataset
        Dataset name or object.
    image_size : int, default=224
        Output height and width.

    Returns
    -------
    torchvision.transforms.Compose
    """
    check_param("image_size", image_size, [POSITIVE_INT])
    transforms = _transforms()
    name = str(getattr(dataset, "dataset_name", dataset)).lower()
    size = int(image_size)
    if name == "waterbirds":
        resized = round(size * 256 / 224)
        steps: list = [transforms.Resize((resized, resized)), transforms.CenterCrop(size)]
    elif name == "celeba":
        steps = [_SquareCenterCrop(), transforms.Resize((size, size))]
    else:
        steps = [transforms.Resize((size, size))]
    return transforms.Compose([*steps, transforms.ToTensor(),
                               transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)])


def wilds_grouper(dataset: Any, groupby_fields: Sequence[str] | None = None) -> Any:
    """The WILDS :class:`CombinatorialGrouper` rest_fair uses for ``dataset``.

    Parameters
    ----------
    dataset : WILDSDataset or WILDSSubset
        A subset is replaced by its full dataset (WILDS requires that).
    groupby_fields : sequence of str, optional
        Metadata fields; default :attr:`DatasetSpec.group_fields`. They are put in
        metadata order, which keeps WILDS' group names consistent with the ids.

    Returns
    -------
    wilds.common.grouper.CombinatorialGrouper
    """
    base, _ = _base_and_indices(dataset)
    fields = _group_fields(base, groupby_fields)
    grouper_module = import_wilds_module("wilds.common.grouper")
    return grouper_module.CombinatorialGrouper(dataset=base, groupby_fields=fields)


def from_wilds(
    subset: Any,
    *,
    groupby_fields: Sequence[str] | None = None,
    transform: Callable | str | None = "default",
    image_size: int = 224,
    grouper: Any = None,
) -> WILDSSplit:
    """Convert a WILDS dataset or subset into ``X``, ``y`` and ``groups``.

    Parameters
    ----------
    subset : WILDSDataset or WILDSSubset
        E.g. ``dataset.get_subset("train")``. The order of samples is kept.
    groupby_fields : sequence of str, optional
        Metadata fields that define the groups (default: the dataset's usual ones,
        see :data:`rest_fair.wilds.DATASETS`).
    transform : callable, "default" or None, default="default"
        For image datasets: PIL image -> tensor. ``"default"`` is
        :func:`default_image_transform` at ``image_size``; ``None`` uses the
        subset's own ``transform`` attribute (must produce tensors). Ignored for text.
    image_size : int, default=224
        Resolution of the default transform.
    grouper : CombinatorialGrouper, optional
        Reuse a grouper (e.g. from :func:`wilds_grouper`) instead of building one.

    Returns
    -------
    WILDSSplit
    """
    base, indices = _base_and_indices(subset)
    if grouper is None:
        grouper = wilds_grouper(base, groupby_fields)
    rows = torch.as_tensor(indices, dtype=torch.long)
    metadata_array = base.metadata_array[rows]
    return WILDSSplit(
        X=_inputs(base, indices, subset, transform, image_size),
        y=np.asarray(base.y_array[rows]).astype(np.int64),
        groups=grouper.metadata_to_group(metadata_array).numpy().astype(np.int64),
        group_names={g: grouper.group_field_str(g) for g in range(grouper.n_groups)},
        metadata=pd.DataFrame(metadata_array.numpy(), columns=list(base.metadata_fields)),
        metadata_array=metadata_array,
        dataset_name=base.dataset_name,
        split=_split_name(base, subset),
        subset=subset,
    )


def split_wilds(
    dataset: Any,
    splits: Sequence[str] | None = None,
    *,
    groupby_fields: Sequence[str] | None = None,
    transform: Callable | str | None = "default",
    image_size: int = 224,
    frac: float = 1.0,
    random_state: int | None = 0,
) -> dict[str, WILDSSplit]:
    """:func:`from_wilds` for several splits of a dataset, sharing one grouper.

    Parameters
    ----------
    dataset : WILDSDataset
        Full dataset, e.g. from :func:`rest_fair.wilds.load_wilds`.
    splits : sequence of str, optional
        Default: all the dataset's splits (``train``, ``val``, ``test``).
    groupby_fields, transform, image_size
        As in :func:`from_wilds`.
    frac : float, default=1.0
        Keep this random fraction of the *training* split only (quick runs); the
        evaluation splits are always complete so their metrics stay official.
    random_state : int, Generator or None, default=0
        Seed of that subsampling: an integer in [0, 2**32 - 1] (as for
        :class:`~rest_fair.RESTClassifier`), or a generator to draw from.

    Returns
    -------
    dict
        Split name -> :class:`WILDSSplit`.
    """
    check_param("frac", frac, [_FRAC])
    check_param("random_state", random_state, GENERATOR_SEED)
    if isinstance(splits, str):
        raise ValueError(_A_STRING.format(name="splits", what="split", value=splits))
    split_dict = dataset.split_dict  # an object without splits fails here, before the grouper
    names = list(split_dict) if splits is None else list(splits)
    grouper = wilds_grouper(dataset, groupby_fields)
    out = {}
    for split in names:
        _check_split(dataset, split)
        subset = dataset.get_subset(split)
        if split == "train" and frac < 1.0:
            rng = np.random.default_rng(random_state)
            keep = max(1, round(len(subset.indices) * frac))
            subset.indices = np.sort(rng.choice(subset.indices, size=keep, replace=False))
        out[split] = from_wilds(subset, transform=transform, image_size=image_size, grouper=grouper)
    return out


def _base_and_indices(subset: Any) -> tuple[Any, np.ndarray]:
    if hasattr(subset, "dataset") and hasattr(subset, "indices"):
        return subset.dataset, np.asarray(subset.indices, dtype=np.int64)
    if hasattr(subset, "metadata_array") and hasattr(subset, "get_input"):
        return subset, np.arange(len(subset), dtype=np.int64)
    raise TypeError(_NOT_WILDS.format(subset))


def _group_fields(base: Any, groupby_fields: Sequence[str] | None) -> list[str]:
    available = list(base.metadata_fields)
    if isinstance(groupby_fields, str):  # read letter by letter, "y" would pass
        raise ValueError(_A_STRING.format(name="groupby_fields", what="metadata field",
                                          value=groupby_fields))
    if groupby_fields is None:
        if base.dataset_name.lower() not in {k.lower() for k in DATASETS}:
            raise ValueError(_NO_GROUP_FIELDS.format(name=base.dataset_name, available=available))
        groupby_fields = dataset_spec(base.dataset_name).group_fields
    fields = [str(f) for f in groupby_fields]
    unknown = [f for f in fields if f not in available]
    if unknown:
        raise ValueError(_BAD_FIELDS.format(fields=unknown, name=base.dataset_name,
                                            available=available))
    return sorted(set(fields), key=available.index)


def _inputs(base: Any, indices: np.ndarray, subset: Any, transform: Callable | str | None,
            image_size: int) -> Any:
    """The inputs of ``from_wilds``: an object array of texts, or a WILDSImageDataset."""
    sample = base.get_input(int(indices[0])) if len(indices) else None
    if isinstance(sample, str) or _modality(base) == "text":
        texts = [base.get_input(int(i)) for i in indices]
        # pandas reads an empty text cell of a WILDS table as NaN: the text is ""
        return np.asarray(["" if isinstance(t, float) and t != t else t for t in texts],
                          dtype=object)
    if isinstance(transform, str):
        if transform != "default":
            raise ValueError(_BAD_TRANSFORM.format(transform))
        transform = default_image_transform(base, image_size=image_size)
    elif transform is None:
        transform = getattr(subset, "transform", None) or _transforms().ToTensor()
    return WILDSImageDataset(subset, transform)


def _modality(base: Any) -> str | None:
    try:
        return dataset_spec(base.dataset_name).modality
    except ValueError:
        return None


def _transforms() -> Any:
    """``torchvision.transforms``, or an ImportError naming the ``wilds`` extra."""
    return import_optional("torchvision.transforms", extra="wilds", package="torchvision",
                           caller="The WILDS image transforms")


def _split_name(base: Any, subset: Any) -> str:
    if subset is base:
        return "all"
    ids = np.unique(np.asarray(base.split_array)[_base_and_indices(subset)[1]])
    names = [name for name, i in base.split_dict.items() if i in set(ids.tolist())]
    return names[0] if len(names) == 1 else "+".join(names)
