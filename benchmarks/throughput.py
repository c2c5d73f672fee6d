"""Throughput: trials per second of tuner's objective and of the reference, same configurations."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import optuna

from benchmarks.common import REFERENCE_SPACE, TARGETS, Bench, quiet, space_path, torch_threads
from benchmarks.reference import as_reference_params, reference_arrays, reference_objective
from tuner.space import load_space
from tuner.spec import StudySpec

__all__ = ["draw_configs", "measure_throughput"]

_BLOCK = 5  # trials a path runs before the other takes its turn


def draw_configs(spaces_dir: Path, n: int, seed: int) -> list[dict[str, Any]]:
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


def measure_throughput(bench: Bench) -> dict[str, Any]:
    """Trials per second of tuner's objective (make_objective, as run_study calls it) and of the
    reference, both in `study.optimize` on in-memory storage with a seeded RandomSampler and no
    pruning, on the same configurations (drawn once, queued in both studies) and the same data."""
    from tuner.study import Loaded, make_objective

    settings, device, spaces_dir = bench.settings, bench.device, bench.spaces_dir
    quiet()
    n = settings.n_throughput
    arrays = reference_arrays(settings.seed)
    configs = draw_configs(spaces_dir, n, settings.seed)
    space = load_space(REFERENCE_SPACE, spaces_dir=spaces_dir)
    spec = StudySpec(name="bench-throughput", space=space_path(REFERENCE_SPACE, spaces_dir), sampler="random", pruner="none", seed=settings.seed)

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
        study = study_with([as_reference_params(c) for c in queued])
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
    with torch_threads(settings.threads):
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
            bench.log(f"throughput {r + 1}/{settings.repeats}: tuner {runs[-1]['tuner']:.2f} trials/s, reference {runs[-1]['reference']:.2f}")
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
