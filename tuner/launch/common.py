"""What every launcher checks before it starts workers elsewhere: the study's name, and a storage
that other hosts can share."""

from __future__ import annotations

import subprocess

from tuner.errors import SpecError, StorageError
from tuner.spec import check_study_name
from tuner.urls import backend, mask

__all__ = ["check_workers", "last_line", "require_postgresql"]


def check_workers(study: str, *, n_workers: int, gpus_per_worker: int, cpus_per_worker: int) -> None:
    """What every launcher's workers need: a valid study name, and counts that can be scheduled."""
    check_study_name(study)
    if n_workers < 1:
        raise SpecError(f"--workers must be at least 1, got {n_workers}")
    if gpus_per_worker < 0:
        raise SpecError(f"--gpus-per-worker must be 0 or more, got {gpus_per_worker}")
    if cpus_per_worker < 1:
        raise SpecError(f"--cpus-per-worker must be at least 1, got {cpus_per_worker}")


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
