"""Several workers on one study: K local processes, each a `tuner worker`, sharing the storage.

The distributed engine is the database: every worker claims trials under the study lock (see
tuner.study.run), so a worker started here, on another host (`tuner worker NAME --storage
URL`) or both, shares one budget and one grid. This module only starts, watches and stops them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from tuner.errors import TunerError
from tuner.study import Loaded, RunResult, signals_interrupt, summarize

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
    n_workers: int,
    device: str = "auto",
    timeout: float | None = None,
    threads: int | None = None,
    pack: int | str | None = None,
    on_progress: Callable[[int, int, float | None], None] | None = None,
) -> RunResult:
    """Start `n_workers` worker processes on the study, report progress until they end, and return
    the study's result. Ctrl-C or SIGTERM is passed on to every worker, which closes its trial."""
    from tuner.storage import progress

    spec = loaded.spec

    def report() -> None:
        n_finished, best = progress(loaded.study._storage, loaded.study._study_id, loaded.study.direction)
        on_progress(n_finished, int(spec.trials or 0), best)  # type: ignore[misc]

    # The storage URL travels in the environment, not on the command line, where `ps` shows it.
    env = {**os.environ, "TUNER_STORAGE": loaded.url}
    logs = Path(tempfile.mkdtemp(prefix=f"tuner-{spec.name}-"))
    procs: list[subprocess.Popen] = []
    started = time.monotonic()
    for i in range(n_workers):
        cmd = [
            sys.executable, "-m", "tuner", "worker", spec.name,
            "--worker-index", str(i), "--workers", str(n_workers),
            "--device", worker_device(device, i), "--format", "json", "--quiet",
        ]
        if timeout:
            cmd += ["--timeout", str(timeout)]
        if threads:
            cmd += ["--threads", str(threads)]
        if pack is not None:
            cmd += ["--pack", str(pack)]
        out = (logs / f"worker-{i}.out").open("w")
        err = (logs / f"worker-{i}.err").open("w")
        # Own session: a terminal's Ctrl-C reaches the parent, which passes it on once.
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True, preexec_fn=_die_with_parent)
        )

    def stop_all(signum: int) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    try:
        with signals_interrupt():
            while any(p.poll() is None for p in procs):
                if on_progress is not None:
                    report()
                time.sleep(_WATCH_S)
    except KeyboardInterrupt as e:
        stop_all(signal.SIGTERM if getattr(e, "signal_name", "") == "SIGTERM" else signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    if on_progress is not None:
        report()

    ran, stops, problems = 0, set(), []
    for i, p in enumerate(procs):
        out_text = (logs / f"worker-{i}.out").read_text()
        err_text = (logs / f"worker-{i}.err").read_text().strip()
        if p.returncode == 0:
            doc = json.loads(out_text)
            ran += doc["ran"]
            stops.add(doc["stopped"])
        else:
            last = err_text.splitlines()[-1] if err_text else f"exit code {p.returncode}"
            problems.append(f"worker {i}: {last.removeprefix('error: ')}")
    if not problems:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        raise TunerError(f"{len(problems)} of {n_workers} workers failed; " + "; ".join(problems) + f" (logs in {logs})")
    stopped = "grid_exhausted" if "grid_exhausted" in stops else ("timeout" if stops == {"timeout"} else "budget")
    return summarize(loaded, budget=int(spec.trials or 0), ran=ran, stopped=stopped, elapsed_s=time.monotonic() - started, failures=[])
