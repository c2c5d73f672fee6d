"""Serve optuna-dashboard on a study storage, with its artifact store; loopback unless the person
asks for another address."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner.errors import TunerError
from tuner.storage import DEFAULT_ARTIFACTS, mask, open_storage, resolve_url

__all__ = ["serve"]


def serve(
    storage_url: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifacts: Path = DEFAULT_ARTIFACTS,
) -> None:
    """Serve the dashboard until Ctrl-C. Files uploaded with `optuna.artifacts.upload_artifact` to a
    `FileSystemArtifactStore(artifacts)` are linked from their trial's or study's page."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    url = resolve_url(storage_url)
    storage = open_storage(url)
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TunerError(f"cannot use {artifacts} for artifacts: {e.strerror or e}; pass another --artifacts") from None
    app = optuna_dashboard.wsgi(storage, artifact_store=FileSystemArtifactStore(artifacts))
    # Bind before saying anything (optuna_dashboard.run_server prints bottle's banner first), so a
    # taken port is one line of error and nothing else.
    try:
        server = make_server(host, port, app, _server_class(host), _QuietHandler)
    except OSError as e:
        raise TunerError(f"cannot serve on {host}:{port}: {e.strerror or e}; pick another --port or --host") from None
    address = f"[{host}]" if ":" in host else host
    print(
        f"optuna-dashboard for {mask(url)} at http://{address}:{port}/ (artifacts: {artifacts}; Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )
    if not _is_loopback(host):
        print(f"warning: listening on {host}: anyone who reaches this host on port {port} can read and change the studies",
              file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a person stops a server, not a failure
    finally:
        server.server_close()


class _QuietHandler(WSGIRequestHandler):
    def address_string(self) -> str:
        return self.client_address[0]  # no reverse DNS lookup per request

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the dashboard polls every few seconds: an access log would drown the errors


def _server_class(host: str) -> type[WSGIServer]:
    if ":" not in host:
        return WSGIServer

    class _IPv6Server(WSGIServer):
        address_family = socket.AF_INET6

    return _IPv6Server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
