"""The objective: what joins a trial to the training loop, and what a trial records."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

import optuna

from tuner import attrs as A
from tuner.errors import DivergedError
from tuner.metrics import RECORDED
from tuner.params import TrainConfig
from tuner.study.store import Loaded
from tuner.study.trial import begin, durable, record, started
from tuner.study.usercode import command_objective, python_objective
from tuner.workloads import load_workload

__all__ = ["OBJECTIVES", "BuiltinObjective", "make_objective", "trial_workload"]


def make_objective(loaded: Loaded, device: Any, *, threads: int | None = None) -> Callable[[optuna.Trial], float | list[float]]:
    """The function a worker calls per trial, by the kind of code the study runs (OBJECTIVES):
    tuner's own loop on the study's workload, or the person's own function or command."""
    return OBJECTIVES[loaded.spec.code_kind](loaded, device, threads)


class BuiltinObjective:
    """tuner's own loop: a trial's configuration trained by `train`, alone, or by `train_packed`
    beside others (run_pack); either way each trial reports, prunes and records the same."""

    def __init__(self, loaded: Loaded, device: Any) -> None:
        self.loaded, self.device = loaded, device
        self.unpacked: str | None = None  # why this worker no longer packs (a pack failed as a whole), if it does not

    def begin(self, trial: optuna.Trial) -> "_TrialRun":
        """The trial's configuration drawn and stored before training (durable)."""
        handle = begin(self.loaded, trial, self.device, unit="epoch")
        durable(trial)
        return _TrialRun(self, handle)

    def __call__(self, trial: optuna.Trial) -> float:
        run = self.begin(trial)
        try:
            data, model = run.workload()
        except BaseException as e:
            run.ended(e)
            raise
        return self._alone(run, data, model)

    def _alone(self, run: "_TrialRun", data: Any, model: Any) -> float:
        from tuner.train import train

        try:
            result = train(run.config, data, metric=self.loaded.spec.epoch_metric, device=self.device, seed=run.seed, model=model, on_epoch=run.report)
        except BaseException as e:
            run.ended(e)
            raise
        return run.finish(result)

    def run_pack(self, trials: list[optuna.Trial], *, n_pack: int, on_ended: Callable[[int, float | BaseException], None]) -> None:
        """Several claimed trials, those that can share a pack (tuner.packing.pack_key) trained
        together, n_pack at most, the others alone. As each pack ends, `on_ended` is given each
        of its trials' index and value, or the exception that ended it (TrialPruned for a pruned
        or diverged one)."""
        from tuner import packing

        outcomes: list[Any] = [None] * len(trials)
        runs, workloads = [], []
        for i, trial in enumerate(trials):
            run = self.begin(trial)
            try:
                data, model = run.workload()
            except Exception as e:
                outcomes[i] = _ending(run, e)
                on_ended(i, outcomes[i])
                data, model = None, None
            runs.append(run)
            workloads.append((data, model))

        def alone(i: int) -> None:
            try:
                outcomes[i] = self._alone(runs[i], *workloads[i])
            except Exception as e:  # recorded by _alone
                outcomes[i] = e
            on_ended(i, outcomes[i])

        # a trial whose data failed, or with a model of its own (a callable workload's), trains alone
        datas = [data if outcomes[i] is None and model is None else None for i, (data, model) in enumerate(workloads)]
        for group in packing.schedule([r.config for r in runs], datas, 1 if self.unpacked else n_pack, self.device):
            group = [i for i in group if outcomes[i] is None]
            if len(group) == 1 or self.unpacked:  # alone, or packing stopped by an earlier pack's failure
                for i in group:
                    started([trials[i]])
                    alone(i)
            elif group:
                started([trials[i] for i in group])
                numbers = [trials[i].number for i in group]
                try:
                    results: list[Any] = packing.train_packed(
                        [runs[i].config for i in group], workloads[group[0]][0], seeds=[runs[i].seed for i in group],
                        metric=self.loaded.spec.epoch_metric, device=self.device, on_epoch=[runs[i].report for i in group],
                    )  # fmt: skip
                except Exception as e:  # the pack as a whole (out of memory, an op this device lacks): alone, from now on
                    self._stop_packing(e, n_members=len(group))
                    for i in group:
                        if runs[i].handle.history["epoch"]:  # it reported epochs already, which a second training cannot replace
                            outcomes[i] = _ending(runs[i], e)
                            on_ended(i, outcomes[i])
                        else:
                            alone(i)
                    continue
                for i, result in zip(group, results):
                    try:
                        record(trials[i], {A.PACK: numbers})
                        outcomes[i] = _ending(runs[i], result) if isinstance(result, BaseException) else runs[i].finish(result)
                    except optuna.exceptions.UpdateFinishedTrialError as e:  # failed as lost meanwhile (Optuna's storage writes at once)
                        outcomes[i] = e
                    on_ended(i, outcomes[i])

    def _stop_packing(self, error: Exception, *, n_members: int) -> None:
        """Packed training failed as a whole: its trials train alone, as do this worker's later ones,
        so that a pack this machine cannot train (out of memory, a device packing was never run on)
        costs one pack's time rather than the study. Said once, on stderr."""
        self.unpacked = f"{error.__class__.__name__}: {error}"[:300]
        print(
            f"tuner: a pack of {n_members} trials failed as a whole ({self.unpacked}); this worker trains its trials "
            "alone from now on (--pack 1 turns packing off)",
            file=sys.stderr,
            flush=True,
        )


def _ending(run: "_TrialRun", error: BaseException) -> BaseException:
    """What ended the trial, recorded: TrialPruned for a divergence, else the error itself."""
    try:
        run.ended(error)
    except optuna.TrialPruned as pruned:
        return pruned
    return error


class _TrialRun:
    """One trial of tuner's loop between its start and its result: the trial handle it reports
    through, and its training configuration."""

    def __init__(self, objective: BuiltinObjective, handle: Any) -> None:
        self.objective, self.handle, self.trial = objective, handle, handle._trial
        self.params, self.seed = handle.params, handle.seed
        self.config = TrainConfig.from_params(self.params)

    def workload(self) -> tuple[Any, Any]:
        data, model = trial_workload(self.objective.loaded, self.params, self.seed)
        self.handle.chance = chance_accuracy(data)
        return data, model

    def report(self, epoch: Any) -> None:
        """Each epoch's metrics to the study, its other figures to the history; raises TrialPruned
        (tuner.Pruned) where the pruner says so."""
        self.handle.report(epoch.epoch, {**epoch.figures(), **{name: epoch.value_of(name) for name in self.handle.metrics}})

    def ended(self, error: BaseException) -> None:
        """Record why training ended without a result; divergence becomes TrialPruned (raised)."""
        trial = self.trial
        record(trial, self.handle.history_attrs(diverged=str(error) if isinstance(error, DivergedError) else None))
        if isinstance(error, DivergedError):
            # Divergence is a verdict on the configuration, not a crash: pruned, with the reason.
            record(trial, {A.PRUNED_REASON: str(error), A.PRUNED_KIND: A.DIVERGED, A.EPOCHS_RUN: error.epoch, A.EXPLODING: True})
            raise optuna.TrialPruned(str(error)) from None
        if isinstance(error, Exception) and not isinstance(error, optuna.TrialPruned):
            record(trial, {A.FAIL_REASON: f"{error.__class__.__name__}: {error}"[:500], A.FAIL_KIND: error.__class__.__name__})
            if "out of memory" in str(error).lower():
                _release_gpu_memory()  # so the next, perhaps smaller, trial starts with a clean slate

    def finish(self, result: Any) -> float | list[float]:
        """Record what a finished training gives a person to judge it; its value (values), the
        study's metrics at its best epoch."""
        last, diag = result.last, result.diagnostics
        attrs = {
            A.DURATION_S: round(result.duration_s, 4),
            **self.handle.history_attrs(),
            A.EPOCHS_RUN: result.epochs_run,
            A.BEST_EPOCH: result.best_epoch,
            A.STOPPED: result.stopped,
            # the last epoch's figures, each under its name in attrs.py (but the rate, whose name
            # is the lr parameter's: its last value stays in the history)
            **{k: v for k, v in last.figures().items() if k != A.LR},
            **(dataclasses.asdict(diag) if diag else {}),  # its fields are attrs' diagnostics names
            A.GRAD_NORMS: last.grad_norms,
        }
        record(self.trial, {k: v for k, v in attrs.items() if v is not None})
        best = result.history[result.best_epoch - 1]
        return self.handle.conclude({name: best.value_of(name) for name in RECORDED})


def chance_accuracy(data: Any) -> float | None:
    """The validation accuracy of always answering the largest class (None for a regression, or
    data that is not tuner's arrays)."""
    import numpy as np

    y = getattr(data, "y_val", None)
    if getattr(data, "task", None) != "classification" or y is None or len(y) == 0:
        return None
    return float(np.bincount(np.asarray(y, dtype=np.int64)).max() / len(y))


def trial_workload(loaded: Loaded, params: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """The data (split with the study's seed) and, for a user callable, its model, built with torch
    seeded by the trial's seed so that its initial weights are the same whenever the trial is rerun."""
    workload = loaded.workload
    if workload.kind == "callable":
        import torch

        torch.manual_seed(seed)
    return load_workload(workload, seed=loaded.spec.seed, val_fraction=loaded.spec.val_fraction, config=params)


def _release_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _builtin(loaded: Loaded, device: Any, threads: int | None) -> BuiltinObjective:
    return BuiltinObjective(loaded, device)


# the kinds of code a study's trials run (StudySpec.code_kind), each a factory of its objective
OBJECTIVES: dict[str, Callable[[Loaded, Any, int | None], Callable[[optuna.Trial], float | list[float]]]] = {
    "tuner's loop": _builtin,
    "objective": lambda loaded, device, threads: python_objective(loaded, device),
    "command": lambda loaded, device, threads: command_objective(loaded, device, threads=threads),
}
