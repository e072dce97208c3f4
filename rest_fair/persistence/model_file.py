"""Compressed, pickle-free model files.

A file is a zip archive of ``.npy`` arrays (numpy's ``.npz`` layout, deflate-compressed)
read with ``allow_pickle=False``. It holds

- ``__header__``: UTF-8 JSON with the format name and version, how each tensor is
  encoded, and what the writer adds: ``"kind": "module"`` with the metadata of
  :func:`save`, or ``"kind": "estimator"`` with the state that
  :meth:`RESTClassifier.save <rest_fair.RESTClassifier.save>` supplies (this module only
  writes and reads a network, its masks, a header and extra arrays: :func:`write`,
  :func:`read`, :func:`read_module`);
- one or more arrays per tensor: a masked weight stores its **active** values plus its
  mask, as a packed bitmap (1 bit per weight) or, when smaller at very low density, as CSR
  indices (uint16 columns where they fit); other tensors are stored as they are;
- ``__sha256__``: SHA-256 of the header and every array (name, dtype, shape, bytes).

The checksum catches corruption and careless edits, not a forger who recomputes it. An
untrusted file is safe to load because of the format and of checks made before anything
is allocated; a file that breaks any of them is refused with :class:`ModelFileError`,
naming the problem:

- no code from the file runs: no pickle (object arrays are refused), no imports named by
  the file; only the built-in networks of :mod:`rest_fair.models` are rebuilt, without
  pretrained ``module_params["weights"]`` (neither downloaded nor read);
- every member is a plain ``<name>.npy`` named once, stored or deflated, unencrypted, of
  a plain dtype (numbers, bools, fixed-size strings, dates), declaring at most deflate's
  1032-fold of its compressed size, and exactly the bytes its ``.npy`` header declares;
- the JSON header is at most :data:`MAX_HEADER_BYTES`; arrays encoded in it have plain
  dtypes, and a string array wider than 64 bytes a value and than its values need is read
  in the width they need;
- every tensor's arrays have exactly the dtypes and shapes of its header entry (checked
  from the ``.npy`` headers before they are read), its CSR indices are in range and in
  order, its mask holds as many weights as its values; the network the header names is
  built on the meta device and must have exactly the header's tensors before any is
  decoded.

Decoding still allocates the dense tensors of the network the file names, which for a
very sparse layer stored as CSR may be far larger than the file;
``load(path, max_parameters=...)`` bounds it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import io
import json
import math
import os
import re
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from numbers import Integral
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import POSITIVE_INT
from ..exceptions import ModelFileError
from ..models import MODULE_NAMES, build_module
from ..sparse.checks import check_masks
from .files import atomic_write

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "ModelFileError",
    "check_max_parameters",
    "from_json",
    "load",
    "malformed",
    "mapping_to_json",
    "opened",
    "read",
    "read_module",
    "register_estimator_class",
    "save",
    "shape_differences",
    "to_json",
    "write",
]

#: Name written in the header of every model file.
FORMAT_NAME = "rest_fair.model"
#: Version of the model-file format written by :func:`save`; :func:`load` refuses newer ones.
FORMAT_VERSION = 1
#: Largest JSON header (in bytes) that :func:`write` writes and :func:`read` reads.
MAX_HEADER_BYTES = 16 * 2**20

#: Deflate never expands data more than 1032-fold: a member declaring more is refused.
_DEFLATE_MAX_RATIO = 1032
_MEMBER_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*\.npy")
#: Kinds of numpy dtypes a member may have: numbers, bools, fixed-size strings, dates.
_ARRAY_KINDS = "biufcUSMm"
#: The ``.npy`` header readers of the format versions numpy writes for such arrays.
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}

_ZIP_MAGIC = b"PK\x03\x04"
_NOT_OURS = (
    "{path} is not a rest_fair model file: it does not start with a zip signature "
    "(a pickle, torch or other file?). It was not loaded; no code from it was run."
)
_CORRUPT = "{path} is corrupted or truncated and cannot be read ({error})."
_PICKLED = (
    "{path} holds pickled Python objects, which a rest_fair model file never does; they were "
    "not loaded and no code from the file was run."
)
_BAD_CHECKSUM = (
    "{path} failed its SHA-256 check: the file was modified or damaged after it was saved."
)
_BAD_HEADER = "{path} has no valid rest_fair header ({error})."
_BAD_ARCHIVE = "{path} is damaged or was not written by rest_fair, and was not loaded: {error}."
_CONCATENATED = (
    "its archive is not at its start: other bytes come first, such as another model file "
    "written to the same stream before it (each file is read from its position to its end)"
)
_LARGE_HEADER = (
    "cannot save a header of {size} bytes; a model file's header holds at most "
    "MAX_HEADER_BYTES = {limit} bytes (large arrays belong in the file's arrays)."
)
_NEWER = "{path} uses format version {version}; this rest_fair reads versions <= {ours}."
_TOO_MANY_VALUES = (
    "{path} holds a network of {count} values (weights, biases and buffers), more than "
    "max_parameters={limit}; nothing was allocated for it."
)
_BAD_MAX_PARAMETERS = "max_parameters must be a positive int or None; got {value!r}."
_BAD_PAYLOAD = "{path} holds an inconsistent tensor {name!r}: {error}."
_BAD_OBJECT = (
    "save() takes a fitted RESTClassifier or a tuple (module, masks, metadata); "
    "got {type}."
)
_NOT_JSON = "cannot save {what}: value of type {type} is not a plain JSON-able value."
_PLAIN_SUBCLASS = (
    "cannot save {what}: {value!r}, of type {type}, would be written, and read back, as "
    "the {base} {plain!r} (loading imports no class that a file names); use {plain!r}."
)
_NEED_MODULE = (
    "{path} holds the weights of a {cls} without a built-in architecture; pass "
    "load(path, module=<an instance of it>) to load them."
)
_PART_ARCHITECTURE = (
    "{path} names the built-in network {name!r} but its metadata lacks {missing}, which "
    "rebuilding it needs; pass load(path, module=<an instance of it>) to load the weights."
)
_BAD_DTYPE = "unsupported tensor dtype {dtype} in {path}."
_TEXT_MODE = (
    "{name} is open in text mode; a model file is {done} a binary file (open(path, '{mode}'))."
)
_BAD_METADATA = "metadata must be a dict of plain JSON-able values or None; got {type}."
_LOAD_ESTIMATOR = (
    "load(path) of a file holding a fitted estimator is deprecated and will stop working in "
    "a future release: use RESTClassifier.load(path)."
)
_REGISTER_ESTIMATOR = (
    "register_estimator_class is deprecated and does nothing: an estimator class reads "
    "its own files (RESTClassifier.load(path)). It will be removed in a future release."
)

#: The tensor dtypes a model file holds, by name.
_DTYPES = {name: getattr(torch, name) for name in (
    "float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64",
    "bool")}


def register_estimator_class(cls: type) -> type:
    """Deprecated, does nothing: an estimator class reads its own files. Returns ``cls``."""
    warnings.warn(_REGISTER_ESTIMATOR, FutureWarning, stacklevel=2)
    return cls


# ----------------------------------------------------------------- plain JSON values
def to_json(value: Any, what: str) -> Any:
    """``value`` as plain JSON (tuples, devices, arrays, dense tensors of the dtypes model
    files hold, bytes, dates, times and durations of ``datetime``, numpy and pandas, and
    non-string keys tagged: :func:`from_json` gives them back exactly, of the same types).

    Raises
    ------
    TypeError
        If ``value`` holds anything else (also a subclass of ``int``, ``float`` or ``str``
        other than numpy's, such as an ``IntEnum`` member), or a date whose time zone would
        not read back as itself (one other than a fixed offset, for a ``datetime`` value);
        the message names ``what``.
    ValueError
        If ``value`` holds an array of a dtype that :func:`from_json` refuses (structured,
        sub-array or void dtypes).
    """
    if value is None or type(value) in (bool, str, int, float):
        return value
    encoded = _tagged(value, what)
    if encoded is not None:
        return encoded
    if isinstance(value, np.generic):
        return to_json(value.item(), what)
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if (isinstance(value, torch.Tensor) and value.layout == torch.strided
            and str(value.dtype).removeprefix("torch.") in _DTYPES):  # a value in a record
        return {"__tensor__": value.detach().cpu().tolist(),
                "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v, what) for v in value]}
    if isinstance(value, list):
        return [to_json(v, what) for v in value]
    if isinstance(value, np.ndarray):
        dtype = "object" if value.dtype == object else value.dtype.str
        data = [to_json(v, what) for v in value.tolist()]
        if dtype != "object":
            _json_dtype(dtype, data)
        return {"__ndarray__": data, "dtype": dtype}
    if isinstance(value, Mapping):
        return mapping_to_json([(k, to_json(v, what)) for k, v in value.items()], what)
    base = next((t for t in (int, float, str) if isinstance(value, t)), None)
    if base is not None:
        raise TypeError(_PLAIN_SUBCLASS.format(what=what, value=value, type=type(value).__name__,
                                               base=base.__name__,
                                               plain=json.loads(json.dumps(value))))
    raise TypeError(_NOT_JSON.format(what=what, type=type(value).__name__))


def mapping_to_json(items: list[tuple[Any, Any]], what: str) -> dict:
    """The plain JSON of a mapping, as :func:`to_json` writes it, from its keys and the
    :func:`to_json` forms of their values (``items``): keys that are not strings (or that
    start with ``__``) are tagged.

    Raises
    ------
    TypeError
        If a key is not a plain value; the message names ``what``.
    """
    if all(isinstance(k, str) and not k.startswith("__") for k, _ in items):
        return dict(items)
    return {"__dict__": [[to_json(k, what), v] for k, v in items]}


def from_json(value: Any) -> Any:
    """The value that :func:`to_json` encoded.

    Raises
    ------
    ValueError
        If an encoded array or tensor names a dtype that :func:`to_json` does not write.
    """
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(from_json(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {_hashable(from_json(k)): from_json(v) for k, v in value["__dict__"]}
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__tensor__" in value:
        dtype = _DTYPES.get(value.get("dtype"))
        if dtype is None:
            raise ValueError(f"{value.get('dtype')!r:.80} is not the dtype of a tensor")
        return torch.tensor(value["__tensor__"], dtype=dtype)
    if "__ndarray__" in value:
        data = from_json(value["__ndarray__"])
        dtype = value.get("dtype", "object")
        return np.array(data, dtype=object if dtype == "object" else _json_dtype(dtype, data))
    tag = next((tag for tag in _TAGGED if tag in value), None)
    if tag is not None:
        try:
            return _TAGGED[tag][3](value[tag])
        except (TypeError, ValueError, OverflowError, LookupError, AttributeError) as exc:
            raise ValueError(f"{value[tag]!r:.80} is not a {tag} value ({exc})") from None
    return {k: from_json(v) for k, v in value.items()}


def _pandas() -> Any:
    import pandas as pd  # imported only to read a file holding a pandas value

    return pd


def _timestamp(value: list) -> Any:
    stamp = _pandas().Timestamp(value[0]).as_unit(value[1])
    return stamp if value[2] is None else stamp.tz_convert(value[2])


def _datetime64(value: list) -> np.generic:
    dtype = np.dtype(value[1])
    if dtype.kind not in "Mm":
        raise ValueError(f"{dtype} is not a numpy date or duration dtype")
    return np.array(value[0], dtype=np.int64).view(dtype)[()]


def _as_int64(value: np.generic) -> list:
    return [int(value.view(np.int64)), value.dtype.str]


#: Values JSON cannot hold (bytes, dates, times, durations) by tag: (module, type, encode,
#: decode). :func:`to_json` writes values of exactly these types (a subclass is not one).
_TAGGED: dict[str, tuple[str, str, Callable, Callable]] = {
    "__bytes__": ("builtins", "bytes", lambda v: v.decode("latin-1"),
                  lambda v: v.encode("latin-1")),
    "__date__": ("datetime", "date", datetime.date.isoformat, datetime.date.fromisoformat),
    "__datetime__": ("datetime", "datetime", datetime.datetime.isoformat,
                     datetime.datetime.fromisoformat),
    "__time__": ("datetime", "time", datetime.time.isoformat, datetime.time.fromisoformat),
    "__timedelta__": ("datetime", "timedelta", lambda v: [v.days, v.seconds, v.microseconds],
                      lambda v: datetime.timedelta(*v)),
    "__datetime64__": ("numpy", "datetime64", _as_int64, _datetime64),
    "__timedelta64__": ("numpy", "timedelta64", _as_int64, _datetime64),
    "__timestamp__": ("pandas", "Timestamp",
                      lambda v: [v.isoformat(), v.unit, None if v.tz is None else str(v.tz)],
                      _timestamp),
    "__pd_timedelta__": ("pandas", "Timedelta", lambda v: [v.isoformat(), v.unit],
                         lambda v: _pandas().Timedelta(v[0]).as_unit(v[1])),
    "__period__": ("pandas", "Period", lambda v: [str(v), v.freqstr],
                   lambda v: _pandas().Period(v[0], freq=v[1])),
}


def _tagged(value: Any, what: str) -> dict | None:
    """``value`` tagged as :data:`_TAGGED` writes it, or None for a value of another type;
    a TypeError if it would not read back as itself (its type, time zone and every digit)."""
    for tag, (module, name, encode, _) in _TAGGED.items():
        if type(value) is getattr(sys.modules.get(module), name, None):
            encoded = {tag: encode(value)}
            try:
                back = from_json(encoded)
            except ValueError:
                back = None
            if (type(back) is not type(value) or encode(back) != encoded[tag]
                    or str(getattr(back, "tzinfo", None)) != str(getattr(value, "tzinfo", None))):
                raise TypeError(f"cannot save {what}: {value!r:.80} would not read back as "
                                "itself (a time zone other than a fixed offset?).")
            return encoded
    return None


def _json_dtype(spec: Any, data: Any) -> np.dtype:
    """The dtype to decode an encoded array of dtype ``spec`` holding ``data`` with.

    ``spec`` itself (a ValueError unless it is :func:`_plain`), except for a string dtype
    of more than 64 bytes per value that is wider than ``data`` needs: then the width they
    need, so that a header cannot make an array much larger than itself.
    """
    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or not _plain(dtype):
        raise ValueError(f"{spec!r:.80} is not the dtype of an array of plain values")
    if dtype.kind in "US" and dtype.itemsize > 64:
        needed = np.array(data, dtype=dtype.kind).dtype
        if dtype.itemsize > needed.itemsize:
            return needed.newbyteorder(dtype.byteorder)
    return dtype


def _plain(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is one of plain values (not structured, sub-array or void)."""
    return dtype.kind in _ARRAY_KINDS and dtype.fields is None and dtype.subdtype is None


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


# --------------------------------------------------------------- tensor encodings
def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy()


def _encode(
    name: str, tensor: torch.Tensor, mask: torch.Tensor | None, index: int
) -> tuple[dict, dict[str, np.ndarray]]:
    dtype = str(tensor.dtype).removeprefix("torch.")
    entry: dict[str, Any] = {"name": name, "dtype": dtype, "shape": list(tensor.shape)}
    key = f"t{index}"
    if mask is None:
        entry["encoding"] = "dense"
        return entry, {f"{key}.data": _to_numpy(tensor)}
    mask_np = mask.detach().cpu().numpy().astype(bool)
    flat = tensor.detach().cpu().reshape(-1)
    values = _to_numpy(flat[torch.from_numpy(mask_np.reshape(-1))])
    arrays = {f"{key}.values": values}
    n = mask_np.size
    nnz = int(mask_np.sum())
    rows = tensor.shape[0] if tensor.dim() >= 1 else 1
    cols = n // rows if rows else 0
    col_dtype = np.uint16 if cols <= np.iinfo(np.uint16).max + 1 else np.uint32
    csr_bytes = (rows + 1) * 4 + nnz * np.dtype(col_dtype).itemsize
    if csr_bytes < (n + 7) // 8:
        m2 = mask_np.reshape(rows, cols)
        crow = np.zeros(rows + 1, dtype=np.uint32)
        crow[1:] = np.cumsum(m2.sum(axis=1))
        arrays[f"{key}.crow"] = crow
        arrays[f"{key}.col"] = np.nonzero(m2)[1].astype(col_dtype)
        entry["encoding"] = "csr"
    else:
        arrays[f"{key}.bitmap"] = np.packbits(mask_np.reshape(-1))
        entry["encoding"] = "bitmap"
    entry["nnz"] = nnz
    return entry, arrays


def _storage_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype that :func:`_to_numpy` gives a tensor of ``dtype``."""
    return _to_numpy(torch.empty(0, dtype=dtype)).dtype


def _layout(
    entry: Any, key: str, path: str
) -> tuple[str, torch.dtype, tuple[int, ...], dict[str, tuple[np.dtype | None, tuple[int, ...]]]]:
    """The name, dtype and shape of a tensor entry of the header, and the arrays that hold it
    by member name, with the dtype (``None``: any integer dtype) and shape that
    :func:`_encode` writes for such an entry; a ModelFileError for an entry it does not write.
    """
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise ModelFileError(_BAD_HEADER.format(path=path, error=f"tensor entry {key} has no name"))
    name = entry["name"]
    spec = entry.get("dtype")
    dtype = _DTYPES.get(spec) if isinstance(spec, str) else None
    if dtype is None:
        raise ModelFileError(_BAD_DTYPE.format(dtype=spec, path=path))
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad_payload(path, name, f"shape {shape!r:.80} is not a list of non-negative "
                           "integers")
    shape = tuple(shape)
    n = math.prod(shape)
    storage = _storage_dtype(dtype)
    encoding = entry.get("encoding")
    if encoding == "dense":
        return name, dtype, shape, {f"{key}.data": (storage, shape)}
    nnz = entry.get("nnz")
    if type(nnz) is not int or not 0 <= nnz <= n:
        raise _bad_payload(path, name, f"nnz {nnz!r:.40} is not a count of at most {n} values")
    arrays: dict[str, tuple[np.dtype | None, tuple[int, ...]]] = {
        f"{key}.values": (storage, (nnz,))}
    if encoding == "bitmap":
        arrays[f"{key}.bitmap"] = (np.dtype(np.uint8), ((n + 7) // 8,))
    elif encoding == "csr":
        arrays[f"{key}.crow"] = (None, ((shape[0] if shape else 1) + 1,))
        arrays[f"{key}.col"] = (None, (nnz,))
    else:
        raise _bad_payload(path, name, f"unknown encoding {encoding!r:.40}")
    return name, dtype, shape, arrays


def _check_layout(
    name: str,
    needed: Mapping[str, tuple[np.dtype | None, tuple[int, ...]]],
    found: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
    path: str,
) -> None:
    """Refuse ``found`` (dtype and shape by member) unless it holds the ``needed`` arrays."""
    for member, (dtype, shape) in needed.items():
        if member not in found:
            error = f"its array {member!r} is missing"
        else:
            have_dtype, have_shape = found[member]
            ok_dtype = have_dtype.kind in "iu" if dtype is None else have_dtype == dtype
            if ok_dtype and tuple(have_shape) == shape:
                continue
            error = (f"its array {member!r} is {have_dtype.str} of shape {tuple(have_shape)}, "
                     f"not {'integers' if dtype is None else dtype.str} of shape {shape}")
        raise _bad_payload(path, name, error)


def _bad_payload(path: str, name: str, error: str) -> ModelFileError:
    return ModelFileError(_BAD_PAYLOAD.format(path=path, name=name, error=error))


def _decode(
    entry: Any, arrays: Mapping[str, np.ndarray], key: str, path: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    name, dtype, shape, _ = _layout(entry, key, path)  # its arrays checked by the caller
    n = math.prod(shape)

    def tensor_of(arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(arr, copy=True))
        return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t

    if entry["encoding"] == "dense":
        return tensor_of(arrays[f"{key}.data"]), None
    values = arrays[f"{key}.values"]
    if entry["encoding"] == "bitmap":
        mask = np.unpackbits(arrays[f"{key}.bitmap"], count=n).astype(bool)
    else:
        crow = arrays[f"{key}.crow"].astype(np.int64)
        col = arrays[f"{key}.col"].astype(np.int64)
        rows = shape[0] if shape else 1
        cols = n // rows if rows else 0
        if crow[0] != 0 or crow[-1] != col.size or np.any(np.diff(crow) < 0):
            raise _bad_payload(path, name, "invalid CSR row pointers")
        if col.size and (col.min() < 0 or col.max() >= cols):
            raise _bad_payload(path, name, f"a CSR column index is outside [0, {cols})")
        flat = np.repeat(np.arange(rows, dtype=np.int64), np.diff(crow)) * cols + col
        if np.any(np.diff(flat) <= 0):  # the values follow the mask in row-major order
            raise _bad_payload(path, name,
                               "CSR column indices not strictly increasing within a row")
        mask = np.zeros(n, dtype=bool)
        mask[flat] = True
    if int(mask.sum()) != values.size:
        raise _bad_payload(path, name, "mask and values disagree")
    mask_t = torch.from_numpy(mask)
    full = torch.zeros(n, dtype=dtype)
    full[mask_t] = tensor_of(values)
    return full.reshape(shape), mask_t.reshape(shape)


def _digest(header_bytes: bytes, arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(header_bytes)
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(arr.dtype.str.encode())
        h.update(repr(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------- saving
def write(
    path: Any,
    module: nn.Module,
    masks: Mapping[str, torch.Tensor] | None,
    header: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray] | None = None,
) -> int:
    """Write ``module``'s state dict and ``masks`` (a dict of bool tensors by state-dict
    name, or None: a layer training in CSR form has its dense weight there, not among its
    parameters), the plain JSON values of ``header`` beside the format's own keys, and
    further ``arrays`` by member name; returns the file size in bytes.

    ``path`` names the file (a leading ``~`` is the home folder), replaced atomically
    (:func:`~.files.atomic_write`), or is a binary file object, written to from its current
    position.

    Raises
    ------
    TypeError
        If ``path`` is neither (an int would name an open file descriptor) or is open in
        text mode, or a mask is not a bool tensor.
    KeyError
        If a mask names no tensor of the state dict, or a buffer.
    ValueError
        If the header's JSON is longer than :data:`MAX_HEADER_BYTES`, or a mask's shape
        is not its tensor's.
    """
    to_file = isinstance(path, (str, bytes, os.PathLike)) or not hasattr(path, "write")
    if to_file:
        path = os.path.expanduser(os.fspath(path))
    masks = dict(masks or {})
    state, buffers = module.state_dict(), dict(module.named_buffers())
    check_masks(module, masks,
                weights={key: t for key, t in state.items() if key not in buffers})
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **header}
    arrays = dict(arrays or {})
    entries = []
    for index, (name, tensor) in enumerate(state.items()):
        entry, arrs = _encode(name, tensor, masks.get(name), index)
        entries.append(entry)
        arrays.update(arrs)
    header["tensors"] = entries
    header["masks"] = sorted(masks)
    header_bytes = json.dumps(header, allow_nan=True).encode("utf-8")  # keys in their order
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ValueError(_LARGE_HEADER.format(size=len(header_bytes), limit=MAX_HEADER_BYTES))
    digest = _digest(header_bytes, arrays)
    arrays["__header__"] = np.frombuffer(header_bytes, dtype=np.uint8)
    arrays["__sha256__"] = np.frombuffer(digest.encode("ascii"), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    data = buffer.getvalue()
    if to_file:
        atomic_write(path, data)
    else:
        try:
            path.write(data)
        except TypeError as exc:  # a text-mode file takes str, and wrote nothing
            name = getattr(path, "name", None)
            raise TypeError(_TEXT_MODE.format(
                name=os.fsdecode(name) if isinstance(name, (str, bytes)) else "<file object>",
                done="written to", mode="wb")) from exc
    return len(data)


def save(obj: Any, path: Any) -> int:
    """Write a module with its masks, or a fitted estimator, to a compressed file.

    Parameters
    ----------
    obj : tuple (module, masks, metadata) or RESTClassifier
        ``(module, masks, metadata)`` with ``masks`` a dict of bool tensors (or ``None``)
        and ``metadata`` a dict of plain JSON-able values (or ``None``). If ``metadata``
        holds ``"module"`` (a built-in name), ``"input_shape"``, ``"n_classes"`` and
        optionally ``"module_params"``, :func:`load` rebuilds the module by itself. An
        estimator (an object with ``get_params`` and ``save``) writes itself:
        ``save(clf, path)`` is ``clf.save(path)``.
    path : str, bytes, path-like or binary file object
        Destination file (conventionally ``*.rest``; a leading ``~`` is the home folder),
        replaced only once the new content is complete; or a file object opened for binary
        writing (``open(name, "wb")``, ``io.BytesIO()``), written to from its current
        position.

    Returns
    -------
    int
        Size of the written file in bytes.
    """
    if isinstance(obj, tuple) and len(obj) == 3 and isinstance(obj[0], nn.Module):
        module, masks, metadata = obj
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(_BAD_METADATA.format(type=type(metadata).__name__))
        header = {
            "kind": "module",
            "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "metadata": to_json(dict(metadata or {}), "metadata"),
        }
        return write(path, module, masks, header)
    if hasattr(obj, "get_params") and hasattr(obj, "save"):
        return obj.save(path)
    raise TypeError(_BAD_OBJECT.format(type=type(obj).__name__))


# ------------------------------------------------------------------------ loading
def _members(
    archive: zipfile.ZipFile, path: str, file_size: int,
    infos: Sequence[zipfile.ZipInfo] | None = None,
) -> dict[str, tuple[zipfile.ZipInfo, np.dtype, tuple[int, ...]]]:
    """Every array of ``archive`` (``file_size`` bytes; or of its members ``infos``) by
    name, with its zip entry, dtype and shape, from the zip directory and the ``.npy``
    headers alone (no array is read); a ModelFileError for any member that breaks the
    format's rules (see the module's description).
    """
    def bad(error: str) -> ModelFileError:
        return ModelFileError(_BAD_ARCHIVE.format(path=path, error=error))

    members: dict[str, tuple[zipfile.ZipInfo, np.dtype, tuple[int, ...]]] = {}
    for info in archive.infolist() if infos is None else infos:
        name = info.filename
        if not _MEMBER_NAME.fullmatch(name):
            raise bad(f"member {name!r:.80} is not an array of a model file")
        if name[:-4] in members:
            raise bad(f"two members are named {name!r}")
        if info.flag_bits & 0x1:
            raise bad(f"member {name!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            most = info.compress_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            most = _DEFLATE_MAX_RATIO * info.compress_size
        else:
            raise bad(f"member {name!r} uses compression method {info.compress_type}")
        if info.compress_size > file_size or info.file_size > most:
            raise bad(f"member {name!r} declares {info.file_size} bytes from "
                      f"{info.compress_size} compressed bytes")
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version not in _NPY_HEADERS:
                raise bad(f"array {name!r} is in .npy format version {version}")
            shape, fortran_order, dtype = _NPY_HEADERS[version](fh)
            offset = fh.tell()
        if dtype.hasobject:
            raise ModelFileError(_PICKLED.format(path=path))
        if not _plain(dtype) or fortran_order:
            raise bad(f"array {name!r} has dtype {dtype.str}"
                      f"{' in Fortran order' if fortran_order else ''}")
        if offset + math.prod(shape) * dtype.itemsize != info.file_size:
            raise bad(f"array {name!r} declares shape {shape} of {dtype.str} but its member "
                      f"holds {info.file_size - offset} bytes of data")
        members[name[:-4]] = (info, dtype, shape)
    return members


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """The array of a member that :func:`_members` checked (its CRC-32 is checked too)."""
    with archive.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


class _InMemory(io.BytesIO):
    """The bytes of a file object given to :func:`opened`, with the name to call them by."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


def opened(path: Any) -> tuple[str, str | io.BytesIO]:
    """The name of the file ``path`` for messages, and what :func:`read` reads: the file
    name of a str, bytes or path-like ``path`` (a leading ``~`` is the home folder); of a
    binary file object (``open(name, "rb")``, ``io.BytesIO``), its bytes from its current
    position, read into memory once.

    Raises
    ------
    TypeError
        If ``path`` is neither (an int would name an open file descriptor), or is a file
        opened in text mode.
    """
    if isinstance(path, _InMemory):
        return path.name, path
    if isinstance(path, (str, bytes, os.PathLike)) or not hasattr(path, "read"):
        name = os.path.expanduser(os.fsdecode(path))
        return name, name
    given = getattr(path, "name", None)
    name = os.fsdecode(given) if isinstance(given, (str, bytes)) else f"<{type(path).__name__}>"
    try:
        data = path.read()
    except UnicodeDecodeError:  # a text-mode file (NamedTemporaryFile too, not a TextIOBase)
        data = None
    if not isinstance(data, bytes):
        raise TypeError(_TEXT_MODE.format(name=name, done="read from", mode="rb"))
    return name, _InMemory(data, name)


def read(path: Any, *, payload: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and the arrays of a file (a name or a binary file object, as
    :func:`opened` takes them), after checking its format and checksum.

    Before any array is read, the zip directory and every ``.npy`` header are checked
    against each other, the header is parsed, and every tensor it lists is checked against
    the dtypes and shapes of its arrays; then the arrays are read and the SHA-256 checked.
    With ``payload=False``, the header so checked and no arrays (``{}``), without the
    checksum.

    Raises
    ------
    ModelFileError
        If the file is not a rest_fair model file, is truncated or inconsistent, fails its
        checksum, or has a newer format version.
    """
    path, source = opened(path)
    if isinstance(source, io.BytesIO):
        start, file_size = source.getvalue()[:4], len(source.getbuffer())
    else:
        with open(source, "rb") as fh:
            start, file_size = fh.read(4), os.fstat(fh.fileno()).st_size
    if start != _ZIP_MAGIC:
        raise ModelFileError(_NOT_OURS.format(path=path))
    try:
        with zipfile.ZipFile(source) as archive:
            # zipfile reads the last archive of the bytes: two files in a stream read as the
            # second
            if min((info.header_offset for info in archive.infolist()), default=0):
                raise ModelFileError(_BAD_ARCHIVE.format(path=path, error=_CONCATENATED))
            # the header first: a newer format version is named as such
            members = _members(archive, path, file_size, [
                info for info in archive.infolist() if info.filename == "__header__.npy"])
            if not members:
                raise ModelFileError(_BAD_HEADER.format(path=path, error="no __header__"))
            _check_header_member(members, "__header__", MAX_HEADER_BYTES, path)
            header_bytes = _read_array(archive, members["__header__"][0]).tobytes()
            header = _parse_header(header_bytes, path)
            members = _members(archive, path, file_size)
            _check_header_member(members, "__sha256__", 64, path)
            found = {k: (dtype, shape) for k, (_, dtype, shape) in members.items()}
            with malformed(path):
                for index, entry in enumerate(header["tensors"]):
                    name, _, _, needed = _layout(entry, f"t{index}", path)
                    _check_layout(name, needed, found, path)
            if not payload:
                return header, {}
            digest = _read_array(archive, members["__sha256__"][0]).tobytes()
            arrays = {k: _read_array(archive, info) for k, (info, _, _) in members.items()
                      if k not in ("__header__", "__sha256__")}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError,
            RuntimeError, NotImplementedError) as exc:
        raise ModelFileError(_CORRUPT.format(path=path, error=exc)) from exc
    if _digest(header_bytes, arrays).encode("ascii") != digest:
        raise ModelFileError(_BAD_CHECKSUM.format(path=path))
    return header, arrays


def _check_header_member(members: Mapping[str, tuple[Any, np.dtype, tuple[int, ...]]],
                         name: str, size: int, path: str) -> None:
    """Refuse a member ``name`` (of :func:`_members`) that is not at most ``size`` bytes."""
    _, dtype, shape = members.get(name, (None, np.dtype(np.uint8), ()))
    if dtype != np.uint8 or len(shape) != 1 or shape[0] > size:
        raise ModelFileError(_BAD_HEADER.format(
            path=path, error=f"{name} is not at most {size} bytes"))


def _parse_header(header_bytes: bytes, path: str) -> dict:
    """The JSON header of a file, with its format name and a version this release reads."""
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(_BAD_HEADER.format(path=path, error=exc)) from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ModelFileError(_BAD_HEADER.format(path=path, error="wrong format name"))
    version = header.get("format_version")
    if not POSITIVE_INT.accepts(version):
        raise ModelFileError(_BAD_HEADER.format(
            path=path, error=f"format_version {version!r:.40} is not a positive int"))
    if version > FORMAT_VERSION:
        raise ModelFileError(_NEWER.format(path=path, version=version, ours=FORMAT_VERSION))
    return header


@contextlib.contextmanager
def malformed(path: str | os.PathLike) -> Iterator[None]:
    """Turn a missing or ill-typed header entry met inside the block into ModelFileError."""
    try:
        yield
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(_BAD_HEADER.format(path=os.fsdecode(path), error=exc)) from exc


def read_module(
    path: str | os.PathLike,
    header: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    module: nn.Module | None = None,
    architecture: Sequence[Any] | None = None,
    max_parameters: int | None = None,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The network and masks of a file that :func:`read` returned as ``header, arrays``.

    The weights go into a deep copy of ``module``, or else into the built-in network that
    ``architecture`` names, ``(name, input_shape, n_classes, module_params)``, built
    without pretrained ``module_params["weights"]``. The network is first checked against
    the file on the meta device, and every tensor's arrays against its entry, so that
    nothing is allocated for a network the file does not hold. It is returned in evaluation
    mode, on the CPU, its floating-point tensors in the dtypes the file holds (a copy of
    ``module`` keeps its device and dtypes). With ``max_parameters``, a file whose tensors
    hold more values in all (counted from its header, before anything is built) is refused.
    """
    path = os.fsdecode(path)
    check_max_parameters(max_parameters)
    with malformed(path):
        entries = list(header["tensors"])
        if max_parameters is not None:
            count = sum(math.prod(_layout(e, f"t{i}", path)[2]) for i, e in enumerate(entries))
            if count > max_parameters:
                raise ModelFileError(_TOO_MANY_VALUES.format(path=path, count=count,
                                                             limit=max_parameters))

        def build() -> nn.Module:
            if module is not None:
                return copy.deepcopy(module)
            name, input_shape, n_classes, module_params = architecture
            params = dict(module_params or {})
            if params.get("weights") is not None:  # the file holds the weights
                params["weights"] = None
            return build_module(name, input_shape=tuple(input_shape), n_classes=int(n_classes),
                                module_params=params)

        found = {e["name"]: tuple(int(d) for d in e["shape"]) for e in entries}
        with contextlib.nullcontext() if module is not None else torch.device("meta"):
            reference = module if module is not None else build()
            # a lazy layer's tensors take the file's shapes when loaded
            expected = {k: found.get(k, ("uninitialised",)) if nn.parameter.is_lazy(v)
                        else tuple(v.shape) for k, v in reference.state_dict().items()}
        details = shape_differences(found, expected, ("in the file", "in the network"))
        if details:
            raise ModelFileError(_BAD_HEADER.format(
                path=path, error="its tensors do not match the architecture it names: "
                + details))
        for index, entry in enumerate(entries):  # every tensor's arrays before decoding any
            name, _, _, needed = _layout(entry, f"t{index}", path)
            _check_layout(name, needed, {k: (arrays[k].dtype, arrays[k].shape)
                                         for k in needed if k in arrays}, path)
        state: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        for index, entry in enumerate(entries):
            tensor, mask = _decode(entry, arrays, f"t{index}", path)
            state[entry["name"]] = tensor
            if mask is not None:
                masks[entry["name"]] = mask
        net = build()
        if module is None:  # a built-in network takes the floating dtypes the file holds
            for key, tensor in net.state_dict(keep_vars=True).items():
                if tensor.is_floating_point() and state[key].is_floating_point():
                    tensor.data = tensor.data.to(state[key].dtype)
        net.load_state_dict(state, strict=True)
    return net.eval(), masks


def shape_differences(saved: Mapping[str, Sequence[int]], current: Mapping[str, Sequence[int]],
                      where: tuple[str, str]) -> str:
    """How the tensor shapes of ``saved`` and ``current`` (by name) differ, the first three
    named (``"w is (16, 6) in the file, (32, 6) in the network"``); ``""`` where they match.
    ``where`` names the two sides."""
    def shape(shapes: Mapping[str, Sequence[int]], key: str) -> Any:
        return tuple(shapes[key]) if key in shapes else "missing"

    keys = [*current, *(key for key in saved if key not in current)]
    details = [f"{key} is {shape(saved, key)} {where[0]}, {shape(current, key)} {where[1]}"
               for key in keys if shape(saved, key) != shape(current, key)]
    return "; ".join(details[:3]) + ("; ..." if len(details) > 3 else "")


def check_max_parameters(value: Any) -> None:
    """Refuse a ``max_parameters`` (of :func:`load`) that is not a positive int or None
    (a numpy integer is an int here, as in the estimator's parameters).

    Raises
    ------
    ValueError
        Naming the value.
    """
    if value is not None and (isinstance(value, (bool, np.bool_))
                              or not isinstance(value, Integral) or value < 1):
        raise ValueError(_BAD_MAX_PARAMETERS.format(value=value))


def load(
    path: Any,
    *,
    module: nn.Module | None = None,
    estimator_class: type | None = None,
    max_parameters: int | None = None,
) -> Any:
    """Read a file written by :func:`save`.

    No code from the file is executed: arrays are read with ``allow_pickle=False``, the
    header is JSON, and only the built-in networks of :mod:`rest_fair.models` are rebuilt.

    Parameters
    ----------
    path : str, bytes, path-like or binary file object
        The file (a leading ``~`` is the home folder), or a file object opened for binary
        reading (``open(name, "rb")``, ``io.BytesIO(data)``), read from its current
        position to its end: one model file (a stream holding more is refused).
    module : nn.Module or None, default=None
        For a file holding a module whose architecture is not built-in: an instance to
        receive the weights (a deep copy is loaded and returned). Its lazy layers
        (``nn.LazyLinear``, ...) take the shapes of the file's tensors.
    estimator_class : type or None, default=None
        For a file holding an estimator: the class that reads it (``estimator_class.load``).
        Without it, :class:`~rest_fair.RESTClassifier` reads it, with a ``FutureWarning``
        (deprecated: call ``RESTClassifier.load(path)``).
    max_parameters : int or None, default=None
        Refuse a file whose network holds more values (weights, biases, buffers) than
        this, before allocating it: for files from untrusted sources, where a tiny file may
        name a huge, nearly empty sparse layer.

    Returns
    -------
    tuple (module, masks, metadata) or RESTClassifier
        What was saved; the module is in evaluation mode, on the CPU in the dtypes it was
        saved in (or, with ``module``, on its device, in its dtypes).

    Raises
    ------
    ModelFileError
        If the file is not a rest_fair model file, is truncated, fails its checksum, or
        is inconsistent.
    """
    path, source = opened(path)
    check_max_parameters(max_parameters)
    header, _ = read(source, payload=False)
    if header.get("kind") == "estimator":  # the class reads the file, once
        if estimator_class is None:
            warnings.warn(_LOAD_ESTIMATOR, FutureWarning, stacklevel=2)
            from ..estimator import RESTClassifier

            estimator_class = RESTClassifier
        if max_parameters is None:
            return estimator_class.load(source)
        return estimator_class.load(source, max_parameters=max_parameters)
    header, arrays = read(source)
    with malformed(path):
        kind = header["kind"]
        if kind != "module":
            raise ModelFileError(_BAD_HEADER.format(path=path, error=f"unknown kind {kind!r}"))
        metadata = from_json(header.get("metadata", {}))
        architecture = [metadata.get(k) for k in
                        ("module", "input_shape", "n_classes", "module_params")]
        if module is None and architecture[0] not in MODULE_NAMES:
            raise ModelFileError(_NEED_MODULE.format(path=path, cls=header.get("class")))
        missing = [k for k in ("input_shape", "n_classes") if metadata.get(k) is None]
        if module is None and missing:
            raise ModelFileError(_PART_ARCHITECTURE.format(path=path, name=architecture[0],
                                                           missing=" and ".join(missing)))
    net, masks = read_module(path, header, arrays, module=module, architecture=architecture,
                             max_parameters=max_parameters)
    return net, masks, metadata
