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

__all__ = ["LinkingStore", "Pruned", "TrialHandle", "attach"]


class Pruned(optuna.TrialPruned):
    """Raised by TrialHandle.report when the study's pruner stops the trial; let it propagate."""


class TrialHandle:
    """One trial, as a person's objective sees it."""

    def __init__(
        self, trial: optuna.Trial, *, params: dict[str, Any], device: Any, seed: int, metric: str, pruner: str, prunes: bool, artifacts: Path, unit: str = "step"
    ) -> None:
        self._trial = trial
        self.params = dict(params)  # built-in and free parameters, sampled and fixed
        self.device = device  # the worker's torch.device
        self.seed = seed  # the study's seed plus the trial's number; torch is seeded with it already
        self.number = trial.number
        self.study_name = trial.study.study_name
        self.metric = metric  # the name the study optimizes; report() takes its value
        self._pruner, self._prunes, self._artifacts = pruner, prunes, artifacts
        self._unit = unit  # what a step is called in a reason: an epoch of tuner's loop, else a step
        self.history: dict[str, list[Any]] = {"epoch": [], metric: []}  # what report() saw, per step
        self._trial_dir: Path | None = None

    def report(self, step: int, value: float, **extra: float) -> None:
        """Store `value` (the study's metric) at `step` (an epoch, or any increasing count) and
        ask the pruner; raises Pruned when the trial should stop. `extra` values (losses, rates)
        are kept in the trial's history for the report's curves (None: not measured)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TypeError(f"report(step={step!r}): step must be an integer >= 0 (the epoch)")
        value = _number(self.metric, value)
        history, n = self.history, len(self.history["epoch"]) + 1
        history["epoch"].append(step)
        history[self.metric].append(value)
        for key, v in extra.items():
            if key != self.metric:
                column = history.get(key)
                if column is None:  # a figure first reported now: None for the steps before
                    column = history[key] = [None] * (n - 1)
                column.append(None if v is None else _number(key, v))
        if any(len(column) != n for column in history.values()):  # a figure this step did not report
            for column in history.values():
                column.extend([None] * (n - len(column)))
        if not math.isfinite(value):
            # as tuner's own loop treats a NaN loss: a verdict on the configuration, not a crash
            reason = f"diverged: {self.metric}={value} at {self._unit} {step}"
            self._record({A.PRUNED_REASON: reason, A.PRUNED_KIND: A.DIVERGED, A.EPOCHS_RUN: step})
            raise Pruned(reason)
        self._trial.report(value, step)
        if self._prunes and self._trial.should_prune():
            reason = f"{self._pruner} pruner at {self._unit} {step}: {self.metric}={value:.4f}"
            self._record({A.PRUNED_REASON: reason, A.PRUNED_KIND: A.PRUNER, A.EPOCHS_RUN: step})
            raise Pruned(reason)

    def history_attrs(self) -> dict[str, Any]:
        """What the reports add to the trial when it ends: the history and the last step reached."""
        steps = self.history["epoch"]
        return {A.HISTORY: self.history, **({A.EPOCHS_RUN: steps[-1]} if steps else {})}

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

    def diagnose(self, model: Any) -> dict[str, Any]:
        """Record the model's gradient diagnostics as tuner's loop does (per-layer norms, the
        vanishing and exploding flags), from the gradients it holds now: call it after a backward.
        Returns what was recorded."""
        from tuner.train import gradient_diagnostics

        found = gradient_diagnostics(model)
        self._record(found)
        return found

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


def _number(key: str, value: Any) -> float:
    try:
        return float(value)  # torch and numpy scalars too
    except (TypeError, ValueError):
        raise TypeError(f"report: {key} must be a number, got {value!r}") from None
