"""Registries: sampler and pruner names -> factories. Adding one is one entry."""

from __future__ import annotations

import warnings
from typing import Callable

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from tuner.errors import SpecError

__all__ = ["PRUNERS", "SAMPLERS", "make_pruner", "make_sampler"]

# Grid points are enqueued as trials when a grid study is created (each popped exactly once,
# atomically, by whichever worker gets it), so the grid "sampler" only backs up the queue.
SAMPLERS: dict[str, Callable[[int], BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
    "qmc": lambda seed: optuna.samplers.QMCSampler(seed=seed, scramble=True),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
}

# The resource is the epoch: every trial reports its metric once per epoch.
PRUNERS: dict[str, Callable[[], BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
    "percentile": lambda: optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=2),
    "sha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3),
}


def check_name(kind: str, name: str, registry: dict) -> None:
    if name not in registry:
        raise SpecError(f"unknown {kind} {name!r}; valid: {', '.join(registry)}")


def make_sampler(name: str, seed: int) -> BaseSampler:
    check_name("sampler", name, SAMPLERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[name](seed)


def make_pruner(name: str) -> BasePruner:
    check_name("pruner", name, PRUNERS)
    return PRUNERS[name]()
