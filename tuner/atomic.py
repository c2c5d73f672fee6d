"""Files written whole or not at all: one helper for every file tuner writes (reports, exports,
saved models, spaces, benchmark figures)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tuner.errors import TunerError

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(path: Path, *, error: type[TunerError] = TunerError, hint: str = "") -> Iterator[Path]:
    """A temporary file beside `path` for the block to write; it replaces `path` when the block
    ends, so a reader sees the old file or the new one, never half of one. If the block raises,
    the temporary file is removed and `path` is left as it was. A write the system refuses (a
    folder in the way, no permission, a full disk) is `error`: `cannot write PATH: why` + `hint`."""
    path = Path(path)
    tmp: Path | None = None
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # unique: writers never share one
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror or e}{hint}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
