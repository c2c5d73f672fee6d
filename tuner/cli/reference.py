"""docs/reference.md, generated from the Typer app: every command, its usage and its options.

`python -m tuner.cli.reference` prints the page; `--write` writes it to docs/reference.md in the
repository. tests/test_docs.py fails when the file and `render()` disagree, so the page cannot
drift from the CLI.

The page is plain Markdown and the same on every machine: no terminal width, no rich markup, no
colour. Types come from each command's Python annotations rather than from the Click parameter
types, which Typer has changed between the versions tuner admits (it vendors Click from 0.26).
"""

from __future__ import annotations

import enum
import inspect
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import typer
import typer.main
from rich.markup import render as _render_markup

from tuner.atomic import atomic_path
from tuner.cli import app

__all__ = ["REFERENCE", "render", "main"]

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"

_HEADER = """\
# Command reference

Every command of `tuner`, generated from its Typer app by `python -m tuner.cli.reference --write`;
do not edit this page by hand (tests/test_docs.py fails when it differs from the CLI). Every
command also takes `-h` / `--help`, which prints the same in the terminal.
"""

_TYPE_NAMES = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH"}


def render() -> str:
    """The whole page: a contents list, then a section per command in the order `--help` lists them."""
    root = typer.main.get_command(app)
    commands = list(_walk(root, root.context_class(root, info_name="tuner")))
    contents = [f"- [{ctx.command_path}](#{_anchor(ctx.command_path)})" for _, ctx in commands]
    sections = [_section(command, ctx) for command, ctx in commands]
    return "\n".join([_HEADER, *contents, "", *sections]).rstrip("\n") + "\n"


def _walk(command: Any, ctx: Any) -> Iterator[tuple[Any, Any]]:
    """Depth first: a group, then each of its commands in the order the group lists them."""
    yield command, ctx
    for name, sub in _subcommands(command, ctx):
        yield from _walk(sub, sub.context_class(sub, info_name=name, parent=ctx))


def _subcommands(command: Any, ctx: Any) -> list[tuple[str, Any]]:
    if not hasattr(command, "list_commands"):
        return []
    subs = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
    return [(name, sub) for name, sub in subs if not getattr(sub, "hidden", False)]


def _anchor(command_path: str) -> str:
    """GitHub's anchor of the heading `## tuner study run`."""
    return command_path.replace(" ", "-")


def _section(command: Any, ctx: Any) -> str:
    lines = [f"## {ctx.command_path}", ""]
    help_text = _help(command.help)
    if help_text:
        lines += [help_text, ""]
    lines += ["```text", _usage(command, ctx), "```", ""]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        hints = _annotations(command.callback)
        lines += ["| argument or option | value | default | description |", "|---|---|---|---|"]
        lines += [_row(p, hints.get(p.name)) for p in params]
        lines.append("")
    subs = _subcommands(command, ctx)
    if subs:
        lines += ["| command | what it does |", "|---|---|"]
        lines += [f"| [{n}](#{_anchor(f'{ctx.command_path} {n}')}) | {_cell(_summary(s.help))} |" for n, s in subs]
        lines.append("")
    return "\n".join(lines)


def _usage(command: Any, ctx: Any) -> str:
    """Click's usage line, built here so that it reads the same under every Typer version."""
    pieces = [ctx.command_path, "[OPTIONS]"]
    for p in command.params:
        if p.param_type_name == "argument" and not getattr(p, "hidden", False):
            name = p.metavar or p.name.upper()
            name = name if p.required else f"[{name}]"
            pieces.append(name + ("..." if p.nargs != 1 else ""))
    if hasattr(command, "list_commands"):
        pieces += ["COMMAND", "[ARGS]..."]
    return "Usage: " + " ".join(pieces)


def _row(param: Any, annotation: Any) -> str:
    base, info, repeatable = _unwrap(annotation)
    is_argument = param.param_type_name == "argument"
    if is_argument:
        name = f"`{param.metavar or param.name.upper()}`"
    else:
        name = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    if base is bool and not is_argument:
        value = "flag"
    elif param.metavar and not is_argument:
        value = f"`{param.metavar}`"
    else:
        value = f"`{_type_name(base)}`"
    if repeatable:
        value += " (repeatable)"
    notes = [_help(param.help or "")]
    bounds = _bounds(info)
    if bounds:
        notes.append(bounds)
    envvar = getattr(param, "envvar", None)
    if envvar:
        notes.append(f"Environment variable: `{envvar}`.")
    return f"| {_cell(name)} | {_cell(value)} | {_cell(_default(param))} | {_cell(' '.join(n for n in notes if n))} |"


def _annotations(callback: Any) -> dict[str, Any]:
    """The parameters' annotations of the function behind a command (Typer wraps it)."""
    if callback is None:
        return {}
    signature = inspect.signature(callback, eval_str=True)
    return {name: p.annotation for name, p in signature.parameters.items()}


def _unwrap(annotation: Any) -> tuple[Any, Any, bool]:
    """(the bare type, Typer's OptionInfo or ArgumentInfo, whether it repeats) of an annotation."""
    info = None
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        info = next((e for e in extras if isinstance(e, typer.models.ParameterInfo)), None)
    if typing.get_origin(annotation) is typing.Union or isinstance(annotation, types.UnionType):  # Optional[X]
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    repeatable = typing.get_origin(annotation) in (list, tuple, set)
    if repeatable:
        annotation = (typing.get_args(annotation) or (str,))[0]
    return annotation, info, repeatable


def _type_name(base: Any) -> str:
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return "|".join(str(m.value) for m in base)
    return _TYPE_NAMES.get(base, getattr(base, "__name__", str(base)).upper())


def _bounds(info: Any) -> str:
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if low is not None and high is not None:
        return f"From {low} to {high}."
    if low is not None:
        return f"At least {low}."
    if high is not None:
        return f"At most {high}."
    return ""


def _default(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if callable(default):
        return "(computed)"
    if isinstance(default, bool):
        if param.secondary_opts:  # --x/--no-x: the one in effect
            return f"`{(param.opts if default else param.secondary_opts)[0]}`"
        return "on" if default else ""
    if default is None or default == "" or default == () or default == []:
        return ""
    if isinstance(default, (list, tuple)):
        return ", ".join(f"`{_plain(d)}`" for d in default)
    return f"`{_plain(default)}`"


def _plain(value: Any) -> str:
    return str(value.value) if isinstance(value, enum.Enum) else str(value)


def _help(text: Optional[str]) -> str:
    """Help as the terminal shows it: rich markup resolved (`\\[default: x]` is `[default: x]`),
    Click's `\\f` cut, each paragraph on one line."""
    if not text:
        return ""
    text = inspect.cleandoc(text.split("\f", 1)[0])
    paragraphs = [" ".join(p.replace("\b", "").split()) for p in text.split("\n\n")]
    return "\n\n".join(_render_markup(p).plain.replace("*", "\\*").replace("<", "\\<") for p in paragraphs if p)


def _summary(text: Optional[str]) -> str:
    return _help(text).split("\n\n", 1)[0]


def _cell(text: str) -> str:
    """A table cell: one line, its pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--write"]):
        print("usage: python -m tuner.cli.reference [--write]", file=sys.stderr)
        return 2
    page = render()
    if args == ["--write"]:
        with atomic_path(REFERENCE) as tmp:
            tmp.write_text(page)
            tmp.chmod(0o644)  # a page of the repository, not a private file (the temporary file is 0600)
        print(f"wrote {REFERENCE}")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
