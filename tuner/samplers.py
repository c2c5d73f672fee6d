"""Registries: sampler and pruner names -> factories. Adding one is one entry."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Container, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import SpecError
from tuner.pruning import ParetoPruner

__all__ = ["MODELING_SAMPLERS", "HistoryWindow", "MULTI_SAMPLERS", "PRUNERS", "SAMPLERS", "SINGLE_PRUNERS", "FastRandomSampler", "default_startup_trials", "make_pruner", "make_sampler", "nsga_population", "StudyView", "ViewSampler"]


class FastRandomSampler(optuna.samplers.RandomSampler):
    """Optuna's RandomSampler draw for draw (the same seed gives the same values), without the
    search-space transform it builds for every parameter it samples: about 40 µs a parameter
    less, most of what random search costs a trial. Each parameter takes the same uniform draws
    from the same generator and maps them to a value as Optuna's transform does."""

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: BaseDistribution) -> Any:
        d, rng = param_distribution, self._rng.rng
        if isinstance(d, CategoricalDistribution):  # one draw per choice, the largest wins
            return d.choices[int(rng.random_sample(len(d.choices)).argmax())]  # uniform(0, 1), as Optuna draws
        if isinstance(d, IntDistribution):
            if d.log:  # log-uniform over [low - 0.5, high + 0.5], rounded
                value = round(math.exp(rng.uniform(math.log(d.low - 0.5), math.log(d.high + 0.5))))
            else:  # each multiple of step gets an equal share of [low - step/2, high + step/2]
                u = rng.uniform(d.low - 0.5 * d.step, d.high + 0.5 * d.step)
                value = math.floor((u - d.low) / d.step + 0.5) * d.step + d.low
            return min(max(value, d.low), d.high)
        if isinstance(d, FloatDistribution):
            if d.step is not None:
                u = rng.uniform(d.low - 0.5 * d.step, d.high + 0.5 * d.step)
                return float(np.clip(np.round((u - d.low) / d.step) * d.step + d.low, d.low, d.high))
            if d.log:
                value = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
                return value if d.single() else float(np.clip(value, d.low, np.nextafter(d.high, d.high - 1)))
            value = rng.uniform(d.low, d.high)
            return value if d.single() else min(value, np.nextafter(d.high, d.high - 1))
        return super().sample_independent(study, trial, param_name, param_distribution)


# Grid points are enqueued as trials when a grid study is created (each popped exactly once,
# atomically, by whichever worker gets it), so the grid "sampler" only backs up the queue.
# Each factory takes the seed and the number of random start-up trials (for those that model).
SAMPLERS: dict[str, Callable[[int, int], BaseSampler]] = {
    # constant_liar: trials still running (a pack, other workers) count as bad results, so the
    # trials asked together spread out instead of crowding one promising spot
    "tpe": lambda seed, n_startup: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=n_startup, constant_liar=True),
    "random": lambda seed, _: FastRandomSampler(seed=seed),
    "grid": lambda seed, _: FastRandomSampler(seed=seed),
    "gp": lambda seed, n_startup: optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup),
    "qmc": lambda seed, _: optuna.samplers.QMCSampler(seed=seed, scramble=True),
    "cmaes": lambda seed, _: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    # genetic search, the default with several metrics: generations of nsga_population trials
    "nsga2": lambda seed, n_startup: optuna.samplers.NSGAIISampler(seed=seed, population_size=nsga_population(n_startup)),
    "nsga3": lambda seed, n_startup: optuna.samplers.NSGAIIISampler(seed=seed, population_size=nsga_population(n_startup)),
}
# those that model the finished trials' results: an earlier study's trials are their prior
# (tuner.prior), and --history bounds what they model (HistoryWindow): their cost grows with the
# history (TPE's ~10 ms a trial per 1,000 finished trials, a second at 100,000; GP's faster)
MODELING_SAMPLERS = ("tpe", "gp")
# those that model several metrics at once (CMA-ES models one)
MULTI_SAMPLERS = ("nsga2", "nsga3", "tpe", "gp", "random", "qmc", "grid")

# The resource is the epoch: every trial reports its metric once per epoch.
PRUNERS: dict[str, Callable[[], BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
    "percentile": lambda: optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=2),
    "sha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3),
    "pareto": lambda: ParetoPruner(),  # several metrics (tuner.pruning)
}
# pruners that watch one metric; with several, they watch the one --prune-on names (hyperband's
# brackets read the study's directions from storage, so it cannot be shown one metric)
SINGLE_PRUNERS = ("median", "percentile", "sha")


def check_name(kind: str, name: str, registry: dict) -> None:
    if name not in registry:
        raise SpecError(f"unknown {kind} {name!r}; valid: {', '.join(registry)}")


def default_startup_trials(budget: int) -> int:
    """Random trials before tpe or gp start modeling, unless the spec sets `startup_trials`: a
    twentieth of the budget, between 3 and 10. Optuna's fixed 10 spends a third of a 30-trial
    study at random; on digits, TPE with 3 reaches 0.97 validation accuracy in about 40% of the
    time it takes with 10 (`tuner bench`'s search race, 10 seeds)."""
    return min(10, max(3, budget // 20))


def nsga_population(n_startup: int) -> int:
    """Trials a generation of NSGA-II/III: Optuna's 50 would leave a 40-trial study random all
    through; twice the random start-up trials other samplers take (budget / 20, in 3..10), at
    least 8, gives a study of 40 trials five generations."""
    return max(8, 2 * n_startup)


def make_sampler(name: str, seed: int, *, n_startup: int = 10, history: int | None = None) -> BaseSampler:
    check_name("sampler", name, SAMPLERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = SAMPLERS[name](seed, n_startup)
    return sampler if history is None else HistoryWindow(sampler, history)


class StudyView:
    """The study as a wrapping sampler shows it to the sampler inside: its trials as `shown`
    gives them, everything else the study's own."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def shown(self, trials: list[FrozenTrial], states: Container[TrialState] | None) -> list[FrozenTrial]:
        return trials

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self.shown(self._study.get_trials(deepcopy=deepcopy, states=states), states)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False) -> list[FrozenTrial]:
        return self.shown(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache), states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class ViewSampler(BaseSampler):
    """A sampler that samples with `inner`, showing it the study through `view` (a StudyView);
    what it is told of each trial's start and end is the study's own."""

    def __init__(self, inner: BaseSampler) -> None:
        self._inner = inner

    def view(self, study: optuna.Study) -> StudyView:
        raise NotImplementedError

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(self.view(study), trial)  # type: ignore[arg-type]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(self.view(study), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self._inner.sample_independent(self.view(study), trial, param_name, param_distribution)  # type: ignore[arg-type]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)


class _Recent(StudyView):
    """The study as a windowed sampler sees it: its last `n` finished trials and the unfinished
    ones created since the first of them (running ones are liars for TPE)."""

    def __init__(self, study: optuna.Study, n: int) -> None:
        super().__init__(study)
        self._n = n

    def shown(self, trials: list[FrozenTrial], states: Container[TrialState] | None) -> list[FrozenTrial]:
        """From the end (Optuna lists trials as they were created) back to the n-th finished one:
        a window of 1,000 in a 100,000-trial study costs a walk of 1,000, not a sort of 100,000."""
        n_finished = 0
        for start in range(len(trials) - 1, -1, -1):
            if trials[start].state.is_finished():
                n_finished += 1
                if n_finished == self._n:
                    return trials[start:]
        return trials


class HistoryWindow(ViewSampler):
    """A sampler that models only the study's last `n` finished trials, and the running ones
    started since (`--history N`): TPE's time a trial grows with the history (15 ms at 1,000
    trials, a second at 100,000 on 2 cores), and a long study's recent trials are where its search
    is. What it costs in search quality is measured by `tuner bench`'s scale section."""

    def __init__(self, inner: BaseSampler, n: int) -> None:
        super().__init__(inner)
        self._n = n

    def view(self, study: optuna.Study) -> StudyView:
        return _Recent(study, self._n)


def make_pruner(name: str) -> BasePruner:
    check_name("pruner", name, PRUNERS)
    return PRUNERS[name]()
