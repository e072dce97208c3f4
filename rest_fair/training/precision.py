"""Numerical precision of training: float32, bfloat16 autocast, float16 with loss scaling.

Weights stay float32; reduced precision only changes the forward computation's dtype, so
masks stay exact and topology updates see full-precision magnitudes and gradients.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .optimizer_step import optimizer_step

__all__ = ["PRECISIONS", "Precision"]

#: Values of ``RESTClassifier(precision=...)``.
PRECISIONS = ("32", "bf16", "16-mixed")

_NEEDS_CUDA = (
    "precision='16-mixed' needs a CUDA device (float16 autocast with a gradient scaler); "
    "got device {device!r}. Use precision='bf16' on the CPU."
)


class Precision:
    """Autocast and gradient scaling for one training run.

    Parameters
    ----------
    name : {"32", "bf16", "16-mixed"}
        ``"32"``: plain float32. ``"bf16"``: bfloat16 autocast (CPU and CUDA).
        ``"16-mixed"``: float16 autocast with a :class:`torch.amp.GradScaler` (CUDA only).
    device : torch.device
        Where training runs.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {name!r}.")
        if name == "16-mixed" and device.type != "cuda":
            raise ValueError(_NEEDS_CUDA.format(device=str(device)))
        self.name = name
        self.device = device
        self.dtype = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}[name]
        self.scaler = torch.amp.GradScaler("cuda") if name == "16-mixed" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context of the forward pass and the loss: autocast to ``dtype``, or nothing for
        ``"32"`` (``fit`` turns a caller's autocast off around the whole run).

        Autocast's weight cache is off: torch empties it only when the outermost autocast
        exits, so inside a caller's autocast it would serve the first step's weights.
        """
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled when a gradient scaler is used."""
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before a topology update reads them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` (through :func:`optimizer_step`); with a scaler, skipped
        when gradients overflowed."""
        if self.scaler is None:
            optimizer_step(optimizer)
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The gradient scaler's state (empty without one)."""
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
