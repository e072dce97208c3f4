"""Writing a file so that a failure never leaves it half-written.

:func:`atomic_write` writes the new content beside the target and renames it over the
target only once it is complete and flushed to disk: a full disk, a crash or an
interruption leaves either the old file, untouched, or the new one.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

__all__ = ["atomic_write"]

#: Characters of the target's name that the temporary file's name repeats: at most 4 bytes
#: each, so the temporary name (with its dot, random part and suffix) stays within the
#: 255 bytes a file name may have wherever the target's name itself does.
_NAME_CHARS = 48


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

    The content goes to a hidden temporary file in the same folder, is flushed and
    fsynced, then renamed over ``path``; the temporary file is removed on any failure.
    As with ``open(path, "wb")``, a symbolic link at ``path`` is followed (the file it
    names is replaced; the link stays), an existing file keeps its permission bits (one
    this process may not write is refused, not replaced), and a new file gets the
    permissions a new file gets in that folder. A device or pipe at ``path`` (such as
    ``os.devnull``) is written to by ``open(path, "wb")`` itself: it holds no content to
    keep, and a rename would replace it by a plain file.

    Raises
    ------
    OSError
        As ``open(path, "wb")`` would, naming ``path``: a missing folder, a folder at
        ``path``, no permission, a full disk.
    """
    given = os.fsdecode(path)
    path = Path(os.path.realpath(given)) if os.path.islink(given) else Path(given)
    try:
        existing = os.stat(path)
    except OSError:
        existing = None
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), given)
    if existing is not None and not os.access(path, os.W_OK):  # a file made read-only
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), given)
    if existing is not None and not stat.S_ISREG(existing.st_mode):  # a device, a pipe
        with open(given, "wb") as fh:
            fh.write(data)
        return
    tmp = path.with_name(f".{path.name[:_NAME_CHARS]}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:  # named by the file asked for, not by the temporary one
        raise OSError(exc.errno, exc.strerror, given) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if existing is not None:
                os.chmod(tmp, stat.S_IMODE(existing.st_mode))
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
