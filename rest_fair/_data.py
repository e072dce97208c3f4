"""Sources of input batches: dense arrays, scipy.sparse matrices, torch Datasets and text.

Every source yields the batches of a given ordering of sample indices (float tensors; for
text, dicts of token tensors), so the training loop treats in-memory arrays (indexed
directly, no per-item collation), lazily loaded datasets (through a
:class:`torch.utils.data.DataLoader`) and tokenized text the same way.
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
        For an ``IterableDataset``: batches are drawn by index, which it cannot serve.
    """
    if isinstance(X, torch.utils.data.IterableDataset):
        raise TypeError(ITERABLE_DATASET.format(type(X).__name__))
    return isinstance(X, torch.utils.data.Dataset) and not torch.is_tensor(X)


class BatchSource:
    """Base class: yields input batches for an ordering of sample indices.

    A subclass implements :meth:`batches`, or :meth:`take`, which builds one batch from
    its slice of :meth:`keys` (the order converted once per pass, not once per batch).
    :attr:`uniform_samples` is true where every sample has the same shape, so that what a
    batch costs grows with its number of samples only.
    """

    uniform_samples: bool = False
    ids: bool = False
    """Whether the samples of an integer array or integer Dataset items come as int64 token
    ids (for a network that :func:`reads_ids`) instead of :attr:`dtype`; set by
    :meth:`set_input_dtypes` before the first batch."""
    dtype: torch.dtype = torch.float32
    """The dtype of the samples other than token ids: the network's :func:`input_dtype`;
    set by :meth:`set_input_dtypes` before the first batch."""

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
        """Give integer inputs as token ids where ``module`` :func:`reads_ids`, and other
        inputs in its :func:`input_dtype` (sets :attr:`ids` and :attr:`dtype`)."""
        self.ids = reads_ids(module)
        self.dtype = input_dtype(module)


def _first_layer(module: torch.nn.Module) -> torch.nn.Module | None:
    """``module``'s first module without children, in registration order."""
    return next((m for m in module.modules() if next(m.children(), None) is None), None)


def reads_ids(module: torch.nn.Module) -> bool:
    """Whether ``module``'s first layer (the first module without children, in registration
    order) is an ``nn.Embedding`` or ``nn.EmbeddingBag``: it reads integer token ids."""
    return isinstance(_first_layer(module), (torch.nn.Embedding, torch.nn.EmbeddingBag))


def input_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype ``module`` reads inputs in: its first parameter's where that is a floating
    dtype (a network converted with ``.double()`` or ``.bfloat16()`` computes in it), else
    float32."""
    first = next(module.parameters(), None)
    return first.dtype if first is not None and first.is_floating_point() else torch.float32


def _shareable(array: np.ndarray) -> bool:
    """Whether torch may share ``array``'s memory: writeable, with no negative stride."""
    return array.flags.writeable and min(array.strides, default=0) >= 0


def _as_tensor(array: np.ndarray, *, only_read: bool = False) -> torch.Tensor:
    """``array`` as a CPU tensor of its strides' axis order.

    A :func:`_shareable` array shares its memory. Torch takes no array with a negative
    stride (``X[::-1]``, ``np.flip``) and only warns of a read-only one; these are copied
    (as ``np.array(order="K")`` lays them out), so the tensor never writes to memory the
    caller gave as read-only. With ``only_read`` (nothing will write to the tensor), a
    read-only array without negative strides (a memory map, ``writeable=False``) is shared
    too, taken through DLPack, without ``from_numpy``'s warning. An array of the other
    byte order (``">f4"`` on a little-endian machine), which torch takes not, is copied to
    the native one.
    """
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if only_read and min(array.strides, default=0) >= 0 and not array.flags.writeable:
        return torch.from_dlpack(array)
    if not _shareable(array):
        array = np.array(array, order="K", copy=True)
    return torch.from_numpy(array)


class _TensorSource(BatchSource):
    """Rows of an array, as batches of :attr:`dtype` (an integer array's as int64 with
    :attr:`ids`).

    A float32 array is shared, not copied, also a read-only one (a memory map): batches are
    gathered into new memory, and nothing writes to it. On the CPU, an array of another
    dtype (float64) without negative strides is read in place and each batch is converted
    to :attr:`dtype` when it is taken, so a pass over it (``predict``) never holds a float32
    copy of the whole array. With ``rows``, the source holds those rows of the array, read in
    place on the CPU (sample ``i`` is row ``rows[i]``); on another device, it copies those
    rows only. An integer array keeps its dtype, and is
    converted batch by batch on every device (unsigned ones of more than 8 bits, which
    torch supports in few operations, are held as int64 off the CPU).
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
        """As :meth:`BatchSource.set_input_dtypes`; integer ids outside the first layer's
        ``[0, num_embeddings)`` raise :data:`IDS_OUT_OF_RANGE` (torch names no input, and
        on a GPU stops the process's CUDA context)."""
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
        # index_select gathers the rows of a matrix several times faster than advanced
        # indexing; images keep advanced indexing, whose result keeps the array's strides
        # (the memory format a convolution chooses its algorithm by)
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
        block = self.data[rows].astype(wide, copy=False)  # the batch's entries only
        dense = np.zeros(block.shape, dtype=wide)
        block.toarray(out=dense)
        return torch.from_numpy(dense).to(device, dtype=self.dtype, non_blocking=True)


def _first_element(item: Any, *, ids: bool = False,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The input of a torch Dataset's ``item``, as data of ``dtype`` (detached: a tensor
    that requires grad, computed by a module outside ``torch.no_grad()``, is read as data);
    with ``ids``, an integer input as int64."""
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
    """Seed torch's CPU, numpy's and Python's global generators with ``seed`` for the
    block (:func:`seed_global_rngs`), and put them back as they were after it.

    A Dataset whose items pass through a random transform (a random crop, a flip) then
    gives the same items on every read, and reading them draws nothing from the caller's
    generators.
    """
    with kept_global_rngs():
        seed_global_rngs(seed)
        yield


class _SeededItems(torch.utils.data.Dataset):
    """``dataset`` read by ``(index, seed)`` keys: before each item, the global generators
    of the reading process (torch's CPU one, numpy's and Python's) are seeded with ``seed``.

    A random transform then draws what its key says, whichever process reads it (a worker,
    or the main process without workers) and however many items it read before (also in an
    earlier fit whose run this one resumes).
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        # a TensorDataset's items are rows of its tensors: reading one draws nothing, so the
        # seeding (about 8 us an item, more than the read) is skipped
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

    The loader's sampler, a list, is refilled with each epoch's order, so worker processes
    (``persistent_workers``) are started once rather than at every epoch and validation.
    Items are read by ``(index, seed)`` (:class:`_SeededItems`): each pass draws one number
    from torch's global generator, in the main process, and the item at position ``k`` of
    the pass is read with that number plus ``k`` as its seed. The draws of a run are then
    those of its generators' states, which a checkpoint holds, and the same for every
    ``num_workers``; the workers' own generators draw nothing that counts. Without workers
    the main process reads the items, and its global generators are put back after each
    batch, so reading draws nothing from them either.
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
            workers = self.num_workers > 0
            loader = torch.utils.data.DataLoader(
                self.items,
                batch_size=batch_size,
                sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=functools.partial(_collate_inputs, ids=self.ids, dtype=self.dtype),
                pin_memory=self.pin_memory,
                persistent_workers=workers,
                # the loader's own seed, drawn for each iterator, is not drawn from the
                # global generator
                generator=torch.Generator(),
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
        """Stop the loaders' worker processes now.

        Dropping the loaders would leave it to the garbage collector, which a failed fit
        delays: its traceback still holds the batch iterator, and with it the workers.
        """
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
        rows = np.arange(len(self))[index]
        rows = np.atleast_1d(rows).astype(np.int64)
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
        Inputs, already validated.
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
