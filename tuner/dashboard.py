"""Serve optuna-dashboard on a study storage, with its artifact store; loopback unless the person
asks for another address."""

from __future__ import annotations

import abc
import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna.storages import BaseStorage

from tuner.errors import TunerError
from tuner.metrics import feasible
from tuner.storage import DEFAULT_ARTIFACTS, mask, open_storage, resolve_url

__all__ = ["ConstraintsShown", "serve"]


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
    app = optuna_dashboard.wsgi(ConstraintsShown(storage), artifact_store=FileSystemArtifactStore(artifacts))
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


class ConstraintsShown(BaseStorage):
    """The storage as optuna-dashboard should read it where trials have constraints. Optuna 5's
    `Trial.set_constraint` stores each under its own key ("constraints:params<=20000"); the
    dashboard (0.21) reads only the older list ("constraints"), so it would draw an infeasible
    trial as feasible, and its best trial of one metric is the storage's, which ignores
    constraints. Trials are handed to it with the list added, and the best trial is the best
    feasible one, as Optuna's Study.best_trial has it. (Its Pareto front card of a study with
    several metrics still ignores constraints, optuna-dashboard#772; its plot marks them.)
    Everything else is the storage itself."""

    def __init__(self, storage: BaseStorage) -> None:
        import threading

        from tuner.sql import TrialReads
        from tuner.storage import sql_rdb

        self._storage = storage
        self._rdb = sql_rdb(storage)  # None where tuner's SQL does not fit the schema: Optuna's reads then
        self._lock = threading.Lock()
        self._read = TrialReads(shown=_listed, recount=True)  # another process may delete and remake a study

    def __getattr__(self, name: str) -> Any:  # what the storage has beyond BaseStorage's methods
        return getattr(self._storage, name)

    def get_trial(self, trial_id: int) -> Any:
        return _listed(self._storage.get_trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[Any]:
        """optuna-dashboard reads every trial of a study every few seconds while its page is open.
        Optuna's reader builds 100,000 trials in minutes; this one reads them once with tuner's SQL
        (tuner.sql.read_trials) and then only the new and the unfinished ones, the finished never
        changing."""
        if self._rdb is None:
            return [_listed(t) for t in self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)]
        with self._lock:
            trials = self._read.trials(self._rdb, study_id)
        return trials if states is None else [t for t in trials if t.state in states]

    def delete_study(self, study_id: int) -> None:
        self._storage.delete_study(study_id)
        with self._lock:
            self._read.forget(study_id)

    def get_best_trial(self, study_id: int) -> Any:
        from optuna.study import StudyDirection
        from optuna.trial import TrialState

        best = self._storage.get_best_trial(study_id)
        if feasible(best):
            return _listed(best)
        met = [t for t in self._storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
        if not met:
            return _listed(best)  # nothing feasible yet: the dashboard still shows the best there is
        maximize = self._storage.get_study_directions(study_id)[0] == StudyDirection.MAXIMIZE
        return _listed(max(met, key=lambda t: t.value) if maximize else min(met, key=lambda t: t.value))


def _delegate(name: str) -> Any:
    def method(self: ConstraintsShown, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._storage, name)(*args, **kwargs)

    method.__name__ = name
    return method


# every other method of BaseStorage is the storage's own (its fast versions too, not BaseStorage's generic ones)
for _name, _member in vars(BaseStorage).items():
    if callable(_member) and not _name.startswith("_") and _name not in vars(ConstraintsShown):
        setattr(ConstraintsShown, _name, _delegate(_name))
abc.update_abstractmethods(ConstraintsShown)


def _listed(trial: Any) -> Any:
    """The trial with its constraints also as the list optuna-dashboard reads (a copy; the original
    may be a storage's cached trial)."""
    import copy

    constraints = trial.constraints
    if not constraints or "constraints" in trial.system_attrs:
        return trial
    shown = copy.copy(trial)
    shown._system_attrs = {**trial.system_attrs, "constraints": list(constraints.values())}
    return shown
