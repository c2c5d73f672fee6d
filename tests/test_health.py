"""Why a trial did not learn: one verdict per trial (tuner.health), from constructed cases of each
failure on the built-in workloads, healthy ones without a false alarm, and where people read it."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tuner import attrs as A
from tuner.errors import DivergedError
from tuner.health import HEALTHY, VERDICTS, judge
from tuner.params import TrainConfig
from tuner.study.objective import chance_accuracy
from tuner.train import train
from tuner.workloads import WorkloadRef, load_workload

SQLITE = "sqlite:///studies/tuner.db"


def _data(name: str):
    return load_workload(WorkloadRef("builtin", name), seed=0, val_fraction=0.2, config={})[0]


def _verdict(workload: str, **settings):
    data = _data(workload)
    try:
        result = train(TrainConfig(**settings), data, seed=0)
    except DivergedError as e:
        return judge({"epoch": []}, diverged=str(e))
    history: dict = {"epoch": [e.epoch for e in result.history]}
    for e in result.history:
        for key, value in e.figures().items():
            history.setdefault(key, []).append(value)
    return judge(history, chance=chance_accuracy(data))


CASES = [
    # (what, workload, settings, verdict, words in its evidence)
    ("relu and adam", "digits", dict(activation="relu", optimizer="adam", lr=0.01, epochs=8, hidden_units=64, n_layers=2, scaling="standard"), HEALTHY, "val_accuracy"),
    ("gelu and adamw on wine", "wine", dict(activation="gelu", optimizer="adamw", lr=0.01, epochs=20, scaling="standard"), HEALTHY, "epochs"),
    ("deep sigmoid, init std 0.01", "digits", dict(activation="sigmoid", init="scaled_normal", init_std=0.01, n_layers=6, epochs=6, optimizer="sgd", lr=0.1, scaling="standard"), "vanishing gradients", "first layer's gradient norm"),
    ("relu, init std 0.001, 4 layers", "digits", dict(activation="relu", init="scaled_normal", init_std=0.001, n_layers=4, epochs=5, optimizer="sgd", lr=0.05), "vanishing gradients", "every layer's gradient norm below 0.0001"),
    ("sgd lr 1000", "digits", dict(optimizer="sgd", lr=1000, epochs=4), "diverged", "loss=nan at epoch 1"),
    ("sgd lr 50, unscaled breast_cancer", "breast_cancer", dict(optimizer="sgd", lr=50, epochs=8, scaling="none"), "dead network", "below 1e-08"),
    # most of its ReLU units die; with one torch thread, every one (the floats round another way): no gradient flows at all
    ("relu, sgd lr 1.9", "digits", dict(activation="relu", optimizer="sgd", lr=1.9, epochs=8, scaling="standard", hidden_units=128), ("dying units", "dead network"), "at epoch 8"),
    ("adam lr 1e-7", "digits", dict(optimizer="adam", lr=1e-7, epochs=5), "stalled", "at chance"),
    ("nesterov lr 1e-3", "digits", dict(optimizer="nesterov", momentum=0.9, lr=1e-3, epochs=6, scaling="standard"), "underfitting", "train_accuracy"),
]


@pytest.mark.parametrize("what, workload, settings, verdict, evidence", CASES, ids=[c[0] for c in CASES])
def test_each_constructed_case_gets_its_verdict_with_evidence_and_a_fix(what, workload, settings, verdict, evidence):
    got = _verdict(workload, **settings)
    assert got.kind in ((verdict,) if isinstance(verdict, str) else verdict), got.text()
    assert evidence in got.evidence and got.fix == VERDICTS[got.kind]


def test_an_overfit_model_is_told_so_not_taken_for_vanishing_gradients(tmp_path):
    """A 3x512 net memorizing 150 noisy rows: its gradients are tiny because it fits its
    training set, which the verdict must not mistake for vanishing gradients."""
    from tuner.workloads import parse_workload

    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 20))
    y = (x[:, 0] + rng.normal(scale=2.0, size=150) > 0).astype(int)
    path = tmp_path / "noisy.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=",".join([f"x{i}" for i in range(20)] + ["y"]), comments="", fmt="%.5f")
    data, _ = load_workload(parse_workload(str(path), target="y"), seed=0, val_fraction=0.3, config={})
    result = train(TrainConfig(hidden_units=512, n_layers=3, epochs=40, optimizer="adam", lr=0.003, scaling="standard"), data, seed=0)
    history: dict = {"epoch": [e.epoch for e in result.history]}
    for e in result.history:
        for key, value in e.figures().items():
            history.setdefault(key, []).append(value)
    got = judge(history, chance=chance_accuracy(data))
    assert got.kind == "overfitting" and "val_loss rose from" in got.evidence, got.text()


def test_every_trial_of_a_study_records_its_verdict_pruned_and_diverged_ones_too(cli, project):
    (project / "search_spaces" / "mixed.yaml").write_text(
        "params:\n  lr: {type: float, low: 1.0e-4, high: 50.0, log: true}\n  optimizer: sgd\n  activation: [relu, sigmoid]\n"
        "  epochs: 4\n  n_layers: 2\n  scaling: standard\n"
    )
    result = cli("study", "run", "m", "--space", "mixed", "--trials", "12", "--sampler", "random", "--pruner", "median")
    assert result.code == 0, result.err
    trials = optuna.load_study(study_name="m", storage=SQLITE).get_trials()
    assert all(t.user_attrs[A.HEALTH]["verdict"] in VERDICTS for t in trials)
    for t in trials:
        if t.state == TrialState.PRUNED and t.user_attrs[A.PRUNED_KIND] == A.DIVERGED:
            assert t.user_attrs[A.HEALTH]["verdict"] == "diverged"
    unhealthy = [t for t in trials if t.user_attrs[A.HEALTH]["verdict"] != HEALTHY and t.state != TrialState.FAIL]
    assert unhealthy, "lr up to 50 with sgd gives unhealthy trials"
    for t in unhealthy:  # the progress line names it
        assert f"trial {t.number} " in result.err and f"[{t.user_attrs[A.HEALTH]['verdict']}]" in result.err
    shown = cli("study", "show", "m").out
    assert "health: " in shown and unhealthy[0].user_attrs[A.HEALTH]["verdict"] in shown
    assert "health" in cli("study", "trials", "m").out


def test_study_best_warns_when_the_best_trial_did_not_train_well(cli, project):
    (project / "search_spaces" / "slow.yaml").write_text("params:\n  lr: {type: float, low: 1.0e-7, high: 2.0e-7}\n  optimizer: adam\n  epochs: 3\n")
    assert cli("study", "run", "s", "--space", "slow", "--trials", "2", "--pruner", "none", "-q").code == 0
    result = cli("study", "best", "s")
    assert result.code == 0 and "warning: trial" in result.err and "did not train well: stalled" in result.err


def test_a_python_objective_reporting_a_nan_loss_is_marked_diverged(cli, project):
    (project / "search_spaces" / "x.yaml").write_text("params:\n  x: {type: float, low: 0.0, high: 1.0}\n")
    (project / "nanloss.py").write_text(
        "def objective(trial):\n"
        "    for step in range(1, 4):\n"
        "        trial.report(step, 0.5, train_loss=float('nan') if step == 2 else 1.0 / step)\n"
        "    return 0.5\n"
    )
    result = cli("study", "run", "n", "--space", "x", "--objective", "nanloss:objective", "--metric", "score", "--direction", "maximize", "--trials", "1", "-q")
    assert result.code == 0, result.err
    t = optuna.load_study(study_name="n", storage=SQLITE).get_trials()[0]
    assert t.state == TrialState.PRUNED and t.user_attrs[A.PRUNED_KIND] == A.DIVERGED
    assert t.user_attrs[A.HEALTH]["verdict"] == "diverged" and "train_loss=nan at step 2" in t.user_attrs[A.HEALTH]["evidence"]


def test_a_trial_the_pruner_cut_short_is_not_called_underfit():
    history = {"epoch": [1, 2], "train_loss": [2.2, 1.9], "train_accuracy": [0.3, 0.5], "val_accuracy": [0.35, 0.52], "val_loss": [2.1, 1.8]}
    assert judge(history, chance=0.1).kind == "underfitting"
    assert judge(history, chance=0.1, cut=True).kind == HEALTHY
