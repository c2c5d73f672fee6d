"""Why a trial did or did not learn, in words: one verdict per trial, with its evidence in numbers
and a fix in one line, read from what the trial recorded at each epoch (its losses, accuracies,
gradient norms and dead units), whether it completed, was pruned or failed.

The verdicts are the ways a network fails to learn: its loss diverged, no gradient flows (a dead
network), gradients vanished or exploded, ReLU units died, training stalled at chance, the model
overfit or underfit. The first that applies is the trial's, in that order (a diverged network
also has exploding gradients: the divergence is the news). This module imports no torch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuner import attrs as A

__all__ = ["HEALTHY", "VERDICTS", "Cause", "Causes", "Verdict", "causes", "judge"]

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


# Causes across a study: which parameter values go with which verdicts.
#
# Each statement is a condition on one parameter (a categorical value; a numeric parameter at one
# of its few values, or at or above / at or below a cut between its values) or on two together,
# and an outcome (a verdict, or a group of verdicts with the same causes: GROUPS). It is made when at least MIN_SUPPORT trials meet the condition, at least SHARE of them
# had the outcome, and the split is too lopsided to be chance: its one-sided Fisher exact p-value
# is below what the best of all statements reaches in 95% of studies whose verdicts are shuffled
# among the same trials (a permutation test over every condition and outcome at once, so trying
# many conditions does not make a cause out of noise). Of two parameters together, each must
# matter among the trials that meet the other. The counts behind each statement are shown.
MIN_TRIALS = 8  # fewer trials with a verdict than this: too few to say anything across them
MIN_SUPPORT = 3  # a statement is about at least this many trials
SHARE = 2 / 3  # of which at least this share had the outcome
FAMILY_ALPHA = 0.05  # the chance that shuffled verdicts produce any statement
N_SHUFFLES = 200  # shuffles the threshold is read from (seeded: the same study gives the same statements)
PAIR_ALPHA = 0.01  # two parameters together: each must matter among the trials that meet the other (Fisher p below this)
N_SHOWN = 6  # statements shown, the strongest first
FEW_VALUES = 6  # a numeric parameter with this many distinct values or fewer, each shared by trials, is also taken value by value
N_CUTS = 16  # cuts tried on one numeric parameter, evenly spread over its values
MAX_TRIALS = 1000  # a larger study is judged on an even sample of this many trials (said in the note)
# verdicts that share their causes and their fixes, also taken together as one outcome:
GROUPS = {
    "learned too little": ("stalled", "underfitting", "vanishing gradients"),  # too small a step or signal: lr, init, saturating activations
    "blew up or died": ("diverged", "exploding gradients", "dead network", "dying units"),  # too large a step: lr, init scale
}
_VERB = {
    "diverged": "diverged",
    "dead network": "died (no gradient flowed)",
    "exploding gradients": "had exploding gradients",
    "vanishing gradients": "had vanishing gradients",
    "dying units": "had dying units",
    "stalled": "stalled",
    "overfitting": "overfit",
    "underfitting": "underfit",
    **{group: group for group in GROUPS},
    HEALTHY: "were healthy",
}


@dataclass(frozen=True)
class Cause:
    condition: str  # "activation=sigmoid and n_layers>=5"
    outcome: str  # a verdict, or a group of them (GROUPS)
    n: int  # trials that meet the condition
    k: int  # of which had the outcome
    others: int  # trials that do not meet it
    others_k: int  # of which had the outcome
    kinds: dict[str, int]  # the verdicts among the k (for a group of verdicts, several)
    p: float  # one-sided Fisher exact p-value

    def text(self) -> str:
        share = f"all {self.n} trials" if self.k == self.n else f"{self.k} of {self.n} trials"
        kinds = f" ({', '.join(f'{kind} {c}' for kind, c in self.kinds.items())})" if self.outcome in GROUPS else ""
        return f"{share} with {self.condition} {_VERB[self.outcome]}{kinds}; {self.others_k} of the {self.others} others {'were' if self.outcome == HEALTHY else 'did'}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text(), "condition": self.condition, "outcome": self.outcome, "n": self.n, "k": self.k,
            "others": self.others, "others_k": self.others_k, "kinds": self.kinds, "p": self.p,
        }


@dataclass(frozen=True)
class Causes:
    n_trials: int  # trials judged
    causes: list[Cause]
    threshold: float | None  # the p-value a statement had to beat (None: nothing to test)
    note: str  # what was found, or why nothing was

    def to_dict(self) -> dict[str, Any]:
        return {"n_trials": self.n_trials, "causes": [c.to_dict() for c in self.causes], "threshold": self.threshold, "note": self.note}


Part = tuple[str, str, Any]  # (parameter, "=" or ">=" or "<=", value), or (parameter, "in", (low, high))


def conditions(params: list[dict[str, Any]]) -> tuple[list[Part], np.ndarray]:
    """The one-parameter conditions statements are made of, and which trials meet each (a row of
    booleans each): every value of a categorical parameter or of a numeric one with few values,
    and a numeric one at or above / at or below cuts between its values (each cut rounded to 2
    digits, which is what the condition then says). The same trials said two ways: the first."""
    parts: list[Part] = []
    rows: list[np.ndarray] = []
    seen: set[bytes] = set()
    for name in sorted({k for p in params for k in p}):
        values = [p.get(name) for p in params]
        distinct = {v for v in values if v is not None}
        if len(distinct) < 2:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
        made: list[tuple[str, Any, np.ndarray]] = []
        if _value_by_value(numeric, len(distinct), len([v for v in values if v is not None])):
            made += [("=", v, np.array([x == v for x in values])) for v in sorted(distinct, key=str)]
        if numeric and len(distinct) > 2:
            x = np.array([np.nan if v is None else float(v) for v in values])
            ordered = np.sort(x[~np.isnan(x)])
            inner = ordered[MIN_SUPPORT - 1 : len(ordered) - MIN_SUPPORT + 1]
            picked = inner if len(inner) <= N_CUTS else inner[np.linspace(0, len(inner) - 1, N_CUTS).round().astype(int)]
            # each cut at a trial's value, rounded to 2 digits away from the trials it bounds, so it keeps that trial
            if all(isinstance(v, int) for v in distinct):  # an int's cuts are its own values
                lows = highs = sorted({int(c) for c in picked})
            else:
                lows, highs = sorted({_round(float(c), up=False) for c in picked}), sorted({_round(float(c), up=True) for c in picked})
            made += [(">=", cut, x >= cut) for cut in lows] + [("<=", cut, x <= cut) for cut in highs]  # NaN (a trial without it) meets neither
            made += [("in", (lo, hi), (x >= lo) & (x <= hi)) for lo in lows for hi in highs if lo < hi]  # a range between two cuts
        for op, value, members in made:
            key = np.packbits(members).tobytes()
            if MIN_SUPPORT <= members.sum() < len(params) and key not in seen:
                seen.add(key)
                parts.append((name, op, value))
                rows.append(members)
    return parts, np.array(rows, dtype=bool).reshape(len(rows), len(params))


def _value_by_value(numeric: bool, n_distinct: int, n_trials: int) -> bool:
    """Whether a parameter is taken value by value: a categorical one, or a numeric one with few
    values each shared by trials (an int's range, a grid); not a float sampled from a range."""
    return not numeric or (n_distinct <= FEW_VALUES and n_trials >= 2 * n_distinct)


def _round(v: float, *, up: bool) -> float:
    """v to 2 significant digits, rounded up or down."""
    if v == 0 or not math.isfinite(v):
        return v
    scale = 10.0 ** (math.floor(math.log10(abs(v))) - 1)
    r = (math.ceil if up else math.floor)(v / scale - (1e-9 if up else -1e-9)) * scale
    return float(f"{r:.2g}")


def _part_text(part: Part) -> str:
    name, op, value = part
    return f"{_shown(value[0])}<={name}<={_shown(value[1])}" if op == "in" else f"{name}{op}{_shown(value)}"


def _related(a: str, b: str) -> bool:
    """The same outcome, or a verdict and its group."""
    return a == b or a in GROUPS.get(b, ()) or b in GROUPS.get(a, ())


def _shown(v: Any) -> str:
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e6 else f"{v:.2g}"
    return str(v)


def _tail(total: np.ndarray | int, positives: np.ndarray, n: np.ndarray, k: np.ndarray) -> np.ndarray:
    """One-sided Fisher exact p-values over arrays of cases: the chance that n trials drawn from
    `total`, of which `positives` had the outcome, include k or more of them (the hypergeometric
    tail). Exact where k is past the mode (an enriched condition, whose tail's terms shrink at
    once: TAIL_TERMS of them hold all that counts); 1.0 where k is below the expected count (no
    statement is made there)."""
    total = np.broadcast_to(np.asarray(total), np.shape(k))
    log_fact = _log_factorials(int(total.max(initial=0)))
    top = np.minimum(n, positives)
    base = log_fact[total] - log_fact[n] - log_fact[total - n]
    p = np.zeros(np.shape(k))
    for d in range(TAIL_TERMS):
        j = k + d
        valid = (j <= top) & (n - j <= total - positives)
        if not valid.any():
            break
        j, m = np.where(valid, j, 0), np.where(valid, n - j, 0)
        log_term = (log_fact[positives] - log_fact[j] - log_fact[np.where(valid, positives - j, 0)]
                    + log_fact[total - positives] - log_fact[m] - log_fact[np.where(valid, total - positives - m, 0)] - base)
        p += np.exp(np.where(valid, log_term, -np.inf))
    return np.where(k * total < n * positives, 1.0, np.minimum(p, 1.0))


TAIL_TERMS = 40


@functools.lru_cache(maxsize=8)
def _log_factorials(total: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, total + 1)))])


class _Table:
    """Every condition (one parameter, or two together) against every outcome: the counts that
    decide a statement, computed for the real verdicts and for each shuffle of them."""

    def __init__(self, singles: np.ndarray, pairs: list[tuple[int, int]]) -> None:
        self.pairs = np.array(pairs, dtype=int).reshape(len(pairs), 2)
        both = singles[self.pairs[:, 0]] & singles[self.pairs[:, 1]]
        self.members = np.vstack([singles, both]).astype(np.float32)
        self.n = self.members.sum(1).astype(int)
        self.n_singles = len(singles)
        self.total = singles.shape[1]

    def statements(self, outcomes: np.ndarray) -> list[tuple[float, int, int]]:
        """(p, condition, outcome) of each statement the rules allow for these outcomes (rows of
        booleans over the trials)."""
        k = (self.members @ outcomes.T.astype(np.float32)).round().astype(int)  # conditions x outcomes
        positives = outcomes.sum(1).astype(int)
        c, o = np.nonzero((self.n[:, None] >= MIN_SUPPORT) & (k >= SHARE * self.n[:, None]))
        pair = c >= self.n_singles
        if pair.any():  # two parameters: each must matter among the trials that meet the other
            pc, po = c[pair], o[pair]
            keep = np.ones(len(pc), bool)
            for side in (0, 1):
                g = self.pairs[pc - self.n_singles, side]
                keep &= _tail(self.n[g], k[g, po], self.n[pc], k[pc, po]) < PAIR_ALPHA
            c, o = np.concatenate([c[~pair], pc[keep]]), np.concatenate([o[~pair], po[keep]])
        p = _tail(self.total, positives[o], self.n[c], k[c, o])
        return list(zip(p.tolist(), c.tolist(), o.tolist()))


def _outcomes(verdicts: list[str]) -> tuple[list[str], np.ndarray]:
    """The outcomes a statement may be about (rows of booleans over the trials): each verdict but
    healthy, and each group of verdicts (GROUPS) where more than one of its kinds came up, met by
    MIN_SUPPORT trials or more."""
    labels = np.array(verdicts)
    names = list(VERDICTS)  # healthy too: where the trials that learned are is news as well
    rows = [labels == v for v in names]
    for group, kinds in GROUPS.items():
        if len(set(kinds) & set(verdicts)) >= 2:
            names.append(group)
            rows.append(np.isin(labels, kinds))
    kept = [i for i, row in enumerate(rows) if row.sum() >= MIN_SUPPORT]
    return [names[i] for i in kept], np.array([rows[i] for i in kept], dtype=bool).reshape(len(kept), len(verdicts))


def causes(trials: list[tuple[dict[str, Any], str]]) -> Causes:
    """Which parameter values go with which verdicts across a study: (params, verdict) for each
    trial judged, in the order they ran. See the rules above."""
    n_study = len(trials)
    sampled = n_study > MAX_TRIALS
    if sampled:
        trials = [trials[i] for i in np.linspace(0, n_study - 1, MAX_TRIALS).round().astype(int)]
    total = len(trials)
    if total < MIN_TRIALS:
        return Causes(total, [], None, f"{total} trials judged: too few to name causes across them ({MIN_TRIALS} needed)")
    verdicts = [v for _, v in trials]
    if set(verdicts) == {HEALTHY}:
        return Causes(total, [], None, f"all {total} trials were healthy: no failure to explain")
    names, outcomes = _outcomes(verdicts)
    parts, singles = conditions([p for p, _ in trials])
    pairs = [  # two parameters, each at a value or past a cut (a range is one statement's worth)
        (a, b) for a in range(len(parts)) for b in range(a + 1, len(parts)) if parts[a][0] != parts[b][0] and "in" not in (parts[a][1], parts[b][1])
    ]
    pairs = [(a, b) for a, b in pairs if (singles[a] & singles[b]).sum() >= MIN_SUPPORT]
    table = _Table(singles, pairs)
    rng = np.random.default_rng(0)
    null = []
    for _ in range(N_SHUFFLES):
        shuffled = outcomes[:, rng.permutation(total)]
        null.append(min((p for p, _, _ in table.statements(shuffled)), default=1.0))
    threshold = float(np.sort(null)[int(FAMILY_ALPHA * N_SHUFFLES)])

    def words(c: int) -> tuple[Part, ...]:
        return (parts[c],) if c < len(parts) else tuple(parts[i] for i in pairs[c - len(parts)])

    found = sorted((s for s in table.statements(outcomes) if s[0] < threshold), key=lambda s: (s[0], len(words(s[1])), -table.n[s[1]]))
    kept: list[tuple[float, int, int]] = []
    for p, c, o in found:
        said = {name for name, _, _ in words(c)}
        covered = table.members[c].astype(bool) & outcomes[o]
        if any(
            _related(names[o], names[ko])
            and ({name for name, _, _ in words(kc)} <= said or (covered == (table.members[kc].astype(bool) & outcomes[ko])).all())
            for _, kc, ko in kept
        ):
            continue  # says no more than a stronger statement already made
        kept.append((p, c, o))
    made = []
    for p, c, o in kept[:N_SHOWN]:
        inside = table.members[c].astype(bool)
        kinds: dict[str, int] = {}
        for v in np.array(verdicts)[inside & outcomes[o]]:
            kinds[str(v)] = kinds.get(str(v), 0) + 1
        text = " and ".join(_part_text(part) for part in words(c))
        made.append(Cause(text, names[o], int(table.n[c]), int((inside & outcomes[o]).sum()), total - int(table.n[c]),
                          int((~inside & outcomes[o]).sum()), dict(sorted(kinds.items(), key=lambda kv: -kv[1])), p))
    tried = f"{len(table.n) * len(names)} statements tried on {total} trials" + (f" (an even sample of the study's {n_study})" if sampled else "")
    note = f"{len(made)} found, {tried}" if made else f"no parameter value goes with a failure more often than chance would give ({tried})"
    return Causes(total, made, threshold, note)


N_BINS = 4  # a numeric parameter with many values is shown in this many bins of about as many trials each


def by_parameter(trials: list[tuple[dict[str, Any], str]]) -> dict[str, list[tuple[str, dict[str, int]]]]:
    """Verdict counts for each value of each parameter that varies: a categorical parameter's
    values (and a numeric one's, where it has few), or a numeric one's range in N_BINS bins by
    quantile ("0.001 to 0.02"). What the report draws as health by parameter."""
    shown: dict[str, list[tuple[str, dict[str, int]]]] = {}
    for name in sorted({k for p, _ in trials for k in p}):
        pairs = [(p[name], v) for p, v in trials if p.get(name) is not None]
        distinct = {x for x, _ in pairs}
        if len(distinct) < 2:
            continue
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in distinct)
        if not _value_by_value(numeric, len(distinct), len(pairs)):
            ordered = sorted(distinct)
            edges = sorted({ordered[round(i * (len(ordered) - 1) / N_BINS)] for i in range(N_BINS + 1)})
            bins = [(lo, hi) for lo, hi in zip(edges, edges[1:])]
            rows = []
            for i, (lo, hi) in enumerate(bins):
                inside = [v for x, v in pairs if (lo <= x if i == 0 else lo < x) and x <= hi]
                rows.append((f"{_shown(float(lo))} to {_shown(float(hi))}", _count_verdicts(inside)))
        else:
            rows = [(_shown(x), _count_verdicts([v for y, v in pairs if y == x])) for x in sorted(distinct, key=lambda x: (str(type(x)), x))]
        shown[name] = rows
    return shown


def _count_verdicts(verdicts: list[str]) -> dict[str, int]:
    return {kind: verdicts.count(kind) for kind in VERDICTS if kind in verdicts}
