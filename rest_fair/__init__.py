"""rest_fair: group-robust sparse neural networks (REST) as scikit-learn estimators.

The public entry point is :class:`rest_fair.RESTClassifier`. Heavy submodules are
imported lazily so that ``import rest_fair`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["RESTClassifier", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "RESTClassifier":
        from .estimator import RESTClassifier

        return RESTClassifier
    raise AttributeError(f"module 'rest_fair' has no attribute {name!r}")
