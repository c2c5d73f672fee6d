"""What every section shares: the settings, what a section is given, the clock a run's trials are
timed on (training through tuner.train's timing hook, the sampler's methods), and small helpers."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna

from tuner.errors import TunerError
from tuner.space import SPACES_DIR

__all__ = [
    "REFERENCE_SPACE",
    "TARGETS",
    "Bench",
    "BenchSettings",
    "Clock",
    "check_timed",
    "quiet",
    "space_path",
    "time_sampler",
    "timed_training",
    "torch_threads",
]

REFERENCE_SPACE = "bench_ref"  # search_spaces/bench_ref.yaml: the reference's space in tuner's terms
# The targets; None where it asks to report a figure, not to meet one.
TARGETS = {"throughput_cpu": 2.0, "throughput_cuda": 5.0, "service_share_sqlite": 0.05, "search_speedup": 3.0, "packing_cpu": 10.0, "packing_cuda": 20.0}


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
    n_command: int = 6  # runs of the example script per repeat, by hand and as trials
    n_packing: int = 48  # trials per path per repeat of the packing section
    pack: int = 16  # trials packed at once there (the worker's --pack)
    n_quality: int = 30  # trials per study of the packing section's search quality (the demo's budget)
    pareto_space: str = "tradeoff"  # the pareto section's two-metric space (val_accuracy against params)
    pareto_seeds: int = 3  # seeds of the pareto section, each run with pruner pareto and with none
    pareto_trials: int = 40  # trials of the unpruned study there; the pruned one runs twice as many (pruning buys trials)
    pareto_epochs: int | None = None  # epochs of its trials; None: the space's own
    warm_source_trials: int = 30  # trials of each earlier study the warm section starts from (TPE, the reference space)
    warm_seeds: int = 5  # studies per arm of the warm section
    scale_sizes: tuple[int, ...] = (1000, 10000, 100000)  # study sizes of the scale section, smallest first
    scale_start: int = 40  # real trials the scale study starts with (its copies fill it to each size)
    scale_window: int = 30  # real trials timed with random sampling at each size
    scale_tpe_window: int = 5  # then with TPE (a TPE trial at 100,000 takes seconds)
    scale_history: int = 1000  # then with TPE modeling only the last this many trials (--history)
    history_trials: int = 150  # trials of each study of the history-window quality check
    history_window: int = 30  # its window: a fifth of the study, as 20,000 of 100,000 would be
    history_seeds: int = 3  # studies per arm there
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
            n_command=2,
            n_packing=6,
            pack=3,
            n_quality=8,
            pareto_seeds=1,
            pareto_trials=6,
            pareto_epochs=2,
            warm_source_trials=4,
            warm_seeds=1,
            scale_sizes=(30, 60),
            scale_start=6,
            scale_window=4,
            scale_tpe_window=3,
            scale_history=20,
            history_trials=14,
            history_window=7,
            history_seeds=1,
        )


@dataclass(frozen=True)
class Bench:
    """What each section's measure function is given: one run of the bench."""

    settings: BenchSettings
    device: Any  # the torch.device every in-process measurement trains on
    spaces_dir: Path = SPACES_DIR  # the folder holding bench_ref.yaml and the search space
    postgres: str | None = None  # admin URL of a PostgreSQL server for overhead's second half; None leaves it out
    log: Callable[[str], None] = print  # progress, a line a repeat


def quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def space_path(name: str, spaces_dir: Path) -> str:
    return str(spaces_dir / f"{name}.yaml")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# timing


@dataclass
class Clock:
    """Seconds spent in each part of the trials of one run, summed."""

    train: float = 0.0  # inside training, reports excluded
    reports: float = 0.0  # trial.report + should_prune (the pruner) once per epoch
    sampling: float = 0.0  # inside the sampler's methods (with the trial history they read)
    n_train: int = 0  # trainings timed

    def parts(self) -> tuple[float, float, float]:
        return self.train, self.reports, self.sampling


_SAMPLER_METHODS = ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial", "after_trial")


def time_sampler(sampler: optuna.samplers.BaseSampler, clock: Clock) -> None:
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
def timed_training(clock: Clock) -> Iterator[None]:
    """Time tuner's training as the study calls it, through the trainers' timing hook: the time
    inside `tuner.train.train` and `tuner.packing.train_packed` less their `on_epoch` callbacks
    (reporting to storage and the pruner), which is counted as reports."""
    from tuner.train import TrainTiming, timing_hook

    def count(timing: TrainTiming) -> None:
        clock.train += timing.train_s
        clock.reports += timing.reports_s
        clock.n_train += timing.n_trials  # a pack trains several

    with timing_hook(count):
        yield


def check_timed(clock: Clock, n_trials: int, what: str) -> None:
    if clock.n_train < n_trials:
        raise TunerError(
            f"bench {what}: timed {clock.n_train} trainings for {n_trials} trials; the study no longer trains "
            "through tuner.train.train (whose timing hook the bench listens to)"
        )
