"""tuner: hyperparameter tuning for PyTorch on Optuna, with every trial stored in SQL."""

from tuner.errors import DivergedError, SpaceError, SpecError, StorageError, TunerError, WorkloadError
from tuner.params import TrainConfig
from tuner.reporting import report
from tuner.space import Space, load_space
from tuner.spec import StudySpec

__all__ = [
    "DivergedError",
    "Space",
    "SpaceError",
    "SpecError",
    "StorageError",
    "StudySpec",
    "TrainConfig",
    "TunerError",
    "WorkloadError",
    "load_space",
    "report",
]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # what an objective meets, without importing Optuna for a script that only reports
    if name in ("Pruned", "TrialHandle"):
        from tuner import handle

        return getattr(handle, name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
__version__ = "0.1.0"
