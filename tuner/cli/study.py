"""`tuner study ...`: the study commands, registered in the order `--help` lists them. Each
lives with its concern: admin (create, delete, release), running (run, resume, and `tuner
worker`), inspecting (list, show, best, trials, export); options.py holds the options they share
and render.py the tables they print."""

from __future__ import annotations

import typer

from tuner.cli import admin, inspecting, running

__all__ = ["app", "best", "worker"]

app = typer.Typer(help="Studies: run a search and read its results.", no_args_is_help=True)
app.command()(admin.create)
app.command()(running.run)
app.command()(running.resume)
app.command("list")(inspecting.list_)
app.command()(inspecting.show)
app.command()(inspecting.best)
app.command()(inspecting.trials)
app.command()(inspecting.export)
app.command()(admin.delete)
app.command()(admin.release)

best = inspecting.best  # also `tuner best`
worker = running.worker  # `tuner worker`, registered at the top level
