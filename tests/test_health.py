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
    ("init std 2.0, sgd lr 1e-4: finite losses", "digits", dict(init="scaled_normal", init_std=2.0, n_layers=3, optimizer="sgd", lr=1e-4, epochs=3), "exploding gradients", "above 1000"),
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


DIAGNOSED = '''
import torch
from sklearn.datasets import load_digits

def objective(trial):
    case = trial.params["case"]
    x, y = load_digits(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / (x.std(0) + 1e-6), dtype=torch.float32)
    y = torch.tensor(y)
    x_train, y_train, x_val, y_val = x[:1400], y[:1400], x[1400:], y[1400:]
    act = torch.nn.Sigmoid if case == "vanishing" else torch.nn.ReLU
    sizes = [64] + [32] * (6 if case == "vanishing" else 2) + [10]
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), act()]
    model = torch.nn.Sequential(*layers[:-1])
    if case == "vanishing":
        for m in model:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.01)
    if case == "dying":  # most of the first layer's units start (and stay) below zero on every input
        with torch.no_grad():
            model[0].bias[:26] = -50.0
    opt = torch.optim.Adam(model.parameters(), lr=0.01) if case != "vanishing" else torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(1, 9):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x_train), y_train)
        loss.backward()
        trial.diagnose(model, x_val)
        opt.step()
        with torch.no_grad():
            val_accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        trial.report(epoch, val_accuracy, train_loss=loss.item())
    return val_accuracy
'''


def test_diagnose_in_a_python_objective_gives_the_verdicts_tuner_s_loop_gives(cli, project):
    """trial.diagnose(model, batch) each step: gradient norms and dead units reach the verdict."""
    (project / "search_spaces" / "cases.yaml").write_text("params:\n  case: {type: categorical, choices: [healthy, vanishing, dying]}\n")
    (project / "diagnosed.py").write_text(DIAGNOSED)
    result = cli("study", "run", "d", "--space", "cases", "--objective", "diagnosed:objective", "--metric", "val_accuracy",
                 "--sampler", "grid", "--pruner", "none", "--trials", "3", "-q")
    assert result.code == 0, result.err
    got = {t.params["case"]: t.user_attrs[A.HEALTH] for t in optuna.load_study(study_name="d", storage=SQLITE).get_trials()}
    assert got["healthy"]["verdict"] == HEALTHY, got["healthy"]
    assert got["vanishing"]["verdict"] == "vanishing gradients" and "first layer's gradient norm" in got["vanishing"]["evidence"], got["vanishing"]
    assert got["dying"]["verdict"] == "dying units" and "hidden layer 1" in got["dying"]["evidence"], got["dying"]


REPORTER = '''
import sys
mode = sys.argv[1]
for epoch in range(1, 7):
    if mode == "stalled":
        train_loss, val_loss, train_acc, val_acc = 2.302 - 0.0001 * epoch, 2.303, 0.1, 0.1
    elif mode == "overfit":
        train_loss, val_loss, train_acc, val_acc = 1.0 / epoch, 0.5 + 0.1 * abs(epoch - 2), min(1.0, 0.6 + 0.1 * epoch), 0.7
    else:
        train_loss, val_loss, train_acc, val_acc = 1.0 / epoch, 1.1 / epoch, 0.9 + 0.01 * epoch, 0.88 + 0.01 * epoch
    print(f"epoch={epoch} train_loss={train_loss:.4f} val_loss={val_loss:.4f} train_accuracy={train_acc:.3f} val_accuracy={val_acc:.3f}", flush=True)
'''


def test_a_command_s_trials_get_the_verdicts_their_reported_metrics_allow(cli, project):
    (project / "search_spaces" / "modes.yaml").write_text("params:\n  mode: {type: categorical, choices: [fine, stalled, overfit]}\n")
    (project / "reporter.py").write_text(REPORTER)
    import sys

    result = cli("study", "run", "c", "--space", "modes", "--command", f"{sys.executable} reporter.py {{mode}}", "--metric", "val_accuracy",
                 "--sampler", "grid", "--pruner", "none", "--trials", "3", "-q")
    assert result.code == 0, result.err
    got = {t.params["mode"]: t.user_attrs[A.HEALTH] for t in optuna.load_study(study_name="c", storage=SQLITE).get_trials()}
    assert got["fine"]["verdict"] == HEALTHY, got["fine"]
    assert got["stalled"]["verdict"] == "stalled", got["stalled"]
    assert got["overfit"]["verdict"] == "overfitting" and "val_loss rose" in got["overfit"]["evidence"], got["overfit"]


def _synthetic(seed: int, n: int) -> list[tuple[dict, str]]:
    """Trials whose verdicts follow known causes: lr above 1 diverges, sigmoid with 5 or more
    layers vanishes, lr below 1e-3 stalls; batch_size and init do nothing."""
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(n):
        p = {"activation": str(rng.choice(["sigmoid", "relu", "tanh"])), "n_layers": int(rng.integers(2, 7)), "lr": float(10 ** rng.uniform(-4, 0.5)),
             "batch_size": int(rng.choice([16, 32, 64])), "init": str(rng.choice(["xavier_uniform", "kaiming_normal"]))}
        v = ("diverged" if p["lr"] > 1 else "vanishing gradients" if p["activation"] == "sigmoid" and p["n_layers"] >= 5
             else "stalled" if p["lr"] < 1e-3 else HEALTHY)
        trials.append((p, v))
    return trials


def test_causes_name_the_parameter_values_behind_each_failure_with_their_counts():
    from tuner.health import causes

    found = causes(_synthetic(0, 60))
    texts = [c.text() for c in found.causes]
    assert any(c.condition.startswith("lr>=") and c.outcome == "diverged" for c in found.causes), texts
    assert any(c.condition.startswith("lr<=") and c.outcome in ("stalled", "learned too little") for c in found.causes), texts
    assert any(c.condition == "activation=sigmoid and n_layers>=5" and c.outcome == "vanishing gradients" for c in found.causes), texts
    assert not any("batch_size" in c.condition or "init" in c.condition for c in found.causes), texts
    for c in found.causes:  # the counts are the trials' own
        assert c.n + c.others == 60 and c.k <= c.n and f"{c.others_k} of the {c.others} others" in c.text()


def test_causes_are_not_made_from_noise_nor_from_too_few_trials():
    from tuner.health import MIN_TRIALS, causes

    rng = np.random.default_rng(1)
    made = 0
    for seed in range(20):  # the verdicts shuffled among the trials: no parameter goes with them
        trials = _synthetic(seed, 24)
        verdicts = [v for _, v in trials]
        rng.shuffle(verdicts)
        made += bool(causes([(p, v) for (p, _), v in zip(trials, verdicts)]).causes)
    assert made <= 3, f"{made} of 20 shuffled studies got a cause (the test allows about 5%)"
    few = causes(_synthetic(0, MIN_TRIALS - 1))
    assert not few.causes and "too few" in few.note
    from tuner.health import MAX_TRIALS

    many = causes(_synthetic(0, MAX_TRIALS + 500))  # judged on an even sample, and says of how many
    assert many.n_trials == MAX_TRIALS and f"on {MAX_TRIALS} trials (an even sample of the study's {MAX_TRIALS + 500})" in many.note


@pytest.mark.slow
def test_a_random_study_over_failing_settings_names_its_causes_where_people_look(cli, project):
    """studies/failures.yaml: 20 random trials mixing activations, inits, depths and learning
    rates from far too small to far too large. The learning rate decides most of it, and the
    summary across the study says so in words and counts, in study show and in the report."""
    assert cli("study", "run", "--spec", "studies/failures.yaml", "-q").code == 0
    trials = optuna.load_study(study_name="failures", storage=SQLITE).get_trials()
    assert len(trials) == 20 and all(A.VERDICT in t.user_attrs for t in trials)
    assert sum(t.user_attrs[A.HEALTH]["verdict"] != HEALTHY for t in trials) >= 5
    shown = cli("study", "show", "failures").out
    causes = [line.strip() for line in shown.splitlines()[shown.splitlines().index(next(x for x in shown.splitlines() if "causes:" in x)) + 1 :]]
    assert causes and any("lr" in c and " of the " in c for c in causes), shown
    assert "health" in cli("study", "trials", "failures").out
    report = cli("report", "failures", "--out", "out/failures")
    assert report.code == 0 and "causes:" in report.out
    page = (project / "out" / "failures" / "report.html").read_text()
    assert "<h2>Health</h2>" in page and "Causes across the study" in page and (project / "out" / "failures" / "health.png").is_file()


def test_the_fisher_tail_matches_the_exact_hypergeometric_sum():
    """tuner.health._tail (vectorized, truncated past the mode) against the sum written out with
    exact binomial coefficients, wherever a statement could be made (k at or above the expected count)."""
    import math
    import random

    from tuner.health import _tail

    rng = random.Random(0)
    cases = []
    for _ in range(3000):
        total = rng.randint(2, 300)
        positives, n = rng.randint(0, total), rng.randint(0, total)
        cases.append((total, positives, n, rng.randint(0, n)))
    got = _tail(*(np.array(column) for column in zip(*cases)))
    for (total, positives, n, k), p in zip(cases, got):
        exact = sum(math.comb(positives, j) * math.comb(total - positives, n - j) for j in range(k, min(n, positives) + 1)) / math.comb(total, n)
        if k * total >= n * positives:
            assert p == pytest.approx(exact, rel=1e-9, abs=1e-300), (total, positives, n, k)
        else:
            assert p == 1.0
