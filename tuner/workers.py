"""Several workers on one study: K local processes, each a `tuner worker`, sharing the storage.

The distributed engine is the database: every worker claims trials under the study lock (see
tuner.study.run), so a worker started here, on another host (`tuner worker NAME --storage
URL`) or both, shares one budget and one grid. This module only starts, watches and stops them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from tuner.errors import TunerError
from tuner.outage import OUTAGE, DatabaseGone
from tuner.slots import DEFAULT_MAX_RESTARTS, Slot, describe_death, describe_exit
from tuner.study import Loaded, RunResult, Stop, signals_interrupt, summarize

__all__ = ["run_workers", "worker_device"]

_WATCH_S = 0.5  # how often the parent reads progress from the database


def _die_with_parent() -> None:
    """In each worker (Linux): SIGTERM when the parent dies, even by SIGKILL, so no worker outlives
    the `tuner study run` that started it; SIGTERM lets it close and re-queue its trial first."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_device(device: str, index: int) -> str:
    """Worker i takes the i-th visible GPU (round-robin) when the device is auto or plain cuda."""
    if device not in ("auto", "cuda"):
        return device
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        return "cpu" if device == "auto" else device
    return f"cuda:{index % n}"


def run_workers(
    loaded: Loaded,
    *,
    n_workers: int | None = None,
    slots: list[Slot] | None = None,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    device: str = "auto",
    timeout: float | None = None,
    threads: int | None = None,
    pack: int | str | None = None,
    on_progress: Callable[[int, int, float | None], None] | None = None,
    limits: tuple[int | None, int | None] = (None, None),
) -> RunResult:
    """Start a worker process on every slot (or `n_workers` plain ones), report progress until
    they end, and return the study's result. A worker that dies (a non-zero exit, a kill) is
    replaced on its slot while the study has work left, up to `max_restarts` times in all; each
    death is kept with its reason. Ctrl-C or SIGTERM is passed on to every worker, which closes
    its trial."""
    from tuner.storage import progress

    spec = loaded.spec
    budget = int(spec.trials or 0)
    slots = slots if slots is not None else [Slot(i, None) for i in range(n_workers or 1)]
    n_slots = len(slots)

    last: list[tuple[int, float | None]] = [(0, None)]
    probed = [-math.inf]

    def finished() -> tuple[int, float | None]:
        """The study's progress; through a database outage, the last known (the workers wait it
        out), the database tried again each second to see it back."""
        if OUTAGE.began is None or time.monotonic() - probed[0] >= 1.0:
            probed[0] = time.monotonic()
            try:
                last[0] = progress(loaded.study._storage, loaded.study._study_id, loaded.study.directions)
            except Exception as e:
                if not OUTAGE.failed(e):
                    raise
            else:
                OUTAGE.answered()
        return last[0]

    # The storage URL travels in the environment, not on the command line, where `ps` shows it.
    base_env = {**os.environ, "TUNER_STORAGE": loaded.url}
    logs = Path(tempfile.mkdtemp(prefix=f"tuner-{spec.name}-"))
    started = time.monotonic()
    running: dict[int, _Worker] = {}  # slot index -> its worker now
    n_started = 0

    def start(slot: Slot) -> None:
        nonlocal n_started
        index, n_started = n_started, n_started + 1  # a replacement samples with a seed of its own
        cmd = [
            sys.executable, "-m", "tuner", "worker", spec.name,
            "--worker-index", str(index), "--workers", str(n_slots),
            "--device", _slot_device(device, slot), "--format", "json", "--quiet",
        ]
        if timeout:
            cmd += ["--timeout", str(max(1.0, timeout - (time.monotonic() - started)))]
        if threads:
            cmd += ["--threads", str(threads)]
        for flag, limit in zip(("--max-failures", "--max-streak"), limits):
            if limit is not None:
                cmd += [flag, str(limit)]
        if pack is not None:
            cmd += ["--pack", str(pack)]
        cmd += ["--db-retry-for", f"{OUTAGE.retry_for_s:g}"]
        env = base_env if slot.gpu is None else {**base_env, "CUDA_VISIBLE_DEVICES": slot.gpu}
        out, err = logs / f"worker-{index}.out", logs / f"worker-{index}.err"
        with out.open("w") as o, err.open("w") as e:
            # Own session: a terminal's Ctrl-C reaches the parent, which passes it on once.
            proc = subprocess.Popen(cmd, env=env, stdout=o, stderr=e, start_new_session=True, preexec_fn=_die_with_parent)
        running[slot.index] = _Worker(slot, proc, out, err)

    def stop_all(signum: int) -> None:
        for w in running.values():
            if w.proc.poll() is None:
                w.proc.send_signal(signum)

    ran, stops, deaths, n_restarts = 0, set(), [], 0
    gone: list[str] = []  # what the workers that gave up on the database said (tuner.outage)
    halted, n_halted = False, 0  # whether a worker's own error stopped the others; how many it stopped
    for slot in slots:
        start(slot)
    try:
        with signals_interrupt():
            while running:
                if on_progress is not None:
                    on_progress(*_with_budget(finished(), budget))
                for w in [w for w in running.values() if w.proc.poll() is not None]:
                    del running[w.slot.index]
                    if w.proc.returncode == 0:
                        done = RunResult.from_json(json.loads(w.out.read_text()))
                        ran += done.ran
                        stops.add(done.stopped)
                        continue
                    if w.proc.returncode == DatabaseGone.exit_code:  # a new worker would only wait again
                        gone.append(w.death()["last_stderr"])
                        continue
                    if halted and w.proc.returncode != 1:
                        n_halted += 1  # stopped by us, below: not a death of its own
                        continue
                    death = w.death()
                    # work left: no worker has ended well (budget, grid or timeout) and the budget is not met
                    work_left = not stops and finished()[0] < budget and not (timeout and time.monotonic() - started >= timeout)
                    # exit 1 is tuner's own error (five identical failures, a changed data file):
                    # a new worker would meet it again, so it is reported, not replaced
                    if work_left and w.proc.returncode != 1 and n_restarts < max_restarts:
                        n_restarts += 1
                        death["replaced"] = True
                        start(w.slot)
                    deaths.append(death)
                    if w.proc.returncode == 1 and not halted:
                        # the others would meet the error too (a broken command fails in every
                        # worker): stop them now, each closing and queueing its running trial
                        halted = True
                        stop_all(signal.SIGTERM)
                time.sleep(_WATCH_S)
    except KeyboardInterrupt as e:
        stop_all(signal.SIGTERM if getattr(e, "signal_name", "") == "SIGTERM" else signal.SIGINT)
        for w in running.values():
            w.proc.wait()
        raise
    if on_progress is not None:
        on_progress(*_with_budget(finished(), budget))
    if gone and (OUTAGE.began is not None or finished()[0] < budget):
        raise DatabaseGone(f"{len(gone)} of {n_slots} workers stopped: {gone[0]}")

    lost = [d for d in deaths if not d["replaced"]]
    if lost:
        errors = any(d["exit"] == describe_exit(1) for d in lost)
        spent = "with an error a new worker would meet again" if errors else f"--max-restarts {max_restarts} spent" if n_restarts >= max_restarts else "after the study's work was done"
        others = f"; {n_halted} other worker(s) stopped with it, their running trials queued again" if n_halted else ""
        raise TunerError(
            f"{len(lost)} of {n_slots} worker slots stopped ({spent}): " + "; ".join(map(describe_death, lost))
            + f"{others} (logs in {logs}); fix the cause or raise --max-restarts, then `tuner study resume {spec.name}`"
        )
    shutil.rmtree(logs, ignore_errors=True)
    result = OUTAGE.call(summarize, loaded, budget=budget, ran=ran, stopped=Stop.of_workers(stops), elapsed_s=time.monotonic() - started, failures=[])
    return dataclasses.replace(result, worker_deaths=deaths)


def _with_budget(counts: tuple[int, float | None], budget: int) -> tuple[int, int, float | None]:
    return counts[0], budget, counts[1]


def _slot_device(device: str, slot: Slot) -> str:
    """The --device a slot's worker gets: pinned to a GPU, it sees that GPU alone, as cuda:0."""
    if slot.gpu is None:
        return worker_device(device, slot.index)
    return "cuda" if device.startswith("cuda") else device


class _Worker:
    """A local worker process on its slot, with the files its output goes to."""

    def __init__(self, slot: Slot, proc: subprocess.Popen, out: Path, err: Path) -> None:
        self.slot, self.proc, self.out, self.err = slot, proc, out, err

    def death(self) -> dict[str, Any]:
        """Why it died: how it ended and the last error it wrote to stderr (else its last line)."""
        lines = [line for line in self.err.read_text(errors="replace").splitlines() if line.strip()]
        # tuner's own last word is its `error:` line (a driver's message may add lines after it)
        said = next((line for line in reversed(lines) if line.startswith("error: ")), lines[-1] if lines else "")
        return {
            "slot": self.slot.index,
            "gpu": self.slot.gpu,
            "pid": self.proc.pid,
            "exit": describe_exit(self.proc.returncode),
            "last_stderr": said.removeprefix("error: "),
            "replaced": False,
        }
