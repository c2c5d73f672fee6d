"""Health: what the per-epoch measurements behind each trial's verdict (tuner.health) cost in
tuner's loop: the dead-units probe (a forward pass with hooks on a validation batch, each epoch),
the per-layer gradient norms (read on an epoch's last two batches) and the forward-latency timing
(once a trial), each timed on its own beside the epoch it belongs to."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

from benchmarks.common import Bench, torch_threads
from tuner.params import TrainConfig

__all__ = ["measure_health"]

SIZES = (64, 256)  # hidden units of the two models measured (2 hidden layers, ReLU): the cost is a share of a small and a larger epoch
N_TIMED = 15  # repeats of each measurement; the median is kept


def _median_ms(call: Any, n: int = N_TIMED) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def _one(bench: Bench, hidden: int, epochs: int) -> dict[str, Any]:
    import torch

    from tuner.epochs import LATENCY_ROWS, dead_units, forward_latency_ms
    from tuner.train import _grad_norm, layer_weights, train
    from tuner.workloads import WorkloadRef, load_workload

    data = load_workload(WorkloadRef("builtin", "digits"), seed=bench.settings.seed, val_fraction=0.2, config={})[0]
    cfg = TrainConfig(hidden_units=hidden, n_layers=2, activation="relu", optimizer="adam", lr=1e-3, batch_size=64, epochs=epochs, scaling="standard")
    train(dataclasses.replace(cfg, epochs=1), data, seed=bench.settings.seed, device=str(bench.device))  # first-call costs are not an epoch's
    started = time.perf_counter()
    result = train(cfg, data, seed=bench.settings.seed, device=str(bench.device))
    epoch_ms = (time.perf_counter() - started) * 1e3 / epochs  # with the measurements in it
    model = result.model
    x_val = torch.as_tensor(data.x_val, dtype=torch.float32, device=bench.device)
    probe = x_val[:LATENCY_ROWS]
    weights = [w for _, w in layer_weights(model)]
    model(x_val[:cfg.batch_size]).sum().backward()  # gradients to read, as a step leaves them

    def norms() -> None:
        torch.stack([_grad_norm(w) for w in weights]).tolist()  # the loop keeps them on the device; this waits for them

    dead_ms = _median_ms(lambda: dead_units(model, probe))
    norms_ms = 2 * _median_ms(norms)  # two batches an epoch
    latency_ms = _median_ms(lambda: forward_latency_ms(model, probe), n=3)
    per_epoch = dead_ms + norms_ms + latency_ms / epochs
    return {
        "hidden_units": hidden,
        "epoch_ms": epoch_ms,
        "dead_units_ms": dead_ms,
        "grad_norms_ms": norms_ms,
        "latency_timing_ms": latency_ms,
        "per_epoch_ms": per_epoch,
        "share": per_epoch / epoch_ms,
    }


def measure_health(bench: Bench) -> dict[str, Any]:
    epochs = 4 if bench.settings.n_overhead < 10 else 10  # --quick: fewer
    with torch_threads(bench.settings.threads):
        models = [_one(bench, hidden, epochs) for hidden in SIZES]
    shown = ", ".join(f"{m['hidden_units']} units {m['per_epoch_ms']:.2f} ms of {m['epoch_ms']:.0f} ms an epoch" for m in models)
    bench.log(f"health: {shown}")
    return {
        "models": models,
        "share": max(m["share"] for m in models),
        "how": (
            f"digits, MLP 2x{'/'.join(map(str, SIZES))} ReLU, batch 64, Adam, {epochs} epochs, threads {bench.settings.threads}, on {bench.device}: "
            "each measurement timed alone (median of repeats) against a whole epoch of tuner's loop"
        ),
    }
