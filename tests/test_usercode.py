"""The person's own code as trials: free parameters in spaces, and a Python objective given a
trial handle (the command trials have tests/test_command_study.py)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.errors import SpaceError, SpecError
from tuner.space import build_space, load_space, parse_param_option, parse_space
from tuner.spec import StudySpec

FREE_SPACE = """
params:
  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
  num_heads: {type: categorical, choices: [2, 4, 8]}
  mixup: {type: float, low: 0.0, high: 0.4}
  emb: {type: int, low: 32, high: 256, step: 32}
  arch: {type: categorical, choices: [small, big]}
  width: {type: int, low: 64, high: 512, log: true, when: {arch: big}}
  tag: {type: categorical, fixed: v1}
"""

OBJECTIVE = '''
import math
import torch

def objective(trial):
    p = trial.params
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model(torch.randn(16, 4)).pow(2).mean().backward()
    score = 1.0 - (p["mixup"] - 0.2) ** 2 - (0.1 if p["arch"] == "small" else 0.0)
    for step in range(1, 6):
        trial.report(step, score * step / 5, loss=1.0 / step)
    trial.diagnose(model)
    trial.set(seen_seed=trial.seed, seen_device=str(trial.device), first_weight=model[0].weight[0, 0].item())
    return {"score": score, "other": 0.0}

def prune_me(trial):
    for step in range(1, 6):
        trial.report(step, trial.params["mixup"] if trial.number >= 4 else 10.0 + step)
    return 10.0

def crash(trial):
    raise RuntimeError("boom in user code")

def nan(trial):
    return float("nan")

def diverges(trial):
    trial.report(1, 0.5)
    trial.report(2, float("nan"))
    return 1.0

def returns_text(trial):
    return "high"

def slow(trial):
    import time
    time.sleep(0.2)
    return trial.params["mixup"]
'''


@pytest.fixture
def code(project: Path) -> Path:
    (project / "myobj.py").write_text(OBJECTIVE)
    (project / "search_spaces" / "free.yaml").write_text(FREE_SPACE)
    return project


def _study(name: str, url: str = "sqlite:///studies/tuner.db") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


# --- free parameters in spaces -------------------------------------------------------------


def test_a_free_parameter_needs_its_type_and_a_misspelt_builtin_gets_its_did_you_mean() -> None:
    with pytest.raises(SpaceError, match=r"lrr: unknown parameter; did you mean 'lr'\? valid: .*give its `type:`"):
        parse_space({"params": {"lrr": {"low": 0.1, "high": 0.2}}}, name="s", source="s.yaml")
    with pytest.raises(SpaceError, match="num_heads: unknown parameter; valid: .*give its `type:`"):
        parse_space({"params": {"num_heads": [2, 4]}}, name="s", source="s.yaml")
    with pytest.raises(SpaceError, match="must be an identifier"):
        parse_space({"params": {"num-heads": {"type": "int", "low": 1, "high": 2}}}, name="s", source="s.yaml")
    # built-in names keep their validation
    with pytest.raises(SpaceError, match="lr: low=0.0 is out of range"):
        parse_space({"params": {"lr": {"type": "float", "low": 0.0, "high": 0.1}, "heads": {"type": "int", "low": 1, "high": 4}}}, name="s", source="s.yaml")


def test_free_parameters_validate_like_builtin_ones() -> None:
    def bad(entry: object, match: str) -> None:
        with pytest.raises(SpaceError, match=match):
            parse_space({"params": {"alpha": entry}}, name="s", source="s.yaml")

    bad({"type": "float", "low": 0.5, "high": 0.1}, "low must be below high")
    bad({"type": "int", "low": 1.5, "high": 4}, "must be an integer")
    bad({"type": "categorical", "choices": [1, 1]}, "listed twice")
    bad({"type": "categorical", "choices": [[1, 2]]}, "must be a number, text")
    bad({"type": "float", "low": 1, "high": 2, "fixed": 1.5}, "takes only `type`, `fixed` and `when`")
    bad({"type": "bool", "low": 1, "high": 2}, "give its `type:`")


def test_free_parameters_round_trip_condition_and_grid(code: Path) -> None:
    space = load_space("free")
    assert space.free() == ["num_heads", "mixup", "emb", "arch", "width", "tag"]
    assert space.builtin_problem() and "num_heads is not a parameter of tuner's training loop" in space.builtin_problem()
    again = parse_space(json.loads(json.dumps(space.to_dict())), name="free", source="again")
    assert again == space
    assert space.params["tag"].to_entry() == {"type": "categorical", "fixed": "v1"}
    # a grid over free parameters, conditions honoured: width only multiplies the big arch
    grid_space = parse_space(
        {"params": {"arch": {"type": "categorical", "choices": ["small", "big"]}, "width": {"type": "int", "low": 64, "high": 256, "grid": [64, 256], "when": {"arch": "big"}}, "k": {"type": "int", "fixed": 3}}},
        name="g",
        source="g",
    )
    assert grid_space.grid() == [{"arch": "small"}, {"arch": "big", "width": 64}, {"arch": "big", "width": 256}]


def test_param_option_reads_types_from_the_values() -> None:
    assert parse_param_option("num_heads=2,4,8") == ("num_heads", {"type": "categorical", "choices": [2, 4, 8]})
    assert parse_param_option("mixup=0.0:0.4") == ("mixup", {"type": "float", "low": "0.0", "high": "0.4"})
    assert parse_param_option("emb=32:256:step=32") == ("emb", {"type": "int", "low": "32", "high": "256", "step": "32"})
    assert parse_param_option("scale=1:10:float:log") == ("scale", {"type": "float", "low": "1", "high": "10", "log": True})
    assert parse_param_option("name=foo") == ("name", {"type": "categorical", "fixed": "foo"})
    assert parse_param_option("lr=1e-4:1e-1:log")[1]["type"] == "float"  # a built-in name: its own option's syntax
    for bad in ("x", "=3", "x=", "x=1:2:bogus"):
        with pytest.raises(SpaceError, match="--param"):
            parse_param_option(bad)
    with pytest.raises(SpaceError, match="step and log cannot be combined"):
        build_space("s", {}, free=["emb=32:256:log:step=32"])


def test_space_create_with_free_params_and_show_lists_them_apart(project: Path, cli) -> None:
    r = cli("space", "create", "mine", "--lr", "1e-4:1e-1:log", "--param", "num_heads=2,4,8", "--param", "mixup=0.0:0.4")
    assert r.code == 0, r.err
    shown = cli("space", "show", "mine")
    assert "# tuner's training loop: lr" in shown.out and "free, for --objective or --command): num_heads, mixup" in shown.out
    assert json.loads(cli("space", "show", "mine", "--format", "json").out)["free_params"] == ["num_heads", "mixup"]
    r = cli("space", "create", "bad", "--param", "heads")
    assert r.code != 0 and "--param 'heads': write NAME=SPEC" in r.err and "Traceback" not in r.err
    assert not (project / "search_spaces" / "bad.yaml").exists()


def test_free_parameters_with_tuner_s_own_loop_are_refused_before_anything_is_written(code: Path, cli) -> None:
    r = cli("study", "run", "s", "--space", "free", "--trials", "2")
    assert r.code == 1 and "num_heads is not a parameter of tuner's training loop" in r.err and "--objective" in r.err
    assert not (code / "studies" / "tuner.db").exists()


# --- the spec -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"objective": "m:f", "command": "python x.py"}, "either --objective"),
        ({"objective": "m:f", "metric": "score"}, "--direction maximize or minimize"),
        ({"objective": "m:f", "metric": "score", "direction": "up"}, "maximize or minimize, got 'up'"),
        ({"objective": "m:f", "workload": "wine"}, "drop them"),
        ({"objective": "mf"}, "write it module:function"),
        ({"objective": "m:f", "metric": "val acc", "direction": "maximize"}, "must be a name"),
        ({"metric": "score"}, "unknown metric 'score'"),
        ({"metric": "val_loss", "direction": "maximize"}, "is minimized, not maximized"),
        ({"trial_timeout": 5.0}, "--trial-timeout ends a --command trial"),
        ({"command": "python t.py", "trial_timeout": 0}, "above 0"),
    ],
)
def test_spec_checks_what_the_code_and_metric_need(settings: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        StudySpec(name="s", space="free", **settings)


def test_a_builtin_metric_keeps_its_direction_and_old_stored_specs_read_as_before() -> None:
    assert StudySpec(name="s", space="x", metric="val_loss").direction == "minimize"
    assert StudySpec(name="s", space="x", objective="m:f", metric="val_loss").direction == "minimize"
    stored = {"name": "s", "space": "x", "workload": "digits", "metric": "val_accuracy"}  # as older tuner stored it
    assert StudySpec.from_dict(stored, source="study").direction == "maximize"


# --- the Python objective -------------------------------------------------------------------


def test_python_objective_runs_with_free_and_builtin_params_and_records_like_the_loop(code: Path, cli) -> None:
    r = cli("study", "run", "obj", "--space", "free", "--objective", "myobj:objective", "--metric", "score", "--direction", "maximize", "--trials", "8", "--pruner", "none", "-q")
    assert r.code == 0, r.err
    study = _study("obj")
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    t = trials[3]
    assert set(t.params) >= {"lr", "num_heads", "mixup", "emb", "arch"} and "tag" not in t.params  # fixed: passed, not sampled
    assert t.value == pytest.approx(1.0 - (t.params["mixup"] - 0.2) ** 2 - (0.1 if t.params["arch"] == "small" else 0.0))
    assert t.intermediate_values == {s: pytest.approx(t.value * s / 5) for s in range(1, 6)}
    attrs = t.user_attrs
    assert attrs["seed"] == attrs["seen_seed"] == 3 and attrs["seen_device"] == "cpu" and attrs["epochs_run"] == 5
    assert attrs["history"]["epoch"] == [1, 2, 3, 4, 5] and attrs["history"]["loss"] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert set(attrs["grad_norms"]) == {"0 Linear", "2 Linear"} and isinstance(attrs["vanishing_gradients"], bool)
    # torch is seeded with the trial's seed: the same trial's code draws the same weights again
    import torch

    torch.manual_seed(3)
    assert attrs["first_weight"] == pytest.approx(torch.nn.Linear(4, 8).weight[0, 0].item())
    # it resumes like any study, and the report reads it
    r = cli("study", "resume", "obj", "--trials", "10", "-q")
    assert r.code == 0 and len(_study("obj").get_trials()) == 10
    assert cli("report", "obj", "--out", "out/obj").code == 0


def test_python_objective_is_pruned_by_the_study_s_pruner_and_ends_diverged_on_nan(code: Path, cli) -> None:
    r = cli("study", "run", "p", "--space", "free", "--objective", "myobj:prune_me", "--metric", "score", "--direction", "maximize", "--trials", "10", "--pruner", "median", "-q")
    assert r.code == 0, r.err
    pruned = [t for t in _study("p").get_trials() if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs["pruned_kind"] == "pruner" and "median pruner at step" in t.user_attrs["pruned_reason"] for t in pruned)
    r = cli("study", "run", "d", "--space", "free", "--objective", "myobj:diverges", "--metric", "score", "--direction", "maximize", "--trials", "2", "-q")
    assert r.code == 0, r.err
    t = _study("d").get_trials()[0]
    assert t.state == TrialState.PRUNED and t.user_attrs["pruned_kind"] == "diverged" and t.user_attrs["history"]["epoch"] == [1, 2]


@pytest.mark.parametrize(
    "func, reason",
    [
        ("crash", "RuntimeError: boom in user code (at myobj.py:22)"),
        ("nan", "objective returned nan"),
        ("returns_text", "returned 'high'; return the score as a number"),
    ],
)
def test_a_failing_objective_fails_its_trial_with_the_reason(code: Path, cli, func: str, reason: str) -> None:
    r = cli("study", "run", func, "--space", "free", "--objective", f"myobj:{func}", "--metric", "score", "--direction", "maximize", "--trials", "2", "-q")
    assert r.code == 1 and "failed the same way" in r.err
    t = _study(func).get_trials()[0]
    assert t.state == TrialState.FAIL and reason in t.user_attrs["fail_reason"]


@pytest.mark.parametrize("how", [["study", "run", "t"], ["worker", "t"], ["study", "run", "t", "--workers", "2"]])
def test_timeout_stops_starting_trials_and_closes_each_it_started(code: Path, cli, how: list[str]) -> None:
    """--timeout: no trial starts after it passes; those running finish; the run says why it stopped."""
    create = ["study", "create", "t", "--space", "free", "--objective", "myobj:slow", "--metric", "score", "--direction", "maximize", "--trials", "500"]
    assert cli(*create).code == 0
    r = cli(*how, "--timeout", "2", "--format", "json", "-q")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    trials = _study("t").get_trials()
    assert result["stopped"] == "timeout", result
    assert 1 <= result["ran"] < 500 and result["n_finished"] == len(trials) == result["ran"], (result, [t.state for t in trials])
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]


@pytest.mark.parametrize(
    "ref, match",
    [("myobj:nope", "module 'myobj' has no function 'nope'"), ("nomodule:f", "cannot import module 'nomodule' .*ModuleNotFoundError")],
)
def test_an_objective_that_cannot_be_imported_is_one_line_and_writes_nothing(code: Path, cli, ref: str, match: str) -> None:
    r = cli("study", "create", "x", "--space", "free", "--objective", ref, "--metric", "score", "--direction", "maximize")
    assert r.code == 1 and "Traceback" not in r.err
    import re

    assert re.search(match, r.err), r.err
    assert not (code / "studies" / "tuner.db").exists()


def test_an_objective_in_a_spec_file_and_a_grid_over_free_parameters(code: Path, cli) -> None:
    (code / "search_spaces" / "fgrid.yaml").write_text(
        textwrap.dedent(
            """
            params:
              arch: {type: categorical, choices: [small, big]}
              mixup: {type: float, low: 0.0, high: 0.4, grid: 3}
              num_heads: {type: int, fixed: 4}
              emb: {type: int, fixed: 64}
              lr: 0.01
            """
        )
    )
    (code / "studies" / "mine.yaml").write_text("name: mine\nspace: fgrid\nsampler: grid\nobjective: myobj:objective\nmetric: score\ndirection: maximize\n")
    r = cli("study", "run", "--spec", "studies/mine.yaml", "-q")
    assert r.code == 0, r.err
    points = sorted((t.params["arch"], t.params["mixup"]) for t in _study("mine").get_trials())
    assert points == sorted((a, m) for a in ("small", "big") for m in (0.0, 0.2, 0.4))


def test_retrain_refuses_a_study_of_your_own_code_with_what_to_do(code: Path, cli) -> None:
    assert cli("study", "run", "obj", "--space", "free", "--objective", "myobj:objective", "--metric", "score", "--direction", "maximize", "--trials", "2", "-q").code == 0
    r = cli("best", "obj", "--retrain")
    assert r.code == 1 and "trains your own objective" in r.err and "tuner study best obj" in r.err and "Traceback" not in r.err


def test_a_trial_s_files_are_linked_into_the_artifact_store_or_copied_where_links_fail(project, monkeypatch) -> None:
    """tuner.handle.attach puts a file in Optuna's file-system artifact store as a hard link (a
    checkpoint is not stored twice); where os.link fails (another file system), Optuna's copy. Either
    way Optuna's own store reads it back, as the dashboard does."""
    import os

    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta

    from tuner.handle import attach

    study = optuna.create_study(storage="sqlite:///studies/a.db")
    trial = study.ask()
    model = Path("model.pt")
    model.write_bytes(b"weights" * 1000)
    linked = attach(trial, model, Path("studies/artifacts"))
    assert os.stat(Path("studies/artifacts") / linked).st_ino == model.stat().st_ino
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    copied = attach(trial, model, Path("studies/artifacts"))
    assert os.stat(Path("studies/artifacts") / copied).st_ino != model.stat().st_ino
    store = FileSystemArtifactStore("studies/artifacts")
    for artifact in (linked, copied):
        with store.open_reader(artifact) as f:
            assert f.read() == model.read_bytes()
    assert {m.artifact_id for m in get_all_artifact_meta(trial, storage=study._storage)} == {linked, copied}
