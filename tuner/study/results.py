"""A study's results for people and scripts: listings, summaries, trial rows, exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import attrs as A
from tuner.atomic import atomic_path
from tuner.attrs import fail_reason
from tuner.storage import mask, open_storage
from tuner.study.lost import running_trials
from tuner.spec import StudySpec
from tuner.study.store import SPEC_ATTR, Loaded

__all__ = ["best_trial", "export_trials", "fail_reason", "list_studies", "reproduce_command", "study_summary", "trial_dict", "trial_rows"]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """Optuna's pick (so reports, `study best` and summaries agree on ties), or None if no trial is complete."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    storage = open_storage(storage_url)
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        spec = s.user_attrs.get(SPEC_ATTR, {})
        rows.append(
            {
                "name": s.study_name,
                "direction": s.direction.name.lower(),
                "trials": s.n_trials,
                "best_value": s.best_trial.value if s.best_trial else None,
                "sampler": spec.get("sampler"),
                # what its trials run: tuner's loop on a workload, or the person's own code
                "workload": f"objective {spec['objective']}" if spec.get("objective") else "command" if spec.get("command") else spec.get("workload"),
                "budget": spec.get("trials"),
            }
        )
    return rows


def study_summary(loaded: Loaded, storage_url: str) -> dict[str, Any]:
    study = loaded.study
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    best = best_trial(study)
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
        "running": running_trials(study),
        "best": trial_dict(best) if best else None,
    }


def trial_dict(t: FrozenTrial) -> dict[str, Any]:
    duration = t.duration.total_seconds() if t.duration else None
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": t.value,
        "params": dict(t.params),
        "duration_s": duration,
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        "user_attrs": dict(t.user_attrs),
        "intermediate_values": {int(k): v for k, v in sorted(t.intermediate_values.items())},
    }


def trial_rows(loaded: Loaded, *, states: tuple[TrialState, ...] | None = None) -> list[dict[str, Any]]:
    return [trial_dict(t) for t in loaded.study.get_trials(deepcopy=False, states=states)]


def export_trials(loaded: Loaded, out: Path, *, fmt: str) -> int:
    """Every trial to CSV (one row per trial, params and attributes as columns) or JSON (with
    intermediate values and the study's spec and space). Written atomically."""
    rows = trial_rows(loaded)
    with atomic_path(out, hint="; pass --out with a file path") as tmp:
        if fmt == "json":
            doc = {"study": loaded.spec.as_dict(), "space": loaded.space.to_dict(), "trials": rows}
            tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        else:
            _write_csv(tmp, rows)
    return len(rows)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per trial: its fields, then params_* and user_attrs_* columns."""
    param_names = sorted({k for r in rows for k in r["params"]})
    attr_names = sorted({k for r in rows for k in r["user_attrs"]})
    header = ["number", "state", "value", "duration_s", "datetime_start", "datetime_complete"]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header + [f"params_{p}" for p in param_names] + [f"user_attrs_{a}" for a in attr_names])
        for r in rows:
            w.writerow(
                [r[h] for h in header]
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
