"""Riding out a database outage: a server restart, a failover, a PgBouncer restart, a network
blip, SQLite locked past its busy timeout, a disk that is full or read-only.

A worker that loses its database says so once on stderr and keeps training the trial it has: its
writes stay buffered (tuner.buffered), reads during training are served from what it last read,
and heartbeats are tried again every second. What cannot wait (a claim, a trial's end) is tried
again with backoff for up to `retry_for_s` (--db-retry-for, TUNER_DB_RETRY_FOR; 10 minutes by
default). A write whose commit may or may not have landed is checked, not repeated blindly (see
tuner.sql: a trial's end is recognized by its completion time, a claim by the worker's identity).
When the database answers again the worker says so and goes on where it was; when the time runs
out it stops with one line (DatabaseGone), and `tuner study resume` finishes the study.

One Outage per process (OUTAGE), shared by the worker's thread and its heartbeat thread.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy

from tuner.errors import StorageError

__all__ = ["DEFAULT_RETRY_FOR_S", "ENV", "OUTAGE", "DatabaseGone", "Lost", "Outage", "retry_for_from", "transient"]

DEFAULT_RETRY_FOR_S = 600.0  # a managed database's maintenance window or a failover, not a blip only
ENV = "TUNER_DB_RETRY_FOR"
_BACKOFF_S = (0.1, 2.0)  # the first and the longest wait between tries, jittered

T = TypeVar("T")

# SQLite's words for a condition that may pass (another process's lock, a disk freed or remounted)
_SQLITE_WAIT = {
    "database is locked": "the database is locked by another process (longer than SQLite's busy timeout)",
    "database table is locked": "the database is locked by another process (longer than SQLite's busy timeout)",
    "attempt to write a readonly database": "the database file or its folder is read-only",
    "database or disk is full": "the disk holding the database is full",
    "disk i/o error": "the disk holding the database failed a read or write (as a full disk or a file-size limit makes it)",
    "unable to open database file": "the database file cannot be opened",
}


class DatabaseGone(StorageError):
    """The database did not answer within --db-retry-for: the worker stops, the study is intact up
    to its last committed write. Its own exit code (EX_TEMPFAIL), so a parent tells it apart from
    a worker's error: a new worker would only wait again."""

    exit_code = 75


class Lost(Exception):
    """A transient failure inside an `atomic` block: the block is retried as a whole (a claim made
    under the study lock must be made again under it, not finished after the lock was lost)."""


def transient(exc: BaseException) -> str | None:
    """The database's own words if `exc` (or what it was raised from) is a lost connection or a
    condition worth waiting out, else None: a bad query or a broken schema is not retried."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        said = _transient_one(e)
        if said is not None:
            return said
        e = e.__cause__ or e.__context__
    return None


def _words(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return next((line.strip() for line in text if line.strip()), e.__class__.__name__)


def _transient_one(e: BaseException) -> str | None:
    if isinstance(e, sqlite3.OperationalError):
        message = str(e).lower()
        return next((why for words, why in _SQLITE_WAIT.items() if words in message), None)
    if isinstance(e, sqlalchemy.exc.DBAPIError):
        if isinstance(e.orig, sqlite3.Error):
            return _transient_one(e.orig)
        if e.connection_invalidated or isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return _words(e)
        return None
    if isinstance(e, sqlalchemy.exc.TimeoutError):  # every pooled connection busy, past the pool's wait
        return _words(e)
    module = type(e).__module__ or ""
    if module.startswith("psycopg") and type(e).__name__ in ("OperationalError", "InterfaceError") or any(
        c.__module__.startswith("psycopg") and c.__name__ in ("OperationalError", "InterfaceError") for c in type(e).__mro__
    ):
        return _words(e)
    if isinstance(e, OSError) and e.errno in (28, 30):  # ENOSPC, EROFS: the lock file beside a SQLite database
        return e.strerror or str(e)
    return None


def retry_for_from(value: str | float | None) -> float:
    """--db-retry-for, else TUNER_DB_RETRY_FOR, else the default: seconds ("90s", "15m", "2h")."""
    from tuner.stopping import parse_duration

    if value is not None:
        return parse_duration(value, what="--db-retry-for")
    env = os.environ.get(ENV)
    return parse_duration(env, what=ENV) if env else DEFAULT_RETRY_FOR_S


class Outage:
    """This process's view of its database: answering, or out since when and why."""

    def __init__(self, retry_for_s: float = DEFAULT_RETRY_FOR_S, *, say: Callable[[str], None] | None = None) -> None:
        self.retry_for_s = retry_for_s
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._local = threading.local()
        self.began: float | None = None  # monotonic time the current outage began; None while answering
        self.reason = ""
        self.ended_at = -float("inf")  # when the last outage ended
        self.n_outages = 0

    def configure(self, retry_for_s: float) -> None:
        self.retry_for_s = retry_for_s

    # -- noticing ------------------------------------------------------------------------------

    def failed(self, exc: BaseException) -> bool:
        """Whether `exc` is an outage (and if so it is noted, and said on its first sight)."""
        reason = exc.args[0] if isinstance(exc, Lost) else transient(exc)
        if reason is None:
            return False
        with self._lock:
            if self.began is None:
                self.began, self.reason = time.monotonic(), reason
                self.n_outages += 1
                self._say(
                    f"tuner: lost the database ({reason}); training goes on and its writes wait, "
                    f"retrying for up to {_show(self.retry_for_s)} (--db-retry-for)"
                )
        return True

    def answered(self) -> None:
        """The database answered: an outage, if there was one, is over."""
        if self.began is None:  # the usual case, without the lock
            return
        with self._lock:
            if self.began is not None:
                self._say(f"tuner: the database is back after {time.monotonic() - self.began:.1f}s; going on")
                self.began, self.ended_at = None, time.monotonic()

    def settling(self, grace_s: float) -> bool:
        """Whether an outage is on or ended less than `grace_s` ago: other workers' heartbeats
        could not land meanwhile, so their silence says nothing about whether they live."""
        return self.began is not None or time.monotonic() - self.ended_at < grace_s

    # -- waiting -------------------------------------------------------------------------------

    def wait(self, attempt: int) -> None:
        """Sleep before try `attempt` + 1, or raise DatabaseGone once the outage is older than
        retry_for_s."""
        began = self.began if self.began is not None else time.monotonic()
        out_for = time.monotonic() - began
        if out_for >= self.retry_for_s:
            raise DatabaseGone(
                f"the database did not answer for {_show(out_for)} (--db-retry-for {_show(self.retry_for_s)}): {self.reason}"
            )
        pause = min(_BACKOFF_S[1], _BACKOFF_S[0] * 2**attempt) * random.uniform(0.5, 1.0)
        time.sleep(min(pause, max(0.0, self.retry_for_s - out_for) + 0.01))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs), tried again through an outage (inside an `atomic` block, the
        block is: Lost is raised instead). Not for writes that may commit twice: those check."""
        attempt = 0
        while True:
            try:
                out = fn(*args, **kwargs)
            except Lost:
                raise
            except Exception as e:
                if not self.failed(e):
                    raise
                if self.in_atomic:
                    raise Lost(self.reason) from e
                self.wait(attempt)
                attempt += 1
                continue
            self.answered()
            return out

    @property
    def in_atomic(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """A block that must run whole under one hold of a lock: a failure inside it raises Lost
        for the caller to retry the block, rather than a retry inside it."""
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1


def _show(seconds: float) -> str:
    from tuner.stopping import show_duration

    return show_duration(seconds) if seconds >= 1 else f"{seconds:.1f}s"


OUTAGE = Outage()
