"""Warm starts (tuner.warmstart): a new study begins with an earlier study's best configurations,
mapped onto its space, each queued trial saying where it came from and what changed."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from tuner import attrs as A
from tuner.errors import SpecError
from tuner.space import parse_space
from tuner.warmstart import DEFAULT_K, parse_warm_start, plan

SQLITE = "sqlite:///studies/tuner.db"
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1.0, log=True),
    "hidden_units": IntDistribution(4, 256),
    "activation": CategoricalDistribution(["relu", "tanh", "sigmoid"]),
    "momentum": FloatDistribution(0.0, 0.99),
}
NEW_SPACE = {  # narrower lr, units on a step of 16, no momentum, a dropout the earlier study lacked
    "params": {
        "lr": {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True},
        "hidden_units": {"type": "int", "low": 16, "high": 128, "step": 16},
        "activation": {"type": "categorical", "choices": ["relu", "tanh"]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "epochs": 2,
    }
}


def _earlier(url: str, rows: list[tuple[float, dict]], *, name: str = "old", directions: tuple[str, ...] = ("maximize",)) -> None:
    study = optuna.create_study(study_name=name, storage=url, directions=list(directions))
    for value, params in rows:
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, values=value if isinstance(value, list) else [value], params=params,
            distributions={k: DISTRIBUTIONS[k] for k in params},
        ))  # fmt: skip


def test_the_best_configurations_are_mapped_onto_the_new_space_and_say_what_changed(project):
    _earlier(SQLITE, [
        (0.90, {"lr": 0.5, "hidden_units": 200, "activation": "relu", "momentum": 0.9}),  # lr and units clipped, momentum dropped
        (0.95, {"lr": 0.01, "hidden_units": 37, "activation": "tanh", "momentum": 0.5}),  # units onto the step
        (0.97, {"lr": 0.02, "hidden_units": 64, "activation": "sigmoid", "momentum": 0.0}),  # sigmoid: not a choice here
        (0.50, {"lr": 0.0001, "hidden_units": 8, "activation": "relu", "momentum": 0.1}),  # not among the best 3
    ])  # fmt: skip
    space = parse_space(NEW_SPACE, name="new", source="test")
    warm = plan("old", 3, storage_url=SQLITE, space=space, budget=30, sampler="tpe")
    assert [record["trial"] for _, record in warm.queued] == [1, 0]  # the best first
    params, record = warm.queued[0]
    assert params == {"lr": 0.01, "hidden_units": 32, "activation": "tanh"} and record["value"] == 0.95
    assert record["changes"] == ["hidden_units 37->32", "dropout sampled", "momentum dropped"]
    params, record = warm.queued[1]
    assert params == {"lr": 0.1, "hidden_units": 128, "activation": "relu"}
    assert record["changes"] == ["lr 0.5->0.1", "hidden_units 200->128", "dropout sampled", "momentum dropped"]
    assert warm.skipped == ["trial 2: activation='sigmoid' is not one of the new space's choices (relu, tanh)"]
    small = plan("old", 3, storage_url=SQLITE, space=space, budget=1, sampler="random")
    assert len(small.queued) == 1 and small.skipped[-1] == "trial 0: the new study's budget (1) is full"


def test_a_two_metric_study_gives_its_pareto_front(project):
    _earlier(SQLITE, [
        ([0.90, 100], {"lr": 0.01, "hidden_units": 16, "activation": "relu"}),
        ([0.95, 900], {"lr": 0.02, "hidden_units": 64, "activation": "relu"}),
        ([0.80, 900], {"lr": 0.03, "hidden_units": 64, "activation": "tanh"}),  # dominated
    ], directions=("maximize", "minimize"))  # fmt: skip
    warm = plan("old", DEFAULT_K, storage_url=SQLITE, space=parse_space(NEW_SPACE, name="new", source="test"), budget=30, sampler="nsga2")
    assert [record["trial"] for _, record in warm.queued] == [1, 0]


def test_a_warm_started_study_runs_the_earlier_best_first_and_lists_where_they_came_from(cli, project, tmp_path):
    other = f"sqlite:///{tmp_path / 'earlier.db'}"
    assert cli("study", "run", "old", "--space", "tiny", "--trials", "6", "--sampler", "random", "--storage", other, "-q").code == 0
    best = sorted(optuna.load_study(study_name="old", storage=other).trials, key=lambda t: -t.value)[:3]
    Path("search_spaces/narrow.yaml").write_text(
        "params:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n  hidden_units: {type: int, low: 16, high: 32, step: 4}\n"
        "  dropout: {type: float, low: 0.0, high: 0.3}\n  epochs: 2\n"
    )
    result = cli("study", "run", "new", "--space", "narrow", "--trials", "5", "--warm-start", "old:3", "--warm-start-storage", other, "-q")
    assert result.code == 0, result.err
    assert "warm start: 3 configurations of study 'old' queued first" in result.err
    trials = sorted(optuna.load_study(study_name="new", storage=SQLITE).trials, key=lambda t: t.number)
    assert len(trials) == 5 and [t.user_attrs[A.WARM_START]["trial"] for t in trials[:3]] == [t.number for t in best]
    assert not any(A.WARM_START in t.user_attrs for t in trials[3:])
    for earlier, t in zip(best, trials):
        assert t.params["lr"] == pytest.approx(min(max(earlier.params["lr"], 1e-3), 1e-2))
        assert t.params["hidden_units"] == min(max(16 + round((earlier.params["hidden_units"] - 16) / 4) * 4, 16), 32)
        assert "dropout sampled" in t.user_attrs[A.WARM_START]["changes"]
    listed = cli("study", "trials", "new").out
    assert listed.count("from 'old'") == 3  # the note column (folded to the terminal's width)
    assert "warm start from study 'old' (" in (shown := cli("study", "show", "new").out) and "3 configurations queued first" in shown


@pytest.mark.parametrize(
    "extra, said",
    [
        (["--warm-start", "ghost"], "--warm-start ghost: no study 'ghost'"),
        (["--warm-start", "old:0"], "K must be a number of trials, 1 or more"),
        (["--warm-start", "old", "--sampler", "grid", "--workload", "wine"], "only points already run on the same space and workload can be skipped"),
        (["--warm-start-storage", "sqlite:///elsewhere.db"], "give --warm-start STUDY too"),
    ],
)
def test_bad_warm_starts_get_one_line_and_write_nothing(cli, project, extra, said):
    assert cli("study", "run", "old", "--space", "tiny", "--trials", "2", "-q").code == 0
    before = Path("studies/tuner.db").read_bytes()
    result = cli("study", "run", "new", "--space", "tiny", "--trials", "3", *extra)
    assert result.code != 0 and said in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert Path("studies/tuner.db").read_bytes() == before
    assert not Path("elsewhere.db").exists()


def test_a_warm_start_that_shares_no_parameter_or_targets_an_existing_study_is_refused(cli, project):
    _earlier(SQLITE, [(0.9, {"momentum": 0.5})])
    Path("search_spaces/other.yaml").write_text("params:\n  lr: {type: float, low: 1.0e-3, high: 0.1}\n  epochs: 1\n")
    result = cli("study", "run", "new", "--space", "other", "--trials", "2", "--warm-start", "old")
    assert result.code == 1 and "its trials share no parameter with the new space (they set momentum; it samples lr)" in result.err
    assert "new" not in optuna.get_all_study_names(SQLITE)
    assert cli("study", "run", "new", "--space", "other", "--trials", "1", "-q").code == 0
    again = cli("study", "run", "new", "--warm-start", "old")
    assert again.code == 1 and "--warm-start seeds a new study, and study 'new' exists already" in again.err


def test_warm_start_names():
    assert parse_warm_start("old") == ("old", DEFAULT_K) and parse_warm_start("old:3") == ("old", 3)
    for bad in ("", ":3", "old:x", "old:-1"):
        with pytest.raises(SpecError):
            parse_warm_start(bad)


def test_a_prior_steers_tpe_from_its_first_trial_without_being_a_trial():
    """The sampler models the earlier trials (here: a bowl around x=2) from the first trial on."""
    from tuner.prior import PriorSampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = __import__("numpy").random.default_rng(0)
    prior = []
    for i in range(60):
        x = float(rng.uniform(-5, 5))
        t = create_trial(state=TrialState.COMPLETE, values=[(x - 2) ** 2], params={"x": x}, distributions={"x": FloatDistribution(-5, 5)})
        t.number = i - 60
        prior.append(t)

    def objective(trial: optuna.Trial) -> float:
        return (trial.suggest_float("x", -5, 5) - 2) ** 2

    cold = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    cold.optimize(objective, n_trials=8)
    warm = optuna.create_study(sampler=PriorSampler(optuna.samplers.TPESampler(seed=1), prior))
    warm.optimize(objective, n_trials=8)
    assert len(warm.trials) == 8 and min(t.number for t in warm.trials) == 0  # the prior's trials are not the study's
    near = [abs(t.params["x"] - 2) < 0.75 for t in warm.trials]
    assert sum(near) >= 6 and sum(abs(t.params["x"] - 2) < 0.75 for t in cold.trials) < sum(near)


def test_warm_start_as_prior_stores_the_earlier_trials_and_every_worker_s_sampler_reads_them(cli, project):
    from tuner.prior import PRIOR_ATTR, PriorSampler
    from tuner.study import open_study

    assert cli("study", "run", "old", "--space", "tiny", "--trials", "6", "--sampler", "random", "-q").code == 0
    result = cli("study", "run", "new", "--space", "tiny", "--trials", "3", "--warm-start-as-prior", "old", "-q")
    assert result.code == 0, result.err
    assert "warm start: 6 trials of study 'old' given to the tpe sampler as its prior (not run, not counted)" in result.err
    study = optuna.load_study(study_name="new", storage=SQLITE)
    assert len(study.trials) == 3 and len(study.user_attrs[PRIOR_ATTR]["trials"]) == 6
    assert isinstance(open_study("new", SQLITE).study.sampler, PriorSampler)
    assert "prior: 6 finished trials of study 'old'" in cli("study", "show", "new").out
    refused = cli("study", "run", "other", "--space", "tiny", "--trials", "3", "--sampler", "random", "--warm-start-as-prior", "old")
    assert refused.code == 1 and "random does not model them: use --sampler tpe or gp" in refused.err
    assert "other" not in optuna.get_all_study_names(SQLITE)


def test_a_grid_study_takes_over_the_points_an_earlier_grid_finished_and_runs_only_the_rest(cli, project):
    assert cli("study", "run", "g1", "--space", "tiny", "--sampler", "grid", "--trials", "2", "-q").code == 0
    finished = optuna.load_study(study_name="g1", storage=SQLITE).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    first = {tuple(sorted(t.params.items())): t for t in finished}
    assert len(first) == 2
    result = cli("study", "run", "g2", "--space", "tiny", "--sampler", "grid", "--warm-start", "g1", "-q")
    assert result.code == 0 and ("grid exhausted" in result.out or "budget reached" in result.out), result.out
    assert "warm start: 2 grid points study 'g1' finished taken over, not run again" in result.err
    trials = optuna.load_study(study_name="g2", storage=SQLITE).trials
    points = [tuple(sorted(t.params.items())) for t in trials]
    assert len(trials) == 4 and len(set(points)) == 4  # the whole grid, each point once
    taken = [t for t in trials if t.user_attrs.get(A.WARM_START, {}).get("grid")]
    assert sorted(tuple(sorted(t.params.items())) for t in taken) == sorted(first)  # taken over, with their results, not run again
    for t in taken:
        assert t.value == first[tuple(sorted(t.params.items()))].value
