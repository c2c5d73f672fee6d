"""`tuner report NAME --out DIR`: figures and a self-contained HTML page for a study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuner.cli.common import Format, FormatOpt, StorageOpt, console, print_json
from tuner.urls import resolve_url

__all__ = ["report"]


def report(
    name: Annotated[str, typer.Argument(help="The study's name in storage.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.html and the PNG figures; created if missing.")],
    storage: StorageOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Write a study's report (HTML page and PNG figures) and print its summary."""
    from tuner.reports import build_report, summary_text
    from tuner.study import open_study

    written = build_report(open_study(name, resolve_url(storage)), out)
    if fmt == Format.json:
        print_json(written.as_dict())
        return
    console.print(summary_text(written), markup=False)
