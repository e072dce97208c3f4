"""Official WILDS metrics without torch_scatter, submission files and the comparison table."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from rest_fair.wilds import (
    PUBLISHED,
    comparison_table,
    load_wilds,
    make_synthetic_layout,
    read_predictions,
    split_wilds,
    submission_filename,
    to_markdown,
    wilds_eval,
    write_submission,
)
from rest_fair.wilds.metrics import WATERBIRDS_TRAIN_COUNTS

IDENTITIES = ("male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black",
              "white")
HAS_TORCH_SCATTER = importlib.util.find_spec("torch_scatter") is not None


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("wilds_metrics")
    counts = {"train": (8, 2, 2, 8), "val": (6, 6, 6, 6), "test": (6, 6, 6, 6)}
    out = {}
    for name in ("waterbirds", "celebA", "civilcomments"):
        make_synthetic_layout(name, root, group_counts=counts, image_size=4, seed=3)
        out[name] = load_wilds(name, root)
    return out


def _predictions_with_errors(groups, y, n_wrong):
    """Flip the first n_wrong[g] labels of each group g."""
    y_pred = y.copy()
    for g, k in enumerate(n_wrong):
        idx = np.flatnonzero(groups == g)[:k]
        y_pred[idx] = 1 - y_pred[idx]
    return y_pred


def test_waterbirds_official_metrics_by_hand(datasets):
    test = split_wilds(datasets["waterbirds"], ["test"], image_size=4)["test"]
    y_pred = _predictions_with_errors(test.groups, test.y, [0, 1, 2, 3])  # 6 per group
    results = wilds_eval(test, y_pred)
    names = list(WATERBIRDS_TRAIN_COUNTS)
    assert set(results) == {"adj_acc_avg", "acc_wg"} | {
        f"{kind}_{g}" for g in names for kind in ("acc", "count")
    }
    accs = {g: a for g, a in zip(names, [1.0, 5 / 6, 4 / 6, 3 / 6], strict=True)}
    for g in names:
        assert results[f"acc_{g}"] == pytest.approx(accs[g])
        assert results[f"count_{g}"] == 6.0
    expected_adj = (1.0 * 3498 + 5 / 6 * 184 + 4 / 6 * 56 + 3 / 6 * 1057) / 4795
    assert results["adj_acc_avg"] == pytest.approx(expected_adj)
    assert results["acc_wg"] == pytest.approx(0.5)


def test_celeba_official_metrics_by_hand(datasets):
    val = split_wilds(datasets["celebA"], ["val"], image_size=4)["val"]
    y_pred = _predictions_with_errors(val.groups, val.y, [3, 0, 6, 1])
    results = wilds_eval(val, y_pred)
    assert results["acc_avg"] == pytest.approx(1 - 10 / 24)
    assert results["acc_wg"] == 0.0
    assert results["acc_y:notblond_male:0"] == pytest.approx(0.5)
    assert results["acc_y:blond_male:0"] == 0.0
    assert results["acc_y:blond_male:1"] == pytest.approx(5 / 6)
    assert results["count_y:blond_male:1"] == 6.0


def test_civilcomments_official_metrics_by_hand(datasets):
    test = split_wilds(datasets["civilcomments"], ["test"])["test"]
    rng = np.random.default_rng(0)
    y_pred = rng.integers(0, 2, len(test))
    results = wilds_eval(test, y_pred)
    assert len(results) == 2 + 2 * 16
    correct = y_pred == test.y
    assert results["acc_avg"] == pytest.approx(correct.mean())
    accs = []
    for identity in IDENTITIES:
        for label in (0, 1):
            mask = (test.metadata[identity].to_numpy() == 1) & (test.y == label)
            acc = correct[mask].mean() if mask.any() else 0.0  # WILDS: empty group -> 0
            key = f"y:{label}_{identity}:1"
            assert results[f"acc_{key}"] == pytest.approx(acc), key
            assert results[f"count_{key}"] == mask.sum()
            accs.append(acc)
    assert results["acc_wg"] == pytest.approx(min(accs))


def test_raw_wilds_subset_and_tensor_predictions(datasets):
    dataset = datasets["celebA"]
    subset = dataset.get_subset("val")
    part = split_wilds(dataset, ["val"], image_size=4)["val"]
    y_pred = _predictions_with_errors(part.groups, part.y, [1, 2, 3, 4])
    from_subset = wilds_eval(subset, torch.as_tensor(y_pred))
    assert from_subset == wilds_eval(part, y_pred)
    explicit = wilds_eval(dataset, y_pred, y_true=part.y, metadata=part.metadata_array)
    assert explicit == from_subset
    assert from_subset["acc_y:blond_male:1"] == pytest.approx(2 / 6)


def test_metric_input_errors(datasets):
    test = split_wilds(datasets["waterbirds"], ["test"], image_size=4)["test"]
    with pytest.raises(ValueError, match="predictions"):
        wilds_eval(test, np.zeros(3))
    with pytest.raises(ValueError, match="together"):
        wilds_eval(test, test.y, y_true=test.y)


def _pure_torch_scatter() -> types.ModuleType:
    """What torch_scatter.scatter(reduce='mean') computes (empty groups -> 0), in torch."""

    def scatter(src, index, dim=0, out=None, dim_size=None, reduce="sum"):
        assert dim == 0 and out is None and reduce == "mean"
        total = torch.zeros(dim_size, dtype=src.dtype).index_add_(0, index, src)
        count = torch.zeros(dim_size, dtype=src.dtype).index_add_(0, index, torch.ones_like(src))
        return total / count.clamp(min=1)

    module = types.ModuleType("torch_scatter")
    module.scatter = scatter
    return module


def _compare_with_dataset_eval(dataset):
    rng = np.random.default_rng(1)
    for split, part in split_wilds(dataset, image_size=4).items():
        y_pred = rng.integers(0, 2, len(part))
        ours = wilds_eval(part, y_pred)
        theirs, _ = dataset.eval(torch.as_tensor(y_pred), torch.as_tensor(part.y),
                                 part.metadata_array)
        assert set(ours) == set(theirs), (dataset.dataset_name, split)
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, abs=1e-6), (dataset.dataset_name, split, key)


@pytest.mark.skipif(not HAS_TORCH_SCATTER,
                    reason="torch_scatter is not importable (no PyPI wheel); dataset.eval needs it")
@pytest.mark.parametrize("name", ["waterbirds", "celebA", "civilcomments"])
def test_matches_dataset_eval_with_real_torch_scatter(datasets, name):
    _compare_with_dataset_eval(datasets[name])


@pytest.mark.parametrize("name", ["waterbirds", "celebA", "civilcomments"])
def test_matches_dataset_eval_with_pure_torch_scatter(datasets, name, monkeypatch):
    """The real WILDS eval code, with torch_scatter's mean supplied in plain torch."""
    if not HAS_TORCH_SCATTER:
        monkeypatch.setitem(sys.modules, "torch_scatter", _pure_torch_scatter())
    _compare_with_dataset_eval(datasets[name])


def test_submission_files(datasets, tmp_path):
    dataset = datasets["waterbirds"]
    assert (submission_filename(dataset, "test", 2)
            == "waterbirds_split:test_seed:2_epoch:best_pred.csv")
    assert submission_filename("celebA", "val") == "celebA_split:val_seed:0_epoch:best_pred.csv"
    preds = {"val": np.arange(24) % 2, "test": np.ones(24, dtype=np.int64)}
    files = write_submission(preds, dataset=dataset, out_dir=tmp_path / "sub", seed=1)
    assert sorted(p.name for p in files) == [
        "waterbirds_split:test_seed:1_epoch:best_pred.csv",
        "waterbirds_split:val_seed:1_epoch:best_pred.csv",
    ]
    val_file = tmp_path / "sub" / "waterbirds_split:val_seed:1_epoch:best_pred.csv"
    assert val_file.read_text().splitlines()[:3] == ["0", "1", "0"]
    np.testing.assert_array_equal(read_predictions(val_file), preds["val"])


@pytest.mark.parametrize(
    ("predictions", "match"),
    [
        ({"train": np.zeros(20), "test": np.zeros(24)}, "training split"),
        ({}, "empty"),
        ({"test": np.zeros(23)}, "has 23 labels"),
        ({"test": np.zeros((24, 2))}, "1-D"),
        ({"id_test": np.zeros(24)}, "not in"),
    ],
)
def test_submission_errors(datasets, tmp_path, predictions, match):
    with pytest.raises(ValueError, match=match):
        write_submission(predictions, dataset=datasets["waterbirds"], out_dir=tmp_path)


def test_submission_name_errors():
    with pytest.raises(ValueError, match="split"):
        submission_filename("waterbirds", "te:st")
    with pytest.raises(ValueError, match="seed"):
        submission_filename("waterbirds", "test", -1)


def test_comparison_table_carries_sources_and_protocol():
    results = {"adj_acc_avg": 0.9, "acc_wg": 0.75}
    table = comparison_table("waterbirds", results, protocol="ResNet-18 from scratch, 5 epochs")
    assert list(table.columns) == ["method", "group_labels", "worst_group_acc", "average_acc",
                                   "source", "verified", "protocol"]
    ours = table.iloc[0]
    assert ours["worst_group_acc"] == pytest.approx(75.0)
    assert ours["average_acc"] == pytest.approx(90.0)
    assert ours["protocol"] == "ResNet-18 from scratch, 5 epochs"
    erm = table[table["method"] == "ERM"].iloc[0]
    assert (erm["worst_group_acc"], erm["average_acc"]) == (74.9, 98.1)
    assert "DFR" in erm["source"] and "ResNet-50" in erm["protocol"]
    assert table["source"].str.len().min() > 0
    assert set(table["group_labels"]) >= {"none", "val", "train"}
    civil = comparison_table("civilcomments", {"acc_avg": 0.8, "acc_wg": 0.5}, protocol="x")
    wilds_erm = civil[civil["method"] == "ERM [WILDS]"].iloc[0]
    assert (wilds_erm["average_acc"], wilds_erm["worst_group_acc"]) == (92.2, 56.0)
    assert wilds_erm["verified"] == "primary"
    markdown = to_markdown(civil)
    assert markdown.count("\n") == len(civil) + 1 and "| ERM [WILDS] |" in markdown
    with pytest.raises(ValueError, match="No published"):
        comparison_table("fmow", results, protocol="x")
    assert {r.dataset for r in PUBLISHED} == {"waterbirds", "celebA", "civilcomments"}
