"""Any script, unchanged: three training scripts of our own (examples/any_script/), each printing its
metrics its own way and knowing nothing of tuner, are tuned with one --metric-pattern each and
pruned at their own steps; `study best` reproduces by hand; failures stop a study; a misspelt
metric says what was seen; each trial has a folder of its own."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

PY = sys.executable

# script, its space, the command, the patterns, the metric and direction, the steps it reports at
CASES = {
    "charlm": dict(
        space="params:\n  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n  weight_decay: {type: float, low: 0.0, high: 0.1}\n",
        command=f"{PY} examples/any_script/charlm.py --learning-rate {{learning_rate}} -w {{weight_decay}} --work-dir {{trial_dir}}",
        patterns=["--metric-pattern", r"test_loss=test loss: (\S+)", "--step-pattern", r"^step (\d+)"],
        metric="test_loss", direction="minimize", steps=[0, 500, 1000, 1500, 2000, 2500, 3000],
    ),
    "wordlm": dict(
        space="params:\n  lr: {type: float, low: 1.0, high: 100.0, log: true}\n  dropout: {type: float, low: 0.0, high: 0.6}\n",
        command=f"{PY} examples/any_script/wordlm.py --lr {{lr}} --dropout {{dropout}} --save {{trial_dir}}/model.pt",
        patterns=["--metric-pattern", r"valid_loss=\| end of epoch\s+(?P<step>\d+) .*\| valid loss\s+(\S+)"],
        metric="valid_loss", direction="minimize", steps=[1, 2, 3, 4, 5, 6],
    ),
    "addgpt": dict(
        space="params:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n  n_layer: {type: int, low: 2, high: 6}\n",
        command=f"{PY} examples/any_script/addgpt.py --trainer.learning_rate {{lr}} --model.n_layer {{n_layer}}",
        patterns=["--metric-pattern", r"test_acc=test final score: \d+/\d+ = ([\d.]+)% correct", "--step-pattern", r"iter (\d+):"],
        metric="test_acc", direction="maximize", steps=[500, 1000, 1500, 2000],
    ),
}


@pytest.fixture
def scripts(project: Path) -> Path:
    for name, case in CASES.items():  # the project holds a copy of examples/
        (project / "search_spaces" / f"{name}.yaml").write_text(case["space"])
    return project


def _trials(name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage="sqlite:///studies/tuner.db").get_trials()


def _study(name: str, *more: str, script: str | None = None) -> list[str]:
    case = CASES[script or name]
    return ["study", "run", name, "--space", script or name, "--command", case["command"], *case["patterns"],
            "--metric", case["metric"], "--direction", case["direction"], "-q", *more]


@pytest.mark.parametrize("name", list(CASES))
def test_an_unchanged_script_is_tuned_with_one_pattern_pruned_at_its_own_steps_and_reproduced_by_hand(scripts: Path, cli, name: str) -> None:
    case = CASES[name]
    r = cli(*_study(name, "--trials", "12", "--sampler", "random", "--seed", "3"))
    assert r.code == 0, r.err
    trials = _trials(name)
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}, [t.user_attrs.get("fail_reason") for t in trials]
    for t in trials:  # reported at the script's own steps, as far as each got
        assert list(t.intermediate_values) == case["steps"][: len(t.intermediate_values)]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(re.fullmatch(rf"median pruner at step \d+: {case['metric']}=\S+", t.user_attrs["pruned_reason"]) for t in pruned)
    assert all(t.user_attrs["pruned_reason"].split(" at step ")[1].split(":")[0] == str(list(t.intermediate_values)[-1]) for t in pruned)

    best = json.loads(cli("study", "best", name, "--format", "json").out)
    by_hand = subprocess.run(shlex.split(best["reproduce"]["command"]), cwd=best["reproduce"]["cwd"], capture_output=True, text=True, check=True)
    metric_regex = case["patterns"][1].split("=", 1)[1]
    values = [float(m.group("value") if "value" in m.re.groupindex else m.groups()[-1]) for m in re.finditer(metric_regex, by_hand.stdout, re.M)]
    assert values and (min(values) if case["direction"] == "minimize" else max(values)) == best["value"]

    shown = cli("study", "show", name).out
    assert f", command {case['command']}, sampler random" in shown.replace("\n", " ") and "workload digits" not in shown
    assert "reads from its output: 'valid_loss=" in shown if name == "wordlm" else "reads from its output:" in shown


def test_check_metrics_shows_what_a_saved_log_gives_line_by_line(scripts: Path, cli) -> None:
    log = subprocess.run([PY, "examples/any_script/wordlm.py", "--epochs", "2", "--save", "m.pt"], capture_output=True, text=True, check=True).stdout
    Path("run.log").write_text(log)
    r = cli("command", "check-metrics", "run.log", *CASES["wordlm"]["patterns"], "--metric", "valid_loss")
    assert r.code == 0, r.err
    assert r.out.splitlines() == ["line 5: step=1 valid_loss=6.8", "line 11: step=2 valid_loss=5.8", "2 of the log's lines give metrics: valid_loss at steps 1 to 2"]
    # a pattern that reads nothing, or a metric the log does not give: said, with what the log does give
    r = cli("command", "check-metrics", "run.log", "--metric-pattern", r"valid_loss=valid_loss (\S+)")
    assert r.code == 1 and "no line matched the metric pattern 'valid_loss=valid_loss (\\S+)'" in r.err
    r = cli("command", "check-metrics", "run.log", *CASES["wordlm"]["patterns"], "--metric", "valid-loss")
    assert r.code == 1 and r.err.strip().endswith("the log gives valid_loss (did you mean valid_loss?)")
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "pattern, said",
    [
        (r"test_loss=test loss: (\S+", "is not a valid regular expression: missing ), unterminated subpattern"),
        (r"test_loss=test loss: \S+", "has no group to capture the value; put ( ) around the number"),
        (r"test_loss=test loss: ([a-z]+)", "its group ([a-z]+) never matches a number"),
        (r"test_loss=(train|test) loss: (\S+)", "has 2 capturing groups; name the value's (?P<value>...)"),
        (r"test loss: (\S+)", "needs NAME=REGEX"),
        (r"1st=test loss: (\S+)", "'1st' is not a metric name"),
    ],
)
def test_a_bad_pattern_is_refused_at_create_in_one_line_and_writes_nothing(scripts: Path, cli, pattern: str, said: str) -> None:
    r = cli("study", "create", "bad", "--space", "charlm", "--command", CASES["charlm"]["command"], "--metric-pattern", pattern,
            "--metric", "test_loss", "--direction", "minimize")
    assert r.code == 1 and said in r.err and f"'{pattern}'" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not Path("studies/tuner.db").exists()


def test_a_metric_no_pattern_reads_is_refused_at_create_with_the_name_it_meant(scripts: Path, cli) -> None:
    r = cli("study", "create", "bad", "--space", "charlm", "--command", CASES["charlm"]["command"], *CASES["charlm"]["patterns"],
            "--metric", "test-loss", "--direction", "minimize")
    assert r.code == 1 and r.err.strip() == "error: options: metric test-loss is read by no --metric-pattern, which read test_loss; did you mean --metric test_loss?"
    assert not Path("studies/tuner.db").exists()


@pytest.mark.parametrize("quiet", [True, False])
def test_a_command_with_a_wrong_flag_stops_at_the_fifth_failure_naming_it(scripts: Path, cli, quiet: bool) -> None:
    command = f"{PY} examples/any_script/charlm.py --lr {{learning_rate}}"  # the script's flag is --learning-rate
    args = ["study", "run", "wrong", "--space", "charlm", "--command", command, "--metric", "test_loss", "--direction", "minimize", "--trials", "50"]
    r = cli(*args, *(["-q"] if quiet else []))
    assert r.code == 1
    trials = _trials("wrong")
    assert len(trials) == 5 and all(t.state == TrialState.FAIL for t in trials)
    [line] = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: study 'wrong' stopped: 5 trials in a row failed the same way; trial 0: command exited with code 2: ")
    assert "error: unrecognized arguments: --lr " + repr(trials[0].params["learning_rate"]) in line
    assert line.endswith("the script refused its command line: compare --command with the script's --help, then `tuner study resume wrong` (--max-streak 5)")


def test_failures_of_different_kinds_stop_at_max_failures(scripts: Path, cli) -> None:
    # each trial fails its own way (exit codes 1, 2, 3, ...): no run of one kind, but too many in all
    Path("varied.py").write_text("import sys\nn = int(sys.argv[1])\nprint(f'failure number {n}', file=sys.stderr)\nsys.exit(1 + n % 7)\n")
    r = cli("study", "run", "varied", "--space", "charlm", "--command", f"{PY} varied.py {{trial}}", "--metric", "x", "--direction", "minimize",
            "--max-failures", "4", "-q")
    assert r.code == 1 and "stopped: 4 trials failed in this run (--max-failures 4); the first, trial 0: command exited with code 1: failure number 0" in r.err
    assert len(_trials("varied")) == 4


def test_failures_differing_only_in_the_trial_s_values_are_one_kind_for_an_objective_too(scripts: Path, cli) -> None:
    Path("obj.py").write_text(
        "def objective(trial):\n"
        "    raise ValueError(f\"learning rate {trial.params['learning_rate']} is not allowed for decay {trial.params['weight_decay']:.3f}\")\n"
    )
    r = cli("study", "run", "obj", "--space", "charlm", "--objective", "obj:objective", "--metric", "x", "--direction", "minimize", "-q")
    assert r.code == 1 and "stopped: 5 trials in a row failed the same way; trial 0: ValueError: learning rate " in r.err
    assert len(_trials("obj")) == 5


def test_a_misspelt_metric_says_what_the_script_reported_and_where_its_log_is(scripts: Path, cli) -> None:
    Path("kv.py").write_text("import sys\nprint('epoch=1 test_loss=2.5 train_loss=2.7')\nprint('warming up done', file=sys.stderr)\n")
    r = cli("study", "run", "kv", "--space", "charlm", "--command", f"{PY} kv.py", "--metric", "testloss", "--direction", "minimize", "--trials", "1", "-q")
    assert r.code == 1
    t = _trials("kv")[0]
    log = Path(t.user_attrs["trial_dir"]) / "trial-0.log"
    assert t.user_attrs["fail_reason"] == (
        f"command exited 0 without reporting testloss: it reported test_loss, train_loss (did you mean test_loss?); "
        f"last stderr lines: warming up done; full log: {log}"
    )
    assert "epoch=1 test_loss=2.5" in log.read_text()
    assert "did you mean test_loss?" in r.err


def test_two_parallel_trials_saving_to_their_trial_dir_keep_both_files(scripts: Path, cli) -> None:
    r = cli(*_study("dirs", "--trials", "4", "--workers", "2", "--pruner", "none", script="charlm"))
    assert r.code == 0, r.err
    trials = _trials("dirs")
    folders = {t.user_attrs["trial_dir"] for t in trials}
    assert len(folders) == 4 and all(Path(f).parent == Path("studies/artifacts/dirs").absolute() for f in folders)
    store = FileSystemArtifactStore("studies/artifacts")
    for t in trials:
        saved = Path(t.user_attrs["trial_dir"]) / "model.pt"
        assert saved.read_text() == f"lr={t.params['learning_rate']!r} step=3000\n"
        [listed] = t.user_attrs["files"]
        assert listed["path"] == "model.pt" and listed["bytes"] == saved.stat().st_size
        with store.open_reader(listed["artifact"]) as f:  # attached to the trial, as the dashboard reads it
            assert f.read() == saved.read_bytes()
    shown = cli("study", "best", "dirs").out
    assert "its folder: " in shown and ": model.pt" in shown


def test_a_pattern_reads_stderr_too_where_logging_writes(scripts: Path, cli) -> None:
    Path("logs.py").write_text(
        "import logging\nlogging.basicConfig(format='%(asctime)s %(levelname)s %(message)s')\n"
        "for epoch in range(1, 4):\n    logging.warning('epoch %d val_loss %.3f', epoch, 1.0 / epoch)\n"
    )
    r = cli("study", "run", "logs", "--space", "charlm", "--command", f"{PY} logs.py", "--metric-pattern", r"val_loss=epoch (?P<step>\d+) val_loss (\S+)",
            "--metric", "val_loss", "--direction", "minimize", "--trials", "1", "-q")
    assert r.code == 0, r.err
    assert _trials("logs")[0].intermediate_values == {1: 1.0, 2: 0.5, 3: 0.333}


def test_a_missing_module_under_tuner_s_own_python_names_the_interpreter_to_use(scripts: Path, cli, monkeypatch) -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests run outside a virtual environment: `python` is nobody's in particular")
    venv_bin = str(Path(sys.prefix) / "bin")
    monkeypatch.setenv("PATH", f"{venv_bin}:{__import__('os').environ['PATH']}")  # the environment active
    Path("needs.py").write_text("import tensorboard_not_here_xyz\n")
    r = cli("study", "run", "needs", "--space", "charlm", "--command", "python needs.py", "--metric", "x", "--direction", "minimize", "--trials", "1", "-q")
    assert r.code == 1
    reason = _trials("needs")[0].user_attrs["fail_reason"]
    assert "ModuleNotFoundError: No module named 'tensorboard_not_here_xyz'" in reason
    assert f"; `python` here is tuner's own interpreter ({venv_bin}/python), which lacks tensorboard_not_here_xyz: start --command with your script's interpreter's full path" in reason
    # the same script through another interpreter's path is not told so
    Path("other").mkdir()
    Path("other/python").symlink_to(sys.base_prefix + "/bin/python3")
    r = cli("study", "run", "needs2", "--space", "charlm", "--command", f"{Path('other/python').absolute()} needs.py", "--metric", "x", "--direction", "minimize", "--trials", "1", "-q")
    assert "tuner's own interpreter" not in _trials("needs2")[0].user_attrs["fail_reason"]


def test_a_worker_stopped_by_failures_stops_the_other_workers_too(scripts: Path, cli) -> None:
    """With --workers, the first worker whose trials keep failing stops the run: the others are
    stopped at once (their running trials queued again), not left to fail five times each or to
    run on alone. Here only the first worker's trials fail; the other's take a second each."""
    Path("half.py").write_text(
        "import os, sys, time\n"
        "try:\n    fd = os.open('failing_worker', os.O_CREAT | os.O_EXCL | os.O_WRONLY); os.write(fd, str(os.getppid()).encode()); os.close(fd)\n"
        "except FileExistsError:\n    pass\n"
        "if open('failing_worker').read() == str(os.getppid()):\n    sys.exit('error: unrecognized arguments: --lr')\n"
        "time.sleep(1.0)\nprint('score=1')\n"
    )
    r = cli("study", "run", "half", "--space", "charlm", "--command", f"{PY} half.py", "--metric", "score", "--direction", "maximize",
            "--trials", "30", "--workers", "2", "--pruner", "none", "-q")
    assert r.code == 1
    [line] = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: 1 of 2 worker slots stopped (with an error a new worker would meet again): worker pid "), line
    assert "study 'half' stopped: 5 trials in a row failed the same way" in line
    assert "; 1 other worker(s) stopped with it, their running trials queued again (logs in " in line
    trials = _trials("half")
    assert sum(t.state == TrialState.COMPLETE for t in trials) < 25 and not [t for t in trials if t.state == TrialState.RUNNING]


def test_a_metric_named_as_the_readers_read_it_is_accepted(scripts: Path, cli) -> None:
    Path("dash.py").write_text("print('epoch=1 test-loss=2.5')\nprint('epoch=2 test-loss=2.25')\n")
    r = cli("study", "run", "dash", "--space", "charlm", "--command", f"{PY} dash.py", "--metric", "test-loss", "--direction", "minimize", "--trials", "1", "-q")
    assert r.code == 0, r.err
    assert _trials("dash")[0].value == 2.25


def test_a_python_objective_saves_to_its_trial_dir_and_the_files_are_attached(scripts: Path, cli) -> None:
    """trial.trial_dir, a Python objective's own folder (made on first use, as a command's
    {trial_dir}): what it leaves there is listed on the trial and attached to it, pruned or not."""
    Path("saver.py").write_text(
        "def objective(trial):\n"
        "    (trial.trial_dir / 'model.pt').write_text(f\"lr={trial.params['learning_rate']!r}\")\n"
        "    (trial.trial_dir / 'plots').mkdir()\n"
        "    (trial.trial_dir / 'plots' / 'curve.txt').write_text('1 2 3')\n"
        "    return trial.params['learning_rate']\n"
    )
    r = cli("study", "run", "saver", "--space", "charlm", "--objective", "saver:objective", "--metric", "x", "--direction", "minimize",
            "--trials", "2", "-q")
    assert r.code == 0, r.err
    store = FileSystemArtifactStore("studies/artifacts")
    for t in _trials("saver"):
        folder = Path(t.user_attrs["trial_dir"])
        assert folder == Path(f"studies/artifacts/saver/trial-{t.number}").absolute()
        assert [f["path"] for f in t.user_attrs["files"]] == ["model.pt", "plots/curve.txt"]
        with store.open_reader(t.user_attrs["files"][0]["artifact"]) as f:
            assert f.read().decode() == f"lr={t.params['learning_rate']!r}"
    Path("quiet.py").write_text("def objective(trial):\n    return 1.0\n")  # no folder asked for: none made
    assert cli("study", "run", "quiet", "--space", "charlm", "--objective", "quiet:objective", "--metric", "x", "--direction", "minimize", "--trials", "1", "-q").code == 0
    assert "trial_dir" not in _trials("quiet")[0].user_attrs and not Path("studies/artifacts/quiet").exists()
