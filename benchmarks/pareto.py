"""Pareto: what the pareto pruner gains and costs on a two-metric study (val_accuracy, params) on
digits. The same NSGA-II study (space, seed, budget) runs with pruner pareto and with none; each
run's front is scored after every finished trial by its hypervolume against one fixed reference
point, so runs, arms and seeds compare on one scale."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from benchmarks.common import Bench, BenchSettings, Clock, quiet, space_path, timed_training
from tuner import attrs as A
from tuner.metrics import hypervolume
from tuner.space import Param, Space, load_space, save_space
from tuner.spec import StudySpec

__all__ = ["ARMS", "METRICS", "SHARE", "measure_pareto", "param_count_range", "pareto_run"]

METRICS = ["val_accuracy", "params:minimize"]
ARMS = ("pareto", "none")  # the pruner of each arm; every other setting of a pair is the same
SHARE = 0.95  # time to this share of a run's final hypervolume: when its front was nearly all found
_SIGNS = (1.0, -1.0)  # val_accuracy is maximized, params minimized


def param_count_range(space: Space, workload: str = "digits") -> tuple[int, int]:
    """The fewest and the most trainable parameters a model of `space` can have on `workload`:
    every corner of its architecture parameters (low and high of each range, every choice) built
    with tuner's model builder. A model only grows with a width, a depth or a channel count, so the
    extremes lie at corners; conditions (`when`) are ignored, which can only widen the range."""
    from tuner.params import GROUPS, TrainConfig
    from tuner.workloads.data import load_workload, parse_workload
    from tuner.workloads.models import build_model

    data, _ = load_workload(parse_workload(workload), seed=0)
    fixed = space.fixed()
    corners: dict[str, list[Any]] = {}
    for name in GROUPS["Data and architecture"]:
        p = space.params.get(name)
        if p is None or p.type == "fixed":
            continue
        corners[name] = list(p.choices) if p.type == "categorical" else [p.low, p.high]
    counts = []
    for combination in itertools.product(*corners.values()):
        cfg = TrainConfig.from_params({**fixed, **dict(zip(corners, combination))})
        model = build_model(cfg, n_features=data.n_features, n_outputs=data.n_classes or 1, image_shape=data.image_shape)
        counts.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
    return min(counts), max(counts)


def _with_epochs(space: Space, epochs: int, folder: Path) -> str:
    """The space with its epochs fixed at `epochs`, written to `folder`: quick mode's short trials."""
    params = {**space.params, "epochs": Param(name="epochs", type="fixed", value=epochs)}
    path = folder / f"{space.name}-{epochs}-epochs.yaml"
    save_space(Space(f"{space.name}-{epochs}-epochs", params, space.description), path)
    return str(path)


def _feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(c <= 0 for c in trial.constraints.values())


def pareto_run(space: str, pruner: str, seed: int, settings: BenchSettings, device: Any, url: str, *, spaces_dir: Path, reference: list[float], ideal: list[float]) -> dict[str, Any]:
    """One study on tuner's real path: the wall seconds of run_study, and after each finished trial
    the hypervolume of the feasible complete trials' front, against `reference` and divided by
    the box from `reference` to `ideal` (1.0: one trial at the ideal)."""
    from tuner.study import create_study, run_study

    spec = StudySpec(name=f"bench-pareto-{pruner}-{seed}", space=space, workload="digits", metrics=METRICS, pruner=pruner, seed=seed, trials=settings.pareto_trials)
    loaded = create_study(spec, url, spaces_dir=spaces_dir)
    ended: list[tuple[float, FrozenTrial]] = []
    clock = Clock()

    def on_trial(trial: FrozenTrial, *_: Any) -> None:
        ended.append((time.monotonic() - started, trial))  # the front is scored after the run, off the clock

    with timed_training(clock):
        started = time.monotonic()
        run_study(loaded, device=str(device), threads=settings.threads, on_trial=on_trial, pack=1)
        total = time.monotonic() - started
    box = abs(ideal[0] - reference[0]) * abs(ideal[1] - reference[1])
    points: list[list[float]] = []
    trace: list[list[float]] = []
    for elapsed, trial in ended:
        if _feasible(trial):
            points.append(list(trial.values))
        trace.append([round(elapsed, 3), hypervolume(points, reference, _SIGNS) / box])
    final = trace[-1][1] if trace else 0.0
    # the first trial after which the front held SHARE of what it held at the end
    t_share = next((elapsed for elapsed, volume in trace if volume >= SHARE * final), None) if final > 0 else None
    trials = loaded.study.get_trials(deepcopy=False)
    n_reports = sum(len(t.intermediate_values) for t in trials)
    return {
        "seed": seed,
        "final_hv": final,
        "t95_s": t_share,
        "total_s": total,
        "trials": len(ended),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED and A.pruned_kind(t.user_attrs) == A.PRUNER for t in trials),
        "diverged": sum(t.state == TrialState.PRUNED and A.pruned_kind(t.user_attrs) == A.DIVERGED for t in trials),
        "epochs_run": n_reports,
        "train_s": clock.train,  # inside training, reports excluded: what pruning saves comes out of this
        # reporting an epoch: storage, and the pruner in the pareto arm (tuner.train's timing hook)
        "report_ms": 1000 * clock.reports / n_reports if n_reports else None,
        "trace": trace,
    }


def _median(values: list[Any]) -> float | None:
    return statistics.median(values) if values and all(v is not None for v in values) else None


def measure_pareto(bench: Bench) -> dict[str, Any]:
    """The pareto pruner against none on the tradeoff space over seeds: time to 95% of the final
    hypervolume, the final hypervolume, the run's wall time and the trials pruned, medians per arm."""
    settings, device, spaces_dir = bench.settings, bench.device, bench.spaces_dir
    quiet()
    loaded_space = load_space(space_path(settings.pareto_space, spaces_dir), spaces_dir=spaces_dir)
    p_min, p_max = param_count_range(loaded_space)
    reference, ideal = [0.0, float(p_max)], [1.0, float(p_min)]
    seeds = list(range(settings.seed, settings.seed + settings.pareto_seeds))
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        space = space_path(settings.pareto_space, spaces_dir)
        if settings.pareto_epochs is not None:
            space = _with_epochs(loaded_space, settings.pareto_epochs, Path(tmp))
        epochs = load_space(space).fixed().get("epochs")

        def run(arm: str, seed: int, trials_settings: BenchSettings, db: str) -> dict[str, Any]:
            url = f"sqlite:///{Path(tmp) / db}"
            return pareto_run(space, arm, seed, trials_settings, device, url, spaces_dir=spaces_dir, reference=reference, ideal=ideal)

        # warm-up: the first study of the process pays first-use costs (data, kernels) no arm should
        run("none", settings.seed, dataclasses.replace(settings, pareto_trials=1), "warm-up.db")
        for i, seed in enumerate(seeds):
            for arm in ARMS if i % 2 == 0 else ARMS[::-1]:  # alternate which arm goes first: a slow spell falls on both
                got = run(arm, seed, settings, f"{arm}-{seed}.db")
                runs[arm].append(got)
                bench.log(
                    f"pareto {arm} seed {seed}: hypervolume {got['final_hv']:.4f}, 95% at {got['t95_s'] or 0:.1f}s of {got['total_s']:.1f}s, "
                    f"{got['pruned']} of {got['trials']} pruned"
                )
    arms: dict[str, Any] = {}
    for arm in ARMS:
        mine = runs[arm]
        finals = [r["final_hv"] for r in mine]
        arms[arm] = {
            "t95_s": _median([r["t95_s"] for r in mine]),
            "final_hv": _median(finals),
            "total_s": _median([r["total_s"] for r in mine]),
            "train_s": _median([r["train_s"] for r in mine]),
            "epochs_run": _median([r["epochs_run"] for r in mine]),
            "pruned": _median([r["pruned"] for r in mine]),
            "report_ms": _median([r["report_ms"] for r in mine]),
            "final_hv_range": [min(finals), max(finals)],
            "runs": mine,
        }
    pruned, unpruned = arms["pareto"], arms["none"]
    # paired by seed: the same sampler and seed, only the pruner differs
    differences = [p["final_hv"] - n["final_hv"] for p, n in zip(runs["pareto"], runs["none"])]
    noise = unpruned["final_hv_range"][1] - unpruned["final_hv_range"][0]  # seed to seed, without pruning
    median_difference = statistics.median(differences)
    return {
        "how": (
            f"tuner's real path (create_study + run_study, SQLite, --pack 1), nsga2 over search_spaces/{settings.pareto_space}.yaml "
            f"({epochs} epochs) on digits, metrics val_accuracy and params:minimize, {settings.pareto_trials} trials a study, "
            f"pruner pareto vs none with the same seed; seeds {seeds[0]}..{seeds[-1]}; hypervolume of the feasible complete trials' front "
            f"after each trial, against reference val_accuracy={reference[0]:g} params={p_max} (the space's largest model) "
            f"divided by the box to the ideal val_accuracy={ideal[0]:g} params={p_min} (its smallest); seconds with time.monotonic "
            f"around run_study; torch threads {settings.threads}"
        ),
        "space": settings.pareto_space,
        "epochs": epochs,
        "trials": settings.pareto_trials,
        "seeds": seeds,
        "share": SHARE,
        "reference": {"val_accuracy": reference[0], "params": p_max},
        "ideal": {"val_accuracy": ideal[0], "params": p_min},
        "arms": arms,
        "ratio_t95": pruned["t95_s"] / unpruned["t95_s"] if pruned["t95_s"] and unpruned["t95_s"] else None,
        "ratio_total": pruned["total_s"] / unpruned["total_s"] if pruned["total_s"] and unpruned["total_s"] else None,
        "hv_difference": {
            "per_seed": differences,
            "median": median_difference,
            "min": min(differences),
            "max": max(differences),
            "every_seed_lower": all(d < 0 for d in differences),
            "noise": noise,
        },
        # shrank beyond noise: lower in every seed, by more than the unpruned arm varies from seed to
        # seed (the arms' samplers see different histories once a trial is pruned, so a pair's two
        # studies soon try different configurations: their difference carries that spread too)
        "hv_shrank": all(d < 0 for d in differences) and -median_difference > noise if len(seeds) > 1 else None,
        "pruner_ms_per_report": pruned["report_ms"] - unpruned["report_ms"] if pruned["report_ms"] is not None and unpruned["report_ms"] is not None else None,
    }
