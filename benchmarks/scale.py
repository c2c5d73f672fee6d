"""Scale: a trial's service time as one study grows to 1,000, 10,000 and 100,000 trials, on SQLite
and on PostgreSQL; TPE's sampling time at each size; and the seconds each read command takes on
the largest study, as a person runs it (a new process)."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from benchmarks.common import Bench, Clock, check_timed, quiet, time_sampler
from benchmarks.growth import fill_to, growth_space, timed_window
from tuner.errors import TunerError
from tuner.spec import StudySpec

__all__ = ["COMMANDS", "measure_scale"]

# The read commands timed on the largest study: what each does, as argv after `tuner`.
COMMANDS = {
    "study list": ["study", "list"],
    "study show": ["study", "show", "{name}"],
    "study best": ["study", "best", "{name}"],
    "study trials": ["study", "trials", "{name}"],
    "study export": ["study", "export", "{name}", "--out", "{work}/export.csv"],
    "report": ["report", "{name}", "--out", "{work}/report"],
}


@contextlib.contextmanager
def _backends(bench: Bench, workdir: Path) -> Iterator[list[tuple[str, str]]]:
    """(label, URL) of a fresh SQLite file and, where the bench has a PostgreSQL server, a fresh database there."""
    from benchmarks.overhead import _postgres_databases

    urls = [("sqlite", f"sqlite:///{workdir / 'scale.db'}")]
    if bench.postgres is None:
        yield urls
        return
    try:
        with _postgres_databases(bench.postgres) as new_url:
            yield [*urls, ("postgresql", new_url("scale"))]
    except TunerError as e:
        if "not reachable" not in str(e):
            raise
        bench.log(f"scale postgresql: skipped: {e}")
        yield urls


def _time_commands(name: str, url: str, workdir: Path) -> dict[str, float]:
    """Seconds each read command takes, from its start to its exit (Python's and torch's start-up included: what a person waits)."""
    import os

    tuner = str(Path(sys.executable).with_name("tuner"))
    env = {**os.environ, "TUNER_STORAGE": url, "COLUMNS": "160"}
    out = {}
    for label, argv in COMMANDS.items():
        args = [a.format(name=name, work=workdir) for a in argv]
        started = time.perf_counter()
        result = subprocess.run([tuner, *args], env=env, capture_output=True, text=True, cwd=workdir)
        out[label] = time.perf_counter() - started
        if result.returncode != 0:
            raise TunerError(f"bench scale: `tuner {' '.join(args)}` failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return out


def _one_backend(bench: Bench, label: str, url: str, workdir: Path) -> dict[str, Any]:
    from tuner.samplers import make_sampler
    from tuner.storage import count_states
    from tuner.study import create_study, open_study

    settings, device = bench.settings, bench.device
    space = growth_space(bench.spaces_dir, workdir, settings.growth_epochs)
    window, tpe_window = settings.scale_window, settings.scale_tpe_window
    spec = StudySpec(name=f"bench-scale-{label}", space=space, sampler="random", pruner="none", seed=settings.seed, trials=settings.scale_start)
    loaded = create_study(spec, url, spaces_dir=bench.spaces_dir)
    clock = Clock()
    timed_window(loaded, device, settings.threads, clock)  # the first trials are real: the copies are theirs
    check_timed(clock, spec.trials, "scale")
    rows = []
    for size in settings.scale_sizes:
        started = time.perf_counter()
        fill_to(spec.name, url, size - window - 2 * tpe_window)
        filled_s = time.perf_counter() - started
        loaded = open_study(spec.name, url)
        loaded.spec = dataclasses.replace(loaded.spec, trials=size - 2 * tpe_window)
        random_rows = timed_window(loaded, device, settings.threads, Clock())
        loaded = open_study(spec.name, url)  # TPE on the same study, to the size: its sampling time is Optuna's and grows with the history
        loaded.study.sampler = make_sampler("tpe", settings.seed + size)
        loaded.spec = dataclasses.replace(loaded.spec, trials=size - tpe_window)
        tpe_rows = timed_window(loaded, device, settings.threads, Clock())
        loaded = open_study(spec.name, url)  # and modeling only the last `scale_history` trials (--history)
        loaded.study.sampler = make_sampler("tpe", settings.seed + size + 1, history=settings.scale_history)
        loaded.spec = dataclasses.replace(loaded.spec, trials=size)
        windowed_rows = timed_window(loaded, device, settings.threads, Clock())
        row = {
            "trials": size,
            "counted": sum(count_states(loaded.study._storage, loaded.study._study_id).values()),  # the study did hold `size`
            "service_ms": statistics.median(t["service_ms"] for t in random_rows),
            "storage_and_loop_ms": statistics.median(t["service_ms"] - t["sampling_ms"] - t["reports_ms"] for t in random_rows),
            "tpe_service_ms": statistics.median(t["service_ms"] for t in tpe_rows) if tpe_rows else None,
            "tpe_sampling_ms": statistics.median(t["sampling_ms"] for t in tpe_rows) if tpe_rows else None,
            "tpe_history_sampling_ms": statistics.median(t["sampling_ms"] for t in windowed_rows) if windowed_rows else None,
            "fill_s": filled_s,
        }
        rows.append(row)
        tpe = f", TPE sampling {row['tpe_sampling_ms']:.0f} ms" if row["tpe_sampling_ms"] is not None else ""
        bench.log(f"scale {label} at {size} trials: service {row['service_ms']:.1f} ms a trial (random){tpe}; grown in {filled_s:.0f}s")
    commands = _time_commands(spec.name, url, workdir)
    bench.log(f"scale {label} read commands at {settings.scale_sizes[-1]} trials: " + ", ".join(f"{k} {v:.1f}s" for k, v in commands.items()))
    return {"sizes": rows, "ratio": rows[-1]["service_ms"] / rows[0]["service_ms"], "commands_s": commands}


def _history_quality(bench: Bench, workdir: Path) -> dict[str, Any]:
    """What --history costs in search: TPE studies of `history_trials` tiny trials, modeling all of
    their history or the last `history_window` trials, on the same seeds; the best validation
    accuracy each reached and TPE's sampling time a trial."""
    from tuner.study import create_study, run_study

    settings = bench.settings
    space = growth_space(bench.spaces_dir, workdir, settings.growth_epochs)
    arms: dict[str, dict[str, list[float]]] = {"all": {"best": [], "sampling_ms": []}, "window": {"best": [], "sampling_ms": []}}
    for i in range(settings.history_seeds):
        for arm, history in (("all", None), ("window", settings.history_window)):
            spec = StudySpec(
                name=f"bench-history-{arm}-{i}", space=space, sampler="tpe", pruner="none", seed=settings.seed + i, trials=settings.history_trials, history=history
            )
            loaded = create_study(spec, f"sqlite:///{workdir / f'history-{arm}-{i}.db'}", spaces_dir=bench.spaces_dir)
            clock = Clock()
            time_sampler(loaded.study.sampler, clock)
            result = run_study(loaded, device=str(bench.device), threads=settings.threads, pack=1)
            arms[arm]["best"].append(float(result.best_value))
            arms[arm]["sampling_ms"].append(1000 * clock.parts()[2] / settings.history_trials)
    out: dict[str, Any] = {"trials": settings.history_trials, "history": settings.history_window, "seeds": settings.history_seeds}
    for arm, figures in arms.items():
        out[arm] = {**figures, "mean_best": statistics.mean(figures["best"]), "median_sampling_ms": statistics.median(figures["sampling_ms"])}
    out["best_difference"] = out["window"]["mean_best"] - out["all"]["mean_best"]
    bench.log(
        f"scale history: {settings.history_trials}-trial TPE studies, best {out['all']['mean_best']:.4f} modeling all, "
        f"{out['window']['mean_best']:.4f} the last {settings.history_window} (mean of {settings.history_seeds} seeds)"
    )
    return out


def measure_scale(bench: Bench) -> dict[str, Any]:
    """Per-trial service time (wall less training, random sampling, no pruning) at each of
    `scale_sizes` trials of one study, on SQLite and on PostgreSQL; then TPE's sampling time on the
    same study; then each read command's seconds on it. The study grows with copies of its own
    trials (growth.fill_to, ANALYZE after); every timed trial is real."""
    settings = bench.settings
    quiet()
    out: dict[str, Any] = {
        "how": (
            f"tiny trials ({settings.growth_epochs} epochs of bench_ref) on tuner's real path; at each size the median of the last "
            f"{settings.scale_window} real trials with random sampling (service = wall less training), then {settings.scale_tpe_window} "
            f"with TPE (its sampling time), then {settings.scale_tpe_window} with TPE modeling the last {settings.scale_history} (--history); grown between sizes with copies of the study's finished trials, the planner's statistics "
            "renewed (ANALYZE); read commands timed as new processes on the largest study"
        ),
        "sizes": list(settings.scale_sizes),
        "target": 1.2,  # service time at the largest size within 1.2x of the smallest
    }
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        workdir = Path(tmp)
        with _backends(bench, workdir) as backends:
            for label, url in backends:
                out[label] = _one_backend(bench, label, url, workdir)
        out["history"] = _history_quality(bench, workdir)
    for label in ("sqlite", "postgresql"):
        if label in out:
            out[label]["met"] = out[label]["ratio"] <= out["target"]
    if "postgresql" not in out:
        out["postgresql"] = {"skipped": "skipped on request (--skip postgres)" if bench.postgres is None else "PostgreSQL not reachable"}
    return out
