"""Embedding mode on WILDS Waterbirds: frozen ResNet-50 features once, a sparse head on top.

The features of an ImageNet-pretrained ResNet-50 are computed once per split and cached
on disk with their provenance (``rest_fair.wilds.extract_features``); a sparse MLP head
(``RESTClassifier(module="mlp")``, 90 % of its weights zero, balanced group
reweighting, checkpoint chosen on validation worst-group accuracy) is then fitted on
them -- minutes on a CPU once the features exist. With the real data and the torchvision
weights (downloaded once into torch.hub's cache, or a local state-dict file)::

    python examples/wilds_embedding_mode.py --root-dir data --weights IMAGENET1K_V2

Without the data the script runs on a tiny SYNTHETIC layout; without the weights it
falls back to a randomly initialised ResNet-50 (``--weights none``). Numbers from either
fallback only show that the pipeline runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rest_fair import RESTClassifier
from rest_fair.wilds import (
    comparison_table,
    expected_layout,
    extract_features,
    load_wilds,
    make_synthetic_layout,
    split_wilds,
    to_markdown,
    wilds_eval,
    write_submission,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or 'Embedding mode').splitlines()[0])
    parser.add_argument("--root-dir", default="data", help="WILDS root with waterbirds_v1.0/")
    parser.add_argument("--out-dir", default="waterbirds_embedding_results")
    parser.add_argument("--cache-dir", default=None,
                        help="feature cache (default ~/.cache/rest_fair/features)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="IMAGENET1K_V2",
                        help="torchvision weights name, state-dict file, or 'none'")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    root, synthetic = Path(args.root_dir), False
    try:
        dataset = load_wilds("waterbirds", root)
    except FileNotFoundError:
        print(f"No Waterbirds data under {root}. Expected:\n{expected_layout('waterbirds', root)}")
        print("Running on a tiny SYNTHETIC layout instead -- not Waterbirds results.\n",
              file=sys.stderr)
        root = Path(tempfile.mkdtemp(prefix="rest_fair_waterbirds_"))
        make_synthetic_layout("waterbirds", root, image_size=32, seed=args.seed)
        dataset, synthetic = load_wilds("waterbirds", root), True
        args.image_size = min(args.image_size, 64)
    weights = None if args.weights.lower() == "none" else args.weights

    parts = split_wilds(dataset, image_size=args.image_size)
    try:
        features = {split: extract_features(part, backbone=args.backbone, weights=weights,
                                            cache_dir=args.cache_dir, device=args.device)
                    for split, part in parts.items()}
    except OSError as exc:  # weights not on disk and no network
        print(f"{exc}\nFalling back to a randomly initialised {args.backbone} "
              "(pipeline check only).\n", file=sys.stderr)
        weights = None
        features = {split: extract_features(part, backbone=args.backbone, weights=None,
                                            cache_dir=args.cache_dir, device=args.device)
                    for split, part in parts.items()}
    train, val, test = parts["train"], parts["val"], parts["test"]
    print(f"features: {features['train'].shape[1]} per image, cached at "
          f"{Path(features['train'].filename).parent}")

    clf = RESTClassifier(module="mlp", module_params={"hidden_layer_sizes": (512,)},
                         sparsity=args.sparsity, upweight="balanced", optimizer="adam",
                         lr=1e-3, max_epochs=args.epochs, batch_size=128,
                         device=args.device, random_state=args.seed)
    clf.fit(features["train"], train.y, groups=train.groups,
            validation_data=(features["val"], val.y, val.groups))

    predictions = {"val": clf.predict(features["val"]), "test": clf.predict(features["test"])}
    results = wilds_eval(test, predictions["test"])
    print(f"test adj_acc_avg {results['adj_acc_avg']:.4f}  acc_wg {results['acc_wg']:.4f}")
    out = Path(args.out_dir)
    files = write_submission(predictions, dataset=dataset, out_dir=out / "submission",
                             seed=args.seed)
    protocol = (f"{'SYNTHETIC DATA; ' if synthetic else ''}frozen {args.backbone} "
                f"({weights or 'random init'}) features at {args.image_size}px, sparse MLP "
                f"head (512 hidden, sparsity {args.sparsity}), {args.epochs} epochs, "
                "balanced group reweighting, seed " + str(args.seed))
    table = comparison_table(dataset, results, protocol=protocol)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(to_markdown(table) + "\n")
    print(to_markdown(table[["method", "group_labels", "worst_group_acc", "average_acc",
                             "source"]]))
    print("wrote", *[str(p) for p in files], str(out / "comparison.md"), sep="\n  ")


if __name__ == "__main__":
    main()
