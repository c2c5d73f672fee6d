"""The `tuner` command: Typer wiring only. Each command parses options, calls one function, prints.

Errors a person can fix (TunerError) are caught once, in `main`: one line on stderr and exit 1;
the traceback only with `tuner --debug ...`. Tracebacks never show locals (URLs carry passwords).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tuner.cli import bench as bench_cli
from tuner.cli import command as command_cli
from tuner.cli import launch as launch_cli
from tuner.cli import report as report_cli
from tuner.cli import space as space_cli
from tuner.cli import study as study_cli
from tuner.cli.common import Format, FormatOpt, StorageOpt, console_err, print_json
from tuner.errors import TunerError
from tuner.urls import DEFAULT_ARTIFACTS

try:  # typer vendors click from 0.2x; older ones use click itself
    from typer._click import exceptions as _click
except ImportError:  # pragma: no cover
    from click import exceptions as _click  # type: ignore[no-redef]

__all__ = ["app", "main"]

app = typer.Typer(
    name="tuner",
    help="Hyperparameter tuning for PyTorch: search spaces, Optuna studies in SQL, live dashboard, resume anywhere.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(space_cli.app, name="space")
app.add_typer(study_cli.app, name="study")
app.add_typer(launch_cli.app, name="launch")
app.add_typer(command_cli.app, name="command")


def _print_version(value: bool) -> None:
    if value:
        from tuner import __version__

        typer.echo(f"tuner {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print tuner's version and exit.")
    ] = False,
) -> None:
    """tuner: define a search space, run a study, read the best configuration."""


@app.command()
def doctor(storage: StorageOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Versions, devices, and which fast paths under torch and Optuna are on (and why not)."""
    from tuner.doctor import diagnose

    d = diagnose(storage)
    if fmt == Format.json:
        print_json(d)
        return
    typer.echo("versions: " + ", ".join(f"{k} {v}" for k, v in d["versions"].items()))
    typer.echo(f"devices: {d['devices']}")
    typer.echo(f"storage: {d['storage']}")
    from tuner._compat import FastPath

    for p in d["fast_paths"]:
        typer.echo("  " + FastPath(**p).line())


app.command("worker")(study_cli.worker)
app.command("report")(report_cli.report)
app.command("best")(study_cli.best)  # `tuner best NAME --retrain`, as short as it is common
app.command("bench")(bench_cli.bench)


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you ask for another.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8080,
    artifacts: Annotated[
        Path,
        typer.Option(file_okay=False, help="Folder of the artifact store (files attached to trials and studies); created if missing."),
    ] = DEFAULT_ARTIFACTS,
    window: Annotated[
        int,
        typer.Option(
            min=0,
            help="A study of more trials is shown as its latest this many and its best before them (best trial, Pareto front); 0 shows every trial.",
        ),
    ] = 2_000,
) -> None:
    """Serve optuna-dashboard on the study storage (live while workers write to it), with its artifacts."""
    from tuner.dashboard import serve

    serve(storage, host=host, port=port, artifacts=artifacts, window=window)


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    if debug:  # anywhere on the line, not only before the subcommand: the root option takes it
        sys.argv = [sys.argv[0], "--debug", *(a for a in sys.argv[1:] if a != "--debug")]
    try:
        code = app(standalone_mode=False, prog_name="tuner")
    except _click.NoArgsIsHelpError:
        sys.exit(0)  # the help was shown: asking for it is not an error
    except _click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        console_err.print(f"error: {e.format_message()}{hint}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except _click.ClickException as e:  # e.g. a file option that cannot be opened
        console_err.print(f"error: {e.format_message()}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:  # a prompt closed by Ctrl-C or end of input
        console_err.print("aborted: nothing changed", highlight=False)
        sys.exit(1)
    except TunerError as e:
        if debug:
            raise
        console_err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        console_err.print("interrupted", highlight=False)
        sys.exit(130)
    except Exception as e:  # a bug of ours: still one line, with the way to the traceback
        if debug:
            raise
        console_err.print(
            f"error: unexpected {e.__class__.__name__}: {e} (run `tuner --debug ...` for the traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
