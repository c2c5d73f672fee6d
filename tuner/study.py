"""Studies: create, run, resume, inspect; and the objective that joins a trial to the training loop.

A tuner study is a plain Optuna RDB study. What tuner needs to run it again, from any machine, is
stored with it as study user attributes: the spec ("tuner.spec") and the whole search space
("tuner.space"), so a resume never depends on files that may have changed since.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import DivergedError, SpaceError, SpecError, StorageError, TunerError
from tuner.params import TrainConfig
from tuner.samplers import make_pruner, make_sampler
from tuner.space import SPACES_DIR, Space, load_space, parse_space
from tuner.spec import DEFAULT_TRIALS, RUN_OPTIONS, StudySpec
from tuner import sql
from tuner._compat import optuna_paths
from tuner.buffered import BufferedStorage
from tuner.heartbeat import Heartbeat, describe, process_gone, worker_identity
from tuner.storage import (
    StudyLock,
    count_states,
    fail_running,
    heartbeat_settings,
    mask,
    open_storage,
    progress,
    running_trials as _running,
    sql_rdb,
)
from tuner.workloads import WorkloadRef, load_workload, parse_workload

__all__ = [
    "Interrupted",
    "Loaded",
    "RunResult",
    "create_study",
    "delete_study",
    "export_trials",
    "fail_lost",
    "list_studies",
    "open_study",
    "release_trials",
    "run_study",
    "running_trials",
    "study_summary",
    "trial_rows",
]

SPEC_ATTR = "tuner.spec"
SPACE_ATTR = "tuner.space"
MAX_CONSECUTIVE_FAILURES = 5  # identical failures in a row stop the study instead of burning its budget
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PROGRESS_S = 1.0  # the progress callback's figures are read from the database at most this often
POLL_S = 1.0  # how often a worker with nothing to claim looks again (others' trials may fail)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: the current trial is closed and re-queued, then the process exits."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = 143 if signal_name == "SIGTERM" else 130


@dataclass
class Loaded:
    """A study as stored: the Optuna study, what tuner created it with, and where it lives."""

    study: optuna.Study
    spec: StudySpec
    space: Space
    url: str

    @property
    def workload(self) -> WorkloadRef:
        return parse_workload(self.spec.workload, target=self.spec.target)


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
    stopped: str  # budget | grid_exhausted | timeout
    ran: int  # trials this invocation ran
    failures: list[str] = field(default_factory=list)


def _quiet_optuna() -> None:
    # Optuna logs each failed trial with its traceback; tuner records the reason on the trial instead.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").propagate = False


# ---------------------------------------------------------------------------------------------
# create and open


def check_workload(spec: StudySpec, space: Space) -> WorkloadRef:
    """Load the data once before anything is written: a CSV without its target column, a module
    that does not import, or a metric that does not fit the task fails here, not in trial 0."""
    wref = parse_workload(spec.workload, target=spec.target)
    config = {**TrainConfig().as_dict(), **space.fixed()}
    data, _ = load_workload(wref, seed=spec.seed, val_fraction=spec.val_fraction, config=config)
    if spec.metric == "val_accuracy" and data.task != "classification":
        raise SpecError(f"metric val_accuracy needs a classification target, but {wref.describe()} is a regression; use --metric val_rmse")
    cnn = space.params.get("model")
    if cnn is not None and "cnn" in (cnn.choices or (cnn.value,)) and data.image_shape is None:
        raise SpecError(f"space '{space.name}' can pick model=cnn, but {wref.describe()} is not image data; drop cnn from `model`")
    return wref


def create_study(spec: StudySpec, storage_url: str, *, spaces_dir: Path = SPACES_DIR) -> Loaded:
    """Validate everything, then create the study; nothing is written when any check fails."""
    space = load_space(spec.space, spaces_dir=spaces_dir)
    grid: list[dict[str, Any]] = []
    if spec.sampler == "grid":
        problem = space.grid_problem()
        if problem:
            raise SpecError(f"grid search: {problem}")
        try:
            grid = space.grid()
        except SpaceError as e:
            raise SpecError(f"grid search: {e}") from None
    check_workload(spec, space)
    budget = spec.trials or (len(grid) if grid else DEFAULT_TRIALS)
    spec = StudySpec(**{**spec.as_dict(), "trials": budget})

    _quiet_optuna()
    storage = open_storage(storage_url, create=True)
    if spec.name in optuna.get_all_study_names(storage):
        raise SpecError(f"study '{spec.name}' already exists in {mask(storage_url)}; `tuner study run {spec.name}` continues it")
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        direction=spec.direction,
        sampler=make_sampler(spec.sampler, spec.seed, n_startup=spec.n_startup),
        pruner=make_pruner(spec.pruner),
    )
    study.set_user_attr(SPEC_ATTR, spec.as_dict())
    study.set_user_attr(SPACE_ATTR, space.to_dict())
    for point in grid:  # a new study, distinct points: nothing to skip, so no re-read per point
        study.enqueue_trial(point)
    return open_study(spec.name, storage_url, storage=storage)  # opened once: Optuna's schema check takes ~50 ms


def open_study(name: str, storage_url: str, *, worker_index: int = 0, storage: optuna.storages.RDBStorage | None = None) -> Loaded:
    _quiet_optuna()
    storage = storage or open_storage(storage_url)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(names[:10]) or "none"
        raise StorageError(f"no study '{name}' in {mask(storage_url)}; studies there: {known}")
    bare = optuna.load_study(study_name=name, storage=storage)
    attrs = bare.user_attrs
    if SPEC_ATTR not in attrs or SPACE_ATTR not in attrs:
        raise SpecError(f"study '{name}' was not created by tuner (no {SPEC_ATTR} attribute); inspect it with optuna-dashboard")
    spec = StudySpec.from_dict(attrs[SPEC_ATTR], source=f"study '{name}'")
    space = parse_space(attrs[SPACE_ATTR], name=Path(spec.space).stem, source=f"study '{name}' (stored space)")
    # The sampler is rebuilt from the stored spec. Its seed moves on with the study's size so that
    # a resumed run does not replay the random start-up points of the first run, and differs per
    # worker so that parallel workers do not sample the same points.
    n_existing = sum(count_states(storage, bare._study_id).values())
    # Trials this worker runs write through a buffer: one transaction per trial, not one per value
    # (where tuner's SQL fits Optuna's schema; else Optuna's own storage, a transaction per write).
    chosen: Any = bare._storage
    if sql_rdb(storage) is not None:
        chosen = BufferedStorage(bare._storage, storage, claimed_by={sql.WORKER_ATTR: worker_identity()})
    study = optuna.load_study(
        study_name=name,
        storage=chosen,
        sampler=make_sampler(spec.sampler, spec.seed + n_existing + 7919 * worker_index, n_startup=spec.n_startup),
        pruner=make_pruner(spec.pruner),
    )
    return Loaded(study, spec, space, storage_url)


def _requeue(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Queue a copy of a lost or interrupted trial with the same parameters, up to the study's
    `retries`; the copy records which trial it repeats and why. False if its retries are spent."""
    retries = study.user_attrs.get(SPEC_ATTR, {}).get("retries", StudySpec.retries)
    count = int(trial.user_attrs.get("retry_count", 0)) + 1
    if count > retries:
        return False
    params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))  # a queued point not yet sampled
    study.enqueue_trial(
        params,
        user_attrs={
            "retry_of": trial.number,
            "retry_root": trial.user_attrs.get("retry_root", trial.number),
            "retry_count": count,
            "retry_reason": reason,
        },
    )
    return True


def reconcile(loaded: Loaded, given: dict[str, Any], *, spaces_dir: Path = SPACES_DIR) -> StudySpec:
    """Options given to `run` for an existing study must agree with what it was created with."""
    stored = loaded.spec
    for key, value in given.items():
        if value is None or key in RUN_OPTIONS or key == "name":
            continue
        if key == "space":
            if load_space(value, spaces_dir=spaces_dir).to_dict() != loaded.space.to_dict():
                raise SpecError(
                    f"study '{stored.name}' was created with a different search space than {value}; "
                    "drop --space to resume with the stored one, or start a new study"
                )
            continue
        if value != getattr(stored, key):
            flag = "--" + key.replace("_", "-")
            raise SpecError(
                f"study '{stored.name}' was created with {key}={getattr(stored, key)!r}, not {value!r}; "
                f"drop {flag} to continue it, or start a new study name"
            )
    trials = given.get("trials")
    return StudySpec(**{**stored.as_dict(), "trials": trials or stored.trials})


# ---------------------------------------------------------------------------------------------
# run


def make_objective(loaded: Loaded, device: Any) -> Callable[[optuna.Trial], float]:
    from tuner.train import train

    spec, space = loaded.spec, loaded.space
    prunes = not isinstance(loaded.study.pruner, optuna.pruners.NopPruner)  # asking a NopPruner costs a trial copy an epoch

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        seed = spec.seed + trial.number
        _record(trial, {"seed": seed, "device": str(device)})
        if isinstance(trial.study._storage, BufferedStorage):
            # the configuration is durable before training starts: a killed worker's trial is
            # re-queued with exactly these parameters
            trial.study._storage.flush(trial._trial_id)

        epochs: list[Any] = []

        def report(epoch: Any) -> None:
            epochs.append(epoch)
            trial.report(epoch.metric, epoch.epoch)
            if prunes and trial.should_prune():
                reason = f"{spec.pruner} pruner at epoch {epoch.epoch}: {spec.metric}={epoch.metric:.4f}"
                _record(trial, {"pruned_reason": reason, "epochs_run": epoch.epoch, "history": _history(epochs)})
                raise optuna.TrialPruned(reason)

        try:
            data, model = trial_workload(loaded, params, seed)
            result = train(
                TrainConfig.from_params(params), data, metric=spec.metric, device=device, seed=seed, model=model, on_epoch=report
            )
        except DivergedError as e:
            # Divergence is a verdict on the configuration, not a crash: pruned, with the reason.
            attrs = {"pruned_reason": str(e), "epochs_run": e.epoch, "exploding_gradients": True}
            _record(trial, {**attrs, "history": _history(epochs)})
            raise optuna.TrialPruned(str(e)) from None
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{e.__class__.__name__}: {e}"[:500])
            if "out of memory" in str(e).lower():
                _release_gpu_memory()  # so the next, perhaps smaller, trial starts with a clean slate
            raise
        last, diag = result.last, result.diagnostics
        attrs = {
            "duration_s": round(result.duration_s, 4),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped": result.stopped,
            "train_loss": last.train_loss,
            "val_loss": last.val_loss,
            "val_accuracy": last.val_accuracy,
            "train_accuracy": last.train_accuracy,
            **(dataclasses.asdict(diag) if diag else {}),
            "grad_norms": last.grad_norms,
            "history": _history(result.history),
        }
        _record(trial, {k: v for k, v in attrs.items() if v is not None})
        return result.value

    return objective


def trial_workload(loaded: Loaded, params: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """The data (split with the study's seed) and, for a user callable, its model, built with torch
    seeded by the trial's seed so that its initial weights are the same whenever the trial is rerun."""
    workload = loaded.workload
    if workload.kind == "callable":
        import torch

        torch.manual_seed(seed)
    return load_workload(workload, seed=loaded.spec.seed, val_fraction=loaded.spec.val_fraction, config=params)


def _history(epochs: list[Any]) -> dict[str, list[Any]]:
    """Per-epoch curves, stored with the trial for learning-curve plots."""
    keys = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr")
    return {"epoch": [e.epoch for e in epochs], **{k: [getattr(e, k) for e in epochs] for k in keys}}


def _record(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():  # buffered: written with the trial's other data in one commit
        trial.set_user_attr(key, value)


def _release_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _claim(loaded: Loaded, budget: int, *, look_for_stale: bool = True) -> tuple[str, optuna.Trial | None]:
    """Under the study lock: free the trials of dead workers, then start one trial if the budget
    allows it. Queued trials (grid points, re-queued copies) are taken first, so with K workers
    the study ends with exactly `budget` finished trials and each grid point runs once."""
    study = loaded.study
    if look_for_stale:
        fail_lost(study)

    def decide(states: Counter[TrialState]) -> str:
        finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
        running, waiting = states[TrialState.RUNNING], states[TrialState.WAITING]
        if finished >= budget:
            return "budget"
        if finished + running >= budget:
            return "wait"  # a running trial may still fail and free its place
        if loaded.spec.sampler == "grid" and waiting == 0:
            return "wait" if running else "grid_exhausted"
        return "trial"

    if isinstance(study._storage, BufferedStorage):  # counted and, if a trial is due, created at once
        states = study._storage.claim(study._study_id, lambda counts: decide(counts) == "trial")
    else:
        states = count_states(study._storage, study._study_id)
    decision = decide(states)
    if decision != "trial":
        return decision, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask()
    if not isinstance(study._storage, BufferedStorage):  # Optuna's storage: who runs it, just after (until then its start stands for a beat)
        trial.set_user_attr(sql.WORKER_ATTR, worker_identity())
    return "trial", trial


def lost_reason(running: sql.Running, grace_s: float) -> str | None:
    """Why a running trial's worker counts as lost, or None while it may still be alive."""
    if process_gone(running.worker):
        return f"lost its worker: process {describe(running.worker)} is gone"
    if running.silent_s is not None and running.silent_s > grace_s:
        return f"lost its worker: no heartbeat for {_silence(running.silent_s)} (grace {grace_s:g}s)"
    return None


def _silence(seconds: float) -> str:
    return f"{seconds:.0f}s" if math.isfinite(seconds) else "longer than the grace period"


def fail_lost(study: optuna.Study) -> list[int]:
    """Fail the running trials whose workers are gone (silent past the grace period, or a process
    of this host that no longer exists), each with its reason, and queue each again up to the
    study's retries. Returns the numbers of the trials failed."""
    _, grace = heartbeat_settings()
    failed = []
    for running in _running(study._storage, study._study_id):
        reason = lost_reason(running, grace)
        if reason is not None and fail_running(study._storage, running.trial_id, reason=reason):
            _requeue(study, study._storage.get_trial(running.trial_id), f"trial {running.number} {reason}")
            failed.append(running.number)
    return failed


def running_trials(study: optuna.Study) -> list[dict[str, Any]]:
    """The study's running trials: who runs each, how long since its last heartbeat, and in how
    many seconds it will be declared lost if it stays silent (0: at the next look)."""
    _, grace = heartbeat_settings()
    rows = []
    for r in _running(study._storage, study._study_id):
        gone = process_gone(r.worker)
        lost_in = 0.0 if gone else (max(0.0, grace - r.silent_s) if r.silent_s is not None else None)
        rows.append(
            {
                "number": r.number,
                "worker": describe(r.worker) if r.worker else None,
                "worker_gone": gone,
                "started": r.started.isoformat() if r.started else None,
                "heartbeat_age_s": None if r.beat_age_s is None else round(r.beat_age_s, 1),
                "lost_in_s": None if lost_in is None else round(lost_in, 1),
            }
        )
    return rows


def release_trials(loaded: Loaded, *, numbers: list[int] | None = None, stale: bool = False, force: bool = False) -> list[dict[str, Any]]:
    """For a person who knows a worker is gone: fail its running trials now, with the reason,
    and queue each again (as a lost worker's are after the grace period). `numbers` names the
    trials; `stale` takes every running trial whose worker is gone from this host or has missed
    a beat (silent for more than two heartbeat intervals). Everything is checked before anything
    is written: a trial that is not running, or whose worker is alive on this host (unless
    `force`), is refused."""
    study, name = loaded.study, loaded.spec.name
    interval, _ = heartbeat_settings()
    lock = StudyLock(loaded.url, name)
    released = []
    try:
        with lock.held():  # no claim counts the study between a trial's failure and its copy
            running = {r.number: r for r in _running(study._storage, study._study_id)}
            if stale:
                chosen = [r for r in running.values() if process_gone(r.worker) or (r.silent_s or 0.0) > 2 * interval]
            else:
                chosen = []
                for number in numbers or []:
                    r = running.get(number)
                    if r is None:
                        listed = ", ".join(map(str, running)) or "none"
                        raise SpecError(f"trial {number} of study '{name}' is not running (running trials: {listed}); nothing released")
                    if process_gone(r.worker) is False and not force:
                        raise SpecError(
                            f"trial {number} is run by {describe(r.worker)}, which is alive on this host; "
                            f"stop that process (kill {r.worker['pid']}) or pass --force; nothing released"
                        )
                    chosen.append(r)
            for r in chosen:
                gone = process_gone(r.worker)
                state = "gone" if gone else (f"silent {_silence(r.silent_s)}" if r.silent_s is not None else "silence unknown")
                reason = f"released by hand (tuner study release): worker {describe(r.worker)} {state}"
                if fail_running(study._storage, r.trial_id, reason=reason):
                    queued = _requeue(study, study._storage.get_trial(r.trial_id), f"trial {r.number} {reason}")
                    released.append({"number": r.number, "worker": describe(r.worker), "reason": reason, "queued_again": queued})
    finally:
        lock.close()
    return released


def _close_interrupted(study: optuna.Study, trial: optuna.Trial, signal_name: str) -> None:
    """A signal landed between claiming the trial and recording its result: close it as failed,
    with the reason, and queue it again (unless its result was already recorded)."""
    storage = study._storage
    try:
        storage.remove_session()  # the signal may have broken the session mid-query
        if storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            return
        reason = f"interrupted by {signal_name}"
        trial.set_user_attr("fail_reason", reason)
        _requeue(study, study.tell(trial, state=TrialState.FAIL), reason)
    except Exception:  # the database is unreachable: the heartbeat grace period will free the trial
        pass


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None, *, state: TrialState | None = None) -> FrozenTrial:
    """Study.tell, less the deep copy of the finished trial it returns where tuner's storage
    already hands out a copy of its own (a deep copy of a trial's attributes costs ~0.2 ms)."""
    tell = optuna_paths().tell
    if tell is None or not isinstance(study._storage, BufferedStorage):
        return study.tell(trial, value, state=state)
    tell(study, trial, value, state)
    return study._storage.get_trial(trial._trial_id)


def _execute(loaded: Loaded, trial: optuna.Trial, objective: Callable[[optuna.Trial], float], heartbeat: Heartbeat) -> FrozenTrial:
    """Run one claimed trial with a heartbeat and close it with a state and, if not complete, why."""
    study = loaded.study
    with heartbeat.running(trial._trial_id):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            return _tell(study, trial, state=TrialState.PRUNED)
        except Exception:  # the objective stored the reason
            return _tell(study, trial, state=TrialState.FAIL)
    if not math.isfinite(value):
        trial.set_user_attr("fail_reason", f"objective returned {value}")
        return _tell(study, trial, state=TrialState.FAIL)
    return _tell(study, trial, value)


@contextlib.contextmanager
def signals_interrupt():  # type: ignore[no-untyped-def]
    """SIGTERM (a scheduler's kill) behaves like Ctrl-C: the trial is closed, then the process exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        raise Interrupted("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt as e:
        if not isinstance(e, Interrupted):
            raise Interrupted("SIGINT") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Progress:
    """The study's finished count and best value for the progress callback. Other workers change
    them too, so they are read from the database, but at most every PROGRESS_S seconds; in between
    this worker's own results carry them forward, and a trial does not pay for two queries."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study
        self._maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        self._read_at = -math.inf
        self.n_finished, self.best = 0, None

    def after(self, trial: FrozenTrial) -> tuple[int, float | None]:
        if time.monotonic() - self._read_at >= PROGRESS_S:
            self.n_finished, self.best = progress(self._study._storage, self._study._study_id, self._study.direction)
            self._read_at = time.monotonic()
            return self.n_finished, self.best
        self.n_finished += trial.state in FINISHED
        value = trial.value if trial.state == TrialState.COMPLETE else None
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
) -> RunResult:
    """One worker: claim and run trials until the study holds `spec.trials` finished trials (all
    workers and runs together), the grid is exhausted, or the timeout passes. Failed trials do not
    count toward the budget; a run of identical failures stops the worker with the reason.

    While the rest of the budget is other workers' running trials, the worker waits (one of them
    may fail or be lost) and calls `on_wait` with those trials at each look (see running_trials)."""
    from tuner.train import resolve_device

    _quiet_optuna()
    study, spec = loaded.study, loaded.spec
    torch_device = resolve_device(device)
    set_threads(threads)
    objective = make_objective(loaded, torch_device)
    from tuner.train import warm_up

    warm_up(torch_device)  # a new worker's one-time costs, before it claims a trial
    # Everything loaded so far (torch, Optuna, the data) lives as long as the worker: take it out
    # of the collector's sight, or every full collection walks it again (~10 ms a trial). No
    # collection first: it would cost as much once, to free the little garbage there is.
    gc.freeze()
    budget = int(spec.trials or DEFAULT_TRIALS)
    lock = StudyLock(loaded.url, spec.name)
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    failures: list[str] = []
    ran = 0
    stopped = "budget"
    interval, _ = heartbeat_settings()
    stale_checked = -math.inf
    waiting = False
    tracker = _Progress(study)
    heartbeat = Heartbeat(study._storage, interval, first_beat_written=isinstance(study._storage, BufferedStorage))
    try:
        with signals_interrupt():
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    stopped = "timeout"
                    break
                trial = None
                try:
                    # dead workers' trials only turn stale after a grace period: one look per
                    # interval, or at every poll while nothing else is left to do
                    look = waiting or time.monotonic() - stale_checked >= interval
                    with lock.held():
                        decision, trial = _claim(loaded, budget, look_for_stale=look)
                    if look:
                        stale_checked = time.monotonic()
                    waiting = decision == "wait"
                    if waiting:
                        if on_wait is not None:
                            on_wait(running_trials(study))
                        time.sleep(POLL_S)
                        continue
                    if trial is None:
                        stopped = decision
                        break
                    frozen = _execute(loaded, trial, objective, heartbeat)
                except KeyboardInterrupt as e:
                    if trial is not None:
                        _close_interrupted(study, trial, getattr(e, "signal_name", "SIGINT"))
                    raise
                ran += 1
                if frozen.state == TrialState.FAIL:
                    failures.append(frozen.user_attrs.get("fail_reason", "unknown error"))
                    recent = failures[-MAX_CONSECUTIVE_FAILURES:]
                    if len(recent) == MAX_CONSECUTIVE_FAILURES and len(set(recent)) == 1:
                        raise TunerError(
                            f"study '{spec.name}' stopped after {MAX_CONSECUTIVE_FAILURES} trials failed the same way: "
                            f"{recent[0]} (fix it, then `tuner study resume {spec.name}`)"
                        )
                else:
                    failures.clear()
                if on_trial is not None:
                    n_finished, best = tracker.after(frozen)
                    on_trial(frozen, n_finished, budget, best)
    finally:
        heartbeat.close()
        lock.close()
    return summarize(loaded, budget=budget, ran=ran, stopped=stopped, elapsed_s=time.monotonic() - started, failures=failures)


def summarize(loaded: Loaded, *, budget: int, ran: int, stopped: str, elapsed_s: float, failures: list[str]) -> RunResult:
    study = loaded.study
    states = count_states(study._storage, study._study_id)
    best = _best_trial(study)
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
    )


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


# ---------------------------------------------------------------------------------------------
# inspect, export, delete


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    storage = open_storage(storage_url)
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        spec = s.user_attrs.get(SPEC_ATTR, {})
        rows.append(
            {
                "name": s.study_name,
                "direction": s.direction.name.lower(),
                "trials": s.n_trials,
                "best_value": s.best_trial.value if s.best_trial else None,
                "sampler": spec.get("sampler"),
                "workload": spec.get("workload"),
                "budget": spec.get("trials"),
            }
        )
    return rows


def study_summary(loaded: Loaded, storage_url: str) -> dict[str, Any]:
    study = loaded.study
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    best = _best_trial(study)
    pruned_reasons: dict[str, int] = {}
    failed_reasons: dict[str, int] = {}
    for t in trials:
        if t.state == TrialState.PRUNED:
            kind = "diverged" if str(t.user_attrs.get("pruned_reason", "")).startswith("diverged") else "pruner"
            pruned_reasons[kind] = pruned_reasons.get(kind, 0) + 1
        elif t.state == TrialState.FAIL:
            reason = fail_reason(t.user_attrs)
            kind = "lost worker" if reason.startswith("lost") else reason.split(":")[0]
            failed_reasons[kind] = failed_reasons.get(kind, 0) + 1
    return {
        "name": loaded.spec.name,
        "storage": mask(storage_url),
        "spec": loaded.spec.as_dict(),
        "direction": loaded.spec.direction,
        "trials": {"total": len(trials), **states},
        "finished": states["complete"] + states["pruned"],
        "pruned_reasons": pruned_reasons,
        "failed_reasons": failed_reasons,
        "retried": sum("retry_of" in t.user_attrs for t in trials),
        "running": running_trials(study),
        "best": _trial_dict(best) if best else None,
    }


def fail_reason(user_attrs: dict[str, Any]) -> str:
    """Why a failed trial failed: what tuner recorded, or (nothing recorded) its worker was lost."""
    return str(user_attrs.get("fail_reason") or "lost its worker: no heartbeat within the grace period")


def _trial_dict(t: FrozenTrial) -> dict[str, Any]:
    duration = t.duration.total_seconds() if t.duration else None
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": t.value,
        "params": dict(t.params),
        "duration_s": duration,
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        "user_attrs": dict(t.user_attrs),
        "intermediate_values": {int(k): v for k, v in sorted(t.intermediate_values.items())},
    }


def trial_rows(loaded: Loaded, *, states: tuple[TrialState, ...] | None = None) -> list[dict[str, Any]]:
    return [_trial_dict(t) for t in loaded.study.get_trials(deepcopy=False, states=states)]


def export_trials(loaded: Loaded, out: Path, *, fmt: str) -> int:
    """Every trial to CSV (one row per trial, params and attributes as columns) or JSON (with
    intermediate values and the study's spec and space). Written atomically."""
    rows = trial_rows(loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == "json":
        doc = {"study": loaded.spec.as_dict(), "space": loaded.space.to_dict(), "trials": rows}
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    else:
        param_names = sorted({k for r in rows for k in r["params"]})
        attr_names = sorted({k for r in rows for k in r["user_attrs"]})
        header = ["number", "state", "value", "duration_s", "datetime_start", "datetime_complete"]
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header + [f"params_{p}" for p in param_names] + [f"user_attrs_{a}" for a in attr_names])
            for r in rows:
                w.writerow(
                    [r[h] for h in header]
                    + [r["params"].get(p, "") for p in param_names]
                    + [r["user_attrs"].get(a, "") for a in attr_names]
                )
    tmp.replace(out)
    return len(rows)


def delete_study(name: str, storage_url: str) -> None:
    open_study(name, storage_url)  # a clear error for a missing study
    optuna.delete_study(study_name=name, storage=open_storage(storage_url))
