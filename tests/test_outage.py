"""A database outage (tuner.outage): what counts as one, waiting it out and saying so, writes that
may have landed written again without duplicates, and workers riding out a real PostgreSQL server
restart and a PgBouncer restart (slow: a private server of the test's own is stopped and started)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tuner import sql
from tuner.outage import DatabaseGone, Lost, Outage, retry_for_from, transient
from tuner.errors import SpecError
from tuner.storage import open_storage

TUNER = str(Path(sys.executable).with_name("tuner"))


def _refused() -> BaseException:
    """The error a worker gets while its PostgreSQL server is down: a real one, from a closed port."""
    import psycopg

    from tests.conftest import _free_port

    try:
        psycopg.connect(f"host=127.0.0.1 port={_free_port()} user=postgres connect_timeout=2")
    except psycopg.OperationalError as e:
        return e
    raise AssertionError("a closed port answered")


def test_lost_connections_locks_and_full_disks_are_outages_other_errors_are_not(tmp_path):
    assert "refused" in transient(_refused()) or "connect" in transient(_refused())
    # as tuner's own statements raise it (tuner.sql): Optuna's error, raised from the driver's
    try:
        raise optuna.exceptions.StorageInternalError("a trial's write failed") from _refused()
    except optuna.exceptions.StorageInternalError as e:
        assert transient(e)
    db = tmp_path / "x.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)")
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        sqlite3.connect(db, timeout=0.05).execute("INSERT INTO t VALUES (1)")
    except sqlite3.OperationalError as e:
        assert "locked" in transient(e)
    holder.rollback()
    try:
        sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("INSERT INTO t VALUES (1)")
    except sqlite3.OperationalError as e:
        assert transient(e) == "the database file or its folder is read-only"
    for e in (sqlite3.OperationalError("no such table: trials"), sqlite3.IntegrityError("UNIQUE constraint failed"), ValueError("bad")):
        assert transient(e) is None, e
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    with pytest.raises(sqlalchemy.exc.OperationalError) as caught, engine.connect() as conn:
        conn.exec_driver_sql("SELEC 1")
    assert transient(caught.value) is None  # a bad statement is not waited out


def test_an_outage_is_said_once_waited_out_and_given_up_after_its_time():
    said: list[str] = []
    outage = Outage(30, say=said.append)
    tries = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) < 4:
            raise optuna.exceptions.StorageInternalError("write failed") from _refused()
        return "done"

    assert outage.call(flaky) == "done" and len(tries) == 4
    assert len(said) == 2 and said[0].startswith("tuner: lost the database (") and "retrying for up to 30s (--db-retry-for)" in said[0]
    assert said[1].startswith("tuner: the database is back after ")
    assert outage.settling(5.0) and not outage.settling(0.0)
    # a bad statement is not an outage: raised at once, nothing said
    with pytest.raises(ValueError):
        outage.call(lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert len(said) == 2
    # inside a block that must be retried whole, the block is told
    with outage.atomic(), pytest.raises(Lost):
        outage.call(lambda: (_ for _ in ()).throw(_refused()))
    outage.answered()
    short = Outage(0.3, say=said.append)
    started = time.monotonic()
    with pytest.raises(DatabaseGone) as gone:
        short.call(lambda: (_ for _ in ()).throw(_refused()))
    assert 0.3 <= time.monotonic() - started < 3
    assert str(gone.value).startswith("the database did not answer for ") and "(--db-retry-for 0.3s)" in str(gone.value)
    assert gone.value.exit_code == 75


def test_db_retry_for_reads_durations_and_names_a_bad_one(monkeypatch):
    monkeypatch.delenv("TUNER_DB_RETRY_FOR", raising=False)
    assert retry_for_from(None) == 600 and retry_for_from("90s") == 90 and retry_for_from("2m") == 120
    monkeypatch.setenv("TUNER_DB_RETRY_FOR", "1h")
    assert retry_for_from(None) == 3600
    with pytest.raises(SpecError, match="--db-retry-for 'soon' is not a duration"):
        retry_for_from("soon")
    monkeypatch.setenv("TUNER_DB_RETRY_FOR", "0")
    with pytest.raises(SpecError, match="TUNER_DB_RETRY_FOR must be above 0"):
        retry_for_from(None)


def test_writes_whose_commit_is_unknown_are_replaced_and_an_end_that_landed_is_recognized(tmp_path):
    """A transaction cut with its connection may have committed: the same writes again must not
    duplicate a row (the tables' unique keys would refuse it, and the trial could never end), and
    the trial's end, tried again, must find its own end rather than "already finished"."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    storage = open_storage(url, create=True)
    study = optuna.create_study(storage=storage, study_name="s")
    trial_id, _, _ = sql.create_running(storage, study._study_id, heartbeat=True)
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    pending = sql.Pending(params={"x": (0.5, dist)}, intermediate={0: 0.1}, user_attrs={"a": 1})
    sql.write_trial(storage, trial_id, pending)  # landed, though its answer was "lost"
    again = sql.Pending(params={"x": (0.5, dist)}, intermediate={0: 0.1, 1: 0.2}, user_attrs={"a": 2}, uncertain=True)
    plain = sql.Pending(params={"x": (0.5, dist)}, intermediate={0: 0.1})
    with pytest.raises(optuna.exceptions.StorageInternalError):
        sql.write_trial(storage, trial_id, plain)  # the bug this guards against: a duplicate row
    sql.write_trial(storage, trial_id, again)
    final = sql.Final(TrialState.COMPLETE, [0.9], datetime.now())
    sql.write_trial(storage, trial_id, sql.Pending(), final)
    sql.write_trial(storage, trial_id, sql.Pending(uncertain=True), final)  # tried again: recognized, not an error
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        sql.write_trial(storage, trial_id, sql.Pending(uncertain=True), sql.Final(TrialState.COMPLETE, [0.9], datetime.now()))
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == 0.9
    assert trial.params == {"x": 0.5} and trial.intermediate_values == {0: 0.1, 1: 0.2} and trial.user_attrs["a"] == 2


def test_a_claim_whose_answer_was_lost_is_found_by_its_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    storage = open_storage(url, create=True)
    study = optuna.create_study(storage=storage, study_name="s")
    me, other = {"host": "h", "pid": 1}, {"host": "h", "pid": 2}
    mine, _, _ = sql.create_running(storage, study._study_id, heartbeat=True, user_attrs={"worker": me})
    sql.create_running(storage, study._study_id, heartbeat=True, user_attrs={"worker": other})
    assert sql.claimed_by(storage, study._study_id, me) == [mine]


def test_a_pooled_connection_the_server_ended_is_replaced_without_a_round_trip(pg_url):
    """The server ends a worker's idle pooled connection (as a restart or an idle timeout does):
    the next transaction gets a new connection, no error, no outage, though the pool sends no
    pre-ping (a query, one round trip a transaction) before handing a connection out."""
    from tuner.outage import OUTAGE

    storage = open_storage(pg_url, create=True)
    study = optuna.create_study(storage=storage, study_name="s")
    assert not storage.engine.pool._pre_ping
    sql.create_running(storage, study._study_id, heartbeat=True)
    with storage.engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    admin = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")  # each look a fresh view of the backends
    with admin.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar()
        deadline = time.monotonic() + 30  # the backend is gone once it has said so on the socket
        while conn.exec_driver_sql(f"SELECT 1 FROM pg_stat_activity WHERE pid = {pid}").first() is not None:
            assert time.monotonic() < deadline, "the terminated backend stayed"
            time.sleep(0.05)
    admin.dispose()
    began = OUTAGE.began
    assert sql.count_states(storage, study._study_id) == {TrialState.RUNNING: 1}
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
    assert OUTAGE.began is began
    storage.engine.dispose()


def test_a_connection_past_descriptor_1024_is_kept(pg_url):
    """A worker with many files open (datasets, logs, a pack's loaders) gets connections whose
    descriptor is past 1,024, which select() refuses: the socket check still keeps them."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    import gc

    pipes: list[tuple[int, int]] = []

    def fill() -> None:
        """Take every free descriptor up to 1,030: a new one is the lowest free. Earlier tests'
        garbage is collected first, or its sockets, closed later, would free low ones again."""
        gc.collect()
        pipes.append(os.pipe())
        while pipes[-1][0] <= 1030:
            pipes.append(os.pipe())

    try:
        fill()
        storage = open_storage(pg_url, create=True)
        study = optuna.create_study(storage=storage, study_name="s")
        sql.create_running(storage, study._study_id, heartbeat=True)
        storage.engine.dispose()
        fill()  # what opening the storage freed (its set-up connections) is taken too
        with storage.engine.connect() as conn:
            assert conn.connection.dbapi_connection.pgconn.socket > 1024
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        for _ in range(3):
            assert sql.count_states(storage, study._study_id) == {TrialState.RUNNING: 1}
        with storage.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid  # the same connection, kept
        storage.engine.dispose()
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


SPACE = """\
params:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  optimizer: {type: categorical, choices: [adam, nesterov]}
  momentum: {fixed: 0.9, when: {optimizer: [nesterov]}}
  hidden_units: {type: categorical, choices: [16, 32]}
  epochs: 4
  n_layers: 1
"""


def _count(url: str, *states: str) -> int:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            marks = ", ".join(f"'{s}'" for s in states)
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM trials WHERE state IN ({marks})").scalar())
    except sqlalchemy.exc.SQLAlchemyError:
        return 0  # the tables are not there yet
    finally:
        engine.dispose()


def _when_finished(url: str, n: int, proc: subprocess.Popen, *, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while _count(url, "COMPLETE", "PRUNED") < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"fewer than {n} trials finished in {timeout}s"
        time.sleep(0.2)


def _study_run(url: str, name: str, budget: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TUNER_STORAGE": url, "TUNER_HEARTBEAT": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [TUNER, "study", "run", name, "--space", "t", "--trials", str(budget), "--workers", "4", "--threads", "1", "--format", "json", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _states(url: str, name: str) -> dict[str, int]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
        if t.state == TrialState.FAIL:  # said in the assertion's message
            out[f"#{t.number}"] = (t.user_attrs.get("fail_reason"), sorted(t.user_attrs), t.params, len(t.intermediate_values), str(t.datetime_start), str(t.datetime_complete))
    return out


@pytest.mark.slow
def test_four_workers_ride_out_a_postgresql_server_restart(project, private_pg):
    """The server stopped in fast mode (every session ended, as a failover or a minor upgrade
    does) mid-study, for 8 s: longer than the 6 s lost-trial grace of these 2 s heartbeats, so a
    worker judging the others' silence right after the outage would fail their live trials."""
    Path("search_spaces/t.yaml").write_text(SPACE)
    url = private_pg.url
    run = _study_run(url, "r", 60)
    _when_finished(url, 12, run)
    running_then = _count(url, "RUNNING")
    private_pg.restart(down_s=8)
    out, err = run.communicate(timeout=400)
    assert run.returncode == 0, err
    states = _states(url, "r")
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 60, states
    assert "FAIL" not in states and "RUNNING" not in states, states
    assert json.loads(out)["n_finished"] == 60
    assert "tuner: lost the database (" in err and "tuner: the database is back after " in err, err
    assert running_then >= 1  # the restart came while trials trained


@pytest.mark.slow
def test_workers_ride_out_a_pgbouncer_restart(project, pg_url, pgbouncer_url):
    Path("search_spaces/t.yaml").write_text(SPACE)
    run = _study_run(pgbouncer_url.url, "b", 40)
    _when_finished(pg_url, 10, run)
    pgbouncer_url.restart(down_s=3)
    out, err = run.communicate(timeout=400)
    assert run.returncode == 0, err
    states = _states(pg_url, "b")
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 40, states
    assert "FAIL" not in states and "RUNNING" not in states, states
    assert "tuner: lost the database (" in err and "back after" in err, err


@pytest.mark.slow
def test_an_outage_longer_than_db_retry_for_stops_the_workers_in_one_line_and_resume_finishes(project, private_pg):
    Path("search_spaces/t.yaml").write_text(SPACE)
    url = private_pg.url
    run = _study_run(url, "g", 40, "--db-retry-for", "3s")
    _when_finished(url, 8, run)
    private_pg.stop()
    out, err = run.communicate(timeout=120)
    assert run.returncode == 75, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "workers stopped: the database did not answer for " in errors[0] and "(--db-retry-for 3s)" in errors[0], errors
    assert "`tuner study resume g` finishes the study" in errors[0], errors
    private_pg.start()
    env = {**os.environ, "TUNER_STORAGE": url, "TUNER_HEARTBEAT": "2"}
    resumed = subprocess.run([TUNER, "study", "resume", "g", "--workers", "2", "--threads", "1", "--format", "json"], env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    states = _states(url, "g")
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 40 and "RUNNING" not in states, states


def test_a_study_rides_out_sqlite_locked_past_its_busy_timeout(cli, project, monkeypatch):
    """Another process holds SQLite's write lock for 2 s, past a busy timeout cut to 0.2 s: the
    run says so, waits, and ends with its budget and no failed trial."""
    import tuner.storage
    from tuner.outage import OUTAGE

    monkeypatch.setattr(tuner.storage, "_SQLITE_BUSY_TIMEOUT_S", 0.2)
    # this process's outage state goes back as it was: later tests here judge lost workers by their silence
    monkeypatch.setattr(OUTAGE, "ended_at", OUTAGE.ended_at)
    monkeypatch.setattr(OUTAGE, "began", OUTAGE.began)
    Path("search_spaces/t.yaml").write_text(SPACE.replace("epochs: 4", "epochs: 1"))
    Path("locker.py").write_text(
        "import sqlite3, threading, time\n"
        "def objective(trial):\n"
        "    if trial.number == 2:\n"
        "        def hold():\n"
        "            c = sqlite3.connect('studies/tuner.db', isolation_level=None)\n"
        "            c.execute('BEGIN EXCLUSIVE'); time.sleep(2.0); c.execute('COMMIT')\n"
        "        threading.Thread(target=hold).start(); time.sleep(0.3)\n"
        "    return trial.params['lr']\n"
    )
    monkeypatch.syspath_prepend(str(project))
    result = cli("study", "run", "k", "--space", "t", "--objective", "locker:objective", "--metric", "score", "--direction", "maximize", "--trials", "6")
    assert result.code == 0, result.err
    assert "tuner: lost the database (the database is locked by another process" in result.err and "back after" in result.err
    states = _states("sqlite:///studies/tuner.db", "k")
    assert states == {"COMPLETE": 6}, states


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_with_the_database_intact(project):
    """A file-size limit on the worker (the disk it sees is full once the database grows): it
    waits --db-retry-for, stops with one line naming the cause, and the file passes SQLite's
    integrity check; a resume without the limit finishes exactly."""
    import resource

    Path("search_spaces/t.yaml").write_text(SPACE.replace("epochs: 4", "epochs: 1"))
    env = {**os.environ, "TUNER_STORAGE": "sqlite:///studies/tuner.db"}
    first = subprocess.run([TUNER, "study", "run", "d", "--space", "t", "--trials", "3"], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    size = sum(p.stat().st_size for p in Path("studies").glob("tuner.db*"))

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 64 * 1024, size + 64 * 1024))

    full = subprocess.run(
        [TUNER, "study", "run", "d", "--trials", "400", "--db-retry-for", "2s"], env=env, capture_output=True, text=True, timeout=300, preexec_fn=limited
    )
    assert full.returncode == 75, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    # SQLite says "disk I/O error" for a file-size limit (EFBIG), "database or disk is full" for a full disk (ENOSPC)
    assert len(errors) == 1 and "the disk holding the database" in errors[0] and "full" in errors[0] and "tuner study resume d" in errors[0], full.stderr
    assert "Traceback" not in full.stderr
    with sqlite3.connect("studies/tuner.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    resumed = subprocess.run([TUNER, "study", "resume", "d", "--trials", "12"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    states = _states("sqlite:///studies/tuner.db", "d")
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 12 and "RUNNING" not in states, states
