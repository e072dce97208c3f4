"""Sources of input batches: dense arrays, scipy.sparse matrices, torch Datasets and text.

Every source yields the batches of a given ordering of sample indices, so the training loop
treats them all the same way.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator
from numbers import Integral
from typing import Any

import numpy as np
import torch

__all__ = [
    "BatchSource",
    "TextSource",
    "TokenizedText",
    "fixed_global_rngs",
    "input_dtype",
    "is_torch_dataset",
    "kept_global_rngs",
    "make_source",
    "reads_ids",
]

_MAX_DEVICE_BYTES = 512 * 2**20
ITERABLE_DATASET = (
    "X is an IterableDataset ({}); rest_fair draws each epoch's samples by index (the "
    "reweighted sampler), so X must be a map-style Dataset with __len__ and __getitem__."
)
DATASET_SHAPES = (
    "the items of a torch Dataset given as X must all have one shape; a batch holds items "
    "of shapes {}."
)
IDS_OUT_OF_RANGE = (
    "X holds integers outside [0, {n}), the token ids that the network's first layer, an "
    "nn.{layer} of {n} embeddings, reads: {count} value(s), e.g. {value}."
)
BAD_DATASET_ITEM = (
    "items of a torch Dataset given as X must be a tensor/array or a tuple whose first "
    "element is one; got {}."
)


def is_torch_dataset(X: Any) -> bool:
    """Whether ``X`` is a torch Dataset (and not an array).

    Raises
    ------
    TypeError
        For an ``IterableDataset``, which cannot serve batches drawn by index.
    """
    if isinstance(X, torch.utils.data.IterableDataset):
        raise TypeError(ITERABLE_DATASET.format(type(X).__name__))
    return isinstance(X, torch.utils.data.Dataset) and not torch.is_tensor(X)


class BatchSource:
    """Base class: yields input batches for an ordering of sample indices.

    A subclass implements :meth:`batches`, or :meth:`take`, which builds one batch from
    its slice of :meth:`keys`. :attr:`uniform_samples` is true where every sample has the
    same shape, so that a batch costs in proportion to its number of samples.
    """

    uniform_samples: bool = False
    ids: bool = False
    """Whether integer samples come as int64 token ids (for a network that
    :func:`reads_ids`); set by :meth:`set_input_dtypes`."""
    dtype: torch.dtype = torch.float32
    """The dtype of other samples, the network's :func:`input_dtype`; set by
    :meth:`set_input_dtypes`."""

    n_samples: int
    sample_shape: tuple[int, ...]

    def batches(
        self, order: torch.Tensor, batch_size: int, device: torch.device
    ) -> Iterator[tuple[Any, torch.Tensor]]:
        """Yield ``(x_batch on device, indices of the batch)``."""
        keys = self.keys(order)
        for start in range(0, len(order), batch_size):
            stop = start + batch_size
            yield self.take(keys[start:stop], device), order[start:stop]

    def keys(self, order: torch.Tensor) -> Any:
        """``order`` in the form :meth:`take` indexes with (here: unchanged)."""
        return order

    def take(self, rows: Any, device: torch.device) -> Any:
        """The batch of samples ``rows`` (a slice of :meth:`keys`), on ``device``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds (worker processes); it may be used again."""

    def set_input_dtypes(self, module: torch.nn.Module) -> None:
        """Set :attr:`ids` and :attr:`dtype` for ``module``."""
        self.ids = reads_ids(module)
        self.dtype = input_dtype(module)


def _first_layer(module: torch.nn.Module) -> torch.nn.Module | None:
    """``module``'s first module without children, in registration order."""
    return next((m for m in module.modules() if next(m.children(), None) is None), None)


def reads_ids(module: torch.nn.Module) -> bool:
    """Whether ``module``'s first layer is an ``nn.Embedding`` or ``nn.EmbeddingBag``, which
    reads integer token ids."""
    return isinstance(_first_layer(module), (torch.nn.Embedding, torch.nn.EmbeddingBag))


def input_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype ``module`` reads inputs in: its first parameter's where that is a floating
    dtype (``.double()``, ``.bfloat16()``), else float32."""
    first = next(module.parameters(), None)
    return first.dtype if first is not None and first.is_floating_point() else torch.float32


def _as_tensor(array: np.ndarray, *, only_read: bool = False) -> torch.Tensor:
    """``array`` as a CPU tensor of its strides' axis order, sharing its memory if it is
    writeable and has no negative stride, else a copy (torch takes no negative stride, and
    the tensor must not write to memory given read-only). With ``only_read`` (nothing
    writes to the tensor), a read-only array without negative strides (a memory map) is
    shared too, through DLPack. An array of the other byte order is copied to the native
    one.
    """
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    forward = min(array.strides, default=0) >= 0
    if only_read and forward and not array.flags.writeable:
        return torch.from_dlpack(array)
    if not (forward and array.flags.writeable):
        array = np.array(array, order="K", copy=True)
    return torch.from_numpy(array)


class _TensorSource(BatchSource):
    """Rows of an array, as batches of :attr:`dtype` (an integer array's as int64 with
    :attr:`ids`).

    A float32 array, also a read-only one, is shared, not copied. On the CPU, an array of
    another dtype without negative strides is read in place and converted batch by batch,
    never as a whole. With ``rows``, the source holds those rows (sample ``i`` is row
    ``rows[i]``), read in place on the CPU and copied on another device. An integer array
    keeps its dtype (off the CPU, unsigned ones of more than 8 bits are held as int64).
    """

    uniform_samples = True

    def __init__(self, X: np.ndarray, device: torch.device,
                 rows: np.ndarray | None = None) -> None:
        array = np.asarray(X)
        if rows is not None and device.type != "cpu":
            array, rows = array[rows], None
        if array.dtype.kind in "iu":
            if device.type != "cpu" and array.dtype.kind == "u" and array.itemsize > 1:
                array = array.astype(np.int64)
        elif array.dtype != np.float32 and (device.type != "cpu"
                                            or min(array.strides, default=0) < 0):
            array = array.astype(np.float32)  # one conversion of the whole array
        data = _as_tensor(array, only_read=True)
        if device.type != "cpu":
            data = data.to(device) if data.nbytes <= _MAX_DEVICE_BYTES else data.pin_memory()
        self.data = data
        self.rows = None if rows is None else torch.as_tensor(rows).to(data.device)
        self.n_samples = len(data) if rows is None else len(rows)
        self.sample_shape = tuple(data.shape[1:])

    def set_input_dtypes(self, module: torch.nn.Module) -> None:
        """As :meth:`BatchSource.set_input_dtypes`; ids outside the first layer's
        ``[0, num_embeddings)`` raise :data:`IDS_OUT_OF_RANGE` (on a GPU, torch would stop
        the process's CUDA context)."""
        super().set_input_dtypes(module)
        if not self.ids or self.data.is_floating_point() or not self.data.numel():
            return
        n = _first_layer(module).num_embeddings
        # numpy: torch has no min or max of its wider unsigned types on the CPU
        values = self.data.numpy() if self.data.device.type == "cpu" else self.data
        if int(values.min()) < 0 or int(values.max()) >= n:
            outside = (values < 0) | (values >= n)
            raise ValueError(IDS_OUT_OF_RANGE.format(
                n=n, layer=type(_first_layer(module)).__name__,
                count=int(outside.sum()), value=int(values[outside][0])))

    def keys(self, order):
        order = order.to(self.data.device)
        return order if self.rows is None else self.rows[order]

    def take(self, rows, device):
        # index_select gathers a matrix's rows several times faster than indexing, which
        # keeps images' strides (the memory format a convolution's algorithm depends on)
        data = self.data
        if data.dim() == 2 and data.is_contiguous():
            batch = torch.index_select(data, 0, rows)
        else:
            batch = data[rows]
        dtype = torch.int64 if self.ids and not data.is_floating_point() else self.dtype
        return batch.to(device, dtype=dtype, non_blocking=True)


class _SparseSource(BatchSource):
    """Rows of a sparse matrix (with ``rows``, those rows, read in place), as dense batches
    of :attr:`dtype`."""

    uniform_samples = True

    def __init__(self, X: Any, rows: np.ndarray | None = None) -> None:
        self.data = X.tocsr()
        self.rows = rows
        self.n_samples = self.data.shape[0] if rows is None else len(rows)
        self.sample_shape = (self.data.shape[1],)

    def keys(self, order):
        return order.numpy() if self.rows is None else self.rows[order.numpy()]

    def take(self, rows, device):
        wide = np.float64 if self.dtype == torch.float64 else np.float32
        dense = self.data[rows].astype(wide, copy=False).toarray()  # the batch's entries only
        return torch.from_numpy(dense).to(device, dtype=self.dtype, non_blocking=True)


def _first_element(item: Any, *, ids: bool = False,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The input of a torch Dataset's ``item``, detached, as ``dtype`` (with ``ids``, an
    integer input as int64)."""
    nested = isinstance(item, (tuple, list)) and len(item) > 0
    x = item[0] if nested else item
    if isinstance(x, np.ndarray):
        x = _as_tensor(x)
    if not torch.is_tensor(x):
        got = f"a {type(item).__name__}"
        raise TypeError(BAD_DATASET_ITEM.format(
            f"{got} whose first element is a {type(x).__name__}" if nested else got))
    integer = not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)
    return x.detach().long() if ids and integer else x.detach().to(dtype)


def _collate_inputs(items: list, *, ids: bool = False,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    inputs = [_first_element(item, ids=ids, dtype=dtype) for item in items]
    try:
        return torch.stack(inputs)
    except RuntimeError:  # the shapes are looked at only when stacking fails
        shapes = {tuple(x.shape) for x in inputs}
        if len(shapes) > 1:
            raise ValueError(DATASET_SHAPES.format(sorted(shapes))) from None
        raise


def seed_global_rngs(seed: int) -> None:
    """Seed torch's CPU generator, numpy's legacy global generator (the one ``np.random.*``
    draws from) and Python's ``random`` with ``seed``."""
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    random.seed(seed)


@contextlib.contextmanager
def kept_global_rngs() -> Iterator[None]:
    """Put torch's CPU, numpy's and Python's global generators back as they were when the
    block ends (CUDA's are not touched)."""
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)  # noqa: NPY002
            random.setstate(python_state)


@contextlib.contextmanager
def fixed_global_rngs(seed: int = 0) -> Iterator[None]:
    """Seed the global generators with ``seed`` for the block (:func:`seed_global_rngs`),
    then put them back: a Dataset with a random transform gives the same items on every
    read, and reading them draws nothing from the caller's generators."""
    with kept_global_rngs():
        seed_global_rngs(seed)
        yield


class _SeededItems(torch.utils.data.Dataset):
    """``dataset`` read by ``(index, seed)`` keys, the reading process's global generators
    seeded with ``seed`` before each item: a random transform draws what its key says,
    whichever process reads it and whatever it read before."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        # reading a TensorDataset draws nothing: skip the seeding (about 8 us an item)
        self.draws = type(dataset) is not torch.utils.data.TensorDataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        if self.draws:
            seed_global_rngs(seed)
        return self.dataset[index]


_DONE = object()


def _each_in_kept_rngs(batches: Iterator[Any]) -> Iterator[Any]:
    """The items of ``batches``, each one read inside :func:`kept_global_rngs`."""
    while True:
        with kept_global_rngs():
            batch = next(batches, _DONE)
        if batch is _DONE:
            return
        yield batch


class _DatasetSource(BatchSource):
    """A torch Dataset read through one DataLoader per batch size, kept for the whole fit.

    The loader's sampler, a list, is refilled with each pass's order, so persistent workers
    start once. Each pass draws one number from torch's global generator and reads the
    item at position ``k`` with that number plus ``k`` as its seed (:class:`_SeededItems`):
    the draws are those of the generators' states, which a checkpoint holds, for every
    ``num_workers``. Without workers, the global generators are put back after each batch.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, num_workers: int,
                 device: torch.device) -> None:
        self.dataset = dataset
        self.items = _SeededItems(dataset)
        self.num_workers = num_workers
        self.pin_memory = device.type == "cuda"
        self.n_samples = len(dataset)  # type: ignore[arg-type]
        with fixed_global_rngs():
            self.sample_shape = (tuple(_first_element(dataset[0]).shape) if self.n_samples
                                 else ())
        self._loaders: dict[int, tuple[torch.utils.data.DataLoader, list]] = {}

    def _loader(self, batch_size: int) -> tuple[torch.utils.data.DataLoader, list]:
        if batch_size not in self._loaders:
            sampler: list[tuple[int, int]] = []
            loader = torch.utils.data.DataLoader(
                self.items, batch_size=batch_size, sampler=sampler,
                num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                collate_fn=functools.partial(_collate_inputs, ids=self.ids, dtype=self.dtype),
                pin_memory=self.pin_memory,
                generator=torch.Generator(),  # its seeds are not the global generator's
            )
            self._loaders[batch_size] = (loader, sampler)
        return self._loaders[batch_size]

    def batches(self, order, batch_size, device):
        loader, sampler = self._loader(batch_size)
        first = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        sampler[:] = [(i, first + k) for k, i in enumerate(order.tolist())]
        in_main = self.num_workers == 0 and self.items.draws  # reading draws here
        loaded = _each_in_kept_rngs(iter(loader)) if in_main else iter(loader)
        for start, x in zip(range(0, len(order), batch_size), loaded, strict=True):
            yield x.to(device, non_blocking=True), order[start : start + batch_size]

    def close(self) -> None:
        """Stop the loaders' worker processes now, not when the garbage collector gets to
        them (a failed fit's traceback holds the batch iterator)."""
        for loader, _ in self._loaders.values():
            # the persistent iterator's shutdown, which torch's own __del__ calls
            shutdown = getattr(getattr(loader, "_iterator", None), "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        self._loaders.clear()


BAD_TOKEN_IDS = "TokenizedText ids must be a 1-D array of integers from 0 to 2**31 - 1; {problem}."
BAD_TOKEN_OFFSETS = (
    "TokenizedText offsets must be a 1-D array of integers that starts at 0, never decreases "
    "and ends at the number of ids ({n_ids}); {problem}."
)
BAD_PAD_TOKEN = "TokenizedText pad_token_id must be a non-negative integer; got {value!r}."
_INT32_MAX = 2**31 - 1


def _integers(values: Any, what: str, **fields: Any) -> np.ndarray:
    """``values`` as a 1-D integer array; else a ``ValueError`` of message ``what``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(what.format(problem=f"got {array.ndim} dimensions", **fields))
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(what.format(problem=f"got dtype {array.dtype}", **fields))
    return array


class TokenizedText:
    """Token ids of many texts, stored end to end (no padding).

    Parameters
    ----------
    ids : ndarray of int32
        All token ids, text after text.
    offsets : ndarray of int64 of shape (n_texts + 1,)
        Text ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.
    pad_token_id : int
        Id used to pad a batch.

    Raises
    ------
    ValueError
        If ``ids`` are not integers from 0 to ``2**31 - 1``, or ``offsets`` do not cut
        them into texts (they must start at 0, never decrease and end at ``len(ids)``).
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, *, pad_token_id: int) -> None:
        ids = _integers(ids, BAD_TOKEN_IDS)
        if ids.size and (ids.min() < 0 or ids.max() > _INT32_MAX):
            raise ValueError(BAD_TOKEN_IDS.format(
                problem=f"they range from {ids.min()} to {ids.max()}"))
        offsets = _integers(offsets, BAD_TOKEN_OFFSETS, n_ids=len(ids))
        problem = None
        if not offsets.size:
            problem = "they are empty"
        elif offsets[0] != 0 or offsets[-1] != len(ids):
            problem = f"they run from {offsets[0]} to {offsets[-1]}"
        elif (falls := np.flatnonzero(np.diff(offsets) < 0)).size:
            problem = f"they decrease after text {int(falls[0])}"
        if problem is not None:
            raise ValueError(BAD_TOKEN_OFFSETS.format(n_ids=len(ids), problem=problem))
        if (isinstance(pad_token_id, (bool, np.bool_)) or not isinstance(pad_token_id, Integral)
                or pad_token_id < 0):
            raise ValueError(BAD_PAD_TOKEN.format(value=pad_token_id))
        self.ids = np.ascontiguousarray(ids, dtype=np.int32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.pad_token_id = int(pad_token_id)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Number of tokens of each text."""
        return np.diff(self.offsets)

    def __getitem__(self, index: Any) -> TokenizedText:
        """The texts at ``index`` (an integer array, a boolean mask or a slice), in order."""
        rows = np.atleast_1d(np.arange(len(self))[index]).astype(np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return TokenizedText(self.ids[positions], offsets, pad_token_id=self.pad_token_id)

    def padded(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` of texts ``rows``, padded to the longest of them."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        width = max(int(lengths.max()) if len(rows) else 0, 1)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        row_of = np.repeat(np.arange(len(rows)), lengths)
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        col = np.arange(int(lengths.sum())) - first
        source = np.repeat(starts, lengths) + col
        input_ids[row_of, col] = self.ids[source]
        mask[row_of, col] = 1
        return input_ids, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_texts={len(self)}, n_tokens={len(self.ids)})"


class TextSource(BatchSource):
    """Batches of token dicts, each padded to the longest text in the batch.

    Parameters
    ----------
    tokens : TokenizedText
    """

    def __init__(self, tokens: TokenizedText) -> None:
        self.tokens = tokens
        self.n_samples = len(tokens)
        self.sample_shape = ()

    def keys(self, order: torch.Tensor) -> np.ndarray:
        return order.numpy()

    def take(self, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of texts ``rows``, padded to their longest."""
        input_ids, mask = self.tokens.padded(rows)
        return {"input_ids": torch.from_numpy(input_ids).to(device, non_blocking=True),
                "attention_mask": torch.from_numpy(mask).to(device, non_blocking=True)}


def make_source(X: Any, *, device: torch.device, num_workers: int = 0,
                rows: np.ndarray | None = None) -> BatchSource:
    """Wrap validated inputs in a :class:`BatchSource`.

    Parameters
    ----------
    X : ndarray, scipy.sparse matrix, torch Dataset or TokenizedText
    device : torch.device
        Where batches go.
    num_workers : int
        Worker processes for torch Datasets.
    rows : ndarray of int or None
        For a dense or sparse array ``X``, the rows the source holds (None: all).
    """
    import scipy.sparse as sp

    if isinstance(X, TokenizedText):
        return TextSource(X)
    if is_torch_dataset(X):
        return _DatasetSource(X, num_workers, device)
    if sp.issparse(X):
        return _SparseSource(X, rows)
    return _TensorSource(X, device, rows)
