"""Importing the optional ``wilds`` package safely.

``import wilds`` (2.0.0) runs ``wilds/version.py``, which imports the ``outdated``
package and starts a non-daemon thread asking PyPI for the latest version with no
timeout; importing ``outdated`` itself starts a second such thread for its own
version. Offline, or behind a silent firewall, the interpreter then cannot exit.
``wilds`` sets ``OUTDATED_IGNORE=1`` itself, but that variable only silences
``outdated``'s warnings -- it does not stop the request. What does stop it is
``wilds``' own fallback: when ``from outdated import check_outdated`` raises
:class:`ImportError`, no thread is started. :func:`import_wilds` makes that import
fail for the duration of ``import wilds`` only, and restores ``sys.modules`` after.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from .._requirements import import_optional

__all__ = ["import_wilds", "import_wilds_module"]

_NO_TORCHVISION = (
    "The WILDS dataset modules import torchvision (wilds.common.metrics.all_metrics "
    "imports torchvision.ops), which failed: {error}. Install a torchvision build that "
    "matches your torch (e.g. torch 2.14.1 with torchvision 0.29.1), as the "
    "`rest-fair[wilds]` extra does."
)
_MISSING = object()


def import_wilds() -> ModuleType:
    """Import and return :mod:`wilds` without its background PyPI version check.

    If ``wilds`` was already imported elsewhere, the module is returned as is (its
    check, if any, has already started).

    Returns
    -------
    module
        The :mod:`wilds` package.

    Raises
    ------
    MissingDependencyError
        If ``wilds`` does not import, with installation instructions.
    """
    if "wilds" in sys.modules:
        return sys.modules["wilds"]
    saved = sys.modules.get("outdated", _MISSING)
    # A None entry makes `from outdated import ...` raise ImportError, which
    # wilds/version.py catches and then starts no version-check thread.
    sys.modules["outdated"] = None  # type: ignore[assignment]
    try:
        return import_optional("wilds", extra="wilds", caller="The WILDS integration")
    finally:
        if saved is _MISSING:
            sys.modules.pop("outdated", None)
        else:
            sys.modules["outdated"] = saved  # type: ignore[assignment]


def import_wilds_module(name: str) -> ModuleType:
    """Import a submodule of ``wilds`` (e.g. a dataset module) with a clear error.

    Parameters
    ----------
    name : str
        Dotted module name, e.g. ``"wilds.datasets.waterbirds_dataset"``.

    Returns
    -------
    module
    """
    import_wilds()
    try:
        return importlib.import_module(name)
    except (ImportError, RuntimeError) as exc:
        if "torchvision" in str(exc) or getattr(exc, "name", "") == "torchvision":
            raise ImportError(_NO_TORCHVISION.format(error=exc)) from exc
        raise
