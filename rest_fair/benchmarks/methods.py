"""The compared methods, as data: each one is a configuration of :class:`RESTClassifier`.

A *method family* fixes everything but the sparsity; the sweep crosses it with the
sparsity grid, so ``"rest"`` at sparsity 0 is dense reweighting and at 0.9 is REST, and
``"erm"`` at 0 is dense ERM and at 0.9 sparse ERM (RigL). Adding a row to
:data:`METHODS` adds a method to ``rest-fair bench``; there is no per-method code path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "LAMBDA",
    "LAMBDA_BY_RATIO",
    "METHODS",
    "Method",
    "estimator_params",
    "lambda_for_ratio",
]

#: Placeholder in :attr:`Method.params` for the ratio-dependent upweighting factor.
LAMBDA = "<lambda>"

#: Upweighting factor per conflicting share, from the REST authors' README (their code
#: ignores it and uses 80 everywhere; the README lists that defect).
LAMBDA_BY_RATIO: dict[float, float] = {0.005: 10.0, 0.01: 30.0, 0.02: 50.0, 0.05: 80.0}

_UNKNOWN_METHOD = "Unknown method {name!r}; available: {names}."
_GROUP_LABEL_USES = ("none", "train", "val")


@dataclasses.dataclass(frozen=True)
class Method:
    """One row family of the benchmark table.

    Attributes
    ----------
    name : str
        Key used on the command line (``--methods erm,rest``).
    dense_label, sparse_label : str
        Display names at sparsity 0 and above 0.
    params : mapping
        :class:`RESTClassifier` parameters; :data:`LAMBDA` is replaced by the upweighting
        factor of the run's conflicting share (:func:`estimator_params`).
    group_labels : {"none", "train", "val"}
        Where the method uses bias/group labels: ``"train"``, as ``groups`` of ``fit`` and
        with the validation data (selection by worst-group accuracy); ``"val"``, with the
        validation data only; ``"none"``, nowhere (selection by validation accuracy).
    """

    name: str
    dense_label: str
    sparse_label: str
    params: Mapping[str, Any]
    group_labels: str

    def __post_init__(self) -> None:
        if self.group_labels not in _GROUP_LABEL_USES:
            raise ValueError(f"group_labels must be one of {_GROUP_LABEL_USES}.")

    def label(self, sparsity: float) -> str:
        """Display name at ``sparsity``."""
        return self.sparse_label if sparsity > 0 else self.dense_label

    @property
    def reweights(self) -> bool:
        """Whether the method reads the upweighting factor (its ``params`` hold
        :data:`LAMBDA`), and with it the benchmark's ``upweight``."""
        return LAMBDA in self.params.values()

    @property
    def train_groups(self) -> bool:
        """Whether ``fit`` receives the training group labels."""
        return self.group_labels == "train"

    @property
    def valid_groups(self) -> bool:
        """Whether the validation data carries group labels (worst-group selection)."""
        return self.group_labels in ("train", "val")


#: The benchmark methods by name (``--methods``): ERM, reweighting/REST, JTT and GroupDRO,
#: each a configuration of :class:`~rest_fair.RESTClassifier`.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        # name, dense label, sparse label, estimator parameters, group-label use
        Method("erm", "ERM (dense)", "ERM (sparse, RigL)", {"upweight": None}, "none"),
        Method("rest", "Reweighting (dense)", "REST", {"upweight": LAMBDA}, "train"),
        Method("jtt", "JTT (dense)", "JTT-REST (sparse)",
               {"upweight": LAMBDA, "infer_groups": "jtt"}, "val"),
        Method("groupdro", "GroupDRO (dense)", "GroupDRO (sparse)",
               {"upweight": None, "objective": "groupdro"}, "train"),
    )
}


def lambda_for_ratio(ratio: float) -> float:
    """Upweighting factor for a conflicting share: :data:`LAMBDA_BY_RATIO`, interpolated
    linearly in ``log(ratio)`` between its shares (clamped at the ends).

    Parameters
    ----------
    ratio : float
        Share of bias-conflicting training samples.

    Returns
    -------
    float
    """
    known = sorted(LAMBDA_BY_RATIO)
    lam = np.interp(np.log(max(float(ratio), 1e-12)), np.log(known),
                    [LAMBDA_BY_RATIO[k] for k in known])
    return float(np.round(lam, 1))


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name`` (clear error otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(_UNKNOWN_METHOD.format(name=name, names=sorted(METHODS))) from None


def estimator_params(
    method: Method, *, sparsity: float, ratio: float, upweight: Any = None
) -> dict[str, Any]:
    """Method-specific :class:`RESTClassifier` parameters of one run.

    Parameters
    ----------
    method : Method
    sparsity : float
    ratio : float
        Conflicting share (selects lambda).
    upweight : float, {"balanced", "none"} or None
        Override of the lambda placeholder: a number, ``"balanced"``, or ``"none"`` (no
        reweighting, ``upweight=None``); None uses :func:`lambda_for_ratio`.

    Returns
    -------
    dict
    """
    if upweight is None:
        lam = lambda_for_ratio(ratio)
    else:
        lam = None if upweight == "none" else upweight
    params = {k: (lam if v == LAMBDA else v) for k, v in method.params.items()}
    params["sparsity"] = float(sparsity)
    return params
