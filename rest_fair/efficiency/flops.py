"""Parameter and FLOPs accounting for masked (sparse) networks.

Conventions
-----------
- One multiply-add counts as **2 FLOPs**. Only the weight products of linear,
  convolution, attention and recurrent layers are counted; bias additions,
  normalisation, activations, pooling and residual additions grow with the activations,
  not the weights, and are ignored (below 1 % for the models of :mod:`rest_fair.models`).
- A layer costs ``2 * active_weights`` per position at which it applies its weights: per
  output position for a linear layer (more than one when the input has extra leading
  dimensions) or a convolution (``H_out * W_out``, any dimensions and groups), per
  *input* position for a transposed convolution (``H_in * W_in``), per time step for a
  recurrent layer (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: every layer, direction and gate)
  and per input row of each call for a recurrent cell (``nn.LSTMCell``, ...). Positions
  come from one forward pass of a dummy sample of ``input_shape`` in evaluation mode.
- ``nn.MultiheadAttention`` applies its weights itself: its input projection costs
  ``2 * active weights`` of the query (key, value) projection per query (key, value)
  token of its calls, its ``out_proj`` ``2 * active weights`` per query token. The
  attention products multiply activations, not weights, and are not counted.
- Training follows RigL (Evci et al., 2020, appendix H): a sparse training step costs
  about 3x the sparse forward pass (forward, gradient of the activations, gradient of the
  weights). A topology update with gradient regrowth computes the weight gradient densely
  once: ``2 f_S + f_D`` instead of ``3 f_S``. Amortized, per sample:
  ``3 f_S + (f_D - f_S) * n_topology_updates / n_train_steps`` (or ``/ update_interval``).
  Random regrowth (SET) needs no dense gradient. The dense baseline costs ``3 f_D``.
  The 3x counts every layer's input gradient (the first layer's and a recurrent layer's
  zero initial state's included): ``torch.utils.flop_counter.FlopCounterMode`` counts 30 %
  less for a dense MLP on images, whose first layer holds most weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from .._data import reads_ids
from .._probe import evaluation, probe_pass
from .._validation import POSITIVE_INT
from ..sparse.checks import check_masks
from ..sparse.masks import layer_outputs, maskable_parameters

__all__ = ["efficiency_report", "layer_shapes"]

_NOT_CALLED = (
    "layers {names} were not called as modules in the probe pass (e.g. a layer whose weight "
    "its parent module reads directly): their FLOPs are not counted (0 in the report)."
)
_BAD_INT = "{name} must be a {kind} int or None; got {value!r}."
_BAD_REGROW = "regrow must be 'gradient' or 'random'; got {value!r}."
_NEED_STEPS = "n_topology_updates needs n_train_steps (the number of optimizer steps)."
_BAD_SHAPE = "input_shape must be a non-empty tuple of positive ints (one sample); got {value!r}."
_PROBE_FAILED = (
    "A zero sample of input_shape {shape} does not go through the network; is it the shape "
    "of one sample, without the batch dimension? ({error})"
)

_COLUMNS = ["layer", "kind", "shape", "params_dense", "params_active", "density",
            "inference_flops_dense", "inference_flops", "inference_flops_fraction",
            "training_flops_dense", "training_flops", "training_flops_fraction"]
# the columns summed into the "total" row
_SUMMED = ("params_dense", "params_active", "inference_flops_dense", "inference_flops",
           "training_flops_dense", "training_flops")
_RECURRENT = (nn.RNNBase, nn.RNNCellBase)


def layer_shapes(module: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Number of output positions of every linear and convolution layer for one sample.

    Parameters
    ----------
    module : nn.Module
        The network; it is run once in evaluation mode on a zero sample (of token id 0
        where its first layer is an embedding) and its training mode is restored
        afterwards.
    input_shape : tuple of int
        Shape of one sample (without the batch dimension).

    Returns
    -------
    dict
        Module name -> number of positions per sample at which the layer applies its
        weights, as the Conventions of :mod:`rest_fair.efficiency.flops` count them (also
        for the ``out_proj`` of an ``nn.MultiheadAttention`` and for recurrent layers and
        cells).

    Raises
    ------
    ValueError
        If ``input_shape`` is not a tuple of positive ints, or a zero sample of that shape
        does not go through the network (the message gives torch's error).
    """
    return _probe(module, input_shape)[0]


def _child(name: str, attribute: str) -> str:
    return f"{name}.{attribute}" if name else attribute


def _probe(module: nn.Module, input_shape: Sequence[int]
           ) -> tuple[dict[str, int], dict[str, tuple[int, int, int]]]:
    """:func:`layer_shapes`, and the query, key and value tokens of every
    ``nn.MultiheadAttention`` (by module name) in one pass of a zero sample."""
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else None
    if not shape or not all(POSITIVE_INT.accepts(s) for s in shape):
        raise ValueError(_BAD_SHAPE.format(value=input_shape))
    positions: dict[str, int] = {}
    tokens: dict[str, tuple[int, int, int]] = {}
    handles = []

    def hook(name: str, n: int, of_input: bool, _mod: nn.Module, inp: tuple,
             out: torch.Tensor) -> None:
        # a recurrent layer's input may be packed: its data holds every time step once
        data = inp[0] if of_input else out
        data = data.data if isinstance(data, PackedSequence) else data
        positions[name] = positions.get(name, 0) + data.numel() // n

    def attention_hook(name: str, _mod: nn.Module, args: tuple, kwargs: dict,
                       _out: object) -> None:
        inputs = [args[i] if len(args) > i else kwargs[key]
                  for i, key in enumerate(("query", "key", "value"))]
        # one token per vector of the last dimension, whatever the layout
        counts = [t.numel() // t.shape[-1] for t in inputs]
        tokens[name] = tuple(a + b for a, b in zip(tokens.get(name, (0, 0, 0)), counts,
                                                   strict=True))
        out_proj = _child(name, "out_proj")
        positions[out_proj] = positions.get(out_proj, 0) + counts[0]

    for name, sub in module.named_modules():
        n_out = layer_outputs(sub)
        if isinstance(sub, nn.modules.conv._ConvTransposeNd):
            # every weight is applied once per input position (its outputs overlap)
            handles.append(sub.register_forward_hook(partial(hook, name, sub.in_channels,
                                                             True)))
        elif n_out is not None:
            handles.append(sub.register_forward_hook(partial(hook, name, n_out, False)))
        elif isinstance(sub, _RECURRENT):
            handles.append(sub.register_forward_hook(partial(hook, name, sub.input_size,
                                                             True)))
        elif isinstance(sub, nn.MultiheadAttention):
            handles.append(sub.register_forward_hook(partial(attention_hook, name),
                                                     with_kwargs=True))
    first = next(iter(module.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    dtype = torch.int64 if reads_ids(module) else dtype
    try:
        probe_pass(module, torch.zeros((1, *(int(s) for s in shape)), device=device,
                                       dtype=dtype), handles)
    except (RuntimeError, ValueError) as exc:  # torch's shape errors are of either kind
        raise ValueError(_PROBE_FAILED.format(shape=shape, error=exc)) from exc
    return positions, tokens


def _in_projections(name: str, attention: nn.MultiheadAttention
                    ) -> list[tuple[str, nn.Parameter, slice]]:
    """``(parameter name, weight, rows)`` of the query, key and value projections."""
    if attention._qkv_same_embed_dim:
        weight, e = attention.in_proj_weight, attention.embed_dim
        return [(_child(name, "in_proj_weight"), weight, slice(i * e, (i + 1) * e))
                for i in range(3)]
    return [(_child(name, f"{part}_proj_weight"), getattr(attention, f"{part}_proj_weight"),
             slice(None)) for part in ("q", "k", "v")]


def _n_active(weight: torch.Tensor, mask: torch.Tensor | None,
              rows: slice = slice(None)) -> int:
    """Active entries of ``weight[rows]``: those of its ``mask``, all without one."""
    return int(mask[rows].sum()) if mask is not None else weight[rows].numel()


def _attention_row(name: str, attention: nn.MultiheadAttention, masks: Mapping,
                   tokens: tuple[int, int, int], counted: set[str]) -> dict:
    """The row of an attention's input projection: its weights, biases and products."""
    projections = _in_projections(name, attention)
    weights = {weight_name: weight for weight_name, weight, _ in projections}
    biases = {_child(name, b): getattr(attention, b)
              for b in ("in_proj_bias", "bias_k", "bias_v") if getattr(attention, b) is not None}
    counted.update(weights, biases)
    uses = list(zip(projections, tokens, strict=True))
    n_bias = sum(b.numel() for b in biases.values())
    shapes = [tuple(w.shape) for w in weights.values()]
    return {"layer": name, "kind": type(attention).__name__,
            "shape": shapes[0] if len(shapes) == 1 else tuple(shapes),
            "params_dense": sum(w.numel() for w in weights.values()) + n_bias,
            "params_active": sum(_n_active(w, masks.get(n)) for n, w in weights.items())
            + n_bias,
            "inference_flops_dense": sum(2 * w[rows].numel() * n_tokens
                                         for (_, w, rows), n_tokens in uses),
            "inference_flops": sum(2 * _n_active(w, masks.get(n), rows) * n_tokens
                                   for (n, w, rows), n_tokens in uses)}


def _layer_parameters(layer: nn.Module) -> list[nn.Parameter]:
    """The parameters of a linear or convolution layer: its own and, where its weight is
    computed by a parametrization (``torch.nn.utils.parametrize``), those it is computed
    from."""
    params = list(layer.parameters(recurse=False))
    if parametrize.is_parametrized(layer):
        params += list(layer.parametrizations.parameters())
    return params


def _layer_rows(module: nn.Module, masks: Mapping[str, torch.Tensor],
                positions: Mapping[str, int], tokens: Mapping[str, tuple[int, int, int]],
                update_rate_dense: float) -> tuple[list[dict], set[str], list[str]]:
    """The rows of :func:`efficiency_report` for the layers (the totals and ``"(other)"``
    aside), the names of the parameters they hold and the layers not called."""
    # a weight shared by several layers has its mask under its first name, and its
    # parameters are counted once (its products at every use)
    first_name = {id(p): n for n, p in module.named_parameters()}
    mask_of = {id(p): masks[n] for n, p in (*module.named_parameters(),
                                            *maskable_parameters(module)) if n in masks}

    def n_active(params: list[torch.Tensor]) -> int:
        return sum(_n_active(p, mask_of.get(id(p))) for p in params)

    rows = []
    counted: set[str] = set()
    seen: set[int] = set()
    not_called = []
    for name, sub in module.named_modules():
        recurrent = isinstance(sub, _RECURRENT)
        if isinstance(sub, nn.MultiheadAttention):
            if name not in tokens:
                not_called.append(name)
            row = _attention_row(name, sub, masks, tokens.get(name, (0, 0, 0)), counted)
        elif layer_outputs(sub) is None and not recurrent:
            continue
        else:
            if recurrent:  # every weight of every layer and direction, once per time step
                weights = [p for attr, p in sub.named_parameters(recurse=False)
                           if attr.startswith("weight_")]
                shape = tuple(tuple(w.shape) for w in weights)
            else:
                weights = [sub.weight]  # computed anew on each access when parametrized
                shape = tuple(weights[0].shape)
            # the layer's own parameters (those behind a parametrized weight included),
            # each counted in the first row that holds it
            own = [p for p in _layer_parameters(sub) if id(p) not in seen]
            seen.update(id(p) for p in own)
            counted.update(first_name[id(p)] for p in own)
            if name not in positions:
                not_called.append(name)
            pos = positions.get(name, 0)
            row = {"layer": name, "kind": type(sub).__name__, "shape": shape,
                   "params_dense": sum(p.numel() for p in own), "params_active": n_active(own),
                   "inference_flops_dense": 2 * sum(w.numel() for w in weights) * pos,
                   "inference_flops": 2 * n_active(weights) * pos}
        f_dense, f_sparse = row["inference_flops_dense"], row["inference_flops"]
        rows.append({**row, "training_flops_dense": 3 * f_dense,
                     "training_flops": 3 * f_sparse + (f_dense - f_sparse) * update_rate_dense})
    return rows, counted, not_called


def efficiency_report(
    module: nn.Module,
    masks: Mapping[str, torch.Tensor] | None,
    input_shape: Sequence[int],
    *,
    update_interval: int | None = None,
    n_topology_updates: int | None = None,
    n_train_steps: int | None = None,
    batch_size: int | None = None,
    n_train_samples: int | None = None,
    regrow: str = "gradient",
):
    """Parameters and FLOPs of a masked network, per layer and in total.

    Parameters
    ----------
    module : nn.Module
        The network (inactive weights need not be zero: only the masks are read).
    masks : dict of str to bool tensor, or None
        Parameter name (as in ``module.named_parameters()``) -> mask. Weights without a
        mask are dense. ``None`` or ``{}`` describes the dense network.
    input_shape : tuple of int
        Shape of one sample.
    update_interval : int or None, default=None
        Steps between topology updates, to amortize their dense gradient when
        ``n_topology_updates`` is not given (neither: no update is counted).
    n_topology_updates : int or None, default=None
        Number of topology updates actually made (e.g. the sum of
        ``history_[i]["n_topology_updates"]``); needs ``n_train_steps``.
    n_train_steps : int or None, default=None
        Number of optimizer steps of the run.
    batch_size : int or None, default=None
        Samples per step. With ``n_train_steps`` and no ``n_train_samples`` it adds the
        columns ``training_flops_run`` and ``training_flops_run_dense`` (whole run) for
        ``n_train_steps * batch_size`` samples, which counts every step's batch as full.
    n_train_samples : int or None, default=None
        Samples trained in the whole run, every step's batch as it was (a data-parallel
        fit's summed over the ranks; e.g. the sum of ``history_[i]["n_train_samples"]``).
        Adds ``training_flops_run`` and ``training_flops_run_dense`` for that many samples.
    regrow : {"gradient", "random"}, default="gradient"
        ``"gradient"`` (RigL) pays one dense weight gradient per update, ``"random"``
        (SET) does not.

    Returns
    -------
    pandas.DataFrame
        One row per linear/convolution layer (transformers' ``Conv1D`` included), per
        ``nn.MultiheadAttention`` for its input projection (weights and biases; its
        ``out_proj`` has its own row) and per recurrent layer or cell (all its weights and
        biases; ``shape`` the tuple of their shapes); a row ``"(other)"`` for any remaining
        parameters (dense, no FLOPs), and a final row ``"total"``. A weight shared by
        several layers is read with the mask of its first name and counted in its first
        row only; its products at every use. A parametrized weight
        (``torch.nn.utils.parametrize``) counts the parameters it is computed from, dense.
        A layer the forward pass does not call as a module counts 0 FLOPs, with a warning
        (``df.attrs["layers_not_called"]``). FLOPs are per sample; ``*_fraction`` columns
        are sparse / dense. ``df.attrs`` holds the conventions and the update rate.

    Examples
    --------
    >>> from rest_fair.models import build_module
    >>> net = build_module("mlp", input_shape=(4,), n_classes=2,
    ...                    module_params={"hidden_layer_sizes": (3,)})
    >>> int(efficiency_report(net, {}, (4,)).loc["total", "inference_flops"])
    36
    """
    import pandas as pd

    masks = dict(masks or {})
    check_masks(module, masks)
    if regrow not in ("gradient", "random"):
        raise ValueError(_BAD_REGROW.format(value=regrow))
    for name, value, least in (
        ("update_interval", update_interval, 1),
        ("n_topology_updates", n_topology_updates, 0),
        ("n_train_steps", n_train_steps, 0),
        ("batch_size", batch_size, 0),
        ("n_train_samples", n_train_samples, 0),
    ):
        bad = isinstance(value, bool) or not isinstance(value, int) or value < least
        if value is not None and bad:
            kind = "positive" if least else "non-negative"
            raise ValueError(_BAD_INT.format(name=name, kind=kind, value=value))
    if n_topology_updates is not None:
        if not n_train_steps:
            raise ValueError(_NEED_STEPS)
        update_rate = n_topology_updates / n_train_steps
    elif update_interval is not None:
        update_rate = 1.0 / update_interval
    else:
        update_rate = 0.0
    update_rate_dense = 0.0 if regrow == "random" else update_rate

    positions, tokens = _probe(module, input_shape)
    with evaluation(module):  # a parametrized weight is computed, not trained
        rows, counted, not_called = _layer_rows(module, masks, positions, tokens,
                                                update_rate_dense)
    other = {n: p for n, p in module.named_parameters() if n not in counted}
    if other:  # dense remaining parameters (normalisation etc.), no FLOPs counted
        rows.append({"layer": "(other)", "kind": "other", "shape": (),
                     **dict.fromkeys(_SUMMED, 0),
                     "params_dense": sum(p.numel() for p in other.values()),
                     "params_active": sum(int(masks[n].sum()) if n in masks else p.numel()
                                          for n, p in other.items())})
    rows.append({"layer": "total", "kind": "total", "shape": (),
                 **{key: sum(r[key] for r in rows) for key in _SUMMED}})
    for r in rows:
        r["density"] = r["params_active"] / r["params_dense"] if r["params_dense"] else math.nan
        for what in ("inference_flops", "training_flops"):
            dense = r[f"{what}_dense"]
            r[f"{what}_fraction"] = r[what] / dense if dense else math.nan
    frame = pd.DataFrame(rows, columns=_COLUMNS).set_index("layer", drop=False)
    frame.index.name = None
    if n_train_samples is None and n_train_steps is not None and batch_size is not None:
        n_train_samples = n_train_steps * batch_size
    if n_train_samples is not None:
        frame["training_flops_run"] = frame["training_flops"] * n_train_samples
        frame["training_flops_run_dense"] = frame["training_flops_dense"] * n_train_samples
    if not_called:
        warnings.warn(_NOT_CALLED.format(names=not_called), UserWarning, stacklevel=2)
    frame.attrs.update(
        layers_not_called=not_called,
        flops_convention=("multiply-add = 2 FLOPs; weight products of Linear/Conv, "
                          "attention projections and recurrent layers only"),
        training_convention="RigL: 3 f_S per sample + (f_D - f_S) per dense-gradient update",
        topology_update_rate=update_rate,
        regrow=regrow,
        input_shape=tuple(int(s) for s in input_shape),
    )
    return frame
