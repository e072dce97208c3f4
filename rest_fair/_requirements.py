"""Checking optional dependencies before a command starts its work.

A command that trains many runs should not discover a missing package in every run: it
asks :func:`check_requirements` first, which fails once with the install command.
Packages are looked up with :func:`importlib.util.find_spec`, without importing them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterable

__all__ = ["MissingDependencyError", "Requirement", "check_requirements", "missing"]

_MISSING = (
    "{command} needs optional packages that are not installed:\n{lines}\n"
    "Install them with:\n    pip install {packages}\n"
    "or with the extra(s): pip install 'rest-fair[{extras}]'"
)


@dataclasses.dataclass(frozen=True)
class Requirement:
    """An optional package and what needs it.

    Parameters
    ----------
    module : str
        Import name, e.g. ``"PIL"``.
    package : str
        Name to ``pip install``, e.g. ``"pillow"``.
    extra : str
        The ``rest-fair`` extra that installs it, e.g. ``"bench"``.
    needed_for : str
        What needs it, for the error message.
    """

    module: str
    package: str
    extra: str
    needed_for: str


class MissingDependencyError(ImportError):
    """Optional packages a command needs are not installed (the message says how to)."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a broken entry
        return False


def missing(requirements: Iterable[Requirement]) -> list[Requirement]:
    """The requirements whose module cannot be found, in order, without duplicates."""
    seen: set[str] = set()
    out = []
    for requirement in requirements:
        if requirement.module not in seen and not _installed(requirement.module):
            out.append(requirement)
        seen.add(requirement.module)
    return out


def check_requirements(requirements: Iterable[Requirement], *, command: str) -> None:
    """Raise :class:`MissingDependencyError` naming every missing package at once.

    Parameters
    ----------
    requirements : iterable of Requirement
    command : str
        Who needs them, e.g. ``"rest-fair bench --dataset mnist_5k"``.
    """
    absent = missing(requirements)
    if not absent:
        return
    lines = "\n".join(f"  - {r.package} (import {r.module}): {r.needed_for}" for r in absent)
    packages = " ".join(dict.fromkeys(r.package for r in absent))
    extras = ",".join(dict.fromkeys(r.extra for r in absent))
    raise MissingDependencyError(
        _MISSING.format(command=command, lines=lines, packages=packages, extras=extras)
    )
