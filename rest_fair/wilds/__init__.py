"""WILDS integration: load WILDS datasets, train :class:`rest_fair.RESTClassifier` on
them, compute the official metrics and write leaderboard files.

Needs the optional extra ``pip install 'rest-fair[wilds]'`` (wilds 2.0.0, torchvision,
pillow). Importing this package does not import ``wilds`` or ``torchvision``; they are
imported on first use, with ``wilds``' background PyPI version check disabled (see
:func:`rest_fair.wilds.import_wilds`).

Typical use::

    from rest_fair import RESTClassifier
    from rest_fair.wilds import load_wilds, split_wilds, wilds_eval, write_submission

    dataset = load_wilds("waterbirds", root_dir="data")
    parts = split_wilds(dataset, image_size=64)
    train, val, test = parts["train"], parts["val"], parts["test"]
    clf = RESTClassifier(module="resnet18").fit(
        train.X, train.y, groups=train.groups, validation_data=val.validation_data()
    )
    results = wilds_eval(test, clf.predict(test.X))   # acc_wg, adj_acc_avg, acc_y:...
    write_submission({"val": clf.predict(val.X), "test": clf.predict(test.X)},
                     dataset=dataset, out_dir="submission", seed=0)
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_DEFINED_IN = {
    ".datasets": ["DATASETS", "dataset_spec", "expected_layout", "load_wilds"],
    ".adapter": ["WILDSImageDataset", "WILDSSplit", "default_image_transform", "from_wilds",
                 "split_wilds", "wilds_grouper"],
    ".metrics": ["wilds_eval"],
    ".submission": ["read_predictions", "submission_filename", "write_submission"],
    ".leaderboard": ["PUBLISHED", "comparison_table", "to_markdown"],
    ".synthetic": ["make_synthetic_layout"],
    "._compat": ["import_wilds"],
    ".features": ["extract_features"],
}
__all__ = sorted(name for names in _DEFINED_IN.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _DEFINED_IN)
