"""Trials whose worker is gone: found (silent past the grace period, or a process of this host
that no longer exists), failed with the reason and queued again; shown while running; released by
hand. The heartbeats and worker identities they rely on are tuner.heartbeat's."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner import attrs as A
from tuner import sql
from tuner.errors import SpecError
from tuner.heartbeat import describe, process_gone
from tuner.outage import OUTAGE
from tuner.spec import StudySpec
from tuner.storage import StudyLock, fail_running, heartbeat_settings, running_rows
from tuner.study.store import SPEC_ATTR, Loaded

__all__ = ["fail_lost", "lost_reason", "release_trials", "requeue", "running_trials"]


def requeue(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Queue a copy of a lost or interrupted trial with the same parameters, up to the study's
    `retries`; the copy records which trial it repeats and why. False if its retries are spent."""
    retries = study.user_attrs.get(SPEC_ATTR, {}).get("retries", StudySpec.retries)
    count = int(trial.user_attrs.get(A.RETRY_COUNT, 0)) + 1
    if count > retries:
        return False
    if any(t.user_attrs.get(A.RETRY_OF) == trial.number for t in study.get_trials(deepcopy=False)):
        return True  # queued already, by its worker as it was interrupted (see run._close_interrupted)
    params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))  # a queued point not yet sampled
    study.enqueue_trial(
        params,
        user_attrs={
            A.RETRY_OF: trial.number,
            A.RETRY_ROOT: trial.user_attrs.get(A.RETRY_ROOT, trial.number),
            A.RETRY_COUNT: count,
            A.RETRY_REASON: reason,
        },
    )
    return True


def lost_reason(running: sql.Running, grace_s: float, *, by_silence: bool = True) -> str | None:
    """Why a running trial's worker counts as lost, or None while it may still be alive. Without
    `by_silence`, only a gone process counts (just after a database outage, when no worker's
    beats could land)."""
    if process_gone(running.worker):
        return f"lost its worker: process {describe(running.worker)} is gone"
    if by_silence and running.silent_past(grace_s):
        return f"lost its worker: no heartbeat for {_silence(running.silent_s)} (grace {grace_s:g}s)"
    return None


def _silence(seconds: float) -> str:
    return f"{seconds:.0f}s" if math.isfinite(seconds) else "longer than the grace period"


def fail_lost(study: optuna.Study) -> list[int]:
    """Fail the running trials whose workers are gone (silent past the grace period, or a process
    of this host that no longer exists), each with its reason, and queue each again up to the
    study's retries. Returns the numbers of the trials failed."""
    _, grace = heartbeat_settings()
    by_silence = not OUTAGE.settling(grace)  # an outage silenced every worker: they get a grace period to beat again
    failed = []
    for running in running_rows(study._storage, study._study_id):
        reason = lost_reason(running, grace, by_silence=by_silence)
        if reason is not None and fail_running(study._storage, running.trial_id, reason=reason, kind=A.LOST_WORKER):
            requeue(study, study._storage.get_trial(running.trial_id), f"trial {running.number} {reason}")
            failed.append(running.number)
    return failed


def running_trials(study: optuna.Study) -> list[dict[str, Any]]:
    """The study's running trials: who runs each, how long since its last heartbeat, and in how
    many seconds it will be declared lost if it stays silent (0: at the next look)."""
    _, grace = heartbeat_settings()
    rows = []
    for r in running_rows(study._storage, study._study_id):
        gone = process_gone(r.worker)
        lost_in = 0.0 if gone else (max(0.0, grace - r.silent_s) if r.silent_s is not None else None)
        rows.append(
            {
                "number": r.number,
                "worker": describe(r.worker) if r.worker else None,
                "slurm": (r.worker or {}).get("slurm"),  # the Slurm task holding it (JOBID_TASKID), for scancel
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
            running = {r.number: r for r in running_rows(study._storage, study._study_id)}
            if stale:
                chosen = [r for r in running.values() if process_gone(r.worker) or r.silent_past(2 * interval)]
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
                if fail_running(study._storage, r.trial_id, reason=reason, kind=A.RELEASED):
                    queued = requeue(study, study._storage.get_trial(r.trial_id), f"trial {r.number} {reason}")
                    released.append({"number": r.number, "worker": describe(r.worker), "reason": reason, "queued_again": queued})
    finally:
        lock.close()
    return released
