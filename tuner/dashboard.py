"""Serve optuna-dashboard on a study storage, with its artifact store; loopback unless the person
asks for another address."""

from __future__ import annotations

import abc
import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna.storages import BaseStorage

from tuner.errors import TunerError
from tuner.metrics import feasible
from tuner.sql import TrialReads, best_trial_id, count_trials
from tuner.storage import DEFAULT_ARTIFACTS, mask, open_storage, resolve_url, sql_rdb

__all__ = ["DEFAULT_WINDOW", "DashboardView", "serve"]

# trials of a large study served to the page (its latest, with the best before them): the page's
# own work grows faster than its trials (figures in docs/studies.md, "Large studies")
DEFAULT_WINDOW = 2_000


def serve(
    storage_url: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifacts: Path = DEFAULT_ARTIFACTS,
    window: int = DEFAULT_WINDOW,
) -> None:
    """Serve the dashboard until Ctrl-C. Files uploaded with `optuna.artifacts.upload_artifact` to a
    `FileSystemArtifactStore(artifacts)` are linked from their trial's or study's page. A study of
    more than `window` trials (0: no limit) is shown as its latest `window` and its best before
    them (DashboardView)."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    url = resolve_url(storage_url)
    storage = open_storage(url)
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TunerError(f"cannot use {artifacts} for artifacts: {e.strerror or e}; pass another --artifacts") from None
    app = optuna_dashboard.wsgi(DashboardView(storage, window=window or None), artifact_store=FileSystemArtifactStore(artifacts))
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


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class DashboardView(BaseStorage):
    """The storage as optuna-dashboard should read it.

    Large studies: optuna-dashboard asks for every trial of a study every few seconds while its
    page is open, and builds its page from all of them: 385 MB of JSON and a page still loading
    after minutes at 100,000 trials. So a study that holds more than `window` trials when the
    page first asks is handed as its latest `window` trials, every trial after them, and the best
    of the trials before them (the best and the Pareto front, of all and of the feasible ones:
    tuner.sql.front_before). The page's best trial, Pareto front and ranges are then the whole
    study's; its history and tables show the recent trials. The window is chosen once a study
    and server (the page asks for "the trials after the first N it holds", so the list must only
    grow), and each windowed study is named on stderr.

    Constraints: Optuna 5's `Trial.set_constraint` stores each under its own key
    ("constraints:params<=20000"); the dashboard (0.21) reads only the older list ("constraints"),
    so it would draw an infeasible trial as feasible, and its best trial of one metric is the
    storage's, which ignores constraints. Trials are handed to it with the list added, and the
    best trial is the best feasible one, as Optuna's Study.best_trial has it. (Its Pareto front
    card of a study with several metrics still ignores constraints, optuna-dashboard#772; its
    plot marks them.) Everything else is the storage itself."""

    def __init__(self, storage: BaseStorage, *, window: int | None = None, say: Callable[[str], None] = _to_stderr) -> None:
        import threading

        self._storage = storage
        self._rdb = sql_rdb(storage)  # None where tuner's SQL does not fit the schema: Optuna's reads (every trial) then
        self._lock = threading.Lock()
        self._read = TrialReads(shown=_listed, recount=True, window=window)  # another process may delete and remake a study
        self._said: set[tuple[int, int]] = set()  # (study id, window's first number) already named on stderr
        self._say = say

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
            self._name_window(study_id)
        return trials if states is None else [t for t in trials if t.state in states]

    def _name_window(self, study_id: int) -> None:
        """Say once on stderr which trials of a windowed study the page shows."""
        window = self._read.window_of(study_id)
        if window is None or (study_id, window[1]) in self._said:
            return
        self._said.add((study_id, window[1]))
        n_read, first, n_kept = window
        self._say(
            f"study {self._storage.get_study_name_from_id(study_id)!r}: the dashboard shows its trials from #{first} on "
            f"({n_read - n_kept:,} now) and {n_kept} best before them, of {count_trials(self._rdb, study_id):,}; "
            "`tuner dashboard --window 0` shows every trial"
        )

    def delete_study(self, study_id: int) -> None:
        self._storage.delete_study(study_id)
        with self._lock:
            self._read.forget(study_id)

    def get_best_trial(self, study_id: int) -> Any:
        from optuna.study import StudyDirection
        from optuna.trial import TrialState

        if self._rdb is not None:  # one query, not every trial (the page asks at each poll)
            maximize = self._storage.get_study_directions(study_id)[0] == StudyDirection.MAXIMIZE
            best_id = best_trial_id(self._rdb, study_id, maximize=maximize)
            if best_id is not None:
                return _listed(self._storage.get_trial(best_id))
        best = self._storage.get_best_trial(study_id)
        if feasible(best):
            return _listed(best)
        met = [t for t in self._storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
        if not met:
            return _listed(best)  # nothing feasible yet: the dashboard still shows the best there is
        maximize = self._storage.get_study_directions(study_id)[0] == StudyDirection.MAXIMIZE
        return _listed(max(met, key=lambda t: t.value) if maximize else min(met, key=lambda t: t.value))


def _delegate(name: str) -> Any:
    def method(self: DashboardView, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._storage, name)(*args, **kwargs)

    method.__name__ = name
    return method


# every other method of BaseStorage is the storage's own (its fast versions too, not BaseStorage's generic ones)
for _name, _member in vars(BaseStorage).items():
    if callable(_member) and not _name.startswith("_") and _name not in vars(DashboardView):
        setattr(DashboardView, _name, _delegate(_name))
abc.update_abstractmethods(DashboardView)


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
