"""tuner/storage.py: the study lock, storage URLs, PostgreSQL directly and behind PgBouncer."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tuner.storage import StudyLock, open_storage


def _blocked_on_the_lock(kind: str, url: str, lock_path: Path, failed_tries: list[int]):
    """A check that the other holder is waiting for the lock now (not merely not yet scheduled):
    the kernel's list of blocked flock waiters, PostgreSQL's ungranted advisory locks, or, behind
    PgBouncer where a waiter polls, a try that failed."""
    if kind == "sqlite":
        def check() -> bool:
            inode = lock_path.stat().st_ino
            return any("->" in line and line.split()[-3].endswith(f":{inode}") for line in Path("/proc/locks").read_text().splitlines())
        return check
    if kind.startswith("pgbouncer"):
        return lambda: failed_tries[0] > 0
    import sqlalchemy

    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    def check() -> bool:
        with admin.connect() as conn:
            return bool(conn.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").scalar())
    return check


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "postgresql, the storage's engine", "pgbouncer", "pgbouncer, the storage's engine"])
def test_the_study_lock_excludes_other_holders_claim_after_claim(kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import tuner.storage

    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'study.db'}"
    else:
        url = request.getfixturevalue("pgbouncer_url").url if kind.startswith("pgbouncer") else request.getfixturevalue("pg_url")
    failed_tries = [0]  # behind PgBouncer a waiter sleeps after each failed try
    real_sleep = time.sleep

    def counted_sleep(seconds: float) -> None:
        failed_tries[0] += 1
        real_sleep(seconds)

    monkeypatch.setattr(tuner.storage, "time", type("T", (), {"sleep": staticmethod(counted_sleep), "monotonic": staticmethod(time.monotonic)}))
    engines = [open_storage(url, create=True).engine for _ in range(2)] if "engine" in kind else [None, None]
    mine, other = (StudyLock(url, "s", engine=e) for e in engines)  # as two workers hold them
    blocked = _blocked_on_the_lock(kind, url, tmp_path / "study.db.lock", failed_tries)
    try:
        for _ in range(3):  # the same lock, held claim after claim
            got = threading.Event()
            failed_tries[0] = 0

            def take() -> None:
                with other.held():
                    got.set()

            with mine.held():
                waiter = threading.Thread(target=take)
                waiter.start()
                deadline = time.monotonic() + 60
                while not blocked():  # the other holder is inside held(), waiting
                    assert time.monotonic() < deadline and not got.is_set(), "another holder got the lock while it was held"
                    real_sleep(0.01)
                assert not got.is_set(), "another holder got the lock while it was held"
            waiter.join(60)
            assert got.is_set()
    finally:
        mine.close()
        other.close()
        for engine in engines:
            if engine is not None:
                engine.dispose()


@pytest.mark.parametrize(
    "url, said",
    [
        ("sqlit:///x.db", "unknown database 'sqlit'; did you mean sqlite?"),
        ("postgres://u:secret@h/db", "SQLAlchemy spells it postgresql, not postgres; use postgresql+psycopg://u:***@h/db"),
        ("sqlite://studies/tuner.db", "this one has two, which makes 'studies' a host"),
    ],
)
def test_a_mistyped_storage_url_says_the_right_form_and_where_it_came_from(project, cli, monkeypatch, url: str, said: str) -> None:
    r = cli("study", "list", "--storage", url)
    assert r.code == 1 and said in r.err and "secret" not in r.err and "plugin" not in r.err
    monkeypatch.setenv("TUNER_STORAGE", url)
    r = cli("study", "list")
    assert r.code == 1 and "(from TUNER_STORAGE)" in r.err and said in r.err
    assert not list(Path(".").glob("studies/*.db"))


def test_no_database_says_where_tuner_looked(project, cli) -> None:
    r = cli("study", "list", "--storage", "sqlite:///elsewhere/x.db")
    assert r.code == 1 and f"no studies yet: {Path('elsewhere/x.db').resolve()} does not exist" in r.err


def test_behind_pgbouncer_no_statement_is_prepared_and_no_startup_option_sent(pgbouncer_url) -> None:
    """PgBouncer refuses the startup `options` (tuner's synchronous_commit=off), and in
    transaction pooling psycopg's prepared statements (a query run 5 times on a connection) meet
    server connections that lack them or already have them: three storages asking in turn, as
    workers do, each statement in a transaction of its own, one of them holding a transaction
    open meanwhile (as the study lock does), so that each lands on changing server connections."""
    storages = [open_storage(pgbouncer_url.url, create=True) for _ in range(3)]

    def ask(rdb: Any, i: int) -> None:
        cur = conn_of[rdb].connection.dbapi_connection.cursor()
        cur.execute("SELECT %s::int", (i,))
        assert cur.fetchone() == (i,)

    try:
        for i in range(12):
            holder = storages[i % 3]
            with holder.engine.begin() as held:
                conn_of = {holder: held}
                ask(holder, i)
                for rdb in storages:
                    if rdb is not holder:
                        with rdb.engine.begin() as conn_of[rdb]:
                            ask(rdb, i)
    finally:
        for rdb in storages:
            rdb.engine.dispose()
    assert "prepared statement" not in pgbouncer_url.log.read_text()


@pytest.mark.parametrize(
    "url, said",
    [
        ("postgresql+psycopg://u@h/db?pgbouncer=session", "pgbouncer='session' is not known; use ?pgbouncer=transaction behind PgBouncer's pool_mode = transaction"),
        ("sqlite:///studies/tuner.db?pgbouncer=transaction", "?pgbouncer= is for PostgreSQL URLs; remove it"),
    ],
)
def test_the_pgbouncer_option_takes_transaction_on_postgresql_only(project, cli, url: str, said: str) -> None:
    r = cli("study", "list", "--storage", url)
    assert r.code == 1 and said in r.err and len(r.err.strip().splitlines()) == 1
