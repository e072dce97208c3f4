"""``rest-fair wilds``: train REST on a WILDS dataset on disk and write leaderboard output.

Registered by :mod:`rest_fair.cli`; importing this module is cheap (torch, wilds and
torchvision are imported only when the command runs). Also runnable as
``python -m rest_fair.wilds.cli``.

Output in ``--out-dir``:

- ``submission/{dataset}_split:{split}_seed:{k}_epoch:best_pred.csv`` for val and test;
- ``metrics.json``: official WILDS metrics per split, the configuration and history;
- ``comparison.md``: our test numbers beside the published ones, with sources.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .._requirements import MissingDependencyError, Requirement, check_requirements

__all__ = ["add_parser", "build_parser", "main", "run"]

_DATASETS = ("waterbirds", "celebA", "civilcomments")
_BAD_UPWEIGHT = "--upweight: expected 'balanced', 'none' or a number; got {!r}."
_SYNTHETIC_NOTE = "SYNTHETIC DATA (rest_fair.wilds.synthetic): checks the pipeline only"
_REQUIREMENTS = (
    Requirement("wilds", "wilds==2.0.0", "wilds", "the WILDS dataset loaders and metrics"),
    Requirement("torchvision", "torchvision", "wilds",
                "imported by wilds' metrics; image transforms (install the build matching "
                "your torch)"),
    Requirement("PIL", "pillow", "wilds", "reading the images"),
)


def _upweight(value: str) -> Any:
    if value in ("balanced", "none"):
        return None if value == "none" else value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(_BAD_UPWEIGHT.format(value)) from None


def _dataset(value: str) -> str:
    for name in _DATASETS:
        if value.lower() == name.lower():
            return name
    raise argparse.ArgumentTypeError(f"--dataset: choose one of {', '.join(_DATASETS)}.")


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--dataset", type=_dataset, required=True,
                        help="waterbirds, celebA or civilcomments")
    parser.add_argument("--root-dir", required=True,
                        help="WILDS root folder containing <dataset>_v1.0/")
    parser.add_argument("--out-dir", default="wilds_results",
                        help="where to write submission files, metrics.json, comparison.md")
    parser.add_argument("--download", action="store_true",
                        help="let WILDS download the data if missing (needs network)")
    parser.add_argument("--synthetic", action="store_true",
                        help="write a tiny synthetic layout into --root-dir first (smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="seed; also the k of seed:k")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--upweight", type=_upweight, default="balanced",
                        help="'balanced', 'none' or a float lambda")
    parser.add_argument("--objective", choices=("erm", "groupdro"), default="erm")
    parser.add_argument("--module", default="auto", help="auto, mlp, cnn or resnet18")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None,
                        help="default: 0.01 for sgd, 1e-3 for adam")
    parser.add_argument("--optimizer", choices=("auto", "sgd", "adam"), default="auto",
                        help="sgd (the REST paper's) or adam (trains faster on TF-IDF text); "
                             "auto: sgd for images, adam for text")
    parser.add_argument("--image-size", type=int, default=64,
                        help="image side after the WILDS-style transform (WILDS uses 224)")
    parser.add_argument("--max-features", type=int, default=20000,
                        help="TF-IDF vocabulary size for text datasets")
    parser.add_argument("--frac", type=float, default=1.0,
                        help="random fraction of the training split (eval splits stay whole)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``wilds`` on the ``rest-fair`` subparsers.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = subparsers.add_parser(
        "wilds",
        help="train REST on a WILDS dataset (waterbirds, celebA, civilcomments)",
        description=__doc__.split("\n\n")[0],
    )
    _configure(parser)
    parser.set_defaults(func=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Stand-alone parser (``python -m rest_fair.wilds.cli``)."""
    return _configure(argparse.ArgumentParser(prog="rest-fair wilds", description=__doc__))


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Load -> fit -> official metrics -> submission files and comparison table."""
    from .datasets import dataset_spec, load_wilds
    from .leaderboard import comparison_table, to_markdown
    from .metrics import wilds_eval
    from .submission import write_submission

    try:
        check_requirements(_REQUIREMENTS, command=f"rest-fair wilds --dataset {args.dataset}")
    except MissingDependencyError as exc:
        print(f"rest-fair wilds: {exc}", file=sys.stderr)
        return 2
    spec = dataset_spec(args.dataset)
    _resolve_optimizer(args, spec)
    out_dir = Path(args.out_dir)
    if args.synthetic:
        from .synthetic import SMOKE_GROUP_COUNTS, make_synthetic_layout

        if not (Path(args.root_dir) / spec.dirname / spec.release_file).exists():
            make_synthetic_layout(spec.name, args.root_dir, seed=args.seed,
                                  group_counts=SMOKE_GROUP_COUNTS.get(spec.name))
    try:
        dataset = load_wilds(spec.name, args.root_dir, download=args.download)
    except FileNotFoundError as exc:
        print(f"rest-fair wilds: {exc}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    clf, parts, features = _fit(args, dataset, spec)
    fit_s = time.perf_counter() - start

    predictions, results = {}, {}
    for split, part in parts.items():
        y_pred = clf.predict(features[split])
        results[split] = wilds_eval(part, y_pred)
        if split != "train":
            predictions[split] = y_pred
    files = write_submission(predictions, dataset=dataset, out_dir=out_dir / "submission",
                             seed=args.seed)

    synthetic = _is_synthetic(dataset)
    protocol = _protocol(args, spec, clf, synthetic)
    eval_split = "test" if "test" in results else sorted(predictions)[-1]
    table = comparison_table(spec.name, results[eval_split], protocol=protocol)
    markdown = (
        f"# {spec.name}: REST (rest_fair) vs published, {eval_split} split\n\n"
        + ("**" + _SYNTHETIC_NOTE + "; do not compare.**\n\n" if synthetic else "")
        + "Accuracies in %. Published numbers are copied from the sources named; "
        "'cited' = read in a later paper's table. group_labels: how group labels are "
        "used (train / val / none).\n\n"
        + to_markdown(table)
        + "\n"
    )
    (out_dir / "comparison.md").write_text(markdown)
    record = {
        "dataset": spec.name,
        "synthetic_data": synthetic,
        "argv": getattr(args, "argv", None),
        "config": {k: v for k, v in vars(args).items() if k not in ("func", "argv")},
        "protocol": protocol,
        "fit_seconds": fit_s,
        "best_epoch": getattr(clf, "best_epoch_", None),
        "metrics": results,
        "history": _jsonable(getattr(clf, "history_", [])),
        "submission_files": [str(p) for p in files],
    }
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2, default=str))
    _print_summary(spec.name, results, files, out_dir)
    return 0


def _resolve_optimizer(args: argparse.Namespace, spec: Any) -> None:
    # TF-IDF rows are L2-normalised, so their entries are small and SGD at lr 0.01 barely
    # moves in a few epochs; Adam adapts its steps to them.
    if args.optimizer == "auto":
        args.optimizer = "adam" if spec.modality == "text" else "sgd"
    if args.lr is None:
        args.lr = 1e-3 if args.optimizer == "adam" else 0.01


def _fit(args: argparse.Namespace, dataset: Any, spec: Any) -> tuple[Any, dict, dict]:
    from rest_fair import RESTClassifier

    from .adapter import split_wilds

    parts = split_wilds(dataset, image_size=args.image_size, frac=args.frac,
                        random_state=args.seed)
    features = {split: part.X for split, part in parts.items()}
    if spec.modality == "text":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(max_features=args.max_features, sublinear_tf=True)
        vectorizer.fit(parts["train"].X)
        features = {split: vectorizer.transform(part.X).astype("float32")
                    for split, part in parts.items()}
    clf = RESTClassifier(
        sparsity=args.sparsity,
        upweight=args.upweight,
        objective=args.objective,
        module=args.module,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        device=args.device,
        random_state=args.seed,
        verbose=args.verbose,
        num_workers=args.num_workers,
    )
    train, val = parts["train"], parts.get("val")
    validation = None if val is None else val.validation_data(features["val"])
    clf.fit(features["train"], train.y, groups=train.groups, validation_data=validation)
    return clf, parts, features


def _protocol(args: argparse.Namespace, spec: Any, clf: Any, synthetic: bool) -> str:
    if spec.modality == "text":
        inputs = f"TF-IDF ({args.max_features} features) + {args.module} network"
    else:
        inputs = f"{args.module} network on {args.image_size}x{args.image_size} images"
    text = (
        f"{inputs}, trained from scratch (no pretraining), {args.max_epochs} epochs "
        f"(best epoch {getattr(clf, 'best_epoch_', '?')}, selected on val worst-group acc), "
        f"sparsity {args.sparsity}, upweight {args.upweight}, objective {args.objective}, "
        f"{args.optimizer} lr {args.lr}, "
        f"train fraction {args.frac}, seed {args.seed}"
    )
    return f"{_SYNTHETIC_NOTE}; {text}" if synthetic else text


def _is_synthetic(dataset: Any) -> bool:
    release = Path(dataset.data_dir) / "RELEASE_v1.0.txt"
    try:
        return "rest_fair" in release.read_text()[:200]
    except OSError:
        return False


def _jsonable(history: list) -> list:
    return [{k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
             for k, v in record.items()} for record in history]


def _print_summary(name: str, results: dict, files: list, out_dir: Path) -> None:
    key = "adj_acc_avg" if name == "waterbirds" else "acc_avg"
    for split, res in results.items():
        print(f"{name} {split:5s}: {key} {res[key]:.4f}  acc_wg {res['acc_wg']:.4f}")
    for path in files:
        print(f"wrote {path}")
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'comparison.md'}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
