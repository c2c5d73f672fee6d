"""Serve optuna-dashboard on a study storage; loopback unless the person asks for another address."""

from __future__ import annotations

import sys

from tuner.errors import TunerError
from tuner.storage import mask, open_storage, resolve_url

__all__ = ["serve"]


def serve(storage_url: str | None, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    import optuna_dashboard

    url = resolve_url(storage_url)
    storage = open_storage(url)
    print(f"optuna-dashboard for {mask(url)} at http://{host}:{port}/ (Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        optuna_dashboard.run_server(storage, host=host, port=port)
    except OSError as e:
        raise TunerError(f"cannot serve on {host}:{port}: {e.strerror or e}; pick another --port") from None
