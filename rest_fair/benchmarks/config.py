"""The experiment of ``rest-fair bench``: its configuration, presets and runs.

A :class:`BenchConfig` is an :class:`~rest_fair.experiments.run.Experiment`: the
experiment runner (:func:`~rest_fair.experiments.runner.run_sweep`) asks it for its runs,
each run's estimator parameters and data, and the scores of a fitted run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any, ClassVar

import numpy as np

from .._requirements import Requirement, check_requirements
from .._validation import POSITIVE_INT, RANDOM_STATE, Interval
from ..exceptions import TrainingDivergedError
from ..experiments.run import digest, jsonable, unread_params
from ..jtt import overlap_report
from ..metrics import group_accuracies, worst_group_accuracy
from .data import DATASETS, kept_data, load_data
from .methods import METHODS, estimator_params, get_method

__all__ = ["PRESETS", "BenchConfig", "RunSpec", "preset"]

_MATPLOTLIB = Requirement("matplotlib", "matplotlib", "bench", "the plots (or pass --no-plots)")
_UNKNOWN_PRESET = "Unknown preset {name!r}; available: {names}."
_BAD_FIELD = "{field} {detail}; got {value!r}."
_NO_CONFLICT = (
    "ratios: {ratio:g} gives no bias-conflicting training sample of the {n} (shares are "
    "rounded to whole samples); use a larger share or more training samples."
)
_POSITIVE = Interval(Real, 0, float("inf"), "neither")
_DECIDED = (
    "extra_params sets {key!r}, which {owner} decides for every run; "
    "set it there instead."
)
_UNREAD_EXTRA = (
    "extra_params sets {keys}, which no run of methods {methods} at sparsities {sparsities} "
    "reads (their other parameters leave them unused, as jtt_epochs without JTT, GroupDRO's "
    "without GroupDRO, momentum without SGD and those of sparse training at sparsity 0); "
    "drop them, or add a method or sparsity that reads them."
)
#: The fields of a :class:`BenchConfig` that make its grid: not in the hash its runs share.
GRID_FIELDS = ("ratios", "sparsities", "seeds", "methods")
# estimator parameters that a field of BenchConfig decides, and that field
_FIELD_PARAMS = {"max_epochs": "max_epochs", "batch_size": "batch_size", "lr": "lr",
                 "module": "module", "module_params": "module_params", "device": "device",
                 "random_state": "seeds", "sparsity": "sparsities"}


def check_sequence(field: str, value: Any) -> None:
    """Refuse a ``value`` of ``field`` that is not a collection of values (a tuple, a list,
    an array, ...), a string included (``methods="erm"`` would be the methods ``"e"``,
    ``"r"``, ``"m"``)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(_BAD_FIELD.format(field=field, value=value,
                                           detail="must be a tuple or a list of values"))


class _Keyed:
    """``run_id`` and ``label`` of a run from the words of its ``_words()``."""

    config_hash: str

    def _words(self) -> list[str]:
        raise NotImplementedError

    @property
    def run_id(self) -> str:
        """Stable key of the run in the results file: its words and ``config_hash``."""
        return "|".join([*self._words(), self.config_hash])

    @property
    def label(self) -> str:
        """The run in progress lines."""
        return " ".join(self._words())


@dataclasses.dataclass(frozen=True)
class RunSpec(_Keyed):
    """One training run of a sweep (a cell of the grid for one seed)."""

    method: str
    ratio: float
    sparsity: float
    seed: int
    config_hash: str

    def _words(self) -> list[str]:
        return [self.method, f"ratio={self.ratio:g}", f"sparsity={self.sparsity:g}",
                f"seed={self.seed}"]


@dataclasses.dataclass
class BenchConfig:
    """Everything that defines a benchmark sweep.

    Parameters
    ----------
    dataset : {"mnist_5k", "digits", "fashion_mnist", "dfa"}
        A key of :data:`~rest_fair.benchmarks.data.DATASETS`: Colored MNIST from the 5k
        bundled digits, Colored Digits (8x8, for tests), Colored Fashion-MNIST, or a
        DFA-format release on disk, read lazily.
    ratios : sequence of float
        Shares of bias-conflicting training samples.
    sparsities : sequence of float
        Sparsity grid; a method runs once per sparsity (0 = dense variant).
    seeds : sequence of int
        Training seeds (weights, masks, sampling). The data set is fixed by ``data_seed``.
    methods : sequence of str
        Keys of :data:`rest_fair.benchmarks.methods.METHODS`.
    max_epochs, batch_size, lr : training budget of every run.
    module : str
        ``"cnn"`` (the paper's small CNN), ``"mlp"`` or ``"resnet18"``.
    module_params : dict or None
        E.g. ``{"widths": [32, 64, 128]}`` for a thinner CNN.
    image_size : int or None
        Resize the images (None, as the data set's own size, keeps 28 for MNIST, 8 for
        digits).
    split_sizes : three numbers or None
        Train/valid/test sizes; None uses the data set's default (the only value for
        ``"dfa"``, whose release has its own splits).
    data_seed : int
        Seed of the data set construction (splits, colours).
    upweight : float, {"balanced", "none"} or None
        Override of the ratio-dependent lambda (None: 10/30/50/80 for 0.5/1/2/5 %;
        ``"none"``: no reweighting).
    extra_params : dict
        Any further :class:`RESTClassifier` parameters (e.g. ``{"jtt_epochs": 2}``); not
        those another field or a method sets (:meth:`decided_params`).
    device : str
        Passed to the estimator.
    data_root : str, path or None
        Folder of the DFA release (``dataset="dfa"``), holding ``<pct>pct/`` and ``test/``;
        or of the four idx files (``dataset="fashion_mnist"``; None: the folder in
        ``REST_FAIR_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``). Kept as
        an absolute path (``~`` read as the home folder).
    dfa_name : {"cmnist", "cifar10c", "bffhq"}
        Which DFA release (selects transforms and the number of bias values).
    """

    #: Who runs it, for progress lines.
    name: ClassVar[str] = "rest-fair bench"
    #: A diverged training diverges again with the same seed: recorded as failed, not
    #: retried.
    final_errors: ClassVar[tuple[type[Exception], ...]] = (TrainingDivergedError,)

    dataset: str = "mnist_5k"
    ratios: Sequence[float] = (0.01,)
    sparsities: Sequence[float] = (0.0, 0.9)
    seeds: Sequence[int] = (0,)
    methods: Sequence[str] = ("erm", "rest")
    max_epochs: int = 10
    batch_size: int = 256
    lr: float = 0.01
    module: str = "cnn"
    module_params: dict | None = None
    image_size: int | None = None
    split_sizes: Sequence[float] | None = None
    data_seed: int = 0
    upweight: Any = None
    extra_params: dict = dataclasses.field(default_factory=dict)
    device: str = "auto"
    data_root: str | None = None
    dfa_name: str = "cmnist"

    def __post_init__(self) -> None:
        for field in GRID_FIELDS:
            check_sequence(field, getattr(self, field))
        self.ratios = tuple(float(r) for r in self.ratios)
        self.sparsities = tuple(float(s) for s in self.sparsities)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.methods = tuple(self.methods)
        if self.split_sizes is not None:
            self.split_sizes = tuple(self.split_sizes)
        if self.data_root is not None:  # one folder, one name: it enters the run ids
            self.data_root = os.path.abspath(os.path.expanduser(self.data_root))
        for field, value, ok, detail in (
            ("dataset", self.dataset, self.dataset in DATASETS,
             f"must be one of {tuple(DATASETS)}"),
            ("data_root", self.data_root, self.dataset != "dfa" or self.data_root,
             "is needed for dataset='dfa'"),
            # a setting the data set does not read would still change the run ids
            ("data_root", self.data_root,
             self.data_root is None or self.dataset in ("dfa", "fashion_mnist"),
             f"is not read by dataset={self.dataset!r} (only by 'dfa' and 'fashion_mnist')"),
            ("dfa_name", self.dfa_name, self.dfa_name == "cmnist" or self.dataset == "dfa",
             f"is not read by dataset={self.dataset!r} (only by 'dfa')"),
            ("split_sizes", self.split_sizes, self.split_sizes is None or self.dataset != "dfa",
             "is not read by dataset='dfa' (a release has its own splits)"),
            *((field, value, value, "is empty") for field, value in (
                ("ratios", self.ratios), ("sparsities", self.sparsities),
                ("seeds", self.seeds), ("methods", self.methods))),
            ("ratios", self.ratios, all(0 < r < 1 for r in self.ratios),
             "must be shares in (0, 1)"),
            ("sparsities", self.sparsities, all(0 <= s < 1 for s in self.sparsities),
             "must be in [0, 1)"),
            ("seeds", self.seeds, all(RANDOM_STATE[1].accepts(s) for s in self.seeds),
             f"must be {RANDOM_STATE[1].describe()}"),
            ("methods", self.methods, len(set(self.methods)) == len(self.methods),
             "names a method twice"),
            # a repeated value would be one run (same run id) described as two; the run
            # ids write shares and sparsities with 6 significant digits
            ("ratios", self.ratios, len({f"{r:g}" for r in self.ratios}) == len(self.ratios),
             "names a share twice (to 6 significant digits)"),
            ("sparsities", self.sparsities,
             len({f"{v:g}" for v in self.sparsities}) == len(self.sparsities),
             "names a sparsity twice (to 6 significant digits)"),
            ("seeds", self.seeds, len(set(self.seeds)) == len(self.seeds),
             "names a seed twice"),
            ("max_epochs", self.max_epochs, int(self.max_epochs) >= 1, "must be >= 1"),
            ("image_size", self.image_size,
             self.image_size is None or POSITIVE_INT.accepts(self.image_size),
             "must be a positive int or None"),
            ("split_sizes", self.split_sizes, self.split_sizes is None or (
                len(self.split_sizes) == 3 and all(_POSITIVE.accepts(v)
                                                   for v in self.split_sizes)),
             "must be three positive numbers (train, valid, test) or None"),
        ):
            if not ok:
                raise ValueError(_BAD_FIELD.format(field=field, detail=detail, value=value))
        if self.image_size is not None and (
                int(self.image_size) == DATASETS[self.dataset].native_size(self)):
            self.image_size = None  # the data set's own size: the same data, one run id
        reweighting = [name for name in self.methods if get_method(name).reweights]
        if self.upweight is not None and not reweighting:
            raise ValueError(_BAD_FIELD.format(
                field="upweight", value=self.upweight,
                detail=f"is not read by methods {self.methods} (only by those that reweight: "
                       + ", ".join(n for n, m in METHODS.items() if m.reweights)
                       + ")"))
        decided = self.decided_params()
        for key in self.extra_params:
            if key in decided:
                raise ValueError(_DECIDED.format(key=key, owner=decided[key]))

    def decided_params(self) -> dict[str, str]:
        """The estimator parameters that the fields and the methods set, each with who sets
        it (``extra_params`` may not set them too)."""
        decided = {key: f"the field {field!r}" for key, field in _FIELD_PARAMS.items()}
        for name in self.methods:
            for key in get_method(name).params:
                decided.setdefault(key, f"the method {name!r}"
                                   + (" (and the field 'upweight')" if key == "upweight" else ""))
        return decided

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of the configuration."""
        return jsonable(dataclasses.asdict(self))

    def common_hash(self, method: str | None = None, params: Mapping[str, Any] | None = None,
                    *, leave_out: Sequence[str] = ()) -> str:
        """Hash of the settings the runs share (not the grid, nor the fields ``leave_out``):
        changing it re-runs every run.

        With ``method``, the ``config_hash`` of that method's runs (with the further
        parameters ``params``, their ``sparsity`` among them): ``upweight`` is left at None
        for a method that does not reweight and ``extra_params`` holds only those the runs
        read (:meth:`read_extra`), so that changing a setting re-runs only the runs that
        read it."""
        settings = {k: v for k, v in self.to_dict().items()
                    if k not in GRID_FIELDS and k not in leave_out}
        if method is not None:
            settings["extra_params"] = jsonable(self.read_extra(method, params))
            if not get_method(method).reweights:
                settings["upweight"] = None
        return digest(settings)

    def read_extra(self, method: str, params: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
        """The ``extra_params`` that the runs of ``method`` (with the further parameters
        ``params``) read: not those the others leave unused
        (:func:`~rest_fair.experiments.run.unread_params`)."""
        if not self.extra_params:
            return {}
        from ..estimator import RESTClassifier  # imports torch: only with extra_params

        params = {**RESTClassifier().get_params(deep=False), **self.base_params(0),
                  **get_method(method).params, **(params or {})}
        unused = unread_params(params)
        return {k: v for k, v in self.extra_params.items() if k not in unused}

    def runs(self) -> list[RunSpec]:
        """Every run of the sweep, in a stable order (ratio, method, sparsity, seed)."""
        shared = {(method, sparsity): self.common_hash(method, {"sparsity": sparsity})
                  for method in self.methods for sparsity in self.sparsities}
        return [
            RunSpec(method, ratio, sparsity, seed, shared[method, sparsity])
            for ratio in self.ratios
            for method in self.methods
            for sparsity in self.sparsities
            for seed in self.seeds
        ]

    def requirements(self, *, plots: bool = False) -> list[Requirement]:
        """Optional packages the sweep needs: its data set's, and matplotlib for ``plots``."""
        return [*DATASETS[self.dataset].requirements, *([_MATPLOTLIB] if plots else [])]

    def check_requirements(self, *, plots: bool = False,
                           reads: Sequence[tuple[str, Mapping[str, Any]]] | None = None
                           ) -> None:
        """Raise, before any run, when something the sweep needs is missing, or when
        ``extra_params`` sets a parameter that none of ``reads`` reads (each a method and
        further parameters as :meth:`read_extra` takes them; default: every method of the
        grid at every sparsity).

        Raises
        ------
        ImportError
            Naming every missing package of :meth:`requirements`.
        DatasetNotFoundError
            When the data set is read from files that are not there (the message names
            them and how to install them).
        ValueError
            When the data set cannot be built with these settings at one of the shares
            (``split_sizes`` larger than the data set or too small to hold every class, a
            share that rounds to no bias-conflicting training sample; the data are built
            and kept for the runs of this process), when the network cannot take the images
            (a small ``image_size``) or has no weight that a name of
            ``extra_params["dense_layers"]`` selects, or naming the keys of
            ``extra_params`` that no run reads.
        """
        from ..models import build_module  # imports torch: not at `rest-fair --help`
        from ..sparse import resolve_dense_layers

        check_requirements(self.requirements(plots=plots),
                           command=f"rest-fair bench (dataset {self.dataset!r})")
        if reads is None:
            reads = [(m, {"sparsity": s}) for m in self.methods for s in self.sparsities]
        unread = set(self.extra_params).difference(*(self.read_extra(m, p) for m, p in reads))
        if unread:
            raise ValueError(_UNREAD_EXTRA.format(
                keys=sorted(unread), methods=", ".join(dict.fromkeys(m for m, _ in reads)),
                sparsities=", ".join(sorted({f"{p['sparsity']:g}" for _, p in reads}))))
        check = DATASETS[self.dataset].check
        if check is not None:
            check(self)
        for ratio in self.ratios:
            data = kept_data(self, ratio)  # built and kept for the runs, not copied
            if not np.any(data.conflict_train):  # the runs would train without a minority
                raise ValueError(_NO_CONFLICT.format(ratio=ratio, n=len(data.y_train)))
        net = build_module(self.module, input_shape=data.image_shape,
                           n_classes=len(np.unique(np.asarray(data.y_train))),
                           module_params=self.module_params)
        try:
            resolve_dense_layers(net, self.extra_params.get("dense_layers"))
        except ValueError as exc:
            raise ValueError(f"extra_params: {exc}") from None

    def base_params(self, seed: int, method: str | None = None,
                    params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The parameters every run of this benchmark shares (``extra_params`` included);
        with ``method``, without the ``extra_params`` its runs (with the further parameters
        ``params``) leave unread (:meth:`read_extra`)."""
        unread = () if method is None else (self.extra_params.keys()
                                            - self.read_extra(method, params).keys())
        shared = {
            "max_epochs": int(self.max_epochs),
            "batch_size": int(self.batch_size),
            "lr": float(self.lr),
            "module": self.module,
            "module_params": dict(self.module_params) if self.module_params else None,
            "device": self.device,
            "random_state": seed,
            **self.extra_params,
        }
        return {k: v for k, v in shared.items() if k not in unread}

    def estimator_params(self, spec: RunSpec) -> dict[str, Any]:
        """The :class:`~rest_fair.RESTClassifier` parameters of one run (not the
        ``extra_params`` its method leaves unused)."""
        return {**self.base_params(spec.seed, spec.method, {"sparsity": spec.sparsity}),
                **estimator_params(get_method(spec.method), sparsity=spec.sparsity,
                                   ratio=spec.ratio, upweight=self.upweight)}

    def training_data(self, spec: RunSpec) -> tuple[Any, Any, dict[str, Any]]:
        """``(X, y, fit_params)`` of one run: group labels as its method uses them."""
        method = get_method(spec.method)
        data = load_data(self, spec.ratio)
        validation = (data.X_valid, data.y_valid)
        if method.valid_groups:
            validation += (data.conflict_valid,)
        groups = data.conflict_train if method.train_groups else None
        return data.X_train, data.y_train, {"groups": groups, "validation_data": validation}

    def score(self, spec: RunSpec, clf: Any) -> dict[str, Any]:
        """Test accuracies (unbiased, aligned, conflicting, worst group, per and worst
        (label, colour) cell), validation accuracy and worst-group accuracy (aligned vs
        conflicting, whether or not the method saw those groups) of the kept model, training
        sizes, the JTT error set's overlap with the conflicting samples and FLOPs fractions
        of dense."""
        method = get_method(spec.method)
        data = load_data(self, spec.ratio)
        pred = np.asarray(clf.predict(data.X_test))
        correct = pred == data.y_test
        aligned_acc = float(correct[~data.conflict_test].mean())
        conflicting_acc = float(correct[data.conflict_test].mean())
        cells = group_accuracies(data.y_test, pred, data.group_test)
        valid_pred = np.asarray(clf.predict(data.X_valid))
        _, cell_sizes = np.unique(np.asarray(data.group_test), return_counts=True)
        out: dict[str, Any] = {
            "method_label": method.label(spec.sparsity),
            "group_labels": method.group_labels,
            "upweight": clf.upweight,
            "test_unbiased_acc": float(correct.mean()),
            "test_aligned_acc": aligned_acc,
            "test_conflicting_acc": conflicting_acc,
            "test_worst_group_acc": min(aligned_acc, conflicting_acc),
            "test_worst_cell_acc": float(min(cells.values())),
            "test_cell_acc": {str(int(k)): float(v) for k, v in sorted(cells.items())},
            "test_min_cell_size": int(cell_sizes.min()) if cell_sizes.size else 0,
            "valid_acc": float(np.mean(valid_pred == np.asarray(data.y_valid))),
            "valid_worst_group_acc": worst_group_accuracy(data.y_valid, valid_pred,
                                                          data.conflict_valid),
            "n_train": len(data.y_train),
            "n_conflicting_train": int(data.conflict_train.sum()),
        }
        inferred = getattr(clf, "inferred_groups_", None)
        if inferred is not None:
            out["jtt_overlap"] = {
                k: _float(v) for k, v in overlap_report(inferred, data.conflict_train).items()
            }
        # FLOPs fractions of dense, from the run's optimizer steps and topology updates
        # (training FLOPs include RigL's dense gradient at every update)
        total = efficiency_total(clf)
        out["efficiency"] = {
            c: float(total[c]) for c in ("inference_flops_fraction", "training_flops_fraction")
        }
        return out


def efficiency_total(clf: Any) -> Any:
    """The ``"total"`` row of a fitted estimator's ``efficiency_report()``."""
    report = clf.efficiency_report()
    return report[report["layer"].astype(str) == "total"].iloc[-1]


def _float(value: Any) -> float | None:
    """``value`` as a float; None for None and NaN."""
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value


#: Named configurations, as the fields that differ from :class:`BenchConfig`'s defaults:
#: ``quick``, the README demo (about 50 s on 2 CPU cores); ``paper``, the REST paper's grid
#: (hours on a CPU); ``medium``, the larger run of docs/benchmarks.md; ``scale``, full-size
#: Colored Fashion-MNIST with an MLP 3x300 (about 1.5 minutes a dense run on 2 cores), the
#: equal-budget study's setting; ``tiny``, a seconds-long smoke run.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"dataset": "digits", "ratios": (0.05,), "max_epochs": 3, "batch_size": 128,
             "lr": 0.05, "module": "mlp", "module_params": {"hidden_layer_sizes": [64, 64]}},
    "quick": {"seeds": (0, 1, 2), "max_epochs": 40, "batch_size": 128, "lr": 0.05,
              "module": "mlp"},
    "medium": {"ratios": (0.005, 0.01, 0.02, 0.05), "sparsities": (0.0, 0.9, 0.99),
               "seeds": (41, 42, 43), "max_epochs": 100, "batch_size": 128, "lr": 0.05,
               "module": "mlp"},
    "scale": {"dataset": "fashion_mnist", "ratios": (0.01, 0.05),
              "sparsities": (0.0, 0.9, 0.95, 0.99), "seeds": (41, 42, 43), "max_epochs": 30,
              "batch_size": 128, "lr": 0.05, "module": "mlp",
              "module_params": {"hidden_layer_sizes": [300, 300, 300]}},
    "paper": {"ratios": (0.005, 0.01, 0.02, 0.05), "sparsities": (0.0, 0.9, 0.99, 0.995),
              "seeds": (41, 42, 43), "methods": ("erm", "rest", "jtt", "groupdro"),
              "max_epochs": 100},
}


def preset(name: str, **overrides: Any) -> BenchConfig:
    """A :class:`BenchConfig` from a named preset, with fields overridden.

    Parameters
    ----------
    name : str
        Key of :data:`PRESETS`.
    **overrides
        Fields to replace (None values are ignored).

    Returns
    -------
    BenchConfig
    """
    if name not in PRESETS:
        raise ValueError(_UNKNOWN_PRESET.format(name=name, names=sorted(PRESETS)))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return BenchConfig(**{**PRESETS[name], **overrides})
