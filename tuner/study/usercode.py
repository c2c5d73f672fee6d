"""Objectives for the person's own code: a Python function given a trial handle (`--objective`),
or a training script run as a child process per trial (`--command`).

Either way a trial records what tuner's own loop does: its seed and device, its intermediate values
and history, why it was pruned or failed, and its kind of ending, so that summaries, reports and
the dashboard read the same for both.
"""

from __future__ import annotations

import importlib
import math
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import optuna

from tuner import attrs as A
from tuner.buffered import BufferedStorage
from tuner.errors import SpecError
from tuner.handle import Pruned, TrialHandle
from tuner.storage import DEFAULT_ARTIFACTS
from tuner.study.store import Loaded

__all__ = ["import_objective", "python_objective", "trial_value"]


def import_objective(ref: str) -> Callable[..., Any]:
    """`module:function`, with the current directory importable (as with `python -m`)."""
    module_name, _, func_name = ref.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure of user code is the user's to fix
        raise SpecError(
            f"--objective {ref}: cannot import module '{module_name}' ({e.__class__.__name__}: {e}); "
            "run from the folder that holds it or put that folder on PYTHONPATH"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise SpecError(f"--objective {ref}: module '{module_name}' has no function '{func_name}'")
    return func


def trial_value(out: Any, metric: str, where: str) -> float:
    """The trial's value from what the code gave: a number, or a dict holding the study's metric."""
    if isinstance(out, dict):
        if metric not in out:
            raise ValueError(f"{where} returned a dict without the study's metric {metric!r} (keys: {', '.join(map(str, out)) or 'none'})")
        out = out[metric]
    try:
        return float(out)
    except (TypeError, ValueError):
        raise ValueError(f"{where} returned {out!r}; return the {metric} as a number (or a dict holding it)") from None


def python_objective(loaded: Loaded, device: Any, *, record: Callable[[optuna.Trial, dict[str, Any]], None]) -> Callable[[optuna.Trial], float]:
    import random

    import numpy as np
    import torch

    spec, space = loaded.spec, loaded.space
    func = import_objective(spec.objective or "")
    prunes = not isinstance(loaded.study.pruner, optuna.pruners.NopPruner)

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        seed = spec.seed + trial.number
        record(trial, {"seed": seed, "device": str(device)})
        durable(trial)
        # code that does not seed itself still trains the same way whenever the trial is rerun
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        handle = TrialHandle(trial, params=params, device=device, seed=seed, metric=spec.metric, pruner=spec.pruner, prunes=prunes, artifacts=DEFAULT_ARTIFACTS)
        try:
            value = trial_value(func(handle), spec.metric, f"objective {spec.objective}")
        except optuna.TrialPruned as e:  # tuner's Pruned, or Optuna's own raised by the code
            if not isinstance(e, Pruned):
                record(trial, {A.PRUNED_REASON: str(e) or "pruned by the objective", A.PRUNED_KIND: A.PRUNER})
            record(trial, {A.HISTORY: handle.history})
            raise
        except Exception as e:
            record(trial, {A.FAIL_REASON: _reason(e), A.FAIL_KIND: e.__class__.__name__, A.HISTORY: handle.history})
            raise
        steps = handle.history["epoch"]
        record(trial, {A.HISTORY: handle.history, **({A.EPOCHS_RUN: steps[-1]} if steps else {})})
        if not math.isfinite(value):
            record(trial, {A.FAIL_REASON: f"objective returned {value}", A.FAIL_KIND: A.NON_FINITE})
        return value

    return objective


def durable(trial: optuna.Trial) -> None:
    """The trial's configuration in the database before the code starts: a killed worker's trial
    is queued again with exactly these parameters."""
    if isinstance(trial.study._storage, BufferedStorage):
        trial.study._storage.flush(trial._trial_id)


def _reason(e: BaseException) -> str:
    """The exception and where in the person's code it was raised (the last frame), one line."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{e.__class__.__name__}: {e}{where}".replace("\n", " ")[:500]
