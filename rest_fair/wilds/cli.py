"""``rest-fair wilds``: train REST on a WILDS dataset on disk and write leaderboard output.

The command line becomes the settings of a :class:`~rest_fair.wilds.experiment.WildsExperiment`
(``--protocol custom``: every setting from the command line, one seed unless ``--seeds``
names several; ``--protocol wilds``: the dataset's recipe from the WILDS reference code and
the leaderboard's seeds, options given overriding it), which the experiment runner
(:func:`~rest_fair.experiments.runner.run_sweep`) runs seed by seed into ``--out-dir``:
``results.jsonl``, the submission files of every seed, ``metrics.json`` and
``comparison.md`` (also printed); ``--resume`` says what happens to earlier outputs there.

Registered by :mod:`rest_fair.cli`; importing this module is cheap (torch, wilds and
torchvision are imported only when the command runs). ``python -m rest_fair.wilds.cli`` still
runs it, with a ``FutureWarning``: use ``rest-fair wilds``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import warnings
from typing import TYPE_CHECKING, Any

from .._requirements import MissingDependencyError
from ..experiments.run import check_run_params
from ..experiments.runner import (
    RESULTS_FILE,
    OneValue,
    interrupted,
    lock_folder,
    named_by_flag,
    option_flags,
    parse_path,
    parse_upweight,
    report_failed,
    run_sweep,
)
from .datasets import DATASETS, DatasetSpec, dataset_spec, load_wilds
from .synthetic import SMOKE_GROUP_COUNTS, make_synthetic_layout

if TYPE_CHECKING:
    from .experiment import WildsExperiment

__all__ = ["DIVERGED_STATUS", "add_parser", "build_parser", "main", "run"]

#: Exit status of a command whose seeds all ran, some of them (or all) diverging: the report
#: is over the others (none written when no seed finished); ``--resume`` cannot change it.
DIVERGED_STATUS = 3

_FAILED = "rest-fair wilds: seed {seed} failed: {error}"
_DIVERGED = "rest-fair wilds: seed {seed} diverged: {error} (an outcome, not retried)"
_PARTIAL = ("rest-fair wilds: the report is over {n} of the {total} seeds ({seeds}); the "
            "training of the others diverged ({diverged}; exit status {status}).")
_NONE_FINISHED = ("rest-fair wilds: no seed finished (every seed diverged); metrics.json and "
                  "comparison.md were not written{earlier} (exit status {status}).")
_EARLIER = ", those in {out_dir} are of an earlier command"
_ROOT_A_FILE = ("--root-dir: {path} is a file; expected the WILDS root folder holding "
                "{dirname}/ (with --synthetic or --download, a folder to write it into).")
_INTERRUPTED_SETUP = "rest-fair wilds: interrupted while loading the data; nothing was run."
_REPORT_KEPT = ("rest-fair wilds: --resume: the report in {out_dir} is not of these settings "
                "or data; it is kept as {kept}.")
_EARLIER_SEEDS = ("rest-fair wilds: --resume: the report covers seeds {seeds}, of which "
                  "{earlier} finished into {out_dir} by an earlier command with these "
                  "settings and data.")
_RETRY = "Rerun with --resume to retry the failed seeds (tracebacks in {path})."
#: The library's advice to pass ``module_params`` that the command cannot pass, and its words
#: for Python values the command cannot take, as a pattern and what a user of the command
#: gives instead (:func:`_in_flags`).
_ADVICE_IN_FLAGS = (
    (r"--weights must be None, (.*?) or member \(torchvision\.models\.\w+\.\w+\)",
     r"--weights must be 'none' (random init), \1"),
    (r"to (at least )?(\d+)x\2 \(e\.g\. with torchvision\.transforms\.Resize\)"
     r"(, or .*? module_params=\{[^}]*\})?", r"to \1\2x\2 with --image-size \2"),
    (r"name one with module_params=\{'tokenizer_kwargs'.*?\}\}",
     "set one in a model folder of your own and give --module hf:<folder> (tokenizer.pad_token "
     "= '<a token of its vocabulary>', then tokenizer.save_pretrained(folder) and "
     "model.save_pretrained(folder))"),
)
_MODULE_ENTRY = (
    "python -m rest_fair.wilds.cli (rest_fair.wilds.cli.main, build_parser) is deprecated and "
    "will be removed in the next release; use the `rest-fair wilds` command."
)


def _dataset(value: str) -> str:
    try:
        return dataset_spec(value).name
    except ValueError:
        message = f"--dataset: choose one of {', '.join(DATASETS)}."
        raise argparse.ArgumentTypeError(message) from None


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.register("action", None, OneValue)  # a flag given two values is refused
    parser.add_argument("--dataset", type=_dataset, required=True,
                        help="waterbirds, celebA or civilcomments")
    parser.add_argument("--root-dir", type=parse_path, required=True,
                        help="WILDS root folder containing <dataset>_v1.0/")
    parser.add_argument("--out-dir", type=parse_path, default="wilds_results",
                        help="where to write submission files, metrics.json, comparison.md "
                             "(default: %(default)s)")
    parser.add_argument("--protocol", choices=("custom", "wilds"), default="custom",
                        help="custom: settings from the command line; wilds: the WILDS "
                             "reference recipe of the dataset (options given override it)")
    parser.add_argument("--download", action="store_true",
                        help="let WILDS download the data if missing (needs network)")
    parser.add_argument("--synthetic", action="store_true",
                        help="write a tiny synthetic layout into --root-dir first (smoke test)")
    parser.add_argument("--seed", type=int,
                        help="the seed to run (default 0; with --protocol wilds, in place of "
                             "the recipe's seeds) and of the --synthetic layout; beside "
                             "--seeds, of the layout only")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="several seeds (default: --seed; with --protocol wilds and no "
                             "--seed, 0-4 for civilcomments, 0-2 otherwise)")
    parser.add_argument("--resume", action="store_true",
                        help="skip the seeds that results.jsonl records as done with the "
                             "same settings (folders of earlier versions, with "
                             "runs/seed_<k>.json, resume too); a folder with seeds of other "
                             "settings or data, or a metrics.json not written by this "
                             "command, is refused; a report of other settings is kept, "
                             "renamed with a date-time suffix. Without it, the earlier "
                             "outputs of --out-dir are all renamed that way")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--sparse-init", choices=("random", "magnitude"),
                        help="initial masks (wilds protocol: magnitude; custom: random)")
    parser.add_argument("--layer-density", choices=("erk", "uniform"))
    parser.add_argument("--dense-layers", nargs="*",
                        help="layers kept dense: first, head, embeddings or weight names "
                             "(wilds protocol: first head for images, head for text)")
    parser.add_argument("--upweight", type=parse_upweight, default="balanced",
                        help="'balanced', 'none' (no reweighting) or a number, the factor "
                             "lambda of the minority groups")
    parser.add_argument("--objective", choices=("erm", "groupdro"), default="erm")
    parser.add_argument("--module",
                        help="auto, mlp, cnn, resnet18, a torchvision model (resnet50, ...) or "
                             "hf:<name or folder> for text")
    parser.add_argument("--weights",
                        help="torchvision weights name (IMAGENET1K_V1, DEFAULT, ...), a "
                             "state-dict file, or 'none' (random init), for a torchvision "
                             "--module")
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float,
                        help="custom protocol default: 0.01 for sgd, 1e-3 for adam, 1e-5 "
                             "for adamw")
    parser.add_argument("--optimizer", choices=("auto", "sgd", "adam", "adamw"),
                        help="sgd (the REST paper's), adam (trains faster on TF-IDF text) or "
                             "adamw; auto (custom protocol default): adam for TF-IDF text, "
                             "adamw for hf: models, sgd for images")
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--lr-scheduler", choices=("plateau", "cosine", "constant"))
    parser.add_argument("--image-size", type=int,
                        help="image side after the WILDS-style transform (custom default 64; "
                             "WILDS uses 224)")
    parser.add_argument("--max-length", type=int,
                        help="tokens per text for an hf: module (wilds protocol: 300)")
    parser.add_argument("--max-features", type=int,
                        help="TF-IDF vocabulary size for text datasets without an hf: module "
                             "(default 20000)")
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
        description=__doc__.split("\n\n")[0].replace("``", ""),  # no reST markup
    )
    _configure(parser)
    parser.set_defaults(func=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The stand-alone parser of ``python -m rest_fair.wilds.cli``.

    Deprecated (a ``FutureWarning``; removed in the next release) with :func:`main`: use
    ``rest-fair wilds``.
    """
    warnings.warn(_MODULE_ENTRY, FutureWarning, stacklevel=2)
    return _configure(argparse.ArgumentParser(prog="rest-fair wilds", description=__doc__))


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); deprecated."""
    return run(build_parser().parse_args(argv))


def _in_flags(error: BaseException | str) -> str:
    """The message of ``error`` in the words of the command: the setting it opens with
    (:func:`named_by_flag`) and each ``module_params['<setting>']`` named by its flag, and
    the advice to pass ``module_params`` that the flags cannot set by what to do instead."""
    flags = option_flags(_configure(argparse.ArgumentParser()))
    message = re.sub(r"module_params\['([a-z_]+)'\]", lambda m: flags.get(m[1], m[0]),
                     named_by_flag(error, flags))
    for pattern, advice in _ADVICE_IN_FLAGS:
        message = re.sub(pattern, advice, message)
    return message


def run(args: argparse.Namespace) -> int:
    """Check and load the data, run every seed with the experiment runner, write the report.

    Returns the exit status: 0; 1 when a seed failed with an error (its record says why;
    ``--resume`` retries it; no report is written until it finishes); 2 when the command
    cannot start (another run holds ``--out-dir``, ...) or cannot write its report;
    :data:`DIVERGED_STATUS` (3) when every seed ran but the training of some diverged
    (recorded as an outcome, never retried): the report is written over the seeds that
    finished, naming the others, or not at all when none finished; 130 when interrupted
    (Ctrl-C).
    """
    from .experiment import (  # imports torch
        WildsExperiment,
        adopt_seed_files,
        check_metrics_file,
        check_resumable,
        check_wilds_requirements,
        resolve_settings,
        set_aside_outputs,
        set_aside_report,
    )

    try:
        check_wilds_requirements(args.dataset)
        spec = dataset_spec(args.dataset)
        settings = resolve_settings(args, spec)
        if args.root_dir.is_file():
            raise ValueError(_ROOT_A_FILE.format(path=args.root_dir, dirname=spec.dirname))
        if args.synthetic and not (args.root_dir / spec.dirname / spec.release_file).exists():
            make_synthetic_layout(spec.name, args.root_dir, seed=args.seed or 0,
                                  group_counts=SMOKE_GROUP_COUNTS.get(spec.name))
        dataset = load_wilds(spec.name, args.root_dir, download=args.download)
        experiment = WildsExperiment(dataset, settings, args.out_dir)
        # settings every seed would fail on leave the folder's earlier outputs in place
        check_run_params(experiment, experiment.runs()[0])
        experiment.check_network()
    except (MissingDependencyError, OSError, ValueError) as exc:
        print(f"rest-fair wilds: {_in_flags(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_INTERRUPTED_SETUP, file=sys.stderr)
        return 130
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock_folder(args.out_dir))
            if args.resume:  # a metrics.json not ours is refused before any seed runs
                check_metrics_file(args.out_dir)
                adopt_seed_files(args.out_dir)
                check_resumable(experiment)
                kept = ", ".join(map(str, set_aside_report(experiment)))
                if kept:
                    print(_REPORT_KEPT.format(out_dir=args.out_dir, kept=kept), file=sys.stderr)
            else:  # a new start: the folder's earlier outputs are renamed, all together
                set_aside_outputs(args.out_dir)
            records = run_sweep(experiment, args.out_dir, resume=args.resume, progress="none")
        except (OSError, ValueError) as exc:
            print(f"rest-fair wilds: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return interrupted("rest-fair wilds", args.out_dir, "rerun it with --resume")
        try:
            return _report(args, spec, experiment, records)
        except KeyboardInterrupt:
            return interrupted("rest-fair wilds", args.out_dir, "rerun it with --resume")
        except OSError as exc:
            return report_failed("rest-fair wilds", args.out_dir, exc, "rerun it with --resume")


def _report(args: argparse.Namespace, spec: DatasetSpec, experiment: WildsExperiment,
            records: list[dict[str, Any]]) -> int:
    """Name the seeds that failed or diverged; unless a seed failed with an error (which
    ``--resume`` retries), write and print the report of the seeds that finished: with
    ``--resume``, also of those an earlier command finished into the folder with the same
    settings and data (:func:`~rest_fair.wilds.experiment.earlier_seeds`, named on stderr).
    Returns the exit status."""
    from .experiment import earlier_seeds, write_outputs

    before = earlier_seeds(experiment, records) if args.resume else []
    records = sorted([*records, *before], key=lambda r: r["seed"])
    errors = [r for r in records if r.get("status") == "error"]
    diverged = [r for r in records if r.get("status") == "failed"]
    finished = [r for r in records if r.get("status") == "ok"]
    for record in errors:
        print(_FAILED.format(seed=record["seed"], error=_in_flags(str(record.get("error")))),
              file=sys.stderr)
    for record in diverged:
        print(_DIVERGED.format(seed=record["seed"], error=record.get("error")),
              file=sys.stderr)
    if errors:
        print(_RETRY.format(path=args.out_dir / RESULTS_FILE), file=sys.stderr)
        return 1
    out_dir = args.out_dir
    if before:
        print(_EARLIER_SEEDS.format(
            seeds=", ".join(str(r["seed"]) for r in records), out_dir=out_dir,
            earlier=", ".join(str(r["seed"]) for r in before)), file=sys.stderr)
    if not finished:
        earlier = any((out_dir / name).exists() for name in ("metrics.json", "comparison.md"))
        print(_NONE_FINISHED.format(earlier=_EARLIER.format(out_dir=out_dir) if earlier else "",
                                    status=DIVERGED_STATUS), file=sys.stderr)
        return DIVERGED_STATUS
    config = {k: v for k, v in vars(args).items()
              if k not in ("func", "argv") and not k.startswith("_given_")}
    outputs = write_outputs(finished, experiment, diverged=diverged, run_info={
        "protocol_name": args.protocol, "argv": getattr(args, "argv", None), "config": config,
        "earlier_seeds": [r["seed"] for r in before],
    })
    key = "adj_acc_avg" if spec.name == "waterbirds" else "acc_avg"
    several = len(finished) > 1
    for split, res in outputs["metrics"].items():
        std, se = outputs["metrics_std"][split], outputs["metrics_se"][split]
        value = {k: f"{res[k]:.4f}" + (f" ± {std[k]:.4f} [SE {se[k]:.4f}]" if several else "")
                 for k in (key, "acc_wg")}
        print(f"{spec.name} {split:5s}: {key} {value[key]}  acc_wg {value['acc_wg']}"
              + (f" (mean ± std, ddof=1 [standard error std/√n], over {len(finished)} seeds)"
                 if several else ""))
    for path in outputs["files"]:
        print(f"wrote {path}")
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'comparison.md'}")
    print()
    print(outputs["markdown"])
    if diverged:
        print(_PARTIAL.format(n=len(finished), total=len(records),
                              seeds=", ".join(str(r["seed"]) for r in finished),
                              diverged=", ".join(f"seed {r['seed']}" for r in diverged),
                              status=DIVERGED_STATUS), file=sys.stderr)
        return DIVERGED_STATUS
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
