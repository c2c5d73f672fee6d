"""Why a trial did or did not learn, in words: one verdict per trial, with its evidence in numbers
and a fix in one line, read from what the trial recorded at each epoch (its losses, accuracies,
gradient norms and dead units), whether it completed, was pruned or failed.

The verdicts are the ways a network fails to learn: its loss diverged, no gradient flows (a dead
network), gradients vanished or exploded, ReLU units died, training stalled at chance, the model
overfit or underfit. The first that applies is the trial's, in that order (a diverged network
also has exploding gradients: the divergence is the news). This module imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuner import attrs as A

__all__ = ["HEALTHY", "VERDICTS", "Verdict", "judge"]

# Thresholds, each with the reason for its value:
LOSS_BLOWUP = 100.0  # a finite loss 100x its first epoch's has diverged (lr 50 on breast_cancer: 1e14)
DEAD_NORM = 1e-8  # every layer's gradient norm below this: nothing flows back (float32 rounding noise is ~1e-7 of a unit norm)
VANISHING_NORM = 1e-4  # every layer below this: a step of lr 0.01 moves weights by 1e-6, learning stops in practice
VANISHING_RATIO = 1e-3  # the first layer's norm below this share of the last's: early layers starve (tuner.epochs)
EXPLODING_NORM = 1e3  # a layer's norm above this (before clipping): one step moves weights by lr x 1e3 (tuner.epochs)
DYING_FRACTION = 0.5  # over half a ReLU-family layer's units never active on a validation batch: half its capacity is gone
STALL_FRACTION = 0.01  # the training loss moved less than 1% of its first value from its first epoch to its last
CHANCE_MARGIN = 0.05  # accuracy within this of chance (the largest class's share) has learned nothing
OVERFIT_GAP = 0.10  # train minus validation accuracy past this, with the validation loss rising since the best epoch
# a model that fits its training set has small gradients because it is at an optimum, not by a fault:
FIT_ACCURACY = 0.99  # classification: training accuracy at or above this
FIT_LOSS = 0.05  # regression: a training loss below 5% of its first epoch's
UNDERFIT_ACCURACY = 0.85  # training accuracy below this at the end, train and validation close: the model did not fit

HEALTHY = "healthy"
# each verdict's fix in one line, drawn from what makes networks fail to learn
VERDICTS: dict[str, str] = {
    "diverged": "lower the learning rate (or add gradient clipping, warm-up)",
    "dead network": "lower the learning rate, or use leaky_relu/gelu with kaiming init: no gradient flows",
    "exploding gradients": "clip gradients (grad_clip) or lower the learning rate; normalization helps deep nets",
    "vanishing gradients": "use relu/gelu with kaiming init, or batch/layer normalization; avoid sigmoid in deep nets",
    "dying units": "lower the learning rate, or use leaky_relu/gelu; kaiming init keeps units alive",
    "stalled": "raise the learning rate or train longer, or check the initialization scale",
    "overfitting": "add weight decay or dropout, stop early, or use a smaller model",
    "underfitting": "train longer, raise the learning rate, or use a larger model",
    HEALTHY: "",
}


@dataclass(frozen=True)
class Verdict:
    kind: str  # a key of VERDICTS
    evidence: str  # the numbers behind it: which layers, which epoch, which threshold
    fix: str  # one line

    def to_attr(self) -> dict[str, str]:
        return {"verdict": self.kind, "evidence": self.evidence, "fix": self.fix}

    def text(self) -> str:
        return self.kind if self.kind == HEALTHY else f"{self.kind}: {self.evidence}; {self.fix}"


def _verdict(kind: str, evidence: str) -> Verdict:
    return Verdict(kind, evidence, VERDICTS[kind])


def _series(history: dict[str, list[Any]], key: str) -> list[float | None]:
    return [None if v is None else float(v) for v in history.get(key) or []]


def judge(history: dict[str, list[Any]], *, diverged: str | None = None, chance: float | None = None, cut: bool = False) -> Verdict:
    """The trial's verdict from its history (per epoch: train_loss, val_loss, train_accuracy,
    val_accuracy, grad_norm_first/last/min/max, dead_units, dead_layer) and, if it was pruned as
    diverged, that reason. `chance`: the accuracy of always answering the largest class. `cut`:
    the pruner stopped it, so it did not train long enough to be called underfit."""
    epochs = [int(e) for e in history.get("epoch") or []]
    if diverged:
        return _verdict("diverged", diverged.removeprefix("diverged: "))
    if not epochs:
        return _verdict(HEALTHY, "no epoch ran")
    train = _series(history, A.TRAIN_LOSS)
    finite = [(e, v) for e, v in zip(epochs, train) if v is not None]
    for e, v in finite:
        if not math.isfinite(v):
            return _verdict("diverged", f"train_loss={v} at epoch {e}")
    if len(finite) >= 2 and finite[0][1] > 0:
        first = finite[0][1]
        worst_e, worst = max(finite, key=lambda p: p[1])
        if worst > LOSS_BLOWUP * first:
            return _verdict("diverged", f"train_loss {worst:.3g} at epoch {worst_e}, over {LOSS_BLOWUP:g}x its first epoch's {first:.3g}")
    g_min, g_max = _series(history, "grad_norm_min"), _series(history, "grad_norm_max")
    g_first, g_last = _series(history, "grad_norm_first"), _series(history, "grad_norm_last")
    last = len(epochs) - 1
    train_acc = _series(history, A.TRAIN_ACCURACY)
    if train_acc and train_acc[last] is not None:  # classification: it fits when it gets (nearly) every training row right
        fitted = train_acc[last] >= FIT_ACCURACY
    else:
        fitted = len(finite) >= 2 and finite[-1][1] < FIT_LOSS * finite[0][1]
    if g_max and g_max[last] is not None and not fitted:
        if g_max[last] < DEAD_NORM:
            return _verdict("dead network", f"every layer's gradient norm below {DEAD_NORM:g} at epoch {epochs[last]} (largest {g_max[last]:.2g})")
        blown = [(e, v) for e, v in zip(epochs, g_max) if v is not None and (v > EXPLODING_NORM or not math.isfinite(v))]
        if blown:
            e, v = blown[0]
            return _verdict("exploding gradients", f"a layer's gradient norm {v:.3g} at epoch {e}, above {EXPLODING_NORM:g}")
        if g_max[last] < VANISHING_NORM:
            return _verdict("vanishing gradients", f"every layer's gradient norm below {VANISHING_NORM:g} at epoch {epochs[last]} (largest {g_max[last]:.2g})")
        if g_first and g_first[last] is not None and g_last[last] and g_first[last] < VANISHING_RATIO * g_last[last]:
            return _verdict(
                "vanishing gradients",
                f"first layer's gradient norm {g_first[last]:.2g} is {g_first[last] / g_last[last]:.1e} of the last layer's {g_last[last]:.2g} "
                f"at epoch {epochs[last]} (below {VANISHING_RATIO:g})",
            )
    dead = _series(history, "dead_units")
    if dead and dead[last] is not None and dead[last] > DYING_FRACTION:
        layer = (history.get("dead_layer") or [None] * len(epochs))[last]
        return _verdict("dying units", f"{dead[last]:.0%} of hidden layer {layer or '?'}'s units never active on a validation batch at epoch {epochs[last]} (over {DYING_FRACTION:.0%})")
    accuracy = _series(history, A.VAL_ACCURACY)
    at_chance = chance is not None and accuracy and accuracy[last] is not None and accuracy[last] <= chance + CHANCE_MARGIN
    if len(finite) >= 2 and finite[0][1] > 0:
        moved = abs(finite[0][1] - finite[-1][1]) / finite[0][1]
        if moved < STALL_FRACTION and (at_chance or chance is None):
            where = f", val_accuracy {accuracy[last]:.3f} at chance ({chance:.3f})" if at_chance else ""
            return _verdict("stalled", f"train_loss moved {moved:.2%} from epoch {finite[0][0]} to {finite[-1][0]} (under {STALL_FRACTION:.0%}){where}")
    val_loss = _series(history, A.VAL_LOSS)
    if accuracy and train_acc and train_acc[last] is not None and accuracy[last] is not None:
        gap = train_acc[last] - accuracy[last]
        best = min(range(len(val_loss)), key=lambda i: val_loss[i] if val_loss[i] is not None else math.inf) if val_loss else last
        if gap > OVERFIT_GAP and best < last:
            return _verdict(
                "overfitting",
                f"train_accuracy {train_acc[last]:.3f} vs val_accuracy {accuracy[last]:.3f} at epoch {epochs[last]} (gap {gap:.2f}, over {OVERFIT_GAP:g}); "
                f"val_loss rose from {val_loss[best]:.3g} at epoch {epochs[best]} to {val_loss[last]:.3g}",
            )
        if train_acc[last] < UNDERFIT_ACCURACY and gap <= OVERFIT_GAP and not at_chance and not cut:
            return _verdict("underfitting", f"train_accuracy {train_acc[last]:.3f} at epoch {epochs[last]} (under {UNDERFIT_ACCURACY:g}), val_accuracy {accuracy[last]:.3f}")
    if at_chance:
        return _verdict("stalled", f"val_accuracy {accuracy[last]:.3f} at chance ({chance:.3f}) at epoch {epochs[last]}")
    shown = [f"{len(epochs)} epochs", f"train_loss {finite[0][1]:.3g} -> {finite[-1][1]:.3g}" if finite else ""]
    if accuracy and accuracy[last] is not None:
        shown.append(f"val_accuracy {accuracy[last]:.3f}")
    if g_min and g_min[last] is not None and g_max[last] is not None:
        shown.append(f"gradient norms {g_min[last]:.2g}..{g_max[last]:.2g}")
    return _verdict(HEALTHY, ", ".join(x for x in shown if x))
