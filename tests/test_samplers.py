"""tuner/samplers.py: the registries' factories and tuner's random sampler."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.samplers import FastRandomSampler, make_sampler

DISTRIBUTIONS = {
    "int": IntDistribution(1, 3),
    "int_negative": IntDistribution(-5, 5),
    "int_step": IntDistribution(0, 98, step=7),
    "int_log": IntDistribution(4, 128, log=True),
    "int_single": IntDistribution(2, 2),
    "float": FloatDistribution(0.2, 0.5),
    "float_log": FloatDistribution(1e-5, 1e-1, log=True),
    "float_step": FloatDistribution(0.0, 1.0, step=0.1),
    "float_step_negative": FloatDistribution(-3.0, 3.0, step=0.25),
    "float_single": FloatDistribution(2.0, 2.0),
    "categorical": CategoricalDistribution(["adam", "rmsprop", "sgd"]),
    "categorical_mixed": CategoricalDistribution([1, None, 2.5, True, "x"]),
    "categorical_single": CategoricalDistribution(["only"]),
}


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_fast_random_sampler_draws_what_optunas_random_sampler_draws(seed: int) -> None:
    # the same seed, the same values of the same types, parameter after parameter: switching
    # tuner's random search to it changed no study's trials
    optunas, ours = optuna.samplers.RandomSampler(seed=seed), FastRandomSampler(seed=seed)
    for _ in range(300):
        for name, dist in DISTRIBUTIONS.items():
            expected = optunas.sample_independent(None, None, name, dist)  # type: ignore[arg-type]
            got = ours.sample_independent(None, None, name, dist)  # type: ignore[arg-type]
            assert got == expected and type(got) is type(expected), (name, got, expected)


@pytest.mark.parametrize("name", ["int_log", "float_log", "categorical"])
def test_fast_random_sampler_covers_the_whole_range(name: str) -> None:
    dist: BaseDistribution = DISTRIBUTIONS[name]
    sampler = FastRandomSampler(seed=0)
    values = [sampler.sample_independent(None, None, name, dist) for _ in range(2000)]  # type: ignore[arg-type]
    if isinstance(dist, CategoricalDistribution):
        assert set(values) == set(dist.choices)
    else:
        assert min(values) >= dist.low and max(values) <= dist.high
        assert min(values) < dist.low * 1.5 and max(values) > dist.high / 1.5  # log-uniform reaches both ends


def test_fast_random_sampler_in_a_study_matches_optunas() -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        n = trial.suggest_int("n", 1, 64, log=True)
        kind = trial.suggest_categorical("kind", ["a", "b"])
        return x * x + n + (kind == "a")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        studies = [optuna.create_study(sampler=s) for s in (optuna.samplers.RandomSampler(seed=3), FastRandomSampler(seed=3))]
        for study in studies:
            study.optimize(objective, n_trials=20)
    assert [t.params for t in studies[0].trials] == [t.params for t in studies[1].trials]


@pytest.mark.parametrize("name", ["random", "grid"])
def test_random_and_grid_studies_use_the_fast_sampler(name: str) -> None:
    assert isinstance(make_sampler(name, 0), FastRandomSampler)
