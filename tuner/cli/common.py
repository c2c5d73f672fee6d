"""What the command modules share: consoles, the --storage and --format options, JSON output."""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
console_err = Console(stderr=True, highlight=False, soft_wrap=True)


class Format(str, enum.Enum):
    table = "table"
    json = "json"


StorageOpt = Annotated[
    Optional[str],
    typer.Option(
        "--storage",
        metavar="URL",
        envvar="TUNER_STORAGE",
        show_envvar=True,
        help="SQLAlchemy URL of the study storage \\[default: sqlite:///studies/tuner.db].",
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", help="table for people, json for scripts.")]


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
