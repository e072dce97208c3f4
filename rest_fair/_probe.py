"""One observed forward pass: what a network's layers see, without training it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def evaluation(module: nn.Module) -> Iterator[None]:
    """Evaluation mode and no gradients for the block, then every submodule's mode back.

    Whatever runs inside reads the network without training it: batch-norm statistics,
    dropout and the power iteration of a spectral-norm parametrization (which runs each
    time a training-mode layer's weight is read) are untouched. A submodule frozen in
    evaluation mode stays so.
    """
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
