"""One observed forward pass: what a network's layers see, without training it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def probe_pass(module: nn.Module, example: Any, handles: Iterable[Any]) -> None:
    """Run ``module(example)`` once to let hooks observe it, then remove the hooks.

    The pass runs in evaluation mode (batch-norm statistics and dropout are untouched) and
    without gradients; every submodule's training mode is restored (a frozen batch norm
    stays in evaluation mode) and every handle in
    ``handles`` (returned by ``register_forward_hook`` and the like) is removed, also when
    the pass fails.
    """
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            module(example)
    finally:
        for m, training in modes:
            m.training = training
        for handle in handles:
            handle.remove()
