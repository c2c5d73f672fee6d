"""Pruning a study of several metrics. Optuna cannot: `Trial.report` refuses multi-objective
studies (optuna#3450), and its pruners read one intermediate value a step.

tuner keeps each trial's vector of intermediate values itself, in a user attribute
(attrs.VECTORS: {step: [each metric's value, in the study's order]}), written as the trial
reports (with tuner's buffered storage, into the trial's buffer: it reaches the database with the
trial's other data). Two ways to prune on them:

- `ParetoPruner` (pruner `pareto`, the default with several metrics): at a step, a trial whose
  vector is dominated, by a margin, by the vectors of enough finished trials at the same step is
  pruned, its reason naming those trials.
- A single-metric pruner (median, percentile, sha) on one named metric (`--prune-on`): that
  metric's values are stored as Optuna's intermediate values, and the pruner is shown the study
  through `OneMetric`, a view in which that metric's direction is the study's.
"""

from __future__ import annotations

import math
from collections.abc import Container
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner import attrs as A
from tuner.metrics import direction_signs, dominates

__all__ = ["OneMetric", "ParetoPruner"]


class ParetoPruner(BasePruner):
    """Prune a trial whose intermediate vector at a step is dominated by at least `n_dominating`
    finished trials' vectors at that step, each at least as good in every metric and better by
    `margin` of that metric's spread in one (the spread: max - min over the vectors compared)."""

    N_STARTUP = 5  # finished trials that reached the step before any trial is pruned there (as the median pruner's)
    N_WARMUP = 1  # steps never pruned: the first epoch says little about where a trial goes
    N_DOMINATING = 3  # one lucky trial is not enough: three must dominate
    MARGIN = 0.02  # noise between runs of one configuration is a few hundredths of a metric's spread on digits

    def __init__(self, *, n_startup_trials: int = N_STARTUP, n_warmup_steps: int = N_WARMUP, n_dominating: int = N_DOMINATING, margin: float = MARGIN) -> None:
        self.n_startup_trials, self.n_warmup_steps, self.n_dominating, self.margin = n_startup_trials, n_warmup_steps, n_dominating, margin

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return len(self.dominating(study, trial)) >= self.n_dominating

    def dominating(self, study: optuna.Study, trial: FrozenTrial) -> list[int]:
        """The numbers of the finished trials whose vector dominates `trial`'s latest one by the
        margin (fewer than n_dominating: keep it)."""
        vectors = trial.user_attrs.get(A.VECTORS) or {}
        if not vectors:
            return []
        step = max(vectors, key=int)
        mine = vectors[step]
        if int(step) <= self.n_warmup_steps:
            return []
        signs = direction_signs(study.directions)
        others = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            theirs = (t.user_attrs.get(A.VECTORS) or {}).get(step)
            if theirs is not None and len(theirs) == len(mine) and all(v is not None and math.isfinite(v) for v in theirs):
                others.append((t.number, theirs))
        if len(others) < self.n_startup_trials:
            return []
        columns = list(zip(mine, *(v for _, v in others)))
        margins = [self.margin * (max(c) - min(c)) for c in columns]
        return [number for number, theirs in others if dominates(theirs, mine, signs, margins)]


class OneMetric:
    """A study of several metrics as a single-metric pruner must see it: one direction, that of
    the metric pruned on (whose values the trials store as Optuna's intermediate values); the
    rest is the study itself. Median, percentile and successive halving read only these."""

    def __init__(self, study: optuna.Study, direction: str) -> None:
        self._study = study
        self.direction = StudyDirection.MAXIMIZE if direction == "maximize" else StudyDirection.MINIMIZE
        self.directions = [self.direction]

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._study.get_trials(deepcopy=deepcopy, states=states)

    def _is_multi_objective(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)
