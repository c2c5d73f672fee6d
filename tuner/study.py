"""Studies: create, run, resume, inspect; and the objective that joins a trial to the training loop.

A tuner study is a plain Optuna RDB study. What tuner needs to run it again, from any machine, is
stored with it as study user attributes: the spec ("tuner.spec") and the whole search space
("tuner.space"), so a resume never depends on files that may have changed since.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import DivergedError, SpecError, StorageError, TunerError
from tuner.params import TrainConfig
from tuner.samplers import make_pruner, make_sampler
from tuner.space import SPACES_DIR, Space, load_space, parse_space
from tuner.spec import RUN_OPTIONS, StudySpec
from tuner.storage import mask, open_storage
from tuner.workloads import WorkloadRef, load_workload, parse_workload

__all__ = [
    "RunResult",
    "create_study",
    "delete_study",
    "export_trials",
    "list_studies",
    "open_study",
    "run_study",
    "study_summary",
    "trial_rows",
]

SPEC_ATTR = "tuner.spec"
SPACE_ATTR = "tuner.space"
DEFAULT_TRIALS = 30
MAX_CONSECUTIVE_FAILURES = 5  # identical failures in a row stop the study instead of burning its budget
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Loaded:
    """A study as stored: the Optuna study and what tuner created it with."""

    study: optuna.Study
    spec: StudySpec
    space: Space

    @property
    def workload(self) -> WorkloadRef:
        return parse_workload(self.spec.workload, target=self.spec.target)


@dataclass
class RunResult:
    name: str
    budget: int
    n_finished: int
    n_complete: int
    n_pruned: int
    n_failed: int
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    elapsed_s: float
    stopped: str  # budget | grid_exhausted | timeout
    ran: int  # trials this invocation ran
    failures: list[str] = field(default_factory=list)


def _quiet_optuna() -> None:
    # Optuna logs each failed trial with its traceback; tuner records the reason on the trial instead.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").propagate = False


# ---------------------------------------------------------------------------------------------
# create and open


def check_workload(spec: StudySpec, space: Space) -> WorkloadRef:
    """Load the data once before anything is written: a CSV without its target column, a module
    that does not import, or a metric that does not fit the task fails here, not in trial 0."""
    wref = parse_workload(spec.workload, target=spec.target)
    config = {**TrainConfig().as_dict(), **space.fixed()}
    data, _ = load_workload(wref, seed=spec.seed, val_fraction=spec.val_fraction, config=config)
    if spec.metric == "val_accuracy" and data.task != "classification":
        raise SpecError(f"metric val_accuracy needs a classification target, but {wref.describe()} is a regression; use --metric val_rmse")
    cnn = space.params.get("model")
    if cnn is not None and "cnn" in (cnn.choices or (cnn.value,)) and data.image_shape is None:
        raise SpecError(f"space '{space.name}' can pick model=cnn, but {wref.describe()} is not image data; drop cnn from `model`")
    return wref


def create_study(spec: StudySpec, storage_url: str, *, spaces_dir: Path = SPACES_DIR) -> Loaded:
    """Validate everything, then create the study; nothing is written when any check fails."""
    space = load_space(spec.space, spaces_dir=spaces_dir)
    grid: list[dict[str, Any]] = []
    if spec.sampler == "grid":
        problem = space.grid_problem()
        if problem:
            raise SpecError(f"grid search: {problem}")
        grid = space.grid()
    check_workload(spec, space)
    budget = spec.trials or (len(grid) if grid else DEFAULT_TRIALS)
    spec = StudySpec(**{**spec.as_dict(), "trials": budget})

    _quiet_optuna()
    storage = open_storage(storage_url, create=True)
    if spec.name in optuna.get_all_study_names(storage):
        raise SpecError(f"study '{spec.name}' already exists in {mask(storage_url)}; `tuner study run {spec.name}` continues it")
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        direction=spec.direction,
        sampler=make_sampler(spec.sampler, spec.seed),
        pruner=make_pruner(spec.pruner),
    )
    study.set_user_attr(SPEC_ATTR, spec.as_dict())
    study.set_user_attr(SPACE_ATTR, space.to_dict())
    for point in grid:
        study.enqueue_trial(point, skip_if_exists=True)
    return Loaded(study, spec, space)


def open_study(name: str, storage_url: str, *, seed_offset: int = 0) -> Loaded:
    _quiet_optuna()
    storage = open_storage(storage_url)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(names[:10]) or "none"
        raise StorageError(f"no study '{name}' in {mask(storage_url)}; studies there: {known}")
    bare = optuna.load_study(study_name=name, storage=storage)
    attrs = bare.user_attrs
    if SPEC_ATTR not in attrs or SPACE_ATTR not in attrs:
        raise SpecError(f"study '{name}' was not created by tuner (no {SPEC_ATTR} attribute); inspect it with optuna-dashboard")
    spec = StudySpec.from_dict(attrs[SPEC_ATTR], source=f"study '{name}'")
    space = parse_space(attrs[SPACE_ATTR], name=Path(spec.space).stem, source=f"study '{name}' (stored space)")
    # The sampler is rebuilt from the stored spec. Its seed moves on with the study's size so that
    # a resumed run does not replay the random start-up points of the first run.
    n_existing = len(bare.get_trials(deepcopy=False))
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec.sampler, spec.seed + n_existing + seed_offset),
        pruner=make_pruner(spec.pruner),
    )
    return Loaded(study, spec, space)


def reconcile(loaded: Loaded, given: dict[str, Any], *, spaces_dir: Path = SPACES_DIR) -> StudySpec:
    """Options given to `run` for an existing study must agree with what it was created with."""
    stored = loaded.spec
    for key, value in given.items():
        if value is None or key in RUN_OPTIONS or key == "name":
            continue
        if key == "space":
            if load_space(value, spaces_dir=spaces_dir).to_dict() != loaded.space.to_dict():
                raise SpecError(
                    f"study '{stored.name}' was created with a different search space than {value}; "
                    "drop --space to resume with the stored one, or start a new study"
                )
            continue
        if value != getattr(stored, key):
            flag = "--" + key.replace("_", "-")
            raise SpecError(
                f"study '{stored.name}' was created with {key}={getattr(stored, key)!r}, not {value!r}; "
                f"drop {flag} to continue it, or start a new study name"
            )
    trials = given.get("trials")
    return StudySpec(**{**stored.as_dict(), "trials": trials or stored.trials})


# ---------------------------------------------------------------------------------------------
# run


def _count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def make_objective(loaded: Loaded, device: Any) -> Callable[[optuna.Trial], float]:
    from tuner.train import train

    spec, space, wref = loaded.spec, loaded.space, loaded.workload

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        seed = spec.seed + trial.number
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("device", str(device))

        def report(epoch: Any) -> None:
            trial.report(epoch.metric, epoch.epoch)
            if trial.should_prune():
                reason = f"{spec.pruner} pruner at epoch {epoch.epoch}: {spec.metric}={epoch.metric:.4f}"
                trial.set_user_attr("pruned_reason", reason)
                trial.set_user_attr("epochs_run", epoch.epoch)
                raise optuna.TrialPruned(reason)

        try:
            data, model = load_workload(wref, seed=spec.seed, val_fraction=spec.val_fraction, config=params)
            result = train(
                TrainConfig.from_params(params), data, metric=spec.metric, device=device, seed=seed, model=model, on_epoch=report
            )
        except DivergedError as e:
            # Divergence is a verdict on the configuration, not a crash: pruned, with the reason.
            trial.set_user_attr("pruned_reason", str(e))
            trial.set_user_attr("epochs_run", e.epoch)
            raise optuna.TrialPruned(str(e)) from None
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{e.__class__.__name__}: {e}"[:500])
            raise
        last = result.last
        trial.set_user_attr("duration_s", round(result.duration_s, 4))
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("stopped", result.stopped)
        trial.set_user_attr("train_loss", last.train_loss)
        trial.set_user_attr("val_loss", last.val_loss)
        if last.val_accuracy is not None:
            trial.set_user_attr("val_accuracy", last.val_accuracy)
        return result.value

    return objective


def run_study(
    loaded: Loaded,
    *,
    device: str = "auto",
    timeout: float | None = None,
    on_trial: Callable[[FrozenTrial, int, int, float | None], None] | None = None,
) -> RunResult:
    """Run until the study holds `spec.trials` finished trials (all runs together), the grid is
    exhausted, or the timeout passes. Failed trials do not count toward the budget; a run of
    identical failures stops the study with the reason."""
    from tuner.train import resolve_device

    _quiet_optuna()
    study, spec = loaded.study, loaded.spec
    torch_device = resolve_device(device)
    objective = make_objective(loaded, torch_device)
    budget = int(spec.trials or DEFAULT_TRIALS)
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    failures: list[str] = []
    ran = 0
    stopped = "budget"

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        if trial.state == TrialState.FAIL:
            failures.append(trial.user_attrs.get("fail_reason", "unknown error"))
            recent = failures[-MAX_CONSECUTIVE_FAILURES:]
            if len(recent) == MAX_CONSECUTIVE_FAILURES and len(set(recent)) == 1:
                study.stop()
        else:
            failures.clear()
        if on_trial is not None:
            on_trial(trial, _count(study, FINISHED), budget, _best_value(study))

    while True:
        remaining = budget - _count(study, FINISHED)
        if spec.sampler == "grid":
            waiting = _count(study, (TrialState.WAITING,))
            if waiting == 0:
                stopped = "grid_exhausted" if remaining > 0 else "budget"
                break
            remaining = min(remaining, waiting)
        if remaining <= 0:
            break
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            stopped = "timeout"
            break
        study.optimize(objective, n_trials=remaining, timeout=left, catch=(Exception,), callbacks=[after_trial])
        recent = failures[-MAX_CONSECUTIVE_FAILURES:]
        if len(recent) == MAX_CONSECUTIVE_FAILURES and len(set(recent)) == 1:
            raise TunerError(
                f"study '{spec.name}' stopped after {MAX_CONSECUTIVE_FAILURES} trials failed the same way: {recent[0]} "
                f"(fix it, then `tuner study resume {spec.name}`)"
            )

    best = _best_trial(study)
    return RunResult(
        name=spec.name,
        budget=budget,
        n_finished=_count(study, FINISHED),
        n_complete=_count(study, (TrialState.COMPLETE,)),
        n_pruned=_count(study, (TrialState.PRUNED,)),
        n_failed=_count(study, (TrialState.FAIL,)),
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_trial=best.number if best else None,
        elapsed_s=time.monotonic() - started,
        stopped=stopped,
        ran=ran,
        failures=sorted(set(failures)),
    )


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _best_value(study: optuna.Study) -> float | None:
    best = _best_trial(study)
    return best.value if best else None


# ---------------------------------------------------------------------------------------------
# inspect, export, delete


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
                "workload": spec.get("workload"),
                "budget": spec.get("trials"),
            }
        )
    return rows


def study_summary(loaded: Loaded, storage_url: str) -> dict[str, Any]:
    study = loaded.study
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    best = _best_trial(study)
    pruned_reasons: dict[str, int] = {}
    for t in trials:
        if t.state == TrialState.PRUNED:
            kind = "diverged" if str(t.user_attrs.get("pruned_reason", "")).startswith("diverged") else "pruner"
            pruned_reasons[kind] = pruned_reasons.get(kind, 0) + 1
    return {
        "name": loaded.spec.name,
        "storage": mask(storage_url),
        "spec": loaded.spec.as_dict(),
        "direction": loaded.spec.direction,
        "trials": {"total": len(trials), **states},
        "finished": states["complete"] + states["pruned"],
        "pruned_reasons": pruned_reasons,
        "best": _trial_dict(best) if best else None,
    }


def _trial_dict(t: FrozenTrial) -> dict[str, Any]:
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
    return [_trial_dict(t) for t in loaded.study.get_trials(deepcopy=False, states=states)]


def export_trials(loaded: Loaded, out: Path, *, fmt: str) -> int:
    """Every trial to CSV (one row per trial, params and attributes as columns) or JSON (with
    intermediate values and the study's spec and space). Written atomically."""
    rows = trial_rows(loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == "json":
        doc = {"study": loaded.spec.as_dict(), "space": loaded.space.to_dict(), "trials": rows}
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    else:
        param_names = sorted({k for r in rows for k in r["params"]})
        attr_names = sorted({k for r in rows for k in r["user_attrs"]})
        header = ["number", "state", "value", "duration_s", "datetime_start", "datetime_complete"]
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header + [f"params_{p}" for p in param_names] + [f"user_attrs_{a}" for a in attr_names])
            for r in rows:
                w.writerow(
                    [r[h] for h in header]
                    + [r["params"].get(p, "") for p in param_names]
                    + [r["user_attrs"].get(a, "") for a in attr_names]
                )
    tmp.replace(out)
    return len(rows)


def delete_study(name: str, storage_url: str) -> None:
    open_study(name, storage_url)  # a clear error for a missing study
    optuna.delete_study(study_name=name, storage=open_storage(storage_url))
