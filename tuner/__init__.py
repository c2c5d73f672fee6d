"""tuner: hyperparameter tuning for PyTorch on Optuna, with every trial stored in SQL."""

from tuner.errors import DivergedError, SpaceError, SpecError, StorageError, TunerError, WorkloadError
from tuner.params import TrainConfig
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
]
__version__ = "0.1.0"
