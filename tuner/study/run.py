"""A worker's run: claim a trial under the study lock, run it with a heartbeat, record how it
ended, until the study holds its budget; signals close the running trial first."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import gc
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import attrs as A
from tuner.stopping import STOPPED_ATTR
from tuner.stopping import from_spec as stopping_of
from tuner.errors import TunerError
from tuner.failures import FailureStop, default_max_failures
from tuner.heartbeat import Heartbeat
from tuner.metrics import feasible
from tuner.outage import OUTAGE, DatabaseGone, Lost
from tuner.spec import DEFAULT_TRIALS
from tuner.storage import StudyLock, count_states, heartbeat_settings, progress, rdb_of
from tuner.study.lost import fail_lost, requeue, running_trials
from tuner.study.objective import BuiltinObjective, make_objective
from tuner.study.road import Road, road_of
from tuner.study.results import best_trial, front
from tuner.study.store import Loaded, check_data, quiet_optuna

__all__ = ["FINISHED", "Interrupted", "Stop", "RunResult", "run_study", "set_threads", "signals_interrupt", "summarize"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PROGRESS_S = 1.0  # the progress callback's figures are read from the database at most this often
POLL_S = 1.0  # how often a worker with nothing to claim looks again (others' trials may fail)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: the current trial is closed and re-queued, then the process exits."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = 143 if signal_name == "SIGTERM" else 130


class Stop(str, enum.Enum):
    """Why a worker's run ended well (an error raises instead)."""

    BUDGET = "budget"  # the study holds its budget of finished trials
    GRID_EXHAUSTED = "grid_exhausted"  # every grid point has run
    TIMEOUT = "timeout"  # --timeout passed
    GOAL = "goal"  # a trial reached --goal (tuner.stopping)
    PATIENCE = "patience"  # no improvement in the last --patience finished trials
    MAX_TIME = "max_time"  # the study's wall time passed --max-time

    @property
    def says(self) -> str:
        return {
            Stop.BUDGET: "budget reached", Stop.GRID_EXHAUSTED: "grid exhausted", Stop.TIMEOUT: "timeout",
            Stop.GOAL: "goal reached", Stop.PATIENCE: "no improvement (patience)", Stop.MAX_TIME: "max time reached",
        }[self]

    @property
    def early(self) -> bool:
        """A stopping rule of the study's ended it before its budget."""
        return self in (Stop.GOAL, Stop.PATIENCE, Stop.MAX_TIME)

    @classmethod
    def of_workers(cls, stops: set["Stop"]) -> "Stop":
        """The run's reason from its workers': a stopping rule, any grid exhausted, all timed out, else the budget."""
        early = sorted(s for s in stops if s.early)
        if early:
            return early[0]
        if cls.GRID_EXHAUSTED in stops:
            return cls.GRID_EXHAUSTED
        return cls.TIMEOUT if stops == {cls.TIMEOUT} else cls.BUDGET


@dataclass
class RunResult:
    name: str
    budget: int
    n_finished: int
    n_complete: int
    n_pruned: int
    n_failed: int
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    elapsed_s: float
    stopped: Stop
    ran: int  # trials this invocation ran
    failures: list[str] = field(default_factory=list)
    front: list[int] | None = None  # with several metrics: the Pareto front's trials, by the first metric
    stop_reason: str | None = None  # a stopping rule's reason in words, when one ended the run
    # local workers that died (--workers): slot, gpu, pid, how it ended, last stderr line, replaced
    worker_deaths: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record a worker prints with --format json, and its parent reads (from_json)."""
        return {**dataclasses.asdict(self), "stopped": self.stopped.value}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "RunResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in doc.items() if k in names}, "stopped": Stop(doc["stopped"])})


def _claim(loaded: Loaded, road: Road, budget: int, *, look_for_stale: bool = True, check_rules: bool = True) -> tuple[str, optuna.Trial | None]:
    """Under the study lock: free the trials of dead workers, then start one trial if the budget
    allows it. Queued trials (grid points, re-queued copies) are taken first, so with K workers
    the study ends with exactly `budget` finished trials and each grid point runs once. The
    study's stopping rules are read first (`check_rules`: once a hold of the lock, since they
    read every trial)."""
    study = loaded.study
    if look_for_stale:
        fail_lost(study)

    def decide(states: Counter[TrialState]) -> str:
        finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
        running, waiting = states[TrialState.RUNNING], states[TrialState.WAITING]
        if finished >= budget:
            return Stop.BUDGET
        if finished + running >= budget:
            return "wait"  # a running trial may still fail and free its place
        if loaded.spec.sampler == "grid" and waiting == 0:
            return "wait" if running else Stop.GRID_EXHAUSTED
        return "trial"

    stop = _stopped_early(loaded, budget) if check_rules else None
    if stop is not None:
        return stop, None
    decision = decide(road.count(lambda counts: decide(counts) == "trial"))  # a road may start the trial within the count
    if decision != "trial":
        return decision, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = road.ask()
    return "trial", trial


def _stopped_early(loaded: Loaded, budget: int) -> Stop | None:
    """Under the study lock: whether one of the study's stopping rules (tuner.stopping) ends it
    before its budget, recorded on the study with the reason; one worker decides, the others see
    the same trials at their next claim. A study whose rules were changed so that none applies
    any more goes on (its record is cleared). None where the budget decides."""
    rules = stopping_of(loaded.spec)
    if not rules.any:
        return None
    study = loaded.study
    trials = study.get_trials(deepcopy=False)
    n_finished = sum(t.state in FINISHED for t in trials)
    if n_finished >= budget:
        return None  # the budget came first: it is the reason
    verdict = rules.decide(trials)
    record = study.user_attrs.get(STOPPED_ATTR)
    if verdict is None:
        if record:
            study.set_user_attr(STOPPED_ATTR, None)
        return None
    rule, reason = verdict
    if not isinstance(record, dict) or record.get("reason") != reason:
        study.set_user_attr(STOPPED_ATTR, {"rule": rule, "reason": reason, "n_finished": n_finished})
    return Stop(rule)


def _close_interrupted(road: Road, trial: optuna.Trial, signal_name: str) -> None:
    """A signal landed between claiming the trial and recording its result: close it as failed,
    with the reason, and queue it again (unless its result was already recorded)."""
    try:
        road.reset()
        if road.get(trial).state != TrialState.RUNNING:
            return
        reason = f"interrupted by {signal_name}"
        trial.set_user_attr(A.FAIL_REASON, reason)
        trial.set_user_attr(A.FAIL_KIND, A.INTERRUPTED)
        # the copy first: a kill between the two leaves the trial running with its copy queued,
        # and the lost check that fails it later finds the copy (a copy after the failure would be
        # lost with such a kill, and a grid would lose its point)
        requeue(road.study, road.get(trial), reason)
        road.tell(trial, state=TrialState.FAIL)
    except Exception as e:  # the database is unreachable: the heartbeat grace period will free the trial
        print(f"warning: could not close trial {trial.number} ({e.__class__.__name__}: {e}); it is freed once its heartbeat is missed", file=sys.stderr)


def _execute(road: Road, trial: optuna.Trial, objective: Callable[[optuna.Trial], float | list[float]], heartbeat: Heartbeat) -> FrozenTrial:
    """Run one claimed trial with a heartbeat and close it with a state and, if not complete, why."""
    with heartbeat.running(trial._trial_id):
        try:
            outcome: float | BaseException = objective(trial)
        except DatabaseGone:  # not the trial's failure: it stays running, and turns stale
            raise
        except Exception as e:  # pruned, or failed: the objective stored the reason
            outcome = e
    honour_signals()
    return _close(road, trial, outcome)


def _execute_pack(
    road: Road, trials: list[optuna.Trial], objective: BuiltinObjective, heartbeat: Heartbeat, n_pack: int, on_closed: Callable[[FrozenTrial], None]
) -> None:
    """Run claimed trials packed where they can be (tuner.packing), all with a heartbeat until
    each one's pack ends; then it is closed (and given to `on_closed`), its beats stopped first."""

    def on_ended(i: int, outcome: float | list[float] | BaseException) -> None:
        honour_signals()
        heartbeat.release(trials[i]._trial_id)
        on_closed(_close(road, trials[i], outcome))

    with heartbeat.running(*(t._trial_id for t in trials)):
        objective.run_pack(trials, n_pack=n_pack, on_ended=on_ended)


def _close(road: Road, trial: optuna.Trial, outcome: float | list[float] | BaseException) -> FrozenTrial:
    """The trial told with the state its outcome gives; or, if another worker has meanwhile failed
    it as lost (this worker's beats came too late: a stalled machine, a saturated pool) and queued
    it again, the trial as that worker left it: this result is dropped, the copy runs again, and
    this worker goes on."""
    try:
        return _tell_outcome(road, trial, outcome)
    except optuna.exceptions.UpdateFinishedTrialError:  # tuner's storage, or an attribute written on Optuna's
        return road.closed_elsewhere(trial)
    except ValueError:  # Optuna's tell: "Cannot tell a FAIL trial"
        stored = road.told_twice(trial)
        if stored is None:
            raise
        return stored


def _taken_away(trial: FrozenTrial) -> bool:
    """Failed by another worker (lost) or by a person (released) while this worker ran it."""
    return trial.state == TrialState.FAIL and trial.user_attrs.get(A.FAIL_KIND) in (A.LOST_WORKER, A.RELEASED)


def _tell_outcome(road: Road, trial: optuna.Trial, outcome: float | list[float] | BaseException) -> FrozenTrial:
    if isinstance(outcome, optuna.TrialPruned):
        return road.tell(trial, state=TrialState.PRUNED)
    if isinstance(outcome, BaseException):
        return road.tell(trial, state=TrialState.FAIL)
    if not all(math.isfinite(v) for v in (outcome if isinstance(outcome, list) else [outcome])):
        trial.set_user_attr(A.FAIL_REASON, f"objective returned {outcome}")
        trial.set_user_attr(A.FAIL_KIND, A.NON_FINITE)
        return road.tell(trial, state=TrialState.FAIL)
    return road.tell(trial, outcome)


@contextlib.contextmanager
def signals_interrupt():  # type: ignore[no-untyped-def]
    """SIGTERM (a scheduler's kill) behaves like Ctrl-C: the trial is closed, then the process
    exits. Each signal is also remembered (received_signal): the exception it raises can be
    swallowed or turned into another on its way out (an import it lands in fails with ImportError,
    and user code may catch everything), and the worker must stop all the same."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        _RECEIVED.append(name)
        raise Interrupted(name)

    _RECEIVED.clear()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except KeyboardInterrupt as e:
        if not isinstance(e, Interrupted):
            raise Interrupted("SIGINT") from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_RECEIVED: list[str] = []  # signals received inside signals_interrupt, in order


def honour_signals() -> None:
    """Raise Interrupted for a signal received while a trial ran whose exception did not get out
    (swallowed, or turned into another exception): the trial is then closed as interrupted."""
    if _RECEIVED:
        raise Interrupted(_RECEIVED[0])


class _Progress:
    """The study's finished count and best value for the progress callback. Other workers change
    them too, so they are read from the database, but at most every PROGRESS_S seconds; in between
    this worker's own results carry them forward, and a trial does not pay for two queries."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study
        self._maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        self._one = len(study.directions) == 1  # several metrics have a front, not a best value
        self._read_at = -math.inf
        self.n_finished, self.best = 0, None

    def after(self, trial: FrozenTrial) -> tuple[int, float | None]:
        if time.monotonic() - self._read_at >= PROGRESS_S and OUTAGE.began is None:
            try:
                self.n_finished, self.best = progress(self._study._storage, self._study._study_id, self._study.directions)
            except Exception as e:  # through an outage, this worker's own results carry the count
                if not OUTAGE.failed(e):
                    raise
            else:
                self._read_at = time.monotonic()
                return self.n_finished, self.best
        self.n_finished += trial.state in FINISHED
        value = trial.values[0] if self._one and feasible(trial) and trial.state == TrialState.COMPLETE else None
        if value is not None and (self.best is None or (value > self.best if self._maximize else value < self.best)):
            self.best = value
        return self.n_finished, self.best


def set_threads(threads: int | None) -> int:
    """Torch threads for this worker (default: all cores; `tuner worker --workers K` passes its
    share). Oversubscribed cores are ruinous for small models: threads wait on each other."""
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def run_study(
    loaded: Loaded,
    *,
    device: str = "auto",
    timeout: float | None = None,
    on_trial: Callable[[FrozenTrial, int, int, float | None], None] | None = None,
    on_wait: Callable[[list[dict[str, Any]]], None] | None = None,
    threads: int | None = None,
    pack: int | str | None = None,
    max_failures: int | None = None,
    max_streak: int | None = None,
) -> RunResult:
    """One worker: claim and run trials until the study holds `spec.trials` finished trials (all
    workers and runs together), the grid is exhausted, or the timeout passes. Failed trials do not
    count toward the budget; consecutive failures of one kind, or too many in all, stop the worker
    with the first failure and what to fix (tuner.failures; the spec's limits unless given here).

    While the rest of the budget is other workers' running trials, the worker waits (one of them
    may fail or be lost) and calls `on_wait` with those trials at each look (see running_trials).

    With `pack` (a number, or auto: tuner.packing.resolve_pack) above 1, the worker claims that
    many trials at once and trains those that can share a pack as one batched model."""
    from tuner.train import resolve_device

    quiet_optuna()
    study, spec = loaded.study, loaded.spec
    check_data(loaded)  # a missing or changed data file fails here, not in five trials
    torch_device = resolve_device(device)
    n_threads = set_threads(threads)
    objective = make_objective(loaded, torch_device, threads=n_threads)
    from tuner.packing import resolve_pack

    budget = int(spec.trials or DEFAULT_TRIALS)
    n_pack = resolve_pack(pack, torch_device, budget=budget, sampler=spec.sampler) if isinstance(objective, BuiltinObjective) else 1
    from tuner.train import warm_up

    if spec.command is None:  # a command's child trains, not this process: nothing to warm up here
        warm_up(torch_device)  # a new worker's one-time costs, before it claims a trial
    # Everything loaded so far (torch, Optuna, the data) lives as long as the worker: take it out
    # of the collector's sight, or every full collection walks it again (~10 ms a trial). No
    # collection first: it would cost as much once, to free the little garbage there is.
    gc.freeze()
    rdb = rdb_of(study._storage)
    lock = StudyLock(loaded.url, spec.name, engine=rdb.engine if rdb is not None else None)
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    failures: list[str] = []
    watch = FailureStop(
        spec.name,
        in_a_row=max_streak or spec.max_streak,
        max_failures=max_failures or spec.max_failures or default_max_failures(budget),
    )
    ran = 0
    stopped = Stop.BUDGET
    interval, _ = heartbeat_settings()
    stale_checked = -math.inf
    waiting = False
    tracker = _Progress(study)
    road = road_of(study)
    heartbeat = Heartbeat(study._storage, interval, first_beat_written=road.first_beat_written)
    try:
        with signals_interrupt():
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    stopped = Stop.TIMEOUT
                    break
                claimed: list[optuna.Trial] = []
                try:
                    # dead workers' trials only turn stale after a grace period: one look per
                    # interval, or at every poll while nothing else is left to do
                    look = waiting or time.monotonic() - stale_checked >= interval
                    decision = _claim_under_lock(loaded, road, lock, budget, claimed, n_pack=n_pack, look_for_stale=look)
                    if look:
                        stale_checked = time.monotonic()
                    waiting = decision == "wait"
                    if waiting:
                        if on_wait is not None:
                            on_wait(OUTAGE.call(running_trials, study))
                        time.sleep(POLL_S)
                        continue
                    if not claimed:
                        stopped = Stop(decision)
                        break
                    # each closed trial with the study's progress as it closed (the callbacks, which may
                    # raise to stop the run, are called once every claimed trial is closed)
                    ended: list[tuple[FrozenTrial, int, float | None]] = []

                    def closed(frozen: FrozenTrial) -> None:
                        ended.append((frozen, *tracker.after(frozen)))

                    if len(claimed) == 1:
                        closed(_execute(road, claimed[0], objective, heartbeat))
                    else:
                        _execute_pack(road, claimed, objective, heartbeat, n_pack, closed)  # type: ignore[arg-type]
                except KeyboardInterrupt as e:
                    for trial in claimed:  # those already closed are left as they are
                        _close_interrupted(road, trial, getattr(e, "signal_name", "SIGINT"))
                    raise
                except DatabaseGone as e:  # its running trials turn stale: a resume queues them again
                    raise DatabaseGone(f"{e}; once it answers, `tuner study resume {spec.name}` finishes the study") from None
                for frozen, n_finished, best in ended:
                    ran += 1
                    if _taken_away(frozen):  # not this worker's failure, nor a success: its copy is queued
                        pass
                    elif frozen.state == TrialState.FAIL:
                        failures.append(A.fail_reason(frozen.user_attrs))
                        stop = watch.failed(frozen)
                        if stop is not None:
                            raise TunerError(stop)
                    else:
                        watch.success()
                    if on_trial is not None:
                        on_trial(frozen, n_finished, budget, best)
    finally:
        heartbeat.close()
        lock.close()
    return OUTAGE.call(summarize, loaded, budget=budget, ran=ran, stopped=stopped, elapsed_s=time.monotonic() - started, failures=failures)


def _claim_under_lock(
    loaded: Loaded, road: Road, lock: StudyLock, budget: int, claimed: list[optuna.Trial], *, n_pack: int, look_for_stale: bool
) -> str:
    """Claim up to `n_pack` trials (into `claimed`) under one hold of the study lock; the first
    claim's decision ("trial", "wait", or a Stop). Through a database outage the hold is retried
    whole: the lock is the server's, and a claim after it was lost would not be exact. Trials
    claimed before the outage stay claimed, and a claim that committed though its answer was lost
    is found and taken (road.adopt_orphans), not made again."""
    attempt, decision = 0, "trial"
    while True:
        try:
            with OUTAGE.atomic(), lock.held():
                if attempt:
                    claimed += road.adopt_orphans(claimed)
                first = not claimed
                while len(claimed) < n_pack:  # the rest of a pack, as the budget allows
                    # under the same lock no trial finished since the first claim: the stopping rules said their word
                    decision, trial = _claim(loaded, road, budget, look_for_stale=look_for_stale and first, check_rules=first)
                    first = False
                    if trial is None:
                        break
                    claimed.append(trial)
            OUTAGE.answered()
            return "trial" if claimed else decision
        except Exception as e:
            if not (isinstance(e, Lost) or OUTAGE.failed(e)):
                raise
            with contextlib.suppress(Exception):  # a session broken with its connection: a fresh one
                road.reset()
            OUTAGE.wait(attempt)
            attempt += 1


def summarize(loaded: Loaded, *, budget: int, ran: int, stopped: Stop, elapsed_s: float, failures: list[str]) -> RunResult:
    study = loaded.study
    states = count_states(study._storage, study._study_id)
    best = best_trial(study)
    several = len(study.directions) > 1
    return RunResult(
        name=loaded.spec.name,
        budget=budget,
        n_finished=states[TrialState.COMPLETE] + states[TrialState.PRUNED],
        n_complete=states[TrialState.COMPLETE],
        n_pruned=states[TrialState.PRUNED],
        n_failed=states[TrialState.FAIL],
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_trial=best.number if best else None,
        elapsed_s=elapsed_s,
        stopped=stopped,
        ran=ran,
        failures=sorted(set(failures)),
        front=[t.number for t in front(study)] if several else None,
        stop_reason=(study.user_attrs.get(STOPPED_ATTR) or {}).get("reason") if stopped.early else None,
    )
