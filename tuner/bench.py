"""`tuner bench`: tuner's trial loop and study service measured against Optuna's own PyTorch example.

Four measurements, each a function returning plain dicts, each figure a median over repeated runs
and each ratio taken between figures measured in the same process run:

    throughput   trials per second of tuner's objective and of the reference, same configurations
    overhead     the share of a trial's wall time spent outside training (sampling, storage,
                 reports), on SQLite and PostgreSQL; and how it grows from 100 to 2,000 trials
    search       wall time until a trial reaches 0.97 validation accuracy on digits, per strategy
    workers      trials per second with 1 and 2 local workers on one study

The reference is the pattern of Optuna's `pytorch_simple` example, written here as the baseline
(it is not product code). tuner's side goes only through public functions (create_study,
run_study, make_objective, run_workers, tuner.train.train), so the harness keeps measuring the
same thing when their internals change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError
from tuner.space import SPACES_DIR, load_space
from tuner.spec import StudySpec

__all__ = [
    "SECTIONS",
    "BenchSettings",
    "machine_info",
    "measure_growth",
    "measure_overhead",
    "measure_search",
    "measure_throughput",
    "measure_workers",
    "reference_objective",
    "run_bench",
]

SECTIONS = ("throughput", "overhead", "postgres", "growth", "search", "workers")
REFERENCE_SPACE = "bench_ref"  # search_spaces/bench_ref.yaml: the reference's space in tuner's terms
THRESHOLD = 0.97  # validation accuracy on digits the search strategies race to
POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# The targets; None where it asks to report a figure, not to meet one.
TARGETS = {"throughput_cpu": 2.0, "throughput_cuda": 5.0, "service_share_sqlite": 0.05, "search_speedup": 3.0}
_OPTIMIZER_CLASSES = {"adam": "Adam", "rmsprop": "RMSprop", "sgd": "SGD"}  # tuner's name -> torch.optim class


@dataclass(frozen=True)
class BenchSettings:
    """How much to measure; the defaults keep the whole bench to a few minutes on 2 CPU cores."""

    repeats: int = 3  # runs of each throughput, overhead and worker measurement; figures are medians
    n_throughput: int = 20  # trials per path per repeat
    n_overhead: int = 20  # trials per study per repeat
    growth_small: int = 100  # study size of the first growth window
    growth_large: int = 2000  # study size of the second
    growth_window: int = 40  # real trials timed at the end of each size
    growth_epochs: int = 3  # growth trials are tiny: this many epochs of the reference space
    search_space: str = REFERENCE_SPACE  # searched by every strategy (its grid points serve grid search)
    search_seeds: int = 5  # studies per strategy
    search_cap: int = 60  # trials per study before a strategy is reported as not reaching the threshold
    n_workers_trials: int = 60  # trials per worker-scaling study
    seed: int = 0
    threads: int = 1  # torch threads in every in-process measurement (both paths)

    @classmethod
    def quick(cls, repeats: int | None = None) -> "BenchSettings":
        """Every code path once, small: for tests and a smoke check (well under a minute)."""
        return cls(
            repeats=repeats or 1,
            n_throughput=4,
            n_overhead=5,
            growth_small=12,
            growth_large=40,
            growth_window=4,
            growth_epochs=1,
            search_space="tiny",
            search_seeds=1,
            search_cap=4,
            n_workers_trials=6,
        )


# ---------------------------------------------------------------------------------------------
# timing


@dataclass
class _Clock:
    """Seconds spent in each part of the trials of one run, summed."""

    train: float = 0.0  # inside training, reports excluded
    reports: float = 0.0  # trial.report + should_prune (the pruner) once per epoch
    sampling: float = 0.0  # inside the sampler's methods (with the trial history they read)
    n_train: int = 0  # trainings timed

    def parts(self) -> tuple[float, float, float]:
        return self.train, self.reports, self.sampling


_SAMPLER_METHODS = ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial", "after_trial")


def _time_sampler(sampler: optuna.samplers.BaseSampler, clock: _Clock) -> None:
    """Count the time inside this sampler instance's methods (outermost call only)."""
    depth = [0]

    def timed(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return method(*args, **kwargs)
            depth[0] += 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                clock.sampling += time.perf_counter() - started
                depth[0] -= 1

        return call

    for name in _SAMPLER_METHODS:
        setattr(sampler, name, timed(getattr(sampler, name)))


@contextlib.contextmanager
def _timed_training(clock: _Clock) -> Iterator[None]:
    """Time tuner's training as the study calls it, through train's timing hook: the time inside
    `tuner.train.train` less its `on_epoch` callback (reporting to storage and the pruner), which
    is counted as reports."""
    from tuner.train import TrainTiming, timing_hook

    def count(timing: TrainTiming) -> None:
        clock.train += timing.train_s
        clock.reports += timing.reports_s
        clock.n_train += 1

    with timing_hook(count):
        yield


def _check_timed(clock: _Clock, n_trials: int, what: str) -> None:
    if clock.n_train < n_trials:
        raise TunerError(
            f"bench {what}: timed {clock.n_train} trainings for {n_trials} trials; the study no longer trains "
            "through tuner.train.train (whose timing hook the bench listens to)"
        )


def _breakdown(clock: _Clock, wall: float, n_trials: int) -> dict[str, float]:
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


def _median_dicts(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _median_run(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    """The run with the median `key` (the lower one of an even count), whose parts add up."""
    return sorted(runs, key=lambda r: r[key])[(len(runs) - 1) // 2]


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


# ---------------------------------------------------------------------------------------------
# data, spaces and configurations


def _digits(seed: int) -> Any:
    """tuner's digits split for this seed (the one its studies train on)."""
    from tuner.workloads import load_workload, parse_workload

    data, _ = load_workload(parse_workload("digits"), seed=seed)
    return data


def _reference_arrays(seed: int) -> tuple[Any, ...]:
    """The same split, standardized with training statistics as tuner's `scaling: standard` does,
    on the host: the reference moves each batch to the device itself."""
    import torch

    from tuner.train import device_tensors

    return device_tensors(_digits(seed), "standard", torch.device("cpu"))


def _space_path(name: str, spaces_dir: Path) -> str:
    return str(spaces_dir / f"{name}.yaml")


def _configs(spaces_dir: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """n configurations of the reference space, drawn once with a seeded RandomSampler."""
    space = load_space(REFERENCE_SPACE, spaces_dir=spaces_dir)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        configs.append(dict(trial.params))
        study.tell(trial, 0.0)
    return configs


def _as_reference_params(config: dict[str, Any]) -> dict[str, Any]:
    """A tuner configuration in the example's parameter names (one width and dropout per layer)."""
    params: dict[str, Any] = {"n_layers": config["n_layers"]}
    for i in range(config["n_layers"]):
        params[f"n_units_l{i}"] = config["hidden_units"]
        params[f"dropout_l{i}"] = config["dropout"]
    params["optimizer"] = _OPTIMIZER_CLASSES[config["optimizer"]]
    params["lr"] = config["lr"]
    return params


# ---------------------------------------------------------------------------------------------
# the reference: Optuna's pytorch_simple example, on digits


class _TimedTrial:
    """The trial as the reference objective sees it, counting the time of its calls into Optuna."""

    def __init__(self, trial: optuna.Trial, clock: _Clock) -> None:
        self._trial, self._clock = trial, clock
        self.in_optuna = 0.0
        self.number = trial.number

    def _call(self, method: Callable[..., Any], *args: Any, report: bool = False, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent = time.perf_counter() - started
            self.in_optuna += spent
            if report:
                self._clock.reports += spent

    def suggest_int(self, *args: Any, **kwargs: Any) -> int:
        return self._call(self._trial.suggest_int, *args, **kwargs)

    def suggest_float(self, *args: Any, **kwargs: Any) -> float:
        return self._call(self._trial.suggest_float, *args, **kwargs)

    def suggest_categorical(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self._trial.suggest_categorical, *args, **kwargs)

    def report(self, value: float, step: int) -> None:
        self._call(self._trial.report, value, step, report=True)

    def should_prune(self) -> bool:
        return self._call(self._trial.should_prune, report=True)


def reference_objective(
    arrays: tuple[Any, ...],
    device: Any,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    clock: _Clock | None = None,
) -> Callable[[optuna.Trial], float]:
    """Optuna's pytorch_simple example on (x_train, y_train, x_val, y_val): an MLP of 1-3 layers of
    4-128 units with dropout 0.2-0.5 each, Adam/RMSprop/SGD at a log-uniform rate, trained through
    a DataLoader over a TensorDataset, each batch moved to the device, accuracy reported per epoch.

    With a clock, the time inside training (the objective less its calls into Optuna) is counted."""
    import torch
    import torch.nn.functional as F
    from torch import nn, optim
    from torch.utils.data import DataLoader, TensorDataset

    x_train, y_train, x_val, y_val = arrays
    n_features, n_classes = int(x_train.shape[1]), int(y_train.max()) + 1

    def define_model(trial: Any) -> nn.Module:
        n_layers = trial.suggest_int("n_layers", 1, 3)
        layers: list[nn.Module] = []
        in_features = n_features
        for i in range(n_layers):
            out_features = trial.suggest_int(f"n_units_l{i}", 4, 128, log=True)
            layers.append(nn.Linear(in_features, out_features))
            layers.append(nn.ReLU())
            p = trial.suggest_float(f"dropout_l{i}", 0.2, 0.5)
            layers.append(nn.Dropout(p))
            in_features = out_features
        layers.append(nn.Linear(in_features, n_classes))
        layers.append(nn.LogSoftmax(dim=1))
        return nn.Sequential(*layers)

    def objective(trial: Any) -> float:
        started = time.perf_counter()
        timed = _TimedTrial(trial, clock) if clock is not None else trial
        try:
            return _run(timed)
        finally:
            if clock is not None:
                clock.train += time.perf_counter() - started - timed.in_optuna
                clock.n_train += 1

    def _run(trial: Any) -> float:
        # The example leaves torch unseeded; seeded here as tuner seeds its trials, for repeatable runs.
        torch.manual_seed(seed + trial.number)
        model = define_model(trial).to(device)
        optimizer_name = trial.suggest_categorical("optimizer", ["Adam", "RMSprop", "SGD"])
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        optimizer = getattr(optim, optimizer_name)(model.parameters(), lr=lr)
        train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)
        valid_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=batch_size, shuffle=True)

        accuracy = 0.0
        for epoch in range(epochs):
            model.train()
            for data, target in train_loader:
                data, target = data.view(data.size(0), -1).to(device), target.to(device)
                optimizer.zero_grad()
                output = model(data)
                loss = F.nll_loss(output, target)
                loss.backward()
                optimizer.step()

            model.eval()
            correct = 0
            with torch.no_grad():
                for data, target in valid_loader:
                    data, target = data.view(data.size(0), -1).to(device), target.to(device)
                    output = model(data)
                    pred = output.argmax(dim=1, keepdim=True)
                    correct += pred.eq(target.view_as(pred)).sum().item()
            accuracy = correct / len(valid_loader.dataset)

            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    return objective


# ---------------------------------------------------------------------------------------------
# 1. throughput


_BLOCK = 5  # trials a path runs before the other takes its turn


def measure_throughput(settings: BenchSettings, device: Any, *, spaces_dir: Path = SPACES_DIR, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trials per second of tuner's objective (make_objective, as run_study calls it) and of the
    reference, both in `study.optimize` on in-memory storage with a seeded RandomSampler and no
    pruning, on the same configurations (drawn once, queued in both studies) and the same data."""
    from tuner.study import Loaded, make_objective

    _quiet()
    n = settings.n_throughput
    arrays = _reference_arrays(settings.seed)
    configs = _configs(spaces_dir, n, settings.seed)
    space = load_space(REFERENCE_SPACE, spaces_dir=spaces_dir)
    spec = StudySpec(name="bench-throughput", space=_space_path(REFERENCE_SPACE, spaces_dir), sampler="random", pruner="none", seed=settings.seed)

    def study_with(queued: list[dict[str, Any]]) -> optuna.Study:
        study = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            sampler=optuna.samplers.RandomSampler(seed=settings.seed),
            pruner=optuna.pruners.NopPruner(),
            direction="maximize",
        )
        for params in queued:
            study.enqueue_trial(params)
        return study

    def run_reference(queued: list[dict[str, Any]]) -> float:
        study = study_with([_as_reference_params(c) for c in queued])
        objective = reference_objective(arrays, device, seed=settings.seed)
        started = time.perf_counter()
        study.optimize(objective, n_trials=len(queued))
        return time.perf_counter() - started

    def run_tuner(queued: list[dict[str, Any]]) -> float:
        study = study_with(queued)
        objective = make_objective(Loaded(study, spec, space, "in-memory"), device)
        started = time.perf_counter()
        study.optimize(objective, n_trials=len(queued))
        return time.perf_counter() - started

    runs = []
    with _torch_threads(settings.threads):
        run_reference(configs[:2])  # warm-up: first-call costs (kernels, allocator) counted in neither
        run_tuner(configs[:2])
        for r in range(settings.repeats):
            # the paths take turns a few trials at a time, the first alternating, so that a shared
            # machine's slow and quick spells (seconds long on a VM) fall on both alike
            times = {"reference": 0.0, "tuner": 0.0}
            for b, start in enumerate(range(0, n, _BLOCK)):
                order = (("reference", run_reference), ("tuner", run_tuner))
                for name, fn in order if (r + b) % 2 == 0 else order[::-1]:
                    times[name] += fn(configs[start : start + _BLOCK])
            runs.append({"tuner": n / times["tuner"], "reference": n / times["reference"]})
            log(f"throughput {r + 1}/{settings.repeats}: tuner {runs[-1]['tuner']:.2f} trials/s, reference {runs[-1]['reference']:.2f}")
    tuner_tps = statistics.median(r["tuner"] for r in runs)
    ref_tps = statistics.median(r["reference"] for r in runs)
    target = TARGETS["throughput_cuda" if getattr(device, "type", str(device)) == "cuda" else "throughput_cpu"]
    return {
        "unit": "trials/s",
        "tuner": tuner_tps,
        "reference": ref_tps,
        "ratio": tuner_tps / ref_tps,
        "target": target,
        "met": tuner_tps / ref_tps >= target,
        "n_trials": n,
        "repeats": runs,
        "how": (
            "study.optimize on InMemoryStorage, RandomSampler(seed), NopPruner; the same configurations "
            f"(drawn once from search_spaces/bench_ref.yaml) queued in both studies, run {_BLOCK} at a time by turns; "
            "2 warm-up trials each first; "
            f"torch threads {settings.threads} for both"
        ),
    }


# ---------------------------------------------------------------------------------------------
# 2. overhead: the service share of a trial, on SQLite and PostgreSQL, and its growth


def _run_tuner_study(spec: StudySpec, url: str, device: Any, threads: int, clock: _Clock, *, spaces_dir: Path) -> float:
    """Create the study with tuner's real path and run it; the wall time of run_study."""
    from tuner.study import create_study, run_study

    loaded = create_study(spec, url, spaces_dir=spaces_dir)
    _time_sampler(loaded.study.sampler, clock)
    with _timed_training(clock):
        started = time.perf_counter()
        run_study(loaded, device=str(device), threads=threads, on_trial=lambda *a: None)  # the CLI always passes one
        wall = time.perf_counter() - started
    _check_timed(clock, spec.trials or 0, "overhead")
    return wall


def _run_reference_study(url: str, arrays: tuple[Any, ...], device: Any, n_trials: int, seed: int, clock: _Clock) -> float:
    """The reference objective in a plain Optuna study on storage `url`; the wall time of optimize."""
    sampler = optuna.samplers.RandomSampler(seed=seed)
    _time_sampler(sampler, clock)
    study = optuna.create_study(storage=url, sampler=sampler, pruner=optuna.pruners.NopPruner(), direction="maximize")
    objective = reference_objective(arrays, device, seed=seed, clock=clock)
    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    return time.perf_counter() - started


def _service_shares(settings: BenchSettings, device: Any, new_url: Callable[[str], str], *, spaces_dir: Path, label: str, log: Callable[[str], None]) -> dict[str, Any]:
    n = settings.n_overhead
    arrays = _reference_arrays(settings.seed)
    tuner_runs, ref_runs = [], []
    for r in range(settings.repeats):
        seed = settings.seed + r
        spec = StudySpec(
            name=f"bench-overhead-{r}", space=_space_path(REFERENCE_SPACE, spaces_dir), sampler="random", pruner="none", seed=seed, trials=n
        )
        clock = _Clock()
        wall = _run_tuner_study(spec, new_url(f"tuner{r}"), device, settings.threads, clock, spaces_dir=spaces_dir)
        tuner_runs.append(_breakdown(clock, wall, n))
        clock = _Clock()
        with _torch_threads(settings.threads):
            wall = _run_reference_study(new_url(f"reference{r}"), arrays, device, n, seed, clock)
        ref_runs.append(_breakdown(clock, wall, n))
        log(f"overhead {label} {r + 1}/{settings.repeats}: service share tuner {tuner_runs[-1]['share']:.1%}, reference {ref_runs[-1]['share']:.1%}")
    tuner, reference = _median_run(tuner_runs, "share"), _median_run(ref_runs, "share")
    return {"tuner": tuner, "reference": reference, "ratio": reference["share"] / tuner["share"], "n_trials": n}


def _warm_up_storage(settings: BenchSettings, device: Any, workdir: Path, *, spaces_dir: Path) -> None:
    """One short study of each path first, so that first-use costs (SQLAlchemy, torch) are not a trial's."""
    arrays = _reference_arrays(settings.seed)
    spec = StudySpec(name="bench-warm-up", space=_space_path(REFERENCE_SPACE, spaces_dir), sampler="random", pruner="none", trials=2)
    _run_tuner_study(spec, f"sqlite:///{workdir / 'warm-up-tuner.db'}", device, settings.threads, _Clock(), spaces_dir=spaces_dir)
    with _torch_threads(settings.threads):
        _run_reference_study(f"sqlite:///{workdir / 'warm-up-reference.db'}", arrays, device, 2, settings.seed, _Clock())


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


def measure_overhead(
    settings: BenchSettings,
    device: Any,
    *,
    postgres: str | None = POSTGRES_ADMIN,
    spaces_dir: Path = SPACES_DIR,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The share of a digits trial's wall time spent outside training, with tuner's real path
    (create_study + run_study) and with the reference in a plain Optuna study, on a fresh SQLite
    file and (when `postgres` is an admin URL that answers) a fresh PostgreSQL database."""
    _quiet()
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
    if postgres is None:
        result["postgresql"] = {"skipped": "skipped on request (--skip postgres)"}
        return result
    try:
        with _postgres_databases(postgres) as new_url:
            result["postgresql"] = _service_shares(settings, device, new_url, spaces_dir=spaces_dir, label="postgresql", log=log)
    except TunerError as e:
        result["postgresql"] = {"skipped": str(e)}
        log(f"overhead postgresql: skipped: {e}")
    return result


def _growth_space(spaces_dir: Path, workdir: Path, epochs: int) -> str:
    """The reference space with tiny trials (few epochs), written beside the bench's databases."""
    import yaml

    data = load_space(REFERENCE_SPACE, spaces_dir=spaces_dir).to_dict()
    data["params"]["epochs"] = epochs
    path = workdir / "bench_growth.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _timed_window(loaded: Any, device: Any, threads: int, clock: _Clock) -> list[dict[str, float]]:
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

    _time_sampler(loaded.study.sampler, clock)
    with _timed_training(clock):
        run_study(loaded, device=str(device), threads=threads, on_trial=on_trial)
    return rows[1:]  # the first also holds run_study's start-up


def _fill_to(name: str, url: str, n_total: int) -> int:
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
        next_id = conn.execute(sqlalchemy.select(sqlalchemy.func.max(trials.c.trial_id))).scalar_one() + 1
        copies = [{**source[i % len(source)], "trial_id": next_id + i, "number": n_have + i} for i in range(n_add)]
        conn.execute(trials.insert(), copies)
        for table in children:
            keys = {c.name for c in table.primary_key.columns}
            rows: dict[int, list[dict[str, Any]]] = {}
            for r in conn.execute(sqlalchemy.select(table).where(table.c.trial_id.in_([t["trial_id"] for t in source]))):
                rows.setdefault(r.trial_id, []).append({k: v for k, v in r._mapping.items() if k not in keys})
            new_rows = [
                {**row, "trial_id": next_id + i} for i in range(n_add) for row in rows.get(source[i % len(source)]["trial_id"], [])
            ]
            if new_rows:
                conn.execute(table.insert(), new_rows)
    storage.engine.dispose()
    return n_add


def measure_growth(settings: BenchSettings, device: Any, *, spaces_dir: Path = SPACES_DIR, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per-trial service time (wall less training) in one SQLite study at `growth_small` and at
    `growth_large` trials, with tiny trials, for random sampling without pruning and for tuner's
    defaults (TPE, median pruner). The study grows from small to large with copies of its own
    trials (study.add_trials), so 2,000 trials take seconds; the timed windows are real trials."""
    from tuner.study import create_study, open_study

    _quiet()
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
        space = _growth_space(spaces_dir, workdir, settings.growth_epochs)
        for sampler, pruner in (("random", "none"), ("tpe", "median")):
            url = f"sqlite:///{workdir / sampler}.db"
            spec = StudySpec(name=f"bench-growth-{sampler}", space=space, sampler=sampler, pruner=pruner, seed=settings.seed, trials=settings.growth_small)
            loaded = create_study(spec, url, spaces_dir=spaces_dir)
            windows = []
            clock = _Clock()
            small = _timed_window(loaded, device, settings.threads, clock)
            _check_timed(clock, settings.growth_small, "growth")
            windows.append(small[-settings.growth_window :])
            _fill_to(spec.name, url, settings.growth_large - settings.growth_window)
            loaded = open_study(spec.name, url)
            loaded.spec = dataclasses.replace(loaded.spec, trials=settings.growth_large)
            windows.append(_timed_window(loaded, device, settings.threads, _Clock()))
            row: dict[str, Any] = {"pruner": pruner}
            for key in ("service_ms", "sampling_ms", "reports_ms", "wall_ms"):
                row[key] = [statistics.median(t[key] for t in w) for w in windows]
            row["storage_and_loop_ms"] = [s - a - b for s, a, b in zip(row["service_ms"], row["sampling_ms"], row["reports_ms"])]
            row["ratio"] = row["service_ms"][1] / row["service_ms"][0]
            out[sampler] = row
            log(
                f"growth {sampler}: service {row['service_ms'][0]:.1f} -> {row['service_ms'][1]:.1f} ms per trial "
                f"(sampling {row['sampling_ms'][0]:.1f} -> {row['sampling_ms'][1]:.1f} ms)"
            )
    return out


# ---------------------------------------------------------------------------------------------
# 3. search efficiency


STRATEGIES = {"tpe+hyperband": ("tpe", "hyperband"), "random": ("random", "none"), "grid": ("grid", "none")}


class _Reached(Exception):
    """The threshold was reached: the study has answered the question, stop it."""


def _time_to_threshold(
    space: str, sampler: str, pruner: str, seed: int, settings: BenchSettings, device: Any, url: str, *, spaces_dir: Path
) -> dict[str, Any]:
    """Wall time from creating the study (grid points are queued then) to the end of the first
    complete trial whose value reaches THRESHOLD, with tuner's real path; None if no trial does
    within `search_cap` trials."""
    from tuner.study import create_study, run_study

    started = time.perf_counter()
    spec = StudySpec(name=f"bench-search-{sampler}-{seed}", space=space, sampler=sampler, pruner=pruner, seed=seed, trials=settings.search_cap)
    loaded = create_study(spec, url, spaces_dir=spaces_dir)
    created = time.perf_counter() - started
    hit: dict[str, Any] = {}
    n_done = [0]

    def on_trial(trial: FrozenTrial, *_: Any) -> None:
        n_done[0] += 1
        if trial.state == TrialState.COMPLETE and trial.value is not None and trial.value >= THRESHOLD:
            hit.update(seconds=time.perf_counter() - started, trials=n_done[0])
            raise _Reached

    with contextlib.suppress(_Reached):
        run_study(loaded, device=str(device), threads=settings.threads, on_trial=on_trial)
    n_pruned = len(loaded.study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    return {"seconds": hit.get("seconds"), "trials": hit.get("trials", n_done[0]), "pruned": n_pruned, "create_s": created, "reached": bool(hit)}


def measure_search(settings: BenchSettings, device: Any, *, spaces_dir: Path = SPACES_DIR, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Seconds to the first trial at 0.97 validation accuracy on digits, per strategy, over seeds."""
    _quiet()
    space = _space_path(settings.search_space, spaces_dir)
    seeds = list(range(settings.seed, settings.seed + settings.search_seeds))
    strategies: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        # warm-up: the first study of the process pays first-use costs (data, kernels) no strategy should
        warm_up = dataclasses.replace(settings, search_cap=1)
        _time_to_threshold(space, "random", "none", settings.seed, warm_up, device, f"sqlite:///{Path(tmp) / 'warm-up.db'}", spaces_dir=spaces_dir)
        for label, (sampler, pruner) in STRATEGIES.items():
            runs = []
            for seed in seeds:
                url = f"sqlite:///{Path(tmp) / f'{sampler}-{seed}.db'}"
                runs.append(_time_to_threshold(space, sampler, pruner, seed, settings, device, url, spaces_dir=spaces_dir))
                got = f"{runs[-1]['seconds']:.1f}s" if runs[-1]["reached"] else "not reached"
                log(f"search {label} seed {seed}: {got} ({runs[-1]['trials']} trials)")
            reached = [r["seconds"] for r in runs if r["reached"]]
            # the median counts a run that never reached the threshold as slower than every run that did
            ordered = sorted(runs, key=lambda r: (not r["reached"], r["seconds"] or 0.0))
            mid = ordered[(len(ordered) - 1) // 2]
            strategies[label] = {
                "sampler": sampler,
                "pruner": pruner,
                "median_s": mid["seconds"] if mid["reached"] else None,
                "median_trials": statistics.median(r["trials"] for r in runs) if len(reached) == len(runs) else None,
                "reached": len(reached),
                "runs": runs,
            }
    tpe, random = strategies["tpe+hyperband"]["median_s"], strategies["random"]["median_s"]
    ratio = random / tpe if tpe and random else None
    return {
        "how": (
            f"tuner's real path (create_study + run_study, SQLite) over search_spaces/{settings.search_space}.yaml on digits; "
            f"seconds from creating the study (grid: queueing its points, create_s) to the end of the first complete "
            f"trial with val_accuracy >= {THRESHOLD}; "
            f"at most {settings.search_cap} trials; seeds {seeds[0]}..{seeds[-1]}; torch threads {settings.threads}"
        ),
        "threshold": THRESHOLD,
        "space": settings.search_space,
        "cap": settings.search_cap,
        "seeds": seeds,
        "strategies": strategies,
        "ratio": ratio,
        "target": TARGETS["search_speedup"],
        "met": ratio is not None and ratio >= TARGETS["search_speedup"],
    }


# ---------------------------------------------------------------------------------------------
# 4. worker scaling


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


def measure_workers(settings: BenchSettings, device: Any, *, spaces_dir: Path = SPACES_DIR, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trials per second on one SQLite study with 1 worker (run_study, in this process) and with 2
    local worker processes (run_workers), each with tuner's default threads (its share of the cores)."""
    from tuner.study import create_study, run_study
    from tuner.workers import run_workers

    _quiet()
    n = settings.n_workers_trials
    cores = os.cpu_count() or 1
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        for r in range(settings.repeats):
            for k in (1, 2):
                url = f"sqlite:///{Path(tmp) / f'workers{k}-{r}.db'}"
                spec = StudySpec(
                    name=f"bench-workers-{k}", space=_space_path(REFERENCE_SPACE, spaces_dir), sampler="random", pruner="none", seed=settings.seed + r, trials=n
                )
                loaded = create_study(spec, url, spaces_dir=spaces_dir)
                started = time.perf_counter()
                if k == 1:
                    run_study(loaded, device=str(device))
                else:
                    run_workers(loaded, n_workers=k, device=str(device))
                wall = time.perf_counter() - started
                trials = loaded.study.get_trials(deepcopy=False)
                runs[k].append({"trials_per_s": _rate_at_full_concurrency(trials, k), "with_startup_per_s": n / wall})
                log(f"workers {k} ({r + 1}/{settings.repeats}): {runs[k][-1]['trials_per_s']:.2f} trials/s")
    one, two = _median_dicts(runs[1]), _median_dicts(runs[2])
    return {
        "how": (
            "digits trials of search_spaces/bench_ref.yaml, RandomSampler, no pruning, one SQLite study; "
            "trials/s while every worker was running a trial, from the trials' start and end times (worker "
            "start-up not counted; with_startup_per_s counts it); tuner's default threads: all cores for 1 worker, "
            "cores/2 each for 2"
        ),
        "n_trials": n,
        "threads_per_worker": {"1": cores, "2": max(cores // 2, 1)},
        "1": one,
        "2": two,
        "ratio": two["trials_per_s"] / one["trials_per_s"],
    }


# ---------------------------------------------------------------------------------------------
# the whole bench


def machine_info(device: Any) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    name = torch.cuda.get_device_name(device) if getattr(device, "type", "") == "cuda" else "cpu"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average": _load_average(),  # other work on the machine skews every figure: note it
    }


def run_bench(
    settings: BenchSettings,
    *,
    device: str = "auto",
    skip: tuple[str, ...] = (),
    postgres: str = POSTGRES_ADMIN,
    spaces_dir: Path = SPACES_DIR,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every section not skipped, in order; the document `tuner bench` writes as JSON."""
    from tuner.train import resolve_device

    unknown = [s for s in skip if s not in SECTIONS]
    if unknown:
        raise TunerError(f"--skip {unknown[0]!r} is not a section; valid: {', '.join(SECTIONS)}")
    if not (spaces_dir / f"{REFERENCE_SPACE}.yaml").is_file():
        raise TunerError(f"{spaces_dir / REFERENCE_SPACE}.yaml not found: run `tuner bench` from the repository root, or pass --spaces-dir")
    torch_device = resolve_device(device)
    started = time.perf_counter()
    doc: dict[str, Any] = {"machine": machine_info(torch_device), "settings": dataclasses.asdict(settings), "skipped": list(skip)}
    measures: dict[str, Callable[[], dict[str, Any]]] = {
        "throughput": lambda: measure_throughput(settings, torch_device, spaces_dir=spaces_dir, log=log),
        "overhead": lambda: measure_overhead(
            settings, torch_device, postgres=None if "postgres" in skip else postgres, spaces_dir=spaces_dir, log=log
        ),
        "growth": lambda: measure_growth(settings, torch_device, spaces_dir=spaces_dir, log=log),
        "search": lambda: measure_search(settings, torch_device, spaces_dir=spaces_dir, log=log),
        "workers": lambda: measure_workers(settings, torch_device, spaces_dir=spaces_dir, log=log),
    }
    seconds: dict[str, float] = {}
    with _torch_threads(_current_threads()):  # run_study sets the process's threads; put them back after
        for name, measure in measures.items():
            if name in skip:
                continue
            section_started = time.perf_counter()
            doc[name] = measure()
            seconds[name] = time.perf_counter() - section_started
    doc["machine"]["load_average_after"] = _load_average()
    doc["section_s"] = seconds
    doc["wall_s"] = time.perf_counter() - started
    return _finite(doc)


def _current_threads() -> int:
    import torch

    return torch.get_num_threads()


def _load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a figure that is not finite is written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
