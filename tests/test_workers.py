"""Workers, crashes and resume against real processes: SIGKILL at random points, SIGTERM and
SIGINT, K workers on SQLite and PostgreSQL sharing one budget and one grid, and no password ever
shown. Heartbeats are shortened (TUNER_HEARTBEAT=1: a lost trial is failed after 3 s)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

TUNER = str(Path(sys.executable).with_name("tuner"))
SQLITE = "sqlite:///studies/tuner.db"
# long enough trials (about 1-1.5 s on 2 cores) that a signal lands inside one, not between two
SLOW_SPACE = """\
params:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true, grid: 3}
  optimizer: {type: categorical, choices: [adam, nesterov]}
  momentum: {fixed: 0.9, when: {optimizer: [nesterov]}}
  hidden_units: {type: categorical, choices: [32, 64]}
  epochs: 40
  n_layers: 1
  batch_size: 32
"""

# A trial that waits where a test holds it, so that a signal lands inside a trial by construction,
# not by timing: before it starts, a test writes `hold-N` (holding trial N at that step; 0: before
# any work); the trial writes `at-N` (its worker's pid) when it gets there and waits while `hold-N`
# exists. The copy of a lost trial has another number, so it is not held. Each step is real work
# on a small torch model, reported as tuner's loop reports an epoch.
GATED_OBJECTIVE = """
import os, pathlib, time
import torch

def objective(trial):
    torch.manual_seed(trial.seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, trial.params["hidden_units"]), torch.nn.ReLU(), torch.nn.Linear(trial.params["hidden_units"], 2))
    opt = torch.optim.SGD(model.parameters(), lr=trial.params["lr"])
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    hold = pathlib.Path(f"hold-{trial.number}")
    at = int(hold.read_text() or 0) if hold.exists() else None
    score = 0.0
    for step in range(0, 5):
        if step == at:
            pathlib.Path(f"at-{trial.number}").write_text(str(os.getpid()))
            while hold.exists():
                time.sleep(0.02)
        if step:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            score = float((model(x).argmax(1) == y).float().mean())
            trial.report(step, score, loss=loss.item())
    return score
"""
GATED_SPACE = """\
params:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true, grid: 3}
  optimizer: {type: categorical, choices: [adam, nesterov]}
  hidden_units: {type: categorical, choices: [32, 64]}
"""
GATED = ["--space", "gated", "--objective", "gated:objective", "--metric", "score", "--direction", "maximize"]

pytestmark = pytest.mark.slow


@pytest.fixture
def tuner(cli, monkeypatch: pytest.MonkeyPatch):
    """`tuner ARGS` in this process, through the CLI's real entry point, under a test's `env`:
    for the runs after a kill or a signal, which need no process of their own (each new process
    pays ~3 s of imports). As subprocess.run's result, so a test reads either the same way."""

    def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as m:
            for key in set(os.environ) - set(env):
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            r = cli(*args)
        return subprocess.CompletedProcess(["tuner", *args], r.code, r.out, r.err)

    return run


@pytest.fixture
def env(project: Path) -> dict[str, str]:
    Path("search_spaces/slow.yaml").write_text(SLOW_SPACE)
    Path("search_spaces/gated.yaml").write_text(GATED_SPACE)
    Path("gated.py").write_text(GATED_OBJECTIVE)
    return {**os.environ, "TUNER_HEARTBEAT": "1", "PYTHONUNBUFFERED": "1"}


def _usual_heartbeat(env: dict[str, str]) -> dict[str, str]:
    """`env` with tuner's own heartbeat (10 s, lost after 30 s silent), for a test that kills
    nothing: the short one is for tests that wait for a lost trial, and on a busy machine a worker
    waiting its turn for a connection may miss a 1 s beat's 3 s grace while its trial is healthy."""
    return {k: v for k, v in env.items() if k != "TUNER_HEARTBEAT"}


def _hold(*numbers: int, step: int = 2) -> None:
    for n in numbers:
        Path(f"hold-{n}").write_text(str(step))


def _release(*numbers: int) -> None:
    for n in numbers:
        Path(f"hold-{n}").unlink(missing_ok=True)


def _held(number: int, proc: subprocess.Popen | None = None) -> int:
    """Wait until trial `number` is held; the pid of the worker holding it."""
    at = Path(f"at-{number}")

    def there() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before trial {number} was held: {proc.communicate()[1][-2000:]}")
        return at.exists() and at.read_text() != ""

    _wait_for(there, what=f"trial {number} held")
    return int(at.read_text())


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _wait_for(predicate, *, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (KeyError, ValueError, optuna.exceptions.StorageInternalError):
            pass  # the study may not exist yet
        time.sleep(0.2)  # a look may load the study: more often would take a core from the workers it waits for
    raise AssertionError(f"timed out waiting for {what}")


def _mid_trial(url: str, name: str, *, min_finished: int) -> bool:
    trials = _trials(url, name)
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # RUNNING is written when a trial is claimed; its epochs reach the database at flushes
    now = datetime.datetime.now()
    return finished >= min_finished and any(
        t.state == TrialState.RUNNING and t.datetime_start and (now - t.datetime_start).total_seconds() > 0.2 for t in trials
    )


def _snapshot(url: str, name: str) -> dict[int, tuple]:
    return {
        t.number: (t.state, t.params, t.value, dict(t.intermediate_values))
        for t in _trials(url, name)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    }


def _check_complete(url: str, name: str, budget: int, before: dict[int, tuple]) -> list[optuna.trial.FrozenTrial]:
    trials = _trials(url, name)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == budget, f"{len(finished)} finished, budget {budget}"
    assert not [t.number for t in trials if t.state == TrialState.RUNNING], "RUNNING trials left"
    after = _snapshot(url, name)
    assert {n: after[n] for n in before} == before, "an earlier finished trial changed"
    return trials


def _live(needle: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes of this test (run in its project folder) whose
    command line contains `needle`: another test run on the machine may have a study of that name."""
    found = []
    here = Path.cwd().resolve()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                status = Path(f"/proc/{pid}/status").read_text()
                cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
            if needle in line and "State:\tZ" not in status and (cwd == here or here in cwd.parents):
                found.append((int(pid), line))
    return found


def _processes(needle: str) -> list[str]:
    return [line for _, line in _live(needle)]


def _run(*args: str, env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([TUNER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_mid_trial_then_run_again_finishes_the_budget(env, tuner, seed):
    rng = random.Random(seed)
    budget = 7
    victim = rng.randint(0, 3)
    _hold(victim, step=rng.randint(0, 4))  # the kill lands in that trial, at that step
    proc = _run("study", "run", "k", *GATED, "--trials", str(budget), "--pruner", "none", "--seed", str(seed), "-q", env=env)
    _held(victim, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _snapshot(SQLITE, "k")
    zombies = [t.number for t in _trials(SQLITE, "k") if t.state == TrialState.RUNNING]
    assert zombies == [victim], "the kill should leave the trial it interrupted RUNNING"

    again = tuner("study", "run", "k", "-q", env=env)
    assert again.returncode == 0, again.stderr
    trials = _check_complete(SQLITE, "k", budget, before)
    killed = trials[zombies[0]]
    assert killed.state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert killed.params and retry[0].params == killed.params  # sampled before the objective ran
    assert "lost its worker" in retry[0].user_attrs["retry_reason"]
    shown = json.loads(tuner("study", "show", "k", "--format", "json", env=env).stdout)
    assert shown["retried"] == 1 and shown["failed_reasons"] == {"lost worker": 1}


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_close_the_trial_and_resume_cleanly(env, tuner, sig, code):
    _hold(1)
    proc = _run("study", "run", "t", *GATED, "--trials", "4", "--pruner", "none", env=env)
    _held(1, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"interrupted by {sig.name}" in err and "tuner study resume t" in err and "Traceback" not in err
    trials = _trials(SQLITE, "t")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    closed = [t for t in trials if t.state == TrialState.FAIL]
    assert [(t.number, t.user_attrs["fail_reason"]) for t in closed] == [(1, f"interrupted by {sig.name}")]
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].system_attrs["fixed_params"] == closed[0].params
    before = _snapshot(SQLITE, "t")
    resumed = tuner("study", "resume", "t", "-q", env=env)
    assert resumed.returncode == 0, resumed.stderr
    trials = _check_complete(SQLITE, "t", 4, before)
    assert any(t.user_attrs.get("retry_of") == closed[0].number and t.state == TrialState.COMPLETE for t in trials)


SWALLOWING_OBJECTIVE = """\
import time
from pathlib import Path


def objective(trial):
    Path(f"started-{trial.number}").touch()
    try:
        time.sleep(120)
    except BaseException:  # as an import the signal lands in fails with ImportError, or code that catches all
        raise ValueError("the signal, swallowed and turned into this")
    return 1.0
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_the_trial_swallows_still_closes_it_as_interrupted_and_stops_the_worker(env, sig, code):
    """Seen under load: a SIGTERM landing in a C extension's first import became an ImportError,
    the trial failed with it, and the worker went on with the signal lost (and a half-imported
    module failing every later trial). A signal received during a trial now closes it as
    interrupted, whatever the exception that came out of it, and the worker exits."""
    Path("swallow.py").write_text(SWALLOWING_OBJECTIVE)
    proc = _run("study", "run", "sw", "--space", "tiny", "--objective", "swallow:objective", "--metric", "x", "--direction", "minimize",
                "--trials", "5", "--pruner", "none", env=env)  # fmt: skip
    _wait_for(lambda: Path("started-0").exists() or proc.poll() is not None, timeout=120, what="the first trial")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    trials = _trials(SQLITE, "sw")
    assert [(t.number, t.state, t.user_attrs["fail_kind"], t.user_attrs["fail_reason"]) for t in trials if t.state != TrialState.WAITING] == [
        (0, TrialState.FAIL, "interrupted", f"interrupted by {sig.name}")
    ]
    [copy] = [t for t in trials if t.state == TrialState.WAITING]
    assert copy.user_attrs["retry_of"] == 0


def test_two_local_workers_on_sqlite_meet_the_budget_exactly(env):
    env = _usual_heartbeat(env)
    r = subprocess.run(
        [TUNER, "study", "run", "w", "--space", "tiny", "--trials", "16", "--workers", "2", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["n_finished"] == 16 and doc["ran"] == 16 and "database is locked" not in r.stderr
    _check_complete(SQLITE, "w", 16, {})


def _grid_points(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_grid_across_three_workers_runs_each_point_exactly_once(env):
    env = _usual_heartbeat(env)
    r = subprocess.run(
        [TUNER, "study", "run", "g", "--space", "grid_small", "--sampler", "grid", "--pruner", "none", "--workers", "3", "-q"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    points = _grid_points(_trials(SQLITE, "g"))
    assert len(points) == 12 and len(set(points)) == 12


def test_four_workers_on_postgresql_killed_at_random_points_then_resumed(env, tuner, pg_url):
    rng = random.Random(4)
    budget = 16
    env = {**env, "TUNER_STORAGE": pg_url}
    created = tuner("study", "create", "p", *GATED, "--trials", str(budget), "--pruner", "none", env=env)
    assert created.returncode == 0, created.stderr
    held = sorted(rng.sample(range(2, 9), 2))
    for n in held:
        _hold(n, step=rng.randint(0, 4))
    workers = [_run("worker", "p", "--worker-index", str(i), "--workers", "4", "-q", env=env) for i in range(4)]
    killed = []
    for n in held:  # the workers holding them, each killed mid-trial
        pid = _held(n)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    for w in workers:
        w.wait(timeout=300)
    assert sorted(w.pid for w in workers if w.returncode == -9) == sorted(killed)
    assert all(w.returncode == 0 for w in workers if w.pid not in killed), [w.communicate()[1][-1000:] for w in workers if w.returncode not in (0, -9)]
    lost = [t for t in _trials(pg_url, "p") if t.state == TrialState.FAIL]
    assert sorted(t.number for t in lost) == held and all(t.user_attrs["fail_reason"].startswith("lost its worker") for t in lost)
    before = _snapshot(pg_url, "p")
    resumed = tuner("study", "resume", "p", "-q", env=env)  # the survivors met the budget: nothing is left to run
    assert resumed.returncode == 0, resumed.stderr
    _check_complete(pg_url, "p", budget, before)


def test_four_workers_on_postgresql_share_a_grid(env, pg_url):
    env = _usual_heartbeat(env)
    env = {**env, "TUNER_STORAGE": pg_url}
    grid = subprocess.run(
        [TUNER, "study", "run", "pg_grid", "--space", "grid_small", "--sampler", "grid", "--pruner", "none", "--workers", "4", "-q"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert grid.returncode == 0, grid.stderr
    points = _grid_points(_trials(pg_url, "pg_grid"))
    assert len(points) == 12 and len(set(points)) == 12
    # four workers' exact budget on PostgreSQL: test_four_workers_on_postgresql_killed_at_random_points_then_resumed


def test_kill_9_of_the_parent_stops_its_workers_and_the_study_resumes(env, tuner):
    _hold(2)
    parent = _run("study", "run", "o", *GATED, "--trials", "8", "--pruner", "none", "--workers", "2", "-q", env=env)
    _held(2, parent)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    # the workers get SIGTERM from the kernel, close their trials and exit
    _wait_for(lambda: not _processes(" worker o "), timeout=60, what="the workers to exit")
    states = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in _trials(SQLITE, "o")]
    assert not [s for s in states if s[1] == "RUNNING"], states
    assert (2, "FAIL", "interrupted by SIGTERM") in states, states
    before = _snapshot(SQLITE, "o")
    resumed = tuner("study", "resume", "o", "-q", env=env)
    assert resumed.returncode == 0, resumed.stderr
    _check_complete(SQLITE, "o", 8, before)


def test_no_output_message_command_line_or_stored_attribute_shows_the_password(env, tuner, pg_url):
    env = _usual_heartbeat(env)
    secret = "s3cr3t-Pa55"
    url = pg_url.replace("postgres@", f"postgres:{secret}@")  # trust auth accepts any password
    assert secret in url
    outputs = []
    proc = _run("study", "run", "sec", "--space", "slow", "--trials", "4", "--workers", "2", "--storage", url, env=env)
    cmdlines: list[str] = []

    def workers_running() -> bool:
        cmdlines.extend(_processes(" worker sec "))
        return bool(cmdlines)

    _wait_for(workers_running, what="worker processes")
    outputs += proc.communicate(timeout=300)
    assert proc.returncode == 0, outputs
    for argv in (["study", "show", "sec"], ["study", "list"], ["study", "trials", "sec"], ["study", "best", "sec", "--format", "json"],
                 ["study", "show", "nope"], ["study", "run", "sec", "--sampler", "random"]):
        r = tuner(*argv, "--storage", url, env=env)
        outputs += [r.stdout, r.stderr]
    bad_port = url.replace(":5432/", ":1/")
    r = subprocess.run([TUNER, "study", "list", "--storage", bad_port], env=env, capture_output=True, text=True)  # and a traceback's path
    outputs += [r.stdout, r.stderr]
    assert r.returncode == 1 and "***" in r.stderr
    study = optuna.load_study(study_name="sec", storage=pg_url)
    stored = json.dumps([study.user_attrs, study.system_attrs if hasattr(study, "system_attrs") else {}]
                        + [[t.user_attrs, t.system_attrs] for t in study.get_trials()], default=str)
    for text in [*outputs, *cmdlines, stored]:
        assert secret not in text


# -- no window in which a kill leaves a trial RUNNING for ever (issue: killed in its first seconds) --

MEDIUM_SPACE = """\
params:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  optimizer: {type: categorical, choices: [adam, nesterov]}
  momentum: {fixed: 0.9, when: {optimizer: [nesterov]}}
  hidden_units: {type: int, low: 16, high: 64, log: true}
  epochs: 8
  n_layers: 1
"""


def _just_claimed(url: str, name: str, *, seen: set[int]) -> bool:
    """A trial newly seen RUNNING (claimed since the last look, which on a busy machine may be a
    second or more ago: the kill loop takes whatever moment that is, and checks no timing)."""
    for t in _trials(url, name):
        if t.state == TrialState.RUNNING and t.number not in seen:
            seen.add(t.number)
            return True
    return False


def _beating(url: str, name: str) -> set[int]:
    import sqlalchemy

    from tuner.storage import open_storage

    rdb = open_storage(url)
    with rdb.engine.connect() as conn:
        ids = set(conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats")).scalars())
    rdb.engine.dispose()
    return {t.number for t in _trials(url, name) if t._trial_id in ids}


def _as_if_on_another_host(url: str, name: str) -> None:
    """The killed worker's trials, as if it had run elsewhere: only the heartbeat's grace can free them."""
    study = optuna.load_study(study_name=name, storage=url)
    storage = study._storage
    for t in study.get_trials(states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "worker", {**t.user_attrs["worker"], "host": "elsewhere"})


def _beat(url: str, name: str, number: int) -> bool:
    """A heartbeat for trial `number` now, as its worker would send it. True, so that a wait's
    condition can beat as it looks."""
    import sqlalchemy

    from tuner.storage import open_storage

    rdb = open_storage(url)
    trial_id = next(t._trial_id for t in _trials(url, name) if t.number == number)
    with rdb.engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = datetime('now') WHERE trial_id = :t"), {"t": trial_id})
    rdb.engine.dispose()
    return True


@pytest.mark.parametrize("where", ["this host", "another host"])
def test_a_grid_worker_killed_right_after_each_claim_finishes_every_point_once(env, tuner, where):
    """The issue's reproduction: kill -9 right after a grid point (a queued trial) is claimed,
    before its objective does anything, resume, kill again as its retry is claimed, resume: 12
    points finished once, nothing RUNNING, within the grace period plus the remaining work.
    Elsewhere, the grace is 9 s: longer than a new worker takes to start, so the last resume has to
    wait for it, and says so."""
    if where == "another host":
        env = {**env, "TUNER_HEARTBEAT": "3"}
    created = tuner("study", "create", "gz", *GATED, "--sampler", "grid", "--pruner", "none", env=env)
    assert created.returncode == 0, created.stderr
    # the grid's 12 points are trials 0-11; the first point's copy, queued when it is found lost, is 12
    for phase, number in (("run", 0), ("resume", 12)):
        _hold(number, step=0)
        proc = _run("study", phase, "gz", "-q", env=env)
        _held(number, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        running = {t.number for t in _trials(SQLITE, "gz") if t.state == TrialState.RUNNING}
        assert running == {number} and running <= _beating(SQLITE, "gz"), "a killed worker's trial has no heartbeat row"
        if where == "another host":
            _as_if_on_another_host(SQLITE, "gz")
    started = time.monotonic()
    if where == "this host":
        resumed = tuner("study", "resume", "gz", env=env)
    else:
        # the other host's worker beats for its trial until this resume says it waits for it, then
        # falls silent: however long the resume took to start, it waits, then frees the trial
        with (Path("resume.err").open("w")) as err:
            proc = subprocess.Popen([TUNER, "study", "resume", "gz"], env=env, stdout=subprocess.PIPE, stderr=err, text=True)
            _wait_for(lambda: _beat(SQLITE, "gz", 12) and "waiting for 1 running trial of other workers" in Path("resume.err").read_text(),
                      what="the resume to wait for the other host's trial")
            out, _ = proc.communicate(timeout=300)
        resumed = subprocess.CompletedProcess(proc.args, proc.returncode, out, Path("resume.err").read_text())
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(SQLITE, "gz")
    points = _grid_points(trials)
    assert len(points) == 12 and len(set(points)) == 12
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [0, 12] and all(t.user_attrs["fail_reason"].startswith("lost its worker") for t in failed)
    assert failed[1].user_attrs["retry_of"] == 0, "the second kill should hit a retry"
    if where == "another host":  # freed by the grace period: the worker said what it waited for
        assert "no heartbeat for" in failed[-1].user_attrs["fail_reason"]
        assert "waiting for 1 running trial of other workers" in resumed.stderr and " on elsewhere:" in resumed.stderr
    else:  # the dead process is seen at once
        assert "is gone" in failed[-1].user_attrs["fail_reason"]
    assert time.monotonic() - started < 120


def _workers_of(name: str) -> list[int]:
    return [pid for pid, _ in _live(f" worker {name} ")]


def _kill_loop(env: dict[str, str], url: str, name: str, *, n_kills: int, seed: int, budget: int | None = None) -> tuple[list[str], int | None]:
    """Rounds of `tuner study run NAME --workers 2`, each ended by a SIGKILL at a random moment or
    right after a claim: of one worker, of every process at once, or of the parent's process
    group (its workers then close their trials on SIGTERM). The first round kills right after a
    claim, and rounds go on past `n_kills` (up to three times as many) until some kill has landed
    in a trial. With a `budget`, a study that meets it before a round's kill (a busy machine's test
    looks late) is given 20 trials more, so the kills happen however fast the trials run; without
    one (a grid), the loop ends there. Returns what each kill hit, and the budget in the end."""
    rng = random.Random(seed)
    hits: list[str] = []
    seen: set[int] = set()
    landed = False  # some kill left a trial RUNNING (or failed it): the kills are not all between trials
    rounds = 0
    while (len(hits) < n_kills or (not landed and len(hits) < 3 * n_kills)) and rounds < 6 * n_kills:
        rounds += 1
        more = ["--trials", str(budget)] if budget is not None else []
        parent = _run("study", "run", name, "--workers", "2", "-q", *more, env=env, start_new_session=True)
        try:
            _wait_for(lambda: len(_workers_of(name)) == 2 or parent.poll() is not None, timeout=60, what="two workers")
            moment = rng.choice(["right after a claim", "mid-trial", "during start-up"]) if hits or landed else "right after a claim"
            if moment == "right after a claim":
                _wait_for(lambda: _just_claimed(url, name, seen=seen) or parent.poll() is not None, timeout=60, what="a claim")
            elif moment == "mid-trial":
                _wait_for(lambda: _mid_trial(url, name, min_finished=0) or parent.poll() is not None, timeout=60, what="a trial")
                time.sleep(rng.uniform(0.0, 0.3))
            else:
                time.sleep(rng.uniform(0.0, 3.0))
            if parent.poll() is not None:  # the budget was met before this round's kill
                if budget is None:
                    break
                budget += 20
                continue
            how = rng.choice(["one worker", "everything", "the parent's group"])
            workers = _workers_of(name)
            if how == "one worker" and workers:
                os.kill(rng.choice(workers), signal.SIGKILL)  # the other goes on alone for a while
                hits.append(f"{how} {moment}")
                time.sleep(rng.uniform(0.5, 2.0))
                how, moment, workers = "everything", "after one worker's kill", _workers_of(name)
            if how == "everything":
                for pid in [parent.pid, *workers]:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
            else:
                os.killpg(parent.pid, signal.SIGKILL)
            hits.append(f"{how} {moment}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(parent.pid, signal.SIGKILL)
            parent.wait(timeout=60)
            _wait_for(lambda: not _workers_of(name), timeout=60, what="the workers to exit")
        landed = landed or any(t.state in (TrialState.RUNNING, TrialState.FAIL) for t in _trials(url, name))
    return hits, budget


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_study_with_2_workers_killed_at_random_ends_at_exactly_its_budget(env, tuner, backend, request):
    url = SQLITE if backend == "sqlite" else request.getfixturevalue("pg_url")
    env = {**env, "TUNER_STORAGE": url}
    Path("search_spaces/medium.yaml").write_text(MEDIUM_SPACE)
    created = tuner("study", "create", "rk", "--space", "medium", "--trials", "40", "--pruner", "median", "--seed", "5", env=env)
    assert created.returncode == 0, created.stderr
    hits, budget = _kill_loop(env, url, "rk", n_kills=4, seed=5 if backend == "sqlite" else 6, budget=40)
    assert len(hits) >= 4, hits
    before = _snapshot(url, "rk")
    resumed = tuner("study", "resume", "rk", "--workers", "2", "-q", env=env)
    assert resumed.returncode == 0, resumed.stderr
    trials = _check_complete(url, "rk", budget, before)
    assert not [t for t in trials if t.state == TrialState.WAITING]
    lost = [t for t in trials if t.state == TrialState.FAIL]
    # some kill landed in a running trial (how many do depends on the machine's timing: a kill
    # during start-up or between trials leaves none, and a trial may end in the moment before)
    assert lost, hits
    other = [t for t in lost if not t.user_attrs.get("fail_reason", "").startswith(("lost its worker", "interrupted by SIGTERM"))]
    assert not other, f"kills: {hits}" + _story(other)


def test_a_grid_on_postgresql_with_2_workers_killed_at_random_runs_each_point_once(env, tuner, pg_url):
    env = {**env, "TUNER_STORAGE": pg_url}
    # a point lost more often than a study's retries is dropped: here every kill is retried
    Path("studies/gk.yaml").write_text("name: gk\nspace: grid_small\nsampler: grid\npruner: none\nretries: 10\n")
    created = tuner("study", "create", "--spec", "studies/gk.yaml", env=env)
    assert created.returncode == 0, created.stderr
    hits, _ = _kill_loop(env, pg_url, "gk", n_kills=3, seed=7)  # a grid cannot grow: rounds end with it
    resumed = tuner("study", "resume", "gk", "--workers", "2", "-q", env=env)
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(pg_url, "gk")
    points = _grid_points(trials)
    assert len(points) == 12 and len(set(points)) == 12, f"kills: {hits}; resume said: {resumed.stdout}" + _story(trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def _story(trials) -> str:
    """Each trial in a line, for a failed assertion: how it ended, its point, why, whose copy."""
    keys = ("fail_kind", "fail_reason", "retry_of", "worker")
    return "\n" + "\n".join(
        f"#{t.number} {t.state.name} {sorted(t.params.items()) or t.system_attrs.get('fixed_params')} " + str({k: t.user_attrs[k] for k in keys if k in t.user_attrs})
        for t in trials
    )


def test_kill_9_of_a_packed_worker_retries_every_trial_of_its_pack(env, tuner):
    """A worker training 4 trials as one pack is killed: all 4 are left RUNNING, and the next run
    fails each as lost, queues each again with its parameters, and ends with the budget exact."""
    budget = 6
    proc = _run("study", "run", "kp", "--space", "slow", "--trials", str(budget), "--pruner", "none", "--pack", "4", "-q", env=env)
    # killed as soon as its four trials are seen RUNNING with their parameters (on a busy machine
    # the four are claimed well before the last is sampled): the pack trains for seconds, so the
    # kill lands inside it unless the machine stalls for longer than the whole pack
    _wait_for(lambda: sum(t.state == TrialState.RUNNING and bool(t.params) for t in _trials(SQLITE, "kp")) == 4, what="a pack in progress")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    zombies = [t for t in _trials(SQLITE, "kp") if t.state == TrialState.RUNNING]
    assert len(zombies) == 4
    again = tuner("study", "run", "kp", "-q", env=env)
    assert again.returncode == 0, again.stderr
    trials = _check_complete(SQLITE, "kp", budget, {})
    for zombie in zombies:
        assert trials[zombie.number].state == TrialState.FAIL
        retry = [t for t in trials if t.user_attrs.get("retry_of") == zombie.number]
        assert len(retry) == 1 and retry[0].params == zombie.params
    assert any("pack" in t.user_attrs for t in trials if t.state == TrialState.COMPLETE)


# -- the GPU slot pool: pinning is CUDA_VISIBLE_DEVICES, so fake ids work on CPU --------------------


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_gpu_slots_are_filled_per_gpu_and_each_worker_sees_only_its_gpu(env):
    env = _usual_heartbeat(env)
    seen: dict[int, str | None] = {}

    def pinned() -> bool:
        for pid, _ in _live(" worker pin "):
            with contextlib.suppress(OSError):
                seen.setdefault(pid, _environ(pid).get("CUDA_VISIBLE_DEVICES"))
        return len(seen) == 4

    _hold(0, 1, 2, 3)  # each of the four workers holds one trial: all four are seen at once
    proc = _run("study", "run", "pin", *GATED, "--trials", "8", "--pruner", "none",
                "--gpus", "0,1", "--per-gpu", "2", "--device", "cpu", "--format", "json", env=env)
    holders = {_held(n, proc) for n in range(4)}
    _wait_for(pinned, what="four pinned workers")
    assert holders == set(seen)
    _release(0, 1, 2, 3)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert sorted(seen.values()) == ["0", "0", "1", "1"]  # two slots on each GPU, one GPU a worker
    assert json.loads(out)["n_finished"] == 8
    trials = _check_complete(SQLITE, "pin", 8, {})
    for t in trials:  # every trial was run by one of those workers, which recorded the GPU it saw
        assert t.user_attrs["worker"]["gpu"] == seen[t.user_attrs["worker"]["pid"]] and t.user_attrs["device"] == "cpu"


def test_a_killed_gpu_worker_is_replaced_on_its_slot_and_its_trial_retried(env):
    # trial 2's worker is killed; every later trial is held, so that work is left for a
    # replacement, which is seen holding one (the copy of trial 2, or a new one)
    _hold(*range(2, 12))
    proc = _run("study", "run", "rep", *GATED, "--trials", "8", "--pruner", "none",
                "--gpus", "0,1", "--device", "cpu", "--format", "json", env=env)
    pid = _held(2, proc)
    first = {pid for pid, _ in _live(" worker rep ")}
    victim = {**_trials(SQLITE, "rep")[2].user_attrs["worker"], "trial": 2}
    assert victim["pid"] == pid
    os.kill(victim["pid"], signal.SIGKILL)
    replacement: list[int] = []

    def replaced() -> bool:
        holders = {int(p.read_text()) for p in Path(".").glob("at-*") if p.read_text()}
        replacement[:] = [pid for pid in holders - first if _environ(pid).get("CUDA_VISIBLE_DEVICES") == victim["gpu"]]
        return bool(replacement)

    _wait_for(replaced, what="a new worker on the dead worker's GPU, holding a trial")
    _release(*range(2, 12))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["n_finished"] == 8
    [death] = doc["worker_deaths"]
    assert death == {"slot": death["slot"], "gpu": victim["gpu"], "pid": victim["pid"], "exit": "killed by SIGKILL", "last_stderr": "", "replaced": True}
    trials = _check_complete(SQLITE, "rep", 8, {})
    killed = trials[victim["trial"]]
    assert killed.state == TrialState.FAIL and killed.user_attrs["fail_reason"].startswith("lost its worker")
    assert [t.params for t in trials if t.user_attrs.get("retry_of") == killed.number] == [killed.params]


def test_a_death_past_max_restarts_is_one_error_with_its_reason(env):
    _hold(1)
    proc = _run("study", "run", "mr", *GATED, "--trials", "6", "--pruner", "none",
                "--gpus", "0,1", "--device", "cpu", "--max-restarts", "0", env=env)
    pid = _held(1, proc)
    victim = _trials(SQLITE, "mr")[1].user_attrs["worker"]
    assert victim["pid"] == pid
    os.kill(victim["pid"], signal.SIGTERM)  # it closes its trial, says so on stderr, exits 143
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    [line] = err.strip().splitlines()[-1:]
    assert line.startswith("error: 1 of 2 worker slots stopped (--max-restarts 0 spent): ")
    assert f"worker pid {victim['pid']} on GPU {victim['gpu']} exit code 143 (last stderr: interrupted by SIGTERM" in line
    assert "raise --max-restarts, then `tuner study resume mr`" in line
    finished = [t for t in _trials(SQLITE, "mr") if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6  # the other slot's worker finished the budget


def test_a_worker_stopped_by_its_own_error_is_not_replaced(env):
    """Exit 1 is tuner's own error (here: five trials in a row failed the same way): every new
    worker would meet it again, so the slot's worker is reported with its reason, not replaced,
    and the other workers are stopped at once (unless they met it in the same moment)."""
    env = _usual_heartbeat(env)
    Path("broken_workload.py").write_text(
        "import numpy as np\ncalls = 0\n"
        "def build(config):\n    global calls\n    calls += 1\n"
        "    if calls > 1:\n        raise RuntimeError('CUDA out of memory (simulated)')\n"
        "    rng = np.random.default_rng(0)\n    return rng.normal(size=(60, 4)), rng.integers(0, 2, 60)\n"
    )
    proc = subprocess.run(
        [TUNER, "study", "run", "oom", "--space", "tiny", "--workload", "broken_workload:build", "--trials", "30", "--pruner", "none",
         "--gpus", "0,1", "--device", "cpu", "--max-restarts", "5", "--pack", "1"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    n_errors = line.count("failed the same way")
    assert line.startswith(f"error: {n_errors} of 2 worker slots stopped (with an error a new worker would meet again): "), line
    assert line.count("exit code 1") == n_errors and "replaced" not in line
    assert n_errors == 2 or line.count("; 1 other worker(s) stopped with it, their running trials queued again (logs in ") == 1, line
    failed = [t for t in _trials(SQLITE, "oom") if t.state == TrialState.FAIL]
    assert 5 <= len(failed) <= 10 and not [t for t in _trials(SQLITE, "oom") if t.state == TrialState.RUNNING]


# -- many workers behind PgBouncer in transaction pooling ------------------------------------------

TINY_EPOCHS = """\
params:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true, grid: 3}
  optimizer: {type: categorical, choices: [adam, nesterov]}
  momentum: {fixed: 0.9, when: {optimizer: [nesterov]}}
  hidden_units: {type: categorical, choices: [16, 32]}
  epochs: 2
  n_layers: 1
"""


@pytest.mark.parametrize("pack", ["1", "auto"])
def test_eight_workers_behind_pgbouncer_meet_a_budget_and_run_a_grid_once(env, pg_url, pgbouncer_url, pack):
    """8 workers on a PgBouncer with 2 server connections (conftest's PGBOUNCER_POOL_SIZE): each
    transaction may land on another server connection, so a prepared statement or a session's
    lock would break, and a worker waiting for the study lock must not hold a connection. Packed
    (8 trials a worker), a pack's beats are one transaction: beating each trial apart, the pool
    fell behind: trials were declared lost while training, or a worker lost its connection
    waiting for the pool (seen before the change, with this test's --pack auto). Heartbeats are
    tuner's usual here: with 1 s beats (3 s grace) on a machine running other tests, a healthy
    worker waiting its turn for one of the two connections was declared lost."""
    env = _usual_heartbeat(env)
    from tests.conftest import PGBOUNCER_POOL_SIZE

    assert PGBOUNCER_POOL_SIZE < 8
    env = {**env, "TUNER_STORAGE": pgbouncer_url.url}
    Path("search_spaces/quick2.yaml").write_text(TINY_EPOCHS)
    runs = {}
    # the grid once, unpacked (a packed grid: tests/test_packing.py; packed claims here: the budget); the budget both ways
    studies = [("pb", ["--trials", "40", "--sampler", "random"])] + ([("pb_grid", ["--sampler", "grid"])] if pack == "1" else [])
    for name, extra in studies:
        runs[name] = subprocess.run(
            [TUNER, "study", "run", name, "--space", "quick2", "--pruner", "none", *extra, "--workers", "8", "--threads", "1", "--pack", pack, "--format", "json"],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert runs[name].returncode == 0, runs[name].stderr
    trials = _check_complete(pg_url, "pb", 40, {})  # the same database, read directly
    assert json.loads(runs["pb"].stdout)["n_finished"] == 40 and json.loads(runs["pb"].stdout)["ran"] == 40
    grid = _trials(pg_url, "pb_grid") if "pb_grid" in runs else []
    if grid:
        points = _grid_points(grid)
        assert len(points) == 12 and len(set(points)) == 12
    failed = [t.user_attrs.get("fail_reason") for t in trials + grid if t.state == TrialState.FAIL]
    assert not failed, failed
    said = "".join(r.stdout + r.stderr for r in runs.values()) + pgbouncer_url.log.read_text()
    assert "prepared statement" not in said and "query_wait_timeout" not in said


def _connections(admin: Any, database: str) -> int:
    with admin.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).scalar()


def test_a_worker_holds_two_postgresql_connections(env, pg_url):
    """The figure docs/clusters.md gives: a worker's connections while it runs trials, counted by the
    server (pg_stat_activity): the storage's pool, which the study lock shares."""
    env = _usual_heartbeat(env)
    import sqlalchemy

    from tests.conftest import _postgres_admin_url

    env = {**env, "TUNER_STORAGE": pg_url}
    created = subprocess.run([TUNER, "study", "create", "c", *GATED, "--trials", "3", "--pruner", "none"], env=env, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    database = sqlalchemy.engine.make_url(pg_url).database
    admin = sqlalchemy.create_engine(_postgres_admin_url(), poolclass=sqlalchemy.pool.NullPool)
    try:
        _wait_for(lambda: _connections(admin, database) == 0, timeout=30, what="the create's connections to close")
        _hold(1)  # held mid-trial, once a trial and its reports have been written
        worker = _run("worker", "c", "-q", env=env)
        _held(1, worker)
        held = [_connections(admin, database) for _ in range(10)]
        _release(1)
        counts = []
        while worker.poll() is None:
            counts.append(_connections(admin, database))
            time.sleep(0.05)
        assert worker.returncode == 0, worker.stderr.read()
    finally:
        admin.dispose()
    assert held == [2] * 10 and max(counts, default=0) <= 2, (held, counts)
