"""Metrics read from a script's own output with regular expressions, so that a script that prints
`step 500 train loss: 2.41 test loss: 2.35` is tuned unchanged.

A metric pattern is `NAME=REGEX`: where REGEX matches a line (of stdout or stderr), the metric
NAME takes the number its group captured. The group is the pattern's only capturing group, or the
one named `value`; a group named `step` gives the step the value was reached at. A step pattern
(`--step-pattern 'step (\\d+)'`) gives the step from a line of its own: the last one seen holds
until the next. Without either, reports are numbered 1, 2, 3...

Patterns are checked where they are given (one line for a bad regex, no group, a group that never
matches a number), and `tuner command check-metrics LOG` shows what they read from a saved log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tuner.errors import SpecError

__all__ = ["METRIC_NAME", "MetricPattern", "OutputReader", "parse_metric_pattern", "parse_step_pattern", "read_number"]

METRIC_NAME = re.compile(r"[^\W\d][\w.\-/]*")  # what every reader accepts as a metric's name
# numbers a value group must be able to match: a group matching none of them reads no metric
_NUMBERS = ("0", "7", "42", "2.41", "0.5", ".5", "-1.5", "1e-3", "3.2E+05", "72.60", "1,234")


@dataclass(frozen=True)
class MetricPattern:
    name: str
    regex: re.Pattern[str]
    value_group: int | str  # which group holds the value
    has_step: bool  # a group named `step` gives the step

    @property
    def text(self) -> str:
        return f"{self.name}={self.regex.pattern}"


def read_number(text: str) -> float | None:
    """A captured value as a number: `2.41`, `72.60%`, `1,234`, `nan`; None if it is not one."""
    cleaned = text.strip().rstrip(",;:").removesuffix("%").replace(",", "")
    try:
        return float(cleaned)
    except ValueError:
        return None


def _compile(regex: str, what: str, fix: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as e:
        at = f" at position {e.pos}" if e.pos is not None else ""
        raise SpecError(f"{what}: '{regex}' is not a valid regular expression: {e.msg}{at}; {fix}") from None


def _group_sources(regex: str) -> list[str]:
    """The text of each capturing group of `regex`, in the order of their numbers (a small scan:
    escapes, character classes, (?:...), (?P<name>...), lookarounds)."""
    sources: list[str] = []
    stack: list[tuple[int, int | None]] = []  # (where the group's body starts, its index in sources or None)
    i, in_class = 0, False
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]" or regex[i - 1] == "["
            i += 1
            continue
        if c == "[":
            in_class = True
            if regex[i + 1 : i + 2] == "^":
                i += 1
        elif c == "(":
            if regex.startswith("(?P<", i) or regex.startswith("(?<", i) and regex[i + 3 : i + 4] not in ("=", "!"):
                close = regex.index(">", i)
                sources.append("")
                stack.append((close + 1, len(sources) - 1))
                i = close
            elif regex.startswith("(?", i):
                stack.append((i + 2, None))
            else:
                sources.append("")
                stack.append((i + 1, len(sources) - 1))
        elif c == ")" and stack:
            start, index = stack.pop()
            if index is not None:
                sources[index] = regex[start:i]
        i += 1
    return sources


def _check_numeric(regex: re.Pattern[str], group: int | str, what: str) -> None:
    """Refuse a value or step group that can match none of a few ordinary numbers."""
    index = regex.groupindex[group] if isinstance(group, str) else group
    sources = _group_sources(regex.pattern)
    if len(sources) != regex.groups:  # a construct the scan does not know: leave it to the log check
        return
    try:
        body = re.compile(sources[index - 1])
    except re.error:
        return
    if not any(body.fullmatch(n) for n in _NUMBERS):
        raise SpecError(
            f"{what}: its group ({sources[index - 1]}) never matches a number (tried 2.41, 1e-3, 72.60, ...); "
            r"capture the number itself, e.g. ([-+.\deE]+) or (\S+)"
        )


def parse_metric_pattern(text: str) -> MetricPattern:
    """`NAME=REGEX` checked: a valid name and regex, one value group (or one named `value`), an
    optional `step` group, each able to match a number."""
    if not isinstance(text, str):
        raise SpecError(f"metric pattern {text!r} must be text: NAME=REGEX, e.g. 'test_loss=test loss: (\\S+)'")
    name, sep, regex = text.partition("=")
    what = f"metric pattern '{text}'"
    example = r"e.g. --metric-pattern 'test_loss=test loss: (\S+)'"
    if not sep or not regex:
        raise SpecError(f"{what} needs NAME=REGEX, {example}")
    if not METRIC_NAME.fullmatch(name):
        raise SpecError(f"{what}: {name!r} is not a metric name (a letter first, then letters, digits, '_', '.', '-', '/'); {example}")
    compiled = _compile(regex, what, "escape ( ) [ ] . + * ? with a backslash where you mean the character itself")
    names = compiled.groupindex
    if "value" in names:
        value: int | str = "value"
    else:
        others = [i for i in range(1, compiled.groups + 1) if i != names.get("step")]
        if not others:
            raise SpecError(f"{what} has no group to capture the value; put ( ) around the number, {example}")
        if len(others) > 1:
            raise SpecError(
                f"{what} has {len(others)} capturing groups; name the value's (?P<value>...) or make the others non-capturing (?:...)"
            )
        value = others[0]
    _check_numeric(compiled, value, what)
    if "step" in names:
        _check_numeric(compiled, "step", what)
    return MetricPattern(name=name, regex=compiled, value_group=value, has_step="step" in names)


def parse_step_pattern(regex: str) -> re.Pattern[str]:
    what = f"step pattern '{regex}'"
    compiled = _compile(regex, what, "escape ( ) [ ] . + * ? with a backslash where you mean the character itself")
    if compiled.groups != 1:
        raise SpecError(f"{what} needs exactly one capturing group, around the step's number (it has {compiled.groups}), e.g. 'step (\\d+)'")
    _check_numeric(compiled, 1, what)
    return compiled


class OutputReader:
    """Reads metrics records from a script's output lines with the study's patterns."""

    def __init__(self, patterns: Iterable[str], step_pattern: str | None = None) -> None:
        self.patterns = [parse_metric_pattern(p) for p in patterns]
        self.step = parse_step_pattern(step_pattern) if step_pattern else None
        self._step: float | None = None

    def __bool__(self) -> bool:
        return bool(self.patterns or self.step)

    def line(self, text: str) -> dict[str, float] | None:
        """The record this line gives (metric values, and `step` when one is known), or None.
        Raises ValueError, saying which pattern, when a group captured something not a number."""
        if self.step is not None and (m := self.step.search(text)):
            self._step = self._number(m.group(1), f"step pattern '{self.step.pattern}'", text)
        record: dict[str, float] = {}
        step = self._step
        for p in self.patterns:
            m = p.regex.search(text)
            if m is None:
                continue
            record[p.name] = self._number(m.group(p.value_group), f"metric pattern '{p.text}'", text)
            if p.has_step and m.group("step") is not None:
                step = self._number(m.group("step"), f"metric pattern '{p.text}'", text)
        if record and step is not None:
            record["step"] = step
        return record or None

    @staticmethod
    def _number(captured: str | None, what: str, line: str) -> float:
        value = read_number(captured or "")
        if value is None:
            shown = line.strip()
            shown = shown if len(shown) <= 120 else shown[:119] + "…"
            raise ValueError(f"{what} captured {captured!r}, not a number, from the line {shown!r}; narrow its group to the number")
        return value
