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
from tuner.handle import MissingMetric, Pruned, TrialHandle
from tuner.storage import DEFAULT_ARTIFACTS
from tuner.study.store import Loaded
from tuner.study.trial import begin, durable, record

__all__ = ["command_objective", "import_objective", "python_objective", "trial_figures"]

GRACE_S = 5.0  # a pruned or timed-out script's time to exit on SIGTERM before SIGKILL


def import_objective(ref: str) -> Callable[..., Any]:
    """`module:function`, with the current directory importable (as with `python -m`)."""
    from tuner.workloads.data import user_callable

    return user_callable(ref, what="--objective", error=SpecError)


class BadResult(ValueError):
    """An objective returned something that is not its study's metrics."""


def trial_figures(out: Any, metrics: list[str], where: str) -> dict[str, Any]:
    """The trial's result from what the code returned, by metric: a number (the study's one
    metric), a dict of metrics by name, or a sequence of numbers in the order of the study's metrics."""
    if isinstance(out, dict):
        missing = [m for m in metrics if m not in out]
        if missing:
            raise BadResult(f"{where} returned a dict without the study's metric {missing[0]!r} (keys: {', '.join(map(str, out)) or 'none'})")
        return out
    if isinstance(out, (list, tuple)) and len(metrics) > 1:
        if len(out) != len(metrics):
            raise BadResult(f"{where} returned {len(out)} values for the study's {len(metrics)} metrics ({', '.join(metrics)}); return a dict of them by name")
        return dict(zip(metrics, out))
    if len(metrics) > 1:
        raise BadResult(f"{where} returned {out!r}; with several metrics return a dict of them by name: {{{', '.join(repr(m) + ': ...' for m in metrics)}}}"[:500])
    try:
        return {metrics[0]: float(out)}
    except (TypeError, ValueError):
        raise BadResult(f"{where} returned {out!r}; return the {metrics[0]} as a number (or a dict holding it)") from None


def python_objective(loaded: Loaded, device: Any) -> Callable[[optuna.Trial], float | list[float]]:
    import random

    import numpy as np
    import torch

    spec = loaded.spec
    func = import_objective(spec.objective or "")

    def objective(trial: optuna.Trial) -> float | list[float]:
        handle = begin(loaded, trial, device)
        durable(trial)
        # code that does not seed itself still trains the same way whenever the trial is rerun
        torch.manual_seed(handle.seed)
        random.seed(handle.seed)
        np.random.seed(handle.seed % 2**32)
        try:
            value = handle.conclude(trial_figures(func(handle), handle.metrics, f"objective {spec.objective}"))
        except optuna.TrialPruned as e:  # tuner's Pruned, or Optuna's own raised by the code
            if not isinstance(e, Pruned):
                record(trial, {A.PRUNED_REASON: str(e) or "pruned by the objective", A.PRUNED_KIND: A.PRUNER})
            record(trial, {**handle.history_attrs(), **handle.folder_attrs()})
            raise
        except (MissingMetric, BadResult) as e:  # what it returned: no place in tuner's code to point at
            reason, kind = (f"objective {spec.objective}: {e}", A.NO_METRIC) if isinstance(e, MissingMetric) else (str(e), "BadResult")
            record(trial, {A.FAIL_REASON: reason, A.FAIL_KIND: kind, **handle.history_attrs(), **handle.folder_attrs()})
            raise
        except Exception as e:
            record(trial, {A.FAIL_REASON: _reason(e), A.FAIL_KIND: e.__class__.__name__, **handle.history_attrs(), **handle.folder_attrs()})
            raise
        record(trial, {**handle.history_attrs(), **handle.folder_attrs()})
        return value  # a NaN or infinite value fails the trial as it is told (run.py), as any objective's

    return objective


def command_objective(loaded: Loaded, device: Any, *, threads: int | None) -> Callable[[optuna.Trial], float | list[float]]:
    """Each trial runs the study's command as a child process; its reported metric goes through
    the pruner as it arrives, and the trial's value is the best value it reported (as tuner's own
    loop takes its best epoch). The trial gets a folder of its own ({trial_dir}) under the
    study's artifacts, which keeps its output log and whatever the script saves there; both are
    attached to the trial."""
    import os
    import shlex
    import tempfile

    from tuner.command import CommandError, CommandTimeout, check_template, default_reader, expand, pattern_reader, run, trial_env
    from tuner.patterns import OutputReader

    spec = loaded.spec
    template = spec.command or ""
    check_template(template, list(loaded.space.params))
    sign = 1.0 if spec.direction == "maximize" else -1.0
    reads_output = bool(spec.metric_patterns or spec.step_pattern)  # patterns the spec checked as it was made

    def objective(trial: optuna.Trial) -> float | list[float]:
        handle = begin(loaded, trial, device)
        params, seed = handle.params, handle.seed
        trial_dir = handle.trial_dir
        with tempfile.TemporaryDirectory(prefix=f"tuner-trial-{trial.number}-") as tmp:
            folder = Path(tmp)
            argv = expand(template, params, seed=seed, trial=trial.number, args_json_file=folder / "args.json", trial_dir=trial_dir)
            record(trial, {A.COMMAND: shlex.join(argv), A.CWD: os.getcwd(), A.THREADS: threads})
            durable(trial)
            env = trial_env(
                os.environ, params=params, study=spec.name, trial=trial.number, seed=seed, metrics_file=folder / "metrics.jsonl", device=str(device), threads=threads,
                trial_dir=trial_dir,
            )
            steps, seen = handle.history["epoch"], handle.history[spec.metric]  # what was reported so far
            # the study's other metrics and constrained ones, from lines without the first metric
            # (a model's size printed once at the start), go with the reports that follow
            wanted = {*handle.metrics[1:], *(c.metric for c in spec.bounds)} - {spec.metric}
            pending: dict[str, float] = {}
            reported: set[str] = set()  # every metric name the script reported, for a missing metric's message
            # a reader of its own a trial: a step pattern's last step is this trial's
            reader = pattern_reader(OutputReader(spec.metric_patterns or [], spec.step_pattern)) if reads_output else default_reader

            def on_record(metrics: dict[str, float]) -> None:
                reported.update(k for k in metrics if k not in ("step", "epoch"))
                if spec.metric not in metrics:
                    pending.update((k, v) for k, v in metrics.items() if k in wanted)
                    return
                raw_step = metrics.get("step", metrics.get("epoch"))
                step = int(raw_step) if raw_step is not None and math.isfinite(raw_step) and raw_step >= 0 else len(steps) + 1
                if step in steps:  # the same report through both channels (the helper's file and a printed line)
                    return
                handle.report(step, {**pending, **{k: v for k, v in metrics.items() if k not in ("step", "epoch")}})

            log = trial_dir / log_name(trial.number)
            try:
                outcome = run(
                    argv, env=env, metrics_file=folder / "metrics.jsonl", log_path=log, on_record=on_record, timeout_s=spec.trial_timeout, grace_s=GRACE_S,
                    read_line=reader,
                )
            except optuna.TrialPruned:
                _finish(trial, handle, trial_dir)
                raise
            except CommandTimeout as e:
                reason = f"command ran past --trial-timeout {e.timeout_s:g} s and was stopped (its log is attached to the trial)"
                _finish(trial, handle, trial_dir, fail=(reason, A.TIMED_OUT))
                raise
            except CommandError as e:
                _finish(trial, handle, trial_dir, fail=(str(e), e.__class__.__name__))
                raise
            except BaseException:  # interrupted: the run closes the trial; keep what the script said
                _finish(trial, handle, trial_dir)
                raise
            if outcome.exit_code != 0:
                how = f"killed by signal {-outcome.exit_code}" if outcome.exit_code < 0 else f"exited with code {outcome.exit_code}"
                tail = " | ".join(line for line in outcome.stderr_tail.splitlines()[-3:] if line.strip())
                reason = f"command {how}" + (f": {tail}" if tail else " (nothing on stderr)")
                reason = reason[:500] + _interpreter_hint(argv, outcome.stderr_tail)
                _finish(trial, handle, trial_dir, fail=(reason, A.EXIT_CODE), extra={A.EXIT_STATUS: outcome.exit_code})
                raise CommandError(reason)
            finite = [i for i, v in enumerate(seen) if v is not None and math.isfinite(v)]
            try:
                if not finite:
                    raise MissingMetric(spec.metric, sorted(reported))
                best = max(finite, key=lambda i: sign * seen[i])  # the step whose metric is best: its other metrics with it
                at_best = {k: column[best] for k, column in handle.history.items() if column[best] is not None}
                value = handle.conclude({**pending, **at_best})
            except MissingMetric as e:
                reason = _missing_metric(e.metric, reported, outcome.stderr_tail, log)
                _finish(trial, handle, trial_dir, fail=(reason, A.NO_METRIC), extra={A.EXIT_STATUS: 0})
                raise CommandError(reason) from None
            _finish(trial, handle, trial_dir, extra={A.DURATION_S: round(outcome.duration_s, 4), A.VALUE_FROM: f"best of {len(seen)} reports"})
            return value

    return objective


def log_name(number: int) -> str:
    """A command trial's stdout and stderr, in its folder (and the name the dashboard downloads)."""
    return f"trial-{number}.log"


def _missing_metric(metric: str, reported: set[str], stderr_tail: str, log: Path) -> str:
    """The reason of a command that ended well without the study's metric: what it did report
    (with the closest name), its last stderr lines and where its full log is."""
    import difflib

    if reported:
        names = sorted(reported)
        close = difflib.get_close_matches(metric, names, n=1, cutoff=0.6)
        saw = f"it reported {', '.join(names[:20])}" + (f" (did you mean {close[0]}?)" if close else "")
    else:
        saw = (
            f"it reported no metric: print `{metric}=0.93` lines, append JSON lines to $TUNER_METRICS_FILE, "
            f"call tuner.report({metric}=...), or read its own output with --metric-pattern"
        )
    tail = " | ".join(line for line in stderr_tail.splitlines()[-3:] if line.strip())
    said = f"; last stderr lines: {tail[:300]}" if tail else ""
    return f"command exited 0 without reporting {metric}: {saw}{said}; full log: {log}"


def _interpreter_hint(argv: list[str], stderr_tail: str) -> str:
    """A script that cannot import a module while `python` is tuner's own virtual environment's:
    say so, and name the interpreter the script probably meant."""
    import os
    import re
    import shutil
    import sys

    missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", stderr_tail)
    if not missing or not re.fullmatch(r"python[\d.]*", os.path.basename(argv[0])) or sys.prefix == sys.base_prefix:
        return ""
    found = shutil.which(argv[0])
    venv_bin = os.path.abspath(os.path.join(sys.prefix, "bin"))
    if found is None or os.path.dirname(os.path.abspath(found)) != venv_bin:  # a venv's python is a link: compare folders
        return ""
    outside = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d and os.path.abspath(d) != venv_bin)
    other = shutil.which(argv[0], path=outside)
    instead = f" (e.g. {other})" if other else ""
    return (
        f"; `{argv[0]}` here is tuner's own interpreter ({found}), which lacks {missing.group(1).split('.')[0]}: "
        f"start --command with your script's interpreter's full path{instead}, or install the package into tuner's environment"
    )


def _finish(
    trial: optuna.Trial,
    handle: TrialHandle,
    trial_dir: Path,
    *,
    fail: tuple[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """What a command trial records however it ends: its history, its log and the files it left
    in its folder as artifacts (the dashboard links them from the trial's page) and, for a
    failure, the reason and kind."""
    from tuner.errors import TunerError
    from tuner.handle import attach

    attrs: dict[str, Any] = {**handle.history_attrs(), **(extra or {})}
    if fail is not None:
        attrs[A.FAIL_REASON], attrs[A.FAIL_KIND] = fail
    log = trial_dir / log_name(trial.number)
    try:
        if log.is_file():
            attrs[A.LOG_ARTIFACT] = attach(trial, log, DEFAULT_ARTIFACTS, mimetype="text/plain")
    except TunerError as e:  # the trial's result matters more than its log
        attrs[A.LOG_ERROR] = str(e)
    attrs.update(handle.folder_attrs(leave_out=log))
    record(trial, attrs)


def _reason(e: BaseException) -> str:
    """The exception and where in the person's code it was raised (the last frame), one line."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{e.__class__.__name__}: {e}{where}".replace("\n", " ")[:500]
