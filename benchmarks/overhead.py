"""Overhead: the share of a trial's wall time spent outside training (sampling, storage, reports),
with tuner's real path and with the reference in a plain Optuna study, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna

from benchmarks.common import (
    REFERENCE_SPACE,
    TARGETS,
    Bench,
    BenchSettings,
    Clock,
    check_timed,
    quiet,
    space_path,
    time_sampler,
    timed_training,
    torch_threads,
)
from benchmarks.reference import reference_arrays, reference_objective
from tuner.errors import TunerError
from tuner.spec import StudySpec

__all__ = ["POSTGRES_ADMIN", "measure_overhead"]

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _breakdown(clock: Clock, wall: float, n_trials: int) -> dict[str, float]:
    """Per-trial milliseconds and the service share: everything but training, over the trial's wall time."""
    per = 1000.0 / n_trials
    train, reports, sampling = (x * per for x in clock.parts())
    wall_ms = wall * per
    return {
        "wall_ms": wall_ms,
        "train_ms": train,
        "service_ms": wall_ms - train,
        "sampling_ms": sampling,
        "reports_ms": reports,
        "storage_and_loop_ms": wall_ms - train - sampling - reports,
        "share": 1.0 - train / wall_ms,
    }


def _median_run(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    """The run with the median `key` (the lower one of an even count), whose parts add up."""
    return sorted(runs, key=lambda r: r[key])[(len(runs) - 1) // 2]


def _run_tuner_study(spec: StudySpec, url: str, device: Any, threads: int, clock: Clock, *, spaces_dir: Path) -> float:
    """Create the study with tuner's real path and run it; the wall time of run_study."""
    from tuner.study import create_study, run_study

    loaded = create_study(spec, url, spaces_dir=spaces_dir)
    time_sampler(loaded.study.sampler, clock)
    with timed_training(clock):
        started = time.perf_counter()
        run_study(loaded, device=str(device), threads=threads, on_trial=lambda *a: None, pack=1)  # the CLI always passes one
        wall = time.perf_counter() - started
    check_timed(clock, spec.trials or 0, "overhead")
    return wall


def _run_reference_study(url: str, arrays: tuple[Any, ...], device: Any, n_trials: int, seed: int, clock: Clock) -> float:
    """The reference objective in a plain Optuna study on storage `url`; the wall time of optimize."""
    sampler = optuna.samplers.RandomSampler(seed=seed)
    time_sampler(sampler, clock)
    study = optuna.create_study(storage=url, sampler=sampler, pruner=optuna.pruners.NopPruner(), direction="maximize")
    objective = reference_objective(arrays, device, seed=seed, clock=clock)
    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    return time.perf_counter() - started


def _service_shares(settings: BenchSettings, device: Any, new_url: Callable[[str], str], *, spaces_dir: Path, label: str, log: Callable[[str], None]) -> dict[str, Any]:
    n = settings.n_overhead
    arrays = reference_arrays(settings.seed)
    tuner_runs, ref_runs = [], []
    for r in range(settings.repeats):
        seed = settings.seed + r
        spec = StudySpec(
            name=f"bench-overhead-{r}", space=space_path(REFERENCE_SPACE, spaces_dir), sampler="random", pruner="none", seed=seed, trials=n
        )
        clock = Clock()
        wall = _run_tuner_study(spec, new_url(f"tuner{r}"), device, settings.threads, clock, spaces_dir=spaces_dir)
        tuner_runs.append(_breakdown(clock, wall, n))
        clock = Clock()
        with torch_threads(settings.threads):
            wall = _run_reference_study(new_url(f"reference{r}"), arrays, device, n, seed, clock)
        ref_runs.append(_breakdown(clock, wall, n))
        log(f"overhead {label} {r + 1}/{settings.repeats}: service share tuner {tuner_runs[-1]['share']:.1%}, reference {ref_runs[-1]['share']:.1%}")
    tuner, reference = _median_run(tuner_runs, "share"), _median_run(ref_runs, "share")
    return {"tuner": tuner, "reference": reference, "ratio": reference["share"] / tuner["share"], "n_trials": n}


def _warm_up_storage(settings: BenchSettings, device: Any, workdir: Path, *, spaces_dir: Path) -> None:
    """One short study of each path first, so that first-use costs (SQLAlchemy, torch) are not a trial's."""
    arrays = reference_arrays(settings.seed)
    spec = StudySpec(name="bench-warm-up", space=space_path(REFERENCE_SPACE, spaces_dir), sampler="random", pruner="none", trials=2)
    _run_tuner_study(spec, f"sqlite:///{workdir / 'warm-up-tuner.db'}", device, settings.threads, Clock(), spaces_dir=spaces_dir)
    with torch_threads(settings.threads):
        _run_reference_study(f"sqlite:///{workdir / 'warm-up-reference.db'}", arrays, device, 2, settings.seed, Clock())


@contextlib.contextmanager
def _postgres_databases(admin_url: str) -> Iterator[Callable[[str], str]]:
    """Yields a factory of fresh PostgreSQL databases, all dropped on exit. Raises TunerError if the
    server cannot be reached."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as e:
        admin.dispose()
        from tuner.storage import mask

        raise TunerError(f"PostgreSQL not reachable at {mask(admin_url)}: {str(e).strip().splitlines()[0]}") from None
    created: list[str] = []

    def new_url(label: str) -> str:
        name = f"tuner_bench_{os.getpid()}_{label}_{uuid.uuid4().hex[:8]}"  # the pid: whose it is, if one is left
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return sqlalchemy.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    try:
        yield new_url
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def measure_overhead(bench: Bench) -> dict[str, Any]:
    """The share of a digits trial's wall time spent outside training, with tuner's real path
    (create_study + run_study) and with the reference in a plain Optuna study, on a fresh SQLite
    file and (when `bench.postgres` is an admin URL that answers) a fresh PostgreSQL database."""
    settings, device, spaces_dir, log = bench.settings, bench.device, bench.spaces_dir, bench.log
    quiet()
    result: dict[str, Any] = {
        "how": (
            "digits trials of search_spaces/bench_ref.yaml, RandomSampler(seed), no pruning; "
            "share = 1 - time inside training / wall time per trial; training excludes the per-epoch reports; "
            "per side, the repeat with the median share; "
            f"torch threads {settings.threads}"
        ),
        "target": TARGETS["service_share_sqlite"],
    }
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        workdir = Path(tmp)
        _warm_up_storage(settings, device, workdir, spaces_dir=spaces_dir)
        sqlite = _service_shares(
            settings, device, lambda label: f"sqlite:///{workdir / label}.db", spaces_dir=spaces_dir, label="sqlite", log=log
        )
    result["sqlite"] = sqlite
    result["met"] = sqlite["tuner"]["share"] <= result["target"]
    if bench.postgres is None:
        result["postgresql"] = {"skipped": "skipped on request (--skip postgres)"}
        return result
    try:
        with _postgres_databases(bench.postgres) as new_url:
            result["postgresql"] = _service_shares(settings, device, new_url, spaces_dir=spaces_dir, label="postgresql", log=log)
    except TunerError as e:
        result["postgresql"] = {"skipped": str(e)}
        log(f"overhead postgresql: skipped: {e}")
    return result
