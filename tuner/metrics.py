"""A study's objectives: the metrics it optimizes, each with its direction, and the constraints its
trials must meet; with the arithmetic of trade-offs (dominance, the Pareto front, hypervolume).

    --metric val_accuracy --metric params:minimize --constraint "latency_ms<=2"

One metric is a single-objective study exactly as before (one direction, Optuna's best trial). With
several, Optuna stores a value per metric, the sampler models all of them (NSGA-II by default) and
the result is a front of trials none of which is better in every metric than another. This module
imports neither torch nor Optuna: specs and the CLI check objectives without loading them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuner.errors import SpecError
from tuner.params import METRICS as VALIDATION
from tuner.patterns import METRIC_NAME

__all__ = [
    "MEASURES",
    "RECORDED",
    "VALIDATION",
    "Constraint",
    "Metric",
    "direction_signs",
    "dominates",
    "feasible",
    "hypervolume",
    "pareto_front",
    "parse_constraint",
    "parse_metric",
]

DIRECTIONS = ("maximize", "minimize")
# Metrics tuner's loop measures on every trial, with the direction that makes each better.
# VALIDATION metrics (tuner.params.METRICS) change every epoch, and the first one a study names
# picks each trial's best epoch.
# What a model costs, also measured on every trial (tuner.epochs): its trainable parameters, the
# seconds its training took (an epoch's training and evaluation, not the study's storage), and
# its inference latency (median of LATENCY_REPEATS forward passes on one validation batch).
MEASURES = {"params": "minimize", "train_seconds": "minimize", "latency_ms": "minimize"}
# Everything tuner's loop records at each epoch that a constraint may bound.
RECORDED = (*VALIDATION, *MEASURES, "train_loss", "train_accuracy")


@dataclass(frozen=True)
class Metric:
    """One objective: a metric's name and whether more or less is better."""

    name: str
    direction: str  # maximize | minimize

    @property
    def sign(self) -> float:
        """+1 where more is better: sign * value is larger for the better of two values."""
        return 1.0 if self.direction == "maximize" else -1.0

    def text(self) -> str:
        return f"{self.name}:{self.direction}"


def parse_metric(text: str) -> tuple[str, str | None]:
    """`--metric NAME[:DIRECTION]` as (name, direction or None)."""
    if not isinstance(text, str):
        raise SpecError(f"metric must be text like val_accuracy or params:minimize, got {text!r}"[:300])
    name, _, direction = text.strip().partition(":")
    if not METRIC_NAME.fullmatch(name):
        raise SpecError(f"metric {text!r} must be a name like val_accuracy or test-loss (a letter, then letters, digits, '_', '.', '-', '/'), optionally :maximize or :minimize")
    if direction and direction not in DIRECTIONS:
        raise SpecError(f"metric {text!r}: the direction after ':' must be maximize or minimize, got {direction!r}")
    return name, direction or None


@dataclass(frozen=True)
class Constraint:
    """A bound a trial's metric must meet to be feasible: `params<=50000`, `val_accuracy>=0.9`.
    Infeasible trials stay in the study (the sampler learns from them) but are never its best nor
    on its front."""

    metric: str
    op: str  # <= | >=
    bound: float

    def violation(self, value: float) -> float:
        """Optuna's constraint value: at most 0 when met, else by how much it is missed."""
        return value - self.bound if self.op == "<=" else self.bound - value

    def text(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


_CONSTRAINT = re.compile(rf"\s*({METRIC_NAME.pattern})\s*(<=|>=)\s*(\S+)\s*")


def parse_constraint(text: str) -> Constraint:
    """`--constraint "params<=50000"` (or >=), on any metric the trials record."""
    match = _CONSTRAINT.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise SpecError(f"constraint {text!r} must read METRIC<=NUMBER or METRIC>=NUMBER, e.g. \"params<=50000\" or \"latency_ms<=2\""[:300])
    metric, op, number = match.groups()
    try:
        bound = float(number)
    except ValueError:
        raise SpecError(f"constraint {text!r}: {number!r} is not a number") from None
    if not math.isfinite(bound):
        raise SpecError(f"constraint {text!r}: the bound must be a finite number")
    return Constraint(metric, op, bound)


# --- trade-offs ---------------------------------------------------------------------------------


def feasible(trial: Any) -> bool:
    """Whether a trial meets its study's constraints: Optuna's rule, every constraint value at most
    0 (a trial of a study without constraints has none to miss)."""
    return all(c <= 0 for c in trial.constraints.values())


def direction_signs(directions: Sequence[Any]) -> list[float]:
    """+1 for each of a study's directions (Optuna's StudyDirection) to maximize, -1 to minimize."""
    return [1.0 if d.name == "MAXIMIZE" else -1.0 for d in directions]


def dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float], margins: Sequence[float] | None = None) -> bool:
    """Whether `a` is at least as good as `b` in every metric and better in one (signs: +1 where
    more is better); with `margins`, better in one by more than that metric's margin."""
    better = False
    for i, (x, y, s) in enumerate(zip(a, b, signs)):
        if s * x < s * y:
            return False
        better = better or s * (x - y) > (margins[i] if margins is not None else 0.0)
    return better


def pareto_front(points: Sequence[Sequence[float]], signs: Sequence[float]) -> list[int]:
    """The indexes of the points no other point dominates (of equal points, the first), in order.

    The points are visited best first (lexicographically, ties in their order): a point that
    dominates another, or equals it and comes first, is visited before it. So a point is on the
    front unless a front point met earlier is at least as good in every metric, and each point is
    held against the front only, not against every other point (what made it quadratic)."""
    import numpy as np

    if not len(points):
        return []
    signed = np.asarray(points, dtype=float) * np.asarray(signs, dtype=float)
    order = np.lexsort(tuple(-signed[:, k] for k in reversed(range(signed.shape[1]))))  # stable: ties keep their order
    if signed.shape[1] == 1:
        return [int(order[0])]
    if signed.shape[1] == 2:  # in that order, a point is on the front when its second metric beats every point's before it
        second = signed[order, 1]
        on = np.empty(len(second), dtype=bool)
        on[0] = True  # the best in the first metric, whatever its second (-inf included)
        on[1:] = second[1:] > np.maximum.accumulate(second)[:-1]
        return sorted(int(i) for i in order[on])
    front = np.empty((0, signed.shape[1]))
    kept: list[int] = []
    for i in order:
        if not np.any(np.all(front >= signed[i], axis=1)):
            front = np.vstack([front, signed[i]])
            kept.append(int(i))
    return sorted(kept)


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float], signs: Sequence[float]) -> float:
    """The volume the points dominate, bounded by `reference` (a point worse than all of them in
    every metric): the larger, the better the front. Computed exactly, by slicing along the first
    metric (fronts of tens to hundreds of trials); points not better than the reference in every
    metric add nothing."""
    # as losses to minimize, measured from the reference: each point spans the box [p, 0]
    losses = [[-s * (x - r) for x, r, s in zip(p, reference, signs)] for p in points]
    losses = [p for p in losses if all(v < 0 for v in p)]
    return _volume([[-v for v in p] for p in losses])


def _volume(boxes: list[list[float]]) -> float:
    """The volume of the union of boxes [0, b] (every b_i > 0)."""
    if not boxes:
        return 0.0
    if len(boxes[0]) == 1:
        return max(b[0] for b in boxes)
    # slices along the first axis: between consecutive edges, the union of the boxes that reach past
    edges = sorted({b[0] for b in boxes}, reverse=True)
    total, previous = 0.0, 0.0
    for edge in sorted(edges):
        reaching = [b[1:] for b in boxes if b[0] >= edge]
        total += (edge - previous) * _volume(_nondominated(reaching))
        previous = edge
    return total


def _nondominated(boxes: list[list[float]]) -> list[list[float]]:
    """Boxes not inside another (they add nothing to a union)."""
    kept: list[list[float]] = []
    for b in sorted(boxes, key=lambda b: [-v for v in b]):
        if not any(all(x >= y for x, y in zip(k, b)) for k in kept):
            kept.append(b)
    return kept
