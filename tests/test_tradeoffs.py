"""Trade-offs: studies of several metrics (each with its direction), pruned on their Pareto front,
with constraints, from tuner's loop, a Python objective and a command; and the arithmetic under
them (dominance, the front, hypervolume) checked against Optuna's own."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner import attrs as A
from tuner.errors import SpecError
from tuner.metrics import Constraint, dominates, hypervolume, pareto_front, parse_constraint, parse_metric
from tuner.pruning import ParetoPruner
from tuner.spec import StudySpec
from tuner.study import create_study, front, open_study, run_study

SQLITE = "sqlite:///studies/tuner.db"
TWO = ["val_accuracy", "params:minimize"]

# from tiny to larger models, a few epochs: fronts and pruning in seconds
SPACE = """
params:
  lr: {type: float, low: 3.0e-3, high: 0.1, log: true}
  hidden_units: {type: int, low: 4, high: 128, log: true}
  n_layers: {type: int, low: 1, high: 2}
  optimizer: adam
  epochs: 4
  scaling: standard
"""


@pytest.fixture
def space(project: Path) -> str:
    (project / "search_spaces" / "small_front.yaml").write_text(SPACE)
    return "small_front"


def _spec(**kw) -> StudySpec:
    return StudySpec(**{"name": "t", "space": "small_front", "metrics": TWO, "trials": 12, **kw})


# --- the arithmetic -----------------------------------------------------------------------------


def test_metrics_and_constraints_are_read_as_written():
    assert parse_metric("val_accuracy") == ("val_accuracy", None)
    assert parse_metric("test-loss:minimize") == ("test-loss", "minimize")
    assert parse_constraint("params<=5e4") == Constraint("params", "<=", 50000.0)
    assert parse_constraint(" latency_ms >= 0.5 ").text() == "latency_ms>=0.5"
    assert parse_constraint("params<=100").violation(80) == -20 and parse_constraint("val_accuracy>=0.9").violation(0.8) == pytest.approx(0.1)
    for bad in ("params<100", "params<=abc", "<=3", "params<=inf"):
        with pytest.raises(SpecError, match="constraint"):
            parse_constraint(bad)
    with pytest.raises(SpecError, match="maximize or minimize"):
        parse_metric("loss:down")


def test_the_front_and_hypervolume_agree_with_optuna():
    from optuna._hypervolume import compute_hypervolume
    from optuna.study._multi_objective import _is_pareto_front

    rng = random.Random(0)
    for n_metrics in (2, 3, 4):
        for _ in range(15):
            points = [[rng.choice([rng.random(), 0.5]) for _ in range(n_metrics)] for _ in range(14)]  # ties included
            signs = [rng.choice([1.0, -1.0]) for _ in range(n_metrics)]
            losses = [[-s * v for v, s in zip(p, signs)] for p in points]
            ours = pareto_front(points, signs)
            theirs = [i for i, on in enumerate(_is_pareto_front(__import__("numpy").array(losses), assume_unique_lexsorted=False)) if on]
            assert {tuple(points[i]) for i in ours} == {tuple(points[i]) for i in theirs}
            reference = [-0.1 if s > 0 else 1.1 for s in signs]
            expected = compute_hypervolume(__import__("numpy").array([losses[i] for i in ours]), __import__("numpy").array([-s * r for r, s in zip(reference, signs)]))
            assert hypervolume(points, reference, signs) == pytest.approx(expected, rel=1e-9)
    assert dominates([0.9, 100], [0.8, 100], [1, -1]) and not dominates([0.9, 100], [0.9, 100], [1, -1])


def test_the_front_of_many_points_keeps_the_first_of_equals_and_agrees_with_optuna():
    """The dashboard's window keeps the front of every trial before it (tuner.dashboard): the
    front of 20,000 points, duplicates among them, is Optuna's, each point once (the first of
    equal ones), in the points' order."""
    import numpy as np
    from optuna.study._multi_objective import _is_pareto_front

    rng = np.random.default_rng(0)
    for n_metrics in (1, 2, 3):
        points = rng.integers(0, 40, size=(20_000, n_metrics)).astype(float).tolist()  # many ties
        signs = [1.0, -1.0, 1.0][:n_metrics]
        ours = pareto_front(points, signs)
        on = _is_pareto_front(np.array([[-s * v for v, s in zip(p, signs)] for p in points]), assume_unique_lexsorted=False)
        firsts = {}
        for i, p in enumerate(points):
            firsts.setdefault(tuple(p), i)
        assert ours == sorted(firsts[tuple(points[i])] for i in np.flatnonzero(on) if firsts[tuple(points[i])] == i)
        assert len({tuple(points[i]) for i in ours}) == len(ours) and set(map(tuple, np.array(points)[on].tolist())) == {tuple(points[i]) for i in ours}
    assert pareto_front([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0]], [1.0, 1.0]) == [0, 2]
    assert pareto_front([], [1.0]) == []
    assert pareto_front([[0.5, math.inf], [1.0, math.inf], [0.2, 1.0]], [1.0, -1.0]) == [1, 2]  # a metric at its worst


def test_domination_by_a_margin_needs_no_worse_everywhere_and_clearly_better_somewhere():
    signs, margins = [1.0, -1.0], [0.02, 100.0]
    assert dominates([0.90, 5000], [0.80, 5000], signs, margins)  # clearly more accurate, as large
    assert not dominates([0.81, 5000], [0.80, 5000], signs, margins)  # within the noise
    assert dominates([0.80, 4000], [0.80, 5000], signs, margins)  # as accurate, clearly smaller
    assert not dominates([0.95, 5001], [0.80, 5000], signs, margins)  # larger: a trade-off, not a domination


# --- specs --------------------------------------------------------------------------------------


def test_one_metric_is_stored_exactly_as_before_and_old_specs_load():
    spec = StudySpec(name="a", space="tiny")
    stored = spec.as_dict()
    assert "metrics" not in stored and "constraints" not in stored and "prune_on" not in stored
    assert (stored["metric"], stored["direction"], stored["sampler"], stored["pruner"]) == ("val_accuracy", "maximize", "tpe", "median")
    old = {k: v for k, v in stored.items() if k not in ("max_failures", "max_streak", "metric_patterns", "step_pattern")}
    assert StudySpec.from_dict(old, source="old").as_dict() == stored


def test_several_metrics_default_to_nsga2_and_the_pareto_pruner():
    spec = StudySpec(name="a", space="tiny", metrics=["val_accuracy", "params:minimize", "latency_ms"])
    assert (spec.sampler, spec.pruner, spec.metric, spec.direction) == ("nsga2", "pareto", "val_accuracy", "maximize")
    assert spec.metrics == ["val_accuracy:maximize", "params:minimize", "latency_ms:minimize"]
    assert StudySpec.from_dict(spec.as_dict(), source="stored") == spec  # round trip
    assert StudySpec(name="a", space="tiny", metrics=["params:minimize", "val_loss"]).epoch_metric == "val_loss"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metric", "val_accuracy", "--metric", "params:minimize", "--sampler", "cmaes"], "sampler cmaes optimizes one metric; with several metrics use nsga2"),
        (["--metric", "val_accuracy", "--metric", "flops:minimize"], "unknown metric 'flops'"),
        (["--metric", "val_accuracy", "--metric", "params:maximize"], "metric params is minimized, not maximized"),
        (["--constraint", "flops<=100"], "tuner's loop records no flops"),
        (["--constraint", "params<100"], "must read METRIC<=NUMBER"),
        (["--metric", "val_accuracy", "--metric", "params", "--pruner", "median"], "pruner median watches one metric and this study has 2; use --pruner pareto"),
        (["--metric", "val_accuracy", "--metric", "params", "--pruner", "median", "--prune-on", "val_loss"], "--prune-on val_loss is not one of the study's metrics"),
        (["--metric", "val_accuracy", "--metric", "params", "--pruner", "hyperband", "--prune-on", "val_accuracy"], "hyperband cannot watch one of several metrics"),
        (["--metric", "val_accuracy", "--prune-on", "val_accuracy", "--pruner", "median"], "this study has one"),
        (["--pruner", "pareto"], "pruner pareto compares trials on several metrics"),
        (["--metric", "params:minimize"], "params alone would tune for the cheapest model"),
        (["--metric", "val_accuracy", "--metric", "val_accuracy"], "metric val_accuracy is given twice"),
        (["--metric", "val_accuracy", "--metric", "params", "--direction", "minimize"], "--direction sets one metric's direction"),
        (["--metric", "val_loss:maximize"], "metric val_loss is minimized, not maximized"),
    ],
)
def test_a_bad_combination_is_one_line_and_writes_nothing(cli, space, args, message):
    result = cli("study", "create", "t", "--space", space, *args)
    assert result.code != 0 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert not Path("studies/tuner.db").exists()


# --- tuner's loop -------------------------------------------------------------------------------


def test_a_two_metric_study_prunes_on_the_front_with_reasons_naming_dominating_trials(cli, space):
    result = cli("study", "run", "t", "--space", space, "--metric", "val_accuracy", "--metric", "params:minimize", "--trials", "24", "--seed", "3")
    assert result.code == 0, result.err
    assert "Pareto front:" in result.out and "hypervolume" in result.out
    study = optuna.load_study(study_name="t", storage=SQLITE)
    assert study.metric_names == ["val_accuracy", "params"]  # the dashboard names both
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 24
    for t in complete:  # the values are the best epoch's accuracy and the model's size, as recorded
        assert len(t.values) == 2 and t.values[1] == t.user_attrs[A.PARAMS] and t.values[0] == max(t.user_attrs[A.HISTORY]["val_accuracy"])
    # the front is exactly the non-dominated complete trials
    on_front = {t.number for t in front(open_study("t", SQLITE).study)}
    expected = {complete[i].number for i in pareto_front([t.values for t in complete], [1.0, -1.0])}
    assert on_front == expected and len(on_front) >= 2
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the pareto pruner pruned nothing in 24 trials"
    by_number = {t.number: t for t in trials}
    for t in pruned:
        reason = t.user_attrs[A.PRUNED_REASON]
        assert reason.startswith("pareto pruner at epoch ") and t.user_attrs[A.PRUNED_KIND] == A.PRUNER
        step = reason.split("at epoch ")[1].split(":")[0]
        mine = t.user_attrs[A.VECTORS][step]
        named = [int(n) for n in reason.split("dominated by trials ")[1].split(" at that")[0].replace(" and", ",").split(", ") if n.strip().isdigit()]
        assert len(named) >= ParetoPruner.N_DOMINATING
        for n in named:  # each named trial really is at least as good in both at that epoch, and was finished before
            theirs = by_number[n].user_attrs[A.VECTORS][step]
            assert theirs[0] >= mine[0] and theirs[1] <= mine[1] and theirs != mine
    shown = cli("study", "trials", "t")
    assert "val_accuracy" in shown.out and "params" in shown.out and "pareto" in shown.out  # the note (folded to the width)
    rows = json.loads(cli("study", "trials", "t", "--format", "json").out)
    assert all(len(r["values"]) == 2 for r in rows if r["state"] == "complete")
    listed = cli("study", "best", "t", "--format", "json")
    assert {t["number"] for t in json.loads(listed.out)["trials"]} == on_front
    assert "Pareto front:" in cli("study", "show", "t").out


def test_a_front_of_more_trials_than_a_table_holds_is_cut_and_says_so(cli, space):
    """A front of thousands of tied trials (a large study of few distinct results) reads only the
    front's trials, and its table shows the first TABLE_LIMIT, saying how many there are; --format
    json lists them all."""
    from tuner.cli.inspecting import TABLE_LIMIT

    assert cli("study", "create", "t", "--space", space, "--metric", "val_accuracy", "--metric", "params:minimize").code == 0
    study = optuna.load_study(study_name="t", storage=SQLITE)
    for _ in range(TABLE_LIMIT + 5):
        study.add_trial(optuna.trial.create_trial(values=[0.5, 100.0]))
    study.add_trial(optuna.trial.create_trial(values=[0.4, 200.0]))  # dominated
    shown = cli("study", "best", "t")
    assert shown.code == 0, shown.err
    assert f"the first {TABLE_LIMIT} of the front's {TABLE_LIMIT + 5} trials; --format json gives them all" in shown.out
    assert len(json.loads(cli("study", "best", "t", "--format", "json").out)["trials"]) == TABLE_LIMIT + 5


def test_a_constraint_with_one_metric_never_shows_an_infeasible_best(cli, space):
    result = cli("study", "run", "t", "--space", space, "--constraint", "params<=3000", "--trials", "12", "--pruner", "none", "--format", "json")
    assert result.code == 0, result.err
    study = optuna.load_study(study_name="t", storage=SQLITE)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    feasible = [t for t in complete if t.user_attrs[A.PARAMS] <= 3000]
    infeasible = [t for t in complete if t.user_attrs[A.PARAMS] > 3000]
    assert feasible and infeasible, "the space must give both"
    for t in infeasible:
        assert t.constraints == {"params<=3000": t.user_attrs[A.PARAMS] - 3000} and t.user_attrs[A.VIOLATED] == ["params<=3000"]
    best = max(feasible, key=lambda t: (t.value, -t.number))
    assert json.loads(result.out)["best_value"] == best.value  # the run's own summary, from SQL
    shown = json.loads(cli("study", "best", "t", "--format", "json").out)
    assert shown["user_attrs"][A.PARAMS] <= 3000 and shown["value"] == best.value
    assert "constraints params<=3000:" in cli("study", "show", "t").out


def test_no_feasible_trial_is_said_in_one_line(cli, space):
    assert cli("study", "run", "t", "--space", space, "--constraint", "params<=10", "--trials", "3", "--pruner", "none", "-q").code == 0
    result = cli("study", "best", "t")
    assert result.code == 1 and "has no feasible trial: its 3 complete trials all miss params<=10" in result.err


def test_prune_on_watches_one_named_metric_with_a_single_metric_pruner(space):
    run_study(create_study(_spec(pruner="median", prune_on="val_accuracy", trials=16, seed=5), SQLITE), device="cpu")
    study = optuna.load_study(study_name="t", storage=SQLITE)
    trials = study.get_trials()
    for t in trials:  # Optuna's intermediate values hold the watched metric
        assert list(t.intermediate_values.values()) == t.user_attrs[A.HISTORY]["val_accuracy"]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs[A.PRUNED_REASON].startswith("median pruner on val_accuracy at epoch") for t in pruned)


def test_latency_and_training_time_are_measured_on_every_trial(space):
    run_study(create_study(_spec(metrics=["val_accuracy", "latency_ms", "train_seconds"], pruner="none", trials=3), SQLITE), device="cpu")
    for t in optuna.load_study(study_name="t", storage=SQLITE).get_trials():
        history = t.user_attrs[A.HISTORY]
        assert t.values[1] == t.user_attrs[A.LATENCY_MS] > 0 and len(set(history[A.LATENCY_MS])) == 1  # timed once a trial
        assert all(b > a for a, b in zip(history[A.TRAIN_SECONDS], history[A.TRAIN_SECONDS][1:]))  # it adds up epoch by epoch
        assert t.values[2] == history[A.TRAIN_SECONDS][t.user_attrs[A.BEST_EPOCH] - 1]


@pytest.mark.slow
def test_several_workers_on_postgresql_keep_the_budget_exact_and_resume(project, space, pg_url):
    import subprocess

    tuner = str(Path(sys.executable).parent / "tuner")
    env = {**__import__("os").environ, "TUNER_STORAGE": pg_url}
    args = [tuner, "study", "run", "t", "--space", space, "--metric", "val_accuracy", "--metric", "params:minimize", "-q"]
    subprocess.run([*args, "--trials", "10", "--workers", "2"], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([tuner, "study", "run", "t", "--trials", "14", "-q"], env=env, check=True, capture_output=True, timeout=300)  # resumed
    trials = optuna.load_study(study_name="t", storage=pg_url).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 14 and all(len(t.values) == 2 for t in finished if t.state == TrialState.COMPLETE)


def test_a_point_of_the_front_is_retrained_by_its_number(cli, space):
    assert cli("study", "run", "t", "--space", space, "--metric", "val_accuracy", "--metric", "params:minimize", "--trials", "6", "--pruner", "none", "-q").code == 0
    result = cli("best", "t", "--retrain")
    assert result.code == 1 and "pick a trial of its front with --trial N" in result.err
    chosen = front(open_study("t", SQLITE).study)[-1]  # the smallest model of the front
    result = cli("best", "t", "--trial", str(chosen.number), "--retrain", "--device", "cpu")
    assert result.code == 0, result.err
    from tuner.retrain import load_model

    model, meta = load_model(Path(f"studies/models/t-trial{chosen.number}.pt"))
    assert meta["trial"] == chosen.number and sum(p.numel() for p in model.parameters()) == chosen.values[1]
    assert meta["value"] == pytest.approx(chosen.values[0], abs=1e-6)
    assert "is pruned, not complete" in cli("best", "t", "--trial", "999").err or "has no trial 999" in cli("best", "t", "--trial", "999").err


# --- the person's own code ----------------------------------------------------------------------


OBJECTIVE = '''
def objective(trial):
    width = trial.params["width"]
    accuracy = 1 - 1 / width
    for step in range(1, 5):
        trial.report(step, {"accuracy": accuracy * step / 4, "size": width})
    return {"accuracy": accuracy, "size": width}

def a_number(trial):
    return 0.5
'''


def test_a_python_objective_returns_a_dict_of_metrics(project, cli):
    (project / "search_spaces" / "w.yaml").write_text("params:\n  width: {type: int, low: 2, high: 64}\n")
    (project / "mo_obj.py").write_text(OBJECTIVE)
    result = cli(
        "study", "run", "o", "--space", "w", "--objective", "mo_obj:objective", "--metric", "accuracy:maximize", "--metric", "size:minimize",
        "--constraint", "size<=40", "--trials", "10", "-q",
    )  # fmt: skip
    assert result.code == 0, result.err
    trials = optuna.load_study(study_name="o", storage=SQLITE).get_trials()
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.values == [pytest.approx(1 - 1 / t.params["width"]), t.params["width"]]
            assert (A.VIOLATED in t.user_attrs) == (t.params["width"] > 40)
        assert "4" in t.user_attrs[A.VECTORS] or t.state == TrialState.PRUNED
    # in a study of two metrics a bare number says what to return instead
    result = cli("study", "run", "n", "--space", "w", "--objective", "mo_obj:a_number", "--metric", "accuracy:maximize", "--metric", "size:minimize", "--trials", "1", "-q")
    assert result.code == 1 and "5 trials in a row failed the same way" in result.err  # the failure stop
    failed = optuna.load_study(study_name="n", storage=SQLITE).get_trials()[0]
    reason = failed.user_attrs[A.FAIL_REASON]
    assert failed.state == TrialState.FAIL and reason.startswith("objective mo_obj:a_number returned 0.5; with several metrics return a dict of them by name") and "usercode.py" not in reason


SCRIPT = r'''
import argparse
ap = argparse.ArgumentParser()
ap.add_argument("--width", type=int)
a = ap.parse_args()
print(f"model has size={a.width * 10}")  # once, before training: goes with every epoch's report
for epoch in range(1, 4):
    print(f"epoch={epoch} acc={(1 - 1 / a.width) * epoch / 3:.4f}", flush=True)
'''


def test_a_command_printing_two_metrics_is_a_two_metric_trial(project, cli):
    (project / "search_spaces" / "w.yaml").write_text("params:\n  width: {type: int, low: 2, high: 64}\n")
    (project / "train.py").write_text(SCRIPT)
    command = f"{sys.executable} train.py --width {{width}}"
    result = cli("study", "run", "c", "--space", "w", "--command", command, "--metric", "acc:maximize", "--metric", "size:minimize", "--trials", "6", "-q")
    assert result.code == 0, result.err
    for t in optuna.load_study(study_name="c", storage=SQLITE).get_trials():
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t.user_attrs.get(A.FAIL_REASON)
        if t.state == TrialState.COMPLETE:
            assert t.values == [pytest.approx(1 - 1 / t.params["width"], abs=1e-4), t.params["width"] * 10]
    # a metric the script never prints fails the trial saying what it did print
    result = cli("study", "run", "m", "--space", "w", "--command", command, "--metric", "acc:maximize", "--metric", "flops:minimize", "--trials", "1", "-q")
    failed = optuna.load_study(study_name="m", storage=SQLITE).get_trials()[0]
    assert failed.state == TrialState.FAIL and "without reporting flops" in failed.user_attrs[A.FAIL_REASON] and "acc, size" in failed.user_attrs[A.FAIL_REASON]


def test_a_constraint_on_a_metric_no_pattern_reads_is_refused(project, cli):
    (project / "search_spaces" / "w.yaml").write_text("params:\n  width: {type: int, low: 2, high: 64}\n")
    result = cli(
        "study", "create", "p", "--space", "w", "--command", "python train.py --width {width}", "--metric", "acc:maximize",
        "--metric-pattern", r"acc=acc=(\S+)", "--constraint", "size<=100",
    )  # fmt: skip
    assert result.code == 1 and "no --metric-pattern reads size" in result.err
    assert not Path("studies/tuner.db").exists()


def test_packed_trials_measure_what_unpacked_ones_do():
    from tuner.packing import train_packed
    from tuner.params import TrainConfig
    from tuner.train import train
    from tuner.workloads import WorkloadRef, load_workload

    data, _ = load_workload(WorkloadRef("builtin", "digits"), seed=0, val_fraction=0.2, config={})
    cfgs = [TrainConfig(hidden_units=h, n_layers=1, epochs=2, optimizer="adam") for h in (8, 32)]
    packed = train_packed(cfgs, data, seeds=[1, 2])
    for cfg, seed, p in zip(cfgs, [1, 2], packed):
        alone = train(cfg, data, seed=seed)
        for a, b in zip(alone.history, p.history):
            assert b.params == a.params and b.latency_ms > 0 and b.train_seconds > 0
        assert p.history[1].train_seconds > p.history[0].train_seconds


def test_a_new_study_given_no_space_takes_the_default_one_and_says_so(project, cli):
    """The issue's own line works as a new user types it: a model's cost among the metrics takes
    the tradeoff space (tiny to large models); otherwise the tour's quick space."""
    result = cli("study", "create", "costs", "--workload", "digits", "--metric", "val_accuracy", "--metric", "params:minimize")
    assert result.code == 0 and "search space 'tradeoff', the default" in result.err
    result = cli("study", "create", "plain", "--workload", "wine", "--trials", "2")
    assert result.code == 0 and "search space 'quick', the default" in result.err
    # a bare name (a mistyped one, perhaps) starts nothing
    assert "to create it pass --space" in cli("study", "run", "costz", "--trials", "3").err
    spaces = {s.study_name: s.user_attrs["tuner.spec"]["space"] for s in optuna.get_all_study_summaries(SQLITE)}
    assert spaces == {"costs": "tradeoff", "plain": "quick"}
    # your own code has no default: its parameters are its own
    assert "needs a search space" in cli("study", "create", "own", "--objective", "m:f", "--metric", "x:maximize").err
