"""`tuner command ...`: helpers for studies whose trials run a script (--command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tuner.cli.common import Format, FormatOpt, console, print_json
from tuner.cli.options import MetricPatternOpt, StepPatternOpt
from tuner.errors import SpecError

app = typer.Typer(help="Studies whose trials run your script (--command).", no_args_is_help=True)


@app.command("check-metrics")
def check_metrics(
    log: Annotated[Path, typer.Argument(metavar="LOG", exists=True, dir_okay=False, help="A saved output of the script (stdout and stderr).")],
    metric_pattern: MetricPatternOpt = None,
    step_pattern: StepPatternOpt = None,
    metric: Annotated[Optional[str], typer.Option("--metric", metavar="NAME", help="The study's metric: say whether the log gives it.")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Show, line by line, the metrics a study would read from a saved log: with the patterns
    given, and the `name=value` tokens tuner reads anyway."""
    from tuner.command import parse_stdout_line
    from tuner.patterns import OutputReader

    reader = OutputReader(metric_pattern or [], step_pattern)
    found: list[dict[str, Any]] = []
    with log.open(encoding="utf-8", errors="replace", newline="") as f:
        for number, raw in enumerate(f, start=1):
            text = raw.rstrip("\n").rstrip("\r").rsplit("\r", 1)[-1]  # a progress bar's last state
            try:
                matched = reader.line(text)
            except ValueError as e:
                raise SpecError(f"{log}, line {number}: {e}") from None
            tokens = parse_stdout_line(text) or {}
            record = {**tokens, **(matched or {})}
            if record:
                found.append({"line": number, "record": record})
    names = sorted({k for r in found for k in r["record"] if k not in ("step", "epoch")})
    unmatched = [p.text for p in reader.patterns if not any(p.name in r["record"] for r in found)]
    if fmt == Format.json:
        print_json({"log": str(log), "reads": found, "metrics": names, "unmatched_patterns": unmatched})
    else:
        for r in found:
            shown = sorted(r["record"].items(), key=lambda kv: kv[0] not in ("step", "epoch"))  # the step first
            console.print(f"line {r['line']}: " + " ".join(f"{k}={v:g}" for k, v in shown), markup=False, highlight=False)
        steps = [r["record"]["step"] for r in found if "step" in r["record"]]
        at = f" at steps {steps[0]:g} to {steps[-1]:g}" if steps else ""
        console.print(f"{len(found)} of the log's lines give metrics: {', '.join(names) or 'none'}{at}", markup=False, highlight=False)
    if unmatched:
        raise SpecError(f"{log}: no line matched the metric pattern '{unmatched[0]}'; compare it with the lines above (a regex: escape ( ) [ ] . + * ?)")
    if metric is not None and metric not in names:
        import difflib

        close = difflib.get_close_matches(metric, names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SpecError(f"{log}: no line gives the metric {metric}; the log gives {', '.join(names) or 'no metric'}{hint}")
    if not found:
        raise SpecError(f"{log}: no line gives a metric; add --metric-pattern NAME=REGEX (e.g. 'test_loss=test loss: (\\S+)')")
