"""Storage URLs without the database libraries: the defaults, which URL a command uses, and
passwords masked. Light on purpose: `tuner --help` and the CLI's option defaults import it, and
SQLAlchemy and Optuna (a quarter of a second) load only when a command opens a storage."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["DEFAULT_ARTIFACTS", "DEFAULT_STORAGE", "backend", "mask", "mask_text", "resolve_url"]

DEFAULT_STORAGE = "sqlite:///studies/tuner.db"
# Files attached to studies and trials (retrained models, command trials' logs) live here,
# linked from the dashboard.
DEFAULT_ARTIFACTS = Path("studies/artifacts")


def resolve_url(url: str | None) -> str:
    """--storage, else TUNER_STORAGE, else the embedded SQLite file in studies/."""
    return url or os.environ.get("TUNER_STORAGE") or DEFAULT_STORAGE


def backend(url: str) -> str | None:
    """The database a URL names ('sqlite', 'postgresql', ...), or None if it is not a URL."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).get_backend_name()
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None


def mask(url: str) -> str:
    """The URL with any password replaced by ***, for every message and stored attribute."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return mask_text(url)


def mask_text(text: str) -> str:
    """user:secret@host masked in something SQLAlchemy could not parse."""
    return re.sub(r"(//[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
