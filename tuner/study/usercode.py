"""Objectives for the person's own code: a Python function given a trial handle (`--objective`),
or a training script run as a child process per trial (`--command`).

Either way a trial records what tuner's own loop does: its seed and device, its intermediate values
and history, why it was pruned or failed, and its kind of ending, so that summaries, reports and
the dashboard read the same for both.
"""

from __future__ import annotations

import math
import traceback
from pathlib import Path
from typing import Any, Callable

import optuna

from tuner import attrs as A
from tuner.errors import SpecError
from tuner.handle import Pruned, TrialHandle
from tuner.storage import DEFAULT_ARTIFACTS
from tuner.study.objective import durable, record
from tuner.study.store import Loaded

__all__ = ["command_objective", "import_objective", "python_objective", "trial_value"]

GRACE_S = 5.0  # a pruned or timed-out script's time to exit on SIGTERM before SIGKILL


def import_objective(ref: str) -> Callable[..., Any]:
    """`module:function`, with the current directory importable (as with `python -m`)."""
    from tuner.workloads.data import user_callable

    return user_callable(ref, what="--objective", error=SpecError)


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


def python_objective(loaded: Loaded, device: Any) -> Callable[[optuna.Trial], float]:
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
            record(trial, handle.history_attrs())
            raise
        except Exception as e:
            record(trial, {A.FAIL_REASON: _reason(e), A.FAIL_KIND: e.__class__.__name__, **handle.history_attrs()})
            raise
        record(trial, handle.history_attrs())
        if not math.isfinite(value):
            record(trial, {A.FAIL_REASON: f"objective returned {value}", A.FAIL_KIND: A.NON_FINITE})
        return value

    return objective


def command_objective(loaded: Loaded, device: Any, *, threads: int | None) -> Callable[[optuna.Trial], float]:
    """Each trial runs the study's command as a child process; its reported metric goes through
    the pruner as it arrives, and the trial's value is the best value it reported (as tuner's own
    loop takes its best epoch). Its output is kept as the trial's log artifact."""
    import os
    import shlex
    import tempfile

    from tuner.command import CommandError, CommandTimeout, check_template, expand, run, trial_env

    spec, space = loaded.spec, loaded.space
    template = spec.command or ""
    check_template(template, list(space.params))
    prunes = not isinstance(loaded.study.pruner, optuna.pruners.NopPruner)
    sign = 1.0 if spec.direction == "maximize" else -1.0

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        seed = spec.seed + trial.number
        handle = TrialHandle(trial, params=params, device=device, seed=seed, metric=spec.metric, pruner=spec.pruner, prunes=prunes, artifacts=DEFAULT_ARTIFACTS)
        with tempfile.TemporaryDirectory(prefix=f"tuner-trial-{trial.number}-") as tmp:
            folder = Path(tmp)
            argv = expand(template, params, seed=seed, trial=trial.number, args_json_file=folder / "args.json")
            record(trial, {"seed": seed, "device": str(device), A.COMMAND: shlex.join(argv), "cwd": os.getcwd(), "threads": threads})
            durable(trial)
            env = trial_env(os.environ, params=params, study=spec.name, trial=trial.number, seed=seed, metrics_file=folder / "metrics.jsonl", device=str(device), threads=threads)
            steps, seen = handle.history["epoch"], handle.history[spec.metric]  # what was reported so far

            def on_record(metrics: dict[str, float]) -> None:
                if spec.metric not in metrics:
                    return
                raw_step = metrics.get("step", metrics.get("epoch"))
                step = int(raw_step) if raw_step is not None and math.isfinite(raw_step) and raw_step >= 0 else len(steps) + 1
                if step in steps:  # the same report through both channels (the helper's file and a printed line)
                    return
                extra = {k: v for k, v in metrics.items() if k not in (spec.metric, "step", "epoch")}
                handle.report(step, metrics[spec.metric], **extra)

            log = folder / f"trial-{trial.number}.log"
            try:
                outcome = run(argv, env=env, metrics_file=folder / "metrics.jsonl", log_path=log, on_record=on_record, timeout_s=spec.trial_timeout, grace_s=GRACE_S)
            except optuna.TrialPruned:
                _finish(trial, handle, log)
                raise
            except CommandTimeout as e:
                reason = f"command ran past --trial-timeout {e.timeout_s:g} s and was stopped (its log is attached to the trial)"
                _finish(trial, handle, log, fail=(reason, A.TIMED_OUT))
                raise
            except CommandError as e:
                _finish(trial, handle, log, fail=(str(e), e.__class__.__name__))
                raise
            except BaseException:  # interrupted: the run closes the trial; keep what the script said
                _finish(trial, handle, log)
                raise
            if outcome.exit_code != 0:
                how = f"killed by signal {-outcome.exit_code}" if outcome.exit_code < 0 else f"exited with code {outcome.exit_code}"
                tail = " | ".join(line for line in outcome.stderr_tail.splitlines()[-3:] if line.strip())
                reason = f"command {how}" + (f": {tail}" if tail else " (nothing on stderr)")
                _finish(trial, handle, log, fail=(reason[:500], A.EXIT_CODE))
                raise CommandError(reason)
            finite = [v for v in seen if math.isfinite(v)]
            if not finite:
                reason = (
                    f"command exited 0 without reporting {spec.metric}: print `{spec.metric}=0.93` lines on stdout, "
                    f"append JSON lines to $TUNER_METRICS_FILE, or call tuner.report({spec.metric}=...)"
                )
                _finish(trial, handle, log, fail=(reason, A.NO_METRIC))
                raise CommandError(reason)
            best = max(finite, key=lambda v: sign * v)
            _finish(trial, handle, log, extra={"duration_s": round(outcome.duration_s, 4), "value_from": f"best of {len(seen)} reports"})
            return best

    return objective


def _finish(
    trial: optuna.Trial,
    handle: TrialHandle,
    log: Path,
    *,
    fail: tuple[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """What a command trial records however it ends: its history, its log as an artifact (the
    dashboard links it from the trial's page) and, for a failure, the reason and kind."""
    from tuner.errors import TunerError
    from tuner.handle import attach

    attrs: dict[str, Any] = {**handle.history_attrs(), **(extra or {})}
    if fail is not None:
        attrs[A.FAIL_REASON], attrs[A.FAIL_KIND] = fail
    if log.is_file():
        try:
            attrs[A.LOG_ARTIFACT] = attach(trial, log, DEFAULT_ARTIFACTS, mimetype="text/plain")
        except TunerError as e:  # the trial's result matters more than its log
            attrs["log_error"] = str(e)
    record(trial, attrs)


def _reason(e: BaseException) -> str:
    """The exception and where in the person's code it was raised (the last frame), one line."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{e.__class__.__name__}: {e}{where}".replace("\n", " ")[:500]
