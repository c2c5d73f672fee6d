"""How the study commands render what the library returns: tables fitted to the terminal and
the small phrases they share."""

from __future__ import annotations

from typing import Any

from tuner.cli.common import fmt_value


def describe_running(r: dict[str, Any]) -> str:
    """trial 3 on host:pid, last beat 4s ago, lost in 26s if silent."""
    beat = "no heartbeat yet" if r["heartbeat_age_s"] is None else f"last beat {r['heartbeat_age_s']:.0f}s ago"
    if r["worker_gone"]:
        lost = "its process is gone: freed at the next look"
    elif r["lost_in_s"] is None:
        lost = "no start time: cannot tell when it is lost"
    else:
        lost = f"lost in {r['lost_in_s']:.0f}s if silent" if r["lost_in_s"] > 0 else "lost at the next look"
    return f"trial {r['number']} on {r['worker'] or 'an unknown worker'}, {beat}, {lost}"


def column_width(header: str, cells: list[str]) -> int:
    return max([len(header), *map(len, cells)])


def fitting(columns: dict[str, list[str]], room: int) -> list[str]:
    """The leading columns, in order, that fit in `room` characters (each with its padding and
    border): a table drops the columns a narrow terminal has no room for instead of cutting them."""
    shown: list[str] = []
    for header, cells in columns.items():
        room -= column_width(header, cells) + 3
        if room < 0:
            break
        shown.append(header)
    return shown


def seconds(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else fmt_value(value)


def short(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e12:
        return str(int(value))  # a count stored as a float (a model's parameters): every digit
    return f"{value:.4g}" if isinstance(value, float) else fmt_value(value)


def values_text(trial: Any, names: list[str]) -> str:
    """A complete trial's metrics, `val_accuracy=0.9722 params=4810`, and any constraint it misses."""
    from tuner import attrs as A

    shown = " ".join(f"{name}={short(v)}" for name, v in zip(names, trial.values or []))
    missed = trial.user_attrs.get(A.VIOLATED)
    return shown + (f" (infeasible: misses {', '.join(missed)})" if missed else "")


def verdict_of(attrs: dict[str, Any]) -> str | None:
    """A trial's health verdict (tuner.health), None where it has none (recorded before verdicts were)."""
    from tuner import attrs as A

    health = attrs.get(A.HEALTH)
    return health.get("verdict") if isinstance(health, dict) else None


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
