"""Bounded network access, and the cache folder, for the code that downloads or builds files."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

#: The environment variable naming the folder of rest_fair's caches.
CACHE_ENV = "REST_FAIR_CACHE"


def cache_dir(name: str) -> Path:
    """The cache folder ``name`` under ``$REST_FAIR_CACHE``, by default under
    ``~/.cache/rest_fair``; an empty (or blank) ``REST_FAIR_CACHE`` counts as unset."""
    root = os.environ.get(CACHE_ENV, "")
    return Path(root if root.strip() else os.path.join("~", ".cache", "rest_fair"),
                name).expanduser()


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every socket operation inside the block, so an offline machine fails fast;
    the process-wide default timeout is restored on exit."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
