"""Consecutive CSR layers of an ``nn.Sequential`` trained as one autograd node.

While a run trains its very sparse linear layers as
:class:`~rest_fair.sparse.csr_linear.CSRLinear` layers, each of them applies the ``nn.ReLU``
that follows it in an ``nn.Sequential`` (the ReLU's place holds a :class:`FusedReLU`).
A chain is a run of such layers with nothing else between them (the last one may apply no
ReLU), as the hidden and output layers of an MLP: :func:`link_chains` puts a
:class:`LinkedSequential` in the place of their ``nn.Sequential`` (the same children, so
names, ``state_dict`` keys and parameters do not change), which runs each chain as one call
of the compiled kernels' layers:

- forward: the input is packed into panels once; each layer writes its output directly
  as the next layer's panels (:func:`~rest_fair.sparse.kernels.csr_forward` into panels);
- backward: each layer writes its input gradient as panels, where the gradient of the
  ReLU before it and the bias gradient of the layer before it are taken in one pass over
  them (:func:`~rest_fair.sparse.kernels.pack` in place).

Each activation between the layers is then read and written once less per direction, and
one Python call and one autograd node stand for the whole chain. Results are bitwise those
of the layers called one by one. A chain runs layer by layer instead where its layers or
their ReLUs carry hooks, where the compiled kernels do not apply (CUDA, other dtypes) and
for inputs other than a matrix with the first layer's features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks

from . import kernels
from .csr_linear import CSRLinear, _input_gradient, _matrix_output, _output_gradient
from .modules import set_submodule

__all__ = ["FusedReLU", "LinkedSequential", "hooked", "link_chains", "unlink_chains"]


class FusedReLU(nn.Identity):
    """Stands in for an ``nn.ReLU`` that the CSR layer before it applies."""


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = tuple(f"_global{name}" for name in _HOOKS)


def hooked(sub: nn.Module) -> bool:
    """Whether a hook is registered on ``sub`` itself."""
    return any(getattr(sub, name) for name in _HOOKS)


def _global_hooks() -> bool:
    """Whether a hook is registered for every module (``nn.modules.module``'s globals)."""
    return any(getattr(_module_hooks, name, None) for name in _GLOBAL_HOOKS)


def _unpack(panels: torch.Tensor, batch: int) -> torch.Tensor:
    """Feature-major matrix ``(features, batch)``, contiguous, of ``batch`` samples' panels."""
    n_features = panels.shape[1]
    return panels.permute(1, 0, 2).reshape(n_features, -1)[:, :batch].contiguous()


class _ChainFunction(torch.autograd.Function):
    """``layers[-1](...layers[0](x))`` of CSR layers on the compiled kernels.

    Every layer but the last applies a ReLU (``relu_output``); the last one may. ``params``
    are the layers' ``values`` and ``bias``, in order. The result has the last layer's
    layout: ``(batch, out_features)`` row-major, or ``(out_features, batch)`` row-major
    where it is ``feature_major_output`` (the caller transposes it back as a view).
    """

    @staticmethod
    def forward(ctx, x, layers, *params):  # type: ignore[override]
        batch = x.shape[0]
        nv, width = kernels.panel_width(params[0].dtype, batch)
        splits = [layer._kernel_splits() for layer in layers]
        panels = [kernels.pack(x, splits[0].in_features, nv)[0]]
        n_panels = panels[0].shape[0]
        pad = n_panels * width - batch
        last = layers[-1]
        for i, layer in enumerate(layers):
            if layer is last:
                out, target = _matrix_output(x, last.out_features, last.feature_major_output)
            else:
                out = target = x.new_empty((n_panels, layer.out_features, width))
            kernels.csr_forward(panels[i], nv, batch, *layer._pattern(), params[2 * i],
                                params[2 * i + 1], splits[i].rows, target,
                                relu=layer.relu_output)
            if layer is not last:
                if pad:  # the padding samples of panels are 0, as packing leaves them
                    out[-1, :, width - pad:].zero_()
                panels.append(out)
        ctx.layers, ctx.splits, ctx.nv, ctx.width = layers, splits, nv, width
        ctx.save_for_backward(x, out if last.relu_output else None, *panels, *params)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        layers: Sequence[CSRLinear] = ctx.layers
        n = len(layers)
        x, out, *rest = ctx.saved_tensors
        panels, params = rest[:n], rest[n:]
        nv, splits, batch = ctx.nv, ctx.splits, x.shape[0]
        needs = ctx.needs_input_grad
        # below[i]: whether the input of layer i needs a gradient (for x or earlier weights)
        below = [needs[0]]
        for i in range(1, n):
            below.append(below[-1] or needs[2 * i] or needs[2 * i + 1])
        last = layers[-1]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        grad_x = grad_panels = None
        for i in reversed(range(n)):
            layer = layers[i]
            values, bias = params[2 * i], params[2 * i + 1]
            want_values = needs[2 * i + 2]
            want_bias = bias is not None and needs[2 * i + 3]
            plan, scan = layer._backward_plan(want_values)
            if layer is last:  # the output gradient comes as a matrix
                grad_panels, grad_bias, grad_t = _output_gradient(
                    grad, out, splits[i], nv, feature_major=last.feature_major_output,
                    planned=plan is not None, want_bias=want_bias)
            else:  # the panels of the next layer's input gradient, behind this ReLU
                grad_panels, grad_bias = kernels.pack(
                    grad_panels, splits[i].out_features, nv, column_sums=want_bias,
                    gate=panels[i + 1], batch=batch, out=grad_panels)
                grad_t = None if plan is None else _unpack(grad_panels, batch)
            x_t = None
            if plan is not None:
                x_t = x.t().contiguous() if i == 0 else _unpack(panels[i], batch)
            target = None
            if below[i] and i > 0:
                target = x.new_empty((panels[i].shape[0], layer.in_features, ctx.width))
            elif below[i]:
                target = grad_x = _input_gradient(x, layer.in_features)
            grad_values = torch.empty_like(values) if want_values and not scan else None
            crow_t, col_t, perm_t, inverse = layer._pattern_t()
            kernels.csr_backward(grad_panels, panels[i], nv, batch, crow_t, col_t, perm_t,
                                 values, splits[i].cols, target, grad_values,
                                 inverse_perm_t=inverse)
            grads[2 * i] = layer._planned_gradient(grad_t, x_t, grad_values, scan)
            grads[2 * i + 1] = grad_bias
            if i > 0 and target is None:
                break  # nothing below needs a gradient
            grad_panels = target
        return grad_x, None, *grads


def _chain_params(layers: Sequence[CSRLinear], x) -> list[torch.Tensor | None] | None:
    """The ``values`` and ``bias`` of each of ``layers``, in order, where they can run as one
    chain on input ``x`` (a CPU matrix with the first layer's features, weights of one
    kernel dtype); ``None`` where they cannot."""
    first = layers[0]
    if (not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != first.in_features
            or not first._use_kernels(x)):
        return None
    params = [t for layer in layers for t in layer._weights()]
    dtype = params[0].dtype
    for param in params[2:]:
        if param is not None and (param.dtype != dtype or not param.is_cpu):
            return None
    return params


def run_chain(layers: Sequence[CSRLinear], x: torch.Tensor,
              params: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """The output of CSR layers applied one after the other to ``x``, as one autograd node.

    The layers must form a chain (every layer but the last with ``relu_output``, each one's
    ``out_features`` the next one's ``in_features``); ``params`` are their parameters as
    :func:`_chain_params` gives them for ``x``.
    """
    if x.dtype != params[0].dtype:
        x = x.to(params[0].dtype)
    # the products run in the weights' dtype; the output re-enters autocast
    with (torch.autocast("cpu", enabled=False) if torch.is_autocast_enabled("cpu")
          else contextlib.nullcontext()):
        out = _ChainFunction.apply(x, tuple(layers), *params)
    if layers[-1].feature_major_output:
        out = out.t()
    return out


class _Chain(NamedTuple):
    """A chain among the children of a :class:`LinkedSequential`."""

    start: int  # position of its first layer among the children
    modules: tuple[nn.Module, ...]  # its layers and the FusedReLU between them
    layers: tuple[CSRLinear, ...]
    hooks: tuple[dict, ...]  # the hook dictionaries of its modules, checked at each call


class LinkedSequential(nn.Sequential):
    """An ``nn.Sequential`` that runs its chains of CSR layers as one node each.

    Built by :func:`link_chains` over an ``nn.Sequential``, whose children it shares (the
    same dictionary: a child replaced in one is replaced in both; a chain whose modules
    were replaced runs no more).

    Parameters
    ----------
    original : nn.Sequential
    chains : sequence of (int, tuple of CSRLinear)
        Where each chain starts among the children, and its layers (every other child).
    """

    def __init__(self, original: nn.Sequential,
                 chains: Sequence[tuple[int, tuple[CSRLinear, ...]]]) -> None:
        super().__init__()
        self._modules = original._modules
        self.training = original.training
        children = list(original.children())
        self.chains: dict[int, _Chain] = {}
        for start, layers in chains:
            modules = tuple(children[start:start + 2 * len(layers) - 1])
            hooks = tuple(getattr(m, name) for m in modules for name in _HOOKS)
            self.chains[start] = _Chain(start, modules, layers, hooks)

    def forward(self, x):
        children = list(self._modules.values())
        i = 0
        while i < len(children):
            chain = self.chains.get(i)
            params = None if chain is None else self._params(children, chain, x)
            if params is not None:
                x = run_chain(chain.layers, x, params)
                i += len(chain.modules)
            else:
                x = children[i](x)
                i += 1
        return x

    @staticmethod
    def _params(children: list[nn.Module], chain: _Chain, x) -> list | None:
        """The chain's parameters where it runs as one on ``x`` (its modules in place and
        without hooks, see :func:`_chain_params`), else ``None``."""
        if (tuple(children[chain.start:chain.start + len(chain.modules)]) != chain.modules
                or any(chain.hooks) or _global_hooks()):
            return None
        return _chain_params(chain.layers, x)


def _chains(seq: nn.Sequential) -> list[tuple[int, tuple[CSRLinear, ...]]]:
    """The chains of ``seq``: runs of 2 or more CSR layers joined by :class:`FusedReLU`."""
    children = list(seq.children())
    found = []
    i = 0
    while i < len(children):
        layers = [children[i]] if isinstance(children[i], CSRLinear) else []
        j = i
        while layers and layers[-1].relu_output and j + 2 < len(children) \
                and type(children[j + 1]) is FusedReLU \
                and isinstance(children[j + 2], CSRLinear) \
                and children[j + 2].in_features == layers[-1].out_features:
            j += 2
            layers.append(children[j])
        if len(layers) > 1:
            found.append((i, tuple(layers)))
        i = j + 1
    return found


def link_chains(module: nn.Module) -> dict[str, nn.Sequential]:
    """Put a :class:`LinkedSequential` in the place of each ``nn.Sequential`` with a chain.

    The module itself is not replaced (only its submodules can be). Returns the replaced
    ``nn.Sequential`` modules by name, for :func:`unlink_chains`.
    """
    replaced: dict[str, nn.Sequential] = {}
    for name, seq in list(module.named_modules()):
        if name and type(seq) is nn.Sequential:
            chains = _chains(seq)
            if chains:
                set_submodule(module, name, LinkedSequential(seq, chains))
                replaced[name] = seq
    return replaced


def unlink_chains(module: nn.Module, replaced: dict[str, nn.Sequential]) -> None:
    """Put back the ``nn.Sequential`` modules :func:`link_chains` replaced (in train or
    eval mode as their stand-ins were)."""
    for name, seq in reversed(list(replaced.items())):
        seq.train(module.get_submodule(name).training)
        set_submodule(module, name, seq)
    replaced.clear()
