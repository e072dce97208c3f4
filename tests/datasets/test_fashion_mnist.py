"""idx files (MNIST, Fashion-MNIST) and Colored Fashion-MNIST, on tiny files written here."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from rest_fair.datasets import (
    COLORED_DATASETS,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    IDX_FILES,
    PALETTE,
    ColoredImages,
    DatasetNotFoundError,
    load_fashion_mnist,
    load_mnist_idx,
    make_colored_dataset,
    make_colored_fashion_mnist,
    n_conflicting,
    read_idx,
)
from rest_fair.exceptions import DatasetFormatError
from tests._support.idx import idx_bytes, tiny_images, write_folder, write_idx

# -- idx files ----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    out = read_idx(write_idx(tmp_path / "a.idx", array, gz=gz))
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, array)


def test_read_idx_labels_and_images(tmp_path):
    images, labels = tiny_images(30, 0)
    got_images = read_idx(write_idx(tmp_path / "i", images, gz=True))
    got_labels = read_idx(write_idx(tmp_path / "l", labels))
    assert got_images.dtype == np.uint8 and got_images.shape == (30, 28, 28)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (30,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b"\x00\x01" + b[2:], "not an idx file"),
        (lambda b: b[:2] + b"\x07" + b[3:], "not an idx file"),
        (lambda b: b[:3], "truncated: its header"),
        (lambda b: b[:6], "truncated: its header"),
        (lambda b: b[:-5], "truncated: 115 of the 120 data bytes"),
        (lambda b: b + b"\x00", "after the 120 bytes"),
        (lambda b: b[:4] + np.asarray([2**31, 2**31], ">u4").tobytes() + b[12:],
         "more than can be allocated|truncated"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_damaged_idx_files_are_named(tmp_path, mutate, match, gz):
    data = mutate(idx_bytes(np.ones((10, 12), np.uint8)))
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_damaged_gzip_is_named(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(5000, dtype=np.uint8).reshape(50, 100) % 7))
    truncated = tmp_path / "cut.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="gzip") as info:
        read_idx(truncated)
    assert str(truncated) in str(info.value)
    flipped = bytearray(data)
    flipped[-6] ^= 0xFF  # the CRC of the uncompressed data
    bad_crc = tmp_path / "crc.gz"
    bad_crc.write_bytes(bytes(flipped))
    with pytest.raises(DatasetFormatError, match="gzip"):
        read_idx(bad_crc)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.idx"):
        read_idx(tmp_path / "nothing.idx")
    with pytest.raises(IsADirectoryError, match="is a folder; read_idx reads one idx file"):
        read_idx(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx_reads_both_splits(tmp_path, gz):
    root = write_folder(tmp_path / "mnist", gz=gz)
    for split, n, seed in (("train", 200, 0), ("test", 100, 1)):
        images, labels = load_mnist_idx(root, split=split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        expected_images, expected_labels = tiny_images(n, seed)
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


def test_load_mnist_idx_accepts_dotted_names(tmp_path):
    images, labels = tiny_images(20, 0)
    write_idx(tmp_path / "train-images.idx3-ubyte", images)
    write_idx(tmp_path / "train-labels.idx1-ubyte", labels)
    got, _ = load_mnist_idx(tmp_path, split="train")
    np.testing.assert_array_equal(got, images)


def test_images_and_labels_must_match(tmp_path):
    images, labels = tiny_images(20, 0)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:19])
    with pytest.raises(DatasetFormatError, match="do not form a data set"):
        load_mnist_idx(tmp_path)


def test_fashion_mnist_files_must_hold_28_pixel_images_of_ten_classes(tmp_path):
    root = write_folder(tmp_path / "labels")
    labels = (np.arange(200) % 10).astype(np.uint8)
    labels[:4] = 200
    write_idx(root / "train-labels-idx1-ubyte.gz", labels, gz=True)
    with pytest.raises(DatasetFormatError, match=r"train-labels.*labels outside 0-9 \(e.g. "
                                                 r"\[200\]\)"):
        load_fashion_mnist(root)
    load_mnist_idx(root)  # any data set under the MNIST names: no class count assumed
    root = write_folder(tmp_path / "size")
    write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((200, 32, 32), np.uint8), gz=True)
    with pytest.raises(DatasetFormatError, match=r"images of \(32, 32\) pixels; "
                                                 r"Fashion-MNIST images are \(28, 28\)"):
        make_colored_fashion_mnist(root=root, split_sizes=(100, 50, 50))


def test_missing_files_name_files_folder_and_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    images, _ = tiny_images(5, 0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, gz=True)
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(tmp_path, split="test")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "t10k-labels-idx1-ubyte" in message and "t10k-images" not in message
    assert str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert FASHION_MNIST_ENV in message
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte, train-labels"):
        load_mnist_idx(tmp_path / "empty")


def test_default_folder_and_environment_variable(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "fmnist", n_train=30, n_test=20)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(root))
    images, _ = load_fashion_mnist(split="test")
    assert len(images) == 20
    monkeypatch.delenv(FASHION_MNIST_ENV)
    if not FASHION_MNIST_DIR.is_dir():
        with pytest.raises(DatasetNotFoundError, match=str(FASHION_MNIST_DIR)):
            load_fashion_mnist()


def test_bad_split_is_named(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist_idx(tmp_path, split="valid")
    with pytest.raises(ValueError, match=r"split must be one of .*got \['train'\]"):
        load_mnist_idx(tmp_path, split=["train"])


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_a_bad_seed_is_named_before_the_files_are_looked_for(tmp_path, seed):
    with pytest.raises(ValueError, match=r"random_state must be None, a Generator or an "
                                         r"integer in \[0, 4294967295\]"):
        make_colored_fashion_mnist(random_state=seed, root=tmp_path / "nowhere")


def test_a_tilde_in_a_folder_or_file_is_the_home_folder(tmp_path, monkeypatch):
    # a data_root from a bench config file, or REST_FAIR_FASHION_MNIST="~/...", reaches the
    # loader unexpanded by any shell
    root = write_folder(tmp_path / "with space" / "fmnist", n_train=30, n_test=20)
    monkeypatch.setenv("HOME", str(tmp_path))
    home_root = "~/with space/fmnist"
    images, labels = load_mnist_idx(home_root, split="test")
    expected_images, expected_labels = load_mnist_idx(root, split="test")
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert len(load_fashion_mnist(home_root, split="test")[0]) == 20
    monkeypatch.setenv(FASHION_MNIST_ENV, home_root)
    assert len(load_fashion_mnist(split="train")[0]) == 30
    labels = read_idx(f"{home_root}/t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(labels, expected_labels)
    data = make_colored_fashion_mnist(root=home_root, split_sizes=(10, 10, 10))
    assert data.source == f"idx:{root}"


def test_a_file_given_as_the_folder_is_named(tmp_path):
    root = write_folder(tmp_path / "mnist")
    images_file = root / "train-images-idx3-ubyte.gz"
    with pytest.raises(NotADirectoryError, match=r"train-images-idx3-ubyte\.gz is a file, not "
                                                 r"a folder"):
        load_mnist_idx(images_file)


# -- Colored Fashion-MNIST ----------------------------------------------------------------

N_TRAIN_FILE, N_TEST_FILE = 2000, 500


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
    """A Fashion-MNIST-shaped folder: 2,000 training and 500 test images, 10 classes."""
    return write_folder(tmp_path_factory.mktemp("fmnist"), N_TRAIN_FILE, N_TEST_FILE)


def _cells(y, bias):
    table = np.zeros((10, 10), int)
    np.add.at(table, (y, bias), 1)
    return table


def test_default_split_is_90_10_of_train_and_whole_test(idx_root):
    data = make_colored_fashion_mnist(root=idx_root, random_state=0)
    assert [len(data.split(s).y) for s in ("train", "valid", "test")] == [1800, 200, 500]
    for split in ("train", "valid", "test"):
        assert np.bincount(data.split(split).y).tolist() == [len(data.split(split).y) // 10] * 10
    # the test split is the whole test file, in file order
    _, test_labels = load_mnist_idx(idx_root, split="test")
    np.testing.assert_array_equal(data.y_test, test_labels)
    assert data.source == f"idx:{idx_root}" and data.image_shape == (3, 28, 28)


def test_storage_is_uint8_and_shared(idx_root):
    data = make_colored_fashion_mnist(root=idx_root, random_state=0)
    for split in ("train", "valid", "test"):
        X, y, bias, conflict, group = data.split(split)
        assert isinstance(X, ColoredImages) and isinstance(X, torch.utils.data.Dataset)
        assert X.images.dtype == np.uint8 and X.images.shape == (len(y), 28, 28)
        assert X.colors.dtype == np.float32 and X.colors.shape == (len(y), 3)
        assert X.labels is y and X.bias is bias and X.conflict is conflict and X.groups is group
        np.testing.assert_array_equal(group, y * 10 + bias)
        np.testing.assert_array_equal(conflict, bias != y)
        assert X.nbytes == len(y) * (784 + 8 + 8 + 12 + 1 + 8)
    # validation images come from the training file, disjoint from the training split
    train_rows = {data.X_train.images[i].tobytes() for i in range(len(data.y_train))}
    assert not any(data.X_valid.images[i].tobytes() in train_rows for i in range(20))


@pytest.mark.parametrize(("ratio", "expected"), [(0.005, 9), (0.01, 18), (0.02, 36), (0.05, 90)])
def test_exact_conflicting_counts(idx_root, ratio, expected):
    data = make_colored_fashion_mnist(conflict_ratio=ratio, root=idx_root, random_state=1)
    assert int(data.conflict_train.sum()) == expected == n_conflicting(ratio, 1800)
    y, bias, conflict = data.y_train, data.bias_train, data.conflict_train
    np.testing.assert_array_equal(bias[~conflict], y[~conflict])
    assert np.all(bias[conflict] != y[conflict])


def test_valid_and_test_are_unbiased(idx_root):
    data = make_colored_fashion_mnist(conflict_ratio=0.05, root=idx_root, random_state=2)
    for split, per_cell in (("valid", 2), ("test", 5)):
        _, y, bias, conflict, _ = data.split(split)
        table = _cells(y, bias)
        assert table.min() == table.max() == per_cell  # colour independent of class
        assert conflict.mean() == pytest.approx(0.9)


def test_painting_is_colorize(idx_root):
    data = make_colored_fashion_mnist(conflict_ratio=0.05, root=idx_root, random_state=3)
    ds = data.X_train
    X = ds.to_numpy()
    assert X.dtype == np.float32 and X.shape == (1800, 3, 28, 28)
    assert 0.0 <= X.min() and X.max() <= 1.0
    expected = ds.images[:, None].astype(np.float32) / 255.0 * PALETTE[ds.bias][:, :, None, None]
    np.testing.assert_allclose(X, expected, rtol=1e-6)
    item, label, bias = ds[7]
    assert torch.is_tensor(item) and item.dtype == torch.float32
    np.testing.assert_array_equal(item.numpy(), X[7])
    assert (label, bias) == (int(ds.labels[7]), int(ds.bias[7]))
    batch = ds.__getitems__([5, 0, 9])
    np.testing.assert_array_equal(torch.stack([b[0] for b in batch]).numpy(), X[[5, 0, 9]])
    np.testing.assert_array_equal(ds.to_numpy([9, 5]), X[[9, 5]])


def test_to_numpy_takes_a_mask_and_refuses_float_positions(idx_root):
    data = make_colored_fashion_mnist(conflict_ratio=0.05, root=idx_root, split_sizes=(100, 20, 30))
    ds = data.X_train
    X = ds.to_numpy()
    np.testing.assert_array_equal(ds.to_numpy(ds.conflict), X[ds.conflict])
    assert ds.to_numpy([]).shape == (0, 3, 28, 28)
    with pytest.raises(IndexError, match="indices must be integer positions or a boolean mask"):
        ds.to_numpy([0.5, 3.7])


@pytest.mark.parametrize(("change", "match"), [
    ({"bias": [0, 1, 2, 4]}, r"bias must be integers in \[0, 4\) .* from 0 to 4"),  # 16 = 4*4+0
    ({"labels": [0, 1, 2, -1]}, r"labels must be integers in \[0, inf\) .* from -1 to 2"),
    ({"labels": [0.5, 1, 2, 3]}, "labels must be integers .* got float64 values"),
    ({"colors": np.full((4, 3), np.nan)}, r"colors must be RGB values in \[0, 1\]"),
    ({"n_bias": 0}, "n_bias must be an integer"),
])
def test_colored_images_refuse_ids_that_make_wrong_groups(change, match):
    # a bias of 4 of 4 colours made group 3 * 4 + 4 = 16, the group of (4, 0); a label of -1
    # a negative group; 0.5 was cut to 0; NaN colours painted NaN images
    args = {"labels": [0, 1, 2, 3], "bias": [0, 1, 2, 3], "colors": np.full((4, 3), 0.5),
            "n_bias": 4, **change}
    with pytest.raises(ValueError, match=match):
        ColoredImages(np.zeros((4, 5, 5), np.uint8), args.pop("labels"), args.pop("bias"),
                      args.pop("colors"), **args)


def test_resized_batches_equal_resized_items(idx_root):
    data = make_colored_fashion_mnist(root=idx_root, image_size=16, split_sizes=(100, 20, 30))
    ds = data.X_test
    assert data.image_shape == ds.image_shape == (3, 16, 16)
    batch = ds.to_numpy(range(10))
    assert batch.shape == (10, 3, 16, 16)
    items = np.stack([ds[i][0].numpy() for i in range(10)])
    np.testing.assert_allclose(batch, items, atol=1e-6)


def test_seed_determinism(idx_root):
    a = make_colored_fashion_mnist(conflict_ratio=0.02, root=idx_root, random_state=5)
    b = make_colored_fashion_mnist(conflict_ratio=0.02, root=idx_root, random_state=5)
    c = make_colored_fashion_mnist(conflict_ratio=0.02, root=idx_root, random_state=6)
    for split in ("train", "valid", "test"):
        xa, xb = a.split(split), b.split(split)
        np.testing.assert_array_equal(xa.X.images, xb.X.images)
        np.testing.assert_array_equal(xa.X.colors, xb.X.colors)
        for left, right in zip(xa[1:], xb[1:], strict=True):
            np.testing.assert_array_equal(left, right)
    assert not np.array_equal(a.conflict_train, c.conflict_train)
    assert not np.array_equal(a.X_valid.images, c.X_valid.images)


def test_subsampling_is_stratified_and_keeps_the_validation_split(idx_root):
    full = make_colored_fashion_mnist(root=idx_root, random_state=4)
    sub = make_colored_fashion_mnist(
        conflict_ratio=0.05, root=idx_root, split_sizes=(500, 200, 100), random_state=4
    )
    assert (len(sub.y_train), len(sub.y_valid), len(sub.y_test)) == (500, 200, 100)
    assert np.bincount(sub.y_train).tolist() == [50] * 10
    assert np.bincount(sub.y_test).tolist() == [10] * 10
    assert int(sub.conflict_train.sum()) == 25
    np.testing.assert_array_equal(sub.X_valid.images, full.X_valid.images)
    table = _cells(sub.y_test, sub.bias_test)
    assert table.min() == table.max() == 1


@pytest.mark.parametrize(
    "split_sizes",
    [(1900, 200, 100), (100, 20, 501), (100, 0, 10), (100.5, 20, 10), (100, 20), "abc",
     (5, 5, 5),  # splits smaller than the 10 classes
     (float("inf"), 20, 10), (100, float("nan"), 10)],
)
def test_bad_split_sizes_are_named(idx_root, split_sizes):
    with pytest.raises(ValueError, match="split_sizes"):
        make_colored_fashion_mnist(root=idx_root, split_sizes=split_sizes)


@pytest.mark.parametrize("split_sizes", [(1795, 200, 500), (1800, 200, 495), (10, 1985, 10)])
def test_counts_that_leave_a_few_images_unused_are_drawn(idx_root, split_sizes):
    # fewer images left over than classes, or classes of one image in what is left: sklearn's
    # stratified split refused these counts, which the docstring allows, without naming them
    a = make_colored_fashion_mnist(root=idx_root, split_sizes=split_sizes, random_state=2)
    b = make_colored_fashion_mnist(root=idx_root, split_sizes=split_sizes, random_state=2)
    assert tuple(len(a.split(s).y) for s in ("train", "valid", "test")) == split_sizes
    np.testing.assert_array_equal(a.X_train.images, b.X_train.images)
    np.testing.assert_array_equal(a.bias_train, b.bias_train)
    for split, size in zip(("train", "valid", "test"), split_sizes, strict=True):
        counts = np.bincount(a.split(split).y, minlength=10)
        assert counts.max() - counts.min() <= 1, (split, size, counts)  # stratified
    train_rows = {a.X_train.images[i].tobytes() for i in range(len(a.y_train))}
    assert not any(a.X_valid.images[i].tobytes() in train_rows for i in range(len(a.y_valid)))


def test_missing_files_raise_before_any_work(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        make_colored_fashion_mnist(root=tmp_path)


def test_constructible_by_name(idx_root):
    assert set(COLORED_DATASETS) == {"mnist_5k", "digits", "fashion_mnist"}
    data = make_colored_dataset(
        "fashion_mnist", conflict_ratio=0.01, root=idx_root, split_sizes=(300, 50, 50)
    )
    assert isinstance(data.X_train, ColoredImages) and len(data.y_train) == 300
    digits = make_colored_dataset("digits", conflict_ratio=0.01, random_state=0)
    assert digits.source == "digits"
    with pytest.raises(ValueError, match="fashion_mnist"):
        make_colored_dataset("cifar")


@pytest.mark.parametrize("as_arrays", [False, True])
def test_fits_restclassifier_for_one_epoch(idx_root, as_arrays):
    from rest_fair import RESTClassifier

    data = make_colored_fashion_mnist(
        conflict_ratio=0.05, root=idx_root, split_sizes=(400, 100, 100), random_state=0
    )
    X_train, X_valid, X_test = data.X_train, data.X_valid, data.X_test
    if as_arrays:
        X_train, X_valid, X_test = (X.to_numpy() for X in (X_train, X_valid, X_test))
    clf = RESTClassifier(
        module="mlp", module_params={"hidden_layer_sizes": [32]}, sparsity=0.5, max_epochs=1,
        batch_size=64, random_state=0,
    )
    clf.fit(
        X_train, data.y_train, groups=data.conflict_train,
        validation_data=(X_valid, data.y_valid, data.conflict_valid),
    )
    pred = np.asarray(clf.predict(X_test))
    assert pred.shape == (100,) and set(pred) <= set(range(10))
    assert len(clf.history_) == 1


_REAL = FASHION_MNIST_DIR.is_dir() and all(
    any((FASHION_MNIST_DIR / f"{name}{suffix}").is_file() for suffix in ("", ".gz"))
    for names in IDX_FILES.values()
    for name in names
)


@pytest.mark.skipif(
    not _REAL,
    reason=f"Debian's dataset-fashion-mnist is not installed in {FASHION_MNIST_DIR} "
    "(apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_full_size():
    images, labels = load_fashion_mnist(FASHION_MNIST_DIR, split="test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    data = make_colored_fashion_mnist(root=FASHION_MNIST_DIR, conflict_ratio=0.01)
    assert [len(data.split(s).y) for s in ("train", "valid", "test")] == [54000, 6000, 10000]
    assert np.bincount(data.y_train).tolist() == [5400] * 10
    assert int(data.conflict_train.sum()) == 540
    assert _cells(data.y_test, data.bias_test).min() == 100
    held = sum(getattr(data, f"X_{s}").nbytes for s in ("train", "valid", "test"))
    assert held == 70000 * (784 + 37)  # uint8 images, 37 bytes of labels/colours per sample
