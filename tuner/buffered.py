"""Write-behind storage for the trials this worker runs: the service cost of a trial, made small.

Optuna's RDB storage commits every parameter, every epoch's value and every attribute on its own,
reloads a trial from the database each time it is asked for one, and its pruners reload the
study's trials at every epoch. On a digits trial of about 100 ms that is as much time again. This
wrapper gives a trial this worker runs three transactions: its claim counts the study's trials
and creates it with its first heartbeat (`claim`), one makes its configuration durable before
training (`flush`), and one writes everything else with its final state. While it runs, its writes stay in memory and are committed
at most every `flush_s` seconds, so the dashboard and other workers still see it live; reads of it
are served from memory, and so are reads of the trials it has finished (a finished trial never
changes). Reads of the whole study (pruners, samplers) come from a snapshot of the other
workers' trials at most `refresh_s` old, kept current with this worker's own trials (created,
running, finished); queries for queued (WAITING) trials go to the database, so claiming queued
trials stays exact.

Through a database outage (tuner.outage) a running trial keeps training: its writes stay here,
marked uncertain when a transaction carrying them was cut (they are then written as replacements),
and reads are served from the last snapshot; what cannot wait (a claim, a trial's end) is retried.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, check_distribution_compatibility
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tuner import attrs as A
from tuner.outage import OUTAGE
from tuner.sql import (
    Created,
    Final,
    Pending,
    attribute_keys,
    beat,
    best_trial_id,
    claimed_by,
    count_and_create,
    count_states,
    create_running,
    param_distribution,
    TrialReads,
    set_started,
    start_queued,
    write_trial,
)

__all__ = ["BufferedStorage"]


def _copy(trial: FrozenTrial) -> FrozenTrial:
    """A copy of one of our trials with containers of its own (params, attributes, intermediate
    values) and their values shared, as Optuna's in-memory storage hands trials out: a reader may
    add or replace entries without touching ours, and this storage never changes a stored value
    in place (a write replaces it). A deep copy walks every attribute: ~0.1 ms for a finished
    trial with its learning curves, and Optuna reads a trial twice as it ends."""
    out = copy.copy(trial)
    fields = vars(out)
    for name, value in vars(trial).items():
        if isinstance(value, (dict, list)):
            fields[name] = copy.copy(value)
    return out


class BufferedStorage(BaseStorage):
    def __init__(
        self,
        inner: BaseStorage,
        rdb: optuna.storages.RDBStorage,
        *,
        flush_s: float = 2.0,
        refresh_s: float = 1.0,
        claimed_by: dict[str, Any] | None = None,
    ) -> None:
        self._inner = inner  # Optuna's cached RDB storage
        self._rdb = rdb  # the RDB storage under it, for the one-transaction flush
        self._flush_s = flush_s
        self._refresh_s = refresh_s
        self._lock = threading.RLock()  # the heartbeat thread flushes too
        self._pending: dict[int, Pending] = {}  # trial id -> unflushed writes of a trial we run
        # trials whose earlier writes a beat is writing without the lock (see record_heartbeats),
        # and the condition a writer of the same trial waits on
        self._writing: set[int] = set()
        self._written = threading.Condition(self._lock)
        self._flushed_at: dict[int, float] = {}  # trial id -> when its writes were last committed
        self._mine_now: dict[int, FrozenTrial] = {}  # trial id -> our running trial, kept current here
        self._snapshot: dict[int, tuple[float, list[FrozenTrial]]] = {}  # study id -> (time, trials)
        # a finished trial never changes, so a new snapshot reads only the rest (see _all_trials)
        self._read = TrialReads()
        # (study id, states) -> the snapshot overlaid and filtered: pruners ask at every epoch
        self._views: dict[tuple[int, Any], list[FrozenTrial]] = {}
        self._finished: OrderedDict[int, FrozenTrial] = OrderedDict()  # the trials we finished, newest last
        self._study_ids: dict[str, int] = {}  # study name -> id (fixed for the study's life)
        self._no_waiting: set[int] = set()  # studies a claim just counted with no queued trial (see claim)
        # study id -> the trial a claim created for the next ask, or the id of one of ours to adopt
        self._reserved: dict[int, Created | int] = {}
        # user attributes stored with every trial this storage starts, in the claim's own
        # transaction (tuner's workers: who runs it, see tuner.heartbeat)
        self._claimed_by = dict(claimed_by or {})
        self._study_of: dict[int, int] = {}  # our trial id -> its study id
        self._dists: dict[tuple[int, str], BaseDistribution] = {}  # (study id, param) -> the distribution the study uses
        # Copy on write: what get_all_trials returned is never changed afterwards. Our running
        # trials a reader may hold, and where each sits in the cached views (replaced on a write).
        self._handed: set[int] = set()
        self._view_pos: dict[tuple[int, Any], dict[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"], state["_written"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._written = threading.Condition(self._lock)

    def _drop_views(self) -> None:
        self._views.clear()
        self._view_pos.clear()

    def _drop_reads(self) -> None:
        """Something this storage does not track changed in the database: read it again."""
        self._snapshot.clear()
        self._drop_views()

    def _writable(self, trial_id: int) -> FrozenTrial:
        """Our running trial, to change: a fresh copy if a reader may hold the current one."""
        mine = self._mine_now[trial_id]
        if trial_id in self._handed:
            self._handed.discard(trial_id)
            mine = self._mine_now[trial_id] = _copy(mine)
            for key, positions in self._view_pos.items():
                at = positions.get(trial_id)
                if at is not None:
                    self._views[key][at] = mine
        return mine

    # -- the trials we run --------------------------------------------------------------------

    def _mine(self, trial_id: int) -> Pending | None:
        return self._pending.get(trial_id)

    FINISHED_KEPT = 256  # finished trials of ours served from memory

    def own(self, trial: FrozenTrial, study_id: int) -> None:
        """Buffer this trial's writes from now on (it was just claimed by this worker); reads of it
        are served from memory, since only this worker writes to it."""
        with self._lock:
            if trial._trial_id not in self._pending:
                self._study_of[trial._trial_id] = study_id
                # a queued trial comes with attributes (its retry's origin, its fixed parameters)
                self._pending[trial._trial_id] = Pending(stored=attribute_keys(trial.user_attrs, trial.system_attrs))
                self._flushed_at[trial._trial_id] = time.monotonic()
                self._mine_now[trial._trial_id] = _copy(trial)  # Optuna's Trial changes its own

    def _heartbeats(self) -> bool:
        return self._rdb.get_heartbeat_interval() is not None

    def claim(self, study_id: int, start_if: Callable[[Counter[TrialState]], bool]) -> Counter[TrialState]:
        """Count the study's trials by state and, if `start_if` says so of the counts, create this
        worker's next trial in the same transaction: the next Study.ask takes it, rather than
        creating one (and no queued trial is looked for, since none was counted)."""
        created: Created | None
        counts, created = OUTAGE.call(
            count_and_create,
            self._rdb,
            study_id,
            create_if=lambda c: not c[TrialState.WAITING] and start_if(c),
            heartbeat=self._heartbeats(),
            user_attrs=self._claimed_by,
        )
        with self._lock:
            if created is not None:
                self._reserved[study_id] = created
                self._no_waiting.add(study_id)
        return counts

    def orphans(self, study_id: int, known: Container[int]) -> list[int]:
        """This worker's RUNNING trials in the study that it does not hold (`known`): after a lost
        connection, a claim that did commit though its answer never came."""
        worker = self._claimed_by.get(A.WORKER)
        if worker is None:
            return []
        return [t for t in OUTAGE.call(claimed_by, self._rdb, study_id, worker) if t not in known]

    def adopt(self, study_id: int, trial_id: int) -> None:
        """The next Study.ask takes this trial of ours (see orphans) rather than a new one."""
        with self._lock:
            self._reserved[study_id] = trial_id
            self._no_waiting.add(study_id)

    def flush(self, trial_id: int) -> None:
        """Commit the trial's buffered writes in one transaction: one statement per table. Through
        an outage they wait (a trial trains on; its end writes them), tried at most by the beats."""
        with self._lock:
            if OUTAGE.began is not None:
                return
            self._written.wait_for(lambda: trial_id not in self._writing)  # a beat's write of its earlier ones first
            pending = self._pending.get(trial_id)
            if pending is None or pending.empty():
                return
            try:
                write_trial(self._rdb, trial_id, pending)
            except Exception as e:
                if not OUTAGE.failed(e):
                    raise
                pending.uncertain = True
                return
            OUTAGE.answered()
            self._pending[trial_id] = pending.next()
            self._flushed_at[trial_id] = time.monotonic()

    def _check_distribution(self, study_id: int, name: str, distribution: BaseDistribution) -> None:
        """As Optuna's storage checks it: a parameter keeps a compatible distribution across the
        study's trials (ValueError otherwise). The study's first is looked up once a process."""
        key = (study_id, name)
        known = self._dists.get(key)
        if known is None:
            known = self._dists[key] = OUTAGE.call(param_distribution, self._rdb, study_id, name) or distribution
        if known is not distribution:
            check_distribution_compatibility(known, distribution)

    def _flush_due(self, trial_id: int, now: float) -> bool:
        return now - self._flushed_at.get(trial_id, -math.inf) >= self._flush_s

    def _maybe_flush(self, trial_id: int) -> None:
        if trial_id not in self._writing and self._flush_due(trial_id, time.monotonic()):  # a beat writing: the next one
            self.flush(trial_id)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution) -> None:
        with self._lock:
            pending = self._mine(trial_id)
            if pending is None:  # not a trial we run: straight to the database, then read again
                self._drop_reads()
                return OUTAGE.call(self._rdb.set_trial_param, trial_id, param_name, param_value_internal, distribution)
            self._check_distribution(self._study_of[trial_id], param_name, distribution)
            pending.params[param_name] = (param_value_internal, distribution)
            mine = self._writable(trial_id)
            mine.params[param_name] = distribution.to_external_repr(param_value_internal)
            mine.distributions[param_name] = distribution

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._lock:
            pending = self._mine(trial_id)
            if pending is None:  # not a trial we run: straight to the database, then read again
                self._drop_reads()
                return OUTAGE.call(self._rdb.set_trial_intermediate_value, trial_id, step, intermediate_value)
            pending.intermediate[step] = intermediate_value
            self._writable(trial_id).intermediate_values[step] = intermediate_value
            self._maybe_flush(trial_id)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            pending = self._mine(trial_id)
            if pending is None:  # not a trial we run: straight to the database, then read again
                self._drop_reads()
                return OUTAGE.call(self._rdb.set_trial_user_attr, trial_id, key, value)
            pending.user_attrs[key] = value
            self._writable(trial_id).user_attrs[key] = value

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            pending = self._mine(trial_id)
            if pending is None:  # not a trial we run: straight to the database, then read again
                self._drop_reads()
                return OUTAGE.call(self._rdb.set_trial_system_attr, trial_id, key, value)
            pending.system_attrs[key] = value
            self._writable(trial_id).system_attrs[key] = value

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        with self._lock:
            self._drop_views()
            if state == TrialState.RUNNING and trial_id not in self._pending:
                # a queued trial this worker takes: running, with its first beat and its worker,
                # in one transaction (a kill right after still leaves a trial that turns stale)
                self._snapshot.clear()
                study_id = OUTAGE.call(start_queued, self._rdb, trial_id, heartbeat=self._heartbeats(), user_attrs=self._claimed_by)
                if study_id is None:
                    return False
                self.own(OUTAGE.call(self._inner.get_trial, trial_id), study_id)
                return True
            if not (state.is_finished() and trial_id in self._pending):
                self._snapshot.clear()
                return OUTAGE.call(self._inner.set_trial_state_values, trial_id, state, values)
            self._written.wait_for(lambda: trial_id not in self._writing)  # (its beats have stopped: the heartbeat waits for one in progress)
            pending = self._pending[trial_id]
        # our trial ends: its buffered writes, values and state in one transaction, waited for
        # through an outage without holding the lock (the heartbeat beats for a pack's others)
        final = Final(state, list(values) if values is not None else None, datetime.now())
        OUTAGE.call(self._end, trial_id, pending, final)
        with self._lock:
            del self._pending[trial_id], self._flushed_at[trial_id], self._study_of[trial_id]
            trial = self._writable(trial_id)
            self._handed.discard(trial_id)
            del self._mine_now[trial_id]
            trial.state, trial.values, trial.datetime_complete = final.state, final.values, final.when
            self._finished[trial_id] = trial
            if len(self._finished) > self.FINISHED_KEPT:
                self._finished.popitem(last=False)
        return True

    def _end(self, trial_id: int, pending: Pending, final: Final) -> None:
        try:
            write_trial(self._rdb, trial_id, pending, final)
        except Exception as e:
            if OUTAGE.failed(e):
                pending.uncertain = True  # the next try checks whether this one landed
            raise

    def set_started(self, trial_ids: Sequence[int]) -> None:
        """These trials of ours start training now (tuner.sql.set_started)."""
        with self._lock:
            now = datetime.now()
            OUTAGE.call(set_started, self._rdb, trial_ids, now)
            for trial_id in trial_ids:
                if trial_id in self._mine_now:
                    self._writable(trial_id).datetime_start = now
            self._drop_views()

    def forget(self, trial_id: int) -> FrozenTrial:
        """Give up a trial of ours that another worker has finished (failed as lost when its beats
        came late): its unwritten writes are dropped, and it is returned as the database holds it."""
        with self._lock:
            for held in (self._pending, self._flushed_at, self._study_of, self._mine_now):
                held.pop(trial_id, None)
            self._handed.discard(trial_id)
            self._snapshot.clear()
            self._drop_views()
        return OUTAGE.call(self._rdb.get_trial, trial_id)

    def _known(self, trial_id: int) -> FrozenTrial | None:
        """One of our trials, running or finished, as this worker knows it (always current)."""
        return self._mine_now.get(trial_id) or self._finished.get(trial_id)

    def _overlay(self, trial: FrozenTrial) -> FrozenTrial:
        """Our own trials as we know them: the snapshot lags behind what this worker wrote."""
        return self._known(trial._trial_id) or trial

    # -- reads --------------------------------------------------------------------------------

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            known = self._known(trial_id)
            if known is not None:
                return _copy(known)
        return OUTAGE.call(self._inner.get_trial, trial_id)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if states is not None and TrialState.WAITING in states:
            # claims stay exact: queued trials are always read from the database, and only when
            # a cheap count says there are any (Study.ask looks on every trial)
            if tuple(states) == (TrialState.WAITING,):
                with self._lock:
                    counted_none = study_id in self._no_waiting
                    self._no_waiting.discard(study_id)
                if counted_none or not OUTAGE.call(count_states, self._rdb, study_id)[TrialState.WAITING]:
                    return []
            return OUTAGE.call(self._inner.get_all_trials, study_id, deepcopy=deepcopy, states=states)
        with self._lock:
            taken, trials = self._snapshot.get(study_id, (-math.inf, []))  # none yet: take one, however long the clock has run
            if time.monotonic() - taken > self._refresh_s:
                fresh = self._read_trials(study_id)
                if fresh is not None:
                    trials = fresh
                    self._snapshot[study_id] = (time.monotonic(), trials)
                    self._drop_views()
            key = (study_id, None if states is None else tuple(states))
            view = self._views.get(key)
            if view is None:
                view, positions = [], {}
                for t in map(self._overlay, trials):
                    if states is None or t.state in states:
                        if t._trial_id in self._mine_now:
                            positions[t._trial_id] = len(view)
                        view.append(t)
                self._views[key], self._view_pos[key] = view, positions
            out = list(view)  # the caller's to change
            if not deepcopy:  # the caller holds our running trials now: the next write copies them
                self._handed.update(self._view_pos[key])
        return copy.deepcopy(out) if deepcopy else out

    def _read_trials(self, study_id: int) -> list[FrozenTrial] | None:
        """The study's trials afresh; None where the snapshot must serve: through an outage, a
        trial training reads what it has (a claim, under the study lock, reads afresh or waits)."""
        if study_id not in self._snapshot or OUTAGE.in_atomic:
            return OUTAGE.call(self._all_trials, study_id)
        if OUTAGE.began is not None:
            return None
        try:
            trials = self._all_trials(study_id)
        except Exception as e:
            if not OUTAGE.failed(e):
                raise
            return None
        OUTAGE.answered()
        return trials

    def _all_trials(self, study_id: int) -> list[FrozenTrial]:
        """The study's trials (a new list: ours, it grows), those finished at the last read kept
        from it: tuner's SQL (tuner.sql.read_trials) reads the rest, as Optuna's cache would, but
        without its ORM (150 s for a first read of 100,000 trials on SQLite; 14 s here)."""
        return self._read.trials(self._rdb, study_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        with self._lock:  # the pruners read them at every report: not the whole trial's copy
            known = self._known(trial_id)
            if known is not None:
                return dict(known.system_attrs)
        return OUTAGE.call(self._inner.get_trial_system_attrs, trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        with self._lock:
            known = self._known(trial_id)
            if known is not None:
                return dict(known.user_attrs)
        return OUTAGE.call(self._inner.get_trial_user_attrs, trial_id)

    # -- everything else goes straight through ----------------------------------------------

    def create_new_study(self, directions: Sequence[Any], study_name: str | None = None) -> int:
        return self._inner.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._inner.delete_study(study_id)
        with self._lock:  # its id may be given to the next new study (SQLite reuses them)
            self._study_ids = {name: i for name, i in self._study_ids.items() if i != study_id}
            self._dists = {key: d for key, d in self._dists.items() if key[0] != study_id}
            self._no_waiting.discard(study_id)
            self._reserved.pop(study_id, None)
            self._read.forget(study_id)
            self._drop_reads()

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        OUTAGE.call(self._inner.set_study_user_attr, study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        OUTAGE.call(self._inner.set_study_system_attr, study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        # Hyperband asks at every report and every sampling (its bracket studies): ~1 ms a query
        study_id = self._study_ids.get(study_name)
        if study_id is None:
            study_id = self._study_ids[study_name] = OUTAGE.call(self._inner.get_study_id_from_name, study_name)
        return study_id

    def get_study_name_from_id(self, study_id: int) -> str:
        return OUTAGE.call(self._inner.get_study_name_from_id, study_id)

    def get_study_directions(self, study_id: int) -> list[Any]:
        return OUTAGE.call(self._inner.get_study_directions, study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return OUTAGE.call(self._inner.get_study_user_attrs, study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return OUTAGE.call(self._inner.get_study_system_attrs, study_id)

    def get_all_studies(self) -> list[Any]:
        return OUTAGE.call(self._inner.get_all_studies)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is not None:  # a queued or copied trial, not one this worker runs now
            with self._lock:
                self._drop_reads()
            return OUTAGE.call(self._inner.create_new_trial, study_id, template_trial)
        # Study.ask starting a trial for this worker: the one its claim created (see claim), else
        # one created now, with its first heartbeat; owned from here on
        with self._lock:
            created = self._reserved.pop(study_id, None)
        if isinstance(created, int):  # one of ours, adopted (see orphans): as the database holds it, if we do not
            if created not in self._mine_now:
                self.own(OUTAGE.call(self._rdb.get_trial, created), study_id)
            with self._lock:
                self._drop_reads()
            return created
        trial_id, number, started = created or OUTAGE.call(
            create_running, self._rdb, study_id, heartbeat=self._heartbeats(), user_attrs=self._claimed_by
        )
        trial = FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=started,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs=dict(self._claimed_by),
            system_attrs={},
            intermediate_values={},
            trial_id=trial_id,
        )
        self.own(trial, study_id)
        with self._lock:  # the snapshot stays current with this worker's trials, so samplers see them
            if study_id in self._snapshot:
                self._snapshot[study_id][1].append(trial)
            self._drop_views()
        return trial_id

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return OUTAGE.call(self._inner.get_trial_id_from_study_id_trial_number, study_id, trial_number)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        # one query for its id (the cache would read every trial), then most often our own copy
        directions = self.get_study_directions(study_id)
        if len(directions) > 1:
            raise RuntimeError("Best trial can be obtained only for single-objective optimization.")
        trial_id = OUTAGE.call(best_trial_id, self._rdb, study_id, maximize=directions[0] == optuna.study.StudyDirection.MAXIMIZE)
        if trial_id is None:
            raise ValueError("No trials are completed yet.")
        return self.get_trial(trial_id)

    def remove_session(self) -> None:
        self._inner.remove_session()

    # heartbeats: tuner's Heartbeat thread beats through here; lost workers are found on the
    # database as it is (tuner.study.lost), not through Optuna's heartbeat machinery
    def record_heartbeat(self, trial_id: int) -> None:
        self.record_heartbeats([trial_id])

    def record_heartbeats(self, trial_ids: Sequence[int]) -> None:
        """A beat for each of these trials of ours, with the writes of those due a flush, in one
        transaction (tuner.sql.beat). The lock is not held while it is written: the database may
        take its connect timeout to answer, or longer (a network partition), and the trial trains
        on meanwhile, its new writes buffered apart. Writes that were not written (an error; a
        trial failed as lost meanwhile, whose tell will find it finished and say so) are put back
        beneath the newer ones."""
        with self._lock:
            now = time.monotonic()
            due = {
                t: self._pending[t]
                for t in sorted(trial_ids)
                if t in self._pending and t not in self._writing and not self._pending[t].empty() and self._flush_due(t, now)
            }
            for trial_id, pending in due.items():
                self._pending[trial_id] = pending.next()
            self._writing.update(due)
        written: set[int] = set()
        cut = False
        try:
            written = beat(self._rdb, trial_ids, due)
        except Exception as e:
            cut = OUTAGE.failed(e)  # the next beat or the trial's end writes them as replacements
            raise
        finally:
            with self._lock:
                for trial_id, pending in due.items():
                    if trial_id in written:
                        self._flushed_at[trial_id] = now
                    elif trial_id in self._pending:  # (not given up meanwhile: forget)
                        self._pending[trial_id] = pending.under(self._pending[trial_id], uncertain=cut)
                self._writing.difference_update(due)
                self._written.notify_all()
        OUTAGE.answered()

    def get_heartbeat_interval(self) -> int | None:
        return self._inner.get_heartbeat_interval()
