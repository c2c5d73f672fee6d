"""The few statements tuner runs on every trial, on the database driver's own cursor.

SQLAlchemy builds, caches and wraps each statement it runs: 40-200 µs a statement on SQLite, where
the driver itself takes about 5 µs. A trial runs about a dozen of them (claim, create, make the
configuration durable, finish, progress), which made SQLAlchemy's share most of a digits trial's
service time. So these statements go to the cursor of a connection checked out from the storage's
own engine (its pool, its SQLite pragmas, its commit and rollback), as plain SQL over Optuna's
tables, storing values exactly as Optuna's models do: enums by name, JSON as text, SQLite
datetimes as SQLAlchemy's strings. Everything else stays with Optuna's RDBStorage. These statements
run only where tuner._compat finds the schema they were written for (tuner.storage.sql_rdb).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.trial import FrozenTrial, TrialState

from tuner import attrs as A
from tuner._compat import optuna_paths

__all__ = [
    "Created",
    "TrialReads",
    "Final",
    "Pending",
    "Running",
    "attribute_keys",
    "beat",
    "claimed_by",
    "best_trial_id",
    "count_and_create",
    "count_states",
    "count_trials",
    "complete_values",
    "create_running",
    "ensure_indexes",
    "last_numbers",
    "fail_running",
    "front_before",
    "param_distribution",
    "progress",
    "read_trials",
    "running_trials",
    "set_started",
    "start_queued",
    "window_start",
    "write_trial",
]

_RUNNING = TrialState.RUNNING.name


@dataclass
class Pending:
    """A running trial's writes not yet in the database."""

    params: dict[str, tuple[float, BaseDistribution]] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    stored: set[tuple[str, str]] = field(default_factory=set)  # (table, key) of attributes already written
    # a transaction carrying these writes failed in a way that leaves its commit unknown (the
    # connection was lost): they are written again as replacements, never as duplicates
    uncertain: bool = False

    def next(self) -> "Pending":
        """What is pending once these writes are in the database: nothing, with their keys known."""
        return Pending(stored=self.stored | attribute_keys(self.user_attrs, self.system_attrs))

    def empty(self) -> bool:
        return not (self.params or self.intermediate or self.user_attrs or self.system_attrs)

    def under(self, newer: "Pending", *, uncertain: bool = False) -> "Pending":
        """These writes, not written after all, beneath `newer` ones made meanwhile (on top of
        these: a key in both keeps the newer value), as one pending set again."""
        return Pending(
            params={**self.params, **newer.params},
            intermediate={**self.intermediate, **newer.intermediate},
            user_attrs={**self.user_attrs, **newer.user_attrs},
            system_attrs={**self.system_attrs, **newer.system_attrs},
            stored=self.stored,
            uncertain=self.uncertain or newer.uncertain or uncertain,
        )


def attribute_keys(user_attrs: Iterable[str], system_attrs: Iterable[str]) -> set[tuple[str, str]]:
    """The (table, key) rows that these attributes occupy."""
    return {("trial_user_attributes", k) for k in user_attrs} | {("trial_system_attributes", k) for k in system_attrs}


@dataclass(frozen=True)
class Final:
    """How a trial ends: its state, its values (None unless complete or pruned with a value), when."""

    state: TrialState
    values: Sequence[float] | None
    when: datetime


_ROWS_A_STATEMENT = 1000  # rows of one multi-row insert: well inside any server's parameter limit


class _Cursor:
    """A DBAPI cursor inside one transaction, with SQL written with `?` placeholders."""

    def __init__(self, cursor: Any, engine: sqlalchemy.Engine) -> None:
        dialect = engine.dialect
        self._cur = cursor
        self.engine = engine
        self.sqlite = dialect.name == "sqlite"
        self.postgresql = dialect.name == "postgresql"
        self._qmark = dialect.paramstyle == "qmark"
        self.key = dialect.identifier_preparer.quote("key")  # a reserved word in MySQL

    def _sql(self, sql: str) -> str:
        return sql if self._qmark else sql.replace("?", "%s")

    def when(self, value: datetime) -> Any:
        """A trial time (naive local, as Optuna hands them out) as Optuna 5 stores it: naive UTC.
        SQLAlchemy keeps SQLite datetimes as text in this form; other drivers take datetime objects."""
        utc = value.astimezone(timezone.utc).replace(tzinfo=None)
        return utc.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else utc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self._cur.execute(self._sql(sql), tuple(params))
        return self._cur

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """On a server, an insert of many rows is one statement of many VALUES (one round trip;
        the driver's executemany costs a pipeline's set-up even for one row)."""
        if not rows:
            return
        head, values = sql.partition(" VALUES ")[::2]
        if self.sqlite or not values:  # in-process: the driver's loop is the fastest
            self._cur.executemany(self._sql(sql), rows)
            return
        for at in range(0, len(rows), _ROWS_A_STATEMENT):
            chunk = rows[at : at + _ROWS_A_STATEMENT]
            self._cur.execute(self._sql(f"{head} VALUES {', '.join([values] * len(chunk))}"), tuple(v for row in chunk for v in row))

    def close(self) -> None:
        self._cur.close()

    def batch(self) -> contextlib.AbstractContextManager[Any]:
        """Statements whose answers nobody reads sent together, answered in one round trip
        (psycopg's pipeline mode; an error surfaces at the block's end, inside the transaction)."""
        connection = getattr(self._cur, "connection", None)
        if self.postgresql and hasattr(connection, "pipeline") and hasattr(connection, "pgconn"):
            return connection.pipeline()
        return contextlib.nullcontext()


class _Held:
    """A SQLite database's connection taken from its engine's pool (with the pool's settings and
    pragmas) and kept for the process's life: checking one out and back for every statement costs
    more than a count does. Threads (the heartbeat's flush) take turns on it."""

    def __init__(self, engine: sqlalchemy.Engine) -> None:
        self.lock = threading.Lock()
        self.connection = engine.raw_connection()


_HELD: "weakref.WeakKeyDictionary[sqlalchemy.Engine, _Held]" = weakref.WeakKeyDictionary()
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def _transaction(rdb: optuna.storages.RDBStorage) -> Iterator[_Cursor]:
    """One transaction: committed when the block ends, rolled back if it raises. Driver errors
    surface as Optuna's StorageInternalError, as they do from Optuna's own writes."""
    engine = rdb.engine
    try:
        if engine.dialect.name == "sqlite":
            with _HELD_LOCK:
                held = _HELD.get(engine) or _HELD.setdefault(engine, _Held(engine))
            with held.lock:
                driver = held.connection.driver_connection
                cur = driver.cursor()
                try:
                    yield _Cursor(cur, engine)
                    driver.commit()
                except BaseException:
                    driver.rollback()
                    raise
                finally:
                    cur.close()
            return
        # a server's connections come from the pool, which pings them: the server may drop one
        with engine.begin() as conn:
            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                yield _Cursor(cur, engine)
            finally:
                cur.close()
    except (engine.dialect.dbapi.Error, sqlalchemy.exc.SQLAlchemyError) as e:  # type: ignore[union-attr]
        raise optuna.exceptions.StorageInternalError(f"a trial's write failed: {e.__class__.__name__}: {e}") from e


def count_states(rdb: optuna.storages.RDBStorage, study_id: int) -> Counter[TrialState]:
    """Trials per state in one aggregate query."""
    with _transaction(rdb) as cur:
        return _count_states(cur, study_id)


@dataclass(frozen=True)
class _Settled:
    """A study's trials up to `last_id`, all finished when counted, and their count per state.
    A finished trial never changes state and a new trial gets a larger id, so they need no
    recount: a claim reads only the trials after them, and a 2,000-trial study costs a claim
    about what a new one does (counting every trial took ~1 ms more there on SQLite)."""

    last_id: int = 0
    last_start: Any = None  # the last one's start, as stored: the check that it is still that trial
    counts: Counter[TrialState] = field(default_factory=Counter)


_FINISHED_STATES = frozenset(s.name for s in TrialState if s.is_finished())
_SETTLED: "weakref.WeakKeyDictionary[sqlalchemy.Engine, dict[int, _Settled]]" = weakref.WeakKeyDictionary()
_SETTLED_LOCK = threading.Lock()


def _count_states(cur: _Cursor, study_id: int) -> Counter[TrialState]:
    with _SETTLED_LOCK:
        settled = _SETTLED.setdefault(cur.engine, {}).get(study_id, _Settled())
    # the last settled trial is read again with the rest (one query): a study deleted and made
    # again may reuse the ids, and then the count starts over
    rows = cur.execute(
        "SELECT trial_id, state, datetime_start FROM trials WHERE study_id = ? AND trial_id >= ? ORDER BY trial_id",
        (study_id, settled.last_id),
    ).fetchall()
    if settled.last_id:
        if rows and rows[0][0] == settled.last_id and rows[0][2] == settled.last_start:
            rows = rows[1:]
        else:
            settled = _Settled()
            rows = cur.execute("SELECT trial_id, state, datetime_start FROM trials WHERE study_id = ? ORDER BY trial_id", (study_id,)).fetchall()
    counts = settled.counts + Counter(TrialState[row[1]] for row in rows)
    newly: Counter[TrialState] = Counter()
    last = None
    for row in rows:  # the finished run at the front of what is left settles too
        if row[1] not in _FINISHED_STATES:
            break
        newly[TrialState[row[1]]] += 1
        last = row
    if last is not None:
        with _SETTLED_LOCK:
            _SETTLED[cur.engine][study_id] = _Settled(last[0], last[2], settled.counts + newly)
    return counts


# a complete trial whose constraints (Optuna's system attributes "constraints:NAME", each a JSON
# number: at most 0 when met) all hold; never the best
_FEASIBLE = (
    "NOT EXISTS (SELECT 1 FROM trial_system_attributes c WHERE c.trial_id = t.trial_id "
    "AND SUBSTR(c.key, 1, 12) = 'constraints:' AND CAST(c.value_json AS REAL) > 0)"
)


# (engine) -> (study id, maximize) -> (the last trial id covered, the best value among the settled
# trials up to it): settled trials never change, so their best is read once
_BEST: "weakref.WeakKeyDictionary[sqlalchemy.Engine, dict[tuple[int, bool], tuple[int, float | None]]]" = weakref.WeakKeyDictionary()


def progress(rdb: optuna.storages.RDBStorage, study_id: int, *, maximize: bool, best: bool = True) -> tuple[int, float | None]:
    """Finished trials (complete or pruned) and (with `best`) the best finite value of a feasible
    complete trial. Both from what changed since the last look (see _Settled): a progress line
    costs the same at 100,000 trials as at 100."""
    best_of = max if maximize else min
    with _transaction(rdb) as cur:
        counts = _count_states(cur, study_id)
        n_finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        if not best:
            return n_finished, None
        with _SETTLED_LOCK:
            settled = _SETTLED.get(cur.engine, {}).get(study_id, _Settled()).last_id
            covered, value = _BEST.setdefault(cur.engine, {}).get((study_id, maximize), (0, None))
        if covered > settled:  # the study was made again: its trials start over
            covered, value = 0, None
        if settled > covered:
            value = _best_between(cur, study_id, best_of, covered, settled, value)
            with _SETTLED_LOCK:
                _BEST[cur.engine][(study_id, maximize)] = (settled, value)
        value = _best_between(cur, study_id, best_of, settled, None, value)
    return int(n_finished), value


def _best_between(cur: _Cursor, study_id: int, best_of: Callable[..., Any], after: int, upto: int | None, value: float | None) -> float | None:
    """The best of `value` and the first values of the feasible complete trials with ids in (after, upto]."""
    agg = "MAX" if best_of is max else "MIN"
    bound = "" if upto is None else " AND t.trial_id <= ?"
    found = cur.execute(
        f"SELECT {agg}(v.value) FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id "
        f"WHERE t.study_id = ? AND t.trial_id > ?{bound} AND t.state = 'COMPLETE' AND v.objective = 0 AND v.value_type = 'FINITE' AND {_FEASIBLE}",
        (study_id, after) if upto is None else (study_id, after, upto),
    ).fetchone()[0]
    return value if found is None else found if value is None else best_of(value, found)


# Indexes Optuna's schema lacks for tuner's queries, on Optuna's tables: they change no table's
# meaning, and Optuna's migrations leave them be. Without them a claim's number, the progress
# line and the running trials' look each walk every trial of the study.
INDEXES = {
    "ix_tuner_trials_study_number": "trials (study_id, number)",
    "ix_tuner_trials_study_state": "trials (study_id, state)",
}


def ensure_indexes(rdb: optuna.storages.RDBStorage) -> list[str]:
    """Create tuner's indexes where they are missing; the names created. A database that refuses
    (read-only, no rights) keeps working without them, only slower on large studies."""
    engine = rdb.engine
    try:
        have = {index["name"] for index in sqlalchemy.inspect(engine).get_indexes("trials")}
    except sqlalchemy.exc.SQLAlchemyError:
        return []
    made = []
    for name, on in INDEXES.items():
        if name in have:
            continue
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON {on}")
            made.append(name)
        except sqlalchemy.exc.SQLAlchemyError:  # another worker made it meanwhile, or no rights: fine either way
            continue
    return made


def best_trial_id(rdb: optuna.storages.RDBStorage, study_id: int, *, maximize: bool) -> int | None:
    """The feasible complete trial with the best first value (infinities ranked as Optuna ranks
    them; the earliest among equals), or None if no trial is complete and feasible."""
    order = "DESC" if maximize else "ASC"
    rank = "CASE v.value_type WHEN 'INF_NEG' THEN 0 WHEN 'FINITE' THEN 1 ELSE 2 END"  # INF_POS highest
    with _transaction(rdb) as cur:
        row = cur.execute(
            "SELECT t.trial_id FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
            f"WHERE t.study_id = ? AND t.state = 'COMPLETE' AND v.objective = 0 AND {_FEASIBLE} "
            f"ORDER BY {rank} {order}, v.value {order}, t.number ASC LIMIT 1",
            (study_id,),
        ).fetchone()
    return None if row is None else int(row[0])


Created = tuple[int, int, datetime]  # a new RUNNING trial's id, number and start


@dataclass(frozen=True)
class Running:
    """A RUNNING trial as the database holds it: how long it has been silent and who runs it."""

    trial_id: int
    number: int
    started: datetime | None
    beat_age_s: float | None  # since its last heartbeat, by the database's clock; None: no beat yet
    silent_s: float | None  # since its last heartbeat or, without one, since its start (this host's clock)
    worker: dict[str, Any] | None  # the claiming worker's identity (user attribute tuner.attrs.WORKER)

    def silent_past(self, seconds: float) -> bool:
        """Silent for longer than `seconds` (as Optuna judges a heartbeat stale; a trial with
        neither a beat nor a start cannot be judged)."""
        return self.silent_s is not None and self.silent_s > seconds


def running_trials(rdb: optuna.storages.RDBStorage, study_id: int) -> list[Running]:
    """The study's RUNNING trials, oldest first, with their last heartbeat and their worker.

    A trial with no heartbeat row counts as silent since its start: a worker killed between its
    claim and its first beat (an older tuner's claim of a queued trial; a plain Optuna client)
    still turns stale. Starts are written by the workers' clocks (Optuna's datetime.now()), so
    that age is read by this host's clock; heartbeats by the database's."""
    with _transaction(rdb) as cur:
        now_db = _timestamp(cur.execute("SELECT CURRENT_TIMESTAMP").fetchone()[0])
        rows = cur.execute(
            "SELECT t.trial_id, t.number, t.datetime_start, h.heartbeat, a.value_json FROM trials t "
            "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
            f"LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.{cur.key} = ? "
            f"WHERE t.study_id = ? AND t.state = '{_RUNNING}' ORDER BY t.trial_id",
            (A.WORKER, study_id),
        ).fetchall()
    now = datetime.now()
    out = []
    for trial_id, number, start, beat, worker in rows:
        started = _local(start)
        beat_age = (now_db - _timestamp(beat)).total_seconds() if beat is not None else None
        silent = beat_age if beat_age is not None else ((now - started).total_seconds() if started else None)
        identity = json.loads(worker) if worker is not None else None
        out.append(Running(int(trial_id), int(number), started, beat_age, silent, identity if isinstance(identity, dict) else None))
    return out


def fail_running(rdb: optuna.storages.RDBStorage, trial_id: int, *, reason: str, kind: str) -> bool:
    """Fail a RUNNING trial with its reason and kind (tuner.attrs), in one transaction; False
    (nothing written) if it is no longer RUNNING: its worker finished it, or another worker failed
    it first."""
    with _transaction(rdb) as cur:
        guard = cur.execute(
            f"UPDATE trials SET state = 'FAIL', datetime_complete = ? WHERE trial_id = ? AND state = '{_RUNNING}'",
            (cur.when(datetime.now()), trial_id),
        )
        if guard.rowcount != 1:
            return False
        _replace_attrs(cur, "trial_user_attributes", trial_id, {A.FAIL_REASON: reason, A.FAIL_KIND: kind})
    return True


def set_started(rdb: optuna.storages.RDBStorage, trial_ids: Sequence[int], when: datetime) -> None:
    """Move the start of these running trials to `when`, in one statement: trials claimed together
    wait for the packs before theirs, and their duration should not count the wait."""
    with _transaction(rdb) as cur:
        marks = ", ".join("?" * len(trial_ids))
        cur.execute(f"UPDATE trials SET datetime_start = ? WHERE trial_id IN ({marks}) AND state = '{_RUNNING}'", (cur.when(when), *trial_ids))


def start_queued(rdb: optuna.storages.RDBStorage, trial_id: int, *, heartbeat: bool, user_attrs: dict[str, Any]) -> int | None:
    """A queued (WAITING) trial becomes RUNNING with its start, its first heartbeat and
    `user_attrs` (the worker that claims it), in one transaction: a worker killed a moment later
    leaves a trial whose heartbeat ages, never one that stale detection cannot see. Returns its
    study's id; as Optuna's set_trial_state_values, None (False there) if another worker took it
    first, and UpdateFinishedTrialError if it has finished."""
    with _transaction(rdb) as cur:
        guard = cur.execute(
            f"UPDATE trials SET state = '{_RUNNING}', datetime_start = ? WHERE trial_id = ? AND state = 'WAITING'",
            (cur.when(datetime.now()), trial_id),
        )
        if guard.rowcount != 1:
            row = cur.execute("SELECT state FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
            if row is None:
                raise KeyError(optuna_paths().not_found_msg)
            rdb.check_trial_is_updatable(trial_id, TrialState[row[0]])  # raises if it has finished
            return None
        study_id = cur.execute("SELECT study_id FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()[0]
        if heartbeat:
            cur.execute("DELETE FROM trial_heartbeats WHERE trial_id = ?", (trial_id,))
            cur.execute("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?, CURRENT_TIMESTAMP)", (trial_id,))
        _replace_attrs(cur, "trial_user_attributes", trial_id, user_attrs)
    return int(study_id)


def param_distribution(rdb: optuna.storages.RDBStorage, study_id: int, name: str) -> BaseDistribution | None:
    """The distribution the study's trials already use for parameter `name`, if any has one."""
    with _transaction(rdb) as cur:
        row = cur.execute(
            "SELECT p.distribution_json FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id "
            "WHERE t.study_id = ? AND p.param_name = ? LIMIT 1",
            (study_id, name),
        ).fetchone()
    return None if row is None else json_to_distribution(row[0])


def _replace_attrs(cur: _Cursor, table: str, trial_id: int, attrs: dict[str, Any]) -> None:
    if attrs:
        cur.execute(f"DELETE FROM {table} WHERE trial_id = ? AND {cur.key} IN ({', '.join('?' * len(attrs))})", (trial_id, *attrs))
        _insert_attrs(cur, table, trial_id, attrs)


def _insert_attrs(cur: _Cursor, table: str, trial_id: int, attrs: dict[str, Any]) -> None:
    cur.executemany(f"INSERT INTO {table} (trial_id, {cur.key}, value_json) VALUES (?, ?, ?)", [(trial_id, k, json.dumps(v)) for k, v in attrs.items()])


def _timestamp(value: Any) -> datetime:
    # SQLite answers text (with or without microseconds); servers answer datetimes, perhaps zoned
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.replace(tzinfo=None)


def create_running(rdb: optuna.storages.RDBStorage, study_id: int, *, heartbeat: bool, user_attrs: dict[str, Any] | None = None) -> Created:
    """A new RUNNING trial, numbered after the study's other trials, and (with heartbeats on) its
    first heartbeat and `user_attrs` (the worker that runs it), in one transaction. The number is counted in the insert itself, under the
    study row's lock where the database has row locks (as Optuna locks it) and the database's
    single writer lock on SQLite, so concurrent workers never share one."""
    with _transaction(rdb) as cur:
        return _insert_running(cur, study_id, heartbeat=heartbeat, user_attrs=user_attrs or {})


def claimed_by(rdb: optuna.storages.RDBStorage, study_id: int, worker: dict[str, Any]) -> list[int]:
    """The study's RUNNING trials claimed by this worker (its identity, stored as the claim
    stored it), by id: after a lost connection, a claim whose commit was unknown is found here."""
    with _transaction(rdb) as cur:
        rows = cur.execute(
            "SELECT t.trial_id FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            f"WHERE t.study_id = ? AND t.state = '{_RUNNING}' AND a.{cur.key} = ? AND a.value_json = ? ORDER BY t.trial_id",
            (study_id, A.WORKER, json.dumps(worker)),
        ).fetchall()
    return [int(row[0]) for row in rows]


def count_and_create(
    rdb: optuna.storages.RDBStorage,
    study_id: int,
    *,
    create_if: Callable[[Counter[TrialState]], bool],
    heartbeat: bool,
    user_attrs: dict[str, Any] | None = None,
) -> tuple[Counter[TrialState], Created | None]:
    """The study's trials per state and, where `create_if` says so of those counts, a new RUNNING
    trial (as create_running makes it), in one transaction: a worker's claim of its next trial."""
    with _transaction(rdb) as cur:
        counts = _count_states(cur, study_id)
        created = _insert_running(cur, study_id, heartbeat=heartbeat, user_attrs=user_attrs or {}) if create_if(counts) else None
        return counts, created


def _insert_running(cur: _Cursor, study_id: int, *, heartbeat: bool, user_attrs: dict[str, Any]) -> Created:
    started = datetime.now()
    if not cur.sqlite:  # SQLite's writer lock already serializes the insert below
        if cur.execute("SELECT study_id FROM studies WHERE study_id = ? FOR UPDATE", (study_id,)).fetchone() is None:
            raise KeyError(f"no study with id {study_id}")
    # Optuna numbers a trial by the study's trials before it (they are never deleted): the highest
    # number + 1, read from tuner's (study_id, number) index, costs the same at 100,000 trials as
    # at 10 (a COUNT walks them all: 4 ms a claim at 100,000 on SQLite). The highest number alone
    # in its subquery: SQLite reads a MAX from an index only in a query of its own.
    insert = (
        "INSERT INTO trials (number, study_id, state, datetime_start) "
        f"SELECT (SELECT COALESCE(MAX(number) + 1, 0) FROM trials WHERE study_id = ?), study_id, '{_RUNNING}', ? "
        "FROM studies WHERE study_id = ?"  # no row, no trial, for a study that is gone
    )
    params = (study_id, cur.when(started), study_id)
    if cur.postgresql:  # the trial, its first heartbeat and its attributes in one statement: one round trip, not three
        parts, args = [f"WITH t AS ({insert} RETURNING trial_id, number)"], list(params)
        if heartbeat:
            parts.append("h AS (INSERT INTO trial_heartbeats (trial_id, heartbeat) SELECT trial_id, CURRENT_TIMESTAMP FROM t)")
        if user_attrs:
            pairs = ", ".join(["(?::text, ?::text)"] * len(user_attrs))
            parts.append(f"a AS (INSERT INTO trial_user_attributes (trial_id, {cur.key}, value_json) SELECT t.trial_id, v.k, v.j FROM t, (VALUES {pairs}) AS v(k, j))")
            args += [x for k, v in user_attrs.items() for x in (k, json.dumps(v))]
        row = cur.execute(", ".join(parts) + " SELECT trial_id, number FROM t", args).fetchone()
        if row is None:
            raise KeyError(f"no study with id {study_id}")
        return int(row[0]), int(row[1]), started
    if cur.sqlite:
        row = cur.execute(insert + " RETURNING trial_id, number", params).fetchone()
        if row is None:
            raise KeyError(f"no study with id {study_id}")
        trial_id, number = row
    else:
        trial_id = cur.execute(insert, params).lastrowid
        number = cur.execute("SELECT number FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()[0]
    if heartbeat:
        cur.execute("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?, CURRENT_TIMESTAMP)", (trial_id,))
    _insert_attrs(cur, "trial_user_attributes", trial_id, user_attrs)  # a new trial has none to replace
    return int(trial_id), int(number), started


def write_trial(rdb: optuna.storages.RDBStorage, trial_id: int, pending: Pending, final: Final | None = None) -> None:
    """A running trial's buffered params, intermediate values and attributes, and with `final` its
    values and finished state, in one transaction. The first statement claims the trial's row only
    while it is still RUNNING, so a trial another worker has meanwhile failed as stale is left as
    it is (and the error says so, as Optuna's would)."""
    with _transaction(rdb) as cur:
        if not _write_trial(cur, trial_id, pending, final):
            row = cur.execute("SELECT state, datetime_complete FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
            if row is None:
                raise KeyError(optuna_paths().not_found_msg)
            if pending.uncertain and final is not None and row[0] == final.state.name and row[1] is not None and _local(row[1]) == final.when:
                return  # an earlier try committed this very end (its completion time is ours) before its connection was lost
            rdb.check_trial_is_updatable(trial_id, TrialState[row[0]])  # raises: the trial has finished
            raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial_id} is {row[0]}, not RUNNING: not updated")


def beat(rdb: optuna.storages.RDBStorage, trial_ids: Sequence[int], pending: dict[int, Pending]) -> set[int]:
    """A heartbeat for each of a worker's running trials (one, or a pack's) and the buffered writes
    of those in `pending`, in one transaction: a pack of K trials costs one commit a beat, not 2K,
    which kept many packed workers behind a small connection pool from falling behind their beats.
    A trial no longer RUNNING (failed as lost meanwhile) is skipped, not written, and the others
    still beat. Returns the trials whose writes were committed."""
    written = set()
    with _transaction(rdb) as cur:
        for trial_id, writes in pending.items():
            if _write_trial(cur, trial_id, writes):
                written.add(trial_id)
        ids = list(trial_ids)
        marks = ", ".join("?" * len(ids))
        if cur.execute(f"UPDATE trial_heartbeats SET heartbeat = CURRENT_TIMESTAMP WHERE trial_id IN ({marks})", ids).rowcount != len(ids):
            beating = {row[0] for row in cur.execute(f"SELECT trial_id FROM trial_heartbeats WHERE trial_id IN ({marks})", ids).fetchall()}
            cur.executemany("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?, CURRENT_TIMESTAMP)", [(t,) for t in ids if t not in beating])
    return written


def _write_trial(cur: _Cursor, trial_id: int, pending: Pending, final: Final | None = None) -> bool:
    """write_trial's statements, in the caller's transaction. False, with nothing written, if the
    trial is no longer RUNNING: its guard is the first statement, so there is nothing to undo."""
    if final is None:
        guard = cur.execute(f"UPDATE trials SET state = '{_RUNNING}' WHERE trial_id = ? AND state = '{_RUNNING}'", (trial_id,))
    else:
        guard = cur.execute(
            f"UPDATE trials SET state = ?, datetime_complete = ? WHERE trial_id = ? AND state = '{_RUNNING}'",
            (final.state.name, cur.when(final.when), trial_id),
        )
    if guard.rowcount != 1:
        return False
    with cur.batch():
        _write_rows(cur, trial_id, pending, final)
    return True


def _write_rows(cur: _Cursor, trial_id: int, pending: Pending, final: Final | None) -> None:
    """_write_trial's rows, the trial's row claimed."""
    if pending.uncertain:  # an earlier try may have committed some of these rows: replace, never duplicate
        for table, column, keys in (("trial_params", "param_name", list(pending.params)), ("trial_intermediate_values", "step", list(pending.intermediate))):
            if keys:
                cur.execute(f"DELETE FROM {table} WHERE trial_id = ? AND {column} IN ({', '.join('?' * len(keys))})", (trial_id, *keys))
    cur.executemany(
        "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES (?, ?, ?, ?)",
        [(trial_id, name, value, distribution_to_json(dist)) for name, (value, dist) in pending.params.items()],
    )
    rows = []
    for step, value in pending.intermediate.items():
        stored, kind = optuna_paths().intermediate_repr(value)
        rows.append((trial_id, step, stored, kind.name))
    cur.executemany(
        "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type) VALUES (?, ?, ?, ?)", rows
    )
    for table, attrs in (("trial_user_attributes", pending.user_attrs), ("trial_system_attributes", pending.system_attrs)):
        again = [k for k in attrs if (table, k) in pending.stored or pending.uncertain]
        if again:  # a key written again replaces its earlier value
            cur.execute(f"DELETE FROM {table} WHERE trial_id = ? AND {cur.key} IN ({', '.join('?' * len(again))})", (trial_id, *again))
        cur.executemany(f"INSERT INTO {table} (trial_id, {cur.key}, value_json) VALUES (?, ?, ?)", [(trial_id, k, json.dumps(v)) for k, v in attrs.items()])
    if final is not None and final.values:
        rows = []
        for objective, value in enumerate(final.values):
            stored, kind = optuna_paths().value_repr(value)
            rows.append((trial_id, objective, stored, kind.name))
        cur.executemany("INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (?, ?, ?, ?)", rows)


_SPECIAL = {"INF_POS": float("inf"), "INF_NEG": float("-inf"), "NAN": float("nan")}


def _local(value: Any) -> datetime | None:
    """A stored trial time as Optuna 5 hands it out: stored as naive UTC, given as naive local time."""
    if value is None:
        return None
    return _timestamp(value).replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)


def _as_read(trial: FrozenTrial) -> FrozenTrial:
    return trial


class TrialReads:
    """Studies' trials read by read_trials once, then only what may have changed: the trials
    created since, and those not finished at the last read (a finished trial never changes).
    `shown` maps each trial read to what is kept and handed out. With `recount`, each read also
    counts the study's trials, and a count that disagrees (the study deleted and made again under
    the same id, as SQLite reuses ids) reads it afresh. With a `window`, a study that holds more
    trials than that when it is first read is read from its last `window` trials on, and of the
    trials before them only its best (see front_before): what a dashboard needs to draw 100,000
    trials' study as the whole would draw its best. Not thread-safe: its owner locks. Pickled
    with its storage (Optuna's storages are), so `shown` is a module's function, not a lambda."""

    def __init__(self, *, shown: Callable[[FrozenTrial], Any] = _as_read, recount: bool = False, window: int | None = None) -> None:
        self._shown, self._recount, self._window = shown, recount, window
        # study id -> (its trials by id, as shown; the highest id read; the ids not finished then;
        # the window's first id, 0 without one; the ids kept from before it)
        self._read: dict[int, tuple[dict[int, Any], int, set[int], int, list[int]]] = {}

    def trials(self, rdb: optuna.storages.RDBStorage, study_id: int) -> list[Any]:
        """The study's trials, in Optuna's order (a new list: the caller's)."""
        known, after, unfinished, first, kept = self._read.get(study_id) or self._start(rdb, study_id)
        after, unfinished = self._catch_up(rdb, study_id, known, after, unfinished)
        if self._recount and len(known) != count_trials(rdb, study_id, from_id=first) + len(kept):
            known, after, unfinished, first, kept = self._start(rdb, study_id)
            after, unfinished = self._catch_up(rdb, study_id, known, after, unfinished)
        self._read[study_id] = (known, after, unfinished, first, kept)
        return list(known.values())

    def _catch_up(self, rdb: optuna.storages.RDBStorage, study_id: int, known: dict[int, Any], after: int, unfinished: set[int]) -> tuple[int, set[int]]:
        """Read into `known` the trials after `after` and those `unfinished`; the new (after, unfinished)."""
        fresh = read_trials(rdb, study_id, after_id=after, also_ids=unfinished)
        for trial in fresh:
            known[trial._trial_id] = self._shown(trial)  # by id: a new id comes last, as Optuna orders them
        return max(after, fresh[-1]._trial_id if fresh else 0), {t._trial_id for t in fresh if not t.state.is_finished()}

    def window_of(self, study_id: int) -> tuple[int, int, int] | None:
        """Where a study's read is windowed: (trials read, the window's first trial number, how
        many trials before it are kept); None where every trial is read."""
        state = self._read.get(study_id)
        if state is None or not state[3]:
            return None
        known, _, _, first, kept = state
        return len(known), min((t.number for i, t in known.items() if i >= first), default=-1), len(kept)

    def _start(self, rdb: optuna.storages.RDBStorage, study_id: int) -> tuple[dict[int, Any], int, set[int], int, list[int]]:
        """Where a study's read starts: nothing read, or its window's trials and those kept before it."""
        first = window_start(rdb, study_id, self._window) if self._window else 0
        if not first:
            return {}, 0, set(), 0, []
        kept = front_before(rdb, study_id, first)
        known = {t._trial_id: self._shown(t) for t in read_trials(rdb, study_id, after_id=first - 1, also_ids=kept)}
        return known, max(known, default=first - 1), {i for i, t in known.items() if not t.state.is_finished()}, first, kept

    def forget(self, study_id: int) -> None:
        self._read.pop(study_id, None)


def window_start(rdb: optuna.storages.RDBStorage, study_id: int, n: int) -> int:
    """The id of the first of the study's last `n` trials; 0 where it holds `n` or fewer."""
    with _transaction(rdb) as cur:
        row = cur.execute("SELECT trial_id FROM trials WHERE study_id = ? ORDER BY trial_id DESC LIMIT 1 OFFSET ?", (study_id, n)).fetchone()
    return 0 if row is None else int(row[0]) + 1


def complete_values(rdb: optuna.storages.RDBStorage, study_id: int, *, before_id: int | None = None) -> tuple[dict[int, tuple[int, list[float]]], set[int]]:
    """The study's complete trials (with ids below `before_id`) that have a value for each metric:
    trial id -> (number, values); and the ids of those that miss a constraint (a value above 0).
    Two plain queries: reading the trials whole builds every attribute and learning curve."""
    bound, args = ("", (study_id,)) if before_id is None else (" AND t.trial_id < ?", (study_id, before_id))
    n_metrics = len(rdb.get_study_directions(study_id))
    with _transaction(rdb) as cur:
        rows = cur.execute(
            "SELECT t.trial_id, t.number, v.objective, v.value, v.value_type FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
            f"WHERE t.study_id = ?{bound} AND t.state = 'COMPLETE' ORDER BY t.trial_id",
            args,
        ).fetchall()
        # the infeasible on their own: _FEASIBLE is a lookup a trial, this one pass over the constraints
        missed = {r[0] for r in cur.execute(
            "SELECT c.trial_id FROM trial_system_attributes c JOIN trials t ON t.trial_id = c.trial_id "
            f"WHERE t.study_id = ?{bound} AND t.state = 'COMPLETE' AND SUBSTR(c.key, 1, 12) = 'constraints:' AND CAST(c.value_json AS REAL) > 0",
            args,
        ).fetchall()}  # fmt: skip
    values: dict[int, tuple[int, list[float]]] = {}
    for trial_id, number, objective, value, kind in rows:
        values.setdefault(trial_id, (int(number), [math.nan] * n_metrics))[1][objective] = value if kind == "FINITE" else _SPECIAL[kind]
    return {t: v for t, v in values.items() if not any(map(math.isnan, v[1]))}, missed


def front_before(rdb: optuna.storages.RDBStorage, study_id: int, before_id: int) -> list[int]:
    """The ids of the best complete trials with ids below `before_id`: the best (with several
    metrics, the Pareto front) of them all, and of the feasible ones (constraints met). Those and
    any later trials hold the best, and the front, of the whole study: a trial that beats one of
    the earlier trials is beaten by one of these, or is one of them."""
    from tuner.metrics import direction_signs, pareto_front

    signs = direction_signs(rdb.get_study_directions(study_id))
    values, missed = complete_values(rdb, study_id, before_id=before_id)
    kept: set[int] = set()
    for ids in (list(values), [t for t in values if t not in missed]):
        kept |= {ids[i] for i in pareto_front([values[t][1] for t in ids], signs)}
    return sorted(kept)


def last_numbers(rdb: optuna.storages.RDBStorage, study_id: int, n: int, *, states: Iterable[TrialState] | None = None) -> list[int]:
    """The numbers of the study's last `n` trials (in `states`), from the (study_id, number) index."""
    among = "" if states is None else f" AND state IN ({', '.join(repr(s.name) for s in states)})"
    with _transaction(rdb) as cur:
        rows = cur.execute(f"SELECT number FROM trials WHERE study_id = ?{among} ORDER BY number DESC LIMIT ?", (study_id, n)).fetchall()
    return sorted(int(r[0]) for r in rows)


def count_trials(rdb: optuna.storages.RDBStorage, study_id: int, *, states: Iterable[TrialState] | None = None, from_id: int = 0) -> int:
    """The study's trials (in `states`; with ids from `from_id` on)."""
    among = "" if states is None else f" AND state IN ({', '.join(repr(s.name) for s in states)})"
    with _transaction(rdb) as cur:
        return int(cur.execute(f"SELECT COUNT(*) FROM trials WHERE study_id = ? AND trial_id >= ?{among}", (study_id, from_id)).fetchone()[0])


def read_trials(
    rdb: optuna.storages.RDBStorage,
    study_id: int,
    *,
    states: Iterable[TrialState] | None = None,
    after_id: int = 0,
    also_ids: Iterable[int] = (),
    numbers: Iterable[int] | None = None,
    user_keys: Iterable[str] | None = None,
    intermediate: bool = True,
) -> list[FrozenTrial]:
    """The study's trials as Optuna's get_all_trials gives them (ordered by id, equal field for
    field: tests/test_sql.py holds them side by side), with `states` only, and only those with an
    id above `after_id` or in `also_ids` (a reader that keeps the finished ones it read: they never
    change), or with these `numbers`. A reader that needs a few user attributes names them
    (`user_keys`), and one that needs no learning curve leaves out the `intermediate` values:
    a study's summary at 100,000 trials reads a fifth of their rows. Five plain queries, one a table, grouped here: Optuna's ORM reads 100,000 trials in
    about 150 s and 7 GB on SQLite, mostly building and tracking its objects."""
    where = "t.study_id = ?"
    args: list[Any] = [study_id]
    also = sorted(set(also_ids))
    if after_id or also:
        where += f" AND (t.trial_id > ?{' OR t.trial_id IN (' + ', '.join('?' * len(also)) + ')' if also else ''})"
        args += [after_id, *also]
    if states is not None:
        names = [s.name for s in states]
        where += f" AND t.state IN ({', '.join('?' * len(names))})"
        args += names
    if numbers is not None:
        wanted = sorted(set(numbers))
        if not wanted:
            return []
        where += f" AND t.number IN ({', '.join('?' * len(wanted))})"
        args += wanted
    keys = sorted(set(user_keys)) if user_keys is not None else None
    dists: dict[str, BaseDistribution] = {}
    with _transaction(rdb) as cur:
        # one snapshot for the six reads, which would each take their own: a trial ending between
        # them would come back RUNNING with its values, one created since with rows but no fields
        if cur.sqlite:
            if not cur._cur.connection.in_transaction:
                cur.execute("BEGIN")
        elif cur.postgresql:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        rows = cur.execute(f"SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete FROM trials t WHERE {where} ORDER BY t.trial_id", args).fetchall()
        if not rows:
            if cur.execute("SELECT 1 FROM studies WHERE study_id = ?", (study_id,)).fetchone() is None:
                raise KeyError(optuna_paths().not_found_msg)  # as Optuna's read says it
            return []
        fields: dict[int, dict[str, Any]] = {
            int(r[0]): {"number": r[1], "state": TrialState[r[2]], "start": _local(r[3]), "complete": _local(r[4]),
                        "values": {}, "params": {}, "dists": {}, "user": {}, "system": {}, "steps": {}}  # fmt: skip
            for r in rows
        }

        def children(sql: str, extra: Sequence[Any] = ()) -> Any:
            """The rows of the trials read above (on a server without one snapshot, as MySQL's
            default, a trial created since the first read is left for the next read)."""
            return [r for r in cur.execute(sql.format(where=where, key=cur.key), [*args, *extra]).fetchall() if r[0] in fields]

        for trial_id, objective, value, kind in children(
            "SELECT v.trial_id, v.objective, v.value, v.value_type FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id WHERE {where}"
        ):
            fields[trial_id]["values"][objective] = value if kind == "FINITE" else _SPECIAL[kind]
        for trial_id, name, value, dist_json in children(
            "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id "
            "WHERE {where} ORDER BY p.param_id"
        ):
            dist = dists.get(dist_json)
            if dist is None:
                dist = dists[dist_json] = json_to_distribution(dist_json)
            fields[trial_id]["params"][name] = dist.to_external_repr(value)
            fields[trial_id]["dists"][name] = dist
        for table, slot, only in (("trial_user_attributes", "user", keys), ("trial_system_attributes", "system", None)):
            if only is not None and not only:
                continue
            among = "" if only is None else f" AND a.{{key}} IN ({', '.join('?' * len(only))})"
            for trial_id, key, value_json in children(
                f"SELECT a.trial_id, a.{{key}}, a.value_json FROM {table} a JOIN trials t ON t.trial_id = a.trial_id WHERE {{where}}{among}", only or ()
            ):
                fields[trial_id][slot][key] = json.loads(value_json)
        for trial_id, step, value, kind in children(
            "SELECT i.trial_id, i.step, i.intermediate_value, i.intermediate_value_type FROM trial_intermediate_values i "
            "JOIN trials t ON t.trial_id = i.trial_id WHERE {where}"
        ) if intermediate else ():
            fields[trial_id]["steps"][step] = value if kind == "FINITE" else _SPECIAL[kind]
    out = []
    for trial_id, f in fields.items():
        values = [f["values"][i] for i in range(len(f["values"]))] if f["values"] else None
        out.append(
            FrozenTrial(
                number=f["number"], state=f["state"], value=None, values=values, datetime_start=f["start"], datetime_complete=f["complete"],
                params=f["params"], distributions=f["dists"], user_attrs=f["user"], system_attrs=f["system"],
                intermediate_values=f["steps"], trial_id=trial_id,
            )  # fmt: skip
        )
    return out
