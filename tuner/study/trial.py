"""One trial of any objective (tuner's loop, a Python function, a command) between its claim and
its end: started the same way (its configuration drawn, its seed and device recorded), reporting
and pruning through one TrialHandle (tuner.handle), and what it records written with the trial's
other data. The worker's loop (run.py) tells each trial's ending, with its kind, for all of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from tuner import attrs as A
from tuner.handle import TrialHandle
from tuner.study.road import road_of
from tuner.urls import DEFAULT_ARTIFACTS

__all__ = ["begin", "durable", "prunes", "record", "started"]


def record(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():  # buffered: written with the trial's other data in one commit
        trial.set_user_attr(key, value)


def durable(trial: optuna.Trial) -> None:
    """The trial's configuration in the database before training starts: a killed worker's trial
    is queued again with exactly these parameters."""
    road_of(trial.study).durable(trial)


def started(trials: list[optuna.Trial]) -> None:
    """These claimed trials start training now: the packs before theirs are not part of their
    duration (in the dashboard, the report). Optuna's own storage keeps the claim's time."""
    if trials:
        road_of(trials[0].study).started(trials)


def prunes(study: optuna.Study) -> bool:
    """Whether asking the study's pruner can say stop (asking a NopPruner costs a trial copy a report)."""
    return not isinstance(study.pruner, optuna.pruners.NopPruner)


def begin(loaded: Any, trial: optuna.Trial, device: Any, *, unit: str = "step", artifacts: Path = DEFAULT_ARTIFACTS) -> TrialHandle:
    """The trial's configuration drawn and its seed and device recorded; the handle it reports
    through. Call durable(trial) once whatever else the objective records before it runs is set."""
    spec = loaded.spec
    params = loaded.space.suggest(trial)
    seed = spec.seed + trial.number
    record(trial, {A.SEED: seed, A.DEVICE: str(device)})
    return TrialHandle(
        trial, params=params, device=device, seed=seed, objectives=spec.objectives, pruner=str(spec.pruner), prunes=prunes(loaded.study), artifacts=artifacts,
        prune_on=spec.prune_on, constraints=spec.bounds, unit=unit,
    )  # fmt: skip
