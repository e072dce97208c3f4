"""Group-label-free minority inference: Just Train Twice (Liu et al., ICML 2021).

A short identification model is trained by plain ERM; the training samples it gets wrong
form the *error set*, which REST upweights as the minority group.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import IDENTIFYING, unused_params
from .exceptions import TrainingDivergedError

__all__ = ["identification_params", "identify_errors", "overlap_report"]

#: Put before the error of a diverged identification model, which names no stage.
IDENTIFICATION_DIVERGED = (
    "JTT's identification model (infer_groups='jtt'), trained before the final model to find "
    "the error set, diverged. It trains for jtt_epochs={epochs} epochs by plain ERM with the "
    "estimator's optimizer={optimizer!r}, lr={lr:g} and weight_decay={decay:g}, at a constant "
    "learning rate (lr_scheduler does not apply to it). Its error: "
)

MISMATCHED_OVERLAP = (
    "overlap_report needs inferred and minority as one flag per sample, one-dimensional of "
    "the same length; got shapes {} and {}."
)
NOT_FLAGS = (
    "overlap_report needs {name} as flags, one per sample: booleans, or 0 and 1; got "
    "{value!r} among them. Group labels are not minority flags: "
    "rest_fair.reweighting.minority_mask(y_codes, group_codes), of integer codes of the "
    "labels and groups, flags the samples outside the largest group of their class, as "
    "inferred_groups_overlap_ does."
)


def identification_params(est: Any, *, seed: int) -> dict:
    """Parameters of the identification model: the estimator's, trained by short ERM.

    It keeps the architecture, sparsity and optimiser, but draws no reweighting, holds no
    validation split (the last epoch is used) and trains for ``jtt_epochs`` epochs at a
    constant learning rate. The parameters it leaves unused (``est._used_only_when``) are
    at their defaults, so that its fit does not warn of them (the estimator's fit does).
    """
    params = {
        "infer_groups": None,
        "upweight": None,
        "objective": "erm",
        "max_epochs": est.jtt_epochs,
        "validation_fraction": 0.0,
        "lr_scheduler": "constant",
        "callbacks": None,
        "warm_start": False,
        "verbose": 0,
        "random_state": seed,
    }
    return {**params, **unused_params(type(est), {**est.get_params(deep=False), **params})}


def identify_errors(est: Any, X: Any, y: np.ndarray, *, seed: int,
                    sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the training samples the identification model misclassifies.

    The identification model is fitted on ``X``, ``y`` and ``sample_weight``, then
    predicts every sample of ``X``. Its fit knows itself as JTT's identification fit (in
    this thread or asyncio task only): it warns of its own epochs, naming ``jtt_epochs``,
    not of the data and network it shares with the final model, whose fit warns of them.

    Parameters
    ----------
    est : RESTClassifier
        The estimator being fitted (its parameters are copied).
    X : array-like, sparse matrix or torch Dataset
        Training inputs.
    y : array-like, shape (n_samples,) or (n_samples, 1)
        Training labels (original values).
    seed : int
        Seed of the identification model.
    sample_weight : ndarray of float, shape (n_samples,), optional
        The training samples' weights, as ``fit`` was given them.

    Returns
    -------
    ndarray of bool, shape (n_samples,)

    Raises
    ------
    TrainingDivergedError
        If the identification model diverges, naming it and the parameters that train it.
    """
    from sklearn.base import clone

    model = clone(est).set_params(**identification_params(est, seed=seed))
    identifying = IDENTIFYING.set(True)
    try:
        model.fit(X, y, sample_weight=sample_weight)
        return np.asarray(model.predict(X) != np.ravel(y))
    except TrainingDivergedError as error:
        raise TrainingDivergedError(IDENTIFICATION_DIVERGED.format(
            epochs=est.jtt_epochs, optimizer=est.optimizer, lr=float(est.lr),
            decay=float(est.weight_decay),
        ) + str(error)) from error
    finally:
        IDENTIFYING.reset(identifying)


def overlap_report(inferred: np.ndarray, minority: np.ndarray) -> dict:
    """How well an inferred error set matches the true minority samples.

    Parameters
    ----------
    inferred, minority : array-like of bool
        Inferred error set and true minority membership of the same samples, as booleans
        or as 0 and 1.

    Returns
    -------
    dict
        ``n_inferred``, ``n_minority``, ``precision`` (share of the error set that is
        minority), ``recall`` (share of the minority found) and ``base_rate`` (minority share
        overall: the precision of a random guess).

    Raises
    ------
    ValueError
        If ``inferred`` and ``minority`` are not one-dimensional of the same length, or hold
        other values than booleans, 0 and 1 (group labels, say).
    """
    inferred, minority = _flags(inferred, "inferred"), _flags(minority, "minority")
    if inferred.ndim != 1 or inferred.shape != minority.shape:
        raise ValueError(MISMATCHED_OVERLAP.format(inferred.shape, minority.shape))
    hits = int((inferred & minority).sum())
    return {
        "n_inferred": int(inferred.sum()),
        "n_minority": int(minority.sum()),
        "precision": hits / int(inferred.sum()) if inferred.any() else float("nan"),
        "recall": hits / int(minority.sum()) if minority.any() else float("nan"),
        "base_rate": float(minority.mean()),
    }


def _flags(values: Any, name: str) -> np.ndarray:
    """``values`` as booleans; refused (naming ``name``) where one is not a boolean, 0 or 1."""
    values = np.asarray(values)
    if values.dtype != bool:
        other = values[~np.isin(values, (0, 1))]
        if other.size:
            raise ValueError(NOT_FLAGS.format(name=name, value=other[:1].tolist()[0]))
    return values.astype(bool)
