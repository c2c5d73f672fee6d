"""Who runs a trial, and whether it is still alive: the worker's heartbeat thread and identity.

Every way a trial becomes RUNNING (a new trial, a queued one) writes its first heartbeat and the
claiming worker's identity in the same transaction (tuner.sql), so a worker killed at any moment
leaves a trial that turns stale. A trial is declared lost when its heartbeat is older than the
grace period, or at once when its worker was on this host and its process is provably gone.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

_OUTAGE_BEAT_S = 1.0  # the time between beats while the database does not answer

__all__ = ["Heartbeat", "describe", "process_gone", "slurm_task", "worker_identity"]


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None
    if there is no such process or it is a zombie (killed, not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]


@lru_cache(maxsize=1)
def _namespace() -> str | None:
    """This boot and this PID namespace: two processes can judge each other's pids only within
    both (containers on one host may share its name but not its pids)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def worker_identity() -> dict[str, Any]:
    """What is stored with each trial this process claims: host and pid (and the GPUs it was
    pinned to) for people, and for tuner the boot, the PID namespace and the process's start
    time, so that a dead worker on the same host is told apart from a live one (pids are reused)."""
    identity: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpu is not None:  # pinned (--gpus, a scheduler): the GPU(s) this worker could see
        identity["gpu"] = gpu
    namespace, started = _namespace(), _proc_start(os.getpid())
    if namespace and started:
        identity["proc"] = f"{namespace}/{started}"
    slurm = slurm_task()
    if slurm:
        identity["slurm"] = slurm
    return identity


def slurm_task() -> str | None:
    """The Slurm task this process runs in, as squeue and scancel name it: JOBID_TASKID for a task
    of a job array (`tuner launch slurm`), the job id for a plain job; None outside Slurm."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def process_gone(identity: dict[str, Any] | None) -> bool | None:
    """True if the worker ran on this host, in this boot and PID namespace, and its process no
    longer exists (or its pid now belongs to a newer process); False if it is alive; None if this
    host cannot tell (another host, or no identity recorded)."""
    if not identity or identity.get("host") != socket.gethostname() or "proc" not in identity:
        return None
    namespace, _, started = str(identity["proc"]).rpartition("/")
    if namespace != _namespace():
        return None
    return _proc_start(int(identity["pid"])) != started


def describe(identity: dict[str, Any] | None) -> str:
    """host:pid, and the Slurm task that runs it if any, as people read a worker's identity."""
    if not identity:
        return "unknown worker"
    slurm = f" (Slurm {identity['slurm']})" if identity.get("slurm") else ""
    return f"{identity.get('host')}:{identity.get('pid')}{slurm}"


class Heartbeat:
    """The worker's heartbeat: one thread for the worker's life, beating every `interval` seconds
    for the trial it runs now (a thread started per trial cost ~0.4 ms a trial). A beat never
    lands after its trial has ended: `running` waits for a beat in progress before it returns."""

    def __init__(self, storage: Any, interval: float, *, first_beat_written: bool) -> None:
        self._storage = storage
        self._interval = interval
        # the claim wrote the first beat with the trial (tuner's storage); else beat at once
        self._first = interval if first_beat_written else 0.0
        self._cv = threading.Condition()
        self._trial_ids: tuple[int, ...] = ()
        self._due = math.inf
        self._closed = False
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        with self._cv:  # held while beating: a trial cannot end in the middle of its beat
            while not self._closed:
                wait = self._due - time.monotonic() if self._trial_ids else None
                if wait is None or wait > 0:
                    self._cv.wait(wait)
                    continue
                beaten = self._beat(self._trial_ids)
                # through an outage, beat again soon: the beat that lands first after it keeps
                # the trial from turning stale, and writes what waited (tuner.outage)
                self._due = time.monotonic() + (self._interval if beaten else min(self._interval, _OUTAGE_BEAT_S))

    def _beat(self, trial_ids: tuple[int, ...]) -> bool:
        """Whether the beat landed; a missed beat is tried again, the grace period covers it."""
        beats = getattr(self._storage, "record_heartbeats", None)
        if beats is not None:  # tuner's storage: a pack's beats in one transaction
            try:
                beats(trial_ids)
            except Exception:
                return False
            return True
        landed = True
        for trial_id in trial_ids:  # Optuna's: a transaction each
            try:
                self._storage.record_heartbeat(trial_id)
            except Exception:
                landed = False
        return landed

    @contextlib.contextmanager
    def running(self, *trial_ids: int) -> Iterator[None]:
        """Beat for these trials (one, or a pack's) until the block ends."""
        with self._cv:
            self._trial_ids, self._due = trial_ids, time.monotonic() + self._first
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                self._thread.start()
            self._cv.notify()
        try:
            yield
        finally:
            with self._cv:
                self._trial_ids, self._due = (), math.inf

    def release(self, trial_id: int) -> None:
        """Stop beating for one trial of those `running` beats for (its pack-mates go on); returns
        once no beat for it is in progress, so it can be closed."""
        with self._cv:
            self._trial_ids = tuple(t for t in self._trial_ids if t != trial_id)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
