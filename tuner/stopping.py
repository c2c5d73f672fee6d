"""When a study stops before its budget: a goal reached (`--goal`), no improvement in its last
N finished trials (`--patience`, with `--min-delta`), or its wall time spent (`--max-time`).

The rules are stored with the study (its spec). Every worker checks them under the study lock
before it claims a trial, so one decides and the others, at their next claim, see the same
trials and stop too: each after its current trial. The budget still ends the study exactly where
it comes first. The reason is recorded on the study (STOPPED_ATTR) for `study show` and `list`.
This module imports no torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

from optuna.trial import FrozenTrial, TrialState

from tuner.errors import SpecError
from tuner.metrics import Metric, feasible, hypervolume, pareto_front

__all__ = ["GO_ON", "STOPPED_ATTR", "Stopping", "from_spec", "parse_duration", "said", "show_duration", "wall_seconds"]

STOPPED_ATTR = "tuner:stopped"  # on the study: {"rule", "reason", "n_finished"} of the rule that stopped it, None once it goes on
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str | float | int, *, what: str = "max_time") -> float:
    """Seconds from "90", "90s", "15m", "2h", "1h30m" or "1d" (`what` names the setting in errors)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text).strip().lower()) if str(text).strip() else None
        if match is None or not any(match.groups()):
            raise SpecError(f"{what} {text!r} is not a duration; write it like 90s, 15m, 2h or 1h30m")
        seconds = sum(float(v) * unit for v, unit in zip(match.groups(), (86400, 3600, 60, 1)) if v)
    if not math.isfinite(seconds) or seconds <= 0:
        raise SpecError(f"{what} must be above 0, got {text!r}")
    return seconds


def show_duration(seconds: float) -> str:
    """90 -> "1m30s", 7200 -> "2h"."""
    left, parts = int(round(seconds)), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts)


@dataclass(frozen=True)
class Stopping:
    """A study's stopping rules (each None: off)."""

    objectives: tuple[Metric, ...]
    patience: int | None = None  # finished trials without an improvement that stop it
    min_delta: float = 0.0  # what counts as an improvement: the best value (several metrics: the normalized hypervolume) moving by more than this
    goal: float | None = None  # stop once a complete, feasible trial's value reaches this (one metric)
    max_time_s: float | None = None  # seconds of the study's wall time, across its runs, that stop it

    @property
    def any(self) -> bool:
        return self.patience is not None or self.goal is not None or self.max_time_s is not None

    def decide(self, trials: Sequence[FrozenTrial], *, now: datetime | None = None) -> tuple[str, str] | None:
        """(rule, reason in words) if a rule says the study is done, else None."""
        if self.goal is not None:
            reached = self._goal_reached(trials)
            if reached:
                return "goal", reached
        if self.max_time_s is not None:
            spent = wall_seconds(trials, now=now)
            if spent >= self.max_time_s:
                return "max_time", f"its trials have run for {show_duration(spent)} of wall time, --max-time {show_duration(self.max_time_s)}"
        if self.patience is not None:
            stalled = self._plateau(trials)
            if stalled:
                return "patience", stalled
        return None

    def _goal_reached(self, trials: Sequence[FrozenTrial]) -> str | None:
        metric = self.objectives[0]
        sign = 1.0 if metric.direction == "maximize" else -1.0
        met = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and feasible(t) and sign * (t.value - self.goal) >= 0]  # type: ignore[operator]
        if not met:
            return None
        first = min(met, key=lambda t: (t.datetime_complete or datetime.max, t.number))  # the first to reach it, in time
        return f"trial {first.number} reached {metric.name} {first.value:.6g}, the goal {'>=' if sign > 0 else '<='} {self.goal:g}"

    def _plateau(self, trials: Sequence[FrozenTrial]) -> str | None:
        """Whether the last `patience` finished trials (complete or pruned, in the order they
        finished) did not improve the study's best by more than min_delta."""
        finished = sorted(
            (t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
            key=lambda t: (t.datetime_complete or datetime.max, t.number),
        )
        if len(finished) < (self.patience or 0):
            return None
        scores = self._progress(finished)
        best, since = -math.inf, 0
        for i, score in enumerate(scores):
            if score is not None and score > best + self.min_delta:
                best, since = score, i
        idle = len(finished) - 1 - since
        if best == -math.inf or idle < (self.patience or 0):
            return None
        what = "the hypervolume of the Pareto front" if len(self.objectives) > 1 else f"the best {self.objectives[0].name}"
        shown = f"{best:.6g}" if len(self.objectives) > 1 else f"{best * (1 if self.objectives[0].direction == 'maximize' else -1):.6g}"
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return f"{what} ({shown}, at trial {finished[since].number}) did not improve{by} in the last {idle} finished trials, --patience {self.patience}"

    def _progress(self, finished: list[FrozenTrial]) -> list[float | None]:
        """After each finished trial, the study's best so far as a number to maximize: the best
        value (negated when minimized), or with several metrics the hypervolume of the feasible
        front so far, normalized by the box between the worst and best values of all the trials."""
        signs = [1.0 if m.direction == "maximize" else -1.0 for m in self.objectives]
        usable = [t for t in finished if t.state == TrialState.COMPLETE and t.values is not None and feasible(t) and all(math.isfinite(v) for v in t.values)]
        if len(self.objectives) == 1:
            out: list[float | None] = []
            best: float | None = None
            ok = {t.number for t in usable}
            for t in finished:
                if t.number in ok:
                    score = signs[0] * t.values[0]
                    best = score if best is None else max(best, score)
                out.append(best)
            return out
        if not usable:
            return [None] * len(finished)
        columns = list(zip(*(t.values for t in usable)))
        reference = [min(c) if s > 0 else max(c) for c, s in zip(columns, signs)]
        ideal = [max(c) if s > 0 else min(c) for c, s in zip(columns, signs)]
        box = math.prod(abs(i - r) or 1.0 for i, r in zip(ideal, reference))
        out, points = [], []
        ok = {t.number for t in usable}
        for t in finished:
            if t.number in ok:
                points.append(list(t.values))
                points = [points[i] for i in pareto_front(points, signs)]
            out.append(hypervolume(points, reference, signs) / box if points else None)
        return out


def wall_seconds(trials: Sequence[FrozenTrial], *, now: datetime | None = None) -> float:
    """The study's wall time across its runs: the length of the union of its trials' spans, from
    start to end (a running trial's to now). The time between runs, when nothing ran, is not
    counted; several workers' overlapping trials count once."""
    spans = sorted(
        (t.datetime_start, t.datetime_complete or now or datetime.now())
        for t in trials
        if t.datetime_start is not None and (t.datetime_complete is not None or t.state == TrialState.RUNNING)
    )
    total, end = 0.0, None
    for start, stop in spans:
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total


def from_spec(spec: Any) -> Stopping:
    return Stopping(
        objectives=spec.objectives,
        patience=spec.patience or None,
        min_delta=spec.min_delta or 0.0,
        goal=spec.goal,
        max_time_s=parse_duration(spec.max_time) if spec.max_time is not None else None,
    )


def said(record: Any) -> str | None:
    """A study's STOPPED_ATTR in words: "stopped (goal): trial 12 reached ..."; None if it has none."""
    if not isinstance(record, dict) or not record.get("rule"):
        return None
    return f"stopped early ({record['rule']}) after {record.get('n_finished', '?')} finished trials: {record.get('reason', '')}"


GO_ON = {  # how to go on after each rule stopped a study
    "goal": "raise --goal, or drop it with --goal none",
    "patience": "raise --patience, or turn it off with --patience 0",
    "max_time": "raise --max-time, or drop it with --max-time none",
}
