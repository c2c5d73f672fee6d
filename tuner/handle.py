"""The trial handle a person's own objective receives: its parameters, device and seed, and the
calls that join their loop to the study (report with pruning, gradient diagnostics, artifacts).

    def objective(trial):
        model = Net(heads=trial.params["num_heads"]).to(trial.device)
        for epoch in range(1, 11):
            ...
            trial.report(epoch, val_accuracy)   # raises tuner.Pruned when the pruner says stop
        return val_accuracy

It wraps an Optuna trial without exposing it: what the objective sees stays the same whichever
sampler, pruner or storage the study uses.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore

from tuner import attrs as A
from tuner.metrics import Constraint, Metric
from tuner.pruning import OneMetric, ParetoPruner

__all__ = ["LinkingStore", "MissingMetric", "Pruned", "TrialHandle", "attach"]


class Pruned(optuna.TrialPruned):
    """Raised by TrialHandle.report when the study's pruner stops the trial; let it propagate."""


class MissingMetric(ValueError):
    """A trial ended without a value for one of the study's metrics, or a constrained one."""

    def __init__(self, metric: str, reported: list[str]) -> None:
        super().__init__(f"the trial reported no {metric} (it reported {', '.join(reported) or 'nothing'})")
        self.metric, self.reported = metric, reported


class TrialHandle:
    """One trial, as a person's objective sees it."""

    def __init__(
        self,
        trial: optuna.Trial,
        *,
        params: dict[str, Any],
        device: Any,
        seed: int,
        objectives: tuple[Metric, ...],
        pruner: str,
        prunes: bool,
        artifacts: Path,
        prune_on: str | None = None,
        constraints: tuple[Constraint, ...] = (),
        unit: str = "step",
    ) -> None:
        self._trial = trial
        self.params = dict(params)  # built-in and free parameters, sampled and fixed
        self.device = device  # the worker's torch.device
        self.seed = seed  # the study's seed plus the trial's number; torch is seeded with it already
        self.number = trial.number
        self.study_name = trial.study.study_name
        self.metric = objectives[0].name  # the (first) metric the study optimizes; report() takes its value
        self.metrics = [m.name for m in objectives]  # every metric it optimizes, in order
        self._objectives, self._constraints = objectives, constraints
        self._pruner, self._prunes, self._artifacts = pruner, prunes, artifacts
        self._prune_on = prune_on if len(objectives) > 1 else None
        self._unit = unit  # what a step is called in a reason: an epoch of tuner's loop, else a step
        self.history: dict[str, list[Any]] = {"epoch": [], **{name: [] for name in self.metrics}}  # what report() saw, per step
        self._vectors: dict[str, list[float]] = {}  # with several metrics: each step's, as the pareto pruner reads them
        self._trial_dir: Path | None = None
        self.chance: float | None = None  # the accuracy of answering the largest class, where known: what "stalled at chance" compares with
        self._diverged: str | None = None  # why it diverged, when a report said so
        self._cut = False  # the pruner stopped it
        self._measured: dict[str, float] = {}  # diagnose()'s figures, for the next report's step

    def report(self, step: int, value: float | dict[str, float] | None = None, **extra: float | None) -> None:
        """Store the study's metric at `step` (an epoch, or any increasing count) and ask the
        pruner; raises Pruned when the trial should stop. `value` is the metric's number, or a
        dict of metrics by name (with several metrics, each of them; `extra` works the same). Other
        values (losses, rates) are kept in the trial's history for the report's curves (None: not
        measured)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TypeError(f"report(step={step!r}): step must be an integer >= 0 (the epoch)")
        figures: dict[str, Any] = dict(value) if isinstance(value, dict) else ({} if value is None else {self.metric: value})
        figures.update(extra)
        if self.metric not in figures and len(self.metrics) == 1:
            raise TypeError(f"report(step={step}): give the study's metric {self.metric}, as report(step, value)")
        figures = {k: None if v is None else _number(k, v) for k, v in figures.items()}
        figures = {**self._measured, **figures}  # what diagnose() measured since the last report belongs to this step
        self._measured = {}
        history, n = self.history, len(self.history["epoch"]) + 1
        history["epoch"].append(step)
        for key, v in figures.items():
            column = history.get(key)
            if column is None:  # a figure first reported now: None for the steps before
                column = history[key] = [None] * (n - 1)
            column.append(v)
        if any(len(column) != n for column in history.values()):  # a figure this step did not report
            for column in history.values():
                column.extend([None] * (n - len(column)))
        for name, v in figures.items():  # the study's metrics, and any loss or accuracy reported beside them
            if name not in self.metrics and "loss" not in name and "acc" not in name:
                continue
            if v is not None and not math.isfinite(v):
                # as tuner's own loop treats a NaN loss: a verdict on the configuration, not a crash
                reason = f"diverged: {name}={v} at {self._unit} {step}"
                self._diverged = reason
                self._record({A.PRUNED_REASON: reason, A.PRUNED_KIND: A.DIVERGED, A.EPOCHS_RUN: step})
                raise Pruned(reason)
        if len(self.metrics) == 1:
            self._trial.report(figures[self.metric], step)
            if self._prunes and self._trial.should_prune():
                self._prune(step, f"{self._pruner} pruner at {self._unit} {step}: {self.metric}={figures[self.metric]:.4f}")
            return
        self._report_vector(step, figures)

    def _report_vector(self, step: int, figures: dict[str, float | None]) -> None:
        """Several metrics: the step's vector kept for the pareto pruner (a step that lacks a
        metric has none, and is not pruned), the watched metric as Optuna's intermediate value."""
        watched = self._prune_on or self.metric
        storage, trial_id = self._trial.storage, self._trial._trial_id
        if figures.get(watched) is not None:  # Trial.report refuses a study of several metrics
            storage.set_trial_intermediate_value(trial_id, step, figures[watched])
        vector = [figures.get(name) for name in self.metrics]
        if any(v is None for v in vector):
            return
        self._vectors[str(step)] = vector  # type: ignore[assignment]
        self._record({A.VECTORS: dict(self._vectors)})
        if not self._prunes:
            return
        study, pruner = self._trial.study, self._trial.study.pruner
        frozen = storage.get_trial(trial_id)
        if isinstance(pruner, ParetoPruner):
            dominating = pruner.dominating(study, frozen)
            if len(dominating) >= pruner.n_dominating:
                shown = ", ".join(f"{name}={_fmt(v)}" for name, v in zip(self.metrics, vector))
                by = ", ".join(map(str, dominating[:8])) + (f" and {len(dominating) - 8} more" if len(dominating) > 8 else "")
                self._prune(step, f"pareto pruner at {self._unit} {step}: {shown} dominated by trials {by} at that {self._unit}")
        elif figures.get(watched) is not None:
            direction = next(m.direction for m in self._objectives if m.name == watched)
            if pruner.prune(OneMetric(study, direction), frozen):
                self._prune(step, f"{self._pruner} pruner on {watched} at {self._unit} {step}: {watched}={_fmt(figures[watched])}")

    def _prune(self, step: int, reason: str) -> None:
        self._cut = True
        self._record({A.PRUNED_REASON: reason, A.PRUNED_KIND: A.PRUNER, A.EPOCHS_RUN: step})
        raise Pruned(reason)

    def conclude(self, figures: dict[str, Any]) -> float | list[float]:
        """The trial's value (a list with several metrics) from its figures at the step chosen as
        its result (a metric it lacks: its last reported value), with each constraint recorded
        as Optuna's constraint value (at most 0: met), the missed ones in attrs.VIOLATED.
        Raises MissingMetric for a metric it never reported."""
        def value(name: str) -> float:
            v = figures.get(name)
            if v is None:
                v = next((x for x in reversed(self.history.get(name, [])) if x is not None), None)
            if v is None:
                reported = sorted(k for k in {*figures, *self.history} - {"epoch", "step"} if figures.get(k) is not None or any(x is not None for x in self.history.get(k, [])))
                raise MissingMetric(name, reported)
            return _number(name, v)

        values = [value(name) for name in self.metrics]
        missed = []
        for constraint in self._constraints:
            violation = constraint.violation(value(constraint.metric))
            self._trial.set_constraint(constraint.text(), violation)
            if violation > 0:
                missed.append(constraint.text())
        if missed:
            self._record({A.VIOLATED: missed})
        return values[0] if len(values) == 1 else values

    def history_attrs(self, *, diverged: str | None = None) -> dict[str, Any]:
        """What the reports add to the trial when it ends (completed, pruned or failed): the
        history, the last step reached and the verdict on its training (tuner.health), read from
        that history and, if it diverged, why."""
        from tuner.health import judge

        steps = self.history["epoch"]
        if self._measured and steps:  # diagnose() after the last report: its figures describe that step
            for key, v in self._measured.items():
                self.history.setdefault(key, [None] * len(steps))[-1] = v
            self._measured = {}
        verdict = judge(self.history, diverged=diverged or self._diverged, chance=self.chance, cut=self._cut)
        return {A.HISTORY: self.history, A.HEALTH: verdict.to_attr(), A.VERDICT: verdict.text(), **({A.EPOCHS_RUN: steps[-1]} if steps else {})}

    @property
    def trial_dir(self) -> Path:
        """A fresh folder for this trial's outputs (a checkpoint, a plot), made on first use:
        studies/artifacts/STUDY/trial-N. What is left there when the trial ends is attached to it
        and listed in its `files` attribute (a command's {trial_dir} is the same folder)."""
        if self._trial_dir is None:
            self._trial_dir = new_trial_dir(self.study_name, self.number, root=self._artifacts)
            self._record({A.TRIAL_DIR: str(self._trial_dir)})
        return self._trial_dir

    def folder_attrs(self, *, leave_out: Path | None = None) -> dict[str, Any]:
        """The files left in the trial's folder (if it made one), each attached to the trial:
        the attributes that list them. An error attaching them is kept in LOG_ERROR, not raised."""
        if self._trial_dir is None:
            return {}
        from tuner.errors import TunerError

        attrs: dict[str, Any] = {}
        try:
            files = sorted(p for p in self._trial_dir.rglob("*") if p.is_file() and p != leave_out)
            listed = [
                {"path": str(path.relative_to(self._trial_dir)), "bytes": path.stat().st_size, "artifact": attach(self._trial, path, self._artifacts)}
                for path in files[:MAX_LISTED]
            ]
            if listed:
                attrs[A.TRIAL_FILES] = listed
            if len(files) > MAX_LISTED:
                attrs[A.FILES_NOT_LISTED] = len(files) - MAX_LISTED
        except (TunerError, OSError) as e:  # the trial's result matters more than its files
            attrs[A.LOG_ERROR] = str(e)
        return attrs

    def diagnose(self, model: Any, batch: Any = None) -> dict[str, Any]:
        """Measure what the trial's verdict (tuner.health) reads, as tuner's loop does each epoch:
        the gradient norms of each layer, from the gradients the model holds now (call it after a
        backward), and with `batch` (a tensor of inputs, such as a validation batch) the share of
        ReLU-family units never active on it, from a forward pass in eval mode with hooks. Call it
        once per step, before that step's report(): the figures join that step's history. Also
        records the per-layer norms and the vanishing/exploding flags. Returns what it measured."""
        from tuner.epochs import dead_units
        from tuner.train import gradient_diagnostics

        found = gradient_diagnostics(model)
        self._record(found)
        norms = list(found[A.GRAD_NORMS].values())
        if norms:
            self._measured.update({"grad_norm_first": norms[0], "grad_norm_last": norms[-1], "grad_norm_min": min(norms), "grad_norm_max": max(norms)})
        dead = dead_units(model, batch) if batch is not None else None
        if dead is None:
            return found
        units = {A.DEAD_UNITS: dead[0], A.DEAD_LAYER: dead[1]}  # per step, in the history: not an attribute of the trial
        self._measured.update(units)
        return {**found, **units}

    def set(self, **attrs: Any) -> None:
        """Record values of your own on the trial (JSON-serializable), shown by the dashboard."""
        self._record(attrs)

    def log_artifact(self, path: str | Path) -> str:
        """Attach a file to the trial (a plot, a checkpoint, a log): optuna-dashboard links it from
        the trial's page (`tuner dashboard` serves the artifact store). Returns its artifact id."""
        return attach(self._trial, Path(path), self._artifacts)

    def _record(self, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self._trial.set_user_attr(key, value)


def attach(study_or_trial: Any, path: Path, artifacts: Path, *, mimetype: str | None = None) -> str:
    """Upload a file to the artifact store beside the study, linked to the study or to a running
    trial: optuna-dashboard (`tuner dashboard --artifacts`) links it from that page."""
    from optuna.artifacts import upload_artifact

    from tuner.errors import TunerError

    owner = f"study '{study_or_trial.study_name}'" if isinstance(study_or_trial, optuna.Study) else f"trial {study_or_trial.number}"
    if not path.is_file():
        raise TunerError(f"cannot attach {path} to {owner}: no such file")
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
        return upload_artifact(artifact_store=LinkingStore(artifacts), file_path=str(path), study_or_trial=study_or_trial, mimetype=mimetype)
    except (OSError, optuna.exceptions.OptunaError) as e:
        raise TunerError(f"cannot attach {path} to {owner} in {artifacts}: {e}") from None


MAX_LISTED = 200  # files of a trial's folder listed (and attached) on the trial


def new_trial_dir(study: str, number: int, *, root: Path) -> Path:
    """A fresh folder for one trial's outputs: ROOT/STUDY/trial-N, or trial-N.2, ... where a
    study of the same name (deleted since, or in another database) left one."""
    from tuner.errors import TunerError

    base = (root / study).absolute()
    base.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = base / (f"trial-{number}" if k == 1 else f"trial-{number}.{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise TunerError(f"cannot make a folder for trial {number} in {base}: trial-{number} to trial-{number}.9999 all exist; clear out old ones")


class LinkingStore(FileSystemArtifactStore):
    """Optuna's file-system artifact store, which links a file into the store where it can (the
    same file system) instead of copying it: a trial's checkpoints are not stored twice. Elsewhere,
    and for a stream that is not a file, Optuna's own copy."""

    def __init__(self, base_path: Path) -> None:
        super().__init__(base_path)
        self._root = Path(base_path)

    def write(self, artifact_id: str, content_body: Any) -> None:
        source = getattr(content_body, "name", None)
        if isinstance(source, str) and os.path.isfile(source) and os.path.basename(artifact_id) == artifact_id:
            try:
                os.link(source, self._root / artifact_id)
                return
            except OSError:  # another file system, or links not allowed: copy
                pass
        super().write(artifact_id, content_body)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


def _number(key: str, value: Any) -> float:
    try:
        return float(value)  # torch and numpy scalars too
    except (TypeError, ValueError):
        raise TypeError(f"report: {key} must be a number, got {value!r}") from None
