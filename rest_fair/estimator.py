"""RESTClassifier: reweighted sparse training as a scikit-learn classifier."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Hashable, Mapping
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ._data import make_source
from ._fit import (
    GLOBAL_RANDOM_STATE,
    fit_estimator,
    is_device_name,
    remember_network_params,
)
from ._inputs import _FLOAT32_MAX, check_x
from ._validation import (
    RANDOM_STATE,
    Interval,
    Options,
    TypeOf,
    check_params,
)
from .efficiency import SparseExport, efficiency_report, export_sparse
from .exceptions import ModelFileError, TrainingDivergedError
from .models import MODULE_NAMES
from .objectives import OBJECTIVES
from .persistence import model_file
from .reweighting import REWEIGHT_MODES
from .sparse import (
    DROP_SCHEDULES,
    LAYER_DENSITIES,
    REGROW_MODES,
    SPARSE_INITS,
    UPDATE_TIMINGS,
)
from .sparse.compute import SPARSE_COMPUTE_MODES
from .sparse.csr_engine import dense_copy
from .training import LR_SCHEDULERS, OPTIMIZERS, PRECISIONS, predict_logits
from .training.distributed import translate_failures

__all__ = ["RESTClassifier"]

_INF = float("inf")
_NONE = type(None)
# the optimizer computes in float32: a step size or penalty above _FLOAT32_MAX overflows there
_FLOAT32_NOTE = "the largest float32: the weights and their updates are float32"


class _DeviceName:
    """A device ``fit`` can use (see :func:`~rest_fair._fit.is_device_name`)."""

    def accepts(self, value: Any) -> bool:
        return is_device_name(value)

    def describe(self) -> str:
        return "'auto', 'cpu', 'cuda', 'cuda:<i>' or a torch.device"


# "erk" and "uniform" are the deprecated spellings of layer_density (see _fit.py)
_SPARSE_INITS = (*SPARSE_INITS, *LAYER_DENSITIES)
_NON_FINITE_OUTPUT = (
    "the network's outputs are not finite for {count} of {n} samples (inputs of very large "
    "magnitude, or a model saved after training diverged?); no probabilities returned."
)
_CUSTOM_MODULE = (
    "cannot save a RESTClassifier whose module parameter is {value!r}: only the built-in "
    "names {names} can be rebuilt without running code from the file. Use pickle/joblib "
    "for this estimator, or rest_fair.persistence.save((clf.module_, clf.masks_, metadata), "
    "path) and pass module= to rest_fair.persistence.load()."
)
_NO_INPUT_SHAPE = (
    "efficiency_report counts FLOPs on one zero sample of the fitted input shape, and this "
    "network was fitted on samples without one (input_shape_ is (): text, whose token "
    "sequences vary in length, or one number per sample). sparsity_report() gives the "
    "active weights of every masked layer."
)
_NOT_SAVED = "fitted attributes not saved (not plain values): {names}"
_ENTRIES_NOT_SAVED = (
    "entries {keys} of {name} not saved (not plain values): the file keeps its other entries"
)
# parameters that may hold objects a file cannot: they do not change the fitted network
_OBJECT_PARAMS = ("callbacks", "random_state")
_PARAMS_NOT_SAVED = (
    "parameters {names} hold objects, not plain values: the file keeps None for them, and "
    "the loaded estimator has {names} = None (set them again to refit the same way)."
)
_EXPORTED = (
    "cannot save a RESTClassifier whose module_ is a compressed export (export_sparse): the "
    "file holds the fitted network and its masks. Save the estimator export_sparse was "
    "called on; use_sparse_inference() predicts through an export and keeps module_."
)
_NOT_AN_ESTIMATOR = "{path} holds a {kind}, not a {cls}."
_NO_ATTRIBUTES = "{path} lacks the fitted attributes {names}."
_NOT_ATTRIBUTES = "{path} names attributes {names} that save() never writes; not loaded."
_UNKNOWN_PARAMS = (
    "{path} sets parameters {names} that this {cls} does not have: a newer rest_fair or "
    "another class ({saved!r:.80}) wrote it. Not loaded; load it with that release or class."
)
_UNKNOWN_MODULE = (
    "{path} holds a network of module={value!r:.80}, which this rest_fair cannot rebuild (its "
    "built-in names are {names}): a newer rest_fair wrote it. Not loaded; load it with that "
    "release."
)
# Fitted attributes a model file must hold; the network and its masks are its tensors, and
# the optimizer is not saved.
_FILE_ATTRIBUTES = ("classes_", "n_features_in_", "input_shape_")
_LIVE_ATTRIBUTES = ("module_", "masks_", "optimizer_")
# Fitted attributes a file holds or save refuses: their keys are the groups fit was given
_GROUP_ATTRIBUTES = ("groups_", "group_weights_")
_GROUPS_NOT_SAVED = (
    "It holds the group labels given to fit; a model file holds labels that are strings, "
    "bytes, numbers, bools, None, dates, times or durations (datetime, numpy, pandas), tuples "
    "of them: fit with such labels to save the estimator."
)
_SAVED_IN_FIRST_FIT = (
    "This %(name)s has a network but not yet the attributes fit sets when it ends "
    "(best_epoch_, groups_, ...; a callback saving during the first fit comes "
    "before), and a file without them could not be warm-started. To save the run to "
    "resume it, use rest_fair.callbacks.Checkpoint; to save the network being trained, "
    "rest_fair.persistence.save((net.module_, dict(net.masks_), metadata), path)."
)


def _plain_records(value: Any) -> tuple[list[dict], list] | None:
    """The plain JSON of the records of ``value`` (a list of dicts, as ``history_``) less
    their entries that are not plain values, and the keys left out; ``None`` for any other
    ``value``.

    Raises
    ------
    TypeError
        If a record has a key that is not a plain value.
    """
    if not isinstance(value, list) or not all(isinstance(r, Mapping) for r in value):
        return None
    records, left_out = [], []
    for record in value:
        kept = []
        for key, entry in record.items():
            try:
                kept.append((key, model_file.to_json(entry, "")))
            except TypeError:
                if key not in left_out:
                    left_out.append(key)
        records.append(model_file.mapping_to_json(kept, ""))
    return records, left_out


def _is_file_attribute(name: str) -> bool:
    """Whether a model file holds the attribute ``name`` (a fitted attribute, not the
    network, its masks and optimizer, nor ``inference_module_``, derived from them)."""
    return (name.endswith("_") and not name.startswith("_")
            and name not in (*_LIVE_ATTRIBUTES, "inference_module_"))


def _weights_as_string(params: dict) -> dict:
    """``params`` with pretrained ``module_params["weights"]`` given as a path or a
    torchvision weights member replaced by its string, which a model file can hold."""
    weights = (params.get("module_params") or {}).get("weights")
    if weights is None or isinstance(weights, str):
        return params
    return {**params, "module_params": {**params["module_params"], "weights": str(weights)}}


class RESTClassifier(ClassifierMixin, BaseEstimator):
    """Neural network classifier trained with REST: reweighted dynamic sparse training.

    Every convolution and linear weight gets a binary mask (per-layer densities by ERK);
    every ``update_interval`` steps each layer drops the fraction ``f_t`` of its active
    weights with the smallest magnitude and regrows as many inactive ones with the largest
    gradient (RigL) or at random (SET), ``f_t`` decaying by a cosine schedule. Minority
    groups are drawn more often (``upweight``), and the epoch with the best validation
    worst-group accuracy is kept. With ``sparsity=0`` and ``upweight=None`` this is a plain
    dense network trained by ERM.

    Parameters
    ----------
    sparsity : float in [0, 1), default=0.9
        Fraction of the masked weights held at 0 by their mask (an active weight can be 0
        too: RigL regrows at 0). The masked weights are those of conv, linear and embedding
        layers, attention input projections and recurrent layers (see
        :func:`rest_fair.sparse.maskable_parameters`); ``0`` trains a dense network. Every
        masked layer keeps an active weight; a warning names the layers where that makes a
        small network more than 10 % denser than asked.
    layer_density : {"erk", "uniform"}, default="erk"
        How the global density is split over layers: Erdős–Rényi–Kernel (denser small
        layers) or the same density everywhere.
    sparse_init : {"random", "magnitude"}, default="random"
        Initial masks: uniformly random (training from scratch) or, for pretrained weights,
        each layer's largest-magnitude weights. ``"erk"`` and ``"uniform"`` are deprecated
        spellings of ``layer_density``.
    rescale_init : bool, default=True
        With random masks, scale each masked layer's initial weights by ``1/sqrt(density)``
        to keep the dense network's output scale (without it a 90 %-sparse MLP hardly
        trains from scratch). ``False`` reproduces the REST authors, who do not rescale.
    dense_layers : list of str, default=None
        Layers left dense: ``"first"`` (the first conv/linear layer), ``"head"`` (the last
        linear layer), ``"embeddings"`` and/or weight names of ``module.named_parameters()``;
        see :func:`rest_fair.sparse.resolve_dense_layers`.
    regrow : {"gradient", "random"}, default="gradient"
        ``"gradient"`` regrows the inactive weights with the largest gradient magnitude
        (RigL); ``"random"`` regrows uniformly at random (SET).
    drop_fraction : float in [0, 1], default=0.5
        Initial fraction ``f_0`` of active weights replaced at a topology update.
    drop_schedule : {"cosine", "cosine_floor", "constant"}, default="cosine"
        Decay of the drop fraction: RigL's ``f_t = f_0 / 2 * (1 + cos(pi t / T_end))``, or
        the REST authors' cosine annealing that ends at 0.005 instead of 0, or none.
    update_interval : int >= 1 or "auto", default="auto"
        Optimizer steps between topology updates; ``"auto"`` is once per epoch. The REST
        authors used 1000 steps on their (much larger) data sets.
    update_end : float in [0, 1], default=0.75
        Fraction of training after which the topology is frozen (``T_end``).
    update_timing : {"mid_interval", "after_step"}, default="mid_interval"
        ``"mid_interval"``: mid-interval, between ``backward()`` and the optimizer step,
        which trains the regrown weights; with more than one step per epoch, an update due
        on an epoch's last step moves to the next, so every validated model trained a step
        past its last topology change. With one step per epoch (e.g. a training set of at
        most ``batch_size`` samples) every step is an epoch's last and updates fall there:
        only that step trains them.
        ``"after_step"`` (the REST authors' code): after the optimizer step of every
        ``update_interval``-th step, so an update on an epoch's last step is validated at
        once and a model whose regrown weights are still zero can be selected (every
        epoch's, with ``update_interval="auto"``).
    sparse_compute : {"auto", "masked", "csr"}, default="auto"
        How sparse layers train. ``"masked"``: dense weights, masks re-applied after every
        step (each step costs a dense one). ``"csr"``: plain linear layers of density at
        most ``sparse_compute_threshold`` train with sparse kernels (CSR forward, sparse
        input gradient, weight gradient and optimizer state only at the active weights; the
        dense gradient is scanned only at RigL updates). ``"auto"`` times each such layer
        once per process on the training device at a training batch's rows (``batch_size``,
        times the sequence length in a transformer) and converts it where the kernels are
        at least 10 % faster; on the CPU, also a layer fed by a converted one through a
        plain ``nn.ReLU`` (an MLP's next or output layer), at any density, where the two
        chained on the compiled kernels are at least as fast. A resumed run converts its
        checkpoint's layers untimed; fresh processes may decide differently, so use
        ``"masked"`` or ``"csr"`` for bitwise reproducible runs. Convolutions,
        ``precision="16-mixed"`` and data-parallel runs use the masked path (``"csr"``
        refuses the latter two); under ``precision="bf16"`` the kernels compute in float32.
        Results equal the masked path's up to rounding; ``module_``, ``masks_``, checkpoints
        and saved files are the same in every mode (``docs/efficiency.md`` has timings).
    sparse_compute_threshold : float in [0, 1], default=0.2
        Highest layer density trained with sparse kernels (``"csr"``) or timed alone
        (``"auto"``, which times a layer ending a chain of converted layers at any density).
    upweight : None, "balanced", float or dict, default="balanced"
        Minority reweighting. ``None``: none. ``"balanced"``: every group is drawn equally
        often. A float ``lambda > 0``: the most frequent group of each class is the aligned
        one, every other group of that class is drawn ``lambda`` times as often. A dict maps
        every group to its weight (>= 0); a group weighed 0 is left out, as if removed, of
        training with either ``reweight`` (a class left without a training sample is named
        in a warning) and of model selection: ``validation_fraction`` holds none of it out,
        and its samples in ``validation_data`` count in no score (a ``validation_data`` with
        no other sample is refused). Group sizes and the most frequent group count
        ``sample_weight``, as scikit-learn's ``compute_class_weight("balanced",
        sample_weight=...)``: a sample of weight ``k`` counts as ``k`` copies (0: absent).
    reweight : {"sampler", "loss"}, default="sampler"
        Apply ``upweight`` by drawing samples with replacement in proportion to their
        weight (as in the REST paper) or by weighting their loss.
    objective : {"erm", "groupdro"}, default="erm"
        ``"groupdro"`` minimises the worst group's loss by online GroupDRO; with one group
        of training samples (no ``groups``, or the others weighed 0) it trains as ERM, and
        ``fit`` warns.
    groupdro_eta : float > 0, default=0.01
        Step size of GroupDRO's group-weight update (``objective="groupdro"`` only: ``fit``
        warns of a value other than the default otherwise, as for ``groupdro_adjustment``,
        ``jtt_epochs`` and ``momentum``).
    groupdro_adjustment : float >= 0, default=0.0
        GroupDRO's group adjustment ``C`` (Sagawa et al. 2020, Section 3.3): each group's
        batch loss is increased by ``C / sqrt(n_g)`` in the group-weight update (not in the
        loss the network minimises), so small groups gain weight faster. ``n_g`` counts the
        training samples of group ``g`` (after the validation split; with
        ``infer_groups="jtt"`` the error set and the rest) of positive ``sample_weight`` and
        ``upweight``, each once. The paper tunes ``C`` in ``{0, 1, ..., 5}``; ``0`` is plain
        GroupDRO.
    infer_groups : None or "jtt", default=None
        ``"jtt"`` first trains a short identification model whose misclassified training
        samples form the group to upweight (JTT, Liu et al. 2021): no group labels are
        needed for training, and ``groups``, if given, serve only for model selection on
        the held-out split and for ``inferred_groups_overlap_``. The error set acts through
        ``upweight`` (a dict weighs the groups ``True``, the error set, and ``False``) or
        ``objective="groupdro"``; with ``objective="erm"`` and an ``upweight`` weighing it
        as the rest (``None``, ``1``) the final model trains as without it, with a warning.
    jtt_epochs : int >= 1, default=5
        Epochs of the JTT identification model (``infer_groups="jtt"`` only).
    module : str, nn.Module class, callable or instance, default="auto"
        ``"auto"`` (MLP for flat samples, the paper's small CNN for images), ``"mlp"``,
        ``"cnn"``, ``"resnet18"``, or a user module returning one logit per class (shape
        ``(batch, n_classes)``, checked at every training step); see
        :func:`rest_fair.models.build_module`. Lazy layers (``nn.LazyLinear``, ...) get their
        parameters from one pass of the first training sample, in evaluation mode.
    module_params : dict, default=None
        Keyword arguments of the module, e.g. ``{"hidden_layer_sizes": (256, 256)}``.
    max_epochs : int >= 1, default=100
        Training epochs (an epoch draws as many samples as the training set has).
    batch_size : int >= 1, default=256
        Mini-batch size.
    lr : float > 0, default=0.01
        Learning rate. With ``optimizer="adam"`` or ``"adamw"``, at most a tenth of the
        largest float32 (Adam's first step is ``lr / (1 - beta1)``, ``beta1 = 0.9``).
    optimizer : {"sgd", "adam", "adamw"}, default="sgd"
        SGD uses ``momentum``.
    momentum : float in [0, 1), default=0.9
        SGD momentum (``optimizer="sgd"`` only).
    weight_decay : float >= 0, default=0.0
        L2 penalty added to the gradient (SGD, Adam); AdamW decays the weights directly
        (decoupled weight decay), so with the default 0 it trains as Adam does.
    lr_scheduler : {"plateau", "cosine", "constant"}, default="plateau"
        ``"plateau"`` divides the learning rate by 10 once the validation loss (training
        loss without validation) has not improved for more than 5 epochs. ``"cosine"``
        anneals it by a cosine over ``max_epochs`` epochs, epoch ``e`` (from 1) training at
        ``lr * (1 + cos(pi * (e - 1) / max_epochs)) / 2``. ``"constant"`` keeps ``lr``.
    validation_fraction : float in [0, 1), default=0.1
        Share of the training data held out, stratified by class and group, for model
        selection unless ``fit`` gets ``validation_data``: of the samples of positive
        ``sample_weight`` outside the groups an ``upweight`` dict weighs 0, every class
        keeping a training sample (a class of one sample is not held out). ``0`` keeps the
        last epoch. ``fit`` warns where a group with training samples has no validation
        sample, or a validation group has fewer than 10.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available.
    precision : {"32", "bf16", "16-mixed"}, default="32"
        Precision of the forward pass in training and validation: float32, bfloat16
        autocast (CPU and CUDA), or float16 autocast with gradient scaling (CUDA only;
        refused on the CPU). Weights, masks, topology updates and ``predict`` stay float32.
    warm_start : bool, default=False
        ``True``: ``fit`` on a fitted estimator continues its network and masks for
        ``max_epochs`` more epochs (``history_`` goes on; GroupDRO's weights too, over the
        same groups) instead of starting anew. Classes, input shape, ``module``,
        ``module_params``, ``sparsity``, ``layer_density`` and ``dense_layers`` must be the
        same. An estimator without ``history_`` (loaded from a file an earlier
        ``save`` left it out of) is refused, naming the ways on.
    random_state : int in [0, 2**32 - 1], RandomState or None, default=None
        Seeds weight initialisation, masks, sampling and the validation split, leaving the
        global generators (torch's, CUDA's, numpy's, Python's) as they were. Results can
        depend on torch's thread count (convolutions; see the user guide's
        "Reproducibility and devices").
    verbose : int >= 0, default=0
        ``> 0`` shows a progress bar over epochs.
    callbacks : list of Callback, default=None
        Training hooks, see :mod:`rest_fair.callbacks` (e.g. ``EarlyStopping``, ``Checkpoint``).
    num_workers : int >= 0, default=0
        DataLoader workers when ``X`` is a torch Dataset. Results do not depend on it:
        every item is read with its own seed (from the run's random state) in the global
        generators of its process (torch's, numpy's, Python's), so a random transform draws
        the same with or without workers; the caller's generators are left as they were.
    distributed : "auto" or bool, default="auto"
        Data-parallel training with ``DistributedDataParallel`` (see the "Scaling out"
        guide). ``"auto"``: where a ``torch.distributed`` process group of several ranks is
        initialised, or under torchrun with ``WORLD_SIZE > 1`` (fit then initialises the
        group: NCCL on CUDA, gloo on the CPU; CUDA rank ``i`` trains on ``cuda:LOCAL_RANK``).
        ``True``: always, even with one rank (an error without a process group or torchrun
        environment). ``False``: never. ``batch_size`` stays the global batch of one
        optimizer step (a multiple of the number of ranks), an epoch one pass by all ranks.
    distributed_timeout : float > 0, default=1800.0
        Seconds a rank waits for the others in a collective before fit fails with
        :class:`~rest_fair.exceptions.DistributedError` (a dead or hung rank); applies
        where fit initialises the process group (a caller's group keeps its own timeout).

    Attributes
    ----------
    classes_ : ndarray
        Class labels, in the order of ``predict_proba``'s columns. Set once ``fit`` has
        checked the labels: a callback can ``predict`` during ``fit``.
    n_features_in_ : int
        Size of the second axis of ``X``.
    feature_names_in_ : ndarray of str
        Column names, when ``X`` was a DataFrame with string column names.
    input_shape_ : tuple of int
        Shape of one sample.
    module_ : torch.nn.Module
        The trained network (selected checkpoint); during ``fit``, the network being trained.
    optimizer_ : torch.optim.Optimizer
        The optimizer of the last fit (not pickled).
    masks_ : dict of str to bool Tensor
        Mask of every masked weight by parameter name (empty when dense); during ``fit``,
        the current masks.
    history_ : list of dict
        One record per epoch: ``epoch``, ``train_loss``, ``n_train_samples`` (trained in the
        epoch, summed over ranks), ``valid_loss``, ``valid_acc`` and ``valid_worst_group_acc``
        (where the fit holds out validation data), ``density``, ``lr`` (the epoch's learning
        rate), ``n_topology_updates``, ``best`` (best epoch so far), ``dur`` (seconds), and
        any keys callbacks add.
    best_epoch_ : int
        Epoch of the kept checkpoint.
    groups_ : list
        Group labels seen in training, sorted where they compare; with
        ``infer_groups="jtt"``, ``[False, True]`` (outside and inside the error set). Each
        label is the value given, one type per input form: numpy's numbers, strings and
        bytes as Python values (``np.int8(1)`` as ``1``), numpy's dates and durations as
        ``np.datetime64`` / ``np.timedelta64`` of their unit, pandas' (Series, Index,
        DataFrame column, or categoricals of them) as ``pandas.Timestamp`` /
        ``pandas.Timedelta`` with time zone and nanoseconds; a dict of columns labels each
        column as it would alone, several columns by tuples of them.
    group_weights_ : dict
        ``(class label, group label) -> weight`` used for reweighting (group labels as in
        ``groups_``).
    n_topology_updates_ : int
        Prune-and-regrow updates performed.
    n_train_steps_ : int
        Optimizer steps performed.
    sparse_compute_layers_ : list of str
        Layers trained with sparse kernels in the last fit (see ``sparse_compute``).
    group_weight_history_ : list of list of float or None
        GroupDRO's group weights at the end of each epoch of the last fit
        (``objective="groupdro"``): after a warm start, fewer rows than ``history_`` (its
        last ones). A warm start over the same ``groups_`` continues the weights of
        ``best_epoch_``, as it continues its network; another fit starts them uniform.
    inferred_groups_ : ndarray of bool or None
        With ``infer_groups="jtt"``, which samples of ``X`` formed the error set (samples
        held out for validation, and samples of ``sample_weight`` 0, are ``False``).
    inferred_groups_overlap_ : dict or None
        With ``infer_groups="jtt"`` and ``groups`` given, how the error set overlaps the true
        minority (samples outside their class's most frequent group) among the training
        samples of positive ``sample_weight``: ``precision``, ``recall``, ``base_rate``, counts.
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "sparsity": [Interval(Real, 0, 1, "left")],
        "layer_density": [Options(LAYER_DENSITIES)],
        "sparse_init": [Options(_SPARSE_INITS)],
        "dense_layers": [TypeOf((list, tuple, _NONE), "a list of layer names or None")],
        "regrow": [Options(REGROW_MODES)],
        "drop_fraction": [Interval(Real, 0, 1, "both")],
        "drop_schedule": [Options(DROP_SCHEDULES)],
        "update_interval": [Interval(Integral, 1, _INF, "left"), Options(("auto",))],
        "update_end": [Interval(Real, 0, 1, "both")],
        "update_timing": [Options(UPDATE_TIMINGS)],
        "rescale_init": [TypeOf((bool, np.bool_), "True or False")],
        "sparse_compute": [Options(SPARSE_COMPUTE_MODES)],
        "sparse_compute_threshold": [Interval(Real, 0, 1, "both")],
        "upweight": [TypeOf((_NONE, Mapping), "None or a dict"), Options(("balanced",)),
                     Interval(Real, 0, _INF, "neither")],
        "reweight": [Options(REWEIGHT_MODES)],
        "objective": [Options(OBJECTIVES)],
        "groupdro_eta": [Interval(Real, 0, _FLOAT32_MAX, "right", _FLOAT32_NOTE)],
        "groupdro_adjustment": [Interval(Real, 0, _FLOAT32_MAX, "both", _FLOAT32_NOTE)],
        "infer_groups": [TypeOf((_NONE,), "None"), Options(("jtt",))],
        "jtt_epochs": [Interval(Integral, 1, _INF, "left")],
        "module": [TypeOf((object,), "a module name, nn.Module class, callable or instance")],
        "module_params": [TypeOf((Mapping, _NONE), "a dict or None")],
        "max_epochs": [Interval(Integral, 1, _INF, "left")],
        "batch_size": [Interval(Integral, 1, _INF, "left")],
        "lr": [Interval(Real, 0, _FLOAT32_MAX, "right", _FLOAT32_NOTE)],
        "optimizer": [Options(OPTIMIZERS)],
        "momentum": [Interval(Real, 0, 1, "left")],
        "weight_decay": [Interval(Real, 0, _FLOAT32_MAX, "both", _FLOAT32_NOTE)],
        "lr_scheduler": [Options(LR_SCHEDULERS)],
        "validation_fraction": [Interval(Real, 0, 1, "left")],
        "device": [_DeviceName()],
        "precision": [Options(PRECISIONS)],
        "warm_start": [TypeOf((bool, np.bool_), "True or False")],
        "random_state": RANDOM_STATE,
        "verbose": [Interval(Integral, 0, _INF, "left"), TypeOf((bool,), "a bool")],
        "callbacks": [TypeOf((list, tuple, _NONE), "a list of Callback instances or None")],
        "num_workers": [Interval(Integral, 0, _INF, "left")],
        "distributed": [Options(("auto",)), TypeOf((bool, np.bool_), "True or False")],
        "distributed_timeout": [Interval(Real, 0, _INF, "neither")],
    }
    #: Parameters that one setting of another parameter reads alone: ``fit`` warns where one
    #: differs from its default and is unused (as scikit-learn's ``l1_ratio``).
    _used_only_when: ClassVar[dict[str, tuple[str, tuple]]] = {
        "groupdro_eta": ("objective", ("groupdro",)),
        "groupdro_adjustment": ("objective", ("groupdro",)),
        "jtt_epochs": ("infer_groups", ("jtt",)),
        "momentum": ("optimizer", ("sgd",)),
    }

    def __init__(
        self,
        *,
        sparsity: float = 0.9,
        layer_density: str = "erk",
        sparse_init: str = "random",
        rescale_init: bool = True,
        dense_layers: list | None = None,
        regrow: str = "gradient",
        drop_fraction: float = 0.5,
        drop_schedule: str = "cosine",
        update_interval: int | str = "auto",
        update_end: float = 0.75,
        update_timing: str = "mid_interval",
        sparse_compute: str = "auto",
        sparse_compute_threshold: float = 0.2,
        upweight: str | float | Mapping[Hashable, float] | None = "balanced",
        reweight: str = "sampler",
        objective: str = "erm",
        groupdro_eta: float = 0.01,
        groupdro_adjustment: float = 0.0,
        infer_groups: str | None = None,
        jtt_epochs: int = 5,
        module: Any = "auto",
        module_params: dict | None = None,
        max_epochs: int = 100,
        batch_size: int = 256,
        lr: float = 0.01,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_scheduler: str = "plateau",
        validation_fraction: float = 0.1,
        device: str | torch.device = "auto",
        precision: str = "32",
        warm_start: bool = False,
        random_state: Any = None,
        verbose: int = 0,
        callbacks: list | None = None,
        num_workers: int = 0,
        distributed: bool | str = "auto",
        distributed_timeout: float = 1800.0,
    ) -> None:
        self.sparsity = sparsity
        self.layer_density = layer_density
        self.sparse_init = sparse_init
        self.rescale_init = rescale_init
        self.dense_layers = dense_layers
        self.regrow = regrow
        self.drop_fraction = drop_fraction
        self.drop_schedule = drop_schedule
        self.update_interval = update_interval
        self.update_end = update_end
        self.update_timing = update_timing
        self.sparse_compute = sparse_compute
        self.sparse_compute_threshold = sparse_compute_threshold
        self.upweight = upweight
        self.reweight = reweight
        self.objective = objective
        self.groupdro_eta = groupdro_eta
        self.groupdro_adjustment = groupdro_adjustment
        self.infer_groups = infer_groups
        self.jtt_epochs = jtt_epochs
        self.module = module
        self.module_params = module_params
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_scheduler = lr_scheduler
        self.validation_fraction = validation_fraction
        self.device = device
        self.precision = precision
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.num_workers = num_workers
        self.distributed = distributed
        self.distributed_timeout = distributed_timeout

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: Any,
        y: Any,
        groups: Any = None,
        sample_weight: Any = None,
        validation_data: tuple | None = None,
        *,
        resume_from: Any = None,
    ) -> RESTClassifier:
        """Train the network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W), \
scipy.sparse matrix, DataFrame, or torch Dataset
            Inputs, of any numeric or boolean dtype, read as float32 (integer inputs of a
            network whose first layer is an ``nn.Embedding`` or ``nn.EmbeddingBag``: as
            int64 token ids). A torch Dataset is read lazily; its items are a tensor or a
            tuple whose first element is the input (labels then come from ``y``).
        y : array-like of shape (n_samples,)
            Class labels (any dtype).
        groups : array-like of shape (n_samples,) or (n_samples, n_columns), DataFrame \
or dict of columns, default=None
            Group of each sample (e.g. a sensitive or bias attribute); several columns (or
            a dict of them by name, as fairlearn's ``sensitive_features``) form
            intersectional groups. ``None`` means one group.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative per-sample loss weights (used by fairlearn's reductions). A
            sample of weight 0 trains as if removed: never drawn, never held out by
            ``validation_fraction``, in no group's size for ``upweight``. Held-out samples
            keep their weights in the validation scores that choose the epoch kept
            (``validation_data`` is unweighted, but for the groups an ``upweight`` dict
            weighs 0, whose samples weigh 0 there).
        validation_data : tuple, default=None
            ``(X_val, y_val)`` or ``(X_val, y_val, groups_val)`` for model selection instead
            of holding out ``validation_fraction``; used as given (inside a ``Pipeline`` the
            earlier steps do not transform it).
        resume_from : str, bytes or path-like, default=None
            Directory of a :class:`~rest_fair.callbacks.Checkpoint`: continue the run from
            its latest checkpoint (same data and parameters required). A directory without
            a checkpoint starts a new run, so a preemptible job can always pass it. A
            leading ``~`` is the home folder; an empty name is refused (``ValueError``).

        Returns
        -------
        self : RESTClassifier

        Raises
        ------
        ValueError
            For an invalid parameter (named), invalid inputs, a module whose output is not
            one logit per class (or, in a data-parallel fit, with a trainable parameter that
            gets no gradient), or a warm start whose network or data no longer match.
        TypeError
            For ``callbacks`` that are not :class:`~rest_fair.callbacks.Callback` instances.
        CheckpointError
            When ``resume_from`` holds a damaged checkpoint or one of another run, or a
            :class:`~rest_fair.callbacks.Checkpoint` directory holds another run's.
        TrainingDivergedError
            When the training loss or the network's output becomes NaN or infinite.
        DistributedError
            In a data-parallel fit, when another rank died or hung for longer than
            ``distributed_timeout``, or the ranks' masks or weights diverged
            (:class:`~rest_fair.exceptions.MaskDivergenceError`).

        Notes
        -----
        A fit that raises (invalid input, divergence, ``KeyboardInterrupt``) leaves the
        estimator as it was (the previous fit's model and attributes, a warm start's weights
        included, or not fitted); to keep an interrupted run's progress, train with a
        :class:`~rest_fair.callbacks.Checkpoint` and resume from it. ``fit`` seeds and draws
        from the process's global torch random state (initialisation, dropout), so fits in
        threads of one process (a threaded joblib backend, a multi-threaded Dask worker)
        take turns, each giving the numbers it gives alone; separate processes run side by
        side.
        """
        self._validate_params()
        with translate_failures(self.distributed_timeout):
            return fit_estimator(self, X, y, groups=groups, sample_weight=sample_weight,
                                 validation_data=validation_data, resume_from=resume_from)

    def _validate_params(self) -> None:
        """Check the hyper-parameters: scikit-learn's hook, by :func:`check_params` (its own
        version reads ``_parameter_constraints`` as its constraint objects and fails on ours)."""
        check_params(self)

    # ---------------------------------------------------------------- predicting
    def predict_logits(self, X: Any) -> np.ndarray:
        """Raw network outputs (logits), float32 of shape (n_samples, n_classes).

        Computed in float32 whatever the training ``precision`` (also inside the caller's
        ``torch.autocast``), in evaluation mode, without gradients, leaving the module's
        mode, torch's gradient mode and the global torch random state as they were (so it
        waits for fits in other threads of the process, which draw from that state).

        Parameters
        ----------
        X : array-like, scipy.sparse matrix, DataFrame or torch Dataset
            Samples of the shape ``fit`` was given (checked as in ``fit``).

        Returns
        -------
        ndarray of shape (n_samples, n_classes)

        Raises
        ------
        TrainingDivergedError
            If some outputs are not finite (no NaN is ever returned).
        """
        check_is_fitted(self, "module_")
        X = check_x(self, X, fitted=self.module_)
        device = next(self.module_.parameters()).device
        module = getattr(self, "inference_module_", None) or self.module_
        # a torch Dataset's loader seeds from torch's global generator: a forked copy, so
        # the caller's draws stay as they were (the source keeps numpy's and Python's), under
        # the lock, so that restoring it rewinds no fit running in another thread
        with GLOBAL_RANDOM_STATE, torch.random.fork_rng(devices=[]):
            source = make_source(X, device=device, num_workers=self.num_workers)
            source.set_input_dtypes(self.module_)
            try:
                logits = predict_logits(module, source, batch_size=max(self.batch_size, 512),
                                        device=device)
            finally:
                source.close()  # a failed prediction stops the loader's workers too
        out = logits.numpy()  # numpy's checks cost a few us, torch's several ops' dispatch
        if out.ndim == 2 and not np.isfinite(out).all():
            count = int(np.count_nonzero(~np.isfinite(out).all(axis=1)))
            raise TrainingDivergedError(_NON_FINITE_OUTPUT.format(count=count, n=len(out)))
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns as ``classes_``.

        float64: the softmax of :meth:`predict_logits`, computed in float64 (rows sum to 1
        within its rounding); raises :class:`~rest_fair.exceptions.TrainingDivergedError`
        rather than return a non-finite probability.

        Parameters
        ----------
        X : array-like, scipy.sparse matrix, DataFrame or torch Dataset
            Samples of the shape ``fit`` was given (checked as in ``fit``).

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        logits = torch.from_numpy(self.predict_logits(X)).double()
        return torch.softmax(logits, dim=1).numpy()

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithms of :meth:`predict_proba`, from the logits (finite where a probability
        rounds to 0), float64.

        Parameters
        ----------
        X : array-like, scipy.sparse matrix, DataFrame or torch Dataset
            Samples of the shape ``fit`` was given (checked as in ``fit``).

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        logits = torch.from_numpy(self.predict_logits(X)).double()
        return torch.log_softmax(logits, dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class labels: the class of the largest logit of each sample.

        Parameters
        ----------
        X : array-like, scipy.sparse matrix, DataFrame or torch Dataset
            Samples of the shape ``fit`` was given (checked as in ``fit``).

        Returns
        -------
        ndarray of shape (n_samples,)
            Labels from ``classes_``, of its dtype.
        """
        check_is_fitted(self, "module_")
        return self.classes_[np.argmax(self.predict_logits(X), axis=1)]

    # ------------------------------------------------------------------ reports
    def sparsity_report(self) -> Any:
        """Per-layer sparsity of the fitted network.

        Returns
        -------
        pandas.DataFrame
            One row per masked weight (those of ``masks_``): ``layer``, ``shape``,
            ``n_weights``, ``n_active``, ``density``, ``n_nonzero`` (active weights that are
            not exactly 0).
        """
        import pandas as pd

        check_is_fitted(self, "module_")
        weights = self.module_.state_dict()  # dense also for a fit's CSR layers
        return pd.DataFrame([
            {"layer": name, "shape": tuple(mask.shape), "n_weights": mask.numel(),
             "n_active": int(mask.sum()), "density": float(mask.float().mean()),
             "n_nonzero": int((weights[name].cpu() != 0).sum())}
            for name, mask in self.masks_.items()
        ], columns=["layer", "shape", "n_weights", "n_active", "density", "n_nonzero"])

    # ------------------------------------------------------------ scikit-learn glue
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.non_deterministic = False
        return tags

    def __getstate__(self) -> dict:
        """The pickled state: a copy of ``vars(self)`` less ``inference_module_`` and
        ``optimizer_``, a CUDA network copied to the CPU; the estimator is left as it was."""
        state = dict(super().__getstate__())
        state.pop("inference_module_", None)  # derived from module_; rebuilt on demand
        state.pop("optimizer_", None)  # bound to the parameters of the training process
        module = state.get("module_")
        if module is not None and any(p.device.type != "cpu" for p in module.parameters()):
            state["module_"] = copy.deepcopy(module).to("cpu")
        return state

    # --------------------------------------------------------------- efficiency
    def efficiency_report(self) -> Any:
        """Parameters and FLOPs of the fitted network vs. its dense version.

        Inference FLOPs per sample and training FLOPs counted the RigL way (sparse forward
        and backward, plus one dense gradient per topology update made); see
        :func:`rest_fair.efficiency.efficiency_report`. The whole-run columns count the
        samples trained: the sum of ``history_[i]["n_train_samples"]``, or where a record
        lacks it (older files and checkpoints) or ``history_`` is absent,
        ``n_train_steps_ * batch_size``, counting every batch as full. Called by a callback
        during ``fit``, it reports the run so far (the epochs finished).

        Returns
        -------
        pandas.DataFrame

        Raises
        ------
        ValueError
            For a network fitted on samples without a shape (text, one number per
            sample): there is no sample to count the FLOPs of.
        """
        check_is_fitted(self, "module_")
        if not self.input_shape_:
            raise ValueError(_NO_INPUT_SHAPE)
        history = getattr(self, "history_", None)
        counts = [None] if history is None else [r.get("n_train_samples") for r in history]
        return efficiency_report(
            dense_copy(self.module_),  # a fit's CSR layers (sparse_compute) as they train
            self.masks_,
            self.input_shape_,
            # no step yet (a callback's on_train_begin): no update rate
            n_topology_updates=self.n_topology_updates_ if self.n_train_steps_ else None,
            n_train_steps=self.n_train_steps_,
            batch_size=self.batch_size,
            n_train_samples=None if None in counts else sum(counts),
            regrow=self.regrow,
        )

    def export_sparse(
        self, *, density_threshold: float = 0.2, num_threads: int | None = None
    ) -> torch.nn.Module:
        """The fitted network with its sparse linear layers compressed for inference.

        See :func:`rest_fair.efficiency.export_sparse`. To predict through it, call
        :meth:`use_sparse_inference`, which keeps ``module_`` (so :meth:`save` and
        :meth:`efficiency_report` still work).
        """
        check_is_fitted(self, "module_")
        return export_sparse(
            dense_copy(self.module_), self.masks_, density_threshold=density_threshold,
            num_threads=num_threads,
        )

    def use_sparse_inference(
        self, *, density_threshold: float = 0.2, num_threads: int | None = None
    ) -> RESTClassifier:
        """Predict through a compressed copy of the network from now on.

        Stores :meth:`export_sparse`'s module as ``inference_module_``; ``predict``,
        ``predict_proba``, ``predict_log_proba``, ``predict_logits`` and ``score`` then use
        it. It is derived state: it is not pickled (call this again after loading) and a new
        ``fit`` removes it.

        Returns
        -------
        self : RESTClassifier
        """
        self.inference_module_ = self.export_sparse(
            density_threshold=density_threshold, num_threads=num_threads
        )
        return self

    def save(self, path: Any) -> int:
        """Write the fitted estimator to a compressed, pickle-free file; returns its size.

        The file holds the network and its masks (:mod:`rest_fair.persistence.model_file`),
        the parameters, those that defined the network when it was fitted (``module``,
        ``module_params``, ``sparsity``, ``layer_density``, ``dense_layers``: a warm start
        of the loaded estimator checks them) and the fitted attributes; ``module`` must be a
        built-in name. Pretrained ``module_params["weights"]`` given as a path or torchvision
        weights member are kept as their string (read only when refitted). ``path`` names
        the file (replaced only once the new content is complete; a leading ``~`` is the
        home folder) or is a binary file object (``io.BytesIO()``), written from its
        position. ``callbacks`` and a ``RandomState`` ``random_state`` are saved as
        ``None``, and entries of ``history_`` records that are not plain values (objects a
        callback added) left out, with a warning. ``groups_`` and ``group_weights_`` come
        back with labels of their types (strings, bytes, numbers, dates, times and
        durations of ``datetime``, numpy and pandas, tuples of them); other labels raise
        ``TypeError``. During the first ``fit`` (from a callback) it raises
        ``NotFittedError``: the attributes ``fit`` sets when it ends are not set yet.
        """
        check_is_fitted(self, "module_")
        check_is_fitted(self, (*_FILE_ATTRIBUTES, "best_epoch_"), msg=_SAVED_IN_FIRST_FIT)
        if isinstance(self.module_, SparseExport):
            raise ValueError(_EXPORTED)
        params = _weights_as_string(self.get_params(deep=False))
        # the parameters that defined the network when it was fitted (set_params may have
        # changed them since): load builds the network from them, a warm start checks them
        network = _weights_as_string(getattr(self, "_warm_fixed_params", None) or {})
        for value in (params["module"], network.get("module", params["module"])):
            if value not in MODULE_NAMES:
                raise ValueError(_CUSTOM_MODULE.format(value=value, names=MODULE_NAMES))
        attributes: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        skipped = []
        for name, value in vars(self).items():
            if not _is_file_attribute(name):
                continue
            if isinstance(value, np.ndarray) and value.dtype != object:
                attributes[name] = {"__array__": f"attr.{len(arrays)}"}
                arrays[f"attr.{len(arrays)}"] = value
                continue
            try:
                records = _plain_records(value)
                if records is None:
                    attributes[name] = model_file.to_json(value, f"fitted attribute {name!r}")
                    continue
            except TypeError as exc:
                if name in _FILE_ATTRIBUTES:
                    raise
                if name in _GROUP_ATTRIBUTES:
                    raise TypeError(f"{exc} {_GROUPS_NOT_SAVED}") from None
                skipped.append(name)
                continue
            attributes[name], left_out = records
            if left_out:
                warnings.warn(_ENTRIES_NOT_SAVED.format(keys=left_out, name=name), UserWarning,
                              stacklevel=2)
        if skipped:
            warnings.warn(_NOT_SAVED.format(names=sorted(skipped)), UserWarning, stacklevel=2)
        saved_params, dropped = {}, []
        for key, value in params.items():
            try:
                saved_params[key] = model_file.to_json(value, f"parameter {key!r}")
            except TypeError:
                if key not in _OBJECT_PARAMS:
                    raise
                saved_params[key] = None
                dropped.append(key)
        if dropped:
            warnings.warn(_PARAMS_NOT_SAVED.format(names=dropped), UserWarning, stacklevel=2)
        header = {
            "kind": "estimator",
            "class": type(self).__name__,
            "params": saved_params,
            "network_params": model_file.to_json(network, "the fitted network's parameters"),
            "attributes": attributes,
        }
        return model_file.write(path, self.module_, self.masks_, header, arrays)

    @classmethod
    def load(cls, path: Any, *, max_parameters: int | None = None) -> RESTClassifier:
        """Read an estimator written by :meth:`save` (running no code from the file).

        ``path`` names the file (a leading ``~`` is the home folder) or is a binary file
        object (``open(name, "rb")``, ``io.BytesIO(data)``) holding one model file from its
        position to its end. The estimator comes back fitted, on the CPU, its network in
        evaluation mode. Raises :class:`~rest_fair.exceptions.ModelFileError` for a damaged
        or inconsistent file, also one naming attributes that :meth:`save` never writes
        (they would shadow a method or a parameter, or replace private state), or, with
        ``max_parameters``, one whose network holds more values than that (refused before
        allocating, for untrusted files); ``TypeError`` for a file holding a module.
        """
        path, source = model_file.opened(path)
        model_file.check_max_parameters(max_parameters)
        header, arrays = model_file.read(source)
        if header.get("kind") != "estimator":
            raise TypeError(_NOT_AN_ESTIMATOR.format(path=path, kind=header.get("kind"),
                                                     cls=cls.__name__))
        with model_file.malformed(path):
            params = {k: model_file.from_json(v) for k, v in header["params"].items()}
            unknown = sorted(set(params) - set(cls._get_param_names()))
            if unknown:
                raise ModelFileError(_UNKNOWN_PARAMS.format(
                    path=path, names=unknown[:5], cls=cls.__name__, saved=header.get("class")))
            # files written before network_params: the network is that of the parameters
            network = model_file.from_json(header.get("network_params")) or {
                name: params.get(name) for name in ("module", "module_params")}
            for value in (params.get("module"), network["module"]):
                if value not in MODULE_NAMES:
                    raise ModelFileError(_UNKNOWN_MODULE.format(path=path, value=value,
                                                                names=MODULE_NAMES))
            attributes = {
                name: arrays[value["__array__"]]
                if isinstance(value, dict) and "__array__" in value else model_file.from_json(value)
                for name, value in header["attributes"].items()
            }
            forged = sorted(name for name in attributes if not _is_file_attribute(name))
            if forged:  # they would replace the network, a method or private state
                raise ModelFileError(_NOT_ATTRIBUTES.format(path=path, names=forged[:5]))
            missing = [name for name in _FILE_ATTRIBUTES if name not in attributes]
            if missing:
                raise ModelFileError(_NO_ATTRIBUTES.format(path=path, names=missing))
            architecture = (network["module"], attributes["input_shape_"],
                            len(attributes["classes_"]), network["module_params"])
            module, masks = model_file.read_module(path, header, arrays,
                                                   architecture=architecture,
                                                   max_parameters=max_parameters)
            est = cls(**params)
        vars(est).update(attributes, module_=module, masks_=masks)
        # a warm start from the file checks them too
        remember_network_params(est, {**est.get_params(deep=False), **network})
        return est
