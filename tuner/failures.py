"""When a run's failures mean the study is broken, not unlucky: a run of consecutive failures of
one kind, or too many failures in all, stops it with the first failure quoted and what to fix.

Failures are compared by kind, not by wording: the recorded kind (an exception's class, a
command's exit code) and the reason with the trial's own values taken out (its parameter values,
numbers, paths), so that `unrecognized arguments: --lr 0.00123` and `... --lr 0.0451` are one
failure, the one a wrong flag gives at every trial.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial

from tuner import attrs as A

__all__ = ["DEFAULT_IN_A_ROW", "FailureStop", "default_max_failures", "failure_kind", "fix_hint"]

DEFAULT_IN_A_ROW = 5  # consecutive failures of one kind that stop a run
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_QUOTED_PATH = re.compile(r"(?:/[^\s'\"]+)+")


def default_max_failures(budget: int) -> int:
    """Failures in all that stop a run when --max-failures is not given: a quarter of the budget,
    at least 10 (a study whose large configurations run out of memory fails often, and that is
    the search's business; a broken study fails every time, and the kind rule stops it first)."""
    return max(10, budget // 4)


def failure_kind(trial: FrozenTrial) -> tuple[str, str]:
    """What makes two failures the same: the recorded kind (with a command's exit code) and the
    reason less the trial's parameter values, numbers and paths."""
    attrs = trial.user_attrs
    kind = A.fail_kind(attrs)
    if A.EXIT_STATUS in attrs:
        kind = f"{kind} {attrs[A.EXIT_STATUS]}"
    return kind, _generic(A.fail_reason(attrs), trial.params)


def _generic(reason: str, params: Mapping[str, Any]) -> str:
    texts = {str(v) for v in params.values() if not isinstance(v, bool) and len(str(v)) > 1}
    texts |= {repr(v) for v in params.values() if isinstance(v, float)}
    for text in sorted(texts, key=len, reverse=True):
        reason = re.sub(rf"(?<![\w.]){re.escape(text)}(?![\w])", "<value>", reason)
    reason = _QUOTED_PATH.sub("<path>", reason)
    # a reason cut to its stored length may end mid-value: the start says what went wrong
    return _NUMBER.sub("#", reason)[:200]


def fix_hint(trial: FrozenTrial) -> str:
    """What to do about this failure, as far as its kind tells."""
    attrs = trial.user_attrs
    kind, reason = A.fail_kind(attrs), A.fail_reason(attrs)
    if kind == A.EXIT_CODE and (attrs.get(A.EXIT_STATUS) == 2 or re.search(r"unrecognized argument|usage:|no such option|error: argument", reason)):
        return "the script refused its command line: compare --command with the script's --help"
    if kind == A.NO_METRIC:
        return "make the script report the metric, or read it from its output with --metric-pattern"
    if kind == A.TIMED_OUT:
        return "give trials longer with --trial-timeout, or make them shorter"
    if "ModuleNotFoundError" in reason or kind == "ModuleNotFoundError":
        return "install the missing package where the trial runs, or run the script with its own interpreter"
    return "fix the cause"


@dataclass
class FailureStop:
    """Watches a run's closed trials and says when its failures should stop it."""

    study: str
    in_a_row: int = DEFAULT_IN_A_ROW  # consecutive failures of one kind that stop the run
    max_failures: int = 10  # failures in all, in this run, that stop it
    _streak: list[FrozenTrial] = field(default_factory=list)
    _first: FrozenTrial | None = None
    n_failed: int = 0

    def success(self) -> None:
        self._streak.clear()

    def failed(self, trial: FrozenTrial) -> str | None:
        """Count a failed trial; the one-line reason to stop the run, or None to go on."""
        self.n_failed += 1
        self._first = self._first or trial
        if self._streak and failure_kind(self._streak[0]) != failure_kind(trial):
            self._streak.clear()
        self._streak.append(trial)
        resume = f"then `tuner study resume {self.study}`"
        if len(self._streak) >= self.in_a_row:
            first = self._streak[0]
            return (
                f"study '{self.study}' stopped: {len(self._streak)} trials in a row failed the same way; trial {first.number}: "
                f"{A.fail_reason(first.user_attrs)}; {fix_hint(first)}, {resume} (--max-streak {self.in_a_row})"
            )
        if self.n_failed >= self.max_failures:
            first = self._first
            return (
                f"study '{self.study}' stopped: {self.n_failed} trials failed in this run (--max-failures {self.max_failures}); "
                f"the first, trial {first.number}: {A.fail_reason(first.user_attrs)}; {fix_hint(first)}, {resume}"
            )
        return None
