"""rest_fair: group-robust sparse neural networks (REST) as scikit-learn estimators.

The public entry point is :class:`rest_fair.RESTClassifier`. Heavy submodules are
imported lazily so that ``import rest_fair`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from ._version import __version__

if TYPE_CHECKING:
    from .estimator import RESTClassifier

__all__ = ["RESTClassifier", "__version__"]

__getattr__, __dir__ = lazy_attributes(__name__, {".estimator": ["RESTClassifier"]})
