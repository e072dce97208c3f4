"""Sources of input batches: dense arrays, scipy.sparse matrices and torch Datasets.

Every source yields float tensors for a given ordering of sample indices, so the training
loop treats in-memory arrays (indexed directly, no per-item collation) and lazily loaded
datasets (through a :class:`torch.utils.data.DataLoader`) the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["BatchSource", "is_torch_dataset", "make_source"]

_MAX_DEVICE_BYTES = 512 * 2**20
BAD_DATASET_ITEM = (
    "items of a torch Dataset given as X must be a tensor/array or a tuple whose first "
    "element is one; got {}."
)


def is_torch_dataset(X: Any) -> bool:
    """Whether ``X`` is a map-style torch Dataset (and not an array)."""
    return isinstance(X, torch.utils.data.Dataset) and not torch.is_tensor(X)


class BatchSource:
    """Base class: yields input batches for an ordering of sample indices."""

    n_samples: int
    sample_shape: tuple[int, ...]

    def batches(
        self, order: torch.Tensor, batch_size: int, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x_batch on device, indices of the batch)``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds (worker processes); it may be used again."""


class _TensorSource(BatchSource):
    def __init__(self, X: np.ndarray, device: torch.device) -> None:
        data = torch.tensor(np.asarray(X, dtype=np.float32))
        if device.type != "cpu":
            data = data.to(device) if data.nbytes <= _MAX_DEVICE_BYTES else data.pin_memory()
        self.data = data
        self.n_samples = len(data)
        self.sample_shape = tuple(data.shape[1:])

    def batches(self, order, batch_size, device):
        order_here = order.to(self.data.device)
        for start in range(0, len(order), batch_size):
            batch = self.data[order_here[start : start + batch_size]]
            yield batch.to(device, non_blocking=True), order[start : start + batch_size]


class _SparseSource(BatchSource):
    def __init__(self, X: Any) -> None:
        self.data = X.tocsr()
        self.n_samples = self.data.shape[0]
        self.sample_shape = (self.data.shape[1],)

    def batches(self, order, batch_size, device):
        rows = order.numpy()
        for start in range(0, len(order), batch_size):
            block = self.data[rows[start : start + batch_size]].toarray().astype(np.float32)
            yield torch.from_numpy(block).to(device, non_blocking=True), order[
                start : start + batch_size
            ]


def _first_element(item: Any) -> torch.Tensor:
    x = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not torch.is_tensor(x):
        raise TypeError(BAD_DATASET_ITEM.format(type(item).__name__))
    return x.float()


def _collate_inputs(items: list) -> torch.Tensor:
    return torch.stack([_first_element(item) for item in items])


class _OrderSampler(torch.utils.data.Sampler):
    """Yields the indices of the current order; the order is replaced before each pass."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class _DatasetSource(BatchSource):
    """A torch Dataset read through one DataLoader per batch size, kept for the whole fit.

    The loader's sampler is re-pointed at each epoch's order, so worker processes
    (``persistent_workers``) are started once rather than at every epoch and validation.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, num_workers: int,
                 device: torch.device) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = device.type == "cuda"
        self.n_samples = len(dataset)  # type: ignore[arg-type]
        self.sample_shape = tuple(_first_element(dataset[0]).shape) if self.n_samples else ()
        self._loaders: dict[int, tuple[torch.utils.data.DataLoader, _OrderSampler]] = {}

    def _loader(self, batch_size: int) -> tuple[torch.utils.data.DataLoader, _OrderSampler]:
        if batch_size not in self._loaders:
            sampler = _OrderSampler()
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_size=batch_size,
                sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=_collate_inputs,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
            )
            self._loaders[batch_size] = (loader, sampler)
        return self._loaders[batch_size]

    def batches(self, order, batch_size, device):
        loader, sampler = self._loader(batch_size)
        sampler.order = order.tolist()
        for start, x in zip(range(0, len(order), batch_size), loader, strict=True):
            yield x.to(device, non_blocking=True), order[start : start + batch_size]

    def close(self) -> None:
        """Stop the loaders' worker processes."""
        self._loaders.clear()


def make_source(X: Any, *, device: torch.device, num_workers: int = 0) -> BatchSource:
    """Wrap validated inputs in a :class:`BatchSource`.

    Parameters
    ----------
    X : ndarray, scipy.sparse matrix or torch Dataset
        Inputs, already validated.
    device : torch.device
        Where batches go.
    num_workers : int
        Worker processes for torch Datasets.
    """
    import scipy.sparse as sp

    from .text import make_text_source

    if (text := make_text_source(X)) is not None:
        return text
    if is_torch_dataset(X):
        return _DatasetSource(X, num_workers, device)
    if sp.issparse(X):
        return _SparseSource(X)
    return _TensorSource(X, device)
