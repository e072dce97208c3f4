"""What :meth:`RESTClassifier.fit` does, in four stages.

1. The input checks and encoding, :func:`rest_fair._inputs.check_inputs`.
2. Building the run: the world (one process, or a data-parallel rank), the validation
   split, a checkpoint to resume from, JTT's error set, the reweighted training set and
   the module, assembled by :func:`~rest_fair.training.parts.build_parts`.
3. The training loop, :meth:`~rest_fair.training.TrainingRun.fit_loop`.
4. Storing the fitted attributes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from tqdm.auto import tqdm

from ._data import TokenizedText, _first_element, fixed_global_rngs, make_source
from ._inputs import FitData, check_inputs
from ._validation import IDENTIFYING, summable_weights, warn_unused_params, warnings_if
from .callbacks import check_callbacks
from .jtt import identify_errors, overlap_report
from .models import build_module
from .persistence.checkpoint import (
    DETAIL,
    folder,
    has_checkpoint,
    read_checkpoint,
    saved_fingerprint,
)
from .reweighting import cell_weights, group_key, minority_mask, sample_weights_for
from .sparse.modules import set_submodule
from .training import (
    EpochSampler,
    EvalSet,
    Precision,
    TrainingRun,
    TrainSet,
    TrainState,
    check_checkpoint,
)
from .training.distributed import LocalContext, resolve_distributed
from .training.parts import TrainConfig, build_parts

__all__ = ["fit_estimator", "is_device_name", "remember_network_params", "resolve_device"]

#: Held by a fit while it seeds and draws from the process's global torch random state
#: (initialisation, dropout), and by a prediction while it keeps a copy of that state to
#: restore: fits and predictions in threads of one process take turns, each fit drawing what
#: it would alone. Re-entrant, for JTT's fit inside a fit and a callback's prediction.
GLOBAL_RANDOM_STATE = threading.RLock()

NO_CUDA = "device={!r} was requested but CUDA is not available on this machine."
BAD_DEVICE = "device must be 'auto', 'cpu', 'cuda', 'cuda:<i>' or a torch.device; got {!r}."
SPARSE_INIT_RENAMED = (
    "sparse_init={value!r} is deprecated: the layer densities are now set by "
    "layer_density={value!r}, and sparse_init chooses how masks start ('random' or "
    "'magnitude'). sparse_init={value!r} is read as layer_density={value!r}, "
    "sparse_init='random'; the old spelling will stop working in a future release."
)
NO_VALIDATION = (
    "validation_fraction={fraction:g} leaves no usable validation set of {n} samples (at "
    "least one sample held out, and a sample of every class left to train on): the model "
    "of the last epoch is kept. Pass validation_data, or more samples."
)
UNWEIGHTED_CLASSES = (
    "{n} class(es) have no sample of positive sample_weight: {classes}. Such samples are "
    "neither trained on nor held out, so the network never learns these classes, though "
    "classes_ lists them. Give some of their samples a positive weight, or leave them out."
)
UNDRAWN_CLASSES = (
    "{n} class(es) have no training sample that upweight={upweight!r} weighs above 0: "
    "{classes}. upweight gives 0 to every group of their samples, so the network never "
    "learns these classes, though classes_ lists them. Give one of their groups a positive "
    "weight, or leave them out."
)
UNUSED_LAMBDA = (
    "upweight={upweight!r} draws the samples outside the most frequent group of their class "
    "more often, but {why}: every training sample weighs 1, as with upweight=None. {advice}"
)
#: Why ``upweight=lambda`` weighs nothing, and the advice, by whether ``fit`` got groups.
UNUSED_LAMBDA_CASES = {
    False: ("fit got no groups", "Pass groups= (e.g. the bias attribute, or whether a "
            "sample conflicts with it), or upweight=None for plain training."),
    True: ("the training samples of each class are all in one group",
           "Pass groups that vary within a class (e.g. whether a sample conflicts with the "
           "bias), or upweight='balanced' to draw every group equally often."),
}
VALIDATION_WITHOUT_GROUPS = (
    "fit got groups but validation_data has none: the epoch kept is chosen by validation "
    "accuracy, not by worst-group accuracy. Pass validation_data=(X_val, y_val, groups_val) "
    "to choose it by worst-group accuracy."
)
GROUPS_NOT_VALIDATED = (
    "{n} group(s) with training samples have no validation samples: {groups}. The "
    "worst-group accuracy that chooses the epoch kept cannot see them. {advice}"
)
SMALL_VALIDATION_GROUPS = (
    "{n} validation group(s) have fewer than {min} samples: {groups} (samples in brackets). "
    "The worst-group accuracy that chooses the epoch kept moves in steps of 1/n on a group "
    "of n samples, so the choice is noisy. {advice}"
)
#: The advice of those two warnings, by where the validation set comes from.
MORE_VALIDATION_DATA = "Give validation_data more samples of these groups."
MORE_HELD_OUT = (
    "Hold out more (validation_fraction), or pass validation_data with more samples of "
    "these groups."
)
ONLY_UNWEIGHTED_VALIDATION = (
    "validation_data holds only samples of groups that upweight weighs 0: {groups}. The fit "
    "leaves these groups out, of training and of model selection, so nothing is left to "
    "choose the epoch kept. Give validation_data samples of the groups trained on."
)
#: Validation groups with fewer samples than this are named in a warning by ``fit``.
SMALL_VALIDATION_GROUP = 10
ERM_GROUPDRO = (
    "objective='groupdro' minimises the loss of the worst group, but {why}: its one weight "
    "is 1 throughout, so it trains as ERM. Pass groups that split the training samples "
    "(e.g. the bias attribute), or objective='erm'."
)
WARM_START_CHANGED = (
    "warm_start=True continues the fitted network and its masks, but {name} changed: it was "
    "{before!r}, now {after!r}. Set warm_start=False (or the previous value) to fit anew."
)
DICT_WITHOUT_GROUPS = (
    "upweight is a dict of weights by group ({keys}), but fit got no groups (groups=None "
    "puts every sample in one group): pass groups=..., or a number or 'balanced'."
)
NO_TRAINING_WEIGHT = (
    "every training sample has a weight of 0 once sample_weight and upweight are combined "
    "(upweight gives 0 to the groups of the samples with a positive sample_weight): nothing "
    "would be learnt. Give some training samples a positive weight in both."
)
UNIFORM_ERROR_SET = (
    "JTT's identification model (jtt_epochs={epochs}) misclassified {which} of the {n} "
    "training samples, so the error set cannot be told apart from the rest: every sample "
    "keeps the same weight and the final model is trained as plain ERM. {advice}"
)
#: :data:`UNIFORM_ERROR_SET`'s advice when the identification model got every sample right,
#: and when it got none right.
UNIFORM_ADVICE = {
    "none": "Fewer jtt_epochs (or a smaller lr) leave the identification model mistakes to find.",
    "all": "The identification model learnt nothing: more jtt_epochs (or another lr) let it "
           "learn the easy samples first.",
}
JTT_DICT_KEYS = (
    "upweight is a dict of weights by group ({keys}), but with infer_groups='jtt' the groups "
    "it weighs are JTT's error set (True) and the other samples (False), not the groups given "
    "to fit: pass upweight={{False: 1.0, True: lambda}}, a number lambda or 'balanced'."
)
UNUSED_ERROR_SET = (
    "infer_groups='jtt' with upweight={upweight!r} and objective='erm': upweight gives JTT's "
    "error set the weight of the other samples and ERM does not read groups, so the final "
    "model trains as with infer_groups=None and the identification model (jtt_epochs="
    "{epochs}) trains only to fill inferred_groups_. Pass upweight (a number other than 1, "
    "or 'balanced') or objective='groupdro' to use the error set, or infer_groups=None."
)
WARM_WITHOUT_HISTORY = (
    "warm_start=True continues the fitted network and its history_, but this estimator has "
    "no history_: it was loaded from a model file written by an earlier rest_fair, whose "
    "save left history_ out where a callback had stored values that are not plain in it. "
    "Set warm_start=False to fit anew, or set history_ = [] to continue the network with "
    "an empty history (its epochs then count from 1, and efficiency_report() counts the "
    "samples of those epochs only)."
)
WARM_AND_RESUME = (
    "warm_start=True continues this fitted estimator's network, resume_from continues the "
    "run of a checkpoint: pass one of them (set warm_start=False to resume, or leave out "
    "resume_from to continue the fitted network)."
)
# parameters that define the network and its masks: a warm start cannot change them
_WARM_FIXED = ("module", "module_params", "sparsity", "layer_density", "dense_layers")
# parameters that do not change what a run computes: they may differ on resume
_RUN_INDEPENDENT = ("verbose", "callbacks", "device", "num_workers", "warm_start",
                    "distributed", "distributed_timeout", "sparse_compute",
                    "sparse_compute_threshold")
# the fingerprint's entries added after checkpoints began recording one, by dotted path,
# each with the value under which a run computes bitwise what it did before the entry: a
# checkpoint without the entry resumes a run holding it; an added entry not listed here
# refuses every older checkpoint.
_NEUTRAL = {
    "seed": None,  # an int random_state (the seed a run drew is recorded since it began)
    "validation_sha256": None,  # no validation_data (n_valid, recorded before, is compared)
    "params.rescale_init": True,
    "params.update_timing": "mid_interval",
    "params.groupdro_adjustment": 0.0,
    "weighted_counts": None,  # sample weights all equal, no group weighed 0
    "left_out_of_selection": None,  # no validation groups, or no group an upweight dict weighs 0
    "data_sha256_of": DETAIL,  # which of the inputs data_sha256 digests differs
}


def is_device_name(device: Any) -> bool:
    """Whether ``device`` names a device ``fit`` can use: ``"auto"``, or a CPU or CUDA
    device as a string or :class:`torch.device` (whether CUDA exists is not checked)."""
    if isinstance(device, str) and device == "auto":
        return True
    if not isinstance(device, (str, torch.device)):
        return False
    try:
        return torch.device(device).type in ("cpu", "cuda")
    except (RuntimeError, TypeError, ValueError):
        return False


def resolve_device(device: Any) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; checks that CUDA exists if asked for."""
    if not is_device_name(device):
        raise ValueError(BAD_DEVICE.format(device))
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(NO_CUDA.format(device))
    return dev


def _train_config(params: dict) -> TrainConfig:
    """:class:`TrainConfig` of the parameters, reading the deprecated ``sparse_init='erk'``
    (with a warning, except in JTT's identification fit: :data:`IDENTIFYING`)."""
    if params["sparse_init"] in ("erk", "uniform"):
        value = params["sparse_init"]
        if not IDENTIFYING.get():
            warnings.warn(SPARSE_INIT_RENAMED.format(value=value), FutureWarning, stacklevel=4)
        params = {**params, "layer_density": value, "sparse_init": "random"}
    return TrainConfig.from_params(params)


# ------------------------------------------------------------------- 2. building the run
def _split(
    y_codes: np.ndarray, group_codes: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Hold out ``fraction`` of the samples, stratified by (class, group) where possible.

    Every class keeps a training sample: where the split would hold out all of a class (a
    class of one sample, which cannot be stratified), its first held-out sample is trained on.
    """
    n = len(y_codes)
    idx = np.arange(n)
    if fraction <= 0 or round(n * fraction) < 1 or n - round(n * fraction) < 2:
        return idx, None
    cells = y_codes * (int(group_codes.max()) + 1) + group_codes
    for stratify in (cells, y_codes, None):
        try:
            train_idx, val_idx = train_test_split(
                idx, test_size=fraction, random_state=seed, stratify=stratify
            )
        except ValueError:
            continue
        val_idx = np.sort(val_idx)
        untrained = _missing_codes(y_codes[val_idx], y_codes[train_idx])
        if len(untrained):
            _, first = np.unique(y_codes[val_idx], return_index=True)
            back = val_idx[first[np.isin(y_codes[val_idx][first], untrained)]]
            train_idx, val_idx = np.r_[train_idx, back], np.setdiff1d(val_idx, back)
        if len(val_idx):
            return np.sort(train_idx), val_idx
    return idx, None


def _missing_codes(codes: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The sorted distinct values of ``codes`` (integers >= 0) that ``present`` lacks, as
    ``np.setdiff1d`` gives them, counted instead of sorted."""
    size = int(max(codes.max(initial=-1), present.max(initial=-1))) + 1
    return np.flatnonzero((np.bincount(codes, minlength=size) > 0)
                          & (np.bincount(present, minlength=size) == 0))


def _leaving_out(upweight: Any, infer_groups: Any) -> Mapping | None:
    """The ``upweight`` dict whose groups of weight 0 take no part in the fit, of training
    and of model selection; None where there is none (JTT's dict weighs its error set, not
    these groups)."""
    return upweight if isinstance(upweight, Mapping) and infer_groups != "jtt" else None


def _weighed_zero(upweight: Any, labels: list | None) -> np.ndarray:
    """The codes of the groups ``labels`` that an ``upweight`` dict weighs 0."""
    if not isinstance(upweight, Mapping) or labels is None:
        return np.zeros(0, dtype=np.int64)
    weights = [None if (key := group_key(upweight, label)) is None else upweight[key]
               for label in labels]
    return np.array([code for code, w in enumerate(weights) if isinstance(w, Real) and w == 0],
                    dtype=np.int64)


def _hold_out(data: FitData, fraction: float, seed: int, world: LocalContext,
              num_workers: int, upweight: Any = None) -> tuple[np.ndarray, EvalSet | None]:
    """The training rows and the validation set: ``validation_data``, or a split.

    The split (the same on every rank: ``seed`` is broadcast) holds out only rows of
    positive ``sample_weight`` outside the groups an ``upweight`` dict weighs 0, as
    :func:`_split` of the fit without the others would; the others stay training rows,
    which train as if removed. Held-out rows keep their ``sample_weight`` as validation
    weights (``None`` where all are equal); ``validation_data`` is unweighted, but for its
    samples of groups ``upweight`` weighs 0, which weigh 0 (``ValueError`` where that leaves
    none). Its warnings come from rank 0 only, and not from JTT's identification fit
    (:data:`IDENTIFYING`), whose final fit gives them.
    """
    device = world.device
    weighed = np.flatnonzero(data.sample_weight > 0)
    unweighed = _missing_codes(np.arange(len(data.classes)), data.y[weighed])
    if len(unweighed) and world.is_main and not IDENTIFYING.get():
        warnings.warn(UNWEIGHTED_CLASSES.format(
            n=len(unweighed), classes=_named(data.classes[unweighed].tolist())),
            UserWarning, stacklevel=6)
    if data.has_groups:
        weighed = weighed[~np.isin(data.groups[weighed],
                                   _weighed_zero(upweight, data.group_labels))]
    if data.validation is not None:
        X_val, y_val, g_val = data.validation
        w_val = None
        left_out = (np.zeros(0, dtype=bool) if g_val is None
                    else np.isin(g_val, _weighed_zero(upweight, data.validation_group_labels)))
        if left_out.any():
            w_val = np.where(left_out, 0.0, 1.0)
            if not w_val.any():
                raise ValueError(ONLY_UNWEIGHTED_VALIDATION.format(groups=[
                    data.validation_group_labels[code] for code in np.unique(g_val)]))
        if world.is_main:
            _check_selection(data, weighed, g_val if w_val is None else g_val[w_val > 0],
                             data.validation_group_labels, advice=MORE_VALIDATION_DATA)
        return np.arange(len(data.y)), EvalSet(
            make_source(X_val, device=device, num_workers=num_workers), y_val, g_val, w_val)
    _, val_idx = _split(data.y[weighed], data.groups[weighed], fraction, seed)
    if val_idx is None:
        if fraction > 0 and world.is_main:
            warnings.warn(NO_VALIDATION.format(fraction=fraction, n=len(weighed)), UserWarning,
                          stacklevel=6)  # the caller of RESTClassifier.fit
        return np.arange(len(data.y)), None
    val_idx = weighed[val_idx]
    in_valid = np.zeros(len(data.y), dtype=bool)
    in_valid[val_idx] = True
    train_idx = np.flatnonzero(~in_valid)
    w_val = data.sample_weight[val_idx]
    w_val = None if np.all(w_val == w_val[0]) else w_val
    g_val = data.groups[val_idx] if data.has_groups else None
    if world.is_main:
        _check_selection(data, weighed[~in_valid[weighed]], g_val, data.group_labels,
                         advice=MORE_HELD_OUT)
    held = data.rows(val_idx)  # a dense X's rows read in place, as the training rows
    return train_idx, EvalSet(
        make_source(held.X, device=device, num_workers=num_workers, rows=held.X_rows),
        held.y, g_val, w_val)


def _named(labels: list, counts: dict | None = None, most: int = 5) -> str:
    """The first ``most`` group labels (with their counts), and how many more there are."""
    def name(label: Any) -> str:
        return repr(label) if counts is None else f"{label!r} ({counts[label]})"
    more = f", and {len(labels) - most} more" if len(labels) > most else ""
    return ", ".join(name(label) for label in labels[:most]) + more


def _check_selection(data: FitData, trained_rows: np.ndarray, valid_codes: np.ndarray | None,
                     valid_labels: list | None, *, advice: str) -> None:
    """Warn where worst-group selection on the validation groups is blind or noisy.

    ``trained_rows`` are the rows of ``data`` that count as a group's training samples,
    ``valid_codes`` the groups of the validation samples that count. Named are: groups
    given to ``fit`` with ``validation_data`` that has none; groups with training samples
    and no validation sample; validation groups of fewer than
    :data:`SMALL_VALIDATION_GROUP` samples, also where ``fit`` got no groups (as with
    ``infer_groups="jtt"``). ``advice`` ends the last two.
    """
    if valid_codes is None:
        if data.has_groups:
            warnings.warn(VALIDATION_WITHOUT_GROUPS, UserWarning, stacklevel=7)
        return
    sizes = np.bincount(valid_codes, minlength=len(valid_labels))
    valid_sizes = {label: int(n) for label, n in zip(valid_labels, sizes, strict=True)
                   if n > 0}
    if data.has_groups:
        trained = [data.group_labels[code] for code in np.unique(data.groups[trained_rows])]
        unseen = [label for label in trained if label not in valid_sizes]
        if unseen:
            warnings.warn(GROUPS_NOT_VALIDATED.format(
                n=len(unseen), groups=_named(unseen), advice=advice), UserWarning, stacklevel=7)
    small = sorted((label for label, n in valid_sizes.items() if n < SMALL_VALIDATION_GROUP),
                   key=valid_sizes.get)
    if small:
        warnings.warn(SMALL_VALIDATION_GROUPS.format(
            n=len(small), min=SMALL_VALIDATION_GROUP, groups=_named(small, valid_sizes),
            advice=advice), UserWarning, stacklevel=7)


def _plain(value: Any) -> Any:
    """A JSON form of a parameter value that is the same in every process."""
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    if isinstance(value, (torch.nn.Module, np.random.RandomState)):
        # a random state is the seed drawn from it, which the fingerprint holds
        return f"instance of {type(value).__module__}.{type(value).__qualname__}"
    return value


def _json_value(value: Any) -> Any:
    """The JSON form of a value JSON has none for: a numpy scalar's Python number (the
    value of the same parameter passed as a Python number), a path's string (the same
    path passed as a string), else its ``repr``."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    for numpy_type, python_type in ((np.bool_, bool), (np.integer, int), (np.floating, float)):
        if isinstance(value, numpy_type):
            return python_type(value)
    return repr(value)


def _json_key(key: Any) -> str:
    """A mapping key as JSON writes it (``1`` -> ``"1"``), or its ``repr`` for a key JSON
    has no form for (a tuple naming an intersectional group)."""
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    return repr(key)


def _json_keys(value: Any) -> Any:
    """``value`` with the keys of every mapping in it made strings by :func:`_json_key`."""
    if isinstance(value, Mapping):
        return {_json_key(k): _json_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_keys(v) for v in value]
    return value


def _chunks(a: Any) -> Iterator[bytes]:
    """The bytes a digest of the input ``a`` reads (a torch Dataset: its length and three
    of its items, read with the global generators fixed)."""
    if isinstance(a, TokenizedText):
        yield b"tokens"
        for part in (a.ids, a.offsets):
            yield np.ascontiguousarray(part).data
    elif sp.issparse(a):
        a = a.tocsr()
        for part in (a.data, a.indices, a.indptr):
            yield np.ascontiguousarray(part).tobytes()
    elif isinstance(a, np.ndarray):
        yield str((a.dtype, a.shape)).encode()
        yield np.ascontiguousarray(a).data
    else:  # a torch Dataset is read lazily: its length and a sample of its items
        yield f"dataset:{type(a).__qualname__}:{len(a)}".encode()
        with fixed_global_rngs():
            for i in sorted({0, len(a) // 2, len(a) - 1}):
                item = _first_element(a[i]).detach().cpu().contiguous()
                yield str((item.dtype, tuple(item.shape))).encode()
                yield item.reshape(-1).view(torch.uint8).numpy().tobytes()


def _digests(**arrays: Any) -> tuple[str, dict[str, str]]:
    """The SHA-256 of ``arrays`` together, and of each by name, in one pass over them."""
    whole, parts = hashlib.sha256(), {}
    for name, a in arrays.items():
        part = hashlib.sha256()
        for chunk in _chunks(a):
            whole.update(chunk)
            part.update(chunk)
        parts[name] = part.hexdigest()
    return whole.hexdigest(), parts


def _fingerprint(params: dict, input_shape: tuple, data: FitData,
                 valid: EvalSet | None, seed: int | None) -> dict:
    """What identifies a run: its data (``validation_data`` included), the parameters that
    change what it computes, and the seed drawn from a ``random_state`` that is not an int
    (``seed``, None for an int ``random_state``)."""
    run_params = {k: _json_keys(_plain(v)) for k, v in params.items()
                  if k not in _RUN_INDEPENDENT}
    data_sha256, by_part = _digests(X=data.X, y=data.y, groups=data.groups,
                                    sample_weight=data.sample_weight)
    return {
        "seed": seed,
        "n_samples": len(data.y),
        "input_shape": list(input_shape),
        "classes": [str(c) for c in data.classes],
        "data_sha256": data_sha256,
        "data_sha256_of": by_part,  # names which of them differs
        # True where sample weights differ (they count in the cell weights) or an upweight
        # dict weighs a group 0: samples of weight 0 by either are never visited
        "weighted_counts": None if np.all(data.sample_weight == data.sample_weight[0])
        and not (isinstance(params["upweight"], Mapping) and 0 in params["upweight"].values())
        else True,
        "n_valid": None if valid is None else len(valid.y),
        "left_out_of_selection": None if valid is None or valid.groups is None
        or (left := _leaving_out(params["upweight"], params["infer_groups"])) is None
        else [str(k) for k, v in left.items() if v == 0] or None,
        "validation_sha256": None if data.validation is None
        else _digests(**{str(i): part for i, part in enumerate(data.validation)
                         if part is not None})[0],
        "params": json.loads(json.dumps(run_params, default=_json_value, sort_keys=True)),
    }


def _check_warm_params(before: dict | None, params: dict) -> None:
    """Refuse a warm start whose network-defining parameters changed since the last fit."""
    for name, value in (before or {}).items():
        if params[name] != value:
            raise ValueError(WARM_START_CHANGED.format(name=name, before=value,
                                                       after=params[name]))


def _jtt_errors(est: Any, train: FitData, seed: int, saved: torch.Tensor | None,
                world: LocalContext) -> np.ndarray:
    """JTT's error set of the training rows: a resumed run's, or rank 0's on every rank."""
    if saved is not None:
        return saved.numpy().astype(bool)
    errors = identify_errors(est, train.inputs(), train.classes[train.y], seed=seed,
                             sample_weight=train.sample_weight)
    errors = world.broadcast_(torch.as_tensor(errors, dtype=torch.uint8)).numpy() > 0
    trained = errors[train.sample_weight > 0]  # those of weight 0 are absent from training
    if world.is_main and (trained.all() or not trained.any()):
        which = "all" if trained.all() else "none"
        warnings.warn(UNIFORM_ERROR_SET.format(epochs=est.jtt_epochs, n=len(trained),
                                               which=which, advice=UNIFORM_ADVICE[which]),
                      UserWarning, stacklevel=6)  # the caller of RESTClassifier.fit
    return errors


def _train_set(train: FitData, *, upweight: Any, reweight: str, batch_size: int,
               num_workers: int, generator: torch.Generator,
               world: LocalContext) -> tuple[TrainSet, dict]:
    """The reweighted training set, and the weight of each (class, group) cell.

    A training sample of ``sample_weight`` 0, or of a cell ``upweight`` weighs 0, is absent
    from training, as if removed: the cell weights count sample weights
    (:func:`~rest_fair.reweighting.cell_weights`), the sampler never visits it, and the loss
    weights have mean 1 over the other samples.
    """
    if isinstance(upweight, Mapping) and not train.has_groups:
        raise ValueError(DICT_WITHOUT_GROUPS.format(keys=", ".join(map(repr, upweight))))
    weights = cell_weights(train.y, train.groups, train.group_labels, upweight,
                           sample_weight=train.sample_weight)
    if not any(w > 0 for w in weights.values()):  # the cells of samples of positive weight
        raise ValueError(NO_TRAINING_WEIGHT)
    if (isinstance(upweight, Real) and upweight != 1 and world.is_main
            and all(w == 1 for w in weights.values())):
        why, advice = UNUSED_LAMBDA_CASES[train.has_groups]
        warnings.warn(UNUSED_LAMBDA.format(upweight=upweight, why=why, advice=advice),
                      UserWarning, stacklevel=6)  # the caller of RESTClassifier.fit
    per_sample = sample_weights_for(train.y, train.groups, weights)
    counted = (train.sample_weight > 0) & (per_sample > 0)  # in some loss: visited
    undrawn = _missing_codes(train.y[train.sample_weight > 0], train.y[counted])
    if len(undrawn) and world.is_main and not IDENTIFYING.get():
        warnings.warn(UNDRAWN_CLASSES.format(
            n=len(undrawn), upweight=upweight, classes=_named(train.classes[undrawn].tolist())),
            UserWarning, stacklevel=6)  # the caller of RESTClassifier.fit
    rows = None if np.all(counted) else np.flatnonzero(counted)
    loss_w = train.sample_weight * (per_sample if reweight == "loss" else 1.0)
    visited = loss_w if rows is None else loss_w[rows]  # mean 1 over the samples visited
    uniform = bool(np.all(visited == visited[0]))
    if not uniform:
        loss_w = np.zeros_like(loss_w)
        visited = summable_weights(visited)
        loss_w[counted] = visited / visited.mean()
    kinds = {w for w in weights.values() if w > 0}  # one weight visited: a plain shuffle
    draw = per_sample if reweight == "sampler" and len(kinds) > 1 else None
    source = make_source(train.X, device=world.device, num_workers=num_workers,
                         rows=train.X_rows)
    return TrainSet(
        source=source,
        y=torch.as_tensor(train.y, dtype=torch.long),
        loss_weights=None if uniform else torch.as_tensor(loss_w, dtype=torch.float32),
        groups=torch.as_tensor(train.groups, dtype=torch.long),
        n_groups=len(train.group_labels),
        sampler=EpochSampler(source.n_samples, batch_size, draw, generator,
                             rank=world.rank, world_size=world.world_size, rows=rows),
        # GroupDRO's n_g: the training samples of each group that some loss can count (a
        # group that upweight weighs 0 is never visited, like one held out)
        group_sizes=torch.as_tensor(np.bincount(train.groups[counted],
                                                minlength=len(train.group_labels))),
        n_classes=len(train.classes),
    ), weights


@dataclass
class _Built:
    """A built run and what its fitted attributes need besides it."""

    run: TrainingRun
    train_idx: np.ndarray
    weights: dict  # (class, group) cell -> weight
    errors: np.ndarray | None  # JTT's error set of the training rows


@contextlib.contextmanager
def _training_modes(device: torch.device) -> Iterator[None]:
    """Torch's modes as training needs them, whatever the caller set; restored after.

    Gradients on (also inside the caller's ``torch.no_grad()`` or ``torch.inference_mode()``),
    autocast off except where :meth:`~rest_fair.training.Precision.autocast` turns it on
    (the caller's would reach the validation loss and topology updates too), and float32
    as the default dtype (float32 weights also after ``torch.set_default_dtype(torch.float64)``).
    """
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with (torch.inference_mode(False), torch.enable_grad(),
              torch.autocast("cpu", enabled=False),
              torch.autocast(device.type, enabled=False)
              if device.type != "cpu" else contextlib.nullcontext()):
            yield
    finally:
        torch.set_default_dtype(dtype)


def _run_seed(random_state: Any, world: LocalContext, resume_from: Any) -> tuple[int, bool]:
    """The run's seed, rank 0's on every rank (one split, one generator), and whether it was
    drawn: a run seeded by None or a RandomState draws it, and resuming such a run takes the
    seed its checkpoint recorded, so that the validation split and the generators are the
    same."""
    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    drawn = not isinstance(random_state, Integral)
    if drawn and resume_from is not None:
        saved = world.run_on_main(lambda: saved_fingerprint(resume_from).get("seed")
                                  if has_checkpoint(resume_from) else None)
        seed = seed if saved is None else int(saved)
    return world.broadcast_object(seed), drawn


def _error_set_upweight(upweight: Any) -> Any:
    """JTT's ``upweight`` of its two groups, the error set (True) and the rest (False): a
    number is λ for the error set, in every class; a dict must name both groups."""
    if isinstance(upweight, Real):
        return {False: 1.0, True: upweight}
    if isinstance(upweight, Mapping) and not {False, True} <= upweight.keys():
        raise ValueError(JTT_DICT_KEYS.format(keys=", ".join(map(repr, upweight))))
    return upweight


@contextlib.contextmanager
def _built_run(est: Any, data: FitData, config: TrainConfig, callbacks: list, *,
               world: LocalContext, warm: bool, resume_from: Any) -> Iterator[_Built]:
    """The run of ``fit`` in ``world``, open: the random state forked (and held against
    fits in other threads), its batch sources closed after. Building the network warns on
    rank 0 only: every rank builds the same."""
    seed, drawn = _run_seed(est.random_state, world, resume_from)
    precision = Precision(est.precision, world.device)
    train_idx, valid = _hold_out(data, float(est.validation_fraction), seed, world,
                                 est.num_workers,
                                 upweight=_leaving_out(est.upweight, est.infer_groups))
    # hashing the data costs a pass over it: done only when a check or checkpoint asks
    fingerprint = functools.cache(functools.partial(
        _fingerprint, est.get_params(deep=False), est.input_shape_, data, valid,
        seed if drawn else None))
    world.check_same("data or parameters", fingerprint)
    # rank 0 reads; every rank resumes from its copy
    checkpoint = world.run_on_main(
        lambda: read_checkpoint(resume_from, fingerprint=fingerprint(), neutral=_NEUTRAL)
        if resume_from is not None and has_checkpoint(resume_from) else {})
    # callbacks refuse their settings before anything trains (JTT's identification model too)
    check = functools.partial(check_checkpoint, fingerprint=fingerprint, world=world,
                              neutral=_NEUTRAL)
    for callback in callbacks:
        callback.on_fit_begin(est, check_checkpoint=check, has_validation=valid is not None)
    train, errors = data.rows(train_idx), None
    sources = [] if valid is None else [valid.source]
    try:
        cuda = ([torch.cuda.current_device() if world.device.index is None
                 else world.device.index] if world.device.type == "cuda" else [])
        with (GLOBAL_RANDOM_STATE, torch.random.fork_rng(devices=cuda),
              _training_modes(world.device)):
            # only the generators forked here: torch.manual_seed would also seed every CUDA
            # device (a CPU fit's seed would reach the GPUs, to stay after fit)
            torch.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            upweight = est.upweight
            if est.infer_groups == "jtt":
                upweight = _error_set_upweight(upweight)
                alike = upweight is None or (isinstance(upweight, Mapping)
                                             and upweight.get(False) == upweight.get(True))
                if alike and est.objective == "erm" and world.is_main:
                    warnings.warn(UNUSED_ERROR_SET.format(upweight=est.upweight,
                                                          epochs=est.jtt_epochs),
                                  UserWarning, stacklevel=5)  # the caller of RESTClassifier.fit
                saved = checkpoint.get("extra", {}).get("jtt_errors")
                errors = _jtt_errors(est, train, seed, saved, world)
                train = replace(train, groups=errors.astype(np.int64),
                                group_labels=[False, True], has_groups=True)
            train_set, weights = _train_set(
                train, upweight=upweight, reweight=est.reweight, batch_size=est.batch_size,
                num_workers=est.num_workers, generator=generator, world=world)
            sources.append(train_set.source)
            trained = np.flatnonzero(train_set.group_sizes.numpy() > 0)
            if est.objective == "groupdro" and len(trained) < 2 and world.is_main:
                why = (f"only the group {train.group_labels[trained[0]]!r} has training "
                       "samples" if train.has_groups else "fit got no groups")
                warnings.warn(ERM_GROUPDRO.format(why=why), UserWarning,
                              stacklevel=5)  # the caller of RESTClassifier.fit
            with warnings_if(world.is_main):
                module = est.module_.to(world.device).train() if warm else build_module(
                    est.module, input_shape=train_set.source.sample_shape,
                    n_classes=len(data.classes), module_params=est.module_params,
                ).to(world.device)
            for source in sources:  # token ids for an embedding, else the input dtype
                source.set_input_dtypes(module)
            parts = build_parts(
                config, module, train_set, valid, world=world, precision=precision,
                generator=generator, callbacks=callbacks,
                masks=dict(est.masks_) if warm and est.masks_ else None,
                sparse_layers=checkpoint.get("sparse_compute_layers"))
            fitted_q = _fitted_group_weights(est, train.group_labels) if warm else None
            if fitted_q is not None and hasattr(parts.objective, "continue_from"):
                parts.objective.continue_from(fitted_q)
            run = TrainingRun(
                parts, generator=generator, fingerprint=fingerprint, neutral=_NEUTRAL,
                state=TrainState(history=list(est.history_), epoch_offset=len(est.history_),
                                 step_offset=est.n_train_steps_,
                                 update_offset=est.n_topology_updates_)
                if warm else None,
                extra={} if errors is None else {"jtt_errors": torch.as_tensor(errors)})
            world.seed_own_stream(seed)  # what draws while training draws per rank
            if checkpoint:
                run.load_state_dict(checkpoint)
            yield _Built(run, train_idx, weights, errors)
    finally:
        for source in sources:
            source.close()


def _fitted_group_weights(est: Any, labels: list) -> list[float] | None:
    """GroupDRO's group weights at ``est``'s kept epoch, which a warm start over the same
    groups continues; ``None`` where its last fit had no GroupDRO or other groups."""
    rows = getattr(est, "group_weight_history_", None)
    if not rows or list(getattr(est, "groups_", ())) != list(labels):
        return None
    row = est.best_epoch_ - 1 - (len(est.history_) - len(rows))  # rows: the last fit's
    return rows[row] if 0 <= row < len(rows) else None


# --------------------------------------------------------------------------- 3. the loop
def _train(est: Any, run: TrainingRun) -> None:
    """:meth:`~TrainingRun.fit_loop`, with a progress bar on rank 0 when ``verbose``."""
    with tqdm(total=est.max_epochs, initial=run.state.epoch, desc="REST",
              disable=not est.verbose or not run.parts.world.is_main, leave=False) as progress:
        run.parts.progress = progress
        run.fit_loop(est)


# ------------------------------------------------------------------ 4. fitted attributes
def _fitted(built: _Built, data: FitData) -> dict[str, Any]:
    """The fitted attributes of a finished run (a warm start's counters go on); ``classes_``
    and those of the input are set by :func:`~rest_fair._inputs.check_inputs`."""
    parts, state, classes, errors = built.run.parts, built.run.state, data.classes, built.errors
    labels = data.group_labels if errors is None else [False, True]
    fitted = {
        "module_": parts.module,
        "masks_": state.best_masks,
        "history_": state.history,
        "best_epoch_": state.best_epoch,
        "n_topology_updates_": state.update_offset
        + (parts.sparsity.n_updates if parts.sparsity is not None else 0),
        "n_train_steps_": state.step_offset + state.step,
        "sparse_compute_layers_": list(getattr(parts.sparsity, "converted", ())),
        "group_weight_history_": getattr(parts.objective, "history", None),
        "groups_": list(labels),
        "group_weights_": {
            (classes[c].item() if hasattr(classes[c], "item") else classes[c], labels[g]): float(w)
            for (c, g), w in built.weights.items()
        },
        "inferred_groups_": None,
        "inferred_groups_overlap_": None,
    }
    if errors is not None:  # of the samples trained on: those of sample_weight 0 are not
        trained = data.sample_weight[built.train_idx] > 0
        train_idx, errors = built.train_idx[trained], errors[trained]
        fitted["inferred_groups_"] = np.zeros(len(data.y), dtype=bool)
        fitted["inferred_groups_"][train_idx] = errors
        if data.has_groups:
            fitted["inferred_groups_overlap_"] = overlap_report(
                errors, minority_mask(data.y[train_idx], data.groups[train_idx]))
    return fitted


# ----------------------------------------------------------------------------- fit
def fit_estimator(
    est: Any,
    X: Any,
    y: Any,
    *,
    groups: Any = None,
    sample_weight: Any = None,
    validation_data: Any = None,
    resume_from: Any = None,
) -> Any:
    """Check the inputs, build the run, train it and set the fitted attributes of ``est``
    (left as it was if anything raises)."""
    callbacks = check_callbacks(est.callbacks)
    warm = bool(est.warm_start) and hasattr(est, "module_")
    if warm and resume_from is not None:
        raise ValueError(WARM_AND_RESUME)
    if resume_from is not None:
        folder(resume_from, "resume_from")  # a path, before the inputs are checked
    if warm and not hasattr(est, "history_"):
        raise ValueError(WARM_WITHOUT_HISTORY)
    params = est.get_params(deep=False)
    if warm:
        _check_warm_params(getattr(est, "_warm_fixed_params", None), params)
    with _restored_on_error(est, warm):
        est.__dict__.pop("inference_module_", None)  # belongs to the previous fit
        world = resolve_distributed(est.distributed, resolve_device(est.device),
                                    timeout=est.distributed_timeout)
        with warnings_if(world.is_main):  # every rank has the same inputs and parameters
            data = check_inputs(est, X, y, groups, sample_weight, validation_data, warm=warm)
            warn_unused_params(est, stacklevel=4)  # the caller of RESTClassifier.fit
            config = _train_config(params)
        with _built_run(est, data, config, callbacks, world=world, warm=warm,
                        resume_from=resume_from) as built:
            _train(est, built.run)
        vars(est).update(_fitted(built, data))
        remember_network_params(est)
    return est


def _is_fitted_attribute(name: str) -> bool:
    return (name.endswith("_") and not name.startswith("__")) or name == "_warm_fixed_params"


@contextlib.contextmanager
def _restored_on_error(est: Any, warm: bool) -> Iterator[None]:
    """Put back ``est``'s fitted attributes (and a warm start's network) if the block raises.

    A warm start trains the fitted network in place, sparse compute swapping some of its
    layers for CSR ones: the layers and a copy of the weights are kept, so that a run
    stopped anywhere leaves the network as it was.
    """
    fitted = {k: v for k, v in vars(est).items() if _is_fitted_attribute(k)}
    layers = dict(est.module_.named_modules()) if warm else {}
    weights = ({k: v.detach().to("cpu", copy=True) for k, v in est.module_.state_dict().items()}
               if warm else None)
    try:
        yield
    except BaseException:
        for key in [k for k in vars(est) if k not in fitted and _is_fitted_attribute(k)]:
            delattr(est, key)
        vars(est).update(fitted)
        for name, layer in layers.items():  # parents first: a restored parent has its children
            if name and est.module_.get_submodule(name) is not layer:
                set_submodule(est.module_, name, layer)
        if weights is not None:
            current = est.module_.state_dict(keep_vars=True)
            for key, saved in weights.items():  # a swapped layer's dense weight was emptied
                if current[key].shape != saved.shape:
                    current[key].data = current[key].data.new_empty(saved.shape)
            est.module_.load_state_dict(weights)
            est.module_.eval()
        raise


def remember_network_params(est: Any, params: Mapping[str, Any] | None = None) -> None:
    """Keep the parameters that define ``est``'s fitted network (those of ``params``, by
    default ``est``'s own) for a later warm start; ``fit`` and ``RESTClassifier.load`` call it."""
    params = est.get_params(deep=False) if params is None else params
    est._warm_fixed_params = {name: _containers_copied(params[name]) for name in _WARM_FIXED}


def _containers_copied(value: Any) -> Any:
    """``value`` with its dicts and lists copied at every depth, so that editing them in
    place (``dense_layers.append``, ``module_params["hidden_layer_sizes"].append``) is a
    change too; anything else is kept itself (compared by identity first, as before)."""
    if isinstance(value, dict):
        return {k: _containers_copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_containers_copied(v) for v in value]
    return value
