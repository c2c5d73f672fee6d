"""Pareto: what the pareto pruner gains and costs on a two-metric study (val_accuracy, params) on
digits. The same NSGA-II study (space, seed, sampler) runs with pruner none for `pareto_trials`
trials and with pruner pareto for twice as many; each run's front is scored after every finished
trial by its hypervolume on val_accuracy and log10(params) against one fixed reference point, so
runs, arms and seeds compare on one scale. The pruned arm is read at equal trials (its first
`pareto_trials`) and at equal time (when the unpruned arm ended): what pruning buys is more trials
in the same time, and the sampler of a pruned study learns only from the trials it completed."""

from __future__ import annotations

import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from benchmarks.common import Bench, BenchSettings, Clock, quiet, space_path, timed_training
from tuner import attrs as A
from tuner.metrics import feasible, hypervolume, pareto_front
from tuner.space import Param, Space, load_space, save_space
from tuner.spec import StudySpec

__all__ = ["ARMS", "METRICS", "SHARE", "measure_pareto", "param_count_range", "pareto_run"]

METRICS = ["val_accuracy", "params:minimize"]
ARMS = ("pareto", "none")  # the pruner of each arm; every other setting of a pair is the same
SHARE = 0.95  # time to this share of a run's hypervolume after pareto_trials trials: when that front was nearly all found
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
    return trial.state == TrialState.COMPLETE and feasible(trial)


def _time_to(trace: list[list[float]], volume: float) -> float | None:
    """Seconds to the first finished trial after which the front held `volume`; None if it never did."""
    return next((elapsed for elapsed, held in trace if held >= volume), None) if volume > 0 else None


def _volume_at(trace: list[list[float]], seconds: float) -> float:
    """The front's hypervolume `seconds` into the run: after the last trial that had finished by then."""
    return max((held for elapsed, held in trace if elapsed <= seconds), default=0.0)


def pareto_run(space: str, pruner: str, seed: int, settings: BenchSettings, device: Any, url: str, *, n_trials: int, spaces_dir: Path, reference: list[float], ideal: list[float]) -> dict[str, Any]:
    """One study of `n_trials` on tuner's real path: the wall seconds of run_study, and after each
    finished trial the hypervolume of the feasible complete trials' front, against `reference` and
    divided by the box from `reference` to `ideal` (1.0: one trial at the ideal); under "equal",
    the same figures after its first `settings.pareto_trials` finished trials."""
    from tuner.samplers import default_startup_trials
    from tuner.study import create_study, run_study

    # the arms' budgets differ and the sampler's start-up follows the budget: pin it to the
    # unpruned arm's, so both arms' samplers are the same and differ only in what they are told
    startup = default_startup_trials(settings.pareto_trials)
    spec = StudySpec(name=f"bench-pareto-{pruner}-{seed}", space=space, workload="digits", metrics=METRICS, pruner=pruner, seed=seed, trials=n_trials, startup_trials=startup)
    loaded = create_study(spec, url, spaces_dir=spaces_dir)
    ended: list[tuple[float, FrozenTrial]] = []
    clock = Clock()

    def on_trial(trial: FrozenTrial, *_: Any) -> None:
        ended.append((time.monotonic() - started, trial))  # the front is scored after the run, off the clock

    with timed_training(clock):
        started = time.monotonic()
        run_study(loaded, device=str(device), threads=settings.threads, on_trial=on_trial, pack=1)
        total = time.monotonic() - started
    # model sizes span decades: scored on log10(params), halving a small model counts as much as a large one
    reference, ideal = [reference[0], math.log10(reference[1])], [ideal[0], math.log10(ideal[1])]
    box = abs(ideal[0] - reference[0]) * abs(ideal[1] - reference[1])
    front: list[list[float]] = []
    trace: list[list[float]] = []
    for elapsed, trial in ended:
        if _feasible(trial):
            # the front alone: a dominated point would split the volume's slices differently, and
            # the same front, reached in another order or run, must score the same to the last bit
            candidates = [*front, [trial.values[0], math.log10(trial.values[1])]]
            front = [candidates[i] for i in pareto_front(candidates, _SIGNS)]
        trace.append([round(elapsed, 3), hypervolume(front, reference, _SIGNS) / box])
    final = trace[-1][1] if trace else 0.0
    trials = loaded.study.get_trials(deepcopy=False)
    n_reports = sum(len(t.intermediate_values) for t in trials)
    first = {trial.number for _, trial in ended[: settings.pareto_trials]}
    early = [t for t in trials if t.number in first]
    at_equal = trace[: settings.pareto_trials]
    hv_equal = at_equal[-1][1] if at_equal else 0.0

    def pruned(of: list[FrozenTrial]) -> int:
        return sum(t.state == TrialState.PRUNED and A.pruned_kind(t.user_attrs) == A.PRUNER for t in of)

    return {
        "seed": seed,
        "final_hv": final,
        "total_s": total,
        "trials": len(ended),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": pruned(trials),
        "diverged": sum(t.state == TrialState.PRUNED and A.pruned_kind(t.user_attrs) == A.DIVERGED for t in trials),
        "epochs_run": n_reports,
        "train_s": clock.train,  # inside training, reports excluded: what pruning saves comes out of this
        # reporting an epoch: storage, and the pruner in the pareto arm (tuner.train's timing hook)
        "report_ms": 1000 * clock.reports / n_reports if n_reports else None,
        # after the first pareto_trials finished trials: both arms at the same number of trials
        "equal": {
            "trials": len(at_equal),
            "hv": hv_equal,
            "s": at_equal[-1][0] if at_equal else None,
            # the first trial after which the front held SHARE of what it held then
            "t95_s": _time_to(at_equal, SHARE * hv_equal),
            "complete": sum(t.state == TrialState.COMPLETE for t in early),  # all the sampler learned from
            "pruned": pruned(early),
            "epochs_run": sum(len(t.intermediate_values) for t in early),
        },
        "trace": trace,
    }


def _median(values: list[Any]) -> float | None:
    return statistics.median(values) if values and all(v is not None for v in values) else None


def _spread(differences: list[float]) -> dict[str, float]:
    return {"median": statistics.median(differences), "min": min(differences), "max": max(differences)}


def _pair(pruned: dict[str, Any], unpruned: dict[str, Any]) -> dict[str, Any]:
    """One seed's two runs compared at equal trials, at equal time (the unpruned run's end), and by
    when the pruned run first held the unpruned run's final front."""
    at_time = _volume_at(pruned["trace"], unpruned["total_s"])
    reached_s = _time_to(pruned["trace"], unpruned["final_hv"])
    return {
        "seed": pruned["seed"],
        "equal_trials": pruned["equal"]["hv"] - unpruned["equal"]["hv"],
        "at_s": unpruned["total_s"],
        "pareto_hv_at_s": at_time,
        "pareto_trials_at_s": sum(elapsed <= unpruned["total_s"] for elapsed, _ in pruned["trace"]),
        "equal_time": at_time - unpruned["final_hv"],
        # its whole budget spent before the unpruned run ended: at equal time it had stopped
        "pareto_ended_first": pruned["total_s"] <= unpruned["total_s"],
        "to_unpruned_s": reached_s,
        "to_unpruned_ratio": reached_s / unpruned["total_s"] if reached_s is not None else None,
    }


def measure_pareto(bench: Bench) -> dict[str, Any]:
    """The pareto pruner against none on the tradeoff space over seeds, medians per arm: the
    hypervolume at equal trials (with the noise verdict), at equal time, the time the pruned arm
    took to reach the unpruned arm's final front, time to 95% of each arm's front, wall time and
    the trials pruned."""
    settings, device, spaces_dir = bench.settings, bench.device, bench.spaces_dir
    quiet()
    loaded_space = load_space(space_path(settings.pareto_space, spaces_dir), spaces_dir=spaces_dir)
    p_min, p_max = param_count_range(loaded_space)
    reference, ideal = [0.0, float(p_max)], [1.0, float(p_min)]
    seeds = list(range(settings.seed, settings.seed + settings.pareto_seeds))
    budgets = {"pareto": 2 * settings.pareto_trials, "none": settings.pareto_trials}  # pruning's gain is more trials in the same time
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        space = space_path(settings.pareto_space, spaces_dir)
        if settings.pareto_epochs is not None:
            space = _with_epochs(loaded_space, settings.pareto_epochs, Path(tmp))
        epochs = load_space(space).fixed().get("epochs")

        def run(arm: str, seed: int, n_trials: int, db: str) -> dict[str, Any]:
            url = f"sqlite:///{Path(tmp) / db}"
            return pareto_run(space, arm, seed, settings, device, url, n_trials=n_trials, spaces_dir=spaces_dir, reference=reference, ideal=ideal)

        # warm-up: the first study of the process pays first-use costs (data, kernels) no arm should
        run("none", settings.seed, 1, "warm-up.db")
        for i, seed in enumerate(seeds):
            for arm in ARMS if i % 2 == 0 else ARMS[::-1]:  # alternate which arm goes first: a slow spell falls on both
                got = run(arm, seed, budgets[arm], f"{arm}-{seed}.db")
                runs[arm].append(got)
                eq = got["equal"]
                bench.log(
                    f"pareto {arm} seed {seed}: hypervolume {eq['hv']:.4f} after {eq['trials']} trials ({eq['s']:.1f}s, {eq['pruned']} pruned), "
                    f"{got['final_hv']:.4f} after {got['trials']} ({got['total_s']:.1f}s, {got['pruned']} pruned)"
                )
    arms: dict[str, Any] = {}
    for arm in ARMS:
        mine = runs[arm]
        at_equal = [r["equal"]["hv"] for r in mine]
        arms[arm] = {
            "trials": budgets[arm],
            "hv_equal": _median(at_equal),
            "hv_equal_range": [min(at_equal), max(at_equal)],
            "t95_s": _median([r["equal"]["t95_s"] for r in mine]),
            "s_equal": _median([r["equal"]["s"] for r in mine]),
            "pruned_equal": _median([r["equal"]["pruned"] for r in mine]),
            "epochs_equal": _median([r["equal"]["epochs_run"] for r in mine]),
            "final_hv": _median([r["final_hv"] for r in mine]),
            "total_s": _median([r["total_s"] for r in mine]),
            "train_s": _median([r["train_s"] for r in mine]),
            "epochs_run": _median([r["epochs_run"] for r in mine]),
            "pruned": _median([r["pruned"] for r in mine]),
            "report_ms": _median([r["report_ms"] for r in mine]),
            "runs": mine,
        }
    pruned, unpruned = arms["pareto"], arms["none"]
    # paired by seed: the same sampler and seed, only the pruner (and the pruned arm's budget) differs
    pairs = [_pair(p, n) for p, n in zip(runs["pareto"], runs["none"])]
    at_trials = [pair["equal_trials"] for pair in pairs]
    noise = unpruned["hv_equal_range"][1] - unpruned["hv_equal_range"][0]  # seed to seed, without pruning
    reached = [pair for pair in pairs if pair["to_unpruned_s"] is not None]
    return {
        "how": (
            f"tuner's real path (create_study + run_study, SQLite, --pack 1), nsga2 over search_spaces/{settings.pareto_space}.yaml "
            f"({epochs} epochs) on digits, metrics val_accuracy and params:minimize; pruner none for {settings.pareto_trials} trials "
            f"and pruner pareto, with the same seed and sampler, for {budgets['pareto']}; seeds {seeds[0]}..{seeds[-1]}; hypervolume of the feasible complete trials' front "
            f"after each trial on val_accuracy and log10(params), against reference val_accuracy={reference[0]:g} params={p_max} (the space's largest model) "
            f"divided by the box to the ideal val_accuracy={ideal[0]:g} params={p_min} (its smallest); equal trials: after each run's first "
            f"{settings.pareto_trials} finished trials; equal time: the pareto run's front when the none run ended; seconds with time.monotonic "
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
        "pairs": pairs,
        # (a) at equal trials; the pruned arm's sampler learned from fewer complete trials
        "equal_trials": {
            "per_seed": at_trials,
            **_spread(at_trials),
            "every_seed_lower": all(d < 0 for d in at_trials),
            "noise": noise,
            # shrank beyond noise: lower in every seed, by more than the unpruned arm varies from seed
            # to seed (the arms' samplers see different histories once a trial is pruned, so a pair's
            # two studies soon try different configurations: their difference carries that spread too)
            "shrank": all(d < 0 for d in at_trials) and -statistics.median(at_trials) > noise if len(seeds) > 1 else None,
        },
        # (b) at equal time: the pruned arm's front when the unpruned arm ended, against that arm's final
        "equal_time": {
            "pareto_hv": _median([pair["pareto_hv_at_s"] for pair in pairs]),
            "none_hv": unpruned["final_hv"],
            "per_seed": [pair["equal_time"] for pair in pairs],
            **_spread([pair["equal_time"] for pair in pairs]),
            "pareto_ended_first": sum(pair["pareto_ended_first"] for pair in pairs),
        },
        # (c) seconds the pruned arm took to first hold the unpruned arm's final front, within its budget
        "to_unpruned": {
            "per_seed_s": [pair["to_unpruned_s"] for pair in pairs],
            "reached": len(reached),
            "of": len(pairs),
            "median_s": _median([pair["to_unpruned_s"] for pair in reached]),
            "median_none_s": _median([pair["at_s"] for pair in reached]),
            "median_ratio": _median([pair["to_unpruned_ratio"] for pair in reached]),
        },
        "ratio_t95": pruned["t95_s"] / unpruned["t95_s"] if pruned["t95_s"] and unpruned["t95_s"] else None,
        "ratio_equal_s": pruned["s_equal"] / unpruned["s_equal"] if pruned["s_equal"] and unpruned["s_equal"] else None,
        "ratio_total": pruned["total_s"] / unpruned["total_s"] if pruned["total_s"] and unpruned["total_s"] else None,
        "pruner_ms_per_report": pruned["report_ms"] - unpruned["report_ms"] if pruned["report_ms"] is not None and unpruned["report_ms"] is not None else None,
    }
