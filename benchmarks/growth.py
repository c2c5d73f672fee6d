"""Growth: the service time of a trial (wall less training) as one SQLite study grows from 100 to
2,000 trials, for random sampling and for tuner's defaults."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from benchmarks.common import REFERENCE_SPACE, Bench, Clock, check_timed, quiet, time_sampler, timed_training
from tuner.space import load_space
from tuner.spec import StudySpec

__all__ = ["fill_to", "growth_space", "measure_growth", "timed_window"]

_FILL_CHUNK = 5000  # trials a transaction when a study is grown


def growth_space(spaces_dir: Path, workdir: Path, epochs: int) -> str:
    """The reference space with tiny trials (few epochs), written beside the bench's databases."""
    import yaml

    data = load_space(REFERENCE_SPACE, spaces_dir=spaces_dir).to_dict()
    data["params"]["epochs"] = epochs
    path = workdir / "bench_growth.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def timed_window(loaded: Any, device: Any, threads: int, clock: Clock) -> list[dict[str, float]]:
    """Run the study to its budget; each trial's wall time (between consecutive trials' ends) and its parts."""
    from tuner.study import run_study

    rows: list[dict[str, float]] = []
    last = [time.perf_counter(), clock.parts()]

    def on_trial(trial: FrozenTrial, *_: Any) -> None:
        now, parts = time.perf_counter(), clock.parts()
        train, reports, sampling = (a - b for a, b in zip(parts, last[1]))
        wall = now - last[0]
        rows.append({"wall_ms": 1000 * wall, "service_ms": 1000 * (wall - train), "sampling_ms": 1000 * sampling, "reports_ms": 1000 * reports})
        last[:] = [now, parts]

    time_sampler(loaded.study.sampler, clock)
    with timed_training(clock):
        run_study(loaded, device=str(device), threads=threads, on_trial=on_trial, pack=1)
    return rows[1:]  # the first also holds run_study's start-up


def fill_to(name: str, url: str, n_total: int) -> int:
    """Copies of the study's finished trials, row for row (parameters, values, per-epoch values,
    attributes), until it holds n_total trials; the count added. Bulk inserts into Optuna's tables:
    2,000 trials in a second or two, where one add_trial each would take minutes."""
    import sqlalchemy
    from optuna.storages._rdb import models

    from tuner.storage import open_storage

    storage = open_storage(url)
    study_id = storage.get_study_id_from_name(name)
    trials = models.TrialModel.__table__
    children = [
        m.__table__
        for m in (models.TrialParamModel, models.TrialValueModel, models.TrialIntermediateValueModel, models.TrialUserAttributeModel, models.TrialSystemAttributeModel)
    ]
    with storage.engine.begin() as conn:
        in_study = trials.c.study_id == study_id
        n_have = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(trials).where(in_study)).scalar_one()
        finished = trials.c.state.in_([TrialState.COMPLETE, TrialState.PRUNED])
        source = [dict(r._mapping) for r in conn.execute(sqlalchemy.select(trials).where(in_study, finished).order_by(trials.c.number))]
        n_add = max(n_total - n_have, 0)
        if not source or not n_add:
            return 0
        rows: dict[Any, dict[int, list[dict[str, Any]]]] = {}
        for table in children:
            keys = {c.name for c in table.primary_key.columns}
            rows[table] = {}
            for r in conn.execute(sqlalchemy.select(table).where(table.c.trial_id.in_([t["trial_id"] for t in source]))):
                rows[table].setdefault(r.trial_id, []).append({k: v for k, v in r._mapping.items() if k not in keys})
        next_id = conn.execute(sqlalchemy.select(sqlalchemy.func.max(trials.c.trial_id))).scalar_one() + 1
    for start in range(0, n_add, _FILL_CHUNK):  # a transaction a chunk: 100,000 trials' rows at once take gigabytes
        with storage.engine.begin() as conn:
            span = range(start, min(start + _FILL_CHUNK, n_add))
            conn.execute(trials.insert(), [{**source[i % len(source)], "trial_id": next_id + i, "number": n_have + i} for i in span])
            for table in children:
                new_rows = [{**row, "trial_id": next_id + i} for i in span for row in rows[table].get(source[i % len(source)]["trial_id"], [])]
                if new_rows:
                    conn.execute(table.insert(), new_rows)
    with storage.engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # ids given explicitly: the next trial's id comes after them
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), (SELECT MAX(trial_id) FROM trials))")
        conn.exec_driver_sql("ANALYZE")  # the planner's statistics, as a database that grew by itself would have them
    storage.engine.dispose()
    return n_add


def measure_growth(bench: Bench) -> dict[str, Any]:
    """Per-trial service time (wall less training) in one SQLite study at `growth_small` and at
    `growth_large` trials, with tiny trials, for random sampling without pruning and for tuner's
    defaults (TPE, median pruner). The study grows from small to large with copies of its own
    trials (bulk inserts, see fill_to), so 2,000 trials take seconds; the timed windows are real trials."""
    from tuner.study import create_study, open_study

    settings, device, spaces_dir = bench.settings, bench.device, bench.spaces_dir
    quiet()
    out: dict[str, Any] = {
        "how": (
            f"tiny trials ({settings.growth_epochs} epochs of bench_ref), tuner's real path on a fresh SQLite file; "
            f"medians over the last {settings.growth_window} real trials before each size; the study is grown "
            "between the windows with copies of its finished trials"
        ),
        "sizes": [settings.growth_small, settings.growth_large],
    }
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        workdir = Path(tmp)
        space = growth_space(spaces_dir, workdir, settings.growth_epochs)
        for sampler, pruner in (("random", "none"), ("tpe", "median")):
            url = f"sqlite:///{workdir / sampler}.db"
            spec = StudySpec(name=f"bench-growth-{sampler}", space=space, sampler=sampler, pruner=pruner, seed=settings.seed, trials=settings.growth_small)
            loaded = create_study(spec, url, spaces_dir=spaces_dir)
            windows = []
            clock = Clock()
            small = timed_window(loaded, device, settings.threads, clock)
            check_timed(clock, settings.growth_small, "growth")
            windows.append(small[-settings.growth_window :])
            fill_to(spec.name, url, settings.growth_large - settings.growth_window)
            loaded = open_study(spec.name, url)
            loaded.spec = dataclasses.replace(loaded.spec, trials=settings.growth_large)
            windows.append(timed_window(loaded, device, settings.threads, Clock()))
            row: dict[str, Any] = {"pruner": pruner}
            for key in ("service_ms", "sampling_ms", "reports_ms", "wall_ms"):
                row[key] = [statistics.median(t[key] for t in w) for w in windows]
            row["storage_and_loop_ms"] = [s - a - b for s, a, b in zip(row["service_ms"], row["sampling_ms"], row["reports_ms"])]
            row["ratio"] = row["service_ms"][1] / row["service_ms"][0]
            out[sampler] = row
            bench.log(
                f"growth {sampler}: service {row['service_ms'][0]:.1f} -> {row['service_ms'][1]:.1f} ms per trial "
                f"(sampling {row['sampling_ms'][0]:.1f} -> {row['sampling_ms'][1]:.1f} ms)"
            )
    return out
