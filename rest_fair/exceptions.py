"""Exceptions raised by rest_fair."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DistributedError",
    "MaskDivergenceError",
    "MissingDependencyError",
    "ModelFileError",
    "TrainingDivergedError",
]


class TrainingDivergedError(FloatingPointError):
    """Training produced a non-finite loss or network output (instead of a model that
    predicts NaN or a constant); the message names the epoch and the likely causes."""


class CheckpointError(ValueError):
    """A training checkpoint cannot be used: missing, damaged, or from another run."""


class ModelFileError(ValueError):
    """A model file is not a rest_fair file, is damaged, or cannot be loaded safely."""


class MissingDependencyError(ImportError):
    """Optional packages that a feature needs are not installed (the message says how to)."""


class DistributedError(RuntimeError):
    """A data-parallel fit cannot go on: ``distributed=True`` finds no process group, the
    ranks were given different data, or a collective operation fails or times out because
    another rank died or hung (the message names this rank and the timeout).
    """


class MaskDivergenceError(DistributedError):
    """The ranks of a data-parallel fit hold different masks or weights; the message names
    the layers and ranks that differ and when the difference was found."""


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on disk and will not be downloaded; the message names what is
    missing, where it was looked for, and how to get it."""


class DatasetFormatError(ValueError):
    """A data set file is damaged, truncated or not in its documented format; the message
    names the file and what is wrong with it."""
