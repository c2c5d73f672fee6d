"""`tuner space ...`: create, show, validate and list search-space files."""

from __future__ import annotations

import enum
import inspect
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer
from rich.table import Table

from tuner.cli.common import console, print_json
from tuner.errors import SpaceError
from tuner.params import GROUPS, param_kind, param_names
from tuner.space import SPACES_DIR, Space, build_space, load_space, resolve_space_path, save_space

app = typer.Typer(help="Search spaces: YAML files in search_spaces/.", no_args_is_help=True)

DirOpt = Annotated[Path, typer.Option("--dir", help="Folder of space files.")]


class ShowFormat(str, enum.Enum):
    yaml = "yaml"
    json = "json"


def _create(
    name: str,
    description: str = "",
    force: bool = False,
    spaces_dir: Path = SPACES_DIR,
    param: Optional[List[str]] = None,
    **options: Optional[str],
) -> None:
    given = {k: v for k, v in options.items() if v is not None}
    if not given and not param:
        raise SpaceError("give at least one dimension, e.g. --lr 1e-4:1e-1:log --optimizer sgd,adam or --param heads=2,4,8 (see --help)")
    if not name or "/" in name or name.startswith("."):
        raise SpaceError(f"space name {name!r} is not valid; use a plain name like 'my_space'")
    space = build_space(name, given, description=description, free=param or ())
    path = save_space(space, spaces_dir / f"{name}.yaml", overwrite=force)
    console.print(f"wrote {path} ({len(space.params)} parameters)")


def _option_help(name: str) -> str:
    kind, choices = param_kind(name)
    if choices:
        return f"One or more of: {','.join(choices)}."
    what = "integer" if kind is int else "number"
    return f"{what.capitalize()} range LOW:HIGH[:log][:step=S][:grid=N|grid=A|B], choices A,B,C, or one fixed {what}."


def _create_signature() -> inspect.Signature:
    # One option per dimension of the vocabulary, grouped into help panels: adding a dimension to
    # TrainConfig adds its option here with no other change.
    panel = {n: g for g, names in GROUPS.items() for n in names}
    params = [
        inspect.Parameter("name", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[str, typer.Argument(help="Writes search_spaces/NAME.yaml.")]),
        inspect.Parameter("description", inspect.Parameter.KEYWORD_ONLY, default="", annotation=Annotated[str, typer.Option(help="A line saying what the space is for.")]),
        inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")]),
        inspect.Parameter("spaces_dir", inspect.Parameter.KEYWORD_ONLY, default=SPACES_DIR, annotation=DirOpt),
        inspect.Parameter(
            "param",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Optional[List[str]],
                typer.Option(
                    "--param",
                    metavar="NAME=SPEC",
                    help="A parameter of your own code (for --objective or --command studies), repeatable: "
                    "a range LOW:HIGH[:log][:step=S][:grid=N][:int|:float], choices A,B,C or one fixed value. "
                    "Example: --param num_heads=2,4,8 --param mixup=0.0:0.4",
                    rich_help_panel="Your own code",
                ),
            ],
        ),
    ]
    for n in param_names():
        option = typer.Option(
            "--" + n.replace("_", "-"), metavar="SPEC", help=_option_help(n), rich_help_panel=panel.get(n, "Other")
        )
        params.append(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], option]))
    return inspect.Signature(params)


_create.__signature__ = _create_signature()  # type: ignore[attr-defined]
app.command(
    "create",
    help="Write a search space from options, one per dimension. Conditions (momentum only for "
    "momentum/nesterov/rmsprop, betas only for adam/adamw, ...) are added for you.\n\n"
    "Example: tuner space create mine --lr 1e-5:1e-1:log --batch-size 32,64,128 "
    "--optimizer sgd,adam,adamw --init xavier_uniform,kaiming_normal --weight-decay 1e-6:1e-2:log",
)(_create)


@app.command()
def show(
    space: Annotated[str, typer.Argument(help="A space name in search_spaces/ or a path to a YAML file.")],
    fmt: Annotated[ShowFormat, typer.Option("--format")] = ShowFormat.yaml,
    spaces_dir: DirOpt = SPACES_DIR,
) -> None:
    """Print a validated space, with its grid size."""
    s = load_space(space, spaces_dir=spaces_dir)
    free = s.free()
    if fmt == ShowFormat.json:
        print_json({"name": s.name, **s.to_dict(), "free_params": free, "grid_points": _grid_size(s)})
        return
    typer.echo(f"# {resolve_space_path(space, spaces_dir=spaces_dir)}: {len(s.params)} parameters, grid: {_grid_size(s)}")
    if free:
        typer.echo(f"# tuner's training loop: {', '.join(n for n in s.params if n not in free) or 'none'}")
        typer.echo(f"# your own code's (free, for --objective or --command): {', '.join(free)}")
    typer.echo(s.to_yaml(), nl=False)


def _grid_size(space: Space) -> Any:
    problem = space.grid_problem()
    if problem:
        return "n/a (" + problem.split(": ", 1)[1] + ")"
    try:
        return len(space.grid())
    except SpaceError as e:
        return f"n/a ({e})"


@app.command()
def validate(
    spaces: Annotated[List[str], typer.Argument(help="Space names or YAML paths.")],
    spaces_dir: DirOpt = SPACES_DIR,
) -> None:
    """Check space files; each problem is one line naming file, parameter and value. Exit 1 if any fails."""
    bad = 0
    for ref in spaces:
        try:
            s = load_space(ref, spaces_dir=spaces_dir)
        except SpaceError as e:
            bad += 1
            typer.echo(f"error: {e}", err=True)
            continue
        typer.echo(f"ok: {resolve_space_path(ref, spaces_dir=spaces_dir)} ({len(s.params)} parameters)")
    if bad:
        raise typer.Exit(1)


@app.command("list")
def list_(
    spaces_dir: DirOpt = SPACES_DIR,
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """List the spaces in search_spaces/ with their size and validity."""
    rows = []
    for path in sorted(spaces_dir.glob("*.yaml")):
        try:
            s = load_space(path)
            rows.append({"name": path.stem, "params": len(s.params), "grid": _grid_size(s), "description": s.description, "valid": True})
        except SpaceError as e:
            rows.append({"name": path.stem, "params": None, "grid": None, "description": str(e), "valid": False})
    if fmt == "json":
        print_json(rows)
        return
    if not rows:
        typer.echo(f"no spaces in {spaces_dir}/ (create one with `tuner space create NAME --lr 1e-4:1e-1:log ...`)")
        return
    table = Table("name", "params", "grid points", "description")
    for r in rows:
        grid = r["grid"] if isinstance(r["grid"], int) else "-"
        table.add_row(r["name"], str(r["params"] or "-"), str(grid), r["description"] if r["valid"] else f"[red]invalid:[/] {r['description']}")
    console.print(table)
