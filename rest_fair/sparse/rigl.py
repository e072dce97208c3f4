"""The RigL / SET topology update: prune the smallest weights, regrow as many elsewhere.

At each update every masked layer

1. *prunes* ``k = ceil(f_t * n_active)`` of its active weights, those with the smallest
   ``|w|``;
2. *regrows* ``k`` positions that are inactive after pruning: those with the largest
   ``|gradient|`` of the dense gradient of the current batch (RigL, Evci et al. 2020) or
   uniformly random ones (SET, Mocanu et al. 2018).

A regrown weight that was inactive before the update starts at exactly zero, with its
optimizer state (momentum, Adam moments) reset. A weight pruned and regrown in the same update
was never switched off: it keeps its value and optimizer state, as in the REST authors' code
and RigL's own (``reinit_when_same=False``). The active count of every layer is unchanged, so
density stays at target.

Ties (weights of equal magnitude, e.g. regrown zeros that never received a gradient, or
equal gradients) go to the lowest flat index, on every device and for every way of
computing the update (:mod:`rest_fair.sparse.csr_linear` scans the same choice block by
block).

An update decides every layer's change first and applies the decisions afterwards, so that
data-parallel training can apply rank 0's decision on every rank: :func:`decide_layer` and
:func:`apply_decision` for a dense weight and its mask in a :class:`MaskSet`, a
:class:`LayerStorage` (a :class:`~rest_fair.sparse.csr_linear.CSRLinear`) for a layer
stored otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import torch

from .kernels import flat_nonzero
from .masks import MaskSet

__all__ = [
    "REGROW_MODES",
    "LayerStorage",
    "apply_decision",
    "decide_layer",
    "prune_and_regrow",
    "top_k_first",
    "update_topology",
]

#: Regrowth criteria: ``"gradient"`` (RigL) or ``"random"`` (SET).
REGROW_MODES = ("gradient", "random")
_NO_GRADIENT = (
    "regrow='gradient' needs the dense gradient of weight {!r}; call the update after "
    "backward() and before the gradients are cleared."
)
_NO_LAYER_GRADIENT = (
    "regrow='gradient' (RigL) ranks the inactive weights of {name!r} by their gradient, but "
    "{name!r} has none: the module's forward does not use it, or nothing it computes "
    "reaches the loss (or the update ran before backward() or after the gradients were "
    "cleared). Use it in forward, keep it dense (dense_layers=[{name!r}]), or regrow at "
    "random (regrow='random', SET)."
)


class LayerStorage(Protocol):
    """A masked layer whose weights are not stored as a dense tensor and its mask.

    :func:`update_topology` asks it for its decision and has it apply the decision (maybe
    another process's); :class:`~rest_fair.sparse.DynamicSparsity` has it plan before the
    forward pass of every training step.
    """

    def plan(self, step: int, fraction: float, *, regrow: str, after_step: bool = False,
             ) -> None:
        """Prepare the update of ``step`` (drop fraction ``fraction``, 0 when none is due);
        ``after_step``: the update comes after the step's optimizer step, and prunes the
        weights that step left."""

    def decide(
        self, fraction: float, *, regrow: str, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The layer's decision, as :func:`decide_layer`'s; changes nothing."""

    def apply(self, new_mask: torch.Tensor, grown: torch.Tensor, *,
              optimizer: torch.optim.Optimizer | None = None) -> int:
        """Apply a decision, as :func:`apply_decision` does (the masks are not re-applied)."""


def top_k_first(
    score: torch.Tensor, k: int, *, largest: bool = True, order: torch.Tensor | None = None
) -> torch.Tensor:
    """Positions of the ``k`` largest (or smallest) entries of a 1-D ``score``.

    Unlike :func:`torch.topk`, ties at the boundary are broken deterministically: the
    positions with the lowest ``order`` (default: the position itself) win.

    Parameters
    ----------
    score : 1-D Tensor
    k : int
    largest : bool, default=True
    order : 1-D LongTensor, optional
        Tie-break key of each entry (distinct values).

    Returns
    -------
    LongTensor
        ``min(k, score.numel())`` positions, in no particular order.
    """
    n = score.numel()
    k = max(0, min(int(k), n))
    if k == n:
        return torch.arange(n, device=score.device)
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=score.device)
    top = torch.topk(score, k, largest=largest, sorted=False)
    bound = top.values.min() if largest else top.values.max()
    beyond = score > bound if largest else score < bound
    chosen = flat_nonzero(beyond)
    ties = flat_nonzero(score == bound)
    if chosen.numel() + ties.numel() < k:  # NaN scores compare unequal: keep topk's choice
        return top.indices
    if order is not None:
        ties = ties[torch.argsort(order[ties])]
    return torch.cat([chosen, ties[: k - chosen.numel()]])


@torch.no_grad()
def prune_and_regrow(
    weight: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    *,
    regrow: str = "gradient",
    grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """New mask of one layer after dropping and regrowing ``k`` weights.

    Parameters
    ----------
    weight : Tensor
        The layer's weights.
    mask : bool Tensor
        Its current mask, same shape.
    k : int
        How many active weights to replace (clipped to the number of active weights).
    regrow : {"gradient", "random"}
        RigL (largest ``|grad|``) or SET (uniformly random) regrowth.
    grad : Tensor, optional
        Dense gradient of the weights (of any layout: a sparse one, as ``nn.Embedding(
        sparse=True)`` gives, is read as the dense tensor it stands for); required for
        ``regrow="gradient"``.
    generator : torch.Generator, optional
        CPU generator for ``regrow="random"``.

    Returns
    -------
    new_mask : bool Tensor
        Same shape as ``mask`` with the same number of active positions.
    dropped, grown : LongTensor
        Flat indices of the pruned and of the regrown positions (a position may be in both:
        a just-pruned weight can be regrown, and then keeps its value).
    """
    if regrow not in REGROW_MODES:
        raise ValueError(f"regrow must be one of {REGROW_MODES}; got {regrow!r}.")
    flat_mask = mask.reshape(-1)
    n_active = int(torch.count_nonzero(flat_mask))
    k = min(int(k), n_active)
    empty = torch.empty(0, dtype=torch.long, device=mask.device)
    if k <= 0:
        return mask.clone(), empty, empty

    magnitude = weight.detach().reshape(-1).abs().float()
    magnitude = magnitude.masked_fill(~flat_mask, math.inf)
    dropped = top_k_first(magnitude, k, largest=False)
    new_mask = flat_mask.clone()
    new_mask[dropped] = False

    if regrow == "gradient":
        if grad is None:
            raise ValueError(_NO_GRADIENT.format(tuple(weight.shape)))
        grad = grad.detach()
        if grad.layout != torch.strided:  # e.g. the gradient of nn.Embedding(sparse=True)
            grad = grad.to_dense()
        score = grad.reshape(-1).abs().float()
    else:
        score = torch.rand(flat_mask.numel(), generator=generator).to(mask.device)
    score = score.masked_fill(new_mask, -math.inf)
    grown = top_k_first(score, k, largest=True)
    new_mask[grown] = True
    return new_mask.view_as(mask), dropped, grown


@torch.no_grad()
def decide_layer(
    masks: MaskSet,
    name: str,
    fraction: float,
    *,
    regrow: str = "gradient",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The prune-and-regrow decision for the masked weight ``name``; changes nothing.

    Returns
    -------
    (new_mask, grown) or None
        The layer's new mask and the flat indices of its regrown positions, or ``None``
        when the layer has nothing to exchange (``k = 0`` or a dense layer).
    """
    param = masks.params[name]
    mask = masks.mask(name)
    n_active = int(torch.count_nonzero(mask))
    k = math.ceil(fraction * n_active)
    if k == 0 or n_active == mask.numel():
        return None
    if regrow == "gradient" and param.grad is None:
        raise ValueError(_NO_LAYER_GRADIENT.format(name=name))
    new_mask, _, grown = prune_and_regrow(
        param, mask, k, regrow=regrow, grad=param.grad, generator=generator
    )
    return new_mask, grown


@torch.no_grad()
def apply_decision(
    masks: MaskSet,
    name: str,
    new_mask: torch.Tensor,
    grown: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    """Set ``new_mask`` for ``name``; weights new to it start at zero, with zero optimizer state.

    Of the regrown positions ``grown``, those inactive before the update are zeroed together
    with their optimizer state; a weight that was pruned and regrown keeps both. The masks
    are not re-applied. Returns the number of weights of this layer that changed from
    inactive to active.
    """
    param = masks.params[name]
    old_mask = masks.mask(name)
    new = grown[~old_mask.reshape(-1)[grown]]
    masks.set_mask(name, new_mask)
    param[torch.unravel_index(new, param.shape)] = 0.0
    if optimizer is not None:
        _reset_state(optimizer, param, new)
    return int(new.numel())


@torch.no_grad()
def update_topology(
    masks: MaskSet,
    fraction: float,
    *,
    regrow: str = "gradient",
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    synchronise: Callable[[dict], dict] | None = None,
    layers: Mapping[str, LayerStorage] | None = None,
) -> int:
    """Prune-and-regrow every masked layer with drop fraction ``fraction``.

    A frozen weight (``requires_grad=False``, e.g. a pretrained backbone's layer that is
    not fine-tuned) keeps its mask and its values: the optimizer never updates it, so a
    weight regrown there would stay zero and the layer would only lose weights.

    Parameters
    ----------
    masks : MaskSet
        Masks and weights; updated in place.
    fraction : float
        ``f_t``; each layer replaces ``ceil(f_t * n_active)`` weights.
    regrow : {"gradient", "random"}
        RigL or SET regrowth.
    optimizer : torch.optim.Optimizer, optional
        Its per-weight state of weights new to a mask is reset to zero.
    generator : torch.Generator, optional
        CPU generator for random regrowth.
    synchronise : callable, optional
        Receives the decision ``{name: (new_mask, regrown flat indices)}`` of every
        changed layer and returns the decision to apply (data-parallel training applies
        rank 0's on every rank).
    layers : mapping of str to LayerStorage, optional
        The layers of ``masks`` stored otherwise than as a dense weight and its mask (the
        CSR layers of sparse compute), by weight name.

    Returns
    -------
    int
        Number of weights that changed from inactive to active over all layers.
    """
    layers = layers or {}
    decisions = {}
    for name in masks.names:
        if not masks.params[name].requires_grad:
            continue
        layer = layers.get(name)
        decision = (decide_layer(masks, name, fraction, regrow=regrow, generator=generator)
                    if layer is None else layer.decide(fraction, regrow=regrow,
                                                       generator=generator))
        if decision is not None:
            decisions[name] = decision
    if synchronise is not None:
        decisions = synchronise(decisions)
    changed = 0
    for name, (new_mask, grown) in decisions.items():
        layer = layers.get(name)
        changed += (apply_decision(masks, name, new_mask, grown, optimizer=optimizer)
                    if layer is None else layer.apply(new_mask, grown, optimizer=optimizer))
    masks.apply_()
    return changed


def _reset_state(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, index: torch.Tensor
) -> None:
    state = optimizer.state.get(param, {})
    # flat indices in row-major order, applied through the shape: the weight and its state
    # may have other strides (a channels-last convolution)
    where = torch.unravel_index(index, param.shape)
    for key, value in state.items():
        if not torch.is_tensor(value) or value.shape != param.shape:
            continue
        if value.layout == torch.strided:
            value[where] = 0
        else:  # the momentum of a sparse gradient is sparse too
            keep = torch.ones(param.shape, dtype=value.dtype, device=value.device)
            keep[where] = 0
            state[key] = value.mul(keep)
