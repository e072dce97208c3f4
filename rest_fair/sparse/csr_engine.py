"""The sparse engine of a run whose very sparse linear layers train as CSR layers.

:class:`CSRDynamicSparsity` is a :class:`~rest_fair.sparse.DynamicSparsity` over a module
in which some ``nn.Linear`` layers were replaced by
:class:`~rest_fair.sparse.csr_linear.CSRLinear`, each the storage of its layer in the
engine's topology updates (:attr:`~rest_fair.sparse.DynamicSparsity.layers`): the masked
path's updates, with the same semantics, place in the step and synchronisation, so the
optimizer step after an update trains the regrown weights exactly as in the masked path.

The training module's public form does not change: a CSR layer's ``state_dict`` holds the
dense ``weight``/``bias`` of an ``nn.Linear``, the optimizer's ``state_dict`` holds
dense-shaped state (:meth:`CSRDynamicSparsity.bind_optimizer`), and
:meth:`CSRDynamicSparsity.finish` puts the original ``nn.Linear`` modules back with their
trained weights at the end of ``fit``. Checkpoints written during such a run are in the
masked format and can be resumed by either path. Until ``finish``, a CSR layer also
applies the ``nn.ReLU`` that follows it in an ``nn.Sequential`` (bitwise as the ReLU
module, without reading and writing the activations once more), and consecutive CSR
layers joined only by such ReLUs (the hidden layers of an MLP) train as one autograd node
(:mod:`rest_fair.sparse.csr_chain`).
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .csr_chain import FusedReLU, LinkedSequential, hooked, link_chains, unlink_chains
from .csr_linear import CSRLinear, PackedWeight, packed_state_dict, unpacked
from .engine import DynamicSparsity
from .masks import MaskSet
from .modules import ELEMENTWISE, set_submodule, snapshot

__all__ = ["CSRDynamicSparsity", "dense_copy"]

_COPY_MISMATCH = ("the best epoch's copy does not fit the network: it lacks {missing} and "
                  "the copy has {unexpected} that the network lacks.")


class _CSRMaskSet(MaskSet):
    """A :class:`MaskSet` whose converted layers keep their mask as their CSR pattern.

    ``params`` maps a converted layer's weight name to its ``values`` parameter; no dense
    mask is held for it (its boolean mask is built on demand).
    """

    def __init__(self, base: MaskSet, layers: Mapping[str, CSRLinear]) -> None:
        self.layers = dict(layers)
        self.params = {name: self.layers[name].values if name in self.layers
                       else base.params[name] for name in base.names}
        dense = [name for name in base.names if name not in self.layers]
        self._bool = {name: base._bool[name] for name in dense}
        self._mult = {name: base._mult[name] for name in dense if name in base._mult}
        self._applied = None

    def mask(self, name: str) -> torch.Tensor:
        layer = self.layers.get(name)
        return layer.mask() if layer is not None else self._bool[name]

    def n_active(self) -> dict[str, int]:
        # a converted layer's active count is its pattern's size: no dense mask is built
        return {name: self.layers[name].nnz if name in self.layers
                else int(torch.count_nonzero(self._bool[name])) for name in self.params}

    def n_weights(self, name: str) -> int:
        layer = self.layers.get(name)
        return layer.out_features * layer.in_features if layer is not None \
            else super().n_weights(name)

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        layer = self.layers.get(name)
        if layer is None:
            super().set_mask(name, mask)
        else:
            layer.set_mask(mask)

    def _masked_names(self) -> list[str]:
        return [name for name in self.params if name not in self.layers]

    def restore_dense(self, name: str, weight: nn.Parameter, mask: torch.Tensor) -> None:
        """Hold layer ``name`` as a dense weight and mask again."""
        del self.layers[name]
        self.params[name] = weight
        super().set_mask(name, mask)


class _PackedState:
    """The module state and masks of a CSR run at its best epoch so far, its CSR layers'
    weights as :class:`~rest_fair.sparse.csr_linear.PackedWeight` (see
    :class:`~rest_fair.training.state.BestCopy`)."""

    def __init__(self, engine: CSRDynamicSparsity, module: nn.Module) -> None:
        self._state = snapshot(packed_state_dict(module),
                               [*module.parameters(), *module.buffers()])
        self._names = list(engine.masks.params)
        self._dense_masks = engine.masks.to_dict(
            name for name in self._names if name not in engine.layers)

    def module_state(self) -> dict[str, torch.Tensor]:
        """The dense ``state_dict()`` (each packed weight densified)."""
        return unpacked(self._state)

    def masks(self) -> dict[str, torch.Tensor]:
        """The boolean masks, the CSR layers' built from their flat indices."""
        return {name: self._dense_masks[name] if name in self._dense_masks
                else self._state[name].mask() for name in self._names}

    def load_into(self, module: nn.Module) -> None:
        """Load the copy into ``module`` (its CSR layers back in dense form), the packed
        weights written into the dense ones in place.

        Raises
        ------
        RuntimeError
            If ``module`` lacks an entry of the copy or has one the copy lacks.
        """
        packed = {key: value for key, value in self._state.items()
                  if isinstance(value, PackedWeight)}
        result = module.load_state_dict(
            {key: value for key, value in self._state.items() if key not in packed},
            strict=False)
        missing = [key for key in result.missing_keys if key not in packed]
        if missing or result.unexpected_keys:
            raise RuntimeError(_COPY_MISMATCH.format(missing=missing,
                                                     unexpected=result.unexpected_keys))
        for key, weight in packed.items():
            weight.write_into(module.get_parameter(key))


def _fuse_relus(module: nn.Module) -> dict[str, nn.ReLU]:
    """Let each CSR layer apply the ``nn.ReLU`` that follows it in a Sequential.

    The ReLU (when no hook is registered on it) is replaced by a :class:`FusedReLU`;
    returns the replaced modules by name, to be put back.
    """
    fused: dict[str, nn.ReLU] = {}
    for prefix, seq in module.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        subs = list(seq.named_children())
        for (_, sub), (key, after) in itertools.pairwise(subs):
            if isinstance(sub, CSRLinear) and type(after) is nn.ReLU and not hooked(after):
                sub.relu_output = True
                name = f"{prefix}.{key}" if prefix else key
                fused[name] = after
                set_submodule(module, name, FusedReLU())
    return fused


#: What may stand between two CSR layers linked feature-major: the element-wise modules
#: without randomness (see :func:`_link_feature_major`).
_LINKED_THROUGH = (*(m for m in ELEMENTWISE if m is not nn.Dropout), FusedReLU)


def _link_feature_major(module: nn.Module) -> None:
    """Let CSR layers that feed another CSR layer of a Sequential skip the transpose.

    Only element-wise modules without randomness may stand between them: a dropout draws
    its mask in the memory order of its input, so a feature-major input would get other
    draws than the masked path's row-major one.
    """
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        pending: CSRLinear | None = None
        for sub in seq:
            if type(sub) in _LINKED_THROUGH:
                continue
            if pending is not None and isinstance(sub, CSRLinear):
                pending.feature_major_output = True
            pending = sub if isinstance(sub, CSRLinear) else None


def _layer_state(layer: CSRLinear, state: dict, *, dense: bool) -> dict:
    """A CSR layer's optimizer state with its per-weight tensors dense, or back at the pattern.

    Dense per-weight state has the ``(out, in)`` shape and zeros at inactive positions.
    """
    shape = (layer.nnz,) if dense else layer.shape
    convert = layer.scatter if dense else (lambda v: layer.gather(v.to(layer.values.device)))
    return {key: convert(v) if torch.is_tensor(v) and tuple(v.shape) == shape else v
            for key, v in state.items()}


class CSRDynamicSparsity(DynamicSparsity):
    """:class:`DynamicSparsity` whose sparse linear layers train as :class:`CSRLinear`.

    Built by :func:`~rest_fair.sparse.compute.make_sparse_compute`, which replaces the
    layers in the module. Call :meth:`bind_optimizer` with the optimizer built over the
    converted module, and :meth:`finish` at the end of training to get the dense module
    back.

    Parameters
    ----------
    base : DynamicSparsity
        The masked engine (its masks applied to the module's weights).
    module : nn.Module
        The network; the layers named in ``layers`` are replaced in place.
    layers : sequence of str
        Module names of plain ``nn.Linear`` layers with a mask.
    """

    def __init__(self, base: DynamicSparsity, module: nn.Module, layers: Sequence[str]) -> None:
        super().__init__(base.masks, schedule=base.schedule,
                         update_interval=base.update_interval, regrow=base.regrow,
                         generator=base.generator, steps_per_epoch=base.steps_per_epoch,
                         update_timing=base.update_timing)
        self.n_updates = base.n_updates
        self.n_regrown = base.n_regrown
        self.module = module
        self.converted = tuple(layers)
        self._originals: dict[str, nn.Linear] = {}
        self._hooks: list[Any] = []
        csr_layers: dict[str, CSRLinear] = {}
        for name in self.converted:
            linear = module.get_submodule(name)
            weight_name = f"{name}.weight"
            layer = CSRLinear(linear, base.masks.mask(weight_name), name=name)
            set_submodule(module, name, layer)
            self._originals[name] = linear
            # the dense weight is not needed until finish(); free its memory meanwhile
            linear.weight.data = linear.weight.data.new_empty(0)
            csr_layers[weight_name] = layer
        self.masks = _CSRMaskSet(base.masks, csr_layers)
        self.layers = self.masks.layers  # weight name -> CSRLinear, while converted
        self._relus = _fuse_relus(module)
        _link_feature_major(module)
        self._chains = link_chains(module)

    # -- optimizer state in dense form --------------------------------------------------
    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Make ``optimizer.state_dict()`` dense-shaped, and ``load_state_dict`` accept it.

        Per-weight state of a CSR layer is saved as a dense ``(out, in)`` tensor with zeros
        at inactive positions (what a masked run's state looks like for the active
        weights) and read back at the current pattern.
        """

        def hook(dense: bool) -> Any:
            def convert(opt: torch.optim.Optimizer, state_dict: dict) -> dict:
                state = dict(state_dict["state"])
                by_values = {id(layer.values): layer for layer in self.layers.values()}
                params = [p for group in opt.param_groups for p in group["params"]]
                for i, p in enumerate(params):
                    if i in state and id(p) in by_values:
                        state[i] = _layer_state(by_values[id(p)], state[i], dense=dense)
                return {**state_dict, "state": state}

            return convert

        self._hooks.append(optimizer.register_state_dict_post_hook(hook(dense=True)))
        self._hooks.append(optimizer.register_load_state_dict_pre_hook(hook(dense=False)))

    # -- the best epoch -----------------------------------------------------------------
    def best_copy(self, module: nn.Module) -> _PackedState:
        """:meth:`DynamicSparsity.best_copy`, with the weights and masks of the CSR layers
        copied packed (their active values and flat indices): an epoch that becomes the
        best costs a copy of the active weights, not of the dense matrices, which are
        built only when the copy is read."""
        return _PackedState(self, module)

    # -- the end of training ------------------------------------------------------------
    @torch.no_grad()
    def finish(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Put the dense ``nn.Linear`` layers back, with their weights and optimizer state.

        Afterwards the module, the optimizer and the masks are those of a masked run.
        """
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        unlink_chains(self.module, self._chains)
        for name, relu in self._relus.items():
            set_submodule(self.module, name, relu)
        self._relus.clear()
        for weight_name, layer in list(self.layers.items()):
            name = weight_name.rpartition(".")[0]
            linear = self._originals.pop(name)
            linear.weight.data = layer.dense_weight()
            linear.weight.grad = None
            set_submodule(self.module, name, linear)
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["params"] = [linear.weight if p is layer.values else p
                                       for p in group["params"]]
                if layer.values in optimizer.state:
                    optimizer.state[linear.weight] = _layer_state(
                        layer, optimizer.state.pop(layer.values), dense=True)
            self.masks.restore_dense(weight_name, linear.weight, layer.mask())


def dense_copy(module: nn.Module) -> nn.Module:
    """``module`` itself, or where it holds :class:`CSRLinear` layers (a run training in CSR
    form) a copy of it in which each is the ``nn.Linear`` it trains (the dense weight, zeros
    outside the pattern, and the bias) and the ``nn.ReLU`` it applies is back in place."""
    names = {name: sub for name, sub in module.named_modules()
             if isinstance(sub, (CSRLinear, FusedReLU, LinkedSequential))}
    if not names:
        return module
    module = copy.deepcopy(module)
    for name, sub in names.items():  # a parent before its children
        layer = nn.ReLU()
        if isinstance(sub, LinkedSequential):
            layer = nn.Sequential(OrderedDict(module.get_submodule(name).named_children()))
        elif isinstance(sub, CSRLinear):
            layer = nn.Linear(sub.in_features, sub.out_features, bias=False, device="meta")
            layer.weight = nn.Parameter(sub.dense_weight())
            layer.bias = module.get_submodule(name).bias
        set_submodule(module, name, layer)
    return module
