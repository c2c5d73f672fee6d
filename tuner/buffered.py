"""Write-behind storage for the trials this worker runs: the service cost of a trial, made small.

Optuna's RDB storage commits every parameter, every epoch's value and every attribute on its own,
and its pruners reload the study's trials at every epoch. On a digits trial of about 100 ms that
is as much time again. This wrapper keeps what a running trial writes in memory and commits it in
one transaction: when the trial ends (before its state changes), and at most every `flush_s`
seconds while it runs, so the dashboard and other workers still see it live. Reads of the whole
study (pruners, samplers) are served from a snapshot at most `refresh_s` old, always overlaid with
this worker's own unflushed writes; queries for queued (WAITING) trials always go to the database,
so claiming queued trials stays exact.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

__all__ = ["BufferedStorage"]


@dataclass
class _Pending:
    params: dict[str, tuple[float, BaseDistribution]] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    last_flush: float = field(default_factory=time.monotonic)

    def empty(self) -> bool:
        return not (self.params or self.intermediate or self.user_attrs or self.system_attrs)


def _write(rdb: optuna.storages.RDBStorage, trial_id: int, pending: _Pending) -> None:
    """Bulk-insert a running trial's params, intermediate values and attributes (rows Optuna's own
    readers understand: the same tables and encodings as RDBStorage writes one at a time)."""
    import json

    import sqlalchemy
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(rdb.scoped_session, True) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        rdb.check_trial_is_updatable(trial_id, trial.state)  # another worker may have failed it as stale
        if pending.params:
            rows = [
                {"trial_id": trial_id, "param_name": name, "param_value": value, "distribution_json": distribution_to_json(dist)}
                for name, (value, dist) in pending.params.items()
            ]
            session.execute(sqlalchemy.insert(models.TrialParamModel), rows)
        if pending.intermediate:
            rows = []
            for step, value in pending.intermediate.items():
                stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
                rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind})
            session.execute(sqlalchemy.insert(models.TrialIntermediateValueModel), rows)
        for model, attrs in (
            (models.TrialUserAttributeModel, pending.user_attrs),
            (models.TrialSystemAttributeModel, pending.system_attrs),
        ):
            if attrs:  # a key written again replaces its earlier value
                session.execute(sqlalchemy.delete(model).where(model.trial_id == trial_id, model.key.in_(list(attrs))))
                rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
                session.execute(sqlalchemy.insert(model), rows)


class BufferedStorage(BaseStorage, BaseHeartbeat):
    def __init__(self, inner: BaseStorage, rdb: optuna.storages.RDBStorage, *, flush_s: float = 2.0, refresh_s: float = 1.0) -> None:
        self._inner = inner  # Optuna's cached RDB storage
        self._rdb = rdb  # the RDB storage under it, for the one-transaction flush
        self._flush_s = flush_s
        self._refresh_s = refresh_s
        self._lock = threading.RLock()  # the heartbeat thread flushes too
        self._pending: dict[int, _Pending] = {}  # trial id -> unflushed writes of a trial we run
        self._mine_now: dict[int, FrozenTrial] = {}  # trial id -> our running trial, kept current here
        self._snapshot: dict[int, tuple[float, list[FrozenTrial]]] = {}  # study id -> (time, trials)

    # -- the trials we run --------------------------------------------------------------------

    def _mine(self, trial_id: int) -> _Pending | None:
        return self._pending.get(trial_id)

    def own(self, trial: FrozenTrial) -> None:
        """Buffer this trial's writes from now on (it was just claimed by this worker); reads of it
        are served from memory, since only this worker writes to it."""
        with self._lock:
            self._pending[trial._trial_id] = _Pending()
            self._mine_now[trial._trial_id] = copy.deepcopy(trial)

    def flush(self, trial_id: int) -> None:
        """Commit the trial's buffered writes in one transaction: one statement per table."""
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is None or pending.empty():
                return
            _write(self._rdb, trial_id, pending)
            self._pending[trial_id] = _Pending()

    def _maybe_flush(self, trial_id: int, pending: _Pending) -> None:
        if time.monotonic() - pending.last_flush >= self._flush_s:
            self.flush(trial_id)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution) -> None:
        with self._lock:
            pending = self._mine(trial_id)
            if pending is None:
                return self._inner.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            pending.params[param_name] = (param_value_internal, distribution)
            mine = self._mine_now[trial_id]
            mine.params[param_name] = distribution.to_external_repr(param_value_internal)
            mine.distributions[param_name] = distribution

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._lock:
            pending = self._mine(trial_id)
            if pending is None:
                return self._inner.set_trial_intermediate_value(trial_id, step, intermediate_value)
            pending.intermediate[step] = intermediate_value
            self._mine_now[trial_id].intermediate_values[step] = intermediate_value
            self._maybe_flush(trial_id, pending)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            pending = self._mine(trial_id)
            if pending is None:
                return self._inner.set_trial_user_attr(trial_id, key, value)
            pending.user_attrs[key] = value
            self._mine_now[trial_id].user_attrs[key] = value

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            pending = self._mine(trial_id)
            if pending is None:
                return self._inner.set_trial_system_attr(trial_id, key, value)
            pending.system_attrs[key] = value
            self._mine_now[trial_id].system_attrs[key] = value

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        with self._lock:
            if state.is_finished() and trial_id in self._pending:
                self.flush(trial_id)
                del self._pending[trial_id]
                del self._mine_now[trial_id]
            self._snapshot.clear()
        return self._inner.set_trial_state_values(trial_id, state, values)

    def _overlay(self, trial: FrozenTrial) -> FrozenTrial:
        """Our own running trial as we know it (the database lags behind until the next flush)."""
        return self._mine_now.get(trial._trial_id, trial)

    # -- reads --------------------------------------------------------------------------------

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            if trial_id in self._mine_now:
                return copy.deepcopy(self._mine_now[trial_id])
        return self._inner.get_trial(trial_id)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if states is not None and TrialState.WAITING in states:
            # claims stay exact: queued trials are always read from the database, and only when
            # a cheap count says there are any (Study.ask looks on every trial)
            from tuner.storage import count_states

            if tuple(states) == (TrialState.WAITING,) and not count_states(self._rdb, study_id)[TrialState.WAITING]:
                return []
            return self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        with self._lock:
            taken, trials = self._snapshot.get(study_id, (0.0, []))
            if time.monotonic() - taken > self._refresh_s:
                trials = self._inner.get_all_trials(study_id, deepcopy=False)
                self._snapshot[study_id] = (time.monotonic(), trials)
            out = [self._overlay(t) for t in trials if states is None or t.state in states]
        return copy.deepcopy(out) if deepcopy else out

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.get_trial(trial_id).system_attrs

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.get_trial(trial_id).user_attrs

    # -- everything else goes straight through ----------------------------------------------

    def create_new_study(self, directions: Sequence[Any], study_name: str | None = None) -> int:
        return self._inner.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._inner.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._inner.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._inner.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._inner.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._inner.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[Any]:
        return self._inner.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._inner.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._inner.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:
        return self._inner.get_all_studies()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        self._snapshot.clear()
        return self._inner.create_new_trial(study_id, template_trial)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._inner.get_best_trial(study_id)

    def remove_session(self) -> None:
        self._inner.remove_session()

    # heartbeats: the dead-worker detection works on the database as it is
    def record_heartbeat(self, trial_id: int) -> None:
        with self._lock:
            pending = self._pending.get(trial_id)
            if pending is not None:
                self._maybe_flush(trial_id, pending)
        self._inner.record_heartbeat(trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._inner._get_stale_trial_ids(study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self._inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self._inner.get_heartbeat_stale_trial_callback()
