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


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    return (x - 1.0) ** 2 + {"a": 0.0, "b": 0.5, "c": 1.0}[kind]


def test_a_history_window_gives_tpe_the_study_as_if_it_held_only_its_last_trials() -> None:
    """TPE behind --history 10 on a 30-trial study samples exactly what TPE samples on a study of
    those 10 trials alone (Optuna's own sampler, the same seed): the window is all it sees."""
    from tuner.samplers import HistoryWindow

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    full = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    full.optimize(_objective, n_trials=30)

    def tpe() -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=7, multivariate=True, group=True, n_startup_trials=5, constant_liar=True)

    def first(study: optuna.Study) -> tuple[float, str]:
        trial = study.ask()
        return trial.suggest_float("x", -5.0, 5.0), trial.suggest_categorical("kind", ["a", "b", "c"])

    def holding(trials: list, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
        study = optuna.create_study(sampler=sampler)
        for t in trials:
            study.add_trial(t)
        return study

    drawn = set()
    for n in (6, 10, 20):
        windowed = first(holding(full.trials, HistoryWindow(tpe(), n)))
        assert windowed == first(holding(full.trials[-n:], tpe())), n
        drawn.add(windowed)
    assert first(holding(full.trials, tpe())) not in drawn  # the whole history samples otherwise
    running = holding(full.trials, HistoryWindow(tpe(), 6))
    running.ask()  # a running trial (a liar for TPE) newer than the window's first trial is shown
    seen: list = []
    inner = HistoryWindow(tpe(), 6)
    real = inner._inner.sample_relative
    inner._inner.sample_relative = lambda study, trial, space: seen.append(study._get_trials(deepcopy=False)) or real(study, trial, space)
    running.sampler = inner
    first(running)
    assert [t.state.name for t in seen[0]] == ["COMPLETE"] * 6 + ["RUNNING", "RUNNING"]


def test_history_is_for_samplers_that_model_results_and_at_least_their_start_up(cli, project) -> None:
    """--history with a sampler that models nothing, or below the sampler's random start-up, is
    one line naming the fix, exit 1, and no study."""
    from pathlib import Path

    Path("search_spaces/h.yaml").write_text("params:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n  epochs: 1\n")
    bad = cli("study", "create", "h", "--space", "h", "--sampler", "random", "--history", "50")
    assert bad.code == 1 and bad.err.count("\n") == 1 and "drop --history" in bad.err and "sampler random" in bad.err
    low = cli("study", "create", "h", "--space", "h", "--trials", "100", "--history", "3")
    assert low.code == 1 and low.err.count("\n") == 1 and "pass --history 5 or more" in low.err
    assert not Path("studies/tuner.db").exists() or "h" not in cli("study", "list", "--format", "json").out
    ok = cli("study", "create", "h", "--space", "h", "--trials", "100", "--history", "40")
    assert ok.code == 0, ok.err
    assert "sampler tpe (the last 40 trials)" in cli("study", "show", "h").out
