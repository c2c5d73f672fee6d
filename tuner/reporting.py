"""report(): how a training script run by `tuner --command` hands its metrics back, without an SDK.

    from tuner.reporting import report
    report(step=epoch, val_accuracy=acc, loss=loss)

Under tuner, each call appends one JSON line to $TUNER_METRICS_FILE, which the worker reads while
the script runs (so the pruner can stop it). Run by hand, the same call prints
`step=3 val_accuracy=0.91 loss=0.2` instead. A user script imports this module: it imports
nothing heavy (no torch, no optuna, no numpy).
"""

from __future__ import annotations

import json
import operator
import os
from typing import Any

__all__ = ["report"]


def _number(key: str, value: Any) -> int | float:
    """A metric as a plain int or float: torch and numpy scalars (anything with __float__) convert;
    text, booleans and many-valued tensors are refused, naming the key."""
    if not isinstance(value, (str, bytes, bool)) and hasattr(type(value), "__float__"):
        if isinstance(value, int):
            return int(value)
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):  # a tensor of several values says so in one of these
            pass
    raise TypeError(f"report: {key} must be one number, but got {value!r:.80} ({type(value).__name__}); pass e.g. {key}=float(...)")


def report(step: int | None = None, **metrics: float) -> None:
    """Hand one record of metrics to tuner: `report(step=3, val_accuracy=0.91)`.

    `step` (an int: the epoch or the iteration) is what the pruner compares trials at; NaN and
    infinite values are passed on as such (tuner decides what they mean). Each call writes and
    closes its line at once, so the worker sees it before the next epoch starts, and several
    processes (DataLoader workers, DDP ranks) may call it: each line is one append."""
    if not metrics:
        raise TypeError("report: give at least one metric, e.g. report(step=3, val_accuracy=0.91)")
    record: dict[str, int | float] = {}
    if step is not None:
        if isinstance(step, bool):
            raise TypeError(f"report: step must be an int, but got {step!r}; pass e.g. step=epoch")
        try:
            record["step"] = operator.index(step)
        except TypeError:
            raise TypeError(f"report: step must be an int, but got {step!r:.80} ({type(step).__name__}); pass e.g. step=epoch") from None
    record.update((key, _number(key, value)) for key, value in metrics.items())

    path = os.environ.get("TUNER_METRICS_FILE")
    if not path:
        print(" ".join(f"{key}={value!r}" for key, value in record.items()), flush=True)
        return
    line = (json.dumps(record) + "\n").encode()
    # One write on an O_APPEND descriptor: lines from several processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
