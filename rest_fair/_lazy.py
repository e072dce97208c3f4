"""Names that a package face imports on first access (PEP 562), to keep its import cheap."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    module: str, names: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``module`` for names defined elsewhere.

    Parameters
    ----------
    module : str
        The module's ``__name__``.
    names : dict of str to iterable of str
        For each module that defines some of the names, relative to ``module``'s package
        (e.g. ``".estimator"``), those names.

    Returns
    -------
    (callable, callable)
        ``__getattr__`` imports the defining module on first access of a name;
        ``__dir__`` lists the module's globals and these names.
    """
    where = {name: source for source, defined in names.items() for name in defined}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name], sys.modules[module].__package__),
                       name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[module])) | set(where))

    return __getattr__, __dir__
