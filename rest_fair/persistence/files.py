"""Writing a file so that a failure never leaves it half-written.

:func:`atomic_write` writes the new content beside the target and renames it over the
target only once it is complete and flushed to disk: a full disk, a crash or an
interruption leaves either the old file, untouched, or the new one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["atomic_write"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on every platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace the file ``path`` by ``data``, or leave it as it was if writing fails.

    The content goes to a hidden temporary file in the same folder (created with the
    permissions a new file gets there, as ``open(path, "wb")`` would), is flushed and
    fsynced, then renamed over ``path``; the temporary file is removed on any failure.

    Raises
    ------
    OSError
        As ``open(path, "wb")`` would: a missing folder, a folder at ``path``, no
        permission, a full disk.
    """
    path = Path(os.fsdecode(path))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
