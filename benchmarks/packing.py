"""Packing: trials per second packed (tuner.packing) against tuner unpacked and the reference, on
the same configurations and seeds; time to 0.97 for tpe+hyperband packed against unpacked; and the
search quality of the default (auto) against --pack 1: best value and wall time of a TPE study at
the demo's budget, over seeds."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from benchmarks.common import REFERENCE_SPACE, TARGETS, Bench, quiet, space_path, torch_threads
from benchmarks.reference import as_reference_params, reference_arrays, reference_objective
from benchmarks.search import THRESHOLD, time_to_threshold
from benchmarks.throughput import draw_configs
from tuner.space import load_space
from tuner.spec import StudySpec

__all__ = ["measure_packing"]


def _study(queued: list[dict[str, Any]], seed: int) -> optuna.Study:
    study = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(), sampler=optuna.samplers.RandomSampler(seed=seed), pruner=optuna.pruners.NopPruner(), direction="maximize"
    )
    for params in queued:
        study.enqueue_trial(params)
    return study


def measure_packing(bench: Bench) -> dict[str, Any]:
    """Three paths over the same configurations (drawn once from the reference space) and seeds,
    each in a fresh in-memory study with the configurations queued: the reference objective and
    tuner's objective one trial at a time (study.optimize), and tuner's objective given the trials
    `pack` at a time (run_pack, as a worker does with --pack). Then the search race's tpe+hyperband
    on tuner's real path with --pack 1 and --pack `pack`."""
    from tuner.study import Loaded, make_objective

    settings, device, spaces_dir = bench.settings, bench.device, bench.spaces_dir
    quiet()
    n, k = settings.n_packing, settings.pack
    arrays = reference_arrays(settings.seed)
    configs = draw_configs(spaces_dir, n, settings.seed)
    space = load_space(REFERENCE_SPACE, spaces_dir=spaces_dir)
    spec = StudySpec(name="bench-packing", space=space_path(REFERENCE_SPACE, spaces_dir), sampler="random", pruner="none", seed=settings.seed)

    def run_reference(queued: list[dict[str, Any]]) -> float:
        study = _study([as_reference_params(c) for c in queued], settings.seed)
        objective = reference_objective(arrays, device, seed=settings.seed)
        started = time.perf_counter()
        study.optimize(objective, n_trials=len(queued))
        return time.perf_counter() - started

    def run_unpacked(queued: list[dict[str, Any]]) -> float:
        study = _study(queued, settings.seed)
        objective = make_objective(Loaded(study, spec, space, "in-memory"), device)
        started = time.perf_counter()
        study.optimize(objective, n_trials=len(queued))
        return time.perf_counter() - started

    sizes: list[int] = []

    def run_packed(queued: list[dict[str, Any]]) -> float:
        study = _study(queued, settings.seed)
        objective = make_objective(Loaded(study, spec, space, "in-memory"), device)
        started = time.perf_counter()
        for start in range(0, len(queued), k):
            trials = [study.ask() for _ in queued[start : start + k]]
            ended: dict[int, Any] = {}
            objective.run_pack(trials, n_pack=k, on_ended=ended.__setitem__)
            for i, trial in enumerate(trials):
                outcome = ended[i]
                study.tell(trial, None if isinstance(outcome, BaseException) else outcome, state=None if not isinstance(outcome, BaseException) else optuna.trial.TrialState.FAIL)
            sizes.extend(len(t.user_attrs.get("pack", [0])) for t in study.get_trials(deepcopy=False)[-len(trials) :])
        return time.perf_counter() - started

    runs = []
    paths = {"reference": run_reference, "unpacked": run_unpacked, "packed": run_packed}
    with torch_threads(settings.threads):
        for fn in paths.values():  # warm-up: first-call costs counted in none
            fn(configs[: min(2, n)])
        sizes.clear()
        for r in range(settings.repeats):
            # the paths run by turns, in a rotating order, so a shared machine's slow spells fall on all
            names = list(paths)[r % 3 :] + list(paths)[: r % 3]
            seconds = {name: paths[name](configs) for name in names}
            runs.append({name: n / s for name, s in seconds.items()})
            bench.log("packing {}/{}: ".format(r + 1, settings.repeats) + ", ".join(f"{name} {runs[-1][name]:.2f} trials/s" for name in paths))
    tps = {name: statistics.median(run[name] for run in runs) for name in paths}
    cuda = getattr(device, "type", str(device)) == "cuda"
    target = TARGETS["packing_cuda" if cuda else "packing_cpu"]

    search: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        space_file = space_path(settings.search_space, spaces_dir)
        for label, pack in (("unpacked", 1), ("packed", k)):
            results = []
            for seed in range(settings.seed, settings.seed + settings.search_seeds):
                url = f"sqlite:///{Path(tmp) / f'{label}-{seed}.db'}"
                results.append(time_to_threshold(space_file, "tpe", "hyperband", seed, settings, device, url, spaces_dir=spaces_dir, pack=pack))
                bench.log(f"packing search {label} seed {seed}: " + (f"{results[-1]['seconds']:.1f}s" if results[-1]["reached"] else "not reached"))
            ordered = sorted(results, key=lambda r: (not r["reached"], r["seconds"] or 0.0))
            mid = ordered[(len(ordered) - 1) // 2]
            search[label] = {"median_s": mid["seconds"] if mid["reached"] else None, "reached": sum(r["reached"] for r in results), "runs": results}
    unpacked_s, packed_s = search["unpacked"]["median_s"], search["packed"]["median_s"]
    quality = _quality(bench)
    return {
        "unit": "trials/s",
        "pack": k,
        **tps,
        "ratio_reference": tps["packed"] / tps["reference"],
        "ratio_unpacked": tps["packed"] / tps["unpacked"],
        "mean_pack_size": statistics.mean(sizes) if sizes else None,
        "target": target,
        "met": tps["packed"] / tps["reference"] >= target,
        "n_trials": n,
        "repeats": runs,
        "search": {**search, "threshold": THRESHOLD, "speedup": unpacked_s / packed_s if unpacked_s and packed_s else None},
        "quality": quality,
        "how": (
            f"{n} configurations drawn once from search_spaces/{REFERENCE_SPACE}.yaml (RandomSampler(seed)), queued in a fresh "
            "InMemoryStorage study per path, NopPruner; reference and unpacked: study.optimize; packed: the trials asked "
            f"{k} at a time and given to the objective's run_pack (as a worker with --pack {k}: those sharing a pack key "
            "train as one model, the others alone); the three run by turns; 2 warm-up trials each first; "
            f"torch threads {settings.threads}. Search: tpe+hyperband to val_accuracy >= {THRESHOLD} on "
            f"search_spaces/{settings.search_space}.yaml, --pack 1 vs --pack {k}, seeds {settings.seed}..{settings.seed + settings.search_seeds - 1}. "
            f"Quality: tpe+median studies of {settings.n_quality} trials on the same space, --pack 1 vs --pack auto "
            f"({quality['auto']} here), same seeds; best value and wall seconds of each"
        ),
    }


def _quality(bench: Bench) -> dict[str, Any]:
    """Search quality of packing as the default would run it: a TPE study (median pruning, the
    demo's strategy and budget) with --pack 1 and with --pack auto, seed by seed; each study's best
    value and wall time. Packing asks TPE for K trials at once (the running ones count as bad
    results, its constant liar) and learns of them only when their pack ends: if that costs
    search quality, the best values show it."""
    from tuner.packing import resolve_pack
    from tuner.study import best_trial, create_study, run_study
    from tuner.train import resolve_device

    settings, device, spaces_dir = bench.settings, bench.device, bench.spaces_dir
    auto = resolve_pack("auto", resolve_device(str(device)), budget=settings.n_quality, sampler="tpe")
    space = space_path(settings.search_space, spaces_dir)
    seeds = list(range(settings.seed, settings.seed + settings.search_seeds))
    out: dict[str, Any] = {"auto": auto, "trials": settings.n_quality}
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        for label, pack in (("unpacked", 1), ("packed", auto)):
            best, seconds = [], []
            for seed in seeds:
                spec = StudySpec(name=f"bench-quality-{label}-{seed}", space=space, sampler="tpe", pruner="median", seed=seed, trials=settings.n_quality)
                loaded = create_study(spec, f"sqlite:///{Path(tmp) / f'quality-{label}-{seed}.db'}", spaces_dir=spaces_dir)
                started = time.perf_counter()
                run_study(loaded, device=str(device), threads=settings.threads, pack=pack)
                seconds.append(time.perf_counter() - started)
                top = best_trial(loaded.study)
                best.append(top.value if top is not None else None)
                bench.log(f"packing quality {label} seed {seed}: best {best[-1]} in {seconds[-1]:.1f}s")
            found = [b for b in best if b is not None]
            out[label] = {
                "best": best,
                "seconds": seconds,
                "median_best": statistics.median(found) if found else None,
                "mean_best": statistics.mean(found) if found else None,
                "median_s": statistics.median(seconds),
            }
    u, p = out["unpacked"], out["packed"]
    out["speedup"] = u["median_s"] / p["median_s"] if p["median_s"] else None
    out["best_difference"] = p["mean_best"] - u["mean_best"] if p["mean_best"] is not None and u["mean_best"] is not None else None
    return out
