"""Training checkpoints: the on-disk format behind ``Checkpoint`` and ``fit(resume_from=...)``.

A checkpoint directory holds

- ``epoch-NNNNNN.pt``: the full training state after epoch ``NNNNNN`` (weights, masks,
  optimizer, scheduler, objective, precision, random generators, counters, history, best
  weights, callback states), read back with ``torch.load(weights_only=True)``: only
  tensors and plain containers, so loading runs no code from the file;
- ``latest.json``: the manifest, naming the newest state file with its SHA-256 digest, the
  epoch, and the *fingerprint* of the run (data shapes and digests, classes, parameters).

Every file is written atomically (:func:`~.files.atomic_write`), the manifest only after
its state file, so a crash at any moment leaves the previous checkpoint intact and named.
Reading refuses a state file that does not match its digest, or a fingerprint that differs
from the resuming run's (nothing is deleted then); an entry that an older release did not
record matches where the run holds the entry's *neutral* value (see :func:`check_writable`).
"""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import POSITIVE_INT
from ..exceptions import CheckpointError
from .files import atomic_write

__all__ = [
    "DETAIL",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "check_writable",
    "folder",
    "has_checkpoint",
    "read_checkpoint",
    "saved_fingerprint",
    "write_checkpoint",
]

#: ``format`` field of a checkpoint manifest.
FORMAT_NAME = "rest_fair.checkpoint"
#: Newest checkpoint format version this release reads and writes.
FORMAT_VERSION = 1
#: File name of the manifest naming the latest state file of a checkpoint directory.
MANIFEST = "latest.json"


class _Detail:
    def __repr__(self) -> str:
        return "DETAIL"


#: The neutral value of a fingerprint entry that details another one, compared too (the
#: digest of each input beside that of them all): a checkpoint without it resumes.
DETAIL = _Detail()

_NOT_A_FOLDER = (
    "{path} is a file; resume_from (and Checkpoint) take the folder the checkpoints are "
    "written to."
)
_BAD_MANIFEST = "{path} is not a valid rest_fair checkpoint manifest ({error})."
_NOT_WRITABLE = "no checkpoint can be written in this folder (no write permission, or read-only)"
_MISSING_STATE = "checkpoint {path} is missing its state file {file}."
_BAD_DIGEST = (
    "checkpoint state file {path} does not match the digest its manifest {manifest} "
    "records: one of them was truncated or modified after it was written. Nothing was "
    "loaded or deleted."
)
_OTHER_RUN = (
    "{dirname} holds the checkpoint of another run, not finished ({details}); writing this "
    "run's would replace it and that run could no longer be resumed. Checkpoint this run to "
    "another directory, resume that one, or remove the directory to discard it."
)
_NUMPY_ARRAY = (
    "checkpoint state {where} is a numpy array, which a checkpoint cannot read back safely "
    "(torch.load(weights_only=True)); keep it as a torch tensor or a list."
)
_NOT_READ_BACK = (
    "checkpoint state {where} is a {type}, which a checkpoint cannot read back safely "
    "(torch.load(weights_only=True) refuses it), so the run could not be resumed; keep "
    "numbers, strings, lists, dicts and tensors there."
)
#: Types whose values ``torch.load(weights_only=True)`` reads back (not their subclasses,
#: such as an ``enum.IntEnum``, pickled by their class).
_PLAIN = (str, bytes, int, float, complex, bool, type(None))
_UNREADABLE = "checkpoint state file {path} cannot be read safely ({error})."
_NEWER = "{path} uses checkpoint format version {version}; this rest_fair reads <= {ours}."
_PREDATES = (
    "{path} was not recorded, now {after!r}: the checkpoint predates {path} (an older "
    "rest_fair wrote it){resumes}"
)
_RESUMES_WITH = ", so pass {setting}={neutral!r} to continue that run"
_NO_SETTING = ", and no setting of this rest_fair continues that run"
_RANDOM_STATE = (
    "random_state differs: that run had {before}, this one has {after}; pass {before} to "
    "continue that run"
)
_SEED_DRAWN = (
    "{random_state} drew the seed {before} for that run and {after} for this one; resuming "
    "(resume_from) continues that run with its seed"
)
_SEED_NOT_RECORDED = (
    "that run drew its seed from {random_state}, and its checkpoint (an older rest_fair "
    "wrote it) does not record that seed: no random_state continues that run"
)
_MORE_EPOCHS = (
    " (to train that run further, resume it with max_epochs={before!r}, then fit again with "
    "warm_start=True and max_epochs the number of epochs to add)"
)
_UNKNOWN = (
    "{path} was {before!r}, which this rest_fair does not know: the checkpoint is from a "
    "newer release"
)
#: A numpy scalar's repr under numpy 2: ``np.int64(3)``, ``np.float32(0.5)``, ``np.True_``.
_NUMPY_REPR = re.compile(r"np\.(\w+)\('?([^()']*)'?\)|np\.(True|False)_")
#: The numpy float types that are not Python floats, whose scalars releases before this one
#: recorded by their repr (numpy 1's repr is their ``str``).
_NUMPY_1_FLOATS = (np.float16, np.float32, np.longdouble)
_MISMATCH = (
    "the checkpoint in {dirname} was made by a different run and cannot be resumed here: "
    "{details}. Resume with the same data and parameters, or start a new run in another "
    "directory."
)


def _finished(manifest: dict[str, Any], fingerprint: dict[str, Any]) -> bool:
    """Whether the run of a manifest is over (manifests before ``finished``: by its epochs)."""
    if "finished" in manifest:
        return bool(manifest["finished"])
    max_epochs = (fingerprint.get("params") or {}).get("max_epochs")
    return isinstance(max_epochs, int) and int(manifest.get("epoch", 0)) >= max_epochs


def folder(dirname: Any, what: str = "dirname") -> Path:
    """The checkpoint folder ``dirname`` (a str, bytes or path-like) names, a leading ``~``
    expanded to the home folder (a literal ``~`` folder in the working directory is never
    what a user means).

    Raises
    ------
    TypeError
        If ``dirname`` is not a path (the message names ``what``, the argument it was).
    ValueError
        If it is empty (the working directory, which no one means) or holds a NUL.
    """
    if not isinstance(dirname, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} must be a str, bytes or path-like naming a folder; got "
                        f"{type(dirname).__name__} {dirname!r:.80}.")
    name = os.fsdecode(dirname)
    if not name or "\0" in name:
        raise ValueError(f"{what} must name a folder; got {dirname!r:.80}.")
    return Path(name).expanduser()


def has_checkpoint(dirname: str | os.PathLike) -> bool:
    """Whether ``dirname`` holds a checkpoint manifest (a missing folder holds none); a
    folder or other non-file at the manifest's name counts, for reading to refuse it.

    Raises
    ------
    CheckpointError
        If ``dirname`` is an existing file: a checkpoint is a folder.
    """
    path = folder(dirname)
    if path.is_file():
        raise CheckpointError(_NOT_A_FOLDER.format(path=path))
    return (path / MANIFEST).exists()


def _loadable(value: Any, where: str) -> Any:
    """``value`` with numpy scalars as Python numbers; refuses numpy arrays and any other
    value that ``torch.load(weights_only=True)`` does not read back (a date or a ``deque``
    in a history record or a callback's ``state_dict``), naming ``where``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        raise TypeError(_NUMPY_ARRAY.format(where=where or "state"))
    if type(value) in _PLAIN or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        if type(value) is not dict:  # its type and keys, without its values
            probe = copy.copy(value)
            for key in probe:
                dict.__setitem__(probe, key, None)
            _check_read_back(probe, where)
        for key in value:
            if type(key) not in _PLAIN:
                _check_read_back(key, f"a key of {where or 'the state'}")
        out = copy.copy(value)  # a shallow copy keeps a dict subclass and its settings
        out.update((k, _loadable(v, f"{where}[{k!r}]")) for k, v in value.items())
        return out
    if type(value) in (list, tuple):
        return type(value)(_loadable(v, f"{where}[{i}]") for i, v in enumerate(value))
    _check_read_back(value, where)
    return value


def _check_read_back(value: Any, where: str) -> None:
    """Refuse ``value`` (at ``where`` in a state) unless it reads back as it is written."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except Exception as exc:
        raise TypeError(_NOT_READ_BACK.format(where=where or "state",
                                              type=type(value).__name__)) from exc


def write_checkpoint(
    dirname: str | os.PathLike,
    state: dict[str, Any],
    *,
    epoch: int,
    fingerprint: dict[str, Any],
    keep: int = 2,
    finished: bool = False,
    neutral: Mapping[str, Any] | None = None,
) -> Path:
    """Write one training state atomically and make it the latest checkpoint.

    Parameters
    ----------
    dirname : str, bytes or path-like
        Checkpoint directory (created if needed).
    state : dict
        Training state: tensors and plain containers only (numpy scalars are written as
        Python numbers).
    epoch : int
        Epochs completed; names the file.
    fingerprint : dict of JSON values
        Identifies the run (compared by :func:`read_checkpoint`).
    keep : int, default=2
        State files kept; older ones are removed after the manifest is replaced, and so
        are those of a later epoch (left by an earlier, finished run in ``dirname``).
    finished : bool, default=False
        The run is over (its last epoch, or a callback stopped it): recorded in the
        manifest, so that another run may later take the directory.
    neutral : mapping, optional
        Neutral values of fingerprint entries that older checkpoints lack (see
        :func:`check_writable`).

    Returns
    -------
    Path
        The state file written.

    Raises
    ------
    TypeError
        If ``state`` holds a value that could not be read back (a numpy array, a date, a
        ``deque``, ...; named by its keys): nothing is written.
    CheckpointError
        As :func:`check_writable` (nothing is written or deleted).
    """
    directory = folder(dirname)
    # never replace a run that could still be resumed
    check_writable(directory, fingerprint, neutral=neutral)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(_loadable(state, ""), buffer)
    payload = buffer.getvalue()
    name = f"epoch-{int(epoch):06d}.pt"
    atomic_write(directory / name, payload)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "file": name,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "epoch": int(epoch),
        "finished": bool(finished),
        "fingerprint": fingerprint,
    }
    atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    for old in _superseded(directory, int(epoch), keep):
        old.unlink(missing_ok=True)
    return directory / name


def _superseded(directory: Path, epoch: int, keep: int) -> list[Path]:
    """State files to delete once the state of ``epoch`` is the latest checkpoint: those
    of a later epoch (a finished earlier run's, no longer named by the manifest) and all but
    the ``keep`` newest of the others (never the file of ``epoch``). Only names of ASCII
    digits are state files: ``str.isdigit`` also takes ``"²"``, which ``int`` refuses, and
    other scripts' digits, which it reads."""
    numbers = {path: path.stem.removeprefix("epoch-") for path in directory.glob("epoch-*.pt")}
    epochs = {path: int(number) for path, number in numbers.items()
              if number.isascii() and number.isdigit()}
    earlier = sorted((path for path, e in epochs.items() if e <= epoch), key=epochs.__getitem__)
    return [path for path, e in epochs.items() if e > epoch] + earlier[:-keep]


def check_writable(dirname: str | os.PathLike, fingerprint: dict[str, Any], *,
                   neutral: Mapping[str, Any] | None = None) -> None:
    """Refuse a directory that :func:`write_checkpoint` would refuse for ``fingerprint``:
    one holding the checkpoint of another run that is not finished.

    Parameters
    ----------
    dirname : str, bytes or path-like
        Checkpoint directory.
    fingerprint : dict of JSON values
        Identifies the run that would write there.
    neutral : mapping, optional
        For fingerprint entries that older checkpoints lack, by dotted path
        (``"params.<name>"``): the value with which the run computes what it computed
        before the entry existed; a saved fingerprint without the entry matches it.

    Raises
    ------
    CheckpointError
        If ``dirname`` is a file, or holds the checkpoint of an unfinished run with another
        fingerprint (the message names the differences), or a damaged manifest.
    PermissionError
        If this process cannot write in ``dirname``, or make it in its nearest existing
        parent (a read-only file system, no permission), naming that folder.
    NotADirectoryError
        If a file stands where a parent folder of ``dirname`` goes, naming it.
    """
    directory = folder(dirname)
    nearest = next(path for path in (directory, *directory.parents) if path.exists())
    if nearest != directory and not nearest.is_dir():  # a file where a parent folder goes
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(nearest))
    if nearest.is_dir() and not os.access(nearest, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, _NOT_WRITABLE, str(nearest))
    if not has_checkpoint(directory):
        return
    manifest = _read_manifest(directory)
    saved = _fingerprint_of(manifest)
    details = _differences(saved, _as_saved(fingerprint), neutral or {})
    if details and not _finished(manifest, saved):
        raise CheckpointError(_OTHER_RUN.format(dirname=directory, details="; ".join(details)))


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT_NAME:
            raise ValueError(f"format is {manifest.get('format')!r}")
        version = manifest["version"]
        if not POSITIVE_INT.accepts(version):
            raise ValueError(f"version is {version!r}")
        file, digest = str(manifest["file"]), manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise CheckpointError(_BAD_MANIFEST.format(path=path, error=exc)) from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(_NEWER.format(path=path, version=version, ours=FORMAT_VERSION))
    if Path(file).name != file or file in ("", ".", ".."):
        raise CheckpointError(_BAD_MANIFEST.format(path=path, error=f"bad file name {file!r}"))
    if not (isinstance(digest, str) and re.fullmatch("[0-9a-f]{64}", digest)):
        raise CheckpointError(_BAD_MANIFEST.format(path=path, error=f"sha256 is {digest!r:.80}"))
    manifest["file"] = file
    return manifest


def _differences(saved: dict[str, Any], current: dict[str, Any], neutral: Mapping[str, Any],
                 prefix: str = "") -> list[str]:
    """How ``current`` differs from the ``saved`` fingerprint, one phrase per entry.

    An entry that ``saved`` lacks matches where ``neutral`` holds its current value under
    its dotted path: the checkpoint predates the entry, and the run computes what it did.
    A :data:`DETAIL` entry ``<name>_of`` that both hold names the inputs that differ
    (``"other X than that run's"``) instead of entry ``<name>``.
    """
    seeding = None if prefix else _seed_difference(saved, current, neutral)
    details = [] if seeding is None else [seeding]
    for key in sorted(set(saved) | set(current)):
        path = f"{prefix}{key}"
        if path in ("seed", "params.random_state"):  # phrased by _seed_difference
            continue
        parts = [_detailed(f, f"{key}_of", f"{path}_of", neutral) for f in (saved, current)]
        if None not in parts and parts[0] != parts[1]:  # named by the entry detailing it
            continue
        parts = [_detailed(f, key, path, neutral) for f in (saved, current)]
        if None not in parts:
            details.extend(f"other {name} than that run's" for name in sorted(parts[1])
                           if parts[0].get(name) != parts[1][name])
            continue
        if key not in saved:
            after = current[key]
            if path in neutral and (neutral[path] is DETAIL or after == neutral[path]):
                continue
            resumes = (_RESUMES_WITH.format(setting=path.removeprefix("params."),
                                            neutral=neutral[path])
                       if path in neutral and path.startswith("params.") else _NO_SETTING)
            details.append(_PREDATES.format(path=path, after=after, resumes=resumes))
        elif key not in current:
            details.append(_UNKNOWN.format(path=path, before=saved[key]))
        elif (before := _as_recorded(saved[key], current[key])) == current[key]:
            continue
        elif isinstance(before, dict) and isinstance(current[key], dict):
            details.extend(_differences(before, current[key], neutral, f"{path}."))
        else:
            details.append(f"{path} was {before!r}, now {current[key]!r}" + (
                _MORE_EPOCHS.format(before=before) if path == "params.max_epochs" else ""))
    return details


def _detailed(fingerprint: dict[str, Any], key: str, path: str,
              neutral: Mapping[str, Any]) -> dict[str, Any] | None:
    """The entry ``key`` of ``fingerprint`` where it is a :data:`DETAIL` entry (a dict of
    digests by input name), else None."""
    value = fingerprint.get(key)
    return value if neutral.get(path) is DETAIL and isinstance(value, dict) else None


def _seed_difference(saved: dict[str, Any], current: dict[str, Any],
                     neutral: Mapping[str, Any]) -> str | None:
    """How ``current`` is seeded otherwise than ``saved``, or None where it is not.

    Two entries say how a run is seeded: ``params.random_state`` and ``seed``, the seed a
    run drew from a ``random_state`` that is not an int (None for an int). A difference in
    either is phrased as the ``random_state`` to pass; ``seed`` missing from ``saved``
    matches its neutral value, as in :func:`_differences`.
    """
    missing = object()
    before, after = ((f.get("params") or {}).get("random_state", missing)
                     for f in (saved, current))
    before = _as_recorded(before, after)
    seed_before = saved.get("seed", neutral.get("seed", missing))
    seed_after = current.get("seed", missing)
    if before == after and seed_before == seed_after:
        return None
    if "seed" not in saved and not isinstance(before, int):
        return _SEED_NOT_RECORDED.format(random_state=_passed(before))
    if before != after:
        return _RANDOM_STATE.format(before=_passed(before), after=_passed(after))
    return _SEED_DRAWN.format(random_state=_passed(before), before=seed_before, after=seed_after)


def _as_recorded(saved: Any, current: Any) -> Any:
    """A saved fingerprint value as this release records it, compared with ``current``.

    Releases before this one recorded a numpy scalar parameter by its repr. A saved string
    of numpy 2's form (``'np.int64(3)'``, ``'np.float32(0.5)'``, ``'np.True_'``) reads as
    the Python number it names; one of numpy 1's form (``'3'``, ``'True'``, ``'0.1'`` for
    ``np.float32(0.1)``) reads as ``current`` where that is the int or bool it spells, or
    the float of a numpy float type (:data:`_NUMPY_1_FLOATS`) whose text it is. Lists are
    read item by item.
    """
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [_as_recorded(s, c) for s, c in zip(saved, current, strict=True)]
    if not isinstance(saved, str):
        return saved
    if isinstance(current, (bool, int)) and saved == str(current):
        return current
    if isinstance(current, float):
        with np.errstate(over="ignore"):
            if any(float(kind(current)) == current and str(kind(current)) == saved
                   for kind in _NUMPY_1_FLOATS):
                return current
    match = _NUMPY_REPR.fullmatch(saved)
    if match is None:
        return saved
    if match[3] is not None:
        return match[3] == "True"
    kind = getattr(np, match[1], None)
    if not (isinstance(kind, type) and issubclass(kind, (np.integer, np.floating))):
        return saved
    try:
        scalar = kind(match[2])
    except (ValueError, TypeError, OverflowError):
        return saved
    return int(scalar) if isinstance(scalar, np.integer) else float(scalar)


def _passed(random_state: Any) -> str:
    """How to pass a ``random_state`` as a fingerprint records it."""
    if isinstance(random_state, str) and random_state.startswith("instance of "):
        return f"random_state=<a {random_state.rpartition('.')[2]}>"  # drawn from, not saved
    return f"random_state={random_state!r}"


def saved_fingerprint(dirname: str | os.PathLike) -> dict[str, Any]:
    """The fingerprint the checkpoint in ``dirname`` was written with (``{}`` if it has none).

    Raises
    ------
    CheckpointError
        If the manifest is missing, damaged or of a newer format.
    """
    return _fingerprint_of(_read_manifest(folder(dirname)))


def _fingerprint_of(manifest: dict[str, Any]) -> dict[str, Any]:
    saved = manifest.get("fingerprint")
    return saved if isinstance(saved, dict) else {}


def _as_saved(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """``fingerprint`` in the JSON form in which a manifest holds it."""
    return json.loads(json.dumps(fingerprint))


def read_checkpoint(
    dirname: str | os.PathLike, *, fingerprint: dict[str, Any] | None = None,
    neutral: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The latest training state in ``dirname``, checked against its digest.

    Parameters
    ----------
    dirname : str, bytes or path-like
        Checkpoint directory written by :func:`write_checkpoint`.
    fingerprint : dict, optional
        The resuming run's fingerprint; any difference is refused, naming it.
    neutral : mapping, optional
        Neutral values of fingerprint entries that older checkpoints lack (see
        :func:`check_writable`).

    Returns
    -------
    dict
        The training state.

    Raises
    ------
    CheckpointError
        If the manifest or state file is missing, damaged or modified, or the fingerprint
        differs.
    """
    directory = folder(dirname)
    manifest = _read_manifest(directory)
    if fingerprint is not None:
        if not isinstance(manifest.get("fingerprint"), dict):
            raise CheckpointError(_BAD_MANIFEST.format(path=directory / MANIFEST,
                                                       error="no fingerprint"))
        details = _differences(_fingerprint_of(manifest), _as_saved(fingerprint),
                               neutral or {})
        if details:
            raise CheckpointError(_MISMATCH.format(dirname=directory,
                                                   details="; ".join(details)))
    path = directory / manifest["file"]
    try:
        payload = path.read_bytes()
    except OSError as exc:  # missing, or not a file
        raise CheckpointError(_MISSING_STATE.format(path=directory,
                                                    file=manifest["file"])) from exc
    if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
        raise CheckpointError(_BAD_DIGEST.format(path=path, manifest=directory / MANIFEST))
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling refusal or corruption
        raise CheckpointError(_UNREADABLE.format(path=path, error=exc)) from exc
