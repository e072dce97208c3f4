"""The equal-budget study: every method tuned by the same random search, then compared.

The protocol is SubpopBench's (Yang et al., ICML 2023): each method of :data:`STUDY_METHODS`
gets the same number ``budget`` of configurations drawn from its search space
(:mod:`~rest_fair.benchmarks.search`), each trained with every seed; per method and share of
conflicting samples, the configuration with the best mean validation score over the seeds is
chosen by the method's selection rule (:data:`SELECTION_RULES`), and its test accuracies
are reported (:mod:`~rest_fair.benchmarks.study_report`).

The experiment is a :class:`RandomSearch`, run by
:func:`~rest_fair.experiments.runner.run_sweep` like any sweep; the command is
``rest-fair bench --search random --budget K``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .._requirements import Requirement
from .._validation import NON_NEGATIVE_INT
from ..exceptions import TrainingDivergedError
from ..experiments.run import digest, jsonable
from ..metrics import worst_group_accuracy
from ..recipes import authors_recipe
from .config import BenchConfig, RunSpec, _Keyed, check_sequence, efficiency_total
from .data import load_data
from .methods import estimator_params, get_method
from .search import SEARCH_SPACES, equal_cost_width, hyperparameters, sample

__all__ = [
    "AUTHORS_SPARSE_TRAINING",
    "SELECTION_RULES",
    "STUDY_METHODS",
    "RandomSearch",
    "SelectionRule",
    "StudyMethod",
    "TrialSpec",
    "get_study_method",
]

_UNKNOWN_METHOD = "Unknown study method {name!r}; available: {names}."
_BAD_RULE = "selection must be one of {rules}; got {value!r}."
_BAD_BUDGET = "budget must be a positive int (configurations per method); got {value!r}."
_BAD_SEARCH_SEED = "search_seed must be an int >= 0; got {value!r}."
_SEARCHED_OR_FIXED = (
    "extra_params sets {key!r} (got {value!r}), which the study searches or the method "
    "{method!r} sets; leave it out."
)
_SEARCHED = (
    "{what} is searched by the random search (see rest_fair.benchmarks.search); do not set "
    "it (got {value!r})."
)
_EQUAL_COST_MODULE = (
    "The equal-cost dense baselines ({names}) need module='mlp'; got {module!r}. Leave them "
    "out with --methods."
)
_DEFAULT_MLP_WIDTHS = (100, 100, 100)
#: What the study's authors'-recipe rows take from :func:`~rest_fair.recipes.authors_recipe`:
#: how the sparse network is initialised and updated (the optimisation is searched).
AUTHORS_SPARSE_TRAINING = ("rescale_init", "drop_fraction", "drop_schedule", "update_interval",
                           "update_end", "update_timing")


@dataclasses.dataclass(frozen=True)
class SelectionRule:
    """How a study method's checkpoint and configuration are chosen.

    Attributes
    ----------
    key : str
        Record key of the validation score: the run keeps the checkpoint of the epoch with
        the best score, the search the configuration with the best mean score over seeds.
    words : str
        The rule in the table's notes.
    validation_groups : {"conflict", "class"}
        The groups of the validation data (their worst-group accuracy is the score): the
        conflict flags (bias labels used) or the class labels (no bias label used).
    """

    key: str
    words: str
    validation_groups: str


#: Selection rules by name: with bias labels on the validation split (``worst_group``) or
#: without any bias label (``worst_class``, for label-free methods).
SELECTION_RULES: dict[str, SelectionRule] = {
    "worst_group": SelectionRule("valid_worst_group_acc", "validation worst-group accuracy",
                                 "conflict"),
    "worst_class": SelectionRule("valid_worst_class_acc", "validation worst-class accuracy",
                                 "class"),
}


@dataclasses.dataclass(frozen=True)
class StudyMethod:
    """One row of the study: a method family at one sparsity, its search space and rule.

    Attributes
    ----------
    name : str
        Key on the command line (``--methods rest_0.9,erm``).
    label : str
        Name in tables and plots.
    family : str
        Key of :data:`~rest_fair.benchmarks.methods.METHODS` (``"rest"`` is reweighting,
        sparse or dense): what is trained, and whether ``fit`` gets the bias labels.
    sparsity : float
        Sparsity of the trained network.
    space : str
        Key of :data:`~rest_fair.benchmarks.search.SEARCH_SPACES`.
    selection : str
        Key of :data:`SELECTION_RULES`.
    cost_of : float or None
        Equal-cost dense baseline: the hidden width that gives the dense network as many
        weights as the configured MLP has active at this sparsity
        (:func:`~rest_fair.benchmarks.search.equal_cost_width`). None keeps the width.
    fixed_params : mapping, callable returning a mapping, or None
        :class:`~rest_fair.RESTClassifier` parameters of every configuration of the row,
        applied over the drawn ones (a function returning a recipe's parameters makes the
        recipe a row).
    series : str
        The row's line in the plots against sparsity; empty for a row drawn on its own.
    """

    name: str
    label: str
    family: str
    sparsity: float
    space: str
    selection: str
    cost_of: float | None = None
    fixed_params: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None
    series: str = ""

    def __post_init__(self) -> None:
        get_method(self.family)
        if self.space not in SEARCH_SPACES:
            raise ValueError(f"space must be one of {sorted(SEARCH_SPACES)}; got {self.space!r}.")
        if self.selection not in SELECTION_RULES:
            raise ValueError(_BAD_RULE.format(rules=sorted(SELECTION_RULES), value=self.selection))

    @property
    def rule(self) -> SelectionRule:
        """The :class:`SelectionRule` of this row."""
        return SELECTION_RULES[self.selection]

    @property
    def group_labels(self) -> str:
        """Where bias labels are used: ``"train"`` (``fit`` and selection), ``"val"``
        (selection only) or ``"none"``."""
        if get_method(self.family).train_groups:
            return "train"
        return "val" if self.rule.validation_groups == "conflict" else "none"

    @property
    def plot_sparsity(self) -> float:
        """The row's place on the sparsity axis of the plots: its sparsity, or for an
        equal-cost row the sparsity whose cost it matches (``cost_of``)."""
        return self.sparsity if self.cost_of is None else self.cost_of

    def fixed(self) -> dict[str, Any]:
        """The row's fixed estimator parameters (``fixed_params``, called if a function)."""
        params = self.fixed_params() if callable(self.fixed_params) else self.fixed_params
        return dict(params or {})


def _rest(sparsity: float) -> StudyMethod:
    return StudyMethod(f"rest_{sparsity:g}", f"REST {100 * sparsity:g} %", "rest", sparsity,
                       "rest", "worst_group", series="REST")


def _authors_sparse_training() -> dict[str, Any]:
    recipe = authors_recipe()
    return {key: recipe[key] for key in AUTHORS_SPARSE_TRAINING}


def _authors(sparsity: float) -> StudyMethod:
    return StudyMethod(f"rest_authors_{sparsity:g}", f"REST, authors' recipe {100 * sparsity:g} %",
                       "rest", sparsity, "reweighting", "worst_group",
                       fixed_params=_authors_sparse_training, series="REST, authors' recipe")


def _equal_cost(sparsity: float) -> StudyMethod:
    return StudyMethod(f"dense_cost_{sparsity:g}",
                       f"Reweighting (dense, cost of REST {100 * sparsity:g} %)", "rest", 0.0,
                       "reweighting", "worst_group", cost_of=sparsity,
                       series="Reweighting (dense, equal cost)")


#: The study's methods by name, in table order. Methods trained with bias labels are chosen
#: by validation worst-group accuracy, ERM and JTT (no bias label at all) by validation
#: worst-class accuracy. Adding a method is adding a row. The authors' recipe rows fix its
#: sparse-training choices (:data:`AUTHORS_SPARSE_TRAINING`) and search the rest like
#: reweighting's.
STUDY_METHODS: dict[str, StudyMethod] = {
    m.name: m
    for m in (
        StudyMethod("erm", "ERM", "erm", 0.0, "erm", "worst_class"),
        StudyMethod("reweighting", "Reweighting (dense)", "rest", 0.0, "reweighting",
                    "worst_group"),
        _rest(0.9),
        _rest(0.95),
        _rest(0.99),
        _authors(0.9),
        _authors(0.99),
        StudyMethod("groupdro", "GroupDRO", "groupdro", 0.0, "groupdro", "worst_group"),
        StudyMethod("jtt", "JTT", "jtt", 0.0, "jtt", "worst_class"),
        _equal_cost(0.9),
        _equal_cost(0.95),
        _equal_cost(0.99),
    )
}


def get_study_method(name: str) -> StudyMethod:
    """The :class:`StudyMethod` called ``name`` (clear error otherwise)."""
    try:
        return STUDY_METHODS[name]
    except KeyError:
        raise ValueError(_UNKNOWN_METHOD.format(name=name, names=list(STUDY_METHODS))) from None


@dataclasses.dataclass(frozen=True)
class TrialSpec(_Keyed):
    """One run of the study: configuration ``config`` of a method, at one share and seed."""

    method: str
    ratio: float
    config: int
    seed: int
    config_hash: str

    def _words(self) -> list[str]:
        return [self.method, f"ratio={self.ratio:g}", f"config={self.config}",
                f"seed={self.seed}"]


@dataclasses.dataclass
class RandomSearch:
    """The equal-budget random search of the study, as an experiment.

    Parameters
    ----------
    bench : BenchConfig
        Data set, model, ``batch_size``, the epoch budget ``max_epochs`` (configurations
        train for a third, two thirds or all of it), ``ratios``, ``seeds``, ``device`` and
        ``extra_params``. Its ``methods``, ``sparsities`` and ``lr`` are not used (the
        methods fix their sparsity, the search draws the learning rate) and enter no run
        id; its ``upweight`` must be None (λ is drawn).
    budget : int, default=8
        Configurations per method (the same for every method).
    methods : sequence of str, default=all of :data:`STUDY_METHODS`
    search_seed : int, default=0
        Seed of the configurations (with the method's name and the index).
    """

    #: Who runs it, for progress lines.
    name: ClassVar[str] = "rest-fair bench"
    #: A diverged training is an outcome (the same seed diverges again): recorded as
    #: failed, not retried, and its configuration is not chosen.
    final_errors: ClassVar[tuple[type[Exception], ...]] = (TrainingDivergedError,)
    #: The fields of ``bench`` besides its grid that no run reads (the search draws the
    #: learning rate): neither in the run ids nor in ``config.json``.
    unread_fields: ClassVar[tuple[str, ...]] = ("lr",)

    bench: BenchConfig
    budget: int = 8
    methods: Sequence[str] = tuple(STUDY_METHODS)
    search_seed: int = 0

    def __post_init__(self) -> None:
        check_sequence("methods", self.methods)
        self.methods = tuple(self.methods)
        if (isinstance(self.budget, bool) or not isinstance(self.budget, (int, np.integer))
                or self.budget < 1):
            raise ValueError(_BAD_BUDGET.format(value=self.budget))
        self.budget = int(self.budget)
        if not NON_NEGATIVE_INT.accepts(self.search_seed):
            raise ValueError(_BAD_SEARCH_SEED.format(value=self.search_seed))
        self.search_seed = int(self.search_seed)
        if not self.methods:
            raise ValueError("methods is empty.")
        if len(set(self.methods)) < len(self.methods):
            raise ValueError(f"methods names a method twice: {list(self.methods)}.")
        for name in self.methods:
            get_study_method(name)
        if self.bench.upweight is not None:
            raise ValueError(_SEARCHED.format(what="upweight (λ)", value=self.bench.upweight))
        for name in self.methods:
            decided = {*self.searched_params(name, 0, self.bench.ratios[0]),
                       *get_method(STUDY_METHODS[name].family).params}
            clash = sorted(decided & set(self.bench.extra_params))
            if clash:
                raise ValueError(_SEARCHED_OR_FIXED.format(
                    key=clash[0], method=name, value=self.bench.extra_params[clash[0]]))
        equal_cost = [n for n in self.methods if STUDY_METHODS[n].cost_of is not None]
        if equal_cost and self.bench.module != "mlp":
            raise ValueError(_EQUAL_COST_MODULE.format(names=", ".join(equal_cost),
                                                       module=self.bench.module))

    # ----------------------------------------------------------------- the search
    def point(self, method: str, config: int) -> dict[str, Any]:
        """Configuration ``config`` of ``method``: its point in the method's search space."""
        return sample(get_study_method(method).space, method, config,
                      search_seed=self.search_seed)

    def searched_params(self, method: str, config: int, ratio: float) -> dict[str, Any]:
        """The estimator parameters that configuration ``config`` of ``method`` sets at a
        share ``ratio``: the drawn ones, then the method's fixed ones."""
        drawn = hyperparameters(self.point(method, config), ratio=ratio,
                                max_epochs=int(self.bench.max_epochs))
        return {**drawn, **get_study_method(method).fixed()}

    @staticmethod
    def _reads(method: str, searched: dict[str, Any]) -> dict[str, Any]:
        """What the runs of ``method`` set over their family's parameters: ``searched``
        (:meth:`searched_params` of a configuration) and the method's ``sparsity``."""
        return {**searched, "sparsity": get_study_method(method).sparsity}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: the configuration, the methods and their search spaces."""
        rows = {name: STUDY_METHODS[name] for name in self.methods}
        bench = {k: v for k, v in self.bench.to_dict().items() if k not in self.unread_fields}
        methods = {name: {"label": m.label, "family": m.family, "sparsity": m.sparsity,
                          "space": m.space, "selection": m.rule.words,
                          "group_labels": m.group_labels, "cost_of": m.cost_of,
                          "fixed_params": m.fixed()} for name, m in rows.items()}
        spaces = {name: {c: d.describe() for c, d in sorted(SEARCH_SPACES[name].items())}
                  for name in sorted({m.space for m in rows.values()})}
        return jsonable({"search": "random", "budget": self.budget,
                         "search_seed": self.search_seed, "bench": bench,
                         "methods": methods, "search_spaces": spaces})

    def common_hash(self) -> str:
        """Hash of what every run shares: the benchmark configuration but its grid and the
        fields no run reads (:attr:`unread_fields`)."""
        return self.bench.common_hash(leave_out=self.unread_fields)

    def runs(self) -> list[TrialSpec]:
        """Every run, configuration-major: configuration 0 of every method (every share,
        every seed), then configuration 1, ...; a study stopped after its k-th configuration
        is the complete study at budget k. A run's id holds only the ``extra_params`` it
        reads."""
        specs = []
        for config in range(self.budget):
            for ratio in self.bench.ratios:
                for name in self.methods:
                    m = STUDY_METHODS[name]
                    searched = self.searched_params(name, config, ratio)
                    trial = digest({
                        "common": self.bench.common_hash(m.family, self._reads(name, searched),
                                                         leave_out=self.unread_fields),
                        "family": m.family, "sparsity": m.sparsity,
                        "selection": m.selection, "cost_of": m.cost_of,
                        "params": jsonable(searched),
                    })
                    specs.extend(TrialSpec(name, ratio, config, seed, trial)
                                 for seed in self.bench.seeds)
        return specs

    # ------------------------------------------------------------ the Experiment
    def requirements(self, *, plots: bool = False) -> list[Requirement]:
        """Optional packages the study needs (those of its benchmark configuration)."""
        return self.bench.requirements(plots=plots)

    def check_requirements(self, *, plots: bool = False) -> None:
        """Raise, before any run, when a package or a data file is missing, or when
        ``extra_params`` sets a parameter that no method of the study reads."""
        self.bench.check_requirements(plots=plots, reads=[
            (STUDY_METHODS[name].family,
             self._reads(name, self.searched_params(name, 0, self.bench.ratios[0])))
            for name in self.methods])

    def estimator_params(self, spec: TrialSpec) -> dict[str, Any]:
        """The :class:`~rest_fair.RESTClassifier` parameters of one run: the benchmark's
        (not the ``extra_params`` that the run's other parameters leave unused), the
        family's, the drawn ones, the equal-cost width and the fixed ones."""
        m = get_study_method(spec.method)
        searched = self.searched_params(spec.method, spec.config, spec.ratio)
        params = self.bench.base_params(spec.seed, m.family, self._reads(spec.method, searched))
        params.update(estimator_params(get_method(m.family), sparsity=m.sparsity,
                                       ratio=spec.ratio))
        params.update(searched)
        if m.cost_of is not None:
            params["module_params"] = {**(params["module_params"] or {}),
                                       "hidden_layer_sizes": self.hidden_layer_sizes(m, spec)}
        params.update(m.fixed())
        return params

    def hidden_layer_sizes(self, method: StudyMethod, spec: TrialSpec) -> list[int]:
        """Hidden widths of a run's MLP: the configured ones, or for an equal-cost row the
        width of :func:`~rest_fair.benchmarks.search.equal_cost_width` at every layer."""
        widths = list((self.bench.module_params or {}).get("hidden_layer_sizes",
                                                           _DEFAULT_MLP_WIDTHS))
        if method.cost_of is None:
            return [int(w) for w in widths]
        data = load_data(self.bench, spec.ratio)
        n_in = math.prod(data.image_shape)
        n_out = len(np.unique(data.y_train))
        width = equal_cost_width(n_in, n_out, widths, method.cost_of)
        return [width] * len(widths)

    def training_data(self, spec: TrialSpec) -> tuple[Any, Any, dict[str, Any]]:
        """``(X, y, fit_params)``: bias labels for ``fit`` only if the family trains with
        them; validation groups are the conflict flags or the classes, by the rule."""
        m = get_study_method(spec.method)
        data = load_data(self.bench, spec.ratio)
        by_class = m.rule.validation_groups == "class"
        validation = (data.X_valid, data.y_valid,
                      data.y_valid if by_class else data.conflict_valid)
        groups = data.conflict_train if get_method(m.family).train_groups else None
        return data.X_train, data.y_train, {"groups": groups, "validation_data": validation}

    def score(self, spec: TrialSpec, clf: Any) -> dict[str, Any]:
        """The benchmark's scores (:meth:`BenchConfig.score`), the validation scores of the
        kept checkpoint under both rules, the drawn parameters and the run's cost."""
        m = get_study_method(spec.method)
        out = self.bench.score(RunSpec(m.family, spec.ratio, m.sparsity, spec.seed,
                                       spec.config_hash), clf)
        data = load_data(self.bench, spec.ratio)
        pred = np.asarray(clf.predict(data.X_valid))
        out.update({
            "method_label": m.label,
            "family": m.family,
            "sparsity": m.sparsity,
            "cost_of": m.cost_of,
            "group_labels": m.group_labels,
            "selection": m.selection,
            "hyperparameters": self.searched_params(spec.method, spec.config, spec.ratio),
            "hidden_layer_sizes": (self.hidden_layer_sizes(m, spec)
                                   if self.bench.module == "mlp" else None),
            "valid_acc": float(np.mean(pred == np.asarray(data.y_valid))),
            "valid_worst_group_acc": worst_group_accuracy(data.y_valid, pred, data.conflict_valid),
            "valid_worst_class_acc": worst_group_accuracy(data.y_valid, pred, data.y_valid),
            **_cost(clf, len(data.y_train)),
        })
        return out


def _cost(clf: Any, n_train: int) -> dict[str, Any]:
    """Active parameters, inference FLOPs per sample and training FLOPs of the whole run:
    ``efficiency_report()``'s ``training_flops_run``, plus with ``infer_groups="jtt"`` the
    identification model's ``jtt_epochs`` passes over the ``n_train`` training samples at
    three times the inference FLOPs per sample."""
    total = efficiency_total(clf)
    training = float(total.get("training_flops_run", math.nan))
    identification = 0.0
    if getattr(clf, "infer_groups", None) == "jtt":
        identification = 3.0 * float(total["inference_flops"]) * int(clf.jtt_epochs) * n_train
    return {
        "params_active": int(total["params_active"]),
        "inference_flops": float(total["inference_flops"]),
        "training_flops": training + identification,
        "identification_flops": identification,
    }
