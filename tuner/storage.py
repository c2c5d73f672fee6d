"""Storage URLs: the embedded SQLite default, SQLite settings for concurrent workers, password masking.

Any SQLAlchemy URL works (--storage or TUNER_STORAGE); studies are plain Optuna RDB studies, so
`optuna studies --storage URL` and optuna-dashboard open them unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import random
import sqlite3
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterator

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url

from tuner import attrs as A
from tuner.errors import NoStorageError, StorageError
from tuner.urls import DEFAULT_ARTIFACTS, DEFAULT_STORAGE, mask, resolve_url
from tuner.urls import mask_text as _mask_text

__all__ = ["DEFAULT_ARTIFACTS", "DEFAULT_STORAGE", "PGBOUNCER_OPTION", "StudyLock", "behind_pgbouncer", "count_states", "heartbeat_settings", "fail_running", "mask", "open_storage", "progress", "rdb_of", "resolve_url", "running_rows", "sql_rdb"]

_SQLITE_BUSY_TIMEOUT_S = 60  # how long a writer waits for another worker's lock before failing
_LOCK_POLL_S = (0.002, 0.05)  # behind PgBouncer: the first and the longest wait between tries of the study lock


# tuner's own query option in a PostgreSQL URL, never passed to the driver: the URL reaches the
# server through PgBouncer in transaction pooling (see open_storage)
PGBOUNCER_OPTION = "pgbouncer"


def _parse(url: str) -> URL:
    """The URL SQLAlchemy opens: checked, with tuner's driver, without tuner's own options."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise StorageError(
            f"storage URL {_mask_text(url)!r} is not a SQLAlchemy URL; "
            "use e.g. sqlite:///studies/tuner.db or postgresql+psycopg://user@host:5432/db"
        ) from None
    _check_form(url, parsed)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver tuner installs
    _pgbouncer(url, parsed)
    return parsed.difference_update_query([PGBOUNCER_OPTION])


def behind_pgbouncer(url: str) -> bool:
    """Whether the URL says `?pgbouncer=transaction`: every transaction may land on another
    server connection, so nothing may live in a session (prepared statements, settings, locks)."""
    return _pgbouncer(url, make_url(url))


def _pgbouncer(url: str, parsed: URL) -> bool:
    value = parsed.query.get(PGBOUNCER_OPTION)
    if value is None:
        return False
    if parsed.get_backend_name() != "postgresql":
        raise StorageError(f"storage URL {mask(url)}: ?{PGBOUNCER_OPTION}= is for PostgreSQL URLs; remove it")
    if value != "transaction":
        raise StorageError(
            f"storage URL {mask(url)}: {PGBOUNCER_OPTION}={value!r} is not known; use ?{PGBOUNCER_OPTION}=transaction behind PgBouncer's "
            "pool_mode = transaction, and nothing behind session pooling (statement pooling cannot run tuner's transactions)"
        )
    return True


_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")  # SQLAlchemy's, that Optuna supports


def _check_form(url: str, parsed: URL) -> None:
    """The usual slips in a storage URL, each said with the right form (SQLAlchemy would answer
    "Can't load plugin" or open a file nobody meant)."""
    import difflib

    where = " (from TUNER_STORAGE)" if os.environ.get("TUNER_STORAGE") == url else ""
    shown = mask(url)
    backend = parsed.get_backend_name()
    if backend == "postgres":
        right = "postgresql+psycopg" + url[len("postgres") :]
        raise StorageError(f"storage URL {shown}{where}: SQLAlchemy spells it postgresql, not postgres; use {mask(right)}")
    if backend not in _BACKENDS:
        close = difflib.get_close_matches(backend, _BACKENDS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise StorageError(
            f"storage URL {shown}{where}: unknown database {backend!r}; {hint}use e.g. sqlite:///studies/tuner.db or postgresql+psycopg://user@host:5432/db"
        )
    if backend == "sqlite" and (parsed.host or parsed.username):
        raise StorageError(
            f"storage URL {shown}{where}: a SQLite path follows three slashes (sqlite:///relative/path.db) or four "
            f"(sqlite:////absolute/path.db); this one has two, which makes {parsed.host!r} a host"
        )


def sqlite_path(url: str) -> Path | None:
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds: a trial whose worker has not beaten for `grace` seconds is
    failed and re-queued. TUNER_HEARTBEAT sets the interval; the grace is three intervals."""
    raw = os.environ.get("TUNER_HEARTBEAT", "10")
    try:
        interval = int(raw)
    except ValueError:
        raise StorageError(f"TUNER_HEARTBEAT={raw!r} is not a whole number of seconds; e.g. TUNER_HEARTBEAT=10") from None
    if interval < 1:
        raise StorageError(f"TUNER_HEARTBEAT={raw} must be at least 1 second")
    return interval, 3 * interval


def _read_migrations_once() -> None:
    """Opening an RDB storage, Optuna reads its schema's migration scripts (40 modules declaring
    their own models) up to three times: ~50 ms a storage. The scripts cannot change while this
    process runs, so the first reading serves every later one (where tuner._compat finds the
    reader; otherwise Optuna reads them as it always does)."""
    from tuner._compat import optuna_paths

    manager = optuna_paths().alembic_reader
    read = getattr(manager, "_create_alembic_script", None)
    if read is None or getattr(read, "shared", False):
        return
    scripts: list[Any] = []

    def read_once(self: Any) -> Any:
        if not scripts:
            scripts.append(read(self))
        return scripts[0]

    read_once.shared = True  # type: ignore[attr-defined]
    manager._create_alembic_script = read_once


def open_storage(url: str, *, create: bool = False) -> optuna.storages.RDBStorage:
    """Open an RDB storage; without `create`, a missing SQLite file is an error rather than a new file.

    Heartbeats are on: tuner's workers beat for their trials, and a trial whose worker died is
    failed and queued again (tuner.study.lost, at each claim)."""
    parsed = _parse(url)
    engine_kwargs: dict = {}
    path = sqlite_path(url)
    if path is not None:
        if not path.exists():
            if not create:
                raise NoStorageError(f"no studies yet: {path.resolve()} does not exist (`tuner study run` creates it), or pass --storage")
            path.parent.mkdir(parents=True, exist_ok=True)
        _prepare_sqlite(path)
        engine_kwargs = {"connect_args": {"timeout": _SQLITE_BUSY_TIMEOUT_S}}
    elif behind_pgbouncer(url):
        # PgBouncer in transaction pooling: each transaction may run on another server
        # connection. psycopg prepares a statement run 5 times on a connection, and the next
        # transaction's server would not know it (PgBouncer < 1.21, or without
        # max_prepared_statements): never prepare. PgBouncer refuses the startup `options` too,
        # so synchronous_commit is the database's own setting there (see docs/clusters.md).
        engine_kwargs = {"pool_pre_ping": not _probes(parsed), "connect_args": {"connect_timeout": 10, "prepare_threshold": None}}
    elif parsed.get_backend_name() == "postgresql":
        # Commits return before the server flushes its log to disk (~1.5 ms each, 3 a trial): a
        # server crash may lose the last fraction of a second of results, never consistency, and
        # a trial whose end was lost is failed as stale and re-queued. SQLite's WAL + NORMAL alike.
        given = parsed.query.get("options")
        options = " ".join(filter(None, [given if isinstance(given, str) else None, "-c synchronous_commit=off"]))
        engine_kwargs = {"pool_pre_ping": not _probes(parsed), "connect_args": {"connect_timeout": 10, "options": options}}
    _read_migrations_once()
    # Behind PgBouncer, Optuna's own schema check would hold one connection in a transaction
    # while it opens a second: with as many workers starting as PgBouncer has server
    # connections, each would hold one and wait for another. So tuner checks it one query after
    # the other.
    pooled = behind_pgbouncer(url)
    try:
        interval, grace = heartbeat_settings()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are stable enough for us
            storage = optuna.storages.RDBStorage(
                parsed.render_as_string(hide_password=False),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                skip_compatibility_check=pooled,
            )
        if pooled and storage.get_current_version() != storage.get_head_version():
            raise RuntimeError(
                f"its tables are Optuna's schema {storage.get_current_version()}, this Optuna {optuna.__version__} needs "
                f"{storage.get_head_version()}; run `optuna storage upgrade --storage URL` (without ?{PGBOUNCER_OPTION}=)"
            )
    except ImportError as e:  # Optuna re-raises the driver's ModuleNotFoundError as ImportError
        missing = getattr(e, "name", None) or getattr(e.__cause__, "name", None) or parsed.drivername
        raise StorageError(f"storage {mask(url)}: the database driver is not installed ({missing}); pip install it") from None
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(f"cannot open storage {mask(url)}: {_mask_text(reason)}") from None
    if path is not None:
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_connection_pragmas)
        storage.engine.dispose()  # connections opened while creating the tables lack the pragmas
    elif _probes(parsed):
        sqlalchemy.event.listen(storage.engine, "checkout", _alive_or_replaced)
    from tuner.sql import ensure_indexes

    ensure_indexes(storage)
    return storage


def _probes(parsed: sqlalchemy.engine.URL) -> bool:
    """Whether the engine's connections are checked by _alive_or_replaced rather than by the
    pool's pre-ping: psycopg 3 on PostgreSQL, whose connection's socket can be looked at."""
    return parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg"


def _alive_or_replaced(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """A pooled connection checked as it leaves the pool, without a round trip: a server that
    ended the session (restart, failover, PgBouncer restart, an idle timeout) has said so on its
    socket (an error, then end of file), which an idle connection's never is otherwise. The
    pool's pre-ping sent a query instead: one round trip a transaction, 5 a trial. A connection
    lost without a word (a cable pulled) fails its first statement, which tuner.outage retries."""
    import select

    pgconn = getattr(dbapi_connection, "pgconn", None)
    if pgconn is None:
        return
    try:
        closed = dbapi_connection.closed or pgconn.socket < 0
        if not closed and hasattr(select, "poll"):  # poll: select() refuses descriptors past 1,024
            poller = select.poll()
            poller.register(pgconn.socket, select.POLLIN)
            readable = bool(poller.poll(0))
        else:
            readable = not closed and bool(select.select([pgconn.socket], [], [], 0)[0])
    except Exception:  # noqa: BLE001 - a connection that cannot be looked at is not kept
        closed, readable = True, False
    if closed or readable:
        raise sqlalchemy.exc.DisconnectionError("the server ended this connection")  # the pool opens a new one


def _prepare_sqlite(path: Path) -> None:
    # WAL lets readers (the dashboard, `tuner study show`) run beside a writing worker; it is a
    # property of the file, so setting it once is enough.
    try:
        with sqlite3.connect(path, timeout=_SQLITE_BUSY_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as e:
        raise StorageError(f"cannot open storage sqlite:///{path}: {e}") from None


def _sqlite_connection_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; an fsync per checkpoint, not per commit
    cursor.close()


class StudyLock:
    """A lock per study, held only while a worker claims its next trial, so that the budget check
    and the claim are one step across processes and hosts: SQLite (one host) locks a file beside
    the database; PostgreSQL takes an advisory lock for one transaction, on a connection of the
    storage's own engine, released by the server when the transaction ends or the worker dies."""

    def __init__(self, url: str, study_name: str, *, engine: sqlalchemy.Engine | None = None) -> None:
        self._key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        self._path: Path | None = None
        self._file: IO[str] | None = None
        self._engine: sqlalchemy.Engine | None = None
        self._own_engine = False
        self._polling = False
        path = sqlite_path(url)
        if path is not None:
            self._path = path.with_name(path.name + ".lock")
        elif _parse(url).get_backend_name() == "postgresql":
            # the storage's engine where it is given: its pool keeps the connection between
            # claims (a new one costs the server a backend process, ~5 ms), and a worker holds
            # no connection of the lock's own
            self._engine, self._own_engine = engine, engine is None
            if engine is None:
                parsed = _parse(url)
                self._engine = sqlalchemy.create_engine(
                    parsed.render_as_string(hide_password=False), pool_size=1, max_overflow=0, pool_pre_ping=not _probes(parsed),
                    connect_args={"prepare_threshold": None} if behind_pgbouncer(url) else {},
                )
                if _probes(parsed):
                    sqlalchemy.event.listen(self._engine, "checkout", _alive_or_replaced)
            # Behind PgBouncer a worker waiting on the lock would hold one of its few server
            # connections, and the holder needs a second one for its claim: with more waiting
            # workers than the pool has connections, nobody moves. So it tries and waits outside.
            self._polling = behind_pgbouncer(url)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._path is not None:
            if self._file is None:  # opened by the process that locks it, and kept: one open a claim cost ~30 µs
                self._file = self._path.open("a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._file, fcntl.LOCK_UN)
        elif self._engine is not None and self._polling:
            wait = _LOCK_POLL_S[0]
            while True:
                with self._engine.begin() as conn:
                    if conn.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({self._key})").scalar():
                        yield
                        return
                time.sleep(wait * random.uniform(0.5, 1.0))  # jittered: waiting workers do not try in step
                wait = min(2 * wait, _LOCK_POLL_S[1])
        elif self._engine is not None:
            # a transaction's lock: released at its end however it ends, or when the worker dies
            with self._engine.begin() as conn:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({self._key})")
                yield
        else:  # other databases: no cross-process lock; the budget may overshoot by workers - 1
            yield

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._engine is not None and self._own_engine:
            self._engine.dispose()


def rdb_of(storage: Any) -> Any:
    """The RDBStorage under Optuna's read cache (load_study wraps it), or None for other storages."""
    backend = getattr(storage, "_rdb", None) or getattr(storage, "_backend", storage)  # tuner's or Optuna's wrapper
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def sql_rdb(storage: Any) -> Any:
    """The RDBStorage under `storage` where tuner's own SQL may run on it (tuner._compat: the
    names it needs are there and the schema is the one it was written for), else None."""
    from tuner._compat import sql_ok

    rdb = rdb_of(storage)
    return rdb if rdb is not None and sql_ok(rdb) else None


def count_states(storage: Any, study_id: int) -> Counter[Any]:
    """Trials per state in one aggregate query, instead of loading every trial to count them."""
    from tuner import sql

    rdb = sql_rdb(storage)
    if rdb is None:
        return Counter(t.state for t in storage.get_all_trials(study_id, deepcopy=False))
    return sql.count_states(rdb, study_id)


def running_rows(storage: Any, study_id: int) -> list[Any]:
    """The study's RUNNING trials with their worker and how long each has been silent (see
    tuner.sql.running_trials). Where tuner's SQL is off, from Optuna's own reads: a trial's
    silence is then known only as past the grace period (Optuna's stale query, where there is
    one) or not known."""
    from optuna.trial import TrialState

    from tuner import sql
    from tuner._compat import optuna_paths

    rdb = sql_rdb(storage)
    if rdb is not None:
        return sql.running_trials(rdb, study_id)
    under, stale_query = rdb_of(storage), optuna_paths().stale_query
    stale = set(stale_query(under, study_id)) if under is not None and stale_query is not None and under.heartbeat_interval else set()
    return [
        sql.Running(t._trial_id, t.number, t.datetime_start, None, math.inf if t._trial_id in stale else None, t.user_attrs.get(A.WORKER))
        for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    ]


def fail_running(storage: Any, trial_id: int, *, reason: str, kind: str) -> bool:
    """Fail a RUNNING trial with its reason and kind recorded; False if it is no longer running."""
    from optuna.trial import TrialState

    from tuner import sql

    rdb = sql_rdb(storage)
    if rdb is not None:
        return sql.fail_running(rdb, trial_id, reason=reason, kind=kind)
    try:  # three writes on Optuna's road: a trial that finishes in between keeps its own end
        storage.set_trial_user_attr(trial_id, A.FAIL_REASON, reason)
        storage.set_trial_user_attr(trial_id, A.FAIL_KIND, kind)
        return bool(storage.set_trial_state_values(trial_id, TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def progress(storage: Any, study_id: int, directions: list[Any]) -> tuple[int, float | None]:
    """Finished trials (complete or pruned) and the best feasible complete value (None with several
    metrics, which have a front, not a best), from aggregate queries: what a progress line needs,
    without loading the best trial whole."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from tuner import sql
    from tuner.metrics import feasible

    maximize = directions[0] == StudyDirection.MAXIMIZE
    one = len(directions) == 1
    rdb = sql_rdb(storage)
    if rdb is not None:
        return sql.progress(rdb, study_id, maximize=maximize, best=one)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    n_finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    values = [t.value for t in trials if one and t.state == TrialState.COMPLETE and t.value is not None and feasible(t)]
    best_of = max if maximize else min
    return n_finished, best_of(values) if values else None
