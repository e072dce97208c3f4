"""rest_fair.wilds loading and adapter, against the real wilds package on tiny layouts."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from wilds.datasets import download_utils
from wilds.datasets.wilds_dataset import WILDSDataset

from rest_fair.wilds import (
    WILDSImageDataset,
    dataset_spec,
    from_wilds,
    load_wilds,
    make_synthetic_layout,
    split_wilds,
    wilds_grouper,
)

NAMES = ("waterbirds", "celebA", "civilcomments")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wilds_root")
    for name in NAMES:
        make_synthetic_layout(name, root, image_size=8)
    return root


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_core_package_does_not_import_wilds_or_torchvision():
    result = _run(
        """
        import sys
        import rest_fair, rest_fair.metrics, rest_fair.fairness, rest_fair.wilds
        from rest_fair import RESTClassifier
        import rest_fair.wilds.cli
        bad = [m for m in ("wilds", "torchvision", "outdated") if m in sys.modules]
        print("LOADED", bad)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


_NETWORK_SPY = """
    import socket, sys, threading, time, types
    calls = []
    def refuse(*args, **kwargs):
        calls.append(args[0] if args else None)
        raise OSError("network blocked by the test")
    socket.getaddrinfo = refuse
    socket.create_connection = refuse
    # outdated needs pkg_resources, which new setuptools dropped; without it the
    # check fails before reaching the network, which would hide the problem.
    import packaging.version
    fake = types.ModuleType("pkg_resources")
    fake.parse_version = packaging.version.parse
    sys.modules.setdefault("pkg_resources", fake)
"""


def test_import_wilds_makes_no_network_call():
    pytest.importorskip("packaging")
    guarded = _run(
        _NETWORK_SPY
        + """
    from rest_fair.wilds import import_wilds
    import_wilds()
    time.sleep(1.0)
    print("CALLS", len(calls), "THREADS", threading.active_count(),
          "OUTDATED", sys.modules.get("outdated", "absent"))
    """
    )
    assert guarded.returncode == 0, guarded.stderr
    assert "CALLS 0 THREADS 1 OUTDATED absent" in guarded.stdout, guarded.stdout


def test_plain_import_wilds_would_query_pypi():
    """Control for the test above: the spy does see wilds' version check."""
    try:
        import outdated  # noqa: F401
    except ImportError:
        pytest.skip("the `outdated` package is not installed, so wilds makes no check")
    plain = _run(
        _NETWORK_SPY
        + """
    import os
    os.environ["OUTDATED_IGNORE"] = "1"   # does not stop the request
    import wilds
    deadline = time.monotonic() + 60  # generous: the loop ends as soon as the call is seen
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    print("CALLS", len(calls))
    """
    )
    assert plain.returncode == 0, plain.stderr
    assert "CALLS 0" not in plain.stdout, plain.stdout


def test_missing_data_names_layout_and_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_wilds("waterbirds", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "waterbirds_v1.0" / "metadata.csv") in message
    assert "RELEASE_v1.0.txt" in message
    assert "img_filename" in message
    # a data dir without the version file is reported too (WILDS would try to download)
    make_synthetic_layout("celebA", tmp_path, image_size=8)
    (tmp_path / "celebA_v1.0" / "RELEASE_v1.0.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"RELEASE_v1\.0\.txt"):
        load_wilds("celeba", tmp_path)


def test_a_download_that_fails_names_the_layout(tmp_path, monkeypatch):
    # wilds prints the failed download and then fails reading metadata.csv: "[Errno 2] No
    # such file or directory", with no word of the download or of where to put the data
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # the discard port: refused
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FileNotFoundError) as info:
        load_wilds("waterbirds", tmp_path, download=True)
    message = str(info.value)
    assert f"Downloading the WILDS waterbirds data into {tmp_path / 'waterbirds_v1.0'} did " \
           "not complete" in message
    assert "https://wilds.stanford.edu/downloads" in message
    assert dataset_spec("waterbirds").layout in message


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="supported here"):
        load_wilds("imagenet", tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_load_real_wilds_dataset(root, name):
    dataset = load_wilds(name.upper() if name == "celebA" else name, root)
    assert isinstance(dataset, WILDSDataset)
    assert dataset.dataset_name == name
    assert len(dataset) == 112
    # CivilComments under pandas 3: split ids became integers, subsets work
    assert len(dataset.get_subset("test")) == 24


def test_waterbirds_groups_match_wilds_grouper(root):
    dataset = load_wilds("waterbirds", root)
    part = from_wilds(dataset.get_subset("train"), image_size=8)
    background = part.metadata["background"].to_numpy()
    np.testing.assert_array_equal(part.groups, background + 2 * part.y)
    wilds_ids = dataset._eval_grouper.metadata_to_group(part.metadata_array).numpy()
    np.testing.assert_array_equal(part.groups, wilds_ids)
    assert part.group_names[1] == "y:landbird_background:water"
    assert part.group_names[2] == "y:waterbird_background:land"
    np.testing.assert_array_equal(np.bincount(part.groups), [28, 4, 4, 28])
    assert part.split == "train"


def test_celeba_groups_match_wilds_grouper(root):
    dataset = load_wilds("celebA", root)
    part = from_wilds(dataset.get_subset("val"), image_size=8)
    np.testing.assert_array_equal(part.groups, part.metadata["male"].to_numpy() + 2 * part.y)
    wilds_ids = dataset._eval_grouper.metadata_to_group(part.metadata_array).numpy()
    np.testing.assert_array_equal(part.groups, wilds_ids)
    assert part.group_names[3] == "y:blond_male:1"


def test_civilcomments_text_and_groups(root):
    dataset = load_wilds("civilcomments", root)
    part = from_wilds(dataset.get_subset("train"))
    assert part.X.dtype == object and isinstance(part.X[0], str)
    assert part.X[0] == dataset.get_input(int(dataset.get_subset("train").indices[0]))
    np.testing.assert_array_equal(part.groups, part.metadata["black"].to_numpy() + 2 * part.y)
    other = from_wilds(dataset.get_subset("train"), groupby_fields=["y", "female"])
    np.testing.assert_array_equal(other.groups, part.metadata["female"].to_numpy() + 2 * part.y)
    assert other.group_names[1] == "y:0_female:1"


def test_an_empty_comment_is_an_empty_string(tmp_path):
    # wilds reads an empty comment_text cell as NaN, which no text pipeline takes (TF-IDF:
    # "np.nan is an invalid document"; a text model: "element 0 is float")
    import pandas as pd

    path = make_synthetic_layout("civilcomments", tmp_path) / "all_data_with_identities.csv"
    table = pd.read_csv(path, index_col=0)
    table.loc[table.index[0], "comment_text"] = ""
    table.to_csv(path)
    dataset = load_wilds("civilcomments", tmp_path)
    assert not isinstance(dataset.get_input(0), str)
    part = from_wilds(dataset)
    assert part.X[0] == ""
    assert all(isinstance(text, str) for text in part.X)


def test_images_are_loaded_lazily_and_transformed(root, monkeypatch):
    dataset = load_wilds("waterbirds", root)
    opened = []
    original = type(dataset).get_input

    def counting(self, idx):
        opened.append(idx)
        return original(self, idx)

    monkeypatch.setattr(type(dataset), "get_input", counting)
    part = from_wilds(dataset.get_subset("test"), image_size=8)
    assert isinstance(part.X, WILDSImageDataset)
    assert isinstance(part.X, torch.utils.data.Dataset)
    n_before = len(opened)
    assert n_before <= 1  # at most one probe to detect the modality
    x = part.X[5]
    assert len(opened) == n_before + 1
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) < 0.0  # normalized with the ImageNet mean/std
    batch = next(iter(torch.utils.data.DataLoader(part.X, batch_size=4)))
    assert batch.shape == (4, 3, 8, 8)


def test_celeba_transform_crops_to_square(root):
    dataset = load_wilds("celebA", root)
    img = dataset.get_input(0)
    assert img.size[0] != img.size[1]
    part = from_wilds(dataset, image_size=6)
    assert part.split == "all"
    assert part.X[0].shape == (3, 6, 6)


def test_split_wilds_subsamples_train_only(root):
    dataset = load_wilds("waterbirds", root)
    parts = split_wilds(dataset, image_size=8, frac=0.5, random_state=1)
    assert set(parts) == {"train", "val", "test"}
    assert len(parts["train"]) == 32 and len(parts["val"]) == 24 and len(parts["test"]) == 24
    again = split_wilds(dataset, image_size=8, frac=0.5, random_state=1)
    np.testing.assert_array_equal(parts["train"].subset.indices, again["train"].subset.indices)
    with pytest.raises(ValueError, match="frac"):
        split_wilds(dataset, frac=0.0)
    with pytest.raises(ValueError, match="not in"):
        split_wilds(dataset, ["train", "id_test"])
    # a string was read letter by letter ("Split 't' is not in ..."), frac="a" failed in
    # float(), and an image_size of 0 only when the first image was read, in torchvision
    with pytest.raises(ValueError, match=r"splits must be a sequence .* got the string 'train'"):
        split_wilds(dataset, "train")
    with pytest.raises(ValueError, match=r"frac must be a number in \(0, 1\]; got 'a'"):
        split_wilds(dataset, frac="a")
    for size in (0, 2.5):
        with pytest.raises(ValueError, match="image_size must be an integer in"):
            split_wilds(dataset, image_size=size)
    # numpy's "expected non-negative integer" named no argument; True was taken as 1
    for seed in (-1, True, 1.5):
        with pytest.raises(ValueError, match=r"random_state must be None, a Generator or an "
                                             r"integer in \[0, 4294967295\]"):
            split_wilds(dataset, frac=0.5, random_state=seed)
    drawn = split_wilds(dataset, ["train"], frac=0.5, random_state=np.random.default_rng(1))
    assert len(drawn["train"]) == 32


def test_bad_group_fields(root):
    dataset = load_wilds("waterbirds", root)
    with pytest.raises(ValueError, match="not metadata fields"):
        wilds_grouper(dataset, ["colour"])
    # a string was read letter by letter: "y" passed as ["y"], "background" was refused as
    # the fields ['b', 'a', 'c', ...]
    for field in ("y", "background"):
        with pytest.raises(ValueError, match=r"groupby_fields must be a sequence of metadata "
                                             f"field names, e.g. \\['{field}'\\]; got the string"):
            from_wilds(dataset, groupby_fields=field)
    with pytest.raises(TypeError, match="WILDSDataset"):
        from_wilds(np.zeros(3))


@pytest.mark.parametrize("name", ["waterbirds", "celebA", "civilcomments"])
def test_an_interrupted_synthetic_layout_is_written_again(tmp_path, monkeypatch, name):
    # its release file was written first: a layout that a Ctrl-C cut short (rest-fair
    # wilds --synthetic ends with "nothing was run") was taken as complete by the next run,
    # which then failed for want of its tables
    import pandas as pd

    real_to_csv = pd.DataFrame.to_csv

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_layout(name, tmp_path, image_size=8)
    spec = dataset_spec(name)
    assert not (tmp_path / spec.dirname / spec.release_file).exists()
    monkeypatch.setattr(pd.DataFrame, "to_csv", real_to_csv)
    make_synthetic_layout(name, tmp_path, image_size=8)
    load_wilds(name, tmp_path)  # complete


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"image_size": 0}, "image_size must be an integer in"),
    ({"image_size": 2.5}, "image_size must be an integer in"),
    ({"seed": -1}, "seed must be an integer in"),
    ({"group_counts": {"train": (4, 1.5, 1, 4)}}, "non-negative integer counts"),
])
def test_bad_synthetic_layout_arguments_are_named_before_writing(tmp_path, kwargs, match):
    # they failed in PIL or numpy ("cannot write empty image", "expected non-negative
    # integer"), or a count of 1.5 was written as 1
    with pytest.raises(ValueError, match=match):
        make_synthetic_layout("celebA", tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "table", "drop"),
    [
        ("waterbirds", "metadata.csv", "place"),
        ("celebA", "list_attr_celeba.csv", "Male"),
        ("celebA", "list_eval_partition.csv", "partition"),
        ("civilcomments", "all_data_with_identities.csv", "black"),
    ],
)
def test_a_table_without_a_column_wilds_reads_is_named(tmp_path, name, table, drop):
    # wilds failed with a bare KeyError('place'), naming neither the file nor the layout
    import pandas as pd

    from rest_fair.exceptions import DatasetFormatError

    data_dir = make_synthetic_layout(name, tmp_path, image_size=8)
    path = data_dir / table
    frame = pd.read_csv(path)
    frame.drop(columns=[drop]).to_csv(path, index=False)
    with pytest.raises(DatasetFormatError) as info:
        load_wilds(name, tmp_path)
    message = str(info.value)
    assert f"{path} has no column '{drop}'" in message
    assert dataset_spec(name).layout in message
    path.write_text("")
    with pytest.raises(DatasetFormatError, match=f"{path} is empty"):
        load_wilds(name, tmp_path)


@pytest.mark.parametrize(("extra", "values"), [("note", "x"), ("checked", True)])
def test_a_celeba_attribute_table_with_a_column_of_other_values_is_named(tmp_path, extra,
                                                                           values):
    # wilds reads every attribute column as one array; a column of text or booleans made it
    # an array of objects, which torch refused: "can't convert np.ndarray of type
    # numpy.object_", naming no file or column
    import pandas as pd

    from rest_fair.exceptions import DatasetFormatError

    path = make_synthetic_layout("celebA", tmp_path, image_size=8) / "list_attr_celeba.csv"
    table = pd.read_csv(path)
    table.assign(Smiling=table["Smiling"].astype(float)).to_csv(path, index=False)
    assert load_wilds("celebA", tmp_path).y_array.shape == (112,)  # numbers of any dtype
    table.assign(**{extra: values}).to_csv(path, index=False)
    with pytest.raises(DatasetFormatError) as info:
        load_wilds("celebA", tmp_path)
    assert (f"{path} holds columns of values other than numbers ('{extra}'); wilds reads "
            f"every column but 'image_id' as one array of numbers") in str(info.value)


def test_a_civilcomments_table_without_its_index_column_is_named(tmp_path):
    # wilds reads the first column as the index: a table written without it lost its first
    # data column, and wilds failed with a bare KeyError('comment_text')
    import pandas as pd

    from rest_fair.exceptions import DatasetFormatError

    path = make_synthetic_layout("civilcomments", tmp_path) / "all_data_with_identities.csv"
    pd.read_csv(path, index_col=0).drop(columns="id").to_csv(path, index=False)
    with pytest.raises(DatasetFormatError) as info:
        load_wilds("civilcomments", tmp_path)
    assert (f"{path} has no column 'comment_text' (wilds reads the first column, "
            f"'comment_text', as the index)") in str(info.value)


@pytest.mark.parametrize(
    ("name", "table", "column", "value", "allowed"),
    [
        ("waterbirds", "metadata.csv", "y", 2, "(0, 1)"),  # IndexError in the grouper
        ("waterbirds", "metadata.csv", "y", "bird", "(0, 1)"),
        ("waterbirds", "metadata.csv", "split", 5, "(0, 1, 2)"),  # dropped silently
        ("waterbirds", "metadata.csv", "place", None, "(0, 1)"),  # a grouper error
        ("celebA", "list_attr_celeba.csv", "Male", 0, "(-1, 1)"),  # read as -1 silently
        ("celebA", "list_eval_partition.csv", "partition", "val", "(0, 1, 2)"),
        ("civilcomments", "all_data_with_identities.csv", "split", "dev",
         "('train', 'val', 'test')"),
        ("civilcomments", "all_data_with_identities.csv", "black", "yes", "a number in [0, 1]"),
        ("civilcomments", "all_data_with_identities.csv", "toxicity", 7.5, "a number in [0, 1]"),
    ],
)
def test_a_table_value_wilds_cannot_read_is_named(tmp_path, name, table, column, value, allowed):
    import pandas as pd

    from rest_fair.exceptions import DatasetFormatError

    data_dir = make_synthetic_layout(name, tmp_path, image_size=8)
    path = data_dir / table
    index = name == "civilcomments"  # its table's first column is the index
    frame = pd.read_csv(path, index_col=0 if index else None)
    frame[column] = frame[column].astype(object)
    frame.loc[frame.index[3], column] = value
    frame.to_csv(path, index=index)
    with pytest.raises(DatasetFormatError) as info:
        load_wilds(name, tmp_path)
    message = str(info.value)
    assert f"{path} holds {column!r} values other than {allowed} in 1 of its" in message
    assert f"(the first: {'nan' if value is None else repr(value)} in data row 4)" in message


def test_a_table_with_a_header_only_or_of_binary_bytes_is_named(tmp_path):
    from rest_fair.exceptions import DatasetFormatError

    data_dir = make_synthetic_layout("waterbirds", tmp_path, image_size=8)
    path = data_dir / "metadata.csv"
    path.write_text("img_filename,y,split,place\n")
    with pytest.raises(DatasetFormatError, match="has a header but no rows"):
        load_wilds("waterbirds", tmp_path)
    path.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(DatasetFormatError, match="cannot be read as CSV"):
        load_wilds("waterbirds", tmp_path)


@pytest.mark.parametrize("extra", [-3, 3])
def test_celeba_tables_of_different_lengths_are_named_with_their_counts(tmp_path, extra):
    # wilds failed with a torch size mismatch naming neither file
    import pandas as pd

    from rest_fair.exceptions import DatasetFormatError

    data_dir = make_synthetic_layout("celebA", tmp_path, image_size=8)
    attrs, partition = data_dir / "list_attr_celeba.csv", data_dir / "list_eval_partition.csv"
    n = len(pd.read_csv(attrs))
    rows = n + extra
    frame = pd.read_csv(partition)
    frame.iloc[np.arange(rows) % n].to_csv(partition, index=False)
    with pytest.raises(DatasetFormatError) as info:
        load_wilds("celebA", tmp_path)
    assert f"{attrs} has {n} rows and {partition} has {rows} rows" in str(info.value)


def test_a_root_dir_that_is_the_data_directory_gets_a_hint(tmp_path):
    data_dir = make_synthetic_layout("waterbirds", tmp_path, image_size=8)
    with pytest.raises(FileNotFoundError, match=r"root_dir is the data directory itself; pass "
                                                r"the folder that contains waterbirds_v1\.0"):
        load_wilds("waterbirds", data_dir)
    with pytest.raises(FileNotFoundError) as info:
        load_wilds("waterbirds", tmp_path / "elsewhere")
    assert "data directory itself" not in str(info.value)


def _cut_archive(data_dir) -> bytes:
    """The first half of a tar.gz of ``data_dir``, tables first: an interrupted download."""
    buffer = io.BytesIO()
    files = sorted((p for p in data_dir.rglob("*") if p.is_file()),
                   key=lambda p: (p.suffix not in (".txt", ".csv"), str(p)))
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(data_dir)))
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_the_archive_of_an_unfinished_download_is_not_taken_as_complete(tmp_path, monkeypatch):
    # wilds unpacks an archive.tar.gz it finds without a check, prints that unpacking it
    # failed, and returns the samples whose files it had unpacked before the cut
    source = make_synthetic_layout("waterbirds", tmp_path / "source", image_size=8)
    cut = _cut_archive(source)
    downloads = []

    def interrupted(url, root, filename=None, md5=None, size=None):
        downloads.append(url)
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_bytes(cut)

    monkeypatch.setattr(download_utils, "download_url", interrupted)
    with pytest.raises(FileNotFoundError, match=r"archive\.tar\.gz is left from a download or "
                                                r"unpacking that did not finish"):
        load_wilds("waterbirds", tmp_path / "data", download=True)
    assert len(downloads) == 1
    data_dir = tmp_path / "data" / "waterbirds_v1.0"
    assert (data_dir / "metadata.csv").is_file()  # what the cut archive held
    assert len(list(data_dir.rglob("*.png"))) < len(list(source.rglob("*.png")))
    for download in (False, True):  # the next call, with or without download
        with pytest.raises(FileNotFoundError, match=f"Delete {data_dir} and download again"):
            load_wilds("waterbirds", tmp_path / "data", download=download)
    assert len(downloads) == 1
