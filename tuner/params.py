"""The training vocabulary: every parameter a search space may name, and what the loop does with it.

`TrainConfig` is the single source: a space entry must name one of its fields, its values must
fit the field's type and, for names like `optimizer`, one of the registered choices. This module
imports no torch so that `tuner space ...` commands stay fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ACTIVATIONS",
    "CONDITIONS",
    "GROUPS",
    "INITIALIZERS",
    "METRICS",
    "MODELS",
    "NORMS",
    "OPTIMIZERS",
    "SCALINGS",
    "SCHEDULERS",
    "TrainConfig",
    "describe_bounds",
    "in_bounds",
    "param_bounds",
    "param_kind",
    "param_names",
]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adadelta", "adam", "adamw", "lbfgs")
SCHEDULERS = ("none", "step", "cosine", "onecycle", "plateau")
INITIALIZERS = (
    "default",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "scaled_normal",
)
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu")
NORMS = ("none", "batch", "layer")
SCALINGS = ("none", "minmax", "standard")
MODELS = ("mlp", "cnn")
# metric -> direction; a trial's value is its best epoch's metric
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize", "val_rmse": "minimize"}


def _choices(names: tuple[str, ...]) -> dict[str, Any]:
    return {"choices": names}


def _bounds(low: float | None = None, high: float | None = None, *, open_low: bool = False, open_high: bool = False) -> dict[str, Any]:
    return {"bounds": (low, high, open_low, open_high)}


@dataclass
class TrainConfig:
    """One trial's training settings. Search spaces sample these fields; the rest keep defaults."""

    # budget
    epochs: int = field(default=20, metadata=_bounds(1))  # passes over the training split; the pruners' resource
    batch_size: int = field(default=64, metadata=_bounds(1))  # examples per optimizer step (lbfgs: per closure)
    # optimizer
    optimizer: str = field(default="adam", metadata=_choices(OPTIMIZERS))  # update rule
    lr: float = field(default=1e-3, metadata=_bounds(0, open_low=True))  # peak learning rate (one-cycle's max_lr)
    momentum: float = field(default=0.9, metadata=_bounds(0, 1, open_high=True))  # sgd momentum/nesterov velocity decay; rmsprop momentum
    beta1: float = field(default=0.9, metadata=_bounds(0, 1, open_high=True))  # adam/adamw first-moment decay
    beta2: float = field(default=0.999, metadata=_bounds(0, 1, open_high=True))  # adam/adamw second-moment decay
    eps: float = field(default=1e-8, metadata=_bounds(0, open_low=True))  # denominator guard of adaptive optimizers
    rho: float = field(default=0.9, metadata=_bounds(0, 1, open_low=True, open_high=True))  # adadelta's rho, rmsprop's smoothing constant alpha
    lbfgs_history: int = field(default=10, metadata=_bounds(1))  # curvature pairs kept by L-BFGS
    # learning-rate schedule
    scheduler: str = field(default="none", metadata=_choices(SCHEDULERS))  # lr shape over epochs
    warmup_epochs: int = field(default=0, metadata=_bounds(0))  # linear ramp from lr/(warmup+1) before the schedule starts
    step_size: int = field(default=5, metadata=_bounds(1))  # step schedule: epochs between decays
    gamma: float = field(default=0.5, metadata=_bounds(0, 1, open_low=True, open_high=True))  # step decay factor; plateau reduction factor
    plateau_patience: int = field(default=2, metadata=_bounds(0))  # plateau: epochs without val-loss progress before a cut
    # weights
    init: str = field(default="default", metadata=_choices(INITIALIZERS))  # weight initializer
    init_std: float = field(default=0.02, metadata=_bounds(0, open_low=True))  # scaled_normal: std of the weights
    # regularization
    weight_decay: float = field(default=0.0, metadata=_bounds(0))  # L2 (decoupled for adamw)
    l1: float = field(default=0.0, metadata=_bounds(0))  # L1 penalty on weights, added to the loss
    dropout: float = field(default=0.0, metadata=_bounds(0, 1, open_high=True))  # drop probability after each hidden activation
    label_smoothing: float = field(default=0.0, metadata=_bounds(0, 1, open_high=True))  # classification targets mixed with uniform
    patience: int = field(default=0, metadata=_bounds(0))  # early stopping: epochs without metric progress; 0 = off
    grad_clip: float = field(default=0.0, metadata=_bounds(0))  # max global gradient norm; 0 = off
    # data and architecture
    scaling: str = field(default="standard", metadata=_choices(SCALINGS))  # input scaling from train stats
    norm: str = field(default="none", metadata=_choices(NORMS))  # normalization after each hidden layer
    activation: str = field(default="relu", metadata=_choices(ACTIVATIONS))  # hidden nonlinearity
    model: str = field(default="mlp", metadata=_choices(MODELS))  # mlp for any data, cnn for images
    n_layers: int = field(default=2, metadata=_bounds(0, 16))  # hidden layers of the MLP (dense layers of the CNN head)
    hidden_units: int = field(default=128, metadata=_bounds(1, 65536))  # width of each hidden dense layer
    channels: int = field(default=16, metadata=_bounds(1, 4096))  # cnn: channels of the first conv layer (the second has twice as many)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainConfig":
        known = param_names()
        return cls(**{k: v for k, v in params.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The dimensions as a person thinks of them: the panels of `tuner space create --help`.
GROUPS: dict[str, tuple[str, ...]] = {
    "Budget": ("epochs", "batch_size"),
    "Optimizer": ("optimizer", "lr", "momentum", "beta1", "beta2", "eps", "rho", "lbfgs_history"),
    "Learning-rate schedule": ("scheduler", "warmup_epochs", "step_size", "gamma", "plateau_patience"),
    "Initialization": ("init", "init_std"),
    "Regularization": ("weight_decay", "l1", "dropout", "label_smoothing", "patience", "grad_clip"),
    "Data and architecture": ("scaling", "norm", "activation", "model", "n_layers", "hidden_units", "channels"),
}

# A setting only exists when its parent has one of the values: `space create` writes these
# conditions for you, and the validator checks hand-written ones.
CONDITIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "momentum": ("optimizer", ("momentum", "nesterov", "rmsprop")),
    "beta1": ("optimizer", ("adam", "adamw")),
    "beta2": ("optimizer", ("adam", "adamw")),
    "eps": ("optimizer", ("rmsprop", "adagrad", "adadelta", "adam", "adamw")),
    "rho": ("optimizer", ("rmsprop", "adadelta")),
    "lbfgs_history": ("optimizer", ("lbfgs",)),
    "step_size": ("scheduler", ("step",)),
    "gamma": ("scheduler", ("step", "plateau")),
    "plateau_patience": ("scheduler", ("plateau",)),
    "init_std": ("init", ("scaled_normal",)),
    "channels": ("model", ("cnn",)),
}

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def param_names() -> tuple[str, ...]:
    return tuple(_FIELDS)


def param_bounds(name: str) -> tuple[float | None, float | None, bool, bool] | None:
    """(low, high, open_low, open_high) of a numeric parameter's valid values, or None (a name
    outside the vocabulary, a free parameter of the person's code, has none)."""
    field_ = _FIELDS.get(name)
    return field_.metadata.get("bounds") if field_ is not None else None


def describe_bounds(name: str) -> str:
    low, high, open_low, open_high = param_bounds(name) or (None, None, False, False)
    left = "(" if open_low or low is None else "["
    right = ")" if open_high or high is None else "]"
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"


def in_bounds(name: str, value: float) -> bool:
    bounds = param_bounds(name)
    if bounds is None:
        return True
    low, high, open_low, open_high = bounds
    if low is not None and (value < low or (open_low and value == low)):
        return False
    return high is None or not (value > high or (open_high and value == high))


def param_kind(name: str) -> tuple[type, tuple[str, ...] | None]:
    """The Python type of a parameter and its registered choices (None when any value of the type goes)."""
    f = _FIELDS[name]
    kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
    return kind, f.metadata.get("choices")
