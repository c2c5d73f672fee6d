"""tuner's per-trial SQL (tuner/sql.py) and the write-behind storage on it (tuner/buffered.py):
what they write must read back through Optuna's own storage exactly as Optuna would have
written it, on SQLite and on PostgreSQL."""

from __future__ import annotations

import copy
import inspect
import json
import math
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tuner import buffered as tuner_buffered
from tuner import sql
from tuner.buffered import BufferedStorage
from tuner.storage import open_storage

# tuner beats from its own thread, not inside Study.optimize, which Optuna warns of
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("pg_url")


def _study(url: str, direction: str = "maximize") -> tuple[optuna.Study, BufferedStorage, optuna.storages.RDBStorage]:
    rdb = open_storage(url, create=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bare = optuna.create_study(study_name="s", storage=rdb, direction=direction)
    buffered = BufferedStorage(bare._storage, rdb, flush_s=3600.0)
    return optuna.load_study(study_name="s", storage=buffered), buffered, rdb


def _fresh(url: str, trial_id: int) -> optuna.trial.FrozenTrial:
    """The trial as a new process reading the database sees it."""
    return optuna.storages.RDBStorage(url).get_trial(trial_id)


def _in_threads(target: Callable[[Any], None], args: list[Any]) -> None:
    """`target(a)` for each of `args`, each in its own thread, all at once; none may raise."""
    errors: list[BaseException] = []

    def run(a: Any) -> None:
        try:
            target(a)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _comparable(trial: optuna.trial.FrozenTrial) -> dict:
    return {
        "number": trial.number,
        "state": trial.state,
        "values": trial.values,
        "params": trial.params,
        "distributions": trial.distributions,
        "intermediate_values": trial.intermediate_values,
        "user_attrs": trial.user_attrs,
        "system_attrs": trial.system_attrs,
        "started": trial.datetime_start.replace(microsecond=0) if trial.datetime_start else None,
        "completed": trial.datetime_complete is not None,
    }


def test_a_new_trial_is_running_with_its_first_heartbeat_in_the_database(url):
    study, buffered, rdb = _study(url)
    trial_ids = [buffered.create_new_trial(study._study_id) for _ in range(3)]
    fresh = [_fresh(url, t) for t in trial_ids]
    assert [t.number for t in fresh] == [0, 1, 2]
    assert all(t.state == TrialState.RUNNING and t.datetime_start is not None for t in fresh)
    import sqlalchemy

    with rdb.engine.connect() as conn:
        beats = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats ORDER BY trial_id")).scalars().all()
    assert beats == trial_ids  # a worker killed before its first beat is still found stale


def test_a_finished_trial_reads_back_through_optuna_exactly_as_the_worker_saw_it(url):
    study, buffered, _ = _study(url)
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    trial.suggest_int("layers", 1, 3)
    trial.suggest_categorical("optimizer", ["adam", "sgd"])
    for step, value in enumerate([0.5, 0.75, math.inf]):
        trial.report(value, step)
    trial.set_user_attr("history", {"loss": [1.0, 0.5]})
    trial.set_user_attr("note", "first")
    buffered.flush(trial._trial_id)  # the configuration made durable before training
    trial.set_user_attr("note", "second")  # a key written again replaces its earlier value
    study._storage.set_trial_system_attr(trial._trial_id, "device", "cpu")
    study.tell(trial, 0.875)

    seen = buffered.get_trial(trial._trial_id)  # served from memory
    stored = _fresh(url, trial._trial_id)
    assert _comparable(seen) == _comparable(stored)
    assert stored.state == TrialState.COMPLETE and stored.value == 0.875
    assert stored.intermediate_values == {0: 0.5, 1: 0.75, 2: math.inf}
    assert stored.user_attrs == {"history": {"loss": [1.0, 0.5]}, "note": "second"}
    assert stored.distributions == {
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "layers": IntDistribution(1, 3),
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
    }


def test_writes_wait_in_memory_until_the_trial_is_flushed_or_ends(url):
    study, buffered, _ = _study(url)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.report(0.25, 0)
    assert _fresh(url, trial._trial_id).params == {}  # not yet in the database
    assert buffered.get_trial(trial._trial_id).params == {"x": trial.params["x"]}  # but seen here
    buffered.flush(trial._trial_id)
    assert _fresh(url, trial._trial_id).intermediate_values == {0: 0.25}
    study.tell(trial, state=TrialState.PRUNED)
    stored = _fresh(url, trial._trial_id)
    assert stored.state == TrialState.PRUNED and stored.datetime_complete is not None


def test_a_trial_failed_meanwhile_by_another_worker_is_left_as_it_is(url):
    study, buffered, _ = _study(url)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    # another worker found it stale and failed it
    optuna.storages.RDBStorage(url).set_trial_state_values(trial._trial_id, TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        buffered.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])
    stored = _fresh(url, trial._trial_id)
    assert stored.state == TrialState.FAIL and stored.params == {} and stored.values is None


def test_a_missing_trial_is_a_key_error(url):
    _, _, rdb = _study(url)
    with pytest.raises(KeyError):
        sql.write_trial(rdb, 10_000, sql.Pending())


def test_queued_trials_are_found_unless_just_counted_as_none(url):
    study, buffered, rdb = _study(url)
    waiting = (TrialState.WAITING,)
    assert buffered.get_all_trials(study._study_id, states=waiting) == []
    optuna.load_study(study_name="s", storage=rdb).enqueue_trial({"x": 0.5})
    assert [t.state for t in buffered.get_all_trials(study._study_id, states=waiting)] == [TrialState.WAITING]
    study.ask()  # takes it
    buffered.claim(study._study_id, lambda counts: True)  # counts none queued, and makes the next trial
    optuna.load_study(study_name="s", storage=rdb).enqueue_trial({"x": 0.5})  # (no tuner worker queues outside the lock)
    assert buffered.get_all_trials(study._study_id, states=waiting) == []  # the claim's count is trusted once
    assert len(buffered.get_all_trials(study._study_id, states=waiting)) == 1


def test_a_queued_trial_taken_by_this_worker_is_buffered_too(url):
    study, buffered, rdb = _study(url)
    optuna.load_study(study_name="s", storage=rdb).enqueue_trial({"x": 0.5}, user_attrs={"note": "queued", "retry_of": 3})
    trial = study.ask()  # takes the queued trial: WAITING -> RUNNING
    assert trial.suggest_float("x", 0.0, 1.0) == 0.5
    trial.set_user_attr("note", "ran")  # replaces what the queue wrote
    trial.report(0.1, 0)
    assert _fresh(url, trial._trial_id).intermediate_values == {}
    study.tell(trial, 0.5)
    stored = _fresh(url, trial._trial_id)
    assert stored.intermediate_values == {0: 0.1} and stored.value == 0.5
    assert stored.user_attrs == {"note": "ran", "retry_of": 3}


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_counts_and_progress_agree_with_optuna(url, direction):
    study, _, rdb = _study(url, direction)
    plain = optuna.load_study(study_name="s", storage=rdb)
    for value in (0.5, 0.9, -math.inf, 0.1):
        plain.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    plain.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={}, distributions={}))
    plain.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params={}, distributions={}))
    plain.enqueue_trial({})
    counts = sql.count_states(rdb, study._study_id)
    assert counts == {TrialState.COMPLETE: 4, TrialState.PRUNED: 1, TrialState.FAIL: 1, TrialState.WAITING: 1}
    n_finished, best = sql.progress(rdb, study._study_id, maximize=direction == "maximize")
    assert n_finished == 5
    assert best == (0.9 if direction == "maximize" else 0.1)  # infinities are not a best value
    # the best trial itself is Optuna's, infinities included (minimize: the -inf trial)
    assert study.best_trial.number == plain.best_trial.number == (1 if direction == "maximize" else 2)


def test_counts_stay_exact_as_trials_settle_out_of_order_and_a_study_is_made_again(url):
    # a claim recounts only the trials after the finished ones it has counted: check it against
    # a full count after every change, trials finishing out of order, queued ones taken later
    study, _, rdb = _study(url)
    plain = optuna.load_study(study_name="s", storage=rdb)

    def full_count(study_id: int) -> Counter:
        return Counter(t.state for t in optuna.storages.RDBStorage(url).get_all_trials(study_id, deepcopy=False))

    running = []
    for i in range(12):
        if i % 4 == 0:
            plain.enqueue_trial({})
        running.append(plain.ask())
        if i % 3 == 2:  # the oldest running trial ends: what settles is the finished run before it
            plain.tell(running.pop(0), 0.5)
        elif i % 3 == 1:
            plain.tell(running.pop(), state=TrialState.PRUNED)
        assert sql.count_states(rdb, study._study_id) == full_count(study._study_id), i
    for trial in running:
        plain.tell(trial, state=TrialState.FAIL)
    assert sql.count_states(rdb, study._study_id) == full_count(study._study_id)

    old_id = study._study_id
    optuna.delete_study(study_name="s", storage=rdb)
    again = optuna.create_study(study_name="s", storage=rdb)  # may get the same id, and trial ids
    for _ in range(15):  # more than the old study had: the old ids come round again
        again.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={}, distributions={}))
    assert sql.count_states(rdb, again._study_id) == {TrialState.PRUNED: 15} == full_count(again._study_id)
    if again._study_id != old_id:
        assert sql.count_states(rdb, old_id) == {}


def test_the_earliest_of_equally_good_trials_is_the_best(url):
    study, _, rdb = _study(url, "minimize")
    for value in (0.3, 0.2, 0.2, math.inf):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    assert study.best_trial.number == 1
    assert sql.best_trial_id(rdb, study._study_id, maximize=True) == study.trials[3]._trial_id  # +inf


def test_concurrent_workers_never_share_a_trial_number(url):
    _study(url)
    storages = [open_storage(url) for _ in range(3)]
    study_id = optuna.load_study(study_name="s", storage=storages[0])._study_id
    numbers: list[int] = []

    def create(rdb: optuna.storages.RDBStorage) -> None:
        for _ in range(15):
            numbers.append(sql.create_running(rdb, study_id, heartbeat=False)[1])

    _in_threads(create, storages)
    assert sorted(numbers) == list(range(45))


def test_a_study_that_is_gone_is_a_key_error(url):
    _, _, rdb = _study(url)
    with pytest.raises(KeyError):
        sql.create_running(rdb, 999, heartbeat=True)


def test_samplers_see_this_workers_trials_at_once_and_others_within_the_refresh(url):
    study, buffered, rdb = _study(url)
    buffered._refresh_s = 3600.0  # no re-read from the database in this test unless asked
    assert study.get_trials() == []  # the snapshot is taken
    trial = study.ask()
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    running = (TrialState.RUNNING,)
    assert study.get_trials(states=running)[0].intermediate_values == {}
    trial.report(0.25, 0)  # what pruners read at every epoch stays current with the running trial
    assert study.get_trials(deepcopy=False, states=running)[0].intermediate_values == {0: 0.25}
    study.tell(trial, 0.5)
    assert study.get_trials(states=running) == []
    optuna.load_study(study_name="s", storage=rdb).add_trial(optuna.trial.create_trial(value=0.7, params={}, distributions={}))
    seen = study.get_trials(states=(TrialState.COMPLETE,))
    assert [(t.number, t.value) for t in seen] == [(0, 0.5)]  # ours at once; the other worker's not yet
    buffered._refresh_s = 0.0
    assert [(t.number, t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))] == [(0, 0.5), (1, 0.7)]


def test_a_study_id_is_looked_up_once(url):
    study, buffered, rdb = _study(url)
    assert buffered.get_study_id_from_name("s") == study._study_id
    rdb.get_study_id_from_name = None  # any further lookup would fail
    buffered._inner.get_study_id_from_name = None
    assert buffered.get_study_id_from_name("s") == study._study_id
    with pytest.raises(KeyError):
        BufferedStorage(optuna.storages.RDBStorage(url), rdb).get_study_id_from_name("no such study")


def test_optunas_migration_scripts_are_read_once_a_process(tmp_path, monkeypatch):
    import alembic.script

    open_storage(f"sqlite:///{tmp_path / 'first.db'}", create=True)
    reads = []
    from_config = alembic.script.ScriptDirectory.from_config
    monkeypatch.setattr(alembic.script.ScriptDirectory, "from_config", lambda *a, **k: reads.append(1) or from_config(*a, **k))
    second = open_storage(f"sqlite:///{tmp_path / 'second.db'}", create=True)
    assert reads == []
    optuna.create_study(study_name="x", storage=second)  # and the new database is complete
    assert optuna.get_all_study_names(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'second.db'}")) == ["x"]


def test_a_trial_read_from_memory_is_the_readers_to_change(url):
    # Optuna's own in-memory storage's contract: the reader's containers are its own, and the
    # values in them are never changed in place, since a write replaces a value
    study, buffered, _ = _study(url)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.report(0.5, 0)
    trial.set_user_attr("history", {"loss": [1.0, 0.5]})
    before = buffered.get_trial(trial._trial_id)
    trial.set_user_attr("history", {"loss": [1.0, 0.5, 0.25]})  # written while running
    assert before.user_attrs["history"] == {"loss": [1.0, 0.5]}
    study.tell(trial, 0.5)
    read = buffered.get_trial(trial._trial_id)
    read.user_attrs["history"] = {"loss": []}
    read.intermediate_values[1] = 0.9
    read.params["y"] = 1.0
    read.distributions.clear()
    buffered.get_trial_user_attrs(trial._trial_id).clear()
    again = buffered.get_trial(trial._trial_id)
    assert again.user_attrs["history"] == {"loss": [1.0, 0.5, 0.25]}
    assert again.intermediate_values == {0: 0.5} and list(again.params) == ["x"] and list(again.distributions) == ["x"]
    assert _comparable(again) == _comparable(_fresh(url, trial._trial_id))


def test_postgresql_commits_without_waiting_for_the_log_flush_and_keeps_the_urls_options(pg_url):
    for url, search_path in ((pg_url, '"$user", public'), (pg_url + "?options=-c%20search_path%3Dpublic", "public")):
        storage = open_storage(url, create=True)
        with storage.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
            assert conn.exec_driver_sql("SHOW search_path").scalar() == search_path
        storage.engine.dispose()


def test_the_heartbeat_thread_and_the_trial_loop_share_sqlites_kept_connection(tmp_path):
    """Writes from two threads (the heartbeat's flushes, the loop's own) all land, none fails."""
    study, buffered, rdb = _study(f"sqlite:///{tmp_path / 'db.sqlite'}")
    trials = [study.ask() for _ in range(2)]

    def writer(trial: optuna.Trial) -> None:
        for step in range(200):
            trial.report(step / 200, step)
            buffered.flush(trial._trial_id)
            sql.count_states(rdb, study._study_id)

    _in_threads(writer, trials)
    for trial in trials:
        assert len(_fresh(f"sqlite:///{tmp_path / 'db.sqlite'}", trial._trial_id).intermediate_values) == 200


def test_a_claim_counts_and_creates_the_next_trial_in_one_step_and_ask_takes_it(url):
    study, buffered, rdb = _study(url)
    counts = buffered.claim(study._study_id, lambda c: False)  # the budget says wait: nothing made
    assert counts == {} and sql.count_states(rdb, study._study_id) == {}
    buffered.claim(study._study_id, lambda c: True)
    assert sql.count_states(rdb, study._study_id) == {TrialState.RUNNING: 1}  # made, with its heartbeat
    trial = study.ask()  # takes it, rather than making another
    assert trial.number == 0 and sql.count_states(rdb, study._study_id) == {TrialState.RUNNING: 1}
    study.tell(trial, 0.5)
    optuna.load_study(study_name="s", storage=rdb).enqueue_trial({"x": 0.25})
    counts = buffered.claim(study._study_id, lambda c: True)  # a queued trial comes first: nothing made
    assert counts == {TrialState.COMPLETE: 1, TrialState.WAITING: 1}
    queued = study.ask()
    assert queued.number == 1 and queued.suggest_float("x", 0.0, 1.0) == 0.25
    assert sql.count_states(rdb, study._study_id) == {TrialState.COMPLETE: 1, TrialState.RUNNING: 1}


def test_a_beat_the_database_holds_up_does_not_hold_up_the_trial(url, monkeypatch):
    """A beat carries the trial's due writes to a database that may take its connect timeout or
    longer to answer (a network partition). The trial trains on meanwhile: its reports are
    buffered apart, not blocked behind the beat. A beat that fails puts its writes back beneath
    the newer ones, and the trial's end writes them all, each key once with its newest value."""
    study, buffered, rdb = _study(url)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.report(0.1, 1)
    trial.set_user_attr("note", "first")
    buffered._flush_s = 0.0  # every write is due at the next beat
    inside, let_go = threading.Event(), threading.Event()
    real = tuner_buffered.beat
    outcome: list[str] = []

    def held_up(*args: Any) -> set[int]:
        inside.set()
        assert let_go.wait(30), "the trial's writes never came while the beat was held up"
        if outcome[0] == "fail":
            raise optuna.exceptions.StorageInternalError("a trial's write failed: OperationalError: the network is down")
        return real(*args)

    monkeypatch.setattr(tuner_buffered, "beat", held_up)
    for how in ("fail", "land"):
        outcome[:] = [how]
        inside.clear(), let_go.clear()
        beating = threading.Thread(target=_quietly, args=(buffered.record_heartbeats, [trial._trial_id]))
        beating.start()
        assert inside.wait(30)
        reporting = threading.Thread(target=lambda: (trial.report(0.2 if how == "fail" else 0.3, 2 if how == "fail" else 3), trial.set_user_attr("note", how), let_go.set()))
        reporting.start()
        reporting.join(30)
        assert let_go.is_set(), "the trial's report waited for the beat"
        beating.join(30)
        assert not beating.is_alive()
    from tuner.outage import OUTAGE

    OUTAGE.answered()  # (the failed beat began an outage; this test's database is fine)
    landed = _fresh(url, trial._trial_id)  # the second beat wrote what the first could not, and what came during it
    assert landed.intermediate_values == {1: 0.1, 2: 0.2} and landed.params.keys() == {"x"} and landed.user_attrs["note"] == "fail"
    study.tell(trial, 0.5)
    done = _fresh(url, trial._trial_id)
    assert done.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3} and done.user_attrs["note"] == "land" and done.state == TrialState.COMPLETE


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - a failed beat raises, as the heartbeat thread expects
        pass


def test_a_packs_beats_and_due_writes_are_one_transaction_and_skip_a_trial_failed_meanwhile(url, monkeypatch):
    """A worker's pack beats for all its trials at once: one transaction, whatever K, which
    carries the writes due a flush; a trial another worker has failed as lost meanwhile is neither
    written nor a reason to drop the others' beats."""
    import sqlalchemy

    study, buffered, rdb = _study(url)
    trials = [study.ask() for _ in range(4)]
    ids = [t._trial_id for t in trials]
    with rdb.engine.begin() as conn:  # silent a minute, and one that never beat
        old = "datetime('now', '-60 seconds')" if rdb.engine.dialect.name == "sqlite" else "now() - interval '60 seconds'"
        conn.execute(sqlalchemy.text(f"UPDATE trial_heartbeats SET heartbeat = {old}"))
        conn.execute(sqlalchemy.text("DELETE FROM trial_heartbeats WHERE trial_id = :t"), {"t": ids[3]})
    for i, trial in enumerate(trials):
        trial.report(0.1 * i, 1)  # buffered (flush_s is an hour)
    buffered._flush_s = 0.0  # now every write is due at the next beat
    assert sql.fail_running(rdb, ids[1], reason="lost its worker", kind="lost worker")
    transactions = []
    real = sql._transaction
    monkeypatch.setattr(sql, "_transaction", lambda r: transactions.append(1) or real(r))
    buffered.record_heartbeats(ids)
    assert len(transactions) == 1
    grace = rdb.grace_period
    assert [r.trial_id for r in sql.running_trials(rdb, study._study_id) if r.silent_past(grace)] == []
    assert rdb._get_stale_trial_ids(study._study_id) == []  # Optuna agrees: all three beat
    assert {i: _fresh(url, i).intermediate_values for i in ids} == {ids[0]: {1: 0.0}, ids[1]: {}, ids[2]: {1: 0.2}, ids[3]: {1: pytest.approx(0.3)}}
    assert _fresh(url, ids[1]).state == TrialState.FAIL
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # its tell says so, as Optuna's would
        study.tell(trials[1], 0.5)
    assert buffered.forget(ids[1]).state == TrialState.FAIL


def test_stale_trials_are_the_ones_optuna_finds_stale(url):
    study, buffered, rdb = _study(url)
    trials = [study.ask() for _ in range(3)]
    import sqlalchemy

    with rdb.engine.begin() as conn:  # the first trial's worker went silent a minute ago
        old = "datetime('now', '-60 seconds')" if rdb.engine.dialect.name == "sqlite" else "now() - interval '60 seconds'"
        conn.execute(sqlalchemy.text(f"UPDATE trial_heartbeats SET heartbeat = {old} WHERE trial_id = :t"), {"t": trials[0]._trial_id})
    optuna.storages.RDBStorage(url).record_heartbeat(trials[1]._trial_id)  # a beat written by Optuna itself
    study.tell(trials[2], 0.5)  # finished: never stale
    grace = rdb.grace_period
    assert grace is not None and grace < 60
    expected = [trials[0]._trial_id]
    assert [r.trial_id for r in sql.running_trials(rdb, study._study_id) if r.silent_past(grace)] == expected
    assert rdb._get_stale_trial_ids(study._study_id) == expected  # Optuna's own answer agrees


def test_a_running_trial_of_ours_once_returned_is_never_changed_afterwards(url):
    """Optuna's conformance suite checks it for trials written through a template; tuner's own
    running trials are kept in memory and changed at every write, so a reader's copy must not be."""
    study, buffered, rdb = _study(url)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    held = buffered.get_all_trials(study._study_id, deepcopy=False)
    running = buffered.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
    frozen = [copy.deepcopy(held), copy.deepcopy(running)]
    trial.report(0.5, 0)
    trial.set_user_attr("note", "later")
    trial.suggest_int("y", 1, 3)
    study._storage.set_trial_system_attr(trial._trial_id, "s", 1)
    assert [held, running] == frozen
    now = buffered.get_all_trials(study._study_id, deepcopy=False)  # a new read sees every write
    assert now[0].intermediate_values == {0: 0.5} and now[0].user_attrs == {"note": "later"} and set(now[0].params) == {"x", "y"}
    study.tell(trial, 0.5)
    assert [held, running] == frozen
    assert buffered.get_all_trials(study._study_id, deepcopy=False)[0].state == TrialState.COMPLETE


def test_read_trials_gives_what_optunas_own_read_gives(tmp_path, monkeypatch):
    """tuner's bulk read of a study's trials (tuner.sql.read_trials), trial for trial and field
    for field against Optuna's get_all_trials: every state, infinite and NaN values, several
    objectives, system attributes, queued trials; then its filters."""
    import math

    import optuna
    from optuna.trial import TrialState

    from tuner import sql
    from tuner.storage import open_storage

    import time

    monkeypatch.setenv("TZ", "America/New_York")  # Optuna stores UTC and gives local times: a zone that is not UTC tells
    time.tzset()
    storage = open_storage(f"sqlite:///{tmp_path / 'r.db'}", create=True)
    study = optuna.create_study(storage=storage, study_name="r", directions=["maximize", "minimize"])
    for i in range(6):
        trial = study.ask()
        x = trial.suggest_float("x", 1e-3, 1.0, log=True)
        trial.suggest_categorical("c", ["a", "b"])
        if i % 2:
            trial.suggest_int("n", 1, 8, step=1)
        storage.set_trial_intermediate_value(trial._trial_id, 0, float("nan") if i == 3 else x)  # Trial.report refuses several objectives
        storage.set_trial_intermediate_value(trial._trial_id, 1, float("inf") if i == 4 else -x)
        trial.set_user_attr("history", {"val": [x, x / 2]})
        storage.set_trial_system_attr(trial._trial_id, "constraints:size", [i - 3.0])
        if i == 2:
            study.tell(trial, state=TrialState.PRUNED)
        elif i == 5:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, [x, float("-inf") if i == 1 else i])
    study.ask()  # running
    study.enqueue_trial({"x": 0.5}, user_attrs={"retry_of": 1})
    want = storage.get_all_trials(study._study_id, deepcopy=False)
    got = sql.read_trials(storage, study._study_id)
    assert len(got) == len(want) == 8

    def same(a, b):
        fields = ("number", "state", "values", "datetime_start", "datetime_complete", "params", "distributions", "user_attrs", "system_attrs", "_trial_id")
        for f in fields:
            assert getattr(a, f) == getattr(b, f), (a.number, f, getattr(a, f), getattr(b, f))
        assert a.intermediate_values.keys() == b.intermediate_values.keys()
        for k, v in a.intermediate_values.items():
            assert v == b.intermediate_values[k] or (math.isnan(v) and math.isnan(b.intermediate_values[k]))

    for a, b in zip(got, want):
        same(a, b)
    by_state = sql.read_trials(storage, study._study_id, states=(TrialState.COMPLETE, TrialState.WAITING))
    assert [t.number for t in by_state] == [t.number for t in want if t.state in (TrialState.COMPLETE, TrialState.WAITING)]
    tail = sql.read_trials(storage, study._study_id, after_id=want[4]._trial_id, also_ids=[want[1]._trial_id])
    assert [t.number for t in tail] == [1, 5, 6, 7]
    picked = sql.read_trials(storage, study._study_id, numbers=[0, 3], user_keys=["missing"], intermediate=False)
    assert [t.number for t in picked] == [0, 3] and all(not t.user_attrs and not t.intermediate_values for t in picked)
    assert sql.last_numbers(storage, study._study_id, 3) == [5, 6, 7]
    assert sql.count_trials(storage, study._study_id, states=(TrialState.COMPLETE,)) == 4
    monkeypatch.delenv("TZ")
    time.tzset()


def test_read_trials_reads_one_snapshot_while_others_write(url, monkeypatch):
    """Between read_trials' first statement and the rest, another connection ends a running trial
    and starts a new one (as 4 workers on PostgreSQL do all the time): the read gives the study
    as it was at one moment, neither a RUNNING trial with values nor a new trial's rows without
    the trial (which failed a trial with KeyError before)."""
    _, _, rdb = _study(url)
    study = optuna.load_study(study_name="s", storage=rdb)
    running = study.ask()
    running.suggest_float("x", 0.0, 1.0)
    other = optuna.load_study(study_name="s", storage=optuna.storages.RDBStorage(url))
    real = sql._Cursor.execute
    written: list[int] = []

    def execute(self: sql._Cursor, statement: str, params: Any = ()) -> Any:
        out = real(self, statement, params)
        if statement.startswith("SELECT t.trial_id, t.number, t.state") and not written:
            out = out.fetchall()
            other.tell(running.number, 0.5)
            new = other.ask()
            new.suggest_float("x", 0.0, 1.0)
            new.set_user_attr("note", "new")
            written.append(new.number)

            class Rows:  # the rows already read, as the cursor would give them
                def fetchall(self) -> Any:
                    return out

            return Rows()
        return out

    monkeypatch.setattr(sql._Cursor, "execute", execute)
    got = sql.read_trials(rdb, study._study_id)
    monkeypatch.undo()
    assert written == [1]
    assert [(t.number, t.state, t.values, list(t.params)) for t in got] == [(0, TrialState.RUNNING, None, ["x"])]
    after = sql.read_trials(rdb, study._study_id)
    assert [(t.number, t.state, t.values, t.user_attrs) for t in after] == [(0, TrialState.COMPLETE, [0.5], {}), (1, TrialState.RUNNING, None, {"note": "new"})]


def test_a_write_that_fails_midway_leaves_nothing_and_says_why(url):
    """A trial's writes after its guard go to the server together (one round trip on PostgreSQL):
    one that the database refuses (a step written twice, as a second writer's would be) fails the
    whole transaction with the database's reason, and none of its rows are left."""
    _, _, rdb = _study(url)
    study = optuna.load_study(study_name="s", storage=rdb)
    trial = study.ask()
    rdb.set_trial_intermediate_value(trial._trial_id, 0, 0.5)
    again = sql.Pending(params={"x": (0.3, FloatDistribution(0.0, 1.0))}, intermediate={0: 0.7, 1: 0.8}, user_attrs={"note": "x"})
    with pytest.raises(optuna.exceptions.StorageInternalError, match="(?i)unique|duplicate"):
        sql.write_trial(rdb, trial._trial_id, again)
    fresh = _fresh(url, trial._trial_id)
    assert fresh.state == TrialState.RUNNING and fresh.params == {} and fresh.user_attrs == {} and fresh.intermediate_values == {0: 0.5}
    sql.write_trial(rdb, trial._trial_id, sql.Pending(params=again.params, intermediate={1: 0.8}))  # the connection is fine after
    assert _fresh(url, trial._trial_id).intermediate_values == {0: 0.5, 1: 0.8}


def test_the_dashboard_reads_trials_incrementally_as_optuna_would_read_them(url):
    """What `tuner dashboard` hands optuna-dashboard (which asks for every trial every few
    seconds): the same trials as Optuna's own read, field for field, as trials are added, end,
    and the study is deleted and made again; the finished ones read once."""
    from tuner.dashboard import DashboardView

    _, _, rdb = _study(url)
    study = optuna.load_study(study_name="s", storage=rdb)
    shown = DashboardView(rdb)

    def same() -> None:
        want = rdb.get_all_trials(study._study_id, deepcopy=False)
        got = shown.get_all_trials(study._study_id, deepcopy=False)
        assert [(t.number, t.state, t.values, t.params, t.user_attrs, t.intermediate_values, t._trial_id) for t in got] == [
            (t.number, t.state, t.values, t.params, t.user_attrs, t.intermediate_values, t._trial_id) for t in want
        ]
        complete = shown.get_all_trials(study._study_id, states=(TrialState.COMPLETE,))
        assert [t.number for t in complete] == [t.number for t in want if t.state == TrialState.COMPLETE]

    running = study.ask()
    running.suggest_float("x", 0.0, 1.0)
    study.tell(study.ask(), 0.25)
    same()
    running.report(0.5, 0)
    running.set_user_attr("note", "later")
    study.tell(running, 0.75)
    study.ask()
    same()
    reads: list[dict] = []
    real = sql.read_trials
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sql, "read_trials", lambda *a, **k: reads.append(k) or real(*a, **k))
        same()
    assert reads[0]["after_id"] == 3 and reads[0]["also_ids"] == {3}  # the two finished are not read again
    optuna.delete_study(study_name="s", storage=rdb)
    study = optuna.create_study(study_name="s", storage=rdb)  # SQLite may give it the same id
    study.tell(study.ask(), 1.0)
    same()


def _api(app: Any, path: str) -> dict[str, Any]:
    """One GET of optuna-dashboard's WSGI app, as its page sends it."""
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"PATH_INFO": path.partition("?")[0], "QUERY_STRING": path.partition("?")[2]}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:300])
    return json.loads(body)


def test_a_large_study_is_shown_as_its_latest_trials_and_its_best_before_them(url):
    """`tuner dashboard --window N`: a study of more than N trials reaches optuna-dashboard as its
    last N trials, those after them, and the best before them (of all, and of the feasible: one
    metric, then the Pareto front of two). The page's best trial and front are the whole study's,
    its incremental asks (`after=`, a count of the trials it holds) stay right as trials are added
    and end, and the server says once which trials the page shows."""
    import optuna_dashboard

    from tuner.dashboard import DEFAULT_WINDOW, DashboardView
    from tuner.cli import dashboard as dashboard_command

    assert inspect.signature(dashboard_command).parameters["window"].default == DEFAULT_WINDOW
    rdb = open_storage(url, create=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    one = optuna.create_study(study_name="one", storage=rdb, direction="maximize")
    values = [0.1 * (i % 7) for i in range(30)]
    values[3], values[5] = 5.0, 4.0  # trial 3 is the best but infeasible; 5 is the best feasible
    for i, v in enumerate(values):
        t = one.ask()
        t.set_user_attr("i", i)
        if i == 3:
            t.set_constraint("params<=10", 1.0)  # missed
        one.tell(t, v)
    running = one.ask()  # in the window, unfinished
    two = optuna.create_study(study_name="two", storage=rdb, directions=["maximize", "minimize"])
    rng = __import__("random").Random(0)
    for _ in range(40):
        two.tell(two.ask(), [rng.random(), rng.random()])
    said: list[str] = []
    view = DashboardView(rdb, window=8, say=said.append)
    app = optuna_dashboard.wsgi(view)

    shown = _api(app, f"/api/studies/{one._study_id}")
    numbers = [t["number"] for t in shown["trials"]]
    assert numbers == [3, 5, *range(23, 31)]  # the best, the best feasible, then the last 8 (trial 30 running)
    assert [t["number"] for t in shown["best_trials"]] == [5]  # Optuna's best: the best feasible
    assert len(said) == 1 and "'one'" in said[0] and "#23" in said[0] and "of 31" in said[0] and "--window 0" in said[0]
    held = sum(1 for t in shown["trials"] if t["state"] != "Running")  # the page holds the finished ones before the first unfinished
    assert held == len(numbers) - 1
    one.tell(running, 9.0)
    one.tell(one.ask(), 0.0)
    app._inmemory_cache._trials_last_fetched_at.clear()  # its cache lives 2 s: the page's next poll, now
    again = _api(app, f"/api/studies/{one._study_id}?after={held}")
    assert [(t["number"], t["state"]) for t in again["trials"]] == [(30, "Complete"), (31, "Complete")]
    assert [t["number"] for t in again["best_trials"]] == [30]
    assert len(said) == 1  # said once a study

    shown = _api(app, f"/api/studies/{two._study_id}")
    assert [t["number"] for t in shown["trials"]][-8:] == list(range(32, 40))
    kept = [t["number"] for t in shown["trials"]][:-8]
    old = [t for t in two.trials if t.number < 32]
    front = {t.number for t in optuna.study._multi_objective._get_pareto_front_trials_by_trials(old, two.directions)}
    assert set(kept) == front and kept == sorted(kept)
    assert {t["number"] for t in shown["best_trials"]} == {t.number for t in two.best_trials}  # the whole study's front

    unwindowed = DashboardView(rdb, say=said.append)  # --window 0
    assert [t.number for t in unwindowed.get_all_trials(one._study_id)] == list(range(32)) and len(said) == 2


def test_a_front_read_from_the_values_alone_is_optunas(url):
    """`study best` and `study show` of a study of several metrics: its front, read from the trials'
    values alone (reading them whole took 80 s and 3.5 GB at 100,000), is Optuna's best_trials:
    complete and feasible trials only, every tie listed, an infinity ranked; the front's trials
    are read whole, as Optuna reads them."""
    import random

    from tuner.metrics import feasible
    from tuner.study.results import _front_points, front

    rdb = open_storage(url, create=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="m", storage=rdb, directions=["maximize", "minimize"])
    rng = random.Random(1)
    for i in range(80):
        t = study.ask()
        t.suggest_int("width", 1, 9)
        if i % 10 == 3:
            t.set_constraint("params<=1", 2.0)  # missed
        if i % 17 == 5:
            study.tell(t, state=TrialState.PRUNED)
        elif i % 19 == 7:
            study.tell(t, state=TrialState.FAIL)
        else:
            study.tell(t, [rng.choice([0.5, 0.7, 0.9]), rng.choice([10.0, 20.0, math.inf])])  # ties, and an infinity
    beyond = study.ask()
    beyond.set_constraint("params<=1", 2.0)
    study.tell(beyond, [1.0, 1.0])  # better than all, but infeasible
    want = sorted(study.best_trials, key=lambda t: (-t.values[0], t.number))
    got = front(study)
    assert len(want) >= 3 and len({tuple(t.values) for t in want}) < len(want)  # the case: ties on the front
    assert [(t.number, t.values, t.params, t.user_attrs, t.system_attrs) for t in got] == [(t.number, t.values, t.params, t.user_attrs, t.system_attrs) for t in want]
    _, met = _front_points(study)
    assert sorted(map(tuple, met)) == sorted(tuple(t.values) for t in study.get_trials(states=(TrialState.COMPLETE,)) if feasible(t))


def test_trial_times_are_stored_as_optuna_stores_them_in_any_time_zone(url, monkeypatch):
    """Optuna 5 stores naive UTC and hands out local times. tuner's own writes (a claim, an end, a
    trial failed as lost) store the same, so that in New York a trial does not start five hours
    early for Optuna, the dashboard and the lost-trial judge."""
    import time
    from datetime import datetime, timedelta

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        _, _, rdb = _study(url)
        study = optuna.load_study(study_name="s", storage=rdb)
        trial_id, _, started = sql.create_running(rdb, study._study_id, heartbeat=False)
        now = datetime.now()
        read = _fresh(url, trial_id)
        assert abs(read.datetime_start - now) < timedelta(seconds=30) and abs(read.datetime_start - started) < timedelta(seconds=1)
        (running,) = sql.running_trials(rdb, study._study_id)
        assert running.silent_s is not None and running.silent_s < 30  # no beat yet: silent since its start, seconds, not hours
        end = datetime.now()
        sql.write_trial(rdb, trial_id, sql.Pending(), sql.Final(TrialState.COMPLETE, [0.5], end))
        assert abs(_fresh(url, trial_id).datetime_complete - end) < timedelta(seconds=1)
        lost, _, _ = sql.create_running(rdb, study._study_id, heartbeat=False)
        assert sql.fail_running(rdb, lost, reason="lost", kind="lost")
        assert abs(_fresh(url, lost).datetime_complete - datetime.now()) < timedelta(seconds=30)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
