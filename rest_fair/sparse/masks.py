"""Binary masks on the weights of every convolution and linear layer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .densities import active_counts, erk_densities, uniform_densities

__all__ = ["SPARSE_INITS", "MaskSet", "maskable_parameters"]

#: Ways to split the global density over layers (``sparse_init``).
SPARSE_INITS = ("erk", "uniform")
_MASKABLE = (nn.Linear, nn.modules.conv._ConvNd)


def maskable_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Weights that get a mask: those of every conv and linear layer.

    Biases and normalisation parameters stay dense.

    Parameters
    ----------
    module : nn.Module

    Yields
    ------
    (name, parameter)
        ``name`` as in ``module.named_parameters()``.
    """
    for prefix, sub in module.named_modules():
        if isinstance(sub, _MASKABLE) and isinstance(sub.weight, nn.Parameter):
            yield (f"{prefix}.weight" if prefix else "weight"), sub.weight


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
    """

    def __init__(
        self, params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]
    ) -> None:
        if set(params) != set(masks):
            raise ValueError("params and masks must have the same names.")
        self.params = dict(params)
        self._bool: dict[str, torch.Tensor] = {}
        self._mult: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            if mask.shape != self.params[name].shape:
                raise ValueError(
                    f"mask {name!r} has shape {tuple(mask.shape)}, "
                    f"weight has {tuple(self.params[name].shape)}."
                )
            self.set_mask(name, mask)

    @classmethod
    def random(
        cls,
        module: nn.Module,
        *,
        density: float,
        distribution: str = "erk",
        generator: torch.Generator | None = None,
    ) -> MaskSet:
        """Uniformly random masks with per-layer densities from ``distribution``.

        Parameters
        ----------
        module : nn.Module
            The network; its maskable weights are found by :func:`maskable_parameters`.
        density : float in (0, 1]
            Global density.
        distribution : {"erk", "uniform"}
            How the global density is split over layers.
        generator : torch.Generator, optional
            CPU generator: the only source of randomness, so that every process that uses the
            same seed builds the same masks.

        Returns
        -------
        MaskSet
        """
        params = dict(maskable_parameters(module))
        shapes = {name: tuple(p.shape) for name, p in params.items()}
        if distribution == "erk":
            densities = erk_densities(shapes, density)
        elif distribution == "uniform":
            densities = uniform_densities(shapes, density)
        else:
            raise ValueError(f"sparse_init must be one of {SPARSE_INITS}; got {distribution!r}.")
        counts = active_counts(shapes, densities)
        masks = {}
        for name, p in params.items():
            order = torch.randperm(p.numel(), generator=generator)
            flat = torch.zeros(p.numel(), dtype=torch.bool)
            flat[order[: counts[name]]] = True
            masks[name] = flat.view(p.shape).to(p.device)
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
        """Replace the mask of weight ``name`` (does not touch the weight)."""
        param = self.params[name]
        mask = mask.to(device=param.device, dtype=torch.bool)
        self._bool[name] = mask
        self._mult[name] = mask.to(param.dtype)

    def n_active(self) -> dict[str, int]:
        """Active weights per layer."""
        return {name: int(m.sum()) for name, m in self._bool.items()}

    def density(self) -> float:
        """Fraction of masked-layer weights that are active."""
        total = sum(m.numel() for m in self._bool.values())
        return sum(self.n_active().values()) / total if total else 1.0

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the boolean masks on the CPU."""
        return {name: m.detach().cpu().clone() for name, m in self._bool.items()}

    def report(self) -> list[dict]:
        """One record per masked layer: name, shape, weights, active weights, density."""
        rows = []
        for name, m in self._bool.items():
            n_active = int(m.sum())
            rows.append(
                {
                    "layer": name,
                    "shape": tuple(m.shape),
                    "n_weights": m.numel(),
                    "n_active": n_active,
                    "density": n_active / m.numel(),
                }
            )
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
            density = float(self._bool[name].float().mean())
            if 0.0 < density < 1.0:
                param.mul_(density**-0.5)

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every inactive weight (one fused multiply over all layers)."""
        if self.params:
            torch._foreach_mul_(list(self.params.values()), list(self._mult.values()))
