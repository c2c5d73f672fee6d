"""Any training script as a trial, through the study: `--command` with the pruner, failures, timeouts,
killed workers, logs as artifacts, two workers, PostgreSQL, and `study best`'s reproducing command.
(The engine itself, placeholders, macros and channels, has tests/test_command.py.)"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

SPACE = """
params:
  x: {type: float, low: 0.0, high: 1.0}
  mode: {type: categorical, choices: [ok, ok2]}
"""

# An ordinary script: argparse, prints `epoch=N score=V`, knows nothing of tuner. It writes its pid
# (one file per trial) so the tests can check that a stopped script is really gone.
SCRIPT = r'''
import argparse, os, sys, time, json
ap = argparse.ArgumentParser()
ap.add_argument("--x", type=float, default=0.5)
ap.add_argument("--mode", default="ok")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--behave", default="normal")
ap.add_argument("--sleep", type=float, default=0.02)
ap.add_argument("--pids", default="pids")
ap.add_argument("--together", type=int, default=0)  # wait until this many trials have started (other workers')
a = ap.parse_args()
os.makedirs(a.pids, exist_ok=True)
open(os.path.join(a.pids, f"{a.seed}"), "w").write(str(os.getpid()))
deadline = time.monotonic() + 120
while len(os.listdir(a.pids)) < a.together and time.monotonic() < deadline:
    time.sleep(0.02)
if a.behave == "crash":
    print("loading data", flush=True)
    print("Traceback (most recent call last):\nValueError: bad batch size", file=sys.stderr)
    sys.exit(3)
if a.behave == "hang" and not os.path.exists("release"):
    time.sleep(600)
if a.behave == "silent":
    print("all done, nothing to say")
    sys.exit(0)
for epoch in range(1, 7):
    score = (1 - (a.x - 0.3) ** 2) * epoch / 6
    if a.behave == "garbage":
        print("### epoch %d ### loss: ??? acc=high" % epoch)
        print(f"epoch={epoch} score=nan")
    elif a.behave == "file":
        with open(os.environ["TUNER_METRICS_FILE"], "a") as f:
            f.write(json.dumps({"step": epoch, "score": score}) + "\n")
    elif a.behave == "helper":
        from tuner.reporting import report
        report(step=epoch, score=score)
    elif a.behave == "dip":  # neither first nor last is best: 9+x at epoch 1, down to x at epoch 4, 4+x at 6
        print(f"epoch={epoch} dip={(epoch - 4) ** 2 + a.x!r}", flush=True)
    else:
        print(f"epoch={epoch} score={score:.6f} loss={1 / epoch:.4f}", flush=True)
    time.sleep(a.sleep)
'''


@pytest.fixture
def script(project: Path) -> Path:
    (project / "train.py").write_text(SCRIPT)
    (project / "search_spaces" / "cmd.yaml").write_text(SPACE)
    return project


def _command(behave: str = "normal", sleep: float = 0.02) -> str:
    return f"{sys.executable} train.py --x {{x}} --mode {{mode}} --seed {{seed}} --behave {behave} --sleep {sleep}"


def _args(name: str, behave: str = "normal", *more: str, sleep: float = 0.02) -> list[str]:
    return ["study", "run", name, "--space", "cmd", "--command", _command(behave, sleep), "--metric", "score", "--direction", "maximize", "-q", *more]


def _trials(name: str, url: str = "sqlite:///studies/tuner.db") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(")")[-1].split()[0] == "Z"  # a zombie is gone too


def _pids(project: Path) -> dict[int, int]:
    return {int(p.name): int(p.read_text()) for p in (project / "pids").iterdir()}


def test_a_script_is_tuned_unchanged_and_pruned_scripts_are_stopped(script: Path, cli) -> None:
    r = cli(*_args("c", sleep=0.15), "--trials", "14", "--pruner", "median", "--sampler", "random")
    assert r.code == 0, r.err
    trials = _trials("c")
    assert len(trials) == 14
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert done and pruned, [t.state for t in trials]
    for t in done:  # the best reported value, every report an intermediate value
        expected = 1 - (t.params["x"] - 0.3) ** 2
        assert t.value == pytest.approx(expected, abs=1e-6) and len(t.intermediate_values) == 6
        assert t.user_attrs["history"]["loss"][-1] == pytest.approx(1 / 6, abs=1e-4)
    pids = _pids(script)
    for t in pruned:
        assert t.user_attrs["pruned_kind"] == "pruner" and "median pruner at step" in t.user_attrs["pruned_reason"]
        assert len(t.intermediate_values) < 6 and _gone(pids[t.user_attrs["seed"]])
    # every trial's output is kept as an artifact the dashboard links from the trial's page
    for t in trials:
        log = script / "studies" / "artifacts" / t.user_attrs["log_artifact"]
        assert log.is_file() and "epoch=1 score=" in log.read_text()
    study = optuna.load_study(study_name="c", storage="sqlite:///studies/tuner.db")
    stored = optuna.artifacts.get_all_artifact_meta(study.trials[0], storage=study._storage)
    assert stored and stored[0].filename == "trial-0.log" and stored[0].mimetype == "text/plain"


@pytest.mark.parametrize("behave", ["file", "helper"])
def test_metrics_by_file_and_by_the_helper(script: Path, cli, behave: str) -> None:
    r = cli(*_args(behave, behave), "--trials", "3", "--pruner", "none")
    assert r.code == 0, r.err
    for t in _trials(behave):
        assert t.state == TrialState.COMPLETE and t.value == pytest.approx(1 - (t.params["x"] - 0.3) ** 2)
        assert sorted(t.intermediate_values) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("direction, best_epoch", [("minimize", 4), ("maximize", 1)])
def test_a_command_trial_is_worth_its_best_report_for_the_study_s_direction(script: Path, cli, direction: str, best_epoch: int) -> None:
    r = cli("study", "run", direction, "--space", "cmd", "--command", _command("dip"), "--metric", "dip", "--direction", direction, "--trials", "3", "--pruner", "none", "-q")
    assert r.code == 0, r.err
    for t in _trials(direction):
        assert t.state == TrialState.COMPLETE and t.value == (best_epoch - 4) ** 2 + t.params["x"], (t.value, t.intermediate_values)
        assert t.intermediate_values == {e: (e - 4) ** 2 + t.params["x"] for e in range(1, 7)}
        assert t.user_attrs["value_from"] == "best of 6 reports"


@pytest.mark.parametrize(
    "behave, state, kind, reason",
    [
        ("crash", TrialState.FAIL, "exit code", "command exited with code 3: Traceback (most recent call last): | ValueError: bad batch size"),
        ("silent", TrialState.FAIL, "no metric", "command exited 0 without reporting score: it reported no metric: print `score=0.93` lines"),
        ("garbage", TrialState.PRUNED, "diverged", "diverged: score=nan at step 1"),
    ],
)
def test_a_script_that_crashes_says_nothing_or_prints_nan(script: Path, cli, behave: str, state: TrialState, kind: str, reason: str) -> None:
    r = cli(*_args(behave, behave), "--trials", "2", "--pruner", "none")
    t = _trials(behave)[0]
    assert t.state == state
    if state == TrialState.FAIL:
        assert r.code == 1 and "failed the same way" in r.err
        assert t.user_attrs["fail_kind"] == kind and reason in t.user_attrs["fail_reason"]
    else:
        assert r.code == 0 and t.user_attrs["pruned_kind"] == kind and reason in t.user_attrs["pruned_reason"]


def test_a_hung_script_is_ended_by_the_trial_timeout(script: Path, cli) -> None:
    r = cli(*_args("hang", "hang"), "--trials", "1", "--trial-timeout", "1", "--pruner", "none")
    assert r.code == 1 and "in a row failed the same way; trial 0: command ran past --trial-timeout 1 s" in r.err
    t = _trials("hang")[0]
    assert t.state == TrialState.FAIL and t.user_attrs["fail_kind"] == "timed out" and "--trial-timeout" in t.user_attrs["fail_reason"]
    assert _gone(_pids(script)[t.user_attrs["seed"]])


@pytest.mark.parametrize(
    "command, match",
    [
        ("python train.py --x {y}", r"unknown placeholder \{y\}"),
        ("python train.py ${argz}", r"\$\{argz\}"),
        ("python train.py --x 'unclosed", "quot"),
    ],
)
def test_a_bad_command_is_one_line_and_writes_nothing(script: Path, cli, command: str, match: str) -> None:
    import re

    r = cli("study", "run", "bad", "--space", "cmd", "--command", command, "--metric", "score", "--direction", "maximize")
    assert r.code == 1 and re.search(match, r.err) and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (script / "studies" / "tuner.db").exists()


def test_study_best_prints_the_command_that_reproduces_the_best_value(script: Path, cli) -> None:
    assert cli(*_args("b"), "--trials", "4", "--pruner", "none").code == 0
    shown = cli("study", "best", "b")
    assert shown.code == 0
    lines = shown.out.splitlines()
    command = lines[lines.index(next(line for line in lines if line.startswith("reproduce it"))) + 1]
    best = max((t for t in _trials("b") if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    out = subprocess.run(shlex.split(command), capture_output=True, text=True, cwd=script, check=True).stdout
    scores = [float(line.split("score=")[1].split()[0]) for line in out.splitlines() if "score=" in line]
    assert max(scores) == pytest.approx(best.value, abs=1e-6)
    assert json.loads(cli("study", "best", "b", "--format", "json").out)["reproduce"]["command"] == command


def _worker(script: Path, name: str, *more: str) -> subprocess.Popen:
    tuner = Path(sys.executable).parent / "tuner"
    return subprocess.Popen([str(tuner), *_args(name, "hang"), "--trials", "2", "--pruner", "none", *more], cwd=script, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_killed_worker_leaves_no_orphan_script_and_its_trial_is_retried(script: Path, cli, monkeypatch) -> None:
    monkeypatch.setenv("TUNER_HEARTBEAT", "1")
    worker = _worker(script, "k")
    deadline = time.monotonic() + 60
    while not (script / "pids").exists() or not list((script / "pids").iterdir()):
        assert time.monotonic() < deadline and worker.poll() is None, worker.stderr.read().decode() if worker.poll() is not None else "no script started"
        time.sleep(0.1)
    child = next(iter(_pids(script).values()))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 10
    while not _gone(child):
        assert time.monotonic() < deadline, f"the script {child} outlived its killed worker"
        time.sleep(0.1)
    # the next run frees the lost trial at once (its worker's process is gone) and queues it again
    (script / "release").write_text("")
    r = cli("study", "resume", "k", "-q")
    assert r.code == 0, r.err
    trials = _trials("k")
    lost = trials[0]
    assert lost.state == TrialState.FAIL and lost.user_attrs["fail_kind"] == "lost worker"
    retried = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE and retried[0].params == lost.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_two_workers_share_a_command_study_on_postgresql(script: Path, cli, pg_url: str) -> None:
    # the first trial waits for a second to start, which only the other worker can start
    args = _args("pg")
    args[args.index("--command") + 1] += " --together 2"
    r = cli(*args, "--trials", "8", "--pruner", "none", "--workers", "2", "--storage", pg_url)
    assert r.code == 0, r.err
    trials = _trials("pg", pg_url)
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2
    assert sorted(t.user_attrs["seed"] for t in trials) == list(range(8))


def test_a_command_worker_does_not_warm_up_torch_for_a_child_that_trains(script: Path) -> None:
    """A --command trial trains in its child: the worker pays none of torch's first-optimizer
    imports (torch._dynamo, ~1-2 s a worker), which tuner's own loop pays before its first trial."""
    code = (
        "import sys\n"
        "from tuner.cli import main\n"
        f"sys.argv = ['tuner', *{_args('w')!r}, '--trials', '2', '--pruner', 'none']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('dynamo' if 'torch._dynamo' in sys.modules else 'none')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "none"
    assert [t.state for t in _trials("w")] == [TrialState.COMPLETE] * 2
