"""Embedding mode: frozen-backbone features cached on disk with their provenance, and a
sparse MLP head fitted on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import rest_fair.wilds.features as features_module
from rest_fair import RESTClassifier, backbones
from rest_fair.backbones import build_torchvision
from rest_fair.wilds import (
    extract_features,
    load_wilds,
    make_synthetic_layout,
    split_wilds,
    wilds_eval,
    write_submission,
)
from tests._support.backbones import save_tiny_distilbert, save_torchvision_state_dict


@pytest.fixture(scope="module")
def waterbirds(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    make_synthetic_layout("waterbirds", root / "data", image_size=16)
    dataset = load_wilds("waterbirds", root / "data")
    weights = save_torchvision_state_dict("resnet18", root / "r18.pt")
    return dataset, split_wilds(dataset, image_size=32), weights, root


def _no_extraction(*args, **kwargs):
    raise AssertionError("features were computed again")


def test_features_are_the_frozen_backbone_outputs_and_are_reused(waterbirds, tmp_path,
                                                                  monkeypatch):
    _, parts, weights, _ = waterbirds
    val = parts["val"]
    feats = extract_features(val, backbone="resnet18", weights=weights, cache_dir=tmp_path,
                             batch_size=10, device="cpu")
    assert isinstance(feats, np.memmap) and feats.shape == (len(val), 512)
    assert feats.dtype == np.float32 and not feats.flags.writeable
    net = build_torchvision("resnet18", n_classes=2, weights=weights).eval()
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = net(torch.stack([val.X[i] for i in range(3)])).numpy()
    np.testing.assert_allclose(feats[:3], expected, rtol=1e-4, atol=1e-5)

    meta = json.loads(Path(feats.filename).with_suffix(".json").read_text())
    record = meta["provenance"]
    assert record["backbone"] == "resnet18" and record["dataset"] == "waterbirds"
    assert record["split"] == "val" and record["n_samples"] == len(val)
    assert record["weights"]["sha256"] and "Resize" in record["transform"]["repr"]
    assert len(record["inputs_sha256"]) == 64 and meta["n_features"] == 512

    monkeypatch.setattr(features_module, "_extract", _no_extraction)
    again = extract_features(val, backbone="resnet18", weights=weights, cache_dir=tmp_path,
                             device="cpu")
    assert again.filename == feats.filename
    np.testing.assert_array_equal(again, feats)
    with pytest.raises(AssertionError, match="computed again"):
        extract_features(val, backbone="resnet18", weights=weights, cache_dir=tmp_path,
                         refresh=True)


def test_changed_provenance_means_new_features(waterbirds, tmp_path, monkeypatch):
    _, parts, weights, root = waterbirds
    first = extract_features(parts["test"], backbone="resnet18", weights=weights,
                             cache_dir=tmp_path, device="cpu")
    other_weights = save_torchvision_state_dict("resnet18", root / "r18_seed1.pt", seed=1)
    second = extract_features(parts["test"], backbone="resnet18", weights=other_weights,
                              cache_dir=tmp_path, device="cpu")
    assert second.filename != first.filename
    assert not np.allclose(first, second)
    # an edited provenance file is not trusted
    meta = Path(first.filename).with_suffix(".json")
    info = json.loads(meta.read_text())
    info["provenance"]["split"] = "val"
    meta.write_text(json.dumps(info))
    monkeypatch.setattr(features_module, "_extract", _no_extraction)
    with pytest.raises(AssertionError, match="computed again"):
        extract_features(parts["test"], backbone="resnet18", weights=weights,
                         cache_dir=tmp_path)


def test_different_images_change_the_input_hash(waterbirds, tmp_path):
    dataset, parts, weights, _ = waterbirds
    record = features_module.feature_provenance(parts["val"], backbone="resnet18",
                                                weights=weights)
    bigger = split_wilds(dataset, ["val"], image_size=24)["val"]
    changed = features_module.feature_provenance(bigger, backbone="resnet18", weights=weights)
    assert changed["inputs_sha256"] == record["inputs_sha256"]  # same files ...
    assert changed["transform"] != record["transform"]  # ... other transform
    test = features_module.feature_provenance(parts["test"], backbone="resnet18",
                                              weights=weights)
    assert test["inputs_sha256"] != record["inputs_sha256"]


def test_transforms_that_print_alike_but_differ_get_their_own_features(waterbirds, tmp_path):
    dataset, _, weights, _ = waterbirds
    import torchvision.transforms as T

    from rest_fair.wilds import from_wilds

    subset = dataset.get_subset("val")

    def transform(fn):  # both print as Compose(Resize, Lambda(), ToTensor)
        return T.Compose([T.Resize((32, 32)), T.Lambda(fn), T.ToTensor()])

    plain = from_wilds(subset, transform=transform(lambda image: image))
    turned = from_wilds(subset, transform=transform(lambda image: image.rotate(90)))
    assert repr(plain.X.transform) == repr(turned.X.transform)
    a = extract_features(plain, backbone="resnet18", weights=weights, cache_dir=tmp_path,
                         device="cpu")
    b = extract_features(turned, backbone="resnet18", weights=weights, cache_dir=tmp_path,
                         device="cpu")
    assert a.filename != b.filename and not np.allclose(a, b)


def test_a_damaged_cache_file_is_computed_again(waterbirds, tmp_path):
    _, parts, weights, _ = waterbirds
    first = extract_features(parts["val"], backbone="resnet18", weights=weights,
                             cache_dir=tmp_path, device="cpu")
    expected, path = np.array(first), Path(first.filename)
    del first
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short
    again = extract_features(parts["val"], backbone="resnet18", weights=weights,
                             cache_dir=tmp_path, device="cpu")
    np.testing.assert_array_equal(again, expected)


def test_every_file_of_a_model_folder_is_in_the_provenance(tmp_path):
    folder = save_tiny_distilbert(tmp_path / "tiny")
    (folder / "vocab.txt").write_text("a\nb\n")
    before = features_module._weights_id(f"hf:{folder}", None)
    (folder / "vocab.txt").write_text("b\na\n")  # the tokenizer changed, not the weights
    assert features_module._weights_id(f"hf:{folder}", None) != before


def test_sparse_head_on_cached_features_end_to_end(waterbirds, tmp_path):
    dataset, parts, weights, _ = waterbirds
    X = {split: extract_features(part, backbone="resnet18", weights=weights,
                                 cache_dir=tmp_path, device="cpu")
         for split, part in parts.items()}
    train, val = parts["train"], parts["val"]
    clf = RESTClassifier(module="mlp", module_params={"hidden_layer_sizes": (64,)},
                         sparsity=0.9, max_epochs=5, batch_size=32, optimizer="adam",
                         lr=1e-3, device="cpu", random_state=0)
    clf.fit(X["train"], train.y, groups=train.groups, validation_data=(X["val"], val.y,
                                                                        val.groups))
    assert clf.n_features_in_ == 512 and clf.masks_
    predictions = {split: clf.predict(X[split]) for split in ("val", "test")}
    results = wilds_eval(parts["test"], predictions["test"])
    assert 0.0 <= results["acc_wg"] <= 1.0
    assert len(write_submission(predictions, dataset=dataset, out_dir=tmp_path / "sub")) == 2


def test_text_features_with_mean_pooling(tmp_path):
    pytest.importorskip("transformers", reason="needs rest-fair[text]")
    model = save_tiny_distilbert(tmp_path / "tiny")
    make_synthetic_layout("civilcomments", tmp_path / "data")
    val = split_wilds(load_wilds("civilcomments", tmp_path / "data"), ["val"])["val"]
    feats = extract_features(val, backbone=f"hf:{model}", cache_dir=tmp_path / "cache",
                             pooling="mean", max_length=16, device="cpu")
    assert feats.shape == (len(val), 16)
    cls = extract_features(val, backbone=f"hf:{model}", cache_dir=tmp_path / "cache",
                           pooling="cls", max_length=16, device="cpu")
    assert cls.filename != feats.filename and not np.allclose(cls, feats)


def test_bad_arguments(waterbirds, tmp_path):
    _, parts, weights, _ = waterbirds
    with pytest.raises(TypeError, match="takes a WILDSSplit"):
        extract_features(parts["val"].X, backbone="resnet18", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="image dataset; backbone must be a torchvision"):
        extract_features(parts["val"], backbone="hf:bert-base-uncased", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="pooling must be"):
        extract_features(parts["val"], backbone="resnet18", weights=weights, pooling="max",
                         cache_dir=tmp_path)


def test_a_cache_dir_that_is_a_file_is_named(waterbirds, tmp_path):
    # it failed with "[Errno 17] File exists"
    _, parts, _, _ = waterbirds
    (tmp_path / "cache").write_text("")
    with pytest.raises(NotADirectoryError, match=r"cache .* is a file, not a folder"):
        extract_features(parts["val"], backbone="resnet18", weights=None,
                         cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_cache_variable_means_the_default_folder(tmp_path, monkeypatch, value):
    # REST_FAIR_CACHE= put the features into ./features of the current folder
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("REST_FAIR_CACHE", value)
    assert features_module.default_cache_dir() == tmp_path / ".cache" / "rest_fair" / "features"
    monkeypatch.setenv("REST_FAIR_CACHE", str(tmp_path / "c"))
    assert features_module.default_cache_dir() == tmp_path / "c" / "features"


def test_a_weights_member_has_the_provenance_of_its_name(waterbirds):
    tv = pytest.importorskip("torchvision")
    _, parts, _, _ = waterbirds
    records = [features_module.feature_provenance(parts["val"], backbone="resnet18",
                                                  weights=weights)
               for weights in ("DEFAULT", tv.models.ResNet18_Weights.IMAGENET1K_V1)]
    assert records[0] == records[1]
    assert records[0]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"


def test_a_vision_transformer_of_another_image_size_is_refused(waterbirds, tmp_path):
    _, parts, _, _ = waterbirds
    with pytest.raises(ValueError, match=r"vit_b_32 takes images of 224x224 pixels .* got "
                       r"samples of shape \(3, 32, 32\)"):
        extract_features(parts["val"], backbone="vit_b_32", weights=None, cache_dir=tmp_path,
                         device="cpu")  # torch's "Wrong image height!" at the first batch
    assert not list(tmp_path.rglob("*.npy*"))


def test_images_a_backbone_cannot_take_are_refused_before_its_weights_download(
        waterbirds, tmp_path, monkeypatch):
    def download(member, name, timeout):
        raise AssertionError(f"{member} downloaded before the image size was checked")

    monkeypatch.setattr(backbones, "_download", download)
    _, parts, _, _ = waterbirds
    for backbone, match in [("vit_b_32", r"vit_b_32 takes images of 224x224 pixels"),
                            ("inception_v3", r"inception_v3 takes images of at least 75x75")]:
        with pytest.raises(ValueError, match=match):
            extract_features(parts["val"], backbone=backbone, weights="DEFAULT",
                             cache_dir=tmp_path, device="cpu")
    assert not list(tmp_path.rglob("*.npy*"))


def test_a_misspelt_backbone_with_a_weights_name_gets_the_close_matches(waterbirds, tmp_path):
    _, parts, _, _ = waterbirds
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        extract_features(parts["val"], backbone="resnt18", weights="DEFAULT",
                         cache_dir=tmp_path, device="cpu")


def _before_second_batch(monkeypatch, action) -> None:
    """Make ``_extract`` call ``action()`` before its second batch, once the first is in its
    temporary file (the real extractor otherwise)."""
    real_extractor = features_module._extractor

    class Midway(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                monkeypatch.setattr(features_module, "_extractor", real_extractor)
                action()
            return self.module(x)

    def extractor(*args, **kw):
        module, tokenizer = real_extractor(*args, **kw)
        return Midway(module), tokenizer

    monkeypatch.setattr(features_module, "_extractor", extractor)


def test_two_processes_filling_the_same_cache_entry_both_succeed(waterbirds, tmp_path,
                                                                   monkeypatch):
    # both wrote '<entry>.npy.partial.npy': the second truncated the first's file under its
    # memory map, renamed it into place, and the first then failed with FileNotFoundError
    _, parts, weights, _ = waterbirds
    val = parts["val"]
    kwargs = {"backbone": "resnet18", "weights": weights, "cache_dir": tmp_path,
              "batch_size": 10, "device": "cpu"}
    other: list = []
    _before_second_batch(monkeypatch, lambda: other.append(
        np.array(extract_features(val, refresh=True, **kwargs))))
    feats = extract_features(val, **kwargs)
    assert other and feats.shape == (len(val), 512)
    np.testing.assert_allclose(np.array(feats), other[0], rtol=1e-5, atol=1e-6)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy"]


def test_an_extraction_that_fails_midway_leaves_no_file(waterbirds, tmp_path, monkeypatch):
    _, parts, weights, _ = waterbirds

    def interrupt():
        raise KeyboardInterrupt

    _before_second_batch(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract_features(parts["val"], backbone="resnet18", weights=weights,
                         cache_dir=tmp_path, batch_size=10, device="cpu")
    assert list(tmp_path.iterdir()) == []
