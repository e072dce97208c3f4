"""Exceptions raised by rest_fair."""

from __future__ import annotations

__all__ = ["CheckpointError", "TrainingDivergedError"]


class TrainingDivergedError(FloatingPointError):
    """Training produced a non-finite loss or network output.

    Raised instead of returning a model that predicts NaN or a constant; the message names
    the epoch and the likely causes.
    """


class CheckpointError(ValueError):
    """A training checkpoint cannot be used: missing, damaged, or from another run."""
