"""What every launcher checks before it starts workers elsewhere: the study's name, and a storage
that other hosts can share."""

from __future__ import annotations

import subprocess

from tuner.errors import StorageError
from tuner.urls import backend, mask

__all__ = ["last_line", "require_postgresql"]


def require_postgresql(url: str, *, launcher: str, where: str) -> None:
    """Workers started by a scheduler run on hosts of its choosing: they can share a PostgreSQL
    server, never a SQLite file (a file on this host, and a lock that only works on one)."""
    kind = backend(url)
    if kind == "postgresql":
        return
    why = "SQLite is a file on this host" if kind == "sqlite" else f"tuner shares a study across hosts through PostgreSQL, not {kind or 'this'}"
    raise StorageError(
        f"tuner launch {launcher} needs a PostgreSQL storage, but got {mask(url)}: {where}, and {why}; "
        "pass --storage postgresql+psycopg://USER@HOST:5432/DB (or set TUNER_STORAGE)"
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    """What a failed tool said last (its error, as a rule), or its exit code."""
    lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {result.returncode}"
