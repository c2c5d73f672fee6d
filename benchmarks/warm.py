"""Warm: seconds to 0.97 on digits for a cold TPE study and for ones warm-started from an earlier
study: on a related workload (another sample of digits: 900 of its rows, as a CSV) and on an
unrelated one (wine), each with its best configurations queued first (--warm-start) and, from the
related one, with its trials as TPE's prior (--warm-start-as-prior)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Bench, quiet, space_path
from benchmarks.search import THRESHOLD, time_to_threshold
from tuner.spec import StudySpec

__all__ = ["ARMS", "measure_warm"]

ARMS = ("cold", "warm related", "warm unrelated", "prior related")
N_RELATED = 900  # rows of digits in the related study's data: another sample of the same task


def _related_csv(folder: Path, seed: int) -> Path:
    """900 rows of digits drawn with the seed, as a CSV with its label in `digit`."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rows = np.random.default_rng(seed).choice(len(y), N_RELATED, replace=False)
    path = folder / "digits_sample.csv"
    header = ",".join([*(f"p{i}" for i in range(x.shape[1])), "digit"])
    np.savetxt(path, np.column_stack([x[rows], y[rows]]), delimiter=",", header=header, comments="", fmt="%g")
    return path


def _source(name: str, workload: str, target: str | None, space: str, bench: Bench, url: str) -> float:
    """An earlier study of TPE on `workload`: its best value."""
    from tuner.study import create_study, run_study

    spec = StudySpec(name=name, space=space, workload=workload, target=target, sampler="tpe", pruner="none", seed=bench.settings.seed, trials=bench.settings.warm_source_trials)
    loaded = create_study(spec, url, spaces_dir=bench.spaces_dir)
    run_study(loaded, device=str(bench.device), threads=bench.settings.threads, pack=1)
    return float(loaded.study.best_value)


def measure_warm(bench: Bench) -> dict[str, Any]:
    settings = bench.settings
    quiet()
    space = space_path(settings.search_space, bench.spaces_dir)
    seeds = list(range(settings.seed + 100, settings.seed + 100 + settings.warm_seeds))  # not the earlier studies' seed
    arms: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        folder = Path(tmp)
        sources = f"sqlite:///{folder / 'earlier.db'}"
        best = {
            "related": _source("related", str(_related_csv(folder, settings.seed)), "digit", space, bench, sources),
            "unrelated": _source("unrelated", "wine", None, space, bench, sources),
        }
        bench.log(f"warm: earlier studies' best val_accuracy: digits sample {best['related']:.4f}, wine {best['unrelated']:.4f}")
        for arm in ARMS:
            warm = {"warm related": ("related", 10, sources), "warm unrelated": ("unrelated", 10, sources)}.get(arm)
            prior = ("related", sources) if arm == "prior related" else None
            runs = []
            slug = arm.replace(" ", "-")
            for seed in seeds:
                url = f"sqlite:///{folder / f'{slug}-{seed}.db'}"
                runs.append(time_to_threshold(space, "tpe", "none", seed, settings, bench.device, url, spaces_dir=bench.spaces_dir, warm_start=warm, prior=prior))
                got = f"{runs[-1]['seconds']:.1f}s" if runs[-1]["reached"] else "not reached"
                bench.log(f"warm section, {arm}, seed {seed}: {got} ({runs[-1]['trials']} trials)")
            ordered = sorted(runs, key=lambda r: (not r["reached"], r["seconds"] or 0.0))
            mid = ordered[(len(ordered) - 1) // 2]
            arms[arm] = {
                "median_s": mid["seconds"] if mid["reached"] else None,
                "median_trials": statistics.median(r["trials"] for r in runs),
                "reached": sum(r["reached"] for r in runs),
                "runs": runs,
            }
    cold = arms["cold"]["median_s"]
    ratios = {arm: (cold / arms[arm]["median_s"] if cold and arms[arm]["median_s"] else None) for arm in ARMS[1:]}
    return {
        "how": (
            f"tuner's real path over search_spaces/{settings.search_space}.yaml on digits, TPE, no pruning: seconds from creating the study "
            f"(reading the earlier study included) to the first complete trial with val_accuracy >= {THRESHOLD}, at most {settings.search_cap} trials; "
            f"earlier studies: {settings.warm_source_trials} TPE trials on {N_RELATED} rows of digits (related) and on wine (unrelated); "
            f"warm: their 10 best queued first; prior: the related study's trials given to TPE; seeds {seeds[0]}..{seeds[-1]}; torch threads {settings.threads}"
        ),
        "threshold": THRESHOLD,
        "earlier_best": best,
        "arms": arms,
        "ratios": ratios,  # cold over warm: above 1, the warm start reached the threshold sooner
    }
