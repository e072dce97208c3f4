"""One observed forward pass: what a network's layers see, without training it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def evaluation(module: nn.Module) -> Iterator[None]:
    """Evaluation mode and no gradients for the block, then every submodule's mode back:
    batch-norm statistics, dropout and a spectral norm's power iteration are untouched."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def probe_pass(module: nn.Module, example: Any, handles: Iterable[Any]) -> None:
    """Run ``module(example)`` once under :func:`evaluation`, to let hooks observe it, then
    remove the ``handles`` (of ``register_forward_hook`` and the like), also if it fails."""
    try:
        with evaluation(module):
            module(example)
    finally:
        for handle in handles:
            handle.remove()
