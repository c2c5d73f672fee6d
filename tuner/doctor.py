"""`tuner doctor`: what this installation runs on, and which fast paths are on (tuner._compat)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from tuner.errors import StorageError

__all__ = ["diagnose"]

_PACKAGES = ("torch", "optuna", "sqlalchemy", "optuna-dashboard", "typer")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def diagnose(storage_url: str | None) -> dict[str, Any]:
    """Versions, devices, the storage (when it exists) and every fast path, on or off and why.
    Optuna's schema is checked on the storage's own tables where there is one."""
    import torch

    from tuner import __version__
    from tuner._compat import fast_paths
    from tuner.storage import mask, open_storage, resolve_url

    url = resolve_url(storage_url)
    try:
        rdb = open_storage(url)
        where = mask(url)
    except StorageError as e:  # Optuna's schema head is the same in any storage: judge it on an empty one
        rdb, where = open_storage("sqlite:///:memory:"), f"{mask(url)} not opened ({e})"
    cuda = torch.cuda.is_available()
    devices = "cpu" + (f", {torch.cuda.device_count()} CUDA device(s): {torch.cuda.get_device_name(0)}" if cuda else " (no CUDA device)")
    return {
        "versions": {"tuner": __version__, "python": platform.python_version(), **{p: _version(p) for p in _PACKAGES}},
        "devices": devices,
        "storage": where,
        "fast_paths": [vars(p) for p in fast_paths(rdb=rdb)],
    }
