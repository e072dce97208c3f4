"""Binary masks on the weights of every convolution, linear, embedding, attention input
projection and recurrent layer."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import kernels
from .checks import check_mask
from .densities import active_counts, erk_densities, uniform_densities
from .kernels import randperm_prefix
from .modules import mask_density, snapshot

__all__ = [
    "DENSE_LAYER_ALIASES",
    "LAYER_DENSITIES",
    "SPARSE_INITS",
    "MaskSet",
    "layer_outputs",
    "maskable_parameters",
    "resolve_dense_layers",
    "unmasked_weights",
]

#: How the initial mask of each layer is chosen: uniformly at random (training from
#: scratch) or keeping the largest-magnitude weights (sparse fine-tuning of pretrained
#: weights).
SPARSE_INITS = ("random", "magnitude")
#: How the global density is split over layers.
LAYER_DENSITIES = ("erk", "uniform")
#: Names accepted in ``dense_layers`` besides exact parameter names.
DENSE_LAYER_ALIASES = ("first", "head", "embeddings")

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
_BAD_INIT = "sparse_init must be one of {options}; got {value!r}."
_BAD_DISTRIBUTION = "layer_density must be one of {options}; got {value!r}."
_RENAMED = "MaskSet.from_module({old}=...) is deprecated; use {new}=... (the same values)."
_BAD_DENSE_LAYERS = (
    "dense_layers must be a sequence of {aliases} or weight names; got {value!r}."
)
_UNKNOWN_DENSE_LAYER = (
    "dense_layers names {unknown}, which {verb} not maskable weights of the module. "
    "Use {aliases} or one of the maskable weights: {names}."
)
_NO_LAYER_FOR_ALIAS = "dense_layers={alias!r}: the module has no {what}."
_NOT_MASKED = (
    "sparsity masks the weights of linear, convolution, embedding and recurrent layers and "
    "the input projections of nn.MultiheadAttention; {names} ({n_weights} weights, "
    "{share:.1%} of the weights with two or more dimensions) are not such a layer's own "
    "weight parameter and stay dense, outside the density budget. nn.Bilinear and weights "
    "computed by a parametrization (weight_norm, spectral_norm, torch.nn.utils.parametrize) "
    "are not masked."
)
_AT_LEAST_ONE = (
    "density {density:g} asks for {asked:.3g} of the {total} masked weights, but every masked "
    "layer keeps at least one active weight and {names} would have none: {active} weights "
    "are active, density {achieved:.3g}. Ask for a lower sparsity, use a larger network, or "
    "keep those layers dense (dense_layers)."
)
# at most this many names in the _NOT_MASKED and _AT_LEAST_ONE warnings
_NAMES_SHOWN = 6
#: relative excess of active weights over the density asked for that _AT_LEAST_ONE reports
_EXCESS_SHOWN = 0.1


def _is_transformers_conv1d(module: nn.Module) -> bool:
    # GPT-2 style models implement their linear layers as transformers' Conv1D
    # (weight of shape (n_in, n_out)); they are linear layers all the same.
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def layer_outputs(module: nn.Module) -> int | None:
    """Outputs (features or channels) of a linear or convolution layer, transformers'
    ``Conv1D`` included; ``None`` for any other module."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if _is_transformers_conv1d(module):
        return int(module.weight.shape[1])  # weight (n_in, n_out)
    return None


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, _LAYERS) or _is_transformers_conv1d(module):
        return "layer"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, nn.MultiheadAttention):
        return "attention"
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return "recurrent"
    return None


def _own_weights(module: nn.Module, kind: str) -> Iterator[tuple[str, object]]:
    """``(attribute, value)`` of the weights a module of ``kind`` holds itself.

    A weight computed by a parametrization is left out without being computed: reading it
    would run the parametrization (a training-mode spectral norm then takes a step of its
    power iteration), and it is no parameter to mask.
    """
    if kind == "recurrent":  # weight_ih_l{k}, weight_hh_l{k}, weight_hr_l{k} [_reverse]
        for attr, param in module.named_parameters(recurse=False):
            if attr.startswith("weight_"):
                yield attr, param
        return
    # an attention's in_proj_weight (3E, E), or q/k/v_proj_weight when kdim or vdim
    # differ from E
    attrs = (("weight",) if kind in ("layer", "embedding") else
             ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"))
    for attr in attrs:
        if not parametrize.is_parametrized(module, attr):
            yield attr, getattr(module, attr, None)


def _maskable(module: nn.Module) -> Iterator[tuple[str, nn.Parameter, str]]:
    seen: set[int] = set()
    for prefix, sub in module.named_modules():
        kind = _kind(sub)
        if kind is None:
            continue
        for attr, weight in _own_weights(sub, kind):
            if not isinstance(weight, nn.Parameter) or id(weight) in seen:
                continue
            seen.add(id(weight))  # a tied weight gets one mask, under its first name
            yield (f"{prefix}.{attr}" if prefix else attr), weight, kind


def maskable_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Weights that get a mask: those of every conv, linear, embedding, attention and
    recurrent layer.

    The weight parameter of every ``nn.Linear`` (subclasses included), convolution
    (``nn.Conv1d/2d/3d``, transposed, grouped and depthwise ones included: the mask covers
    the weight tensor in its own layout), transformers' ``Conv1D``, ``nn.Embedding`` and
    ``nn.EmbeddingBag``; the input projection of every ``nn.MultiheadAttention``
    (``in_proj_weight`` of shape ``(3E, E)``, one mask for the query, key and value rows
    together, or ``q_proj_weight``, ``k_proj_weight`` and ``v_proj_weight`` when ``kdim``
    or ``vdim`` differ from ``embed_dim``; its ``out_proj`` is an ``nn.Linear``); the
    weights of recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: ``weight_ih_l{k}``,
    ``weight_hh_l{k}`` and, with ``proj_size``, ``weight_hr_l{k}``, each direction's
    separately; ``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``: ``weight_ih``,
    ``weight_hh``), each a 2-D ``(n_out, n_in)`` weight with all gates in one mask. A
    weight shared by several layers is listed once, under its first name.

    Not masked (they stay dense): biases and normalisation parameters; the weights of
    ``nn.Bilinear``; a weight computed by a parametrization
    (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``, any
    ``torch.nn.utils.parametrize``) or a forward pre-hook (``torch.nn.utils.weight_norm``);
    parameters of any other module. :meth:`MaskSet.from_module` warns about such weights
    (:func:`unmasked_weights`).

    Parameters
    ----------
    module : nn.Module

    Yields
    ------
    (name, parameter)
        ``name`` as in ``module.named_parameters()``, in module order.
    """
    for name, weight, _ in _maskable(module):
        yield name, weight


def unmasked_weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Weight parameters that :func:`maskable_parameters` leaves dense.

    A parameter of two or more dimensions counts as a weight when its name ends in one
    containing ``"weight"`` (``weight``, ``weight_g``, ``weight_v``) or it is
    behind a parametrized weight (``parametrizations.weight.original``); position
    embeddings and class tokens held as plain parameters do not.

    Returns
    -------
    list of (name, parameter)
        As in ``module.named_parameters()``, in its order.
    """
    masked = {id(p) for _, p in maskable_parameters(module)}
    return [(name, p) for name, p in module.named_parameters()
            if p.dim() >= 2 and id(p) not in masked
            and ("weight" in name.rpartition(".")[2] or ".parametrizations." in f".{name}")]


def resolve_dense_layers(module: nn.Module, dense_layers: Iterable[str] | None) -> list[str]:
    """Weight names selected by ``dense_layers``.

    Parameters
    ----------
    module : nn.Module
    dense_layers : iterable of str or None
        ``"first"``: the first convolution or linear layer in module order (embeddings,
        attention input projections and recurrent layers are not counted); ``"head"``:
        the last linear layer (the classifier; an attention's ``out_proj`` counts, its
        input projection and recurrent layers do not);
        ``"embeddings"``: every embedding table; or exact names of maskable weights, as
        in ``module.named_parameters()``.

    Returns
    -------
    list of str
        The selected weight names, in module order.

    Raises
    ------
    ValueError
        For a name that is not a maskable weight, listing the maskable ones.
    """
    if dense_layers is None:
        dense_layers = ()
    values = [] if isinstance(dense_layers, (str, bytes)) else list(dense_layers)
    if isinstance(dense_layers, (str, bytes)) or not all(isinstance(v, str) for v in values):
        raise ValueError(_BAD_DENSE_LAYERS.format(aliases=DENSE_LAYER_ALIASES,
                                                  value=dense_layers))
    entries = list(_maskable(module))
    names = [name for name, _, _ in entries]
    layers = [(name, w) for name, w, kind in entries if kind == "layer"]
    chosen: set[str] = set()
    unknown = []
    for value in values:
        if value == "first":
            if not layers:
                raise ValueError(_NO_LAYER_FOR_ALIAS.format(alias=value,
                                                            what="conv or linear layer"))
            chosen.add(layers[0][0])
        elif value == "head":
            # the last linear layer in module order, whose weight may be tied to one listed
            # earlier (an embedding): then its mask is under that first name
            first_name = {id(w): name for name, w, _ in entries}
            linear = [first_name[id(sub.weight)] for _, sub in module.named_modules()
                      if _kind(sub) == "layer" and id(getattr(sub, "weight", None)) in first_name
                      and sub.weight.dim() == 2]
            if not linear:
                raise ValueError(_NO_LAYER_FOR_ALIAS.format(alias=value, what="linear layer"))
            chosen.add(linear[-1])
        elif value == "embeddings":
            chosen.update(name for name, _, kind in entries if kind == "embedding")
        elif value in names:
            chosen.add(value)
        else:
            unknown.append(value)
    if unknown:
        raise ValueError(
            _UNKNOWN_DENSE_LAYER.format(
                unknown=", ".join(repr(u) for u in unknown),
                verb="is" if len(unknown) == 1 else "are",
                aliases=", ".join(repr(a) for a in DENSE_LAYER_ALIASES),
                names=", ".join(names) if names else "(none)",
            )
        )
    return [name for name in names if name in chosen]


def _warn_unmasked(module: nn.Module) -> None:
    """Warn, naming them, about the weights of ``module`` that no mask reaches."""
    unmasked = unmasked_weights(module)
    if not unmasked:
        return
    shown = _names([name for name, _ in unmasked])
    n_unmasked = sum(p.numel() for _, p in unmasked)
    total = sum(p.numel() for p in module.parameters() if p.dim() >= 2)
    warnings.warn(_NOT_MASKED.format(names=shown, n_weights=n_unmasked,
                                     share=n_unmasked / total), UserWarning, stacklevel=3)


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_NAMES_SHOWN])
    if len(names) > _NAMES_SHOWN:
        shown += f" and {len(names) - _NAMES_SHOWN} more"
    return shown


def _warn_at_least_one(shapes: Mapping[str, tuple], densities: Mapping[str, float],
                       counts: Mapping[str, int], density: float) -> None:
    """Warn where layers whose density rounds to no weight keep one each (the minimum of
    :func:`active_counts`) and the network ends up more than :data:`_EXCESS_SHOWN` denser
    than ``density``."""
    raised = [name for name, shape in shapes.items()
              if round(densities[name] * math.prod(shape)) < 1]
    total = sum(math.prod(shape) for shape in shapes.values())
    active = sum(counts.values())
    if raised and active > (1 + _EXCESS_SHOWN) * density * total:
        warnings.warn(_AT_LEAST_ONE.format(
            density=density, asked=density * total, total=total, names=_names(raised),
            active=active, achieved=active / total), UserWarning, stacklevel=3)


def _magnitude_mask(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest ``|w|``; among equal magnitudes the lower flat index wins.

    Linear time: the k-th largest magnitude is found by selection, every weight above it
    is kept, and the remaining places go to the first weights equal to it.
    """
    flat = weight.detach().abs().reshape(-1).float()
    n = flat.numel()
    if k >= n:
        return torch.ones(weight.shape, dtype=torch.bool, device=flat.device)
    threshold = torch.kthvalue(flat, n - k + 1).values  # the k-th largest
    mask = flat > threshold
    ties = torch.nonzero(flat == threshold).reshape(-1)
    mask[ties[: k - int(mask.sum())]] = True
    return mask.view(weight.shape)


# entries of a weight that zero_inactive_ multiplies by its boolean mask at once (the float
# copy of a block of the mask is 1 MiB in float32)
_ZERO_BLOCK = 1 << 18

# float32 holds every integer up to 2**24 exactly, so a count up to it sums without rounding
_EXACT_FLOAT32_COUNT = 1 << 24


def _float32_mean(mask: torch.Tensor) -> float:
    """``float(mask.float().mean())`` of a boolean mask, without the float copy.

    Summing 0/1 in float32 is exact while the count is at most ``2**24``; torch's CPU
    ``mean`` is that sum divided by the number of entries, so a count divided the same way
    gives the same float32. Larger counts, and other devices, take the float copy.
    """
    if mask.device.type == "cpu":
        count = int(torch.count_nonzero(mask))
        if count <= _EXACT_FLOAT32_COUNT:
            return float(torch.tensor(float(count), dtype=torch.float32).div_(mask.numel()))
    return float(mask.float().mean())


class MaskSet:
    """The masks of a network and the weights they apply to.

    Masks are kept twice: as booleans (for topology updates) and in the weights' dtype, so
    that re-applying all masks after an optimizer step is one fused multiply.

    Parameters
    ----------
    params : mapping of str to nn.Parameter
        The masked weights, by parameter name.
    masks : mapping of str to bool tensor
        One mask per weight, same shape.

    Raises
    ------
    ValueError
        If ``params`` and ``masks`` name other weights, or a mask has another shape than
        its weight.
    TypeError
        If a mask is not a bool tensor.
    """

    def __init__(
        self, params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]
    ) -> None:
        if set(params) != set(masks):
            raise ValueError("params and masks must have the same names.")
        self.params = dict(params)
        self._bool: dict[str, torch.Tensor] = {}
        self._mult: dict[str, torch.Tensor] = {}
        self._applied: tuple[list, list] | None = None  # apply_'s operands, until set_mask
        for name in self.params:
            self.set_mask(name, masks[name])

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        density: float,
        layer_density: str = "erk",
        sparse_init: str = "random",
        dense_layers: Iterable[str] = (),
        generator: torch.Generator | None = None,
        distribution: str | None = None,
        init: str | None = None,
        warn: bool = True,
    ) -> MaskSet:
        """Masks for every maskable weight of ``module``.

        Parameters
        ----------
        module : nn.Module
            The network; its maskable weights are found by :func:`maskable_parameters`.
        density : float in (0, 1]
            Global density of the masked layers (layers in ``dense_layers`` excluded).
        layer_density : {"erk", "uniform"}, default="erk"
            How the global density is split over layers (:data:`LAYER_DENSITIES`).
        sparse_init : {"random", "magnitude"}, default="random"
            ``"random"``: each layer's active weights are drawn uniformly at random, for
            training from scratch. ``"magnitude"``: each layer keeps exactly its largest
            ``|w|`` at its density (ties go to the lower flat index), for sparse
            fine-tuning of pretrained weights.
        dense_layers : iterable of str, default=()
            Layers that get no mask and stay dense; they are not part of the density
            budget. See :func:`resolve_dense_layers` (``"first"``, ``"head"``,
            ``"embeddings"`` or exact weight names).
        generator : torch.Generator, optional
            CPU generator: the only source of randomness (``sparse_init="random"``), so
            that every process that uses the same seed builds the same masks.
        distribution, init : str, optional
            Deprecated spellings of ``layer_density`` and ``sparse_init`` (a
            ``FutureWarning``).
        warn : bool, default=True
            Whether to warn of the weights no mask reaches and of layers kept denser than
            ``density`` (one weight each at least).

        Returns
        -------
        MaskSet
        """
        if distribution is not None:
            warnings.warn(_RENAMED.format(old="distribution", new="layer_density"),
                          FutureWarning, stacklevel=2)
            layer_density = distribution
        if init is not None:
            warnings.warn(_RENAMED.format(old="init", new="sparse_init"), FutureWarning,
                          stacklevel=2)
            sparse_init = init
        if sparse_init not in SPARSE_INITS:
            raise ValueError(_BAD_INIT.format(options=SPARSE_INITS, value=sparse_init))
        if layer_density not in LAYER_DENSITIES:
            raise ValueError(_BAD_DISTRIBUTION.format(options=LAYER_DENSITIES,
                                                      value=layer_density))
        dense = set(resolve_dense_layers(module, dense_layers))
        params = {name: p for name, p in maskable_parameters(module) if name not in dense}
        if warn:
            _warn_unmasked(module)
        shapes = {name: tuple(p.shape) for name, p in params.items()}
        if not shapes:
            return cls({}, {})
        split = erk_densities if layer_density == "erk" else uniform_densities
        densities = split(shapes, density)
        counts = active_counts(shapes, densities)
        if warn:
            _warn_at_least_one(shapes, densities, counts, density)
        masks = {}
        for name, p in params.items():
            if sparse_init == "magnitude":
                mask = _magnitude_mask(p, counts[name])
            else:
                mask = torch.zeros(p.numel(), dtype=torch.bool)
                mask[randperm_prefix(p.numel(), counts[name], generator)] = True
            masks[name] = mask.view(p.shape).to(p.device)
        return cls(params, masks)

    # -- access -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Names of the masked weights."""
        return list(self.params)

    def mask(self, name: str) -> torch.Tensor:
        """Boolean mask of weight ``name``."""
        return self._bool[name]

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        """Replace the mask of weight ``name`` (does not touch the weight).

        Raises
        ------
        TypeError
            If ``mask`` is not a bool tensor.
        ValueError
            If it does not have the weight's shape.
        """
        param = self.params[name]
        check_mask(name, mask, tuple(param.shape))
        self._bool[name] = mask.to(param.device)
        self._mult.pop(name, None)  # built again when apply_ needs it
        self._applied = None

    def _multiplier(self, name: str) -> torch.Tensor:
        """The mask of weight ``name`` in the weight's dtype (what :meth:`apply_` multiplies
        by), built on first use: a layer that trains in CSR form never needs it."""
        mult = self._mult.get(name)
        param = self.params[name]
        if mult is None or mult.dtype != param.dtype or mult.device != param.device:
            mult = self._mult[name] = self._bool[name].to(device=param.device,
                                                          dtype=param.dtype)
        return mult

    def n_active(self) -> dict[str, int]:
        """Active weights per layer."""
        return {name: int(torch.count_nonzero(self.mask(name))) for name in self.params}

    def n_weights(self, name: str) -> int:
        """Number of weights (active or not) of weight ``name``."""
        return self._bool[name].numel()

    def density(self) -> float:
        """Fraction of masked-layer weights that are active."""
        total = sum(self.n_weights(name) for name in self.params)
        return sum(self.n_active().values()) / total if total else 1.0

    def to_dict(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Copies of the boolean masks on the CPU (a mask built on request is not copied
        again); of the weights ``names`` only, in that order, where given."""
        return snapshot({name: self.mask(name).cpu()
                         for name in (self.params if names is None else names)},
                        self._bool.values())

    def report(self) -> list[dict]:
        """One record per masked layer: name, shape, weights, active weights, density."""
        rows = []
        for name in self.params:
            m = self.mask(name)
            rows.append({"layer": name, "shape": tuple(m.shape), "n_weights": m.numel(),
                         "n_active": int(torch.count_nonzero(m)), "density": mask_density(m)})
        return rows

    # -- in-place operations ---------------------------------------------------------------
    @torch.no_grad()
    def rescale_init_(self) -> None:
        """Scale each layer's weights by ``1 / sqrt(density)``.

        Standard initialisations assume every input is connected; with a fraction ``d`` of
        them active the signal variance shrinks by ``d`` per layer and deep sparse networks
        start almost silent. Rescaling keeps the variance of dense initialisation, the
        sparsity-aware initialisation of Evci et al. (AAAI 2022, "Gradient Flow in Sparse
        Neural Networks and How Lottery Tickets Win").
        """
        for name, param in self.params.items():
            scale = self._rescale(name)
            if scale is not None:
                param.mul_(scale)

    def _rescale(self, name: str) -> float | None:
        """:meth:`rescale_init_`'s factor for weight ``name`` (``None``: left as it is)."""
        density = _float32_mean(self.mask(name))
        return density**-0.5 if 0.0 < density < 1.0 else None

    @torch.no_grad()
    def zero_inactive_(self, *, rescale: bool = False) -> None:
        """Zero every inactive weight, as :meth:`apply_` does, without building the float
        multipliers :meth:`apply_` keeps (a layer trained in CSR form never needs its
        multiplier); with ``rescale``, then scale the weights as :meth:`rescale_init_` does.

        A float32 CPU weight is multiplied by its boolean mask (and its scale) in one pass
        of the compiled kernels (:func:`~rest_fair.sparse.kernels.mask_scale_`); another
        CPU weight a block of :data:`_ZERO_BLOCK` entries at a time, with a block-sized
        float copy of the mask; weights on other devices by :meth:`apply_`'s multipliers.
        All compute the products of :meth:`apply_` and :meth:`rescale_init_`, in their
        order.
        """
        for name, param in self.params.items():
            mask = self._bool[name]
            scale = self._rescale(name) if rescale else None
            if kernels.mask_scale_(param.data, mask, scale):
                continue
            if param.device.type != "cpu" or mask.device != param.device \
                    or not param.is_contiguous():
                param.mul_(self._multiplier(name))
                if scale is not None:
                    param.mul_(scale)
                continue
            flat, flat_mask = param.view(-1), mask.reshape(-1)
            for start in range(0, flat.numel(), _ZERO_BLOCK):
                block = flat[start : start + _ZERO_BLOCK].mul_(
                    flat_mask[start : start + _ZERO_BLOCK])
                if scale is not None:
                    block.mul_(scale)

    def _masked_names(self) -> list[str]:
        """The weights :meth:`apply_` multiplies by their masks."""
        return list(self.params)

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every inactive weight (one fused multiply over all layers)."""
        applied = self._applied  # the weights and multipliers, kept until a mask changes
        if applied is None or any(p.dtype != m.dtype or p.device != m.device
                                  for p, m in zip(*applied, strict=True)):  # or a weight moved
            names = self._masked_names()
            applied = self._applied = ([self.params[n] for n in names],
                                       [self._multiplier(n) for n in names])
        params, multipliers = applied
        if params:
            torch._foreach_mul_(params, multipliers)
