"""DFA-format folder loader on a tiny release written by the test."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from rest_fair.datasets import (  # noqa: E402
    DatasetNotFoundError,
    DFAImageFolder,
    load_dfa,
    pct_folder,
)
from rest_fair.datasets.transforms import (  # noqa: E402
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    dfa_transforms,
)


def _write(path, label, bias, size=(12, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(label * 31 + bias + len(str(path)))
    array = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    array[0, 0] = (label * 20, bias * 20, 7)  # a fingerprint to check the right file is read
    Image.fromarray(array).save(path)


@pytest.fixture
def release(tmp_path):
    """<root>/1pct/{align,conflict}/<class>/, <root>/1pct/valid/, <root>/test/<class>/."""
    root = tmp_path / "cmnist"
    pct = root / "1pct"
    for label in range(3):
        for i in range(4):
            _write(pct / "align" / str(label) / f"{i}_{label}_{label}.png", label, label)
        bias = (label + 1) % 3
        _write(pct / "conflict" / str(label) / f"9_{label}_{bias}.png", label, bias)
    for i, (label, bias) in enumerate([(0, 0), (0, 2), (1, 1), (2, 0), (2, 1)]):
        _write(pct / "valid" / f"v{i}_{label}_{bias}.png", label, bias)  # flat, as in DFA
    for i, (label, bias) in enumerate([(0, 1), (1, 1), (1, 2), (2, 2), (2, 0), (0, 0)]):
        _write(root / "test" / str(label) / f"t_{i}_{label}_{bias}.png", label, bias)
    return root


def test_labels_bias_groups_parsed_without_reading_images(release, monkeypatch):
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or None)
    train = DFAImageFolder(release, split="train", conflict_pct=0.01, dataset=None)
    assert opened == []
    assert len(train) == 15
    assert train.conflict.sum() == 3
    np.testing.assert_array_equal(train.labels[~train.conflict], train.bias[~train.conflict])
    assert np.all(train.labels[train.conflict] != train.bias[train.conflict])
    assert train.n_bias == 3
    np.testing.assert_array_equal(train.groups, train.labels * 3 + train.bias)


def test_items_and_splits(release):
    splits = load_dfa(release, dataset="cmnist", conflict_pct="1pct")
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [15, 5, 6]
    test = splits["test"]
    np.testing.assert_array_equal(test.conflict, test.labels != test.bias)
    x, label, bias = test[2]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert x.shape == (3, 28, 28)  # eval transform of cmnist resizes to 28
    assert (label, bias) == (int(test.labels[2]), int(test.bias[2]))
    # fingerprint survives (no resize when the size already matches)
    raw = DFAImageFolder(release, split="test", dataset=None)
    x, label, bias = raw[0]
    assert x.shape == (3, 12, 12)
    assert round(float(x[0, 0, 0]) * 255) == label * 20
    assert round(float(x[1, 0, 0]) * 255) == bias * 20
    assert raw.to_numpy().shape == (6, 3, 12, 12)


def test_eval_transform_is_deterministic_and_train_augmentation_is_train_only(release):
    test = DFAImageFolder(release, split="test", dataset="cifar10c")
    torch.manual_seed(0)
    a = test[0][0]
    torch.manual_seed(1)
    b = test[0][0]
    assert torch.equal(a, b)
    assert not any(
        isinstance(t, (RandomCrop, RandomHorizontalFlip)) for t in test.transform.transforms
    )
    with pytest.raises(ValueError, match="only allowed for split='train'"):
        DFAImageFolder(release, split="valid", dataset="cifar10c", augment=True)
    splits = load_dfa(release, dataset="cifar10c", augment_train=True)
    assert any(isinstance(t, RandomCrop) for t in splits["train"].transform.transforms)
    assert not any(isinstance(t, RandomCrop) for t in splits["valid"].transform.transforms)
    assert not any(isinstance(t, RandomCrop) for t in splits["test"].transform.transforms)


def test_works_with_dataloader(release):
    from torch.utils.data import DataLoader

    train = DFAImageFolder(release, split="train", dataset="cmnist", augment=True)
    x, y, b = next(iter(DataLoader(train, batch_size=4, shuffle=False)))
    assert x.shape == (4, 3, 28, 28) and y.shape == b.shape == (4,)


def test_missing_folders_are_named(tmp_path, release):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        load_dfa(missing)
    with pytest.raises(DatasetNotFoundError, match="5pct"):
        DFAImageFolder(release, split="train", conflict_pct=0.05)
    (release / "2pct" / "align").mkdir(parents=True)
    (release / "2pct" / "conflict").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no images"):
        DFAImageFolder(release, split="train", conflict_pct="2pct")


def test_malformed_name_is_named(release):
    bad = release / "test" / "0" / "oops.png"
    _write(bad, 0, 0)
    with pytest.raises(ValueError, match=r"oops\.png"):
        DFAImageFolder(release, split="test")
    bad.unlink()
    other = release / "test" / "0" / "x_0_17.png"
    _write(other, 0, 0)
    with pytest.raises(ValueError, match=r"x_0_17\.png"):
        DFAImageFolder(release, split="test", dataset="cmnist")


def test_bad_options_and_negative_names_are_refused_up_front(release):
    with pytest.raises(ValueError, match="image_size"):
        DFAImageFolder(release, split="test", image_size=0)
    with pytest.raises(ValueError, match="transform must be 'auto', None or a callable"):
        DFAImageFolder(release, split="test", transform="bogus")
    with pytest.raises(ValueError, match=r"dataset must be one of .* got \['cmnist'\]"):
        DFAImageFolder(release, split="test", dataset=["cmnist"])
    _write(release / "test" / "0" / "t9_0_-1.png", 0, 0)
    with pytest.raises(ValueError, match=r"bias -1 in the file name .*t9_0_-1\.png"):
        DFAImageFolder(release, split="test", dataset=None)


def test_download_is_refused_with_instructions(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="never downloads"):
        load_dfa(tmp_path, download=True)


def test_pct_folder():
    assert [pct_folder(r) for r in (0.005, 0.01, 0.02, 0.05)] == [
        "0.5pct", "1pct", "2pct", "5pct"
    ]
    assert pct_folder("0.5pct") == "0.5pct"
    for bad in ("half", 1.5, 0, "-1pct", "150pct", "1 pct", "0pct", None, [0.01], True):
        with pytest.raises(ValueError, match="conflict_pct"):
            pct_folder(bad)


def test_plain_torch_transforms():
    x = torch.rand(3, 8, 10)
    assert Resize(16)(x).shape == (3, 16, 16)
    assert Resize((4, 5))(x).shape == (3, 4, 5)
    torch.manual_seed(0)
    crop = RandomCrop(8, padding=2)(x)
    assert crop.shape == (3, 8, 8)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)
    norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(x)
    torch.testing.assert_close(norm, (x - 0.5) / 0.25)
    assert isinstance(dfa_transforms("bffhq", image_size=32)["eval"], Compose)
    with pytest.raises(ValueError, match="Unknown DFA"):
        dfa_transforms("imagenet")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        Resize(4)(torch.rand(8, 8))


def test_transform_sizes_take_numpy_integers_and_refuse_bad_values(release):
    # a numpy integer was "not iterable", DFAImageFolder(image_size=np.int64(16)) included;
    # a size of 0 failed only on the first image, in torch, and dfa_transforms took it for
    # the default; a negative padding cropped the image
    x = torch.rand(3, 8, 10)
    assert Resize(np.int64(4))(x).shape == RandomCrop(np.int32(4))(x).shape == (3, 4, 4)
    test = DFAImageFolder(release, split="test", dataset="cifar10c", image_size=np.int64(16))
    assert test[0][0].shape == (3, 16, 16)
    for size in (0, (4,), 2.5, True):
        with pytest.raises(ValueError, match="Resize size must be a positive int or a pair"):
            Resize(size)
    with pytest.raises(ValueError, match="Resize size must be"):
        dfa_transforms("cmnist", image_size=0)
    with pytest.raises(ValueError, match="padding must be an int >= 0"):
        RandomCrop(4, padding=-1)


def test_inferred_counts_number_the_groups_alike_in_every_split(release):
    # the test split holds bias values 0 and 1 only: counted on its own it would number
    # (1, 0) as group 2, which is (0, 2) in the training split
    for path in (release / "test").glob("**/*_2.png"):
        path.unlink()
    splits = load_dfa(release, dataset=None)
    assert {part.n_bias for part in splits.values()} == {3}
    assert {part.n_classes for part in splits.values()} == {3}
    for part in splits.values():
        assert (part.groups == part.labels * 3 + part.bias).all()
    # one split alone still counts what it holds
    assert DFAImageFolder(release, split="test", dataset=None).n_bias == 2


def test_a_root_under_the_home_folder_may_be_written_with_a_tilde(release, monkeypatch):
    # a data_root from a bench config file reaches the loader unexpanded by any shell
    monkeypatch.setenv("HOME", str(release.parent))
    splits = load_dfa(f"~/{release.name}")
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [15, 5, 6]
    assert splits["test"].root == release


def test_hidden_companion_files_are_not_samples(release):
    # macOS writes a '._<name>' companion beside every file it copies to an exFAT drive
    (release / "test" / "0" / "._t_0_0_1.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (release / "1pct" / "valid" / ".v0_0_0.png").write_bytes(b"not an image")
    test = DFAImageFolder(release, split="test", dataset=None)
    assert len(test) == 6
    assert all(not p.name.startswith(".") for p in test.paths)
    assert [test[i][0].shape for i in range(len(test))] == [(3, 12, 12)] * 6
    assert len(DFAImageFolder(release, split="valid", dataset=None)) == 5


def test_bffhq_release_keeps_its_validation_set_beside_the_share(release):
    # DFA's BFFHQ: <root>/0.5pct/{align,conflict}, <root>/valid, <root>/test
    (release / "1pct" / "valid").rename(release / "valid")
    valid = DFAImageFolder(release, split="valid", conflict_pct=0.01, dataset=None)
    assert len(valid) == 5
    assert all(p.parent == release / "valid" for p in valid.paths)
    # a share's own validation folder comes first where there is one
    _write(release / "1pct" / "valid" / "w_1_1.png", 1, 1)
    assert len(DFAImageFolder(release, split="valid", conflict_pct=0.01, dataset=None)) == 1
    (release / "1pct" / "valid" / "w_1_1.png").unlink()
    (release / "1pct" / "valid").rmdir()
    (release / "valid").rename(release / "other")
    with pytest.raises(DatasetNotFoundError, match=r"1pct/valid .*or valid/ beside"):
        DFAImageFolder(release, split="valid", conflict_pct=0.01)


def test_folders_that_are_symbolic_links_are_read(release, tmp_path):
    # Path.rglob does not follow linked folders: a class folder kept elsewhere and linked
    # into the release was left out without a word (all of them: "contains no images")
    shared = tmp_path / "shared"
    (release / "test" / "1").rename(shared)
    (release / "test" / "1").symlink_to(shared, target_is_directory=True)
    (release / "test" / "again").symlink_to(shared, target_is_directory=True)  # read once
    (release / "test" / "loop").symlink_to(release / "test", target_is_directory=True)
    test = DFAImageFolder(release, split="test", dataset=None)
    assert len(test) == 6
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert (release / "test" / "1" / "t_1_1_1.png") in test.paths
