"""Optional dependencies: importing one where it is used (:func:`import_optional`), and
checking several at once, without importing them, before a command starts
(:func:`check_requirements`); the errors name the ``pip install`` command.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Iterable
from types import ModuleType

from .exceptions import MissingDependencyError

__all__ = [
    "MissingDependencyError",
    "Requirement",
    "check_requirements",
    "import_optional",
    "missing",
]

#: Error of :func:`import_optional`.
MISSING_PACKAGE = (
    "{caller} needs the optional package {package!r}, which is not installed or does not "
    "import ({error}). Install it with: pip install 'rest-fair[{extra}]'"
)
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


def import_optional(
    module: str, *, extra: str, caller: str, package: str | None = None
) -> ModuleType:
    """Import ``module`` of an optional package, or raise :class:`MissingDependencyError`
    naming ``caller``, the original error and the install command of the ``rest-fair``
    ``extra`` (``package``: the name to ``pip install``, by default the top-level import
    name). A package that fails to import (a build that does not match torch) is missing.
    """
    try:
        return importlib.import_module(module)
    except (ImportError, RuntimeError, OSError) as exc:
        raise MissingDependencyError(MISSING_PACKAGE.format(
            caller=caller, package=package or module.partition(".")[0], error=exc,
            extra=extra)) from exc


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a broken entry
        return False


def missing(requirements: Iterable[Requirement]) -> list[Requirement]:
    """The requirements whose module cannot be found, in order, without duplicates."""
    first: dict[str, Requirement] = {}
    for requirement in requirements:
        first.setdefault(requirement.module, requirement)
    return [r for r in first.values() if not _installed(r.module)]


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
