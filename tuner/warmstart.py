"""Warm starts: a new study begins with the best configurations of an earlier one.

`--warm-start STUDY[:K]` queues the K best finished configurations of STUDY (K=10; with several
metrics, its Pareto front) as the new study's first trials, each mapped onto the new space: a
parameter the new space lacks is dropped, one it adds is left to the sampler, a number outside
the new bounds is clipped (an int rounded, a step kept), a categorical value the new space lacks
skips the configuration. Each queued trial records where it came from and what changed
(attrs.WARM_START). The earlier study may train another workload or script: that is the transfer.
Everything is checked before the new study is written. This module imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import SpecError
from tuner.metrics import direction_signs, feasible

__all__ = ["DEFAULT_K", "WarmStart", "parse_warm_start", "plan"]

DEFAULT_K = 10  # configurations taken from the earlier study when --warm-start names no K


def parse_warm_start(text: str) -> tuple[str, int]:
    """STUDY or STUDY:K."""
    name, sep, k = str(text).rpartition(":") if ":" in str(text) else (str(text), "", "")
    if not sep:
        name, k = str(text), ""
    if not name:
        raise SpecError(f"--warm-start {text!r}: give the earlier study's name, and the number of its best trials to start from: NAME or NAME:K")
    if k == "":
        return name, DEFAULT_K
    if not k.isdigit() or int(k) < 1:
        raise SpecError(f"--warm-start {text!r}: K must be a number of trials, 1 or more (NAME:K; {DEFAULT_K} by default)")
    return name, int(k)


def _grid_done(name: str, source: optuna.Study, where: str, *, space: Any, workload: str | None) -> WarmStart:
    """A grid study warm-started from a study of the same space and workload: the points that
    study finished (complete or pruned) are copied over as finished, with their results, and not
    run again; the rest are queued as usual."""
    from tuner.attrs import SPACE_ATTR, SPEC_ATTR

    theirs = source.user_attrs.get(SPEC_ATTR) or {}
    if source.user_attrs.get(SPACE_ATTR) != space.to_dict() or theirs.get("workload") != workload:
        raise SpecError(
            f"--warm-start {name} with a grid: only points already run on the same space and workload can be skipped, and '{name}' "
            f"ran {theirs.get('space', '?')} on {theirs.get('workload', '?')}; drop --warm-start, or use another sampler to start from its best"
        )
    points = space.grid()
    warm = WarmStart(name, where)
    for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.params in points and not any(t.params == done.params for done in warm.done):
            warm.done.append(t)
    return warm


@dataclass
class WarmStart:
    """What a warm start queues in the new study, and what it left out, with why."""

    study: str  # the earlier study
    storage: str  # where it is (masked)
    queued: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (params, the record on the trial)
    skipped: list[str] = field(default_factory=list)  # "trial 7: activation=sigmoid is not a choice here"
    done: list[FrozenTrial] = field(default_factory=list)  # a grid study's points the earlier study finished, taken over as they are

    def record(self) -> dict[str, Any]:
        """What the new study keeps of its warm start (attrs.WARM_START on the study)."""
        return {"study": self.study, "storage": self.storage, "queued": len(self.queued), "skipped": self.skipped, **({"grid_done": len(self.done)} if self.done else {})}

    def enqueue(self, study: optuna.Study) -> None:
        from tuner import attrs as A

        for params, record in self.queued:
            study.enqueue_trial(params, user_attrs={A.WARM_START: record})
        for t in self.done:  # finished already: stored as the new study's, saying where from
            study.add_trial(optuna.trial.create_trial(
                state=t.state, values=t.values, params=t.params, distributions=t.distributions,
                user_attrs={**t.user_attrs, A.WARM_START: {"study": self.study, "trial": t.number, "changes": [], "grid": True}},
                intermediate_values=t.intermediate_values,
            ))  # fmt: skip
        study.set_user_attr(A.WARM_START, self.record())

    def skip_points(self, grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The grid points still to run."""
        done = [t.params for t in self.done]
        return [p for p in grid if p not in done]


def _best(source: optuna.Study, k: int) -> list[FrozenTrial]:
    """The earlier study's K best complete, feasible trials (several metrics: its Pareto front,
    the first metric's best first)."""
    complete = [t for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values and feasible(t) and all(math.isfinite(v) for v in t.values)]
    signs = direction_signs(source.directions)
    if len(signs) > 1:
        from tuner.metrics import pareto_front

        on_front = [complete[i] for i in pareto_front([t.values for t in complete], signs)]
        return sorted(on_front, key=lambda t: (-signs[0] * t.values[0], t.number))[:k]
    return sorted(complete, key=lambda t: (-signs[0] * t.values[0], t.number))[:k]


def _map(trial: FrozenTrial, space: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """A configuration mapped onto the new space: the parameters to fix and what changed, or None
    (with why) when a value cannot be taken over."""
    given = dict(trial.params)
    values: dict[str, Any] = dict(space.fixed())
    fixed_now: dict[str, Any] = {}
    changes: list[str] = []
    for name, p in space.params.items():
        if p.type == "fixed" or not p.is_active(values):
            continue
        if name not in given:
            changes.append(f"{name} sampled")  # the earlier study did not have it
            continue
        v = given[name]
        if p.type == "categorical":
            if v not in p.choices:
                return None, [f"{name}={v!r} is not one of the new space's choices ({', '.join(map(str, p.choices))})"]
            chosen = v
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return None, [f"{name}={v!r} is not a number, as the new space's {name} is"]
            chosen = min(max(float(v), float(p.low)), float(p.high))
            if p.step:
                chosen = float(p.low) + round((chosen - float(p.low)) / float(p.step)) * float(p.step)
                chosen = min(chosen, float(p.high))
            if p.type == "int":
                chosen = int(round(chosen))
            if chosen != v:
                changes.append(f"{name} {v:.3g}->{chosen:.3g}")  # clipped to the new bounds, or onto its step
        values[name] = fixed_now[name] = chosen
    dropped = sorted(set(given) - set(fixed_now) - {n for n, p in space.params.items() if p.type != "fixed" and p.is_active(values)})
    changes += [f"{name} dropped" for name in dropped]  # the new space does not have it
    return fixed_now, changes


def plan(name: str, k: int, *, storage_url: str, space: Any, budget: int, sampler: str, workload: str | None = None) -> WarmStart:
    """Read the earlier study and map its best configurations onto `space`: what the new study
    will queue. A grid study instead takes over the grid points the earlier one finished
    (_grid_done). Raises SpecError (nothing written) when it cannot warm-start from it."""
    from tuner.storage import open_storage
    from tuner.urls import mask

    names = optuna.get_all_study_names(open_storage(storage_url))
    if name not in names:
        raise SpecError(f"--warm-start {name}: no study '{name}' in {mask(storage_url)} (studies there: {', '.join(names[:10]) or 'none'}; another database: --warm-start-storage URL)")
    source = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    if sampler == "grid":
        return _grid_done(name, source, mask(storage_url), space=space, workload=workload)
    best = _best(source, k)
    if not best:
        raise SpecError(f"--warm-start {name}: study '{name}' has no complete trial to start from")
    sampled = {n for n, p in space.params.items() if p.type != "fixed"}
    if not sampled & {n for t in best for n in t.params}:
        raise SpecError(
            f"--warm-start {name}: its trials share no parameter with the new space (they set {', '.join(sorted({n for t in best for n in t.params}))}; "
            f"it samples {', '.join(sorted(sampled)) or 'nothing'}): nothing to start from"
        )
    warm = WarmStart(name, mask(storage_url))
    seen: list[dict[str, Any]] = []
    for t in best:
        params, changes = _map(t, space)
        if params is None:
            warm.skipped.append(f"trial {t.number}: {changes[0]}")
            continue
        if params in seen:
            warm.skipped.append(f"trial {t.number}: the same configuration as one queued already, once mapped")
            continue
        if len(warm.queued) >= budget:
            warm.skipped.append(f"trial {t.number}: the new study's budget ({budget}) is full")
            continue
        seen.append(params)
        value = list(t.values) if len(t.values) > 1 else t.values[0]
        warm.queued.append((params, {"study": name, "trial": t.number, "value": value, "changes": changes}))
    if not warm.queued:
        raise SpecError(f"--warm-start {name}: none of its {len(best)} best configurations fits the new space ({warm.skipped[0]})")
    return warm
