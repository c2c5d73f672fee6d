"""Studies end to end on real storage: samplers, pruners, budget, resume, failures, exports."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.errors import SpecError, StorageError, TunerError
from tuner.failures import DEFAULT_IN_A_ROW
from tuner.pruning import ParetoPruner
from tuner.samplers import PRUNERS, SAMPLERS, FastRandomSampler, make_pruner, make_sampler
from tuner.spec import StudySpec
from tuner.study import (
    RunResult,
    Stop,
    FINISHED,
    create_study,
    delete_study,
    export_trials,
    list_studies,
    open_study,
    reconcile,
    run_study,
    study_summary,
)

SQLITE = "sqlite:///studies/tuner.db"


def _spec(**kw) -> StudySpec:
    return StudySpec(**{"name": "s", "space": "tiny", "workload": "digits", "pruner": "none", "trials": 4, **kw})


def _finished(url: str, name: str = "s") -> list:
    return open_study(name, url).study.get_trials(states=FINISHED)


# what each name must build, written out here rather than asked of the registry under test
SAMPLER_CLASSES = {
    "tpe": optuna.samplers.TPESampler,
    "random": FastRandomSampler,
    "grid": FastRandomSampler,  # the grid's points are queued trials; this only backs the queue up
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "nsga3": optuna.samplers.NSGAIIISampler,
}
# (class, settings read back from the pruner): the epoch is the resource
PRUNER_CLASSES = {
    "none": (optuna.pruners.NopPruner, {}),
    "median": (optuna.pruners.MedianPruner, {"_percentile": 50.0, "_n_startup_trials": 5, "_n_warmup_steps": 2}),
    "percentile": (optuna.pruners.PercentilePruner, {"_percentile": 25.0, "_n_startup_trials": 5, "_n_warmup_steps": 2}),
    "sha": (optuna.pruners.SuccessiveHalvingPruner, {"_min_resource": 1, "_reduction_factor": 3}),
    "hyperband": (optuna.pruners.HyperbandPruner, {"_min_resource": 1, "_reduction_factor": 3}),
    "pareto": (ParetoPruner, {"n_startup_trials": 5, "n_warmup_steps": 1, "n_dominating": 3, "margin": 0.02}),
}


def test_the_registries_name_exactly_the_expected_samplers_and_pruners():
    assert sorted(SAMPLERS) == sorted(SAMPLER_CLASSES) and sorted(PRUNERS) == sorted(PRUNER_CLASSES)
    for name, cls in SAMPLER_CLASSES.items():
        assert type(make_sampler(name, 0)) is cls, name
    for name, (cls, settings) in PRUNER_CLASSES.items():
        pruner = make_pruner(name)
        assert type(pruner) is cls, name
        assert {k: getattr(pruner, k) for k in settings} == settings, name


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "grid"])
def test_each_sampler_runs_a_seeded_study_stored_in_sqlite(project, sampler):
    loaded = create_study(_spec(sampler=sampler, trials=6), SQLITE)
    assert type(loaded.study.sampler) is SAMPLER_CLASSES[sampler]
    result = run_study(loaded, device="cpu")
    assert result.n_finished == 6 and result.ran == 6
    trials = _finished(SQLITE)
    assert len(trials) == 6
    assert all(0.0 < t.value <= 1.0 for t in trials if t.state == TrialState.COMPLETE)
    # the study reopens with the same sampler kind, rebuilt from the stored spec
    assert type(open_study("s", SQLITE).study.sampler) is type(loaded.study.sampler)


@pytest.mark.parametrize(
    "sampler, trials, startup_trials, expected",
    [("tpe", 30, None, 3), ("tpe", 120, None, 6), ("tpe", 1000, None, 10), ("tpe", 30, 12, 12), ("gp", 200, None, 10), ("gp", 8, 2, 2)],
)
def test_model_based_samplers_start_at_random_for_a_share_of_the_budget(project, sampler, trials, startup_trials, expected):
    loaded = create_study(_spec(sampler=sampler, trials=trials, startup_trials=startup_trials), SQLITE)
    assert loaded.study.sampler._n_startup_trials == expected
    assert open_study("s", SQLITE).study.sampler._n_startup_trials == expected  # rebuilt from the stored spec


@pytest.mark.parametrize("bad, message", [(0, "startup_trials must be at least 1, got 0"), ("3", "startup_trials must be an integer, got '3'")])
def test_startup_trials_must_be_a_positive_integer(bad, message):
    with pytest.raises(SpecError, match=message):
        _spec(startup_trials=bad)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_study_is_reproducible_from_its_seed(project, sampler):
    for name in ("a", "b"):
        run_study(create_study(_spec(name=name, sampler=sampler, trials=5), SQLITE), device="cpu")
    a, b = _finished(SQLITE, "a"), _finished(SQLITE, "b")
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.value for t in a] == pytest.approx([t.value for t in b])


def test_grid_runs_every_point_once_and_stops_when_exhausted(project):
    loaded = create_study(_spec(sampler="grid", trials=None), SQLITE)
    assert loaded.spec.trials == 4  # the grid's size: 2 lr x 2 optimizers
    result = run_study(loaded, device="cpu")
    assert result.n_finished == 4 and result.stopped == "budget"
    points = {tuple(sorted(t.params.items())) for t in _finished(SQLITE)}
    assert len(points) == 4
    assert {p["optimizer"] for p in map(dict, points)} == {"adam", "nesterov"}
    # a larger budget than the grid: the run ends when the grid is exhausted, not after more trials
    bigger = create_study(_spec(name="g2", sampler="grid", trials=50), SQLITE)
    again = run_study(bigger, device="cpu")
    assert again.stopped is Stop.GRID_EXHAUSTED and again.n_finished == 4
    # what a worker prints with --format json is what its parent reads back, whole
    assert RunResult.from_json(json.loads(json.dumps(again.to_json()))) == again


def test_a_run_with_several_workers_stops_for_the_reason_their_stops_add_up_to():
    assert Stop.of_workers({Stop.BUDGET, Stop.GRID_EXHAUSTED}) is Stop.GRID_EXHAUSTED
    assert Stop.of_workers({Stop.TIMEOUT}) is Stop.TIMEOUT
    assert Stop.of_workers({Stop.TIMEOUT, Stop.BUDGET}) is Stop.BUDGET
    assert Stop.of_workers({Stop.BUDGET, Stop.GOAL}) is Stop.GOAL  # one worker saw the goal reached; the others' budget was not
    assert [s.says for s in Stop] == ["budget reached", "grid exhausted", "timeout", "goal reached", "no improvement (patience)", "max time reached"]


def test_grid_needs_grid_points_for_continuous_ranges(project):
    Path("search_spaces/cont.yaml").write_text("params:\n  lr: {type: float, low: 0.001, high: 0.1}\n  epochs: 1\n")
    with pytest.raises(SpecError, match="lr is a continuous range without grid points"):
        create_study(_spec(space="cont", sampler="grid"), SQLITE)
    assert not Path("studies/tuner.db").exists()  # nothing written


@pytest.mark.parametrize("pruner", [p for p in PRUNERS if p != "pareto"])  # pareto: several metrics (tests/test_tradeoffs.py)
def test_each_pruner_is_applied_from_the_stored_spec(project, pruner):
    Path("search_spaces/wide.yaml").write_text(
        textwrap.dedent(
            """\
            params:
              lr: {type: float, low: 1.0e-5, high: 0.5, log: true}
              optimizer: [sgd, adam]
              epochs: 6
              hidden_units: 32
              n_layers: 1
            """
        )
    )
    loaded = create_study(_spec(space="wide", sampler="random", pruner=pruner, trials=16), SQLITE)
    expected = PRUNER_CLASSES[pruner][0]
    assert type(loaded.study.pruner) is expected
    assert type(open_study("s", SQLITE).study.pruner) is expected
    run_study(loaded, device="cpu")
    trials = _finished(SQLITE)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if pruner == "none":
        assert pruned == []
    else:
        # lr spans 1e-5..0.5 with plain sgd: some trials are hopeless and get cut early
        assert pruned, f"{pruner} pruned nothing in 16 trials"
        for t in pruned:
            assert t.user_attrs["pruned_reason"].startswith(f"{pruner} pruner at epoch")
            assert len(t.intermediate_values) < 6


def test_every_trial_stores_what_a_person_needs(project):
    run_study(create_study(_spec(trials=3), SQLITE), device="cpu")
    for t in _finished(SQLITE):
        assert sorted(t.intermediate_values) == [1, 2]  # the metric per epoch
        assert t.value == max(t.intermediate_values.values())
        attrs = t.user_attrs
        assert attrs["device"] == "cpu" and attrs["seed"] == t.number  # study seed 0 + trial number
        assert attrs["epochs_run"] == 2 and attrs["duration_s"] > 0
        assert {"train_loss", "val_loss", "val_accuracy", "stopped"} <= set(attrs)
        assert t.duration is not None


def test_budget_counts_finished_trials_in_the_study_not_per_run(project):
    loaded = create_study(_spec(trials=3), SQLITE)
    assert run_study(loaded, device="cpu").ran == 3
    first = [(t.number, t.params, t.value) for t in _finished(SQLITE)]
    # same budget again: nothing to do
    assert run_study(open_study("s", SQLITE), device="cpu").ran == 0
    # a larger budget: only the difference runs, and earlier trials are untouched
    reopened = open_study("s", SQLITE)
    reopened.spec = reconcile(reopened, {"trials": 5})
    result = run_study(reopened, device="cpu")
    assert result.ran == 2 and result.n_finished == 5
    assert [(t.number, t.params, t.value) for t in _finished(SQLITE)][:3] == first


def test_resume_in_a_new_process_after_the_first_one_dies(project):
    # The first process dies abruptly (os._exit, no cleanup) after two finished trials.
    code = textwrap.dedent(
        """
        import os, sys
        from tuner.spec import StudySpec
        from tuner.study import create_study, open_study, run_study
        url = "sqlite:///studies/tuner.db"
        if sys.argv[1] == "first":
            loaded = create_study(StudySpec(name="r", space="tiny", pruner="none", trials=6), url)
            run_study(loaded, device="cpu", on_trial=lambda t, n, b, best: n == 2 and os._exit(3), pack=1)
        else:
            print(run_study(open_study("r", url), device="cpu").n_finished)
        """
    )
    first = subprocess.run([sys.executable, "-c", code, "first"], capture_output=True, text=True)
    assert first.returncode == 3, first.stderr
    assert len(_finished(SQLITE, "r")) == 2
    before = {t.number: (t.params, t.value) for t in _finished(SQLITE, "r")}
    second = subprocess.run([sys.executable, "-c", code, "second"], capture_output=True, text=True, check=True)
    assert int(second.stdout) == 6
    after = _finished(SQLITE, "r")
    assert len(after) == 6
    assert {n: v for n, v in ((t.number, (t.params, t.value)) for t in after) if n in before} == before
    assert not open_study("r", SQLITE).study.get_trials(states=(TrialState.RUNNING,))


def test_resumed_tpe_does_not_replay_the_first_runs_start_up_points(project):
    loaded = create_study(_spec(sampler="tpe", trials=3), SQLITE)
    run_study(loaded, device="cpu")
    reopened = open_study("s", SQLITE)
    reopened.spec = reconcile(reopened, {"trials": 6})
    run_study(reopened, device="cpu")
    params = [tuple(sorted(t.params.items())) for t in _finished(SQLITE)]
    assert len(set(params)) == 6


def test_run_with_different_settings_than_stored_is_refused(project):
    create_study(_spec(), SQLITE)
    loaded = open_study("s", SQLITE)
    with pytest.raises(SpecError, match="created with sampler='tpe', not 'random'; drop --sampler"):
        reconcile(loaded, {"sampler": "random"})
    Path("search_spaces/tiny.yaml").write_text(Path("search_spaces/tiny.yaml").read_text().replace("epochs: 2", "epochs: 3"))
    with pytest.raises(SpecError, match="different search space"):
        reconcile(loaded, {"space": "tiny"})
    # the stored space is what a resume uses, whatever the file says now
    assert open_study("s", SQLITE).space.params["epochs"].value == 2


def test_divergence_ends_the_trial_early_as_pruned_with_the_reason(project):
    Path("search_spaces/explode.yaml").write_text(
        "params:\n  optimizer: sgd\n  lr: 1.0e+6\n  scaling: none\n  epochs: 8\n  init: {type: categorical, choices: [default, kaiming_normal]}\n"
    )
    result = run_study(create_study(_spec(space="explode", trials=2), SQLITE), device="cpu")
    assert result.n_pruned == 2
    for t in _finished(SQLITE):
        assert t.user_attrs["pruned_reason"].startswith("diverged: loss=")
        assert t.user_attrs["epochs_run"] < 8


def test_repeated_identical_failures_stop_the_study_with_the_reason(project):
    Path("broken_workload.py").write_text(
        "import numpy as np\n"
        "calls = 0\n"
        "def build(config):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if calls > 1:\n"  # the first call is tuner's check at creation
        "        raise RuntimeError('CUDA out of memory (simulated)')\n"
        "    rng = np.random.default_rng(0)\n"
        "    return rng.normal(size=(60, 4)), rng.integers(0, 2, 60)\n"
    )
    loaded = create_study(_spec(workload="broken_workload:build", trials=20), SQLITE)
    with pytest.raises(TunerError, match=f"stopped: {DEFAULT_IN_A_ROW} trials in a row failed the same way; trial 0: .*CUDA out of memory.*; fix the cause, then `tuner study resume s`"):
        run_study(loaded, device="cpu", pack=1)  # packed, the claim that holds the fifth failure ends first
    failed = open_study("s", SQLITE).study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == DEFAULT_IN_A_ROW
    assert all("CUDA out of memory" in t.user_attrs["fail_reason"] for t in failed)


def test_a_failing_trial_is_recorded_and_the_study_goes_on_to_its_budget(project):
    Path("flaky_workload.py").write_text(
        "import numpy as np\n"
        "calls = 0\n"
        "def build(config):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if calls % 3 == 0:\n"
        "        raise RuntimeError(f'CUDA out of memory (simulated, call {calls})')\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.normal(size=(80, 4))\n"
        "    return x, (x[:, 0] > 0).astype(int)\n"
    )
    result = run_study(create_study(_spec(workload="flaky_workload:build", trials=6), SQLITE), device="cpu")
    assert result.n_finished == 6 and result.n_failed >= 2
    failed = open_study("s", SQLITE).study.get_trials(states=(TrialState.FAIL,))
    assert all(t.user_attrs["fail_reason"].startswith("WorkloadError: workload flaky_workload:build raised RuntimeError: CUDA out of memory") for t in failed)


def test_user_callable_workload_supplies_its_own_model(project):
    Path("my_workload.py").write_text(
        "import numpy as np, torch\n"
        "def build(config):\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.normal(size=(200, 5)).astype('float32')\n"
        "    y = (x[:, 0] + x[:, 1] > 0).astype('int64')\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(5, config['hidden_units']), torch.nn.ReLU(), torch.nn.Linear(config['hidden_units'], 2))\n"
        "    return model, x, y\n"
    )
    result = run_study(create_study(_spec(workload="my_workload:build", trials=3, sampler="random"), SQLITE), device="cpu")
    assert result.n_complete == 3 and result.best_value > 0.7


def test_csv_workload_checks_its_target_before_writing_anything(project):
    Path("data.csv").write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    with pytest.raises(TunerError, match="no column 'target' for --target; columns: a, b, label"):
        create_study(_spec(workload="data.csv", target="target"), SQLITE)
    assert not Path("studies/tuner.db").exists()
    result = run_study(create_study(_spec(workload="data.csv", target="label", trials=2), SQLITE), device="cpu")
    assert result.n_finished == 2


def test_metric_must_fit_the_task(project):
    import numpy as np

    np.savez("reg.npz", X=np.random.default_rng(0).normal(size=(100, 3)), y=np.linspace(0, 1, 100))
    with pytest.raises(SpecError, match="val_accuracy needs a classification target"):
        create_study(_spec(workload="reg.npz"), SQLITE)
    result = run_study(create_study(_spec(workload="reg.npz", metric="val_rmse", trials=2), SQLITE), device="cpu")
    assert result.n_finished == 2
    assert open_study("s", SQLITE).study.direction == optuna.study.StudyDirection.MINIMIZE


def test_missing_study_and_missing_database_are_clear_errors(project):
    with pytest.raises(StorageError, match="no studies yet: .*studies/tuner.db does not exist"):
        open_study("nope", SQLITE)
    assert not Path("studies/tuner.db").exists()
    create_study(_spec(), SQLITE)
    with pytest.raises(StorageError, match="no study 'nope' in sqlite:///studies/tuner.db; studies there: s"):
        open_study("nope", SQLITE)
    with pytest.raises(SpecError, match="already exists"):
        create_study(_spec(), SQLITE)


def test_summary_export_list_and_delete(project, tmp_path):
    run_study(create_study(_spec(trials=3), SQLITE), device="cpu")
    loaded = open_study("s", SQLITE)
    summary = study_summary(loaded, SQLITE)
    assert summary["finished"] == 3 and summary["best"]["value"] == loaded.study.best_value
    assert export_trials(loaded, tmp_path / "t.csv", fmt="csv") == 3
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    assert {"params_lr", "params_optimizer", "user_attrs_device", "value"} <= set(rows[0])
    assert export_trials(loaded, tmp_path / "t.json", fmt="json") == 3
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["study"]["name"] == "s" and doc["space"]["params"]["epochs"] == 2
    assert doc["trials"][0]["intermediate_values"].keys() == {"1", "2"}
    assert [r["name"] for r in list_studies(SQLITE)] == ["s"]
    delete_study("s", SQLITE)
    assert list_studies(SQLITE) == []


def test_optuna_cli_reads_a_tuner_study_unchanged(project):
    run_study(create_study(_spec(trials=3), SQLITE), device="cpu")
    optuna_cli = Path(sys.executable).with_name("optuna")
    out = subprocess.run(
        [str(optuna_cli), "trials", "--storage", SQLITE, "--study-name", "s", "-f", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    theirs = json.loads(out)
    ours = _finished(SQLITE)
    assert [t["number"] for t in theirs] == [t.number for t in ours]
    # the study names its metric (for the dashboard's axes), so Optuna's CLI keys each value by it
    assert [t["value"]["val_accuracy"] for t in theirs] == pytest.approx([t.value for t in ours])
    studies = subprocess.run([str(optuna_cli), "studies", "--storage", SQLITE, "-f", "json"], capture_output=True, text=True, check=True)
    assert json.loads(studies.stdout)[0]["name"] == "s"


def test_postgresql_storage_runs_and_resumes_a_study(project, pg_url):
    run_study(create_study(_spec(trials=2), pg_url), device="cpu")
    reopened = open_study("s", pg_url)
    reopened.spec = reconcile(reopened, {"trials": 4})
    assert run_study(reopened, device="cpu").n_finished == 4
    assert [r["trials"] for r in list_studies(pg_url)] == [4]
    assert not Path("studies/tuner.db").exists()


def test_a_budget_change_is_said_and_can_be_raised_back(project, cli):
    assert cli("study", "run", "b", "--space", "tiny", "--trials", "3", "-q").code == 0
    lowered = cli("study", "run", "b", "--trials", "2", "-q")
    assert lowered.code == 0 and "study 'b': budget 3 -> 2 finished trials" in lowered.err
    raised = cli("study", "resume", "b", "--trials", "4", "-q")
    assert raised.code == 0 and "study 'b': budget 2 -> 4 finished trials" in raised.err and "4/4 finished" in raised.out
    same = cli("study", "resume", "b", "--trials", "4", "-q")
    assert same.code == 0 and "budget" not in same.err


def test_a_missing_study_gets_its_did_you_mean_and_a_long_list_says_how_many_more(project):
    import optuna

    from tuner.study import open_study

    url = "sqlite:///studies/tuner.db"
    storage = optuna.storages.RDBStorage(url)
    for i in range(14):
        optuna.create_study(study_name=f"run-{i:02d}", storage=storage)
    with pytest.raises(StorageError) as e:
        open_study("run-1", url)
    message = str(e.value)
    assert "did you mean 'run-1" in message or "did you mean 'run-0" in message
    assert "run-09 and 4 more (`tuner study list`)" in message


def test_a_spec_file_that_disagrees_with_the_stored_study_is_refused_naming_the_file(project, cli):
    assert cli("study", "run", "twice", "--space", "tiny", "--workload", "wine", "--trials", "2", "-q").code == 0
    r = cli("study", "run", "twice", "--spec", "studies/digits_grid.yaml", "--trials", "9", "-q")
    assert r.code == 1 and "remove `space:` from studies/digits_grid.yaml" in r.err
    assert len(optuna.load_study(study_name="twice", storage="sqlite:///studies/tuner.db").trials) == 2  # nothing ran
    # a file stating only what agrees (its unstated settings are not its defaults) continues it
    Path("studies/more.yaml").write_text("name: twice\nspace: tiny\nworkload: wine\ntrials: 3\n")
    r = cli("study", "run", "twice", "--spec", "studies/more.yaml", "-q")
    assert r.code == 0 and "budget 2 -> 3 finished trials" in r.err


def test_a_trial_s_size_is_recorded_shown_and_exported(project, cli):
    """tuner's loop measures `params` (trainable parameters) each epoch: in the history, as an
    attribute of the trial, as a column of `study trials` and in exports."""
    assert cli("study", "run", "size", "--space", "tiny", "--trials", "3", "--sampler", "random", "-q").code == 0
    trials = _finished(SQLITE, "size")
    for t in trials:
        assert t.user_attrs["params"] > 0 and set(t.user_attrs["history"]["params"]) == {t.user_attrs["params"]}
    table = cli("study", "trials", "size", "--columns", "lr").out
    header = next(line for line in table.splitlines() if "state" in line)
    assert " params " in header and str(trials[0].user_attrs["params"]) in table
    assert cli("study", "export", "size", "--out", "size.csv").code == 0
    rows = list(csv.DictReader(open("size.csv")))
    assert [int(r["user_attrs_params"]) for r in rows] == [t.user_attrs["params"] for t in trials]
