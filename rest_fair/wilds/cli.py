"""``rest-fair wilds``: train REST on a WILDS dataset on disk and write leaderboard output.

Registered by :mod:`rest_fair.cli`; importing this module is cheap (torch, wilds and
torchvision are imported only when the command runs). Also runnable as
``python -m rest_fair.wilds.cli``.

Two protocols:

- ``--protocol custom`` (default): every setting from the command line (a network trained
  from scratch unless ``--weights`` or an ``hf:`` module is given), one seed;
- ``--protocol wilds``: each dataset's recipe from the WILDS reference code
  (:mod:`rest_fair.wilds.protocol`: pretrained backbone, input transform, optimizer,
  learning rate, weight decay, batch size, epochs, checkpoint selection on validation
  worst-group accuracy) and the number of seeds the leaderboard expects (5 for
  CivilComments, 3 otherwise). Options given on the command line override the recipe.

Output in ``--out-dir``:

- ``submission/{dataset}_split:{split}_seed:{k}_epoch:best_pred.csv`` for val and test,
  for every seed;
- ``runs/seed_{k}.json``: one seed's metrics, history and settings (``--resume`` reuses
  them);
- ``metrics.json``: official WILDS metrics per split (mean over seeds, and their standard
  deviation), the configuration and every seed's record;
- ``comparison.md``: our test numbers (mean ± std over seeds) beside the published ones,
  with sources; also printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from .._requirements import MissingDependencyError, Requirement, check_requirements
from .datasets import dataset_spec, load_wilds
from .protocol import recipe_for
from .submission import write_submission
from .synthetic import SMOKE_GROUP_COUNTS, make_synthetic_layout

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
_RANDOM_INIT = "none (random init)"
_WEIGHTS_NEED_BACKBONE = (
    "--weights needs a torchvision --module (e.g. resnet50); got --module {module!r}."
)
#: What ``--protocol custom`` uses for options left unset (the recipe fills them in for
#: ``--protocol wilds``).
CUSTOM_DEFAULTS = {
    "module": "auto",
    "weights": None,
    "max_epochs": 10,
    "batch_size": 64,
    "lr": None,  # by optimizer: see _default_optimizer
    "optimizer": "auto",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_scheduler": "plateau",
    "image_size": 64,
    "max_length": None,
    "sparse_init": "random",
    "layer_density": "erk",
    "dense_layers": (),
}


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
    parser.add_argument("--protocol", choices=("custom", "wilds"), default="custom",
                        help="custom: settings from the command line; wilds: the WILDS "
                             "reference recipe of the dataset (options given override it)")
    parser.add_argument("--download", action="store_true",
                        help="let WILDS download the data if missing (needs network)")
    parser.add_argument("--synthetic", action="store_true",
                        help="write a tiny synthetic layout into --root-dir first (smoke test)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of a custom run; also the k of seed:k")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="several seeds (default: --seed; with --protocol wilds 0-4 for "
                             "civilcomments, 0-2 otherwise)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse runs/seed_<k>.json of seeds already done with the same "
                             "settings")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--sparse-init", choices=("random", "magnitude"), default=None,
                        help="initial masks (wilds protocol: magnitude; custom: random)")
    parser.add_argument("--layer-density", choices=("erk", "uniform"), default=None)
    parser.add_argument("--dense-layers", nargs="*", default=None,
                        help="layers kept dense: first, head, embeddings or weight names "
                             "(wilds protocol: first head for images, head for text)")
    parser.add_argument("--upweight", type=_upweight, default="balanced",
                        help="'balanced', 'none' or a float lambda")
    parser.add_argument("--objective", choices=("erm", "groupdro"), default="erm")
    parser.add_argument("--module", default=None,
                        help="auto, mlp, cnn, resnet18, a torchvision model (resnet50, ...) or "
                             "hf:<name or folder> for text")
    parser.add_argument("--weights", default=None,
                        help="torchvision weights name (IMAGENET1K_V1, DEFAULT, ...), a "
                             "state-dict file, or 'none' (random init), for a torchvision "
                             "--module")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None,
                        help="custom protocol default: 0.01 for sgd, 1e-3 for adam, 1e-5 "
                             "for adamw")
    parser.add_argument("--optimizer", choices=("auto", "sgd", "adam", "adamw"), default=None,
                        help="sgd (the REST paper's), adam (trains faster on TF-IDF text) or "
                             "adamw; auto (custom protocol default): adam for TF-IDF text, "
                             "adamw for hf: models, sgd for images")
    parser.add_argument("--momentum", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--lr-scheduler", choices=("plateau", "cosine", "constant"),
                        default=None)
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side after the WILDS-style transform (custom default 64; "
                             "WILDS uses 224)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="tokens per text for an hf: module (wilds protocol: 300)")
    parser.add_argument("--max-features", type=int, default=20000,
                        help="TF-IDF vocabulary size for text datasets without an hf: module")
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


def resolve_settings(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """The training settings of a run: command line > WILDS recipe > custom defaults.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed command line.
    spec : DatasetSpec
        The dataset.

    Returns
    -------
    dict
        Every setting :func:`run` uses, plus ``"seeds"`` and, for ``--protocol wilds``,
        ``"recipe"`` (the recipe's values) and ``"overridden"`` (settings the command
        line changed).
    """
    given = {key: getattr(args, key) for key in CUSTOM_DEFAULTS}
    random_init = isinstance(given["weights"], str) and given["weights"].lower() == "none"
    if random_init:
        given["weights"] = _RANDOM_INIT
    extra: dict[str, Any] = {}
    if args.protocol == "wilds":
        recipe = recipe_for(spec.name)
        base = {
            "module": recipe.module, "weights": recipe.weights,
            "max_epochs": recipe.max_epochs, "batch_size": recipe.batch_size,
            "lr": recipe.lr, "optimizer": recipe.optimizer, "momentum": recipe.momentum,
            "weight_decay": recipe.weight_decay, "lr_scheduler": "constant",
            "image_size": recipe.image_size or CUSTOM_DEFAULTS["image_size"],
            "max_length": recipe.max_length, "sparse_init": "magnitude",
            "layer_density": "erk", "dense_layers": recipe.dense_layers,
        }
        overridden = sorted(k for k, v in given.items()
                            if v is not None and _jsonable_value(v) != _jsonable_value(base[k]))
        extra = {"recipe": dataclasses.asdict(recipe), "overridden": overridden}
        default_seeds = recipe.seeds
    else:
        base = dict(CUSTOM_DEFAULTS)
        default_seeds = [args.seed]
    settings = dict(base)
    settings.update({k: v for k, v in given.items() if v is not None})
    if given["module"] not in (None, base["module"]) and given["weights"] is None:
        settings["weights"] = None  # the recipe's weights belong to the recipe's backbone
    if random_init:
        settings["weights"] = None
    if settings["optimizer"] == "auto":
        settings["optimizer"] = _default_optimizer(spec, settings["module"])
    if settings["lr"] is None:
        settings["lr"] = _DEFAULT_LR[settings["optimizer"]]
    settings["dense_layers"] = tuple(settings["dense_layers"] or ())
    settings["seeds"] = list(args.seeds) if args.seeds else default_seeds
    settings.update(extra)
    return settings


#: ``--protocol custom``'s learning rate when ``--lr`` is not given, by optimizer.
_DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-5}


def _default_optimizer(spec: Any, module: str) -> str:
    """The custom protocol's optimizer for ``--optimizer auto``."""
    if module.startswith("hf:"):
        return "adamw"  # pretrained transformers are fine-tuned with AdamW (WILDS' recipe)
    if spec.modality == "text":
        # TF-IDF rows are L2-normalised, so their entries are small and SGD at lr 0.01
        # barely moves in a few epochs; Adam adapts its steps to them.
        return "adam"
    return "sgd"


def _module_params(settings: dict[str, Any]) -> dict[str, Any] | None:
    module = settings["module"]
    if module.startswith("hf:"):
        return {"max_length": settings["max_length"]} if settings["max_length"] else None
    if settings["weights"] is not None:
        if module in ("auto", "mlp", "cnn"):
            raise ValueError(_WEIGHTS_NEED_BACKBONE.format(module=module))
        return {"weights": settings["weights"]}
    return None


def run(args: argparse.Namespace) -> int:
    """Load -> fit every seed -> official metrics -> submission files and comparison table."""
    from .leaderboard import comparison_table, to_markdown  # pandas: not at `rest-fair --help`

    try:
        check_requirements(_REQUIREMENTS, command=f"rest-fair wilds --dataset {args.dataset}")
    except MissingDependencyError as exc:
        print(f"rest-fair wilds: {exc}", file=sys.stderr)
        return 2
    spec = dataset_spec(args.dataset)
    out_dir = Path(args.out_dir)
    if args.synthetic:
        if not (Path(args.root_dir) / spec.dirname / spec.release_file).exists():
            make_synthetic_layout(spec.name, args.root_dir, seed=args.seed,
                                  group_counts=SMOKE_GROUP_COUNTS.get(spec.name))
    try:
        dataset = load_wilds(spec.name, args.root_dir, download=args.download)
    except FileNotFoundError as exc:
        print(f"rest-fair wilds: {exc}", file=sys.stderr)
        return 2
    settings = resolve_settings(args, spec)
    try:
        module_params = _module_params(settings)
    except ValueError as exc:
        print(f"rest-fair wilds: {exc}", file=sys.stderr)
        return 2

    synthetic = _is_synthetic(dataset)
    config = {k: v for k, v in vars(args).items() if k not in ("func", "argv")}
    runs: list[dict] = []
    files: list[Path] = []
    data_cache: dict = {}
    for seed in settings["seeds"]:
        expected = _jsonable_value(_seed_settings(settings, args))
        record = _load_run(out_dir, seed, expected) if args.resume else None
        if record is None:
            record = _run_seed(args, settings, module_params, dataset, spec, seed, out_dir,
                               data_cache)
        runs.append(record)
        files += [Path(f) for f in record["submission_files"]]

    metrics, metrics_std = _aggregate([r["metrics"] for r in runs])
    protocol = _protocol(args, settings, runs, synthetic)
    eval_split = "test" if "test" in metrics else sorted(metrics)[-1]
    group_labels = "val" if (args.upweight is None and args.objective == "erm") else "train"
    seed_results = [r["metrics"][eval_split] for r in runs]
    table = comparison_table(spec.name, seed_results if len(runs) > 1 else seed_results[0],
                             protocol=protocol, group_labels=group_labels)
    seeds_text = ", ".join(str(s) for s in settings["seeds"])
    markdown = (
        f"# {spec.name}: REST (rest_fair) vs published, {eval_split} split\n\n"
        + ("**" + _SYNTHETIC_NOTE + "; do not compare.**\n\n" if synthetic else "")
        + f"Our row: mean ± std (ddof=1) over seeds {seeds_text}. "
        "Accuracies in %. Published numbers are copied from the sources named; "
        "'cited' = read in a later paper's table. group_labels: how group labels are "
        "used (train / val / none).\n\n"
        + to_markdown(table)
        + "\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(markdown)
    summary = {
        "dataset": spec.name,
        "synthetic_data": synthetic,
        "protocol_name": args.protocol,
        "argv": getattr(args, "argv", None),
        "config": config,
        "settings": _jsonable_value(settings),
        "protocol": protocol,
        "seeds": settings["seeds"],
        "metrics": metrics,
        "metrics_std": metrics_std,
        "runs": runs,
        "fit_seconds": sum(r["fit_seconds"] for r in runs),
        "best_epoch": runs[0]["best_epoch"] if len(runs) == 1 else None,
        "history": runs[0]["history"] if len(runs) == 1 else None,
        "submission_files": [str(p) for p in files],
    }
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(spec.name, metrics, metrics_std, len(runs), files, out_dir)
    print()
    print(markdown)
    return 0


def _splits(args: argparse.Namespace, settings: dict, dataset: Any, spec: Any, seed: int,
            cache: dict) -> tuple[dict, dict]:
    """The splits and the model inputs of each; shared by seeds unless --frac < 1."""
    from .adapter import split_wilds  # imports torch: not at `rest-fair --help`

    key = seed if args.frac < 1.0 else None
    if key in cache:
        return cache[key]
    parts = split_wilds(dataset, image_size=settings["image_size"], frac=args.frac,
                        random_state=seed)
    features = {split: part.X for split, part in parts.items()}
    if spec.modality == "text" and not settings["module"].startswith("hf:"):
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(max_features=args.max_features, sublinear_tf=True)
        vectorizer.fit(parts["train"].X)
        features = {split: vectorizer.transform(part.X).astype("float32")
                    for split, part in parts.items()}
    cache[key] = (parts, features)
    return parts, features


def _run_seed(args: argparse.Namespace, settings: dict, module_params: dict | None,
              dataset: Any, spec: Any, seed: int, out_dir: Path, cache: dict) -> dict:
    """Fit one seed, evaluate it, write its submission files and runs/seed_<k>.json."""
    from rest_fair import RESTClassifier  # imports torch: not at `rest-fair --help`

    from .metrics import wilds_eval
    parts, features = _splits(args, settings, dataset, spec, seed, cache)
    clf = RESTClassifier(
        sparsity=args.sparsity,
        sparse_init=settings["sparse_init"],
        layer_density=settings["layer_density"],
        dense_layers=settings["dense_layers"],
        upweight=args.upweight,
        objective=args.objective,
        module=settings["module"],
        module_params=module_params,
        max_epochs=settings["max_epochs"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        optimizer=settings["optimizer"],
        momentum=settings["momentum"],
        weight_decay=settings["weight_decay"],
        lr_scheduler=settings["lr_scheduler"],
        device=args.device,
        random_state=seed,
        verbose=args.verbose,
        num_workers=args.num_workers,
    )
    train, val = parts["train"], parts.get("val")
    validation = None if val is None else val.validation_data(features["val"])
    start = time.perf_counter()
    clf.fit(features["train"], train.y, groups=train.groups, validation_data=validation)
    fit_s = time.perf_counter() - start

    evaluated = [s for s in parts if s != "train" or args.protocol == "custom"]
    predictions, results = {}, {}
    for split in evaluated:
        y_pred = clf.predict(features[split])
        results[split] = wilds_eval(parts[split], y_pred)
        if split != "train":
            predictions[split] = y_pred
    files = write_submission(predictions, dataset=dataset, out_dir=out_dir / "submission",
                             seed=seed)
    record = {
        "seed": seed,
        "settings": _jsonable_value(_seed_settings(settings, args)),
        "metrics": results,
        "best_epoch": getattr(clf, "best_epoch_", None),
        "density": _density(clf.masks_),
        "fit_seconds": fit_s,
        "history": _jsonable(getattr(clf, "history_", [])),
        "submission_files": [str(p) for p in files],
    }
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / f"seed_{seed}.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def _density(masks: dict) -> float:
    """Fraction of active weights over the masked layers (1.0 when dense)."""
    total = sum(m.numel() for m in masks.values())
    return float(sum(int(m.sum()) for m in masks.values()) / total) if total else 1.0


def _seed_settings(settings: dict, args: argparse.Namespace) -> dict:
    keep = {k: settings[k] for k in CUSTOM_DEFAULTS}
    keep.update(sparsity=args.sparsity, upweight=args.upweight, objective=args.objective,
                frac=args.frac, max_features=args.max_features, protocol=args.protocol)
    return keep


def _load_run(out_dir: Path, seed: int, expected: dict) -> dict | None:
    """A finished seed's record, if it ran with ``expected`` settings and its files exist."""
    path = out_dir / "runs" / f"seed_{seed}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("settings") != expected:
        return None
    if not all(Path(f).exists() for f in record.get("submission_files", [])):
        return None
    return record


def _aggregate(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and sample std (ddof=1, as WILDS' evaluate.py) of every metric per split."""
    import numpy as np

    means: dict = {}
    stds: dict = {}
    for split in per_seed[0]:
        keys = per_seed[0][split]
        means[split] = {k: float(np.mean([r[split][k] for r in per_seed])) for k in keys}
        stds[split] = {
            k: (float(np.std([r[split][k] for r in per_seed], ddof=1))
                if len(per_seed) > 1 else None)
            for k in keys
        }
    return means, stds


def _protocol(args: argparse.Namespace, settings: dict, runs: list[dict],
              synthetic: bool) -> str:
    module = settings["module"]
    if module.startswith("hf:"):
        length = settings["max_length"] or "tokenizer limit"
        inputs = f"{module[3:]} (Hugging Face, pretrained) on text, {length} tokens"
    elif module == "auto" or module in ("mlp", "cnn") or (
        module == "resnet18" and settings["weights"] is None
    ):
        if args.dataset == "civilcomments":
            inputs = f"TF-IDF ({args.max_features} features) + {module} network"
        else:
            inputs = f"{module} network on {settings['image_size']}px images"
    else:
        weights = settings["weights"]
        start = f"{weights} weights" if weights else "random init"
        inputs = f"{module} ({start}) on {settings['image_size']}px images"
    pretrained = module.startswith("hf:") or settings["weights"] is not None
    best = ", ".join(str(r["best_epoch"]) for r in runs)
    masks = (f"sparsity {args.sparsity} ({settings['sparse_init']} init, "
             f"{settings['layer_density']}, dense: {', '.join(settings['dense_layers']) or '-'})"
             if args.sparsity > 0 else "dense")
    text = (
        f"{inputs}, {'fine-tuned' if pretrained else 'trained from scratch'}, "
        f"{settings['max_epochs']} epochs (best epoch {best}, selected on val worst-group "
        f"acc), {masks}, upweight {args.upweight}, objective {args.objective}, "
        f"{settings['optimizer']} lr {settings['lr']} wd {settings['weight_decay']} batch "
        f"{settings['batch_size']}, lr schedule {settings['lr_scheduler']}, "
        f"train fraction {args.frac}, seeds {', '.join(str(s) for s in settings['seeds'])}"
    )
    if args.protocol == "wilds":
        recipe = settings["recipe"]
        text = f"WILDS recipe ({recipe['source']}); " + text
        if settings["overridden"]:
            text += f"; overridden: {', '.join(settings['overridden'])}"
        text += "; deviations: " + "; ".join(recipe["deviations"])
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


def _jsonable_value(value: Any) -> Any:
    """Tuples as lists, so settings compare equal after a JSON round trip."""
    if isinstance(value, dict):
        return {k: _jsonable_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable_value(v) for v in value]
    return value


def _print_summary(name: str, metrics: dict, stds: dict, n_runs: int, files: list,
                   out_dir: Path) -> None:
    key = "adj_acc_avg" if name == "waterbirds" else "acc_avg"
    for split, res in metrics.items():
        line = f"{name} {split:5s}: {key} {res[key]:.4f}  acc_wg {res['acc_wg']:.4f}"
        if n_runs > 1:
            line = (f"{name} {split:5s}: {key} {res[key]:.4f} ± {stds[split][key]:.4f}  "
                    f"acc_wg {res['acc_wg']:.4f} ± {stds[split]['acc_wg']:.4f} "
                    f"({n_runs} seeds)")
        print(line)
    for path in files:
        print(f"wrote {path}")
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'comparison.md'}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
