"""Who runs a trial and whether it is alive (tuner/heartbeat.py), and what a study does with a
trial whose worker is gone: every way a trial becomes RUNNING leaves it detectable, lost trials
are failed and queued again with their reason, and `release` does the same by hand. Real SQLite
and PostgreSQL, real processes that really die."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tuner import sql
from tuner.errors import SpecError
from tuner.heartbeat import describe, process_gone, worker_identity
from tuner.spec import StudySpec
from tuner.storage import open_storage
from tuner.study import create_study, fail_lost, open_study, release_trials, running_trials, study_summary

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, project: Path) -> str:
    if request.param == "sqlite":
        return "sqlite:///studies/tuner.db"
    return request.getfixturevalue("pg_url")


def _dead_identity() -> dict:
    """The identity of a worker process of this host that has exited (and been reaped)."""
    code = "import json, tuner.heartbeat as h; print(json.dumps(h.worker_identity()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json

    return json.loads(out)


def _age(rdb: optuna.storages.RDBStorage, trial_id: int, *, seconds: int, heartbeat: bool = True) -> None:
    """Make a trial look silent for `seconds`: its last beat (or, with none, its start) that old."""
    sqlite = rdb.engine.dialect.name == "sqlite"
    with rdb.engine.begin() as conn:
        if heartbeat:
            old = f"datetime('now', '-{seconds} seconds')" if sqlite else f"now() - interval '{seconds} seconds'"
            conn.execute(sqlalchemy.text(f"UPDATE trial_heartbeats SET heartbeat = {old} WHERE trial_id = :t"), {"t": trial_id})
        else:
            import datetime

            start = datetime.datetime.now() - datetime.timedelta(seconds=seconds)
            conn.execute(sqlalchemy.text("UPDATE trials SET datetime_start = :s WHERE trial_id = :t"), {"s": start, "t": trial_id})


def _beats(rdb: optuna.storages.RDBStorage) -> list[int]:
    with rdb.engine.connect() as conn:
        return list(conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats ORDER BY trial_id")).scalars())


# -- identity ------------------------------------------------------------------------------------


def test_this_process_is_alive_and_an_exited_one_is_gone():
    me = worker_identity()
    assert me["host"] == socket.gethostname() and me["pid"] == os.getpid()
    assert process_gone(me) is False
    assert process_gone(_dead_identity()) is True
    assert describe(me) == f"{socket.gethostname()}:{os.getpid()}"


def _identity_of(pid: int) -> dict:
    """What a worker with this pid, started when it was, would have stored."""
    from tuner.heartbeat import _proc_start

    namespace = worker_identity()["proc"].rsplit("/", 1)[0]
    return {**worker_identity(), "pid": pid, "proc": f"{namespace}/{_proc_start(pid)}"}


def test_a_reused_pid_or_a_killed_unreaped_child_counts_as_gone():
    reused = {**worker_identity(), "proc": worker_identity()["proc"].rsplit("/", 1)[0] + "/1"}  # our pid, another start
    assert process_gone(reused) is True
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = _identity_of(child.pid)
        assert process_gone(theirs) is False
        child.kill()
        deadline = time.monotonic() + 10
        while process_gone(theirs) is False and time.monotonic() < deadline:
            time.sleep(0.02)  # killed, not yet waited for: a zombie
        assert process_gone(theirs) is True
    finally:
        child.kill()
        child.wait()


def test_another_host_or_namespace_or_no_identity_cannot_be_judged():
    me = worker_identity()
    assert process_gone({**me, "host": "elsewhere"}) is None
    assert process_gone({**me, "proc": "another-boot/1/2/3"}) is None
    assert process_gone(None) is None and process_gone({"host": me["host"], "pid": 1}) is None


def test_a_slurm_array_task_names_itself_in_the_worker_identity(monkeypatch):
    from tuner.heartbeat import describe, worker_identity

    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    assert "slurm" not in worker_identity()
    monkeypatch.setenv("SLURM_JOB_ID", "815")  # a plain job, as squeue names it
    assert worker_identity()["slurm"] == "815"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "812")  # task 2 of array 812 (its own job id is 815)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    me = worker_identity()
    assert me["slurm"] == "812_2" and describe(me) == f"{me['host']}:{me['pid']} (Slurm 812_2)"


# -- every way a trial becomes RUNNING is detectable -------------------------------------------


def _study(url: str, **kw):
    spec = StudySpec(**{"name": "s", "space": "tiny", "workload": "digits", "pruner": "none", "trials": 4, **kw})
    return create_study(spec, url)


def test_a_new_and_a_queued_trial_start_with_their_heartbeat_and_worker(url):
    loaded = _study(url)
    rdb = open_storage(url)
    loaded.study.enqueue_trial({"lr": 0.01})
    queued = loaded.study.ask()  # WAITING -> RUNNING
    new = loaded.study.ask()  # created RUNNING
    assert queued.number == 0 and new.number == 1
    assert _beats(rdb) == [queued._trial_id, new._trial_id]  # a kill right now leaves both detectable
    fresh = optuna.storages.RDBStorage(url)
    for t in (queued, new):
        assert fresh.get_trial(t._trial_id).user_attrs["worker"] == worker_identity()
    assert [r.number for r in sql.running_trials(rdb, loaded.study._study_id)] == [0, 1]


def test_a_queued_trial_taken_by_another_worker_first_is_not_taken_again(url):
    loaded = _study(url)
    loaded.study.enqueue_trial({"lr": 0.01})
    rdb = open_storage(url)
    waiting = loaded.study.get_trials(states=(TrialState.WAITING,))[0]
    taken = sql.start_queued(rdb, waiting._trial_id, heartbeat=True, user_attrs={"worker": {"host": "a", "pid": 1}})
    assert taken == loaded.study._study_id
    assert sql.start_queued(rdb, waiting._trial_id, heartbeat=True, user_attrs={"worker": {"host": "b", "pid": 2}}) is None
    assert optuna.storages.RDBStorage(url).get_trial(waiting._trial_id).user_attrs["worker"] == {"host": "a", "pid": 1}
    assert sql.fail_running(rdb, waiting._trial_id, reason="x", kind="released")
    assert not sql.fail_running(rdb, waiting._trial_id, reason="y", kind="released")  # failed once only
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        sql.start_queued(rdb, waiting._trial_id, heartbeat=True, user_attrs={})


def test_a_trial_that_never_beat_turns_stale_by_its_start(url):
    """What Optuna's own stale query (a join on the heartbeats) can never find: a trial made
    RUNNING by a plain Optuna client, or by an older tuner's queued claim, whose worker died
    before its first beat."""
    loaded = _study(url)
    rdb = open_storage(url)
    plain = optuna.load_study(study_name="s", storage=rdb)  # Optuna's own storage: no beat on ask
    plain.enqueue_trial({"lr": 0.01})
    trial = plain.ask()
    assert _beats(rdb) == []
    assert fail_lost(loaded.study) == []  # just started: not yet
    _age(rdb, trial._trial_id, seconds=120, heartbeat=False)
    assert [r.trial_id for r in sql.running_trials(rdb, loaded.study._study_id) if r.silent_past(30)] == [trial._trial_id]
    assert rdb._get_stale_trial_ids(loaded.study._study_id) == []  # Optuna's query misses it
    assert fail_lost(loaded.study) == [trial.number]
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_reason"].startswith("lost its worker: no heartbeat for 12")
    assert trials[1].state == TrialState.WAITING and trials[1].user_attrs["retry_of"] == 0
    assert trials[1].system_attrs["fixed_params"] == {"lr": 0.01}


def test_a_silent_trial_is_failed_and_queued_once_with_its_reason(url):
    loaded = _study(url)
    rdb = open_storage(url)
    trial = loaded.study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    loaded.study._storage.flush(trial._trial_id)
    _age(rdb, trial._trial_id, seconds=60)
    other = open_study("s", url)  # another worker looks too: the trial is failed and queued once
    assert fail_lost(other.study) == [0]
    assert fail_lost(loaded.study) == []
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == {} and trials[1].system_attrs["fixed_params"] == trials[0].params
    # 60 s aged, plus however long the two looks took on a busy machine
    assert re.search(r"no heartbeat for 6\ds \(grace 30s\)", trials[0].user_attrs["fail_reason"]), trials[0].user_attrs["fail_reason"]
    assert trials[0].user_attrs["fail_kind"] == "lost worker"


def test_a_worker_killed_between_queuing_its_interrupted_trial_s_copy_and_failing_it_leaves_one_copy(url):
    """A signal's close queues the copy first, then fails the trial: a kill between the two
    leaves the trial running with its copy queued, and the lost check fails it without a second."""
    from tuner.study import requeue

    loaded = _study(url)
    rdb = open_storage(url)
    trial = loaded.study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    loaded.study._storage.flush(trial._trial_id)
    assert requeue(loaded.study, loaded.study._storage.get_trial(trial._trial_id), "interrupted by SIGTERM")
    _age(rdb, trial._trial_id, seconds=120)  # then killed: the trial turns stale
    assert fail_lost(open_study("s", url).study) == [0]
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [(t.state, t.user_attrs.get("retry_of")) for t in trials] == [(TrialState.FAIL, None), (TrialState.WAITING, 0)]


@pytest.mark.parametrize("retries", [0, 2])
def test_a_trial_lost_again_and_again_is_queued_at_most_retries_times(url, retries):
    """Each copy of a lost trial counts its retries from the first: after `retries` copies, a
    trial that keeps losing its worker is failed and not queued again."""
    loaded = _study(url, retries=retries)
    rdb = open_storage(url)
    loaded.study.enqueue_trial({"lr": 0.01})
    for attempt in range(retries + 1):
        trial = loaded.study.ask()  # the queued point, or its latest copy
        assert trial.params == {} and trial.number == attempt
        loaded.study._storage.flush(trial._trial_id)
        _age(rdb, trial._trial_id, seconds=120)
        assert fail_lost(loaded.study) == [attempt]
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * (retries + 1), [(t.number, t.state, t.user_attrs) for t in trials]
    assert [t.user_attrs.get("retry_count", 0) for t in trials] == list(range(retries + 1))
    assert all(t.user_attrs.get("retry_root", 0) == 0 for t in trials)


def test_a_trial_whose_worker_process_is_gone_is_freed_at_once(url):
    loaded = _study(url)
    rdb = open_storage(url)
    trial = loaded.study.ask()
    with rdb.engine.begin() as conn:  # claimed by a worker of this host that has since exited
        conn.execute(
            sqlalchemy.text("UPDATE trial_user_attributes SET value_json = :v WHERE trial_id = :t AND key = 'worker'"),
            {"v": __import__("json").dumps(_dead_identity()), "t": trial._trial_id},
        )
    [shown] = running_trials(loaded.study)
    assert shown["worker_gone"] is True and shown["lost_in_s"] == 0.0 and shown["heartbeat_age_s"] < 5
    assert fail_lost(loaded.study) == [0]
    assert "is gone" in optuna.load_study(study_name="s", storage=url).trials[0].user_attrs["fail_reason"]


def test_show_lists_running_trials_with_worker_and_heartbeat_age(url):
    loaded = _study(url)
    rdb = open_storage(url)
    trial = loaded.study.ask()
    _age(rdb, trial._trial_id, seconds=12)
    [r] = study_summary(open_study("s", url), url)["running"]
    assert r["number"] == 0 and r["worker"] == describe(worker_identity()) and r["worker_gone"] is False
    assert 11 <= r["heartbeat_age_s"] <= 20 and 10 <= r["lost_in_s"] <= 19  # grace 30 s


def test_show_names_the_slurm_array_task_of_each_running_trial(url, cli, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "812")  # as `tuner launch slurm`'s task 2 would claim it
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    loaded = _study(url)
    loaded.study.ask()
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    doc = json.loads(cli("study", "show", "s", "--storage", url, "--format", "json").out)
    [r] = doc["running"]
    assert r["slurm"] == "812_2" and r["worker"].endswith(f":{os.getpid()} (Slurm 812_2)")
    table = cli("study", "show", "s", "--storage", url).out
    assert f"running: trial 0 on {socket.gethostname()}:{os.getpid()} (Slurm 812_2), last beat" in table


# -- release by hand -----------------------------------------------------------------------------


def test_release_refuses_what_it_should_not_touch_and_writes_nothing(url):
    loaded = _study(url)
    alive = loaded.study.ask()  # run by this very process
    finished = loaded.study.ask()
    loaded.study.tell(finished, 0.5)
    before = [(t.state, dict(t.user_attrs)) for t in optuna.load_study(study_name="s", storage=url).trials]
    with pytest.raises(SpecError, match=r"trial 1 of study 's' is not running \(running trials: 0\); nothing released"):
        release_trials(loaded, numbers=[1])
    with pytest.raises(SpecError, match=rf"trial 0 is run by .*:{os.getpid()}, which is alive on this host; stop that process \(kill {os.getpid()}\) or pass --force"):
        release_trials(loaded, numbers=[0])
    assert release_trials(loaded, stale=True) == []  # beating, alive: not stale
    assert [(t.state, dict(t.user_attrs)) for t in optuna.load_study(study_name="s", storage=url).trials] == before
    [done] = release_trials(loaded, numbers=[alive.number], force=True)
    assert done["number"] == 0 and done["queued_again"] is True
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_reason"].startswith("released by hand (tuner study release)")
    assert trials[0].user_attrs["fail_kind"] == "released"
    assert trials[2].state == TrialState.WAITING and "released by hand" in trials[2].user_attrs["retry_reason"]


def test_release_stale_takes_silent_and_gone_workers_trials(url, monkeypatch):
    monkeypatch.setenv("TUNER_HEARTBEAT", "20")  # stale past 40 s, lost past the 60 s grace: 15 s of slack for a busy machine
    loaded = _study(url)
    rdb = open_storage(url)
    beating, silent = loaded.study.ask(), loaded.study.ask()
    aged = time.monotonic()
    _age(rdb, silent._trial_id, seconds=45)  # missed two beats, not yet past the grace
    assert fail_lost(loaded.study) == []
    released = release_trials(loaded, stale=True)
    slack = time.monotonic() - aged
    assert [r["number"] for r in released] == [silent.number]
    said = int(re.search(r"silent (\d+)s", released[0]["reason"]).group(1))
    assert 45 <= said <= 45 + slack + 1, (released[0]["reason"], slack)
    states = [t.state for t in optuna.load_study(study_name="s", storage=url).trials]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]
    del beating


# -- the commands a person uses ------------------------------------------------------------------


def test_release_and_show_from_the_command_line(project, cli):
    assert cli("study", "create", "s", "--space", "tiny", "--trials", "4").code == 0
    loaded = open_study("s", "sqlite:///studies/tuner.db")
    trial = loaded.study.ask()
    with loaded.study._storage._rdb.engine.begin() as conn:  # its worker has since exited
        conn.execute(
            sqlalchemy.text("UPDATE trial_user_attributes SET value_json = :v WHERE trial_id = :t AND key = 'worker'"),
            {"v": __import__("json").dumps(_dead_identity()), "t": trial._trial_id},
        )
    shown = cli("study", "show", "s")
    assert shown.code == 0 and "running: trial 0 on " in shown.out and "its process is gone" in shown.out
    for args, message in (([], "say which trials to release: --trial N (repeatable) or --stale, not both"),
                          (["--trial", "0", "--stale"], "not both"),
                          (["--trial", "3"], "trial 3 of study 's' is not running (running trials: 0); nothing released")):
        bad = cli("study", "release", "s", *args)
        assert bad.code == 1 and message in bad.err and "Traceback" not in bad.err and len(bad.err.strip().splitlines()) == 1
    released = cli("study", "release", "s", "--stale")
    assert released.code == 0 and "released trial 0: failed (released by hand (tuner study release): worker" in released.out
    assert "queued again" in released.out
    assert "nothing released" in cli("study", "release", "s", "--stale").out
    shown = cli("study", "show", "s", "--format", "json")
    assert '"running": []' in shown.out
