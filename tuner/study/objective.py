"""The objective: what joins a trial to the training loop, and what a trial records."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optuna

from tuner import attrs as A
from tuner.buffered import BufferedStorage
from tuner.errors import DivergedError
from tuner.params import TrainConfig
from tuner.study.store import Loaded
from tuner.workloads import load_workload

__all__ = ["durable", "make_objective", "record", "trial_workload"]


def make_objective(loaded: Loaded, device: Any, *, threads: int | None = None) -> Callable[[optuna.Trial], float]:
    """The function a worker calls per trial: tuner's own loop on the study's workload, or the
    person's own code (an objective function or a command)."""
    if loaded.spec.objective is not None:
        from tuner.study.usercode import python_objective

        return python_objective(loaded, device)
    if loaded.spec.command is not None:
        from tuner.study.usercode import command_objective

        return command_objective(loaded, device, threads=threads)
    return _builtin_objective(loaded, device)


def _builtin_objective(loaded: Loaded, device: Any) -> Callable[[optuna.Trial], float]:
    from tuner.train import train

    spec, space = loaded.spec, loaded.space
    prunes = not isinstance(loaded.study.pruner, optuna.pruners.NopPruner)  # asking a NopPruner costs a trial copy an epoch

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        seed = spec.seed + trial.number
        record(trial, {"seed": seed, "device": str(device)})
        durable(trial)

        epochs: list[Any] = []

        def report(epoch: Any) -> None:
            epochs.append(epoch)
            trial.report(epoch.metric, epoch.epoch)
            if prunes and trial.should_prune():
                reason = f"{spec.pruner} pruner at epoch {epoch.epoch}: {spec.metric}={epoch.metric:.4f}"
                record(trial, {A.PRUNED_REASON: reason, A.PRUNED_KIND: A.PRUNER, A.EPOCHS_RUN: epoch.epoch, A.HISTORY: _history(epochs)})
                raise optuna.TrialPruned(reason)

        try:
            data, model = trial_workload(loaded, params, seed)
            result = train(
                TrainConfig.from_params(params), data, metric=spec.metric, device=device, seed=seed, model=model, on_epoch=report
            )
        except DivergedError as e:
            # Divergence is a verdict on the configuration, not a crash: pruned, with the reason.
            attrs = {A.PRUNED_REASON: str(e), A.PRUNED_KIND: A.DIVERGED, A.EPOCHS_RUN: e.epoch, "exploding_gradients": True}
            record(trial, {**attrs, A.HISTORY: _history(epochs)})
            raise optuna.TrialPruned(str(e)) from None
        except optuna.TrialPruned:
            raise
        except Exception as e:
            record(trial, {A.FAIL_REASON: f"{e.__class__.__name__}: {e}"[:500], A.FAIL_KIND: e.__class__.__name__})
            if "out of memory" in str(e).lower():
                _release_gpu_memory()  # so the next, perhaps smaller, trial starts with a clean slate
            raise
        last, diag = result.last, result.diagnostics
        attrs = {
            "duration_s": round(result.duration_s, 4),
            A.EPOCHS_RUN: result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped": result.stopped,
            "train_loss": last.train_loss,
            "val_loss": last.val_loss,
            "val_accuracy": last.val_accuracy,
            "train_accuracy": last.train_accuracy,
            **(dataclasses.asdict(diag) if diag else {}),
            "grad_norms": last.grad_norms,
            A.HISTORY: _history(result.history),
        }
        record(trial, {k: v for k, v in attrs.items() if v is not None})
        return result.value

    return objective


def trial_workload(loaded: Loaded, params: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """The data (split with the study's seed) and, for a user callable, its model, built with torch
    seeded by the trial's seed so that its initial weights are the same whenever the trial is rerun."""
    workload = loaded.workload
    if workload.kind == "callable":
        import torch

        torch.manual_seed(seed)
    return load_workload(workload, seed=loaded.spec.seed, val_fraction=loaded.spec.val_fraction, config=params)


def _history(epochs: list[Any]) -> dict[str, list[Any]]:
    """Per-epoch curves, stored with the trial for learning-curve plots."""
    keys = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr")
    return {"epoch": [e.epoch for e in epochs], **{k: [getattr(e, k) for e in epochs] for k in keys}}


def record(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():  # buffered: written with the trial's other data in one commit
        trial.set_user_attr(key, value)


def durable(trial: optuna.Trial) -> None:
    """The trial's configuration in the database before training starts: a killed worker's trial
    is queued again with exactly these parameters."""
    if isinstance(trial.study._storage, BufferedStorage):
        trial.study._storage.flush(trial._trial_id)


def _release_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
