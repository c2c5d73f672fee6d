"""The reference: the pattern of Optuna's `pytorch_simple` example on digits, written here as the
baseline tuner is measured against (it is not product code), with the data it trains on."""

from __future__ import annotations

import time
from typing import Any, Callable

import optuna

from benchmarks.common import Clock

__all__ = ["as_reference_params", "reference_arrays", "reference_objective"]

_OPTIMIZER_CLASSES = {"adam": "Adam", "rmsprop": "RMSprop", "sgd": "SGD"}  # tuner's name -> torch.optim class


def _digits(seed: int) -> Any:
    """tuner's digits split for this seed (the one its studies train on)."""
    from tuner.workloads import load_workload, parse_workload

    data, _ = load_workload(parse_workload("digits"), seed=seed)
    return data


def reference_arrays(seed: int) -> tuple[Any, ...]:
    """The same split, standardized with training statistics as tuner's `scaling: standard` does,
    on the host: the reference moves each batch to the device itself."""
    import torch

    from tuner.train import device_tensors

    return device_tensors(_digits(seed), "standard", torch.device("cpu"))


def as_reference_params(config: dict[str, Any]) -> dict[str, Any]:
    """A tuner configuration in the example's parameter names (one width and dropout per layer)."""
    params: dict[str, Any] = {"n_layers": config["n_layers"]}
    for i in range(config["n_layers"]):
        params[f"n_units_l{i}"] = config["hidden_units"]
        params[f"dropout_l{i}"] = config["dropout"]
    params["optimizer"] = _OPTIMIZER_CLASSES[config["optimizer"]]
    params["lr"] = config["lr"]
    return params


class _TimedTrial:
    """The trial as the reference objective sees it, counting the time of its calls into Optuna."""

    def __init__(self, trial: optuna.Trial, clock: Clock) -> None:
        self._trial, self._clock = trial, clock
        self.in_optuna = 0.0
        self.number = trial.number

    def _call(self, method: Callable[..., Any], *args: Any, report: bool = False, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent = time.perf_counter() - started
            self.in_optuna += spent
            if report:
                self._clock.reports += spent

    def suggest_int(self, *args: Any, **kwargs: Any) -> int:
        return self._call(self._trial.suggest_int, *args, **kwargs)

    def suggest_float(self, *args: Any, **kwargs: Any) -> float:
        return self._call(self._trial.suggest_float, *args, **kwargs)

    def suggest_categorical(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self._trial.suggest_categorical, *args, **kwargs)

    def report(self, value: float, step: int) -> None:
        self._call(self._trial.report, value, step, report=True)

    def should_prune(self) -> bool:
        return self._call(self._trial.should_prune, report=True)


def reference_objective(
    arrays: tuple[Any, ...],
    device: Any,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    clock: Clock | None = None,
) -> Callable[[optuna.Trial], float]:
    """Optuna's pytorch_simple example on (x_train, y_train, x_val, y_val): an MLP of 1-3 layers of
    4-128 units with dropout 0.2-0.5 each, Adam/RMSprop/SGD at a log-uniform rate, trained through
    a DataLoader over a TensorDataset, each batch moved to the device, accuracy reported per epoch.

    With a clock, the time inside training (the objective less its calls into Optuna) is counted."""
    import torch
    import torch.nn.functional as F
    from torch import nn, optim
    from torch.utils.data import DataLoader, TensorDataset

    x_train, y_train, x_val, y_val = arrays
    n_features, n_classes = int(x_train.shape[1]), int(y_train.max()) + 1

    def define_model(trial: Any) -> nn.Module:
        n_layers = trial.suggest_int("n_layers", 1, 3)
        layers: list[nn.Module] = []
        in_features = n_features
        for i in range(n_layers):
            out_features = trial.suggest_int(f"n_units_l{i}", 4, 128, log=True)
            layers.append(nn.Linear(in_features, out_features))
            layers.append(nn.ReLU())
            p = trial.suggest_float(f"dropout_l{i}", 0.2, 0.5)
            layers.append(nn.Dropout(p))
            in_features = out_features
        layers.append(nn.Linear(in_features, n_classes))
        layers.append(nn.LogSoftmax(dim=1))
        return nn.Sequential(*layers)

    def objective(trial: Any) -> float:
        started = time.perf_counter()
        timed = _TimedTrial(trial, clock) if clock is not None else trial
        try:
            return _run(timed)
        finally:
            if clock is not None:
                clock.train += time.perf_counter() - started - timed.in_optuna
                clock.n_train += 1

    def _run(trial: Any) -> float:
        # The example leaves torch unseeded; seeded here as tuner seeds its trials, for repeatable runs.
        torch.manual_seed(seed + trial.number)
        model = define_model(trial).to(device)
        optimizer_name = trial.suggest_categorical("optimizer", ["Adam", "RMSprop", "SGD"])
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        optimizer = getattr(optim, optimizer_name)(model.parameters(), lr=lr)
        train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)
        valid_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=batch_size, shuffle=True)

        accuracy = 0.0
        for epoch in range(epochs):
            model.train()
            for data, target in train_loader:
                data, target = data.view(data.size(0), -1).to(device), target.to(device)
                optimizer.zero_grad()
                output = model(data)
                loss = F.nll_loss(output, target)
                loss.backward()
                optimizer.step()

            model.eval()
            correct = 0
            with torch.no_grad():
                for data, target in valid_loader:
                    data, target = data.view(data.size(0), -1).to(device), target.to(device)
                    output = model(data)
                    pred = output.argmax(dim=1, keepdim=True)
                    correct += pred.eq(target.view_as(pred)).sum().item()
            accuracy = correct / len(valid_loader.dataset)

            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    return objective
