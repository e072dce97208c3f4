"""The experiment of ``rest-fair wilds``: its settings (:func:`resolve_settings`), a run per
seed (:class:`WildsExperiment`, run by :func:`~rest_fair.experiments.runner.run_sweep`, which
records the runs in ``results.jsonl`` and resumes them) and its report (:func:`write_outputs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from .._requirements import Requirement, check_requirements
from .._validation import POSITIVE_INT, RANDOM_STATE, Interval
from ..exceptions import TrainingDivergedError
from ..experiments.run import digest, jsonable, standard_error, unread_params
from ..experiments.runner import (
    RESULTS_FILE,
    append_record,
    finished,
    locate,
    read_own_json,
    read_results,
    set_aside,
)
from .adapter import split_wilds
from .datasets import DatasetSpec, dataset_spec
from .leaderboard import comparison_table, to_markdown
from .metrics import wilds_eval
from .protocol import recipe_for
from .submission import write_submission

__all__ = ["CUSTOM_DEFAULTS", "RUN_SETTINGS", "SeedRun", "WildsExperiment", "adopt_seed_files",
           "check_metrics_file", "check_resumable", "check_wilds_requirements",
           "earlier_seeds", "resolve_settings", "run_settings", "set_aside_outputs",
           "set_aside_report", "write_outputs"]

_REQUIREMENTS = (
    Requirement("wilds", "wilds==2.0.0", "wilds", "the WILDS dataset loaders and metrics"),
    Requirement("torchvision", "torchvision", "wilds",
                "imported by wilds' metrics; image transforms (install the build matching "
                "your torch)"),
    Requirement("PIL", "pillow", "wilds", "reading the images"),
)
_SYNTHETIC_NOTE = "SYNTHETIC DATA (rest_fair.wilds.synthetic): checks the pipeline only"
_WEIGHTS_NEED_BACKBONE = (
    "--weights needs a torchvision --module (e.g. resnet50); got --module {module!r} (a "
    "Hugging Face module's pretrained weights are the ones its name gives)."
)
#: What ``--protocol custom`` uses for options left unset (the recipe fills them in for
#: ``--protocol wilds``).
CUSTOM_DEFAULTS = {
    "module": "auto",
    "weights": None,
    "max_epochs": 10,
    "batch_size": 64,
    "lr": None,  # by optimizer: see _DEFAULT_LR
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
#: The settings a seed's results depend on: a finished seed is reused only with the same.
RUN_SETTINGS = (*CUSTOM_DEFAULTS, "dataset", "sparsity", "upweight", "objective", "frac",
                "max_features", "protocol")
#: Settings passed to :class:`~rest_fair.RESTClassifier` as they are.
_ESTIMATOR_SETTINGS = ("sparsity", "sparse_init", "layer_density", "dense_layers", "upweight",
                       "objective", "module", "module_params", "max_epochs", "batch_size", "lr",
                       "optimizer", "momentum", "weight_decay", "lr_scheduler", "device",
                       "verbose", "num_workers")
#: ``--protocol custom``'s learning rate when ``--lr`` is not given, by optimizer.
_DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-5}
_BAD_SETTING = "--{flag} must be {rule}; got {value!r}."
_BAD_SEEDS = "--seeds must be distinct integers in [0, 4294967295]; got {seeds}."
_OTHER_SETTINGS = (
    "--resume: {out_dir} holds seed {seed} run with other settings ({changed}); its "
    "submission files would be overwritten by this configuration's. Resume with the same "
    "settings, drop --resume to start afresh (the earlier outputs are renamed, not "
    "deleted), or use another --out-dir."
)
_OTHER_DATA = (
    "--resume: {out_dir} holds seed {seed} trained on {theirs}; this command reads {ours}. "
    "Resume with the data of that seed (--root-dir), drop --resume to start afresh (the "
    "earlier outputs are renamed, not deleted), or use another --out-dir."
)
_NOTHING_TO_REPORT = "no seed finished: there is nothing to report."
_UNKNOWN_DATA = (
    "--resume: {out_dir} holds seeds {seeds} recorded by an earlier version without their "
    "data; they are reused as trained on {ours}."
)
_REPORT = ("metrics.json", "comparison.md")
_UNREAD_FLAGS = (
    "{flags}: not read by the runs of these settings, so changing nothing (recorded as None): "
    "the mask settings with --sparsity 0, --momentum without SGD, --max-features and "
    "--max-length with an image dataset, --image-size with a text one, --max-length without "
    "an hf: --module and --max-features with one."
)
#: ``--max-features`` when not given: the TF-IDF vocabulary of a text dataset.
_MAX_FEATURES = 20000
_SEED_NOT_RUN = ("--seed {seed} is not run: --seeds names the seeds that run ({seeds}); "
                 "beside --seeds, --seed seeds only a --synthetic layout.")
_NOT_A_FOLDER = ("--resume: {path} is not a folder; the seeds write their submission files "
                 "there: move it away or choose another --out-dir.")


def check_wilds_requirements(dataset: str) -> None:
    """Fail once, naming every missing package, when the WILDS extra is not installed."""
    check_requirements(_REQUIREMENTS, command=f"rest-fair wilds --dataset {dataset}")


def resolve_settings(args: argparse.Namespace, spec: DatasetSpec) -> dict[str, Any]:
    """The settings of a command: command line > WILDS recipe > custom defaults.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed command line of ``rest-fair wilds``.
    spec : DatasetSpec
        The dataset.

    Returns
    -------
    dict
        The keys of :data:`CUSTOM_DEFAULTS` and the other options of the runs
        (``dataset``, ``sparsity``, ``upweight`` (None for ``--upweight none``),
        ``objective``, ``frac``, ``max_features``, ``protocol``, ``device``,
        ``num_workers``, ``verbose``), ``module_params``, ``"seeds"`` (``--seeds``, else
        ``--seed``, else the recipe's or 0) and, for ``--protocol wilds``, ``"recipe"`` (the
        recipe's values) and ``"overridden"`` (settings the command line changed).

    Raises
    ------
    ValueError
        ``--weights`` with a module that is not a torchvision model (``auto``, ``mlp``,
        ``cnn`` or a Hugging Face ``hf:`` name); a ``--frac`` outside (0, 1], a
        ``--max-features``, ``--image-size`` or ``--max-length`` below 1, repeated or
        negative ``--seeds``, or a negative ``--seed``.

    Warns
    -----
    UserWarning
        Naming the options given that the runs of these settings do not read
        (:func:`run_settings`): they change nothing; and ``--seed`` beside ``--seeds``
        without ``--synthetic``, which is not run (``--seeds`` names the seeds).
    """
    given = {key: getattr(args, key) for key in CUSTOM_DEFAULTS}
    random_init = isinstance(given["weights"], str) and given["weights"].lower() == "none"
    extra: dict[str, Any] = {}
    if args.protocol == "wilds":
        recipe = recipe_for(spec.name)
        base = {key: getattr(recipe, key, None) for key in CUSTOM_DEFAULTS}
        base.update(lr_scheduler="constant", sparse_init="magnitude", layer_density="erk",
                    image_size=recipe.image_size or CUSTOM_DEFAULTS["image_size"])
        overridden = sorted(k for k, v in given.items()
                            if v is not None and jsonable(v) != jsonable(base[k]))
        extra = {"recipe": dataclasses.asdict(recipe), "overridden": overridden}
        default_seeds = recipe.seeds if args.seed is None else [args.seed]
    else:
        base = dict(CUSTOM_DEFAULTS)
        default_seeds = [0 if args.seed is None else args.seed]
    settings = {**base, **{k: v for k, v in given.items() if v is not None}}
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
    settings.update(
        dataset=spec.name, sparsity=args.sparsity,
        upweight=None if args.upweight == "none" else args.upweight,
        objective=args.objective, frac=args.frac, protocol=args.protocol, device=args.device,
        num_workers=args.num_workers, verbose=args.verbose,
        max_features=_MAX_FEATURES if args.max_features is None else args.max_features,
    )
    settings.update(extra, module_params=_module_params(settings))
    if args.seed is not None and not _SEED.accepts(args.seed):  # also a --synthetic layout's
        raise ValueError(_BAD_SETTING.format(flag="seed", rule=_SEED.describe(),
                                             value=args.seed))
    _check_data_settings(settings)
    if args.seeds and args.seed is not None and not args.synthetic:
        warnings.warn(_SEED_NOT_RUN.format(seed=args.seed, seeds=", ".join(map(str, args.seeds))),
                      UserWarning, stacklevel=2)
    read = run_settings(settings)
    unread = [k for k, v in {**given, "max_features": args.max_features}.items()
              if v is not None and settings[k] is not None and read[k] is None]
    if unread:
        warnings.warn(_UNREAD_FLAGS.format(flags=", ".join(
            "--" + k.replace("_", "-") for k in unread)), UserWarning, stacklevel=2)
    return settings


#: A seed: the estimator's ``random_state`` (an integer in [0, 2**32 - 1]).
_SEED = RANDOM_STATE[1]
# the data settings that no estimator check sees, each with its flag and allowed values
_DATA_SETTINGS = (
    ("frac", "frac", Interval(Real, 0, 1, "right")),
    ("max_features", "max-features", POSITIVE_INT),
    ("image_size", "image-size", POSITIVE_INT),
    ("max_length", "max-length", POSITIVE_INT),
)


def _check_data_settings(settings: dict[str, Any]) -> None:
    """Refuse, before any seed runs, data settings that would fail every seed."""
    for key, flag, allowed in _DATA_SETTINGS:
        value = settings.get(key)
        if value is not None and not allowed.accepts(value):
            raise ValueError(_BAD_SETTING.format(flag=flag, rule=allowed.describe(),
                                                 value=value))
    seeds = settings["seeds"]
    if len(set(seeds)) < len(seeds) or not all(_SEED.accepts(s) for s in seeds):
        raise ValueError(_BAD_SEEDS.format(seeds=seeds))


def _default_optimizer(spec: DatasetSpec, module: str) -> str:
    """The custom protocol's optimizer for ``--optimizer auto``."""
    if module.startswith("hf:"):
        return "adamw"  # pretrained transformers are fine-tuned with AdamW (WILDS' recipe)
    if spec.modality == "text":
        # TF-IDF rows are L2-normalised, so their entries are small and SGD at lr 0.01
        # barely moves in a few epochs; Adam adapts its steps to them.
        return "adam"
    return "sgd"


def _module_params(settings: dict[str, Any]) -> dict[str, Any] | None:
    """``RESTClassifier(module_params=...)``: the text length or the backbone's weights."""
    module = settings["module"]
    if settings["weights"] is not None and (module in ("auto", "mlp", "cnn")
                                            or module.startswith("hf:")):
        raise ValueError(_WEIGHTS_NEED_BACKBONE.format(module=module))
    if module.startswith("hf:"):
        return {"max_length": settings["max_length"]} if settings["max_length"] else None
    if settings["weights"] is not None:
        return {"weights": settings["weights"]}
    return None


@dataclasses.dataclass(frozen=True)
class SeedRun:
    """One seed of a ``rest-fair wilds`` command: a run of :class:`WildsExperiment`.

    ``seed`` is the estimator's (and ``--frac``'s) ``random_state`` and the ``k`` of the
    submission files' ``seed:k``; ``settings`` the JSON-ready values of :data:`RUN_SETTINGS`;
    ``data`` the data it trains on (:attr:`WildsExperiment.data`), recorded with the run,
    also when it fails, but not part of its id.
    """

    seed: int
    settings: dict[str, Any]
    data: dict[str, Any] | None = None

    @property
    def run_id(self) -> str:
        """The seed and a hash of the settings: the key of the run in the results file."""
        return f"seed={self.seed}|{digest(self.settings)}"

    @property
    def label(self) -> str:
        """The run in progress lines."""
        return f"seed={self.seed}"


@dataclasses.dataclass
class WildsExperiment:
    """The seeds of a ``rest-fair wilds`` command, run by the experiment runner.

    Parameters
    ----------
    dataset : WILDSDataset
        From :func:`~rest_fair.wilds.load_wilds`.
    settings : dict
        From :func:`resolve_settings`.
    out_dir : Path
        Output folder; the submission files go to its ``submission/``.
    """

    dataset: Any
    settings: dict[str, Any]
    out_dir: Path
    _inputs: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    #: Who runs it, for progress lines.
    name: ClassVar[str] = "rest-fair wilds"
    #: A seed whose training diverges diverges again: it is recorded as failed (an
    #: outcome), not retried by ``--resume``.
    final_errors: ClassVar[tuple[type[Exception], ...]] = (TrainingDivergedError,)

    @property
    def spec(self) -> DatasetSpec:
        """What rest_fair knows about the dataset."""
        return dataset_spec(self.dataset)

    @property
    def synthetic(self) -> bool:
        """Whether the data were written by :mod:`rest_fair.wilds.synthetic`."""
        release = Path(self.dataset.data_dir) / self.spec.release_file
        try:
            return "rest_fair" in release.read_text()[:200]
        except OSError:
            return False

    @property
    def data(self) -> dict[str, Any]:
        """The data the seeds train on: the dataset's folder (absolute) and whether it is
        synthetic; recorded with each seed, and compared by :func:`check_resumable`."""
        return {"data_dir": str(Path(self.dataset.data_dir).resolve()),
                "synthetic": self.synthetic}

    def runs(self) -> list[SeedRun]:
        """A run per seed, in the order of ``settings["seeds"]``, with the settings of
        :func:`run_settings`."""
        settings = run_settings(self.settings)
        return [SeedRun(seed, settings, self.data) for seed in self.settings["seeds"]]

    def check_network(self) -> None:
        """Build the seeds' network once, on the meta device (no memory, no pretrained
        weights read), and, for a sparse run, select its ``dense_layers``, so that a network
        that cannot take the inputs or a name of no weight fails before any seed runs. The
        torchvision weights the module names are downloaded into torch.hub's cache (when not
        there) once for all seeds, after the images are checked against the model they
        build. A Hugging Face module (``hf:``) is not built here
        (:func:`~rest_fair.experiments.run.check_run_params` checks its tokenizer and
        configuration).

        Raises
        ------
        ValueError
            Naming ``dense_layers`` (a name of no maskable weight) or the network and the
            inputs it cannot take.
        OSError
            When the torchvision weights cannot be downloaded, naming where to put them.
        """
        import torch

        from ..backbones import fetch_torchvision, is_backbone
        from ..models import build_module
        from ..sparse import resolve_dense_layers

        settings = self.settings
        if settings["module"].startswith("hf:"):
            return
        params = dict(settings["module_params"] or {})
        side = settings["image_size"]
        shape = (settings["max_features"],) if self.spec.modality == "text" else (3, side, side)
        if params.get("weights") is not None and is_backbone(settings["module"], params):
            fetch_torchvision(settings["module"], params["weights"], input_shape=shape,
                              **({"download_timeout": params["download_timeout"]}
                                 if "download_timeout" in params else {}))
        if "weights" in params:  # the weights change no name: a random start builds it
            params["weights"] = None
        try:
            with torch.device("meta"):
                net = build_module(settings["module"], input_shape=shape,
                                   n_classes=int(self.dataset.n_classes), module_params=params)
        except NotImplementedError:  # an operation without a meta kernel: fit builds it
            return
        if settings["sparsity"] > 0:
            resolve_dense_layers(net, settings["dense_layers"])

    def check_requirements(self) -> None:
        """Fail once when the WILDS extra is not installed."""
        check_wilds_requirements(self.spec.name)

    def estimator_params(self, spec: SeedRun) -> dict[str, Any]:
        """The :class:`~rest_fair.RESTClassifier` parameters of a seed."""
        return {**{k: self.settings[k] for k in _ESTIMATOR_SETTINGS}, "random_state": spec.seed}

    def training_data(self, spec: SeedRun) -> tuple[Any, Any, dict[str, Any]]:
        """The training split, its groups, and the validation split to select the epoch."""
        parts, features = self._splits(spec.seed)
        train, val = parts["train"], parts.get("val")
        validation = None if val is None else val.validation_data(features["val"])
        return features["train"], train.y, {"groups": train.groups, "validation_data": validation}

    def score(self, spec: SeedRun, clf: Any) -> dict[str, Any]:
        """``metrics`` (split -> official WILDS metrics; train only with ``--protocol custom``),
        ``history`` and ``submission_files`` (written here, for every split but train; their
        paths relative to ``out_dir``, so that a resume finds them from any working
        directory)."""
        parts, features = self._splits(spec.seed)
        custom = self.settings["protocol"] == "custom"
        predictions, metrics = {}, {}
        for split in (s for s in parts if s != "train" or custom):
            y_pred = clf.predict(features[split])
            metrics[split] = wilds_eval(parts[split], y_pred)
            if split != "train":
                predictions[split] = y_pred
        files = write_submission(predictions, dataset=self.dataset,
                                 out_dir=self.out_dir / "submission", seed=spec.seed)
        history = [{k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                    for k, v in epoch.items()} for epoch in getattr(clf, "history_", [])]
        return {"metrics": metrics, "history": history,
                "submission_files": [str(p.relative_to(self.out_dir)) for p in files]}

    def _splits(self, seed: int) -> tuple[dict, dict]:
        """The splits and the model inputs of each; shared by seeds unless ``frac < 1``."""
        frac = self.settings["frac"]
        key = seed if frac < 1.0 else None
        if key not in self._inputs:
            parts = split_wilds(self.dataset, image_size=self.settings["image_size"],
                                frac=frac, random_state=seed)
            features = {split: part.X for split, part in parts.items()}
            if self.spec.modality == "text" and not self.settings["module"].startswith("hf:"):
                vectorizer = TfidfVectorizer(max_features=self.settings["max_features"],
                                             sublinear_tf=True)
                vectorizer.fit(parts["train"].X)
                features = {split: vectorizer.transform(part.X).astype("float32")
                            for split, part in parts.items()}
            self._inputs[key] = (parts, features)
        return self._inputs[key]


def check_resumable(experiment: WildsExperiment) -> None:
    """Refuse to resume into a folder whose finished seeds were run with other settings or
    on other data (another folder, or synthetic data where this command reads real data or
    the reverse): this command's seeds would overwrite their submission files, and the
    report would mix two data sources. Seeds recorded without their data (by earlier
    versions) are reused, with a warning naming them.

    Raises
    ------
    ValueError
        Naming the settings that differ, or the data of the seed and of this command; or
        the folder's ``submission`` when it is not a folder (every seed would fail to
        write its files there).
    """
    submission = experiment.out_dir / "submission"
    if submission.exists() and not submission.is_dir():
        raise ValueError(_NOT_A_FOLDER.format(path=submission))
    runs = experiment.runs()
    ours = runs[0].settings if runs else {}
    our_data = experiment.data
    unknown = []
    for record in read_results(experiment.out_dir / RESULTS_FILE):
        theirs, status = _upgraded(record).get("settings"), record.get("status")
        if status not in ("ok", "failed") or not isinstance(theirs, dict):
            continue
        seed = record.get("seed")
        if theirs != ours:
            if status == "failed":  # another run id: not reused
                continue
            changed = [f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in
                       sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
            raise ValueError(_OTHER_SETTINGS.format(out_dir=experiment.out_dir, seed=seed,
                                                    changed="; ".join(changed)))
        data = record.get("data")
        if data is None:
            if seed not in unknown:  # an earlier version's seed may have two lines
                unknown.append(seed)
        elif data != our_data:
            raise ValueError(_OTHER_DATA.format(out_dir=experiment.out_dir, seed=seed,
                                                theirs=_describe(data), ours=_describe(our_data)))
    if unknown:
        warnings.warn(_UNKNOWN_DATA.format(out_dir=experiment.out_dir, seeds=unknown,
                                           ours=_describe(our_data)), stacklevel=2)


def earlier_seeds(experiment: WildsExperiment, records: Sequence[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """The seeds that earlier commands finished into the output folder with the settings
    and data of ``experiment`` and that ``records`` (this command's) lack, by seed: their
    records in the results file, each a success whose submission files are in place or a
    seed whose training diverged. ``--resume`` reports over them too: the submission folder
    holds their files."""
    runs = experiment.runs()
    ours, have = (runs[0].settings if runs else {}), {r.get("seed") for r in records}
    found = [r for r in read_results(experiment.out_dir / RESULTS_FILE)
             if isinstance(r.get("seed"), int) and r["seed"] not in have
             and r.get("run_id") == SeedRun(r["seed"], ours).run_id
             and r.get("data") in (None, experiment.data)
             and finished(r, experiment.out_dir)]
    return sorted(found, key=lambda r: r["seed"])


def _describe(data: dict[str, Any]) -> str:
    """``data`` of :attr:`WildsExperiment.data` in words."""
    kind = "synthetic" if data.get("synthetic") else "not synthetic"
    return f"{data.get('data_dir')} ({kind})"


def check_metrics_file(out_dir: str | Path) -> dict[str, Any] | None:
    """The ``metrics.json`` of ``out_dir`` (None when there is none), refused when
    :func:`write_outputs` did not write it (not a JSON object with the keys ``dataset``,
    ``metrics`` and ``submission_files``, which every version wrote): the report would
    overwrite it.

    Raises
    ------
    FileExistsError
        Naming the file (:func:`~rest_fair.experiments.runner.read_own_json`).
    """
    return read_own_json(Path(out_dir) / "metrics.json",
                         {"dataset": str, "metrics": dict, "submission_files": list},
                         "rest-fair wilds")


def set_aside_report(experiment: WildsExperiment) -> list[Path]:
    """Keep the report in the output folder that ``experiment``'s settings did not write
    out of the way of its own: a ``metrics.json`` of other settings (:func:`run_settings`)
    or of seeds trained on other data, and the ``comparison.md`` beside it, are renamed
    with one date-time suffix (:func:`~rest_fair.experiments.runner.set_aside`), as is a
    ``comparison.md`` file without a ``metrics.json`` (nothing says whose it is). Returns
    the new paths (none when there is nothing to rename).

    Raises
    ------
    FileExistsError
        For a ``metrics.json`` that :func:`write_outputs` did not write
        (:func:`check_metrics_file`); nothing is renamed then.
    """
    out_dir = experiment.out_dir
    info = check_metrics_file(out_dir)
    if info is None:
        comparison = out_dir / "comparison.md"
        return set_aside([comparison]) if comparison.is_file() else []
    runs = experiment.runs()
    settings = info.get("settings")
    settings = run_settings(settings) if isinstance(settings, dict) else None
    theirs = _upgraded({**info, "settings": settings}).get("settings")
    data = [r.get("data") for r in info.get("runs") or () if isinstance(r, dict)]
    if runs and theirs == runs[0].settings and all(d in (None, experiment.data) for d in data):
        return []
    return set_aside([out_dir / name for name in _REPORT])


def set_aside_outputs(out_dir: str | Path) -> list[Path]:
    """Rename the outputs of an earlier command in ``out_dir`` (results file, submission
    folder, ``metrics.json``, ``comparison.md``) with one date-time suffix; returns the new
    paths. A new command without ``--resume`` starts from an empty folder this way, and
    nothing of the earlier one is lost."""
    return set_aside([Path(out_dir) / name for name in (RESULTS_FILE, "submission", *_REPORT)])


def adopt_seed_files(out_dir: str | Path) -> None:
    """Add the finished seeds of earlier versions to the results file of ``out_dir``.

    Earlier versions kept a seed's record in ``runs/seed_<k>.json``, recorded seeds without
    the dataset in their settings, and recorded the settings a run does not read with their
    values. Such a seed is appended to the results file with its settings as this version
    records them (:func:`run_settings`, with the dataset its submission files name; the
    earlier lines stay) and is then reused by ``--resume`` like any finished run (same
    settings, submission files present). Unreadable files, and seeds whose dataset cannot
    be told, are skipped.
    """
    path = Path(out_dir) / RESULTS_FILE
    records = read_results(path)
    known = {r["run_id"] for r in records}
    for file in sorted(Path(out_dir).glob("runs/seed_*.json")):
        try:
            records.append({"status": "ok", **json.loads(file.read_text())})
        except (OSError, ValueError, TypeError):
            continue
    for record in records:
        record = _upgraded(record)
        try:
            run_id = SeedRun(record["seed"], record["settings"]).run_id
        except (KeyError, TypeError, ValueError):
            continue
        if record.get("status") == "ok" and run_id not in known:
            known.add(run_id)
            append_record(path, {**record, "run_id": run_id})


def run_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready values of :data:`RUN_SETTINGS` in ``settings`` (a new dict; keys it
    lacks stay out): a seed's id and what ``--resume`` compares. A setting that the run does
    not read is None there, so that runs that differ in such settings alone are one run:
    the mask settings of a dense run (``sparsity`` 0), ``momentum`` without SGD, the text
    settings of an image dataset (``max_features``, ``max_length``), ``image_size`` of a
    text dataset, and ``max_length`` of TF-IDF inputs or ``max_features`` of a Hugging Face
    module (``hf:``)."""
    return _as_read(jsonable({k: settings[k] for k in RUN_SETTINGS if k in settings}))


def _as_read(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (JSON-ready run settings) with the settings that the run does not read
    at None (a new dict; see :func:`run_settings`)."""
    from ..estimator import RESTClassifier

    params = {**RESTClassifier().get_params(deep=False),
              **{k: values[k] for k in ("objective", "optimizer", "sparsity") if k in values}}
    unread = unread_params(params)
    try:
        modality = dataset_spec(values.get("dataset")).modality
    except ValueError:  # a record of an earlier version, without its dataset
        modality = None
    if modality == "image":
        unread += ["max_features", "max_length"]
    elif modality == "text":
        hf = str(values.get("module")).startswith("hf:")
        unread += ["image_size", "max_features" if hf else "max_length"]
    return {**values, **{k: None for k in unread if k in values}}


def _upgraded(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its settings as this version records them: ``"dataset"``, which a
    record of an earlier version lacks, from the dataset that names all its submission
    files (``<dataset>_split:...``; left out when its dataset cannot be told that way), and
    the settings its run does not read at None (:func:`run_settings`)."""
    settings = record.get("settings")
    if not isinstance(settings, dict):
        return record
    names = {Path(str(f)).name.partition("_split:")[0]
             for f in record.get("submission_files") or ()}
    if "dataset" not in settings and len(names) == 1:
        try:
            settings = {**settings, "dataset": dataset_spec(names.pop()).name}
        except ValueError:
            pass
    return {**record, "settings": _as_read(settings)}


def write_outputs(
    records: Sequence[dict[str, Any]], experiment: WildsExperiment, *, run_info: dict[str, Any],
    diverged: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Write ``metrics.json`` (with ``run_info``) and ``comparison.md`` from the records of
    the seeds that finished (``run_sweep(experiment, ...)``, at least one).

    The seeds whose training diverged (``diverged``, records of ``"status": "failed"``) are
    not in the means; both files name them with their error, and say over how many of the
    seeds asked for the means are: ``metrics.json`` has ``seeds`` and ``n_seeds`` (the
    seeds of the means), the seeds asked for in ``settings``, and ``diverged`` (the
    records of the diverged seeds).

    Returns
    -------
    dict
        ``metrics``, ``metrics_std`` and ``metrics_se`` (split -> metric -> mean, std
        (ddof=1) and standard error std/√n over the n seeds; None for one seed),
        ``markdown`` (the comparison) and ``files`` (every submission file).

    Raises
    ------
    ValueError
        When ``records`` is empty: there is nothing to report.
    FileExistsError
        For a ``metrics.json`` in the output folder that this function did not write
        (:func:`check_metrics_file`); nothing is written then. A report of other settings
        or data is kept, renamed (:func:`set_aside_report`).
    """
    if not records:
        raise ValueError(_NOTHING_TO_REPORT)
    set_aside_report(experiment)
    settings, out_dir, name = experiment.settings, experiment.out_dir, experiment.spec.name
    synthetic = experiment.synthetic
    metrics, metrics_std, metrics_se = _aggregate([r["metrics"] for r in records],
                                                  order=list(experiment.dataset.split_dict))
    protocol = _protocol(settings, records, synthetic)
    eval_split = "test" if "test" in metrics else sorted(metrics)[-1]
    uses = "val" if (settings["upweight"] is None and settings["objective"] == "erm") else "train"
    seed_results = [r["metrics"][eval_split] for r in records]
    table = comparison_table(name, seed_results if len(records) > 1 else seed_results[0],
                             protocol=protocol, group_labels=uses)
    seeds = [r["seed"] for r in records]
    seeds_text = ", ".join(str(s) for s in seeds)
    if diverged:
        seeds_text += (f" (n = {len(seeds)} of the {len(seeds) + len(diverged)} seeds asked "
                       "for: the others diverged, see below)")
    markdown = (
        f"# {name}: REST (rest_fair) vs published, {eval_split} split\n\n"
        + ("**" + _SYNTHETIC_NOTE + "; do not compare.**\n\n" if synthetic else "")
        + f"Our row: mean ± std (ddof=1, as WILDS reports it) over seeds {seeds_text}; "
        "metrics.json also has the standard errors (std/√n, `metrics_se`). "
        "Accuracies in %. Published numbers are copied from the sources named; "
        "'cited' = read in a later paper's table. group_labels: how group labels are "
        "used (train / val / none).\n\n"
        + to_markdown(table)
        + "\n"
        + (f"\n{_diverged_text(diverged)}\n" if diverged else "")
    )
    files = [locate(f, out_dir) for r in records for f in r["submission_files"]]
    summary = {
        "dataset": name,
        "synthetic_data": synthetic,
        **run_info,
        "settings": jsonable(settings),
        "protocol": protocol,
        "seeds": seeds,
        "n_seeds": len(seeds),
        "diverged": list(diverged),
        "metrics": metrics,
        "metrics_std": metrics_std,
        "metrics_se": metrics_se,
        "runs": list(records),
        "fit_seconds": sum(r["fit_seconds"] for r in records),
        "best_epoch": records[0]["best_epoch"] if len(records) == 1 else None,
        "history": records[0]["history"] if len(records) == 1 else None,
        "submission_files": [str(p) for p in files],
    }
    # metrics.json, which says whose the report is, first
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / "comparison.md").write_text(markdown)
    return {"metrics": metrics, "metrics_std": metrics_std, "metrics_se": metrics_se,
            "markdown": markdown, "files": files}


def _diverged_text(diverged: Sequence[dict[str, Any]]) -> str:
    """The sentence naming the seeds whose training diverged, with their errors."""
    return "Diverged (recorded as an outcome, not retried, not in our row): " + "; ".join(
        f"seed {r.get('seed')} ({r.get('error')})" for r in diverged) + "."


def _aggregate(per_seed: list[dict], order: list[str]) -> tuple[dict, dict, dict]:
    """Mean, sample std (ddof=1, as WILDS' evaluate.py) and standard error (std/√n) of
    every metric per split over the n seeds, the splits in the dataset's ``order``."""
    means: dict = {}
    stds: dict = {}
    errors: dict = {}
    n = len(per_seed)
    for split in sorted(per_seed[0], key=order.index):
        values = {k: [r[split][k] for r in per_seed] for k in per_seed[0][split]}
        means[split] = {k: float(np.mean(v)) for k, v in values.items()}
        stds[split] = {k: float(np.std(v, ddof=1)) if n > 1 else None
                       for k, v in values.items()}
        errors[split] = {k: None if std is None else standard_error(std, n)
                         for k, std in stds[split].items()}
    return means, stds, errors


def _protocol(settings: dict, runs: Sequence[dict], synthetic: bool) -> str:
    """The protocol column of our row: inputs, training, masks, reweighting, seeds."""
    module = settings["module"]
    if module.startswith("hf:"):
        length = settings["max_length"] or "tokenizer limit"
        inputs = f"{module[3:]} (Hugging Face, pretrained) on text, {length} tokens"
    elif module in ("auto", "mlp", "cnn") or (module == "resnet18" and settings["weights"] is None):
        if settings["dataset"] == "civilcomments":
            inputs = f"TF-IDF ({settings['max_features']} features) + {module} network"
        else:
            inputs = f"{module} network on {settings['image_size']}px images"
    else:
        weights = settings["weights"]
        start = f"{weights} weights" if weights else "random init"
        inputs = f"{module} ({start}) on {settings['image_size']}px images"
    pretrained = module.startswith("hf:") or settings["weights"] is not None
    best = ", ".join(str(r["best_epoch"]) for r in runs)
    sparsity = settings["sparsity"]
    masks = (f"sparsity {sparsity} ({settings['sparse_init']} init, "
             f"{settings['layer_density']}, dense: {', '.join(settings['dense_layers']) or '-'})"
             if sparsity > 0 else "dense")
    text = (
        f"{inputs}, {'fine-tuned' if pretrained else 'trained from scratch'}, "
        f"{settings['max_epochs']} epochs (best epoch {best}, selected on val worst-group "
        f"acc), {masks}, upweight {settings['upweight']}, objective {settings['objective']}, "
        f"{settings['optimizer']} lr {settings['lr']} wd {settings['weight_decay']} batch "
        f"{settings['batch_size']}, lr schedule {settings['lr_scheduler']}, "
        f"train fraction {settings['frac']}, "
        f"seeds {', '.join(str(r['seed']) for r in runs)}"
    )
    if settings["protocol"] == "wilds":
        recipe = settings["recipe"]
        text = f"WILDS recipe ({recipe['source']}); " + text
        if settings["overridden"]:
            text += f"; overridden: {', '.join(settings['overridden'])}"
        text += "; deviations: " + "; ".join(recipe["deviations"])
    return f"{_SYNTHETIC_NOTE}; {text}" if synthetic else text
