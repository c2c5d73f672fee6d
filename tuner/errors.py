"""One exception root: every error a person can fix is a TunerError, caught once by the CLI."""

from __future__ import annotations

__all__ = ["TunerError", "SpaceError", "SpecError", "StorageError", "NoStorageError", "WorkloadError", "DivergedError", "ReportError", "LaunchError"]


class TunerError(Exception):
    """An error with a message a person can act on: what failed, the bad value, the fix."""


class SpaceError(TunerError):
    """A search-space file or entry is invalid."""


class SpecError(TunerError):
    """A study spec (options or file) is invalid or conflicts with the stored study."""


class StorageError(TunerError):
    """A storage URL is malformed or unreachable, or a study is missing from it."""


class NoStorageError(StorageError):
    """The storage does not exist yet (a SQLite file not created): no study is in it."""


class WorkloadError(TunerError):
    """A dataset, file or user callable cannot provide training data."""


class DivergedError(TunerError):
    """Training produced a NaN or infinite loss: the trial is ended instead of wasting its budget."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(f"diverged: loss={loss} at epoch {epoch}")
        self.epoch = epoch
        self.loss = loss


class ReportError(TunerError):
    """A report cannot be written where it was asked to go."""


class LaunchError(TunerError):
    """A cluster's own tool (sbatch, kubectl) is missing or refused to start the workers."""
