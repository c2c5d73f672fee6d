"""Stopping a study before its budget (tuner.stopping): --goal, --patience with --min-delta,
--max-time; decided under the study lock, honoured by every worker, shown where people look."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tuner.errors import SpecError
from tuner.metrics import Metric
from tuner.stopping import STOPPED_ATTR, Stopping, parse_duration, wall_seconds

SQLITE = "sqlite:///studies/tuner.db"
TUNER = str(Path(sys.executable).parent / "tuner")
T0 = datetime(2026, 12, 1, 12, 0, 0)
ACCURACY = (Metric("val_accuracy", "maximize"),)


def _trial(number: int, value: float | list[float] | None, *, start_s: float = 0.0, end_s: float | None = None, state: TrialState = TrialState.COMPLETE):
    t = create_trial(
        state=state, values=None if value is None else (value if isinstance(value, list) else [value]),
        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
    )  # fmt: skip
    t.number = number
    t.datetime_start = T0 + timedelta(seconds=start_s)
    t.datetime_complete = None if state == TrialState.RUNNING else T0 + timedelta(seconds=end_s if end_s is not None else start_s + 1 + number)
    return t


def test_the_goal_stops_once_a_complete_trial_reaches_it_in_the_metric_s_direction():
    trials = [_trial(0, 0.90), _trial(1, 0.97), _trial(2, 0.95)]
    assert Stopping(ACCURACY, goal=0.98).decide(trials) is None
    rule, reason = Stopping(ACCURACY, goal=0.96).decide(trials)
    assert rule == "goal" and reason == "trial 1 reached val_accuracy 0.97, the goal >= 0.96"
    loss = (Metric("val_loss", "minimize"),)
    assert Stopping(loss, goal=0.2).decide([_trial(0, 0.3), _trial(1, 0.25)]) is None
    assert Stopping(loss, goal=0.2).decide([_trial(0, 0.3), _trial(1, 0.15)])[0] == "goal"


def test_patience_counts_finished_trials_since_the_last_improvement_by_more_than_min_delta():
    values = [0.5, 0.8, 0.81, 0.80, None, 0.79]  # None: pruned, a finished trial that did not improve
    trials = [_trial(i, v, state=TrialState.PRUNED if v is None else TrialState.COMPLETE) for i, v in enumerate(values)]
    assert Stopping(ACCURACY, patience=4).decide(trials) is None  # 0.81 at trial 2: 3 trials since
    rule, reason = Stopping(ACCURACY, patience=3).decide(trials)
    assert rule == "patience" and "the best val_accuracy (0.81, at trial 2) did not improve in the last 3 finished trials" in reason
    rule, reason = Stopping(ACCURACY, patience=4, min_delta=0.05).decide(trials)  # 0.81 is not 0.05 better than 0.8
    assert rule == "patience" and "(0.8, at trial 1)" in reason and "by more than 0.05" in reason
    assert Stopping(ACCURACY, patience=3).decide(trials[:3]) is None  # fewer finished trials than the patience


def test_patience_with_several_metrics_watches_the_front_s_hypervolume():
    both = (Metric("val_accuracy", "maximize"), Metric("params", "minimize"))
    growing = [_trial(0, [0.5, 1000]), _trial(1, [0.9, 5000]), _trial(2, [0.8, 500]), _trial(3, [0.95, 8000])]
    assert Stopping(both, patience=2).decide(growing) is None  # every trial widened the front
    flat = growing + [_trial(4, [0.4, 9000]), _trial(5, [0.5, 8000])]  # both dominated
    rule, reason = Stopping(both, patience=2).decide(flat)
    assert rule == "patience" and reason.startswith("the hypervolume of the Pareto front (") and "at trial 3" in reason


def test_max_time_counts_the_wall_time_trials_ran_across_runs_and_workers_once():
    trials = [
        _trial(0, 0.5, start_s=0, end_s=10), _trial(1, 0.5, start_s=5, end_s=12),  # two workers at once: 12 s
        _trial(2, 0.5, start_s=100, end_s=110),  # a later run: the hour between does not count
        _trial(3, None, start_s=115, state=TrialState.RUNNING),  # running: up to now
    ]  # fmt: skip
    assert wall_seconds(trials, now=T0 + timedelta(seconds=120)) == pytest.approx(12 + 10 + 5)
    assert Stopping(ACCURACY, max_time_s=30).decide(trials, now=T0 + timedelta(seconds=120)) is None
    rule, reason = Stopping(ACCURACY, max_time_s=25).decide(trials, now=T0 + timedelta(seconds=120))
    assert rule == "max_time" and "27s of wall time, --max-time 25s" in reason


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), (45, 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5", "0", "1h-3m"])
def test_bad_durations_are_refused(text):
    with pytest.raises(SpecError, match="max_time"):
        parse_duration(text)


OBJECTIVE = """
import time

def flat(trial):
    return 0.5  # never improves after the first trial

def slow(trial):
    time.sleep(0.4)
    return trial.number

def rising(trial):
    time.sleep(0.3)
    return trial.number / 100
"""


@pytest.fixture
def code(project: Path) -> Path:
    (project / "stops.py").write_text(OBJECTIVE)
    (project / "search_spaces" / "x.yaml").write_text("params:\n  x: {type: float, low: 0.0, high: 1.0}\n")
    return project


def test_patience_stops_a_plateaued_study_says_why_and_goes_on_when_turned_off(cli, code):
    args = ["study", "run", "p", "--space", "x", "--objective", "stops:flat", "--metric", "score", "--direction", "maximize", "--trials", "20"]
    result = cli(*args, "--patience", "3", "--sampler", "random")
    assert result.code == 0, result.err
    study = optuna.load_study(study_name="p", storage=SQLITE)
    assert len(study.trials) == 4  # trial 0 set the best; 1, 2 and 3 did not improve it
    assert "stopped early: the best score (0.5, at trial 0) did not improve in the last 3 finished trials, --patience 3; to go on, raise --patience" in result.out
    assert study.user_attrs[STOPPED_ATTR] == {"rule": "patience", "reason": study.user_attrs[STOPPED_ATTR]["reason"], "n_finished": 4}
    shown = cli("study", "show", "p").out
    assert "stops early at: patience 3" in shown and "stopped early (patience) after 4 finished trials" in shown
    assert "(patience)" in cli("study", "list").out
    again = cli("study", "run", "p")  # as it is, it stays stopped, and says why
    assert again.code == 0 and "stopped early" in again.out and len(optuna.load_study(study_name="p", storage=SQLITE).trials) == 4
    on = cli("study", "run", "p", "--patience", "0")
    assert on.code == 0 and "budget reached" in on.out, on.out
    study = optuna.load_study(study_name="p", storage=SQLITE)
    assert len(study.trials) == 20 and study.user_attrs[STOPPED_ATTR] is None
    assert "stopped early" not in cli("study", "show", "p").out


@pytest.mark.slow
def test_a_goal_stops_four_workers_on_postgresql_each_within_its_current_trial(code, pg_url):
    env = {**os.environ, "TUNER_STORAGE": pg_url}
    run = subprocess.run(
        [TUNER, "study", "run", "g", "--space", "x", "--objective", "stops:rising", "--metric", "score", "--direction", "maximize",
         "--trials", "60", "--goal", "0.08", "--workers", "4", "--sampler", "random"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    study = optuna.load_study(study_name="g", storage=pg_url)
    trials = study.get_trials()
    # the first trial to reach the goal, in time: with 4 workers, trials 8-11 run together and any may end first
    reached = min((t for t in trials if t.value is not None and t.value >= 0.08), key=lambda t: t.datetime_complete)
    assert reached.number >= 8 and len(trials) < 60
    late = [t.number for t in trials if t.datetime_start > reached.datetime_complete + timedelta(seconds=0.5)]
    assert not late, f"trials {late} were started after trial {reached.number} reached the goal"
    assert not [t for t in trials if t.state == TrialState.RUNNING] and not [t for t in trials if t.state == TrialState.FAIL]
    # the reason names a trial that reached it (the first the deciding worker saw: a buffered write may land after a later trial's)
    said = re.search(r"stopped early: trial (\d+) reached score (\S+), the goal >= 0.08; to go on, raise --goal", run.stdout)
    assert said and int(said[1]) in {t.number for t in trials if t.value is not None and t.value >= 0.08}, run.stdout
    show = subprocess.run([TUNER, "study", "show", "g"], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "stopped early (goal)" in show


@pytest.mark.parametrize(
    "extra, said",
    [
        (["--patience", "-1"], "--patience"),
        (["--goal", "1.5"], "goal 1.5 for val_accuracy (maximized) is never reached: val_accuracy is between 0 and 1"),
        (["--goal", "high"], "goal 'high' is not a number"),
        (["--metric", "val_accuracy", "--metric", "params:minimize", "--goal", "0.9"], "--goal is a value of one metric and this study has 2"),
        (["--min-delta", "0.01"], "--min-delta says what improvement --patience waits for"),
        (["--max-time", "soon"], "max_time 'soon' is not a duration"),
    ],
)
def test_bad_stopping_settings_get_one_line_and_write_nothing(cli, project, extra, said):
    result = cli("study", "run", "bad", "--space", "tiny", "--trials", "3", *extra)
    assert result.code != 0 and said in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (project / "studies" / "tuner.db").exists()


def test_max_time_stops_a_study_once_its_trials_have_run_that_long_across_runs(cli, code):
    args = ["study", "run", "t", "--space", "x", "--objective", "stops:slow", "--metric", "score", "--direction", "maximize", "--trials", "50"]
    result = cli(*args, "--max-time", "2s", "--sampler", "random")
    assert result.code == 0 and "stopped early: its trials have run for " in result.out and "--max-time 2s" in result.out, result.out
    n = len(optuna.load_study(study_name="t", storage=SQLITE).trials)
    assert 4 <= n <= 8  # 0.4 s trials: about 5 of them fill 2 s
    again = cli("study", "run", "t", "--max-time", "4s")  # a second run adds to the time the first spent
    assert again.code == 0 and "stopped early" in again.out
    assert len(optuna.load_study(study_name="t", storage=SQLITE).trials) <= 2 * n + 2
