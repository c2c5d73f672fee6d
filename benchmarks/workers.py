"""Workers: trials per second with 1 and 2 local workers on one study."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from benchmarks.common import REFERENCE_SPACE, Bench, quiet, space_path
from tuner.spec import StudySpec

__all__ = ["measure_workers"]


def _median_dicts(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _rate_at_full_concurrency(trials: list[FrozenTrial], n_workers: int) -> float:
    """Trials per second while all n_workers were running trials: from the first moment that many
    trials ran at once to the last, read from the trials' own start and end times. Worker start-up
    (a process importing torch) and the tail where one worker is left are not counted."""
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    events = sorted([(t.datetime_start, 1) for t in done] + [(t.datetime_complete, -1) for t in done], key=lambda e: (e[0], e[1]))
    running, first, last = 0, None, None
    for when, step in events:
        if step < 0 and running == n_workers:
            last = when
        running += step
        if running == n_workers and first is None:
            first = when
    if first is None or last is None or last <= first:  # never all at once: the whole span instead
        first, last = min(t.datetime_start for t in done), max(t.datetime_complete for t in done)
    n_in = sum(first < t.datetime_complete <= last for t in done)
    return n_in / (last - first).total_seconds()


def measure_workers(bench: Bench) -> dict[str, Any]:
    """Trials per second on one SQLite study with 1 worker (run_study, in this process) and with 2
    local worker processes (run_workers), each with tuner's default threads (its share of the cores)."""
    from tuner.study import create_study, run_study
    from tuner.workers import run_workers

    settings, device, spaces_dir = bench.settings, bench.device, bench.spaces_dir
    quiet()
    n = settings.n_workers_trials
    cores = os.cpu_count() or 1
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        for r in range(settings.repeats):
            for k in (1, 2):
                url = f"sqlite:///{Path(tmp) / f'workers{k}-{r}.db'}"
                spec = StudySpec(
                    name=f"bench-workers-{k}", space=space_path(REFERENCE_SPACE, spaces_dir), sampler="random", pruner="none", seed=settings.seed + r, trials=n
                )
                loaded = create_study(spec, url, spaces_dir=spaces_dir)
                started = time.perf_counter()
                if k == 1:
                    run_study(loaded, device=str(device), pack=1)
                else:
                    run_workers(loaded, n_workers=k, device=str(device), pack=1)
                wall = time.perf_counter() - started
                trials = loaded.study.get_trials(deepcopy=False)
                runs[k].append({"trials_per_s": _rate_at_full_concurrency(trials, k), "with_startup_per_s": n / wall})
                bench.log(f"workers {k} ({r + 1}/{settings.repeats}): {runs[k][-1]['trials_per_s']:.2f} trials/s")
    one, two = _median_dicts(runs[1]), _median_dicts(runs[2])
    return {
        "how": (
            "digits trials of search_spaces/bench_ref.yaml, RandomSampler, no pruning, unpacked (--pack 1), one SQLite study; "
            "trials/s while every worker was running a trial, from the trials' start and end times (worker "
            "start-up not counted; with_startup_per_s counts it); tuner's default threads: all cores for 1 worker, "
            "cores/2 each for 2"
        ),
        "n_trials": n,
        "threads_per_worker": {"1": cores, "2": max(cores // 2, 1)},
        "1": one,
        "2": two,
        "ratio": two["trials_per_s"] / one["trials_per_s"],
        # two workers cannot run more than twice as fast as one, nor faster than the cores allow:
        # a ratio above that is a fault of the measurement (a slow spell in the 1-worker run), not a figure
        "impossible": two["trials_per_s"] / one["trials_per_s"] > 1.1 * min(2, cores),
    }
