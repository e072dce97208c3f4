"""Random hyperparameter search for the equal-budget study: search spaces and sampling.

Every method of the study gets the same number of configurations, each drawn from the
method's search space (:data:`SEARCH_SPACES`) by a generator seeded by ``(search_seed,
method name, configuration index)`` alone (:func:`sample_seed`), so growing the budget keeps
the configurations already drawn. A search space is a table of *coordinates*, each with its
distribution; :func:`hyperparameters` turns a drawn point into
:class:`~rest_fair.RESTClassifier` parameters:

==========================  ======================================================
coordinate                  estimator parameter
==========================  ======================================================
``lr``                      ``lr``
``weight_decay``            ``weight_decay``
``epoch_fraction``          ``max_epochs = max(1, round(fraction * E))``, ``E`` the
                            configuration's epoch budget (``BenchConfig.max_epochs``)
``upweight_balance``        ``upweight = m * (1 - r) / r`` for the share ``r`` of
                            conflicting samples: ``m = 1`` draws the two groups equally
                            often
``upweight``                ``upweight`` (a factor that does not depend on ``r``)
``drop_fraction``           ``drop_fraction``
``update_interval``         ``update_interval`` (optimizer steps)
``groupdro_eta``            ``groupdro_eta``
``jtt_epoch_fraction``      ``jtt_epochs = max(1, round(fraction * E))``
==========================  ======================================================

Values drawn from continuous distributions are rounded to three significant digits (they
read well in tables and run ids). This module imports neither torch nor the estimator.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "COORDINATES",
    "SEARCH_SPACES",
    "Distribution",
    "choice",
    "equal_cost_width",
    "hyperparameters",
    "log_int",
    "log_uniform",
    "mlp_weights",
    "sample",
    "sample_seed",
    "uniform",
]

_BAD_KIND = "Distribution kind must be one of {kinds}; got {kind!r}."
_BAD_RANGE = "A {kind} distribution needs {rule}; got low={low!r}, high={high!r}."
_NO_VALUES = "A choice needs at least one value."
_UNKNOWN_COORDINATE = "Unknown search coordinate {name!r}; known: {known}."
_UNKNOWN_SPACE = "Unknown search space {name!r}; available: {names}."
_BAD_INDEX = "The configuration index must be a non-negative int; got {value!r}."
_BAD_WIDTHS = (
    "The equal-cost baseline needs an MLP with equal hidden widths (hidden_layer_sizes); "
    "got {value!r}."
)
_BAD_SPARSITY = "sparsity must be in [0, 1); got {value!r}."

#: The kinds of distribution, by name, in words.
_KINDS = {"log_uniform": "log-uniform", "uniform": "uniform", "log_int": "log-uniform integer",
          "choice": "one of"}


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A one-dimensional distribution of a search coordinate.

    Attributes
    ----------
    kind : {"log_uniform", "uniform", "log_int", "choice"}
        As built by :func:`log_uniform`, :func:`uniform`, :func:`log_int` or
        :func:`choice`, whose docstrings say what they draw.
    low, high : float
        Bounds (not used by ``choice``).
    values : tuple
        The values of a ``choice``.
    """

    kind: str
    low: float = math.nan
    high: float = math.nan
    values: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(_BAD_KIND.format(kinds=tuple(_KINDS), kind=self.kind))
        if self.kind == "choice":
            if not self.values:
                raise ValueError(_NO_VALUES)
            return
        positive = self.kind != "uniform"
        if not (self.low <= self.high and (self.low > 0 or not positive)):
            rule = "0 < low <= high" if positive else "low <= high"
            raise ValueError(
                _BAD_RANGE.format(kind=self.kind, rule=rule, low=self.low, high=self.high)
            )

    def draw(self, rng: np.random.Generator) -> Any:
        """One value, from ``rng`` (one draw of ``rng`` per call, whatever the kind)."""
        u = float(rng.random())
        if self.kind == "choice":
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        if self.kind == "uniform":
            return _round(self.low + u * (self.high - self.low))
        value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return round(value) if self.kind == "log_int" else _round(value)

    def describe(self) -> str:
        """The distribution in words, for documentation and ``config.json``."""
        if self.kind == "choice":
            return "one of " + ", ".join(f"{v:.3g}" for v in self.values)
        return f"{_KINDS[self.kind]} in [{self.low:g}, {self.high:g}]"


def log_uniform(low: float, high: float) -> Distribution:
    """``exp(U(log low, log high))``, rounded to three significant digits."""
    return Distribution("log_uniform", float(low), float(high))


def uniform(low: float, high: float) -> Distribution:
    """``U(low, high)``, rounded to three significant digits."""
    return Distribution("uniform", float(low), float(high))


def log_int(low: int, high: int) -> Distribution:
    """``round(exp(U(log low, log high)))``: integers spread evenly in scale."""
    return Distribution("log_int", float(low), float(high))


def choice(*values: Any) -> Distribution:
    """One of ``values``, each equally likely."""
    return Distribution("choice", values=tuple(values))


def _round(value: float) -> float:
    return float(f"{value:.3g}")


#: What each coordinate of a search space sets (see the module docstring).
COORDINATES: dict[str, str] = {
    "lr": "learning rate",
    "weight_decay": "L2 penalty",
    "epoch_fraction": "epochs, as a fraction of the epoch budget E",
    "upweight_balance": "λ, as a multiple of the balancing factor (1 - r) / r",
    "upweight": "λ, the factor of the upweighted samples",
    "drop_fraction": "initial share of active weights pruned per topology update",
    "update_interval": "optimizer steps between topology updates",
    "groupdro_eta": "step size of GroupDRO's group weights",
    "jtt_epoch_fraction": "epochs of JTT's identification model, as a fraction of E",
}

_SHARED: dict[str, Distribution] = {
    "lr": log_uniform(1e-3, 1e-1),
    "weight_decay": log_uniform(1e-6, 1e-3),
    "epoch_fraction": choice(1 / 3, 2 / 3, 1.0),
}
#: The coordinates that are a fraction of the epoch budget, and the parameter they set.
_EPOCH_FRACTIONS = {"epoch_fraction": "max_epochs", "jtt_epoch_fraction": "jtt_epochs"}
_REWEIGHTING: dict[str, Distribution] = {**_SHARED, "upweight_balance": log_uniform(0.125, 2.0)}

#: The search spaces by name: coordinate -> distribution. Methods that share a
#: hyperparameter share its distribution, so no method is searched more widely than
#: another on what they have in common.
SEARCH_SPACES: dict[str, dict[str, Distribution]] = {
    "erm": dict(_SHARED),
    "reweighting": dict(_REWEIGHTING),
    "rest": {**_REWEIGHTING, "drop_fraction": uniform(0.1, 0.5),
             "update_interval": log_int(50, 1000)},
    "groupdro": {**_SHARED, "groupdro_eta": log_uniform(1e-3, 1e-1)},
    "jtt": {**_SHARED, "upweight": log_uniform(5.0, 200.0),
            "jtt_epoch_fraction": choice(0.1, 0.2, 1 / 3)},
}


def sample_seed(search_seed: int, method: str, index: int) -> list[int]:
    """The seed of configuration ``index`` of ``method``: ``[search_seed, crc32(method),
    index]``, the same in every process and on every platform."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(_BAD_INDEX.format(value=index))
    return [int(search_seed), zlib.crc32(method.encode("utf-8")), int(index)]


def sample(space: str | Mapping[str, Distribution], method: str, index: int, *,
           search_seed: int = 0) -> dict[str, Any]:
    """Configuration ``index`` of ``method``: a point of its search space.

    Parameters
    ----------
    space : str or mapping
        A key of :data:`SEARCH_SPACES`, or a coordinate -> :class:`Distribution` mapping.
    method : str
        The method's name, which seeds the draw (:func:`sample_seed`).
    index : int
        Configuration number, from 0.
    search_seed : int, default=0

    Returns
    -------
    dict
        Coordinate -> value, the coordinates drawn in sorted order.
    """
    if isinstance(space, str):
        if space not in SEARCH_SPACES:
            raise ValueError(_UNKNOWN_SPACE.format(name=space, names=sorted(SEARCH_SPACES)))
        space = SEARCH_SPACES[space]
    rng = np.random.default_rng(sample_seed(search_seed, method, index))
    point = {}
    for name in sorted(space):
        if name not in COORDINATES:
            raise ValueError(_UNKNOWN_COORDINATE.format(name=name, known=sorted(COORDINATES)))
        point[name] = space[name].draw(rng)
    return point


def hyperparameters(point: Mapping[str, Any], *, ratio: float, max_epochs: int
                    ) -> dict[str, Any]:
    """The :class:`~rest_fair.RESTClassifier` parameters of a point of a search space.

    Parameters
    ----------
    point : mapping
        Coordinate -> value (:func:`sample`).
    ratio : float
        Share ``r`` of bias-conflicting training samples (for ``upweight_balance``).
    max_epochs : int
        The epoch budget ``E`` (for ``epoch_fraction`` and ``jtt_epoch_fraction``).

    Returns
    -------
    dict
    """
    params: dict[str, Any] = {}
    for name, value in point.items():
        if name in _EPOCH_FRACTIONS:
            params[_EPOCH_FRACTIONS[name]] = max(1, round(value * max_epochs))
        elif name == "upweight_balance":
            params["upweight"] = _round(value * (1.0 - ratio) / ratio)
        elif name in COORDINATES:
            params[name] = value
        else:
            raise ValueError(_UNKNOWN_COORDINATE.format(name=name, known=sorted(COORDINATES)))
    return params


def mlp_weights(n_in: int, n_out: int, widths: Sequence[int]) -> int:
    """Weights of an MLP's linear layers (biases not counted).

    ``n_in * w_1 + w_1 * w_2 + ... + w_L * n_out``, for hidden widths ``w_1 ... w_L``.
    """
    sizes = [int(n_in), *(int(w) for w in widths), int(n_out)]
    return sum(a * b for a, b in itertools.pairwise(sizes))


def equal_cost_width(n_in: int, n_out: int, widths: Sequence[int], sparsity: float) -> int:
    """Hidden width of a dense MLP with as many weights as a sparse one has active weights.

    The sparse network is an MLP of ``L`` hidden layers of width ``H`` (``widths``) with a
    share ``1 - sparsity`` of its ``W(H) = n_in H + (L - 1) H^2 + H n_out`` weights active
    (every linear layer is masked, so this is its count of active weights). The dense
    network has the same depth and width ``h``, the positive root of
    ``(L - 1) h^2 + (n_in + n_out) h = (1 - sparsity) W(H)``::

        h = (-(n_in + n_out) + sqrt((n_in + n_out)^2 + 4 (L - 1) (1 - s) W(H))) / (2 (L - 1))

    (``h = (1 - s) W(H) / (n_in + n_out)`` for one hidden layer), rounded to the nearest
    integer and at least 1. Biases (``L h + n_out``, dense in both) are not counted.

    Parameters
    ----------
    n_in : int
        Inputs of the first layer (e.g. 3 x 28 x 28 = 2352).
    n_out : int
        Classes.
    widths : sequence of int
        The sparse MLP's hidden widths, all equal.
    sparsity : float in [0, 1)

    Returns
    -------
    int

    Examples
    --------
    >>> equal_cost_width(2352, 10, [300, 300, 300], 0.9)
    36
    """
    widths = [int(w) for w in widths]
    if not widths or len(set(widths)) != 1:
        raise ValueError(_BAD_WIDTHS.format(value=widths))
    if not 0 <= float(sparsity) < 1:
        raise ValueError(_BAD_SPARSITY.format(value=sparsity))
    target = (1.0 - float(sparsity)) * mlp_weights(n_in, n_out, widths)
    depth, linear = len(widths), float(n_in + n_out)
    if depth == 1:
        width = target / linear
    else:
        width = (-linear + math.sqrt(linear**2 + 4 * (depth - 1) * target)) / (2 * (depth - 1))
    return max(1, round(width))
