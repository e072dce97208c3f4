"""Everything rest_fair writes to disk and reads back, without pickle.

- :mod:`~rest_fair.persistence.model_file`: compressed, pickle-free files of a masked
  module (:func:`save`, :func:`load`), in which a fitted estimator stores itself
  (:meth:`RESTClassifier.save <rest_fair.RESTClassifier.save>`).
- :mod:`~rest_fair.persistence.checkpoint`: training checkpoints to resume a run exactly
  (written by :class:`rest_fair.callbacks.Checkpoint`, read by ``fit(resume_from=...)``).
"""

from __future__ import annotations

from ..exceptions import CheckpointError, ModelFileError
from .checkpoint import has_checkpoint, read_checkpoint, write_checkpoint
from .model_file import FORMAT_VERSION, load, register_estimator_class, save

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "ModelFileError",
    "has_checkpoint",
    "load",
    "read_checkpoint",
    "register_estimator_class",
    "save",
    "write_checkpoint",
]
