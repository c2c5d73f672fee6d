"""A study's results for people and scripts: listings, summaries, trial rows, exports."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import attrs as A
from tuner.atomic import atomic_path
from tuner.attrs import fail_reason
from tuner.metrics import feasible
from tuner.storage import mask, open_storage
from tuner.study.lost import running_trials
from tuner.spec import StudySpec
from tuner.stopping import STOPPED_ATTR
from tuner.study.store import SPEC_ATTR, Loaded

if TYPE_CHECKING:
    from tuner.health import Causes

__all__ = ["best_trial", "export_trials", "front", "fail_reason", "health_causes", "judged", "list_studies", "n_trials", "reproduce_command", "study_summary", "trial_dict", "trial_rows", "trials_numbered"]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """Optuna's pick among feasible trials (so reports, `study best` and summaries agree on ties),
    or None if no trial is complete and feasible, or the study has several metrics (see front)."""
    if len(study.directions) > 1:
        return None
    try:
        return study.best_trial
    except ValueError:  # no complete (feasible) trial yet
        return None


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The study's Pareto front: the feasible complete trials no other one dominates (one metric:
    the best trial), ordered by the first metric, best first."""
    if len(study.directions) == 1:
        best = best_trial(study)
        return [best] if best else []
    return trials_numbered(study, [number for number, _ in _front_points(study)[0]])


def trials_numbered(study: optuna.Study, numbers: list[int]) -> list[FrozenTrial]:
    """These trials of the study, in the order of `numbers` (those it has): read alone where
    tuner's SQL runs, not with every other trial."""
    from tuner import sql
    from tuner.storage import sql_rdb

    rdb = sql_rdb(study._storage)
    wanted = set(numbers)
    read = sql.read_trials(rdb, study._study_id, numbers=wanted) if rdb is not None else [t for t in study.get_trials(deepcopy=False) if t.number in wanted]
    by_number = {t.number: t for t in read}
    return [by_number[n] for n in numbers if n in by_number]


def n_trials(study: optuna.Study, *, states: tuple[TrialState, ...] | None = None) -> int:
    """How many trials the study holds (in `states`): counted, not read, where tuner's SQL runs."""
    from tuner import sql
    from tuner.storage import sql_rdb

    rdb = sql_rdb(study._storage)
    return sql.count_trials(rdb, study._study_id, states=states) if rdb is not None else len(study.get_trials(deepcopy=False, states=states))


def _front_points(study: optuna.Study) -> tuple[list[tuple[int, list[float]]], list[list[float]]]:
    """Several metrics: the front's trials as (number, values), ordered as `front` orders them
    (Optuna's best_trials: ties all listed), and the values of every feasible complete trial.
    Where tuner's SQL runs, from the trials' values alone (tuner.sql.complete_values), not from
    every trial read whole (docs/studies.md, "Large studies")."""
    from tuner import sql
    from tuner.metrics import direction_signs, pareto_front
    from tuner.storage import sql_rdb

    signs = direction_signs(study.directions)
    rdb = sql_rdb(study._storage)
    if rdb is None:
        points = [(t.number, list(t.values)) for t in study.best_trials]
        met = [list(t.values) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    else:
        values, missed = sql.complete_values(rdb, study._study_id)
        feasible_ones = [v for t, v in values.items() if t not in missed]  # (number, values)
        met = [v for _, v in feasible_ones]
        on = {tuple(met[i]) for i in pareto_front(met, signs)}
        points = [(n, v) for n, v in feasible_ones if tuple(v) in on]
    return sorted(points, key=lambda p: (-signs[0] * p[1][0], p[0])), met  # the first metric's best first


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    """Each study's name, settings, trial count and best value: from aggregate queries where
    tuner's SQL runs (Optuna's summaries load every trial of every study: minutes at 100,000)."""
    from tuner.storage import sql_rdb

    storage = open_storage(storage_url)
    rdb = sql_rdb(storage)
    rows = []
    for s in _summaries(storage, rdb):
        spec = s.user_attrs.get(SPEC_ATTR, {})
        rows.append(
            {
                "name": s.study_name,
                "direction": ",".join(d.name.lower() for d in s.directions),
                "trials": s.n_trials,
                "best_value": s.best_value if len(s.directions) == 1 else None,
                "sampler": spec.get("sampler"),
                "stopped": (s.user_attrs.get(STOPPED_ATTR) or {}).get("rule"),  # a stopping rule ended it early (tuner.stopping)
                # what its trials run: tuner's loop on a workload, or the person's own code
                "workload": f"objective {spec['objective']}" if spec.get("objective") else "command" if spec.get("command") else spec.get("workload"),
                "budget": spec.get("trials"),
            }
        )
    return rows


@dataclass(frozen=True)
class _Summary:
    study_name: str
    directions: list[Any]
    user_attrs: dict[str, Any]
    n_trials: int
    best_value: float | None


def _summaries(storage: Any, rdb: Any) -> list[_Summary]:
    if rdb is None:
        return [
            _Summary(s.study_name, s.directions, s.user_attrs, s.n_trials, s.best_trial.value if s.best_trial and len(s.directions) == 1 else None)
            for s in optuna.get_all_study_summaries(storage, include_best_trial=True)
        ]
    from tuner import sql

    out = []
    for study in storage.get_all_studies():  # names, directions, attributes: no trials
        one = len(study.directions) == 1
        _, best = sql.progress(rdb, study._study_id, maximize=study.directions[0] == optuna.study.StudyDirection.MAXIMIZE, best=one)
        out.append(_Summary(study.study_name, study.directions, study.user_attrs, sum(sql.count_states(rdb, study._study_id).values()), best))
    return out


# the user attributes a summary reads: a study's trials read whole hold their learning curves too
_SUMMARY_KEYS = (A.HEALTH, A.FAIL_KIND, A.FAIL_REASON, A.PRUNED_KIND, A.PRUNED_REASON, A.RETRY_OF, A.VIOLATED)


def _summary_trials(study: optuna.Study) -> list[FrozenTrial]:
    from tuner import sql
    from tuner.storage import sql_rdb

    rdb = sql_rdb(study._storage)
    if rdb is None:
        return study.get_trials(deepcopy=False)
    return sql.read_trials(rdb, study._study_id, user_keys=_SUMMARY_KEYS, intermediate=False)


def study_summary(loaded: Loaded, storage_url: str) -> dict[str, Any]:
    study = loaded.study
    trials = _summary_trials(study)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    best = best_trial(study)
    objectives = loaded.spec.objectives
    pruned_reasons: dict[str, int] = {}
    failed_reasons: dict[str, int] = {}
    for t in trials:
        if t.state == TrialState.PRUNED:
            kind = A.pruned_kind(t.user_attrs)
            pruned_reasons[kind] = pruned_reasons.get(kind, 0) + 1
        elif t.state == TrialState.FAIL:
            kind = A.fail_kind(t.user_attrs)
            failed_reasons[kind] = failed_reasons.get(kind, 0) + 1
    return {
        "name": loaded.spec.name,
        "storage": mask(storage_url),
        "spec": loaded.spec.as_dict(),
        "direction": loaded.spec.direction,
        "trials": {"total": len(trials), **states},
        "finished": states["complete"] + states["pruned"],
        "pruned_reasons": pruned_reasons,
        "failed_reasons": failed_reasons,
        "retried": sum(A.RETRY_OF in t.user_attrs for t in trials),
        "health": _health_counts(trials),
        "stopped": study.user_attrs.get(STOPPED_ATTR) or None,
        **({"causes": health_causes(trials).to_dict()} if any(A.HEALTH in t.user_attrs for t in trials) else {}),
        "running": running_trials(study),
        "best": trial_dict(best) if best else None,
        "metrics": [{"name": m.name, "direction": m.direction} for m in objectives],
        **({"constraints": _feasibility(loaded, trials)} if loaded.spec.constraints else {}),
        **({"front": front_summary(loaded)} if len(objectives) > 1 else {}),
    }


def _health_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Finished trials by their verdict (tuner.health), the most common first."""
    counts: dict[str, int] = {}
    for t in trials:
        health = t.user_attrs.get(A.HEALTH)
        if t.state.is_finished() and isinstance(health, dict):
            counts[health["verdict"]] = counts.get(health["verdict"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def judged(trials: list[FrozenTrial]) -> list[tuple[dict[str, Any], str]]:
    """(params, verdict) of the complete and pruned trials with a verdict (tuner.health), in
    the order they ran; a failed trial's verdict is about a crash, not its training."""
    return [
        (t.params, t.user_attrs[A.HEALTH]["verdict"])
        for t in sorted(trials, key=lambda t: t.number)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and isinstance(t.user_attrs.get(A.HEALTH), dict)
    ]


def health_causes(trials: list[FrozenTrial]) -> "Causes":
    """Which parameter values go with which verdicts across the study's judged trials (tuner.health.causes)."""
    from tuner.health import causes

    return causes(judged(trials))


def _feasibility(loaded: Loaded, trials: list[FrozenTrial]) -> dict[str, Any]:
    """How many complete trials meet the study's constraints, and how many miss each."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    missed = {c: sum(c in (t.user_attrs.get(A.VIOLATED) or []) for t in complete) for c in loaded.spec.constraints or []}
    return {"bounds": loaded.spec.constraints, "feasible": sum(map(feasible, complete)), "complete": len(complete), "missed": missed}


def front_summary(loaded: Loaded) -> dict[str, Any]:
    """The Pareto front's trials and its hypervolume, normalized: each metric scaled so that the
    reference point (the worst value of each metric among the feasible complete trials) is 0 and
    the ideal point (the best of each) is 1; 1.0 would be one trial best at everything."""
    from tuner.metrics import hypervolume

    objectives = loaded.spec.objectives
    trials, met = _front_points(loaded.study)
    if not trials:
        return {"trials": [], "size": 0, "hypervolume": None, "reference": None, "ideal": None}
    signs = [1.0 if m.direction == "maximize" else -1.0 for m in objectives]
    columns = list(zip(*met))
    reference = [min(c) if s > 0 else max(c) for c, s in zip(columns, signs)]
    ideal = [max(c) if s > 0 else min(c) for c, s in zip(columns, signs)]
    spans = [(i - r) or 1.0 for i, r in zip(ideal, reference)]
    scaled = {tuple((v - r) / span for v, r, span in zip(values, reference, spans)) for _, values in trials}  # ties: one point
    volume = hypervolume([list(p) for p in scaled], [0.0] * len(signs), [1.0] * len(signs))  # scaled: more is better in each
    return {
        "trials": [number for number, _ in trials],
        "size": len(trials),
        "hypervolume": round(volume, 4),
        "reference": dict(zip((m.name for m in objectives), reference)),
        "ideal": dict(zip((m.name for m in objectives), ideal)),
    }


def trial_dict(t: FrozenTrial) -> dict[str, Any]:
    """A trial for people and scripts. With several metrics, `values` holds one per metric (in the
    study's order) and `value` the first; `constraints` their values (at most 0: met), if any."""
    duration = t.duration.total_seconds() if t.duration else None
    values = list(t.values) if t.values is not None else None
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": values[0] if values else None,
        **({"values": values} if values and len(values) > 1 else {}),
        **({"constraints": dict(t.constraints), "feasible": feasible(t)} if t.constraints else {}),
        "params": dict(t.params),
        "duration_s": duration,
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        "user_attrs": dict(t.user_attrs),
        "intermediate_values": {int(k): v for k, v in sorted(t.intermediate_values.items())},
    }


def trial_rows(loaded: Loaded, *, states: tuple[TrialState, ...] | None = None, last: int | None = None) -> list[dict[str, Any]]:
    """The study's trials as rows (trial_dict), or its `last` ones by number: a table of the
    latest trials of a 100,000-trial study reads those alone."""
    if last is None:
        return [trial_dict(t) for t in loaded.study.get_trials(deepcopy=False, states=states)]
    from tuner import sql
    from tuner.storage import sql_rdb

    study = loaded.study
    rdb = sql_rdb(study._storage)
    if rdb is None:
        return [trial_dict(t) for t in study.get_trials(deepcopy=False, states=states)[-last:]] if last else []
    numbers = sql.last_numbers(rdb, study._study_id, last, states=states)
    return [trial_dict(t) for t in sql.read_trials(rdb, study._study_id, numbers=numbers)]


def export_trials(loaded: Loaded, out: Path, *, fmt: str) -> int:
    """Every trial to CSV (one row per trial, params and attributes as columns) or JSON (with
    intermediate values and the study's spec and space). Written atomically."""
    rows = trial_rows(loaded)
    with atomic_path(out, hint="; pass --out with a file path") as tmp:
        if fmt == "json":
            doc = {"study": loaded.spec.as_dict(), "space": loaded.space.to_dict(), "trials": rows}
            tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        else:
            _write_csv(tmp, rows, [m.name for m in loaded.spec.objectives])
    return len(rows)


def _write_csv(path: Path, rows: list[dict[str, Any]], metrics: list[str]) -> None:
    """One row per trial: its fields (with several metrics, values_NAME for each), then params_*
    and user_attrs_* columns."""
    param_names = sorted({k for r in rows for k in r["params"]})
    attr_names = sorted({k for r in rows for k in r["user_attrs"]})
    metric_columns = [f"values_{m}" for m in metrics] if len(metrics) > 1 else []
    feasible = ["feasible"] if any("feasible" in r for r in rows) else []  # a study with constraints
    header = ["number", "state", "value", *metric_columns, *feasible, "duration_s", "datetime_start", "datetime_complete"]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header + [f"params_{p}" for p in param_names] + [f"user_attrs_{a}" for a in attr_names])
        for r in rows:
            values = dict(zip(metric_columns, r.get("values") or [None] * len(metric_columns)))
            w.writerow(
                [values[h] if h in values else r.get(h, "") for h in header]
                + [_cell(r["params"].get(p, "")) for p in param_names]
                + [_cell(r["user_attrs"].get(a, "")) for a in attr_names]
            )


def _cell(value: Any) -> Any:
    """A CSV cell: nested values (histories, gradient norms, the worker) as JSON, which any
    spreadsheet or script reads back; not Python's repr."""
    return json.dumps(value, default=str) if isinstance(value, (dict, list, tuple)) else value


def reproduce_command(spec: StudySpec, attrs: dict[str, Any]) -> dict[str, str] | None:
    """For a command study: the exact command line a trial ran, where (cwd), and a note on what
    else it saw (threads, the seed in its environment); None for other studies."""
    command = attrs.get(A.COMMAND)
    if not spec.command or not command:
        return None
    out = {"command": command, "cwd": str(attrs.get(A.CWD, "."))}
    notes = []
    if attrs.get(A.THREADS):
        notes.append(f"it ran with OMP_NUM_THREADS={attrs[A.THREADS]}: another thread count may change the last digits")
    if "{seed}" not in spec.command:
        notes.append(f"its environment also had TUNER_SEED={attrs.get(A.SEED)} and TUNER_PARAMS, if your script reads them")
    if notes:
        out["note"] = "(" + "; ".join(notes) + ")"
    return out
