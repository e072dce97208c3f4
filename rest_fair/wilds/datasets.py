"""Loading WILDS datasets from disk, with clear errors and no surprise network access."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._downloads import socket_timeout
from ..exceptions import DatasetFormatError
from ._compat import import_wilds_module

__all__ = ["DATASETS", "DatasetSpec", "dataset_spec", "expected_layout", "load_wilds"]

_UNKNOWN = "Unknown WILDS dataset {name!r}; supported here: {names}."
_UNKNOWN_SPLIT = "Split {split!r} is not in {name}'s splits {splits}."
_MISSING_DATA = (
    "The WILDS {name} data was not found (missing: {missing}).\n"
    "Expected layout under root_dir={root}:\n{layout}\n"
    "Download it from https://wilds.stanford.edu/downloads (or call "
    "load_wilds(..., download=True) with network access) and unpack it there. "
    "If you unpacked the archive yourself, make sure the version file "
    "{release} exists (it may be empty)."
)
_DOWNLOAD_FAILED = (
    "Downloading the WILDS {name} data into {data_dir} did not complete (wilds printed the "
    "download error above). "
)
_INSIDE_DATA_DIR = (
    "\nroot_dir is the data directory itself; pass the folder that contains {dirname}, "
    "{parent}."
)
_BAD_TABLE = (
    "The WILDS {name} table {path} {problem}; wilds reads the columns {columns} from it.\n"
    "Expected layout under root_dir={root}:\n{layout}"
)
_UNALIGNED_TABLES = (
    "The WILDS {name} tables must have one row per sample, in the same order, but {counts}.\n"
    "Expected layout under root_dir={root}:\n{layout}"
)
_UNFINISHED_ARCHIVE = (
    "The WILDS {name} data in {data_dir} are incomplete: {archive} is left from a download or "
    "unpacking that did not finish (wilds deletes it once it has unpacked all of it, and "
    "otherwise unpacks it again as if it were complete, without a check). Delete {data_dir} "
    "and download again (load_wilds(..., download=True) with network access), or unpack the "
    "archive from https://wilds.stanford.edu/downloads there yourself; if you have unpacked "
    "a complete archive there, delete {archive}."
)
_DOWNLOAD_TIMEOUT_S = 60.0
#: The file wilds downloads a dataset's archive into, in the data directory.
_ARCHIVE = "archive.tar.gz"


@dataclass(frozen=True)
class DatasetSpec:
    """What rest_fair knows about one WILDS dataset.

    Attributes
    ----------
    name : str
        WILDS name (``dataset.dataset_name``), e.g. ``"celebA"``.
    module, class_name : str
        Where the ``WILDSDataset`` subclass lives.
    modality : {"image", "text"}
        What ``get_input`` returns: a PIL image or a string.
    group_fields : tuple of str
        Metadata fields whose combinations define the training groups, as in the
        WILDS/GroupDRO setups (Waterbirds: background x y; CelebA: male x y;
        CivilComments: black x y, the "label x Black" setting of the WILDS paper).
    required : tuple of str
        Paths, relative to the data directory, that must exist.
    layout : str
        Human-readable description of the files.
    version : str
        Dataset version in the directory name.
    image_dir : str
        Folder of the image files relative to the data directory (image datasets).
    columns : tuple of (str, tuple of str)
        The CSV tables of ``required`` and, for each, the columns that wilds reads from it.
        Where there are several, wilds reads them row by row together (row ``i`` of each
        is sample ``i``).
    values : tuple of (str, str, tuple or str)
        Columns whose values wilds turns into labels, groups or splits: the table, the
        column and its values, as a tuple, or ``"a number in [0, 1]"`` for the scores that
        wilds compares with 0.5 (an empty cell is read as below it).
    indexed : bool
        Whether wilds reads the first column of the tables as their index, not as data.
    numeric : tuple of (str, str)
        Tables that wilds reads whole as one array of numbers, each with the column it
        leaves out (CelebA's attributes, all but ``image_id``): every other column must
        hold numbers (not text, not booleans, which make the array one of objects).
    """

    name: str
    module: str
    class_name: str
    modality: str
    group_fields: tuple[str, ...]
    required: tuple[str, ...]
    layout: str
    version: str = "1.0"
    image_dir: str = ""
    columns: tuple[tuple[str, tuple[str, ...]], ...] = ()
    values: tuple[tuple[str, str, tuple | str], ...] = ()
    indexed: bool = False
    numeric: tuple[tuple[str, str], ...] = ()

    @property
    def dirname(self) -> str:
        """Name of the data directory under ``root_dir``, e.g. ``waterbirds_v1.0``."""
        return f"{self.name}_v{self.version}"

    @property
    def release_file(self) -> str:
        """Name of the version file WILDS looks for."""
        return f"RELEASE_v{self.version}.txt"


# CivilComments' identity columns: WILDS evaluates every identity x label group
_CIVIL_IDENTITIES = (
    "male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white",
)
# CivilComments' other metadata columns
_CIVIL_AUXILIARY = (
    "identity_any", "severe_toxicity", "obscene", "threat", "insult", "identity_attack",
    "sexual_explicit",
)
# the CivilComments columns that wilds compares with 0.5: the label and the metadata
_CIVIL_SCORES = ("toxicity", *_CIVIL_IDENTITIES, *_CIVIL_AUXILIARY)
_SHARE = "a number in [0, 1]"
_CIVIL_TABLE = "all_data_with_identities.csv"

#: The supported WILDS datasets by name: loader, modality, group fields and disk layout.
DATASETS: dict[str, DatasetSpec] = {
    "waterbirds": DatasetSpec(
        "waterbirds", "wilds.datasets.waterbirds_dataset", "WaterbirdsDataset", "image",
        group_fields=("background", "y"),
        required=("metadata.csv",),
        layout=(
            "  waterbirds_v1.0/RELEASE_v1.0.txt\n"
            "  waterbirds_v1.0/metadata.csv   columns img_filename, y (0 landbird / 1 waterbird),"
            " split (0 train / 1 val / 2 test), place (0 land / 1 water)\n"
            "  waterbirds_v1.0/<img_filename>  the images"
        ),
        columns=(("metadata.csv", ("img_filename", "y", "split", "place")),),
        values=(("metadata.csv", "y", (0, 1)), ("metadata.csv", "split", (0, 1, 2)),
                ("metadata.csv", "place", (0, 1))),
    ),
    "celebA": DatasetSpec(
        "celebA", "wilds.datasets.celebA_dataset", "CelebADataset", "image",
        group_fields=("male", "y"),
        required=("list_attr_celeba.csv", "list_eval_partition.csv", "img_align_celeba"),
        layout=(
            "  celebA_v1.0/RELEASE_v1.0.txt\n"
            "  celebA_v1.0/list_attr_celeba.csv     image_id + the 40 attributes valued -1/1"
            " (Blond_Hair is the label, Male the spurious attribute)\n"
            "  celebA_v1.0/list_eval_partition.csv  image_id, partition (0/1/2), same row order\n"
            "  celebA_v1.0/img_align_celeba/<image_id>  the images"
        ),
        image_dir="img_align_celeba",
        columns=(("list_attr_celeba.csv", ("image_id", "Blond_Hair", "Male")),
                 ("list_eval_partition.csv", ("partition",))),
        values=(("list_attr_celeba.csv", "Blond_Hair", (-1, 1)),
                ("list_attr_celeba.csv", "Male", (-1, 1)),
                ("list_eval_partition.csv", "partition", (0, 1, 2))),
        numeric=(("list_attr_celeba.csv", "image_id"),),
    ),
    "civilcomments": DatasetSpec(
        "civilcomments", "wilds.datasets.civilcomments_dataset", "CivilCommentsDataset", "text",
        group_fields=("black", "y"),
        required=("all_data_with_identities.csv",),
        layout=(
            "  civilcomments_v1.0/RELEASE_v1.0.txt\n"
            "  civilcomments_v1.0/all_data_with_identities.csv  first column the index;"
            " comment_text, split (train/val/test), toxicity, the identities male, female,"
            " LGBTQ, christian, muslim, other_religions, black, white and identity_any,"
            " severe_toxicity, obscene, threat, insult, identity_attack, sexual_explicit"
        ),
        columns=((_CIVIL_TABLE, ("comment_text", "split", *_CIVIL_SCORES)),),
        values=((_CIVIL_TABLE, "split", ("train", "val", "test")),
                *((_CIVIL_TABLE, column, _SHARE) for column in _CIVIL_SCORES)),
        indexed=True,
    ),
}
_ALIASES = {key.lower(): key for key in DATASETS}


def dataset_spec(name: str | Any) -> DatasetSpec:
    """The :class:`DatasetSpec` of a dataset name (case-insensitive) or WILDS dataset.

    Parameters
    ----------
    name : str or WILDSDataset
        ``"waterbirds"``, ``"celebA"`` (or ``"celeba"``), ``"civilcomments"``, or a
        dataset object, whose ``dataset_name`` is used.

    Returns
    -------
    DatasetSpec
    """
    key = getattr(name, "dataset_name", name)
    if not isinstance(key, str) or key.lower() not in _ALIASES:
        raise ValueError(_UNKNOWN.format(name=key, names=sorted(DATASETS)))
    return DATASETS[_ALIASES[key.lower()]]


def _check_split(dataset: Any, split: str) -> None:
    """Refuse a ``split`` that is not one of ``dataset.split_dict``."""
    if split not in dataset.split_dict:
        raise ValueError(_UNKNOWN_SPLIT.format(split=split, name=dataset.dataset_name,
                                               splits=list(dataset.split_dict)))


def expected_layout(name: str, root_dir: str | os.PathLike) -> str:
    """Description of the files :func:`load_wilds` needs for ``name`` under ``root_dir``."""
    spec = dataset_spec(name)
    return f"{Path(root_dir) / spec.dirname}:\n{spec.layout}"


def load_wilds(name: str, root_dir: str | os.PathLike, *, download: bool = False) -> Any:
    """Load a WILDS dataset from ``root_dir`` with the real ``wilds`` package.

    Parameters
    ----------
    name : {"waterbirds", "celebA", "civilcomments"}
        Dataset name (case-insensitive).
    root_dir : path
        Folder that contains ``<name>_v1.0/`` (the WILDS ``root_dir``).
    download : bool, default=False
        Let WILDS download the archive when the data is missing (network, several
        GB for CelebA). With ``False`` (default) nothing is fetched and missing data
        raises :class:`FileNotFoundError` at once.

    Returns
    -------
    wilds.datasets.wilds_dataset.WILDSDataset

    Raises
    ------
    FileNotFoundError
        When files are missing and ``download=False``, or the download did not bring them;
        the message names every missing path and the full expected layout. Also when the
        data directory holds the archive of a download or unpacking that did not finish
        (wilds deletes it once unpacked), before or after the call: wilds would take it as
        complete.
    DatasetFormatError
        When a table is empty, is not CSV, lacks a column that wilds reads or holds a value
        outside those of :attr:`DatasetSpec.values` (a label, spurious attribute or split
        that is not one of the dataset's) or a column of :attr:`DatasetSpec.numeric` that
        does not hold numbers, or when tables read row by row together (CelebA's
        attributes and partition) have different numbers of rows; the message names the
        files and the columns, values or row counts.
    ImportError
        When ``wilds`` (or the torchvision its dataset modules import) is missing.
    """
    spec = dataset_spec(name)
    root = Path(root_dir).expanduser()
    data_dir = root / spec.dirname
    paths = [data_dir / rel for rel in (spec.release_file, *spec.required)]
    archive = data_dir / _ARCHIVE
    unfinished = _UNFINISHED_ARCHIVE.format(name=spec.name, data_dir=data_dir, archive=archive)
    if archive.exists():
        raise FileNotFoundError(unfinished)
    missing = [path for path in paths if not path.exists()]
    if missing and not download:
        raise FileNotFoundError(_missing_data(spec, root, missing))
    if not missing:
        _check_tables(spec, root)
    dataset_class = getattr(import_wilds_module(spec.module), spec.class_name)
    timeout = socket_timeout(_DOWNLOAD_TIMEOUT_S) if missing else contextlib.nullcontext()
    with timeout, _pandas_compat(spec), warnings.catch_warnings():
        # wilds wraps read-only pandas arrays in tensors; harmless, but noisy
        warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")
        try:
            dataset = dataset_class(root_dir=str(root), download=bool(download and missing))
        except OSError as exc:  # wilds prints a failed download and reads the files anyway
            if archive.exists():
                raise FileNotFoundError(unfinished) from exc
            still = [path for path in paths if not path.exists()]
            if not (missing and still):
                raise
            raise FileNotFoundError(_DOWNLOAD_FAILED.format(name=spec.name, data_dir=data_dir)
                                    + _missing_data(spec, root, still)) from exc
    if archive.exists():  # wilds printed the failed unpacking and read what it had unpacked
        raise FileNotFoundError(unfinished)
    return dataset


def _missing_data(spec: DatasetSpec, root: Path, missing: list[Path]) -> str:
    """What :func:`load_wilds` says of ``missing`` files: the layout and where to get it."""
    inside = root.name == spec.dirname and not (root / spec.dirname).exists()
    hint = _INSIDE_DATA_DIR.format(dirname=spec.dirname, parent=root.parent) if inside else ""
    return _MISSING_DATA.format(
        name=spec.name, missing=", ".join(str(p) for p in missing), root=root,
        layout=spec.layout, release=root / spec.dirname / spec.release_file) + hint


def _check_tables(spec: DatasetSpec, root: Path) -> None:
    """Raise the :class:`DatasetFormatError` of :func:`load_wilds` for a table of ``spec``
    that is empty, is not CSV, lacks a column wilds reads or holds values wilds cannot map,
    and for tables read row by row together whose row counts differ: wilds reads such
    tables silently or fails naming no file (pandas' ``EmptyDataError``, a bare
    ``KeyError``, an ``IndexError``, a grouper error or a torch size mismatch)."""
    import pandas as pd

    counts: dict[Path, int] = {}
    for rel, columns in spec.columns:
        path = root / spec.dirname / rel
        checked = {column: allowed for table, column, allowed in spec.values if table == rel}
        left_out = dict(spec.numeric).get(rel)
        try:
            names = list(pd.read_csv(path, nrows=0).columns)
            absent = [c for c in columns if c not in (names[1:] if spec.indexed else names)]
            used = None if left_out else list(checked) or [columns[0]]  # None: every column
            frame = None if absent else pd.read_csv(path, usecols=used)
        except pd.errors.EmptyDataError:
            problem = "is empty"
        except (UnicodeDecodeError, pd.errors.ParserError) as exc:
            problem = f"cannot be read as CSV ({type(exc).__name__}: {exc})"
        else:
            if frame is None:
                problem = f"has no column {', '.join(repr(c) for c in absent)}"
                if spec.indexed and names[0] in absent:
                    problem += f" (wilds reads the first column, {names[0]!r}, as the index)"
            elif frame.empty:
                problem = "has a header but no rows"
            else:
                problem = _bad_values(frame, checked) or _not_numbers(frame, left_out)
            if problem is None:
                counts[path] = len(frame)
                continue
        raise DatasetFormatError(_BAD_TABLE.format(
            name=spec.name, path=path, problem=problem, columns=", ".join(columns), root=root,
            layout=spec.layout))
    if len(set(counts.values())) > 1:
        listed = " and ".join(f"{path} has {n} rows" for path, n in counts.items())
        raise DatasetFormatError(_UNALIGNED_TABLES.format(
            name=spec.name, counts=listed, root=root, layout=spec.layout))


def _bad_values(frame: Any, checked: dict[str, tuple | str]) -> str | None:
    """What is wrong with the first ``checked`` column of ``frame`` holding a value that it
    does not allow (see :attr:`DatasetSpec.values`), or ``None``."""
    import pandas as pd

    for column, allowed in checked.items():
        values = frame[column]
        if allowed == _SHARE:
            numbers = pd.to_numeric(values, errors="coerce")
            bad = (numbers.isna() & values.notna()) | (numbers < 0) | (numbers > 1)
        elif all(isinstance(v, str) for v in allowed):
            bad = ~values.isin(allowed)
        else:
            bad = ~pd.to_numeric(values, errors="coerce").isin(allowed)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            first = values.iloc[row : row + 1].tolist()[0]  # a Python value, for its repr
            return (f"holds {column!r} values other than {allowed} in {int(bad.sum())} of its "
                    f"{len(frame)} rows (the first: {first!r} in data row {row + 1})")
    return None


def _not_numbers(frame: Any, left_out: str | None) -> str | None:
    """What is wrong with the columns of ``frame`` but ``left_out`` that do not hold numbers
    (see :attr:`DatasetSpec.numeric`), or ``None``; ``None`` also where ``left_out`` is."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    if left_out is None:
        return None
    other = [column for column, dtype in frame.dtypes.items() if column != left_out
             and (is_bool_dtype(dtype) or not is_numeric_dtype(dtype))]
    if not other:
        return None
    return (f"holds columns of values other than numbers ({', '.join(map(repr, other))}); "
            f"wilds reads every column but {left_out!r} as one array of numbers")


@contextlib.contextmanager
def _pandas_compat(spec: DatasetSpec) -> Iterator[None]:
    """Let wilds' CivilComments loader run under pandas 3.

    wilds 2.0.0 writes integer split ids into the string column ``split``; with
    pandas >= 3 inferring the ``str`` dtype that raises ``TypeError``. Reading the
    CSV with object columns (``future.infer_string=False``) restores the old
    behaviour; the option is deprecated in pandas 3 and its warning silenced here.
    """
    import pandas as pd

    if spec.modality != "text" or int(pd.__version__.split(".")[0]) < 3:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*future.infer_string.*")
        with pd.option_context("future.infer_string", False):
            yield


