"""Search-space files: load, validate, expand grids, and turn entries into Optuna distributions.

A space is a YAML file in search_spaces/ whose `params` map names from the training vocabulary
(tuner.params) to entries in Optuna's own terms:

    params:
      lr: {type: float, low: 1.0e-4, high: 0.1, log: true, grid: 4}
      batch_size: {type: categorical, choices: [32, 64, 128]}
      momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: [momentum, nesterov]}}
      epochs: 15                      # a fixed value

`when` makes a parameter conditional; `grid` gives explicit grid values, or a count that expands
linearly (or log-spaced when `log: true`), so grid search can run over any space.

A name outside that vocabulary is a free parameter: a hyperparameter of the person's own code (a
`--objective` function or a `--command` script), which tuner samples and passes on without knowing
what it means. It must say its `type:`, so that a typo of a built-in name is never taken for one:

      num_heads: {type: categorical, choices: [2, 4, 8]}
      mixup: {type: float, low: 0.0, high: 0.4}
      emb: {type: int, fixed: 64}
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable

import yaml

from tuner.atomic import atomic_path
from tuner.errors import SpaceError
from tuner.params import CONDITIONS, describe_bounds, in_bounds, param_kind, param_names

__all__ = [
    "MAX_GRID_POINTS",
    "Param",
    "Space",
    "build_space",
    "load_space",
    "parse_entry",
    "parse_param_option",
    "parse_space",
    "resolve_space_path",
    "save_space",
    "space_from_text",
]

SPACES_DIR = Path("search_spaces")
MAX_GRID_POINTS = 100_000
_MAX_AUTO_INT_GRID = 64  # an int range with at most this many values needs no `grid:`
_TYPES = ("float", "int", "categorical")
_ENTRY_KEYS = {"type", "low", "high", "log", "step", "choices", "when", "grid", "fixed"}


@dataclass(frozen=True)
class Param:
    """One validated space entry."""

    name: str
    type: str  # float | int | categorical | fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None  # the value of a fixed entry
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # parent -> values that enable this
    grid: tuple[Any, ...] | int | None = None  # explicit values, or a count to expand
    free: bool = False  # not in tuner's training vocabulary: a parameter of the person's own code
    declared: str | None = None  # a free fixed entry's `type:` (float, int or categorical)

    def is_active(self, values: dict[str, Any]) -> bool:
        return all(parent in values and values[parent] in allowed for parent, allowed in self.when.items())

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def grid_values(self) -> list[Any]:
        if self.type == "fixed":
            return [self.value]
        if self.type == "categorical":
            return list(self.choices)
        if isinstance(self.grid, tuple):
            return list(self.grid)
        if self.type == "int" and self.grid is None:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return _expand_count(self, int(self.grid))

    def to_entry(self) -> Any:
        """The YAML form: the inverse of parsing, so a saved space loads back equal."""
        if self.type == "fixed" and not self.when and not self.free:
            return self.value
        entry: dict[str, Any] = {}
        if self.type == "fixed":
            if self.declared:
                entry["type"] = self.declared
            entry["fixed"] = self.value
        else:
            entry["type"] = self.type
        if self.type in ("float", "int"):
            entry["low"], entry["high"] = self.low, self.high
            if self.log:
                entry["log"] = True
            if self.step is not None:
                entry["step"] = self.step
            if self.grid is not None:
                entry["grid"] = list(self.grid) if isinstance(self.grid, tuple) else self.grid
        if self.type == "categorical":
            entry["choices"] = list(self.choices)
        if self.when:
            entry["when"] = {k: list(v) for k, v in self.when.items()}
        return entry


@dataclass(frozen=True)
class Space:
    """A validated search space; `params` are ordered so that parents come before children."""

    name: str
    params: dict[str, Param]
    description: str = ""

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample this trial's active parameters; fixed values are returned but not sampled."""
        values: dict[str, Any] = {}
        for p in self.params.values():
            if not p.is_active(values):
                continue
            if p.type == "fixed":
                values[p.name] = p.value
            elif p.type == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.type == "int":
                values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
        return values

    def distributions(self) -> dict[str, Any]:
        return {n: p.distribution() for n, p in self.params.items() if p.type != "fixed"}

    def fixed(self) -> dict[str, Any]:
        return {n: p.value for n, p in self.params.items() if p.type == "fixed"}

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point, honouring conditions: an inactive parameter does not multiply the grid.

        Points hold only sampled parameters (fixed values are added when the trial runs)."""
        points: list[dict[str, Any]] = [{}]
        for p in self.params.values():
            expanded: list[dict[str, Any]] = []
            for point in points:
                # active fixed values stay in the point while expanding, so that their children
                # are active exactly where suggest() would sample them; they are dropped below
                if not p.is_active(point):
                    expanded.append(point)
                    continue
                expanded.extend({**point, p.name: v} for v in p.grid_values())
            points = expanded
            if len(points) > MAX_GRID_POINTS:
                raise SpaceError(
                    f"space '{self.name}': the grid has more than {MAX_GRID_POINTS:,} points; "
                    "lower the `grid:` counts or the number of choices"
                )
        fixed = self.fixed()
        return [{k: v for k, v in point.items() if k not in fixed} for point in points]

    def grid_problem(self) -> str | None:
        """Why this space cannot be grid-searched, or None."""
        for p in self.params.values():
            if p.type == "float" and p.grid is None:
                return f"space '{self.name}': {p.name} is a continuous range without grid points; add `grid: 5` (a count) or `grid: [..]` (values)"
            if p.type == "int" and p.grid is None and _int_range_size(p) > _MAX_AUTO_INT_GRID:
                return f"space '{self.name}': {p.name} spans {_int_range_size(p)} integers; add `grid: 5` (a count) or `grid: [..]` (values)"
        return None

    def free(self) -> list[str]:
        """Names of the parameters of the person's own code (not tuner's training vocabulary)."""
        return [n for n, p in self.params.items() if p.free]

    def builtin_problem(self) -> str | None:
        """Why tuner's own training loop cannot run this space (it names free parameters), or None."""
        free = self.free()
        if not free:
            return None
        name = free[0]
        return (
            f"space '{self.name}': {name} is not a parameter of tuner's training loop; {_suggest_name(name, param_names())}"
            "free parameters are for your own code: pass --objective module:function or --command \"...\""
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.description:
            data["description"] = self.description
        data["params"] = {n: p.to_entry() for n, p in self.params.items()}
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)


def _int_range_size(p: Param) -> int:
    return (int(p.high) - int(p.low)) // int(p.step or 1) + 1


def _expand_count(p: Param, n: int) -> list[Any]:
    lo, hi = float(p.low), float(p.high)
    if n == 1:
        raw = [math.exp((math.log(lo) + math.log(hi)) / 2) if p.log else (lo + hi) / 2]
    elif p.log:
        raw = [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (n - 1)) for i in range(n)]
    else:
        raw = [lo + i * (hi - lo) / (n - 1) for i in range(n)]
    if p.step is not None:
        n_steps = int((Decimal(str(p.high)) - Decimal(str(p.low))) // Decimal(str(p.step)))
        raw = [lo + min(round((v - lo) / p.step), n_steps) * p.step for v in raw]
    if p.type == "int":
        return sorted({min(max(int(round(v)), int(lo)), int(hi)) for v in raw})
    # 12 significant digits: 1e-3 stays 0.001, not 0.0009999999999999998
    return sorted({min(max(float(f"{v:.12g}"), lo), hi) for v in raw})


# ---------------------------------------------------------------------------------------------
# parsing and validation


class _Where:
    """Builds the one-line messages: file, parameter, the bad value and what would be valid."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, param: str | None, problem: str) -> SpaceError:
        where = f"{self.source}: {param}" if param else self.source
        return SpaceError(_one_line(f"{where}: {problem}"))


def _one_line(text: str) -> str:
    # names and keys come from the file and may hold line breaks: escape them as repr() would
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _suggest_name(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _number(where: _Where, name: str, key: str, raw: Any, kind: type) -> float | int:
    # PyYAML reads `1e-4` (no dot) as a string: accept numeric strings for numeric keys.
    value = raw
    if isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            raise where.fail(name, f"{key} must be a number, got {raw!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.fail(name, f"{key} must be a number, got {raw!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        finite = False
    if not finite:
        raise where.fail(name, f"{key} must be finite, got {raw!r}")
    if kind is int:
        if not float(value).is_integer():
            raise where.fail(name, f"{key} must be an integer for {name}, got {raw!r}")
        value = int(value)
    else:
        value = float(value)
    if key != "step" and not in_bounds(name, value):
        raise where.fail(name, f"{key}={value} is out of range; {name} takes values in {describe_bounds(name)}")
    return value


def _value(where: _Where, name: str, raw: Any, what: str = "value") -> Any:
    """Check one value (a choice, a fixed value) against the parameter's type and registry."""
    kind, choices = param_kind(name)
    if kind is str:
        if not isinstance(raw, str) or raw not in choices:
            raise where.fail(name, f"unknown {what} {raw!r}; valid: {', '.join(choices)}")
        return raw
    return _number(where, name, what, raw, kind)


def _parse_param(where: _Where, name: Any, entry: Any) -> Param:
    if not isinstance(name, str) or name not in param_names():
        return _parse_free(where, str(name), entry)
    kind, _ = param_kind(name)
    if not isinstance(entry, dict):
        if isinstance(entry, list):
            entry = {"type": "categorical", "choices": entry}
        else:
            entry = {"fixed": entry}
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        bad = sorted(map(str, unknown))[0]
        raise where.fail(name, f"unknown key {bad!r}; valid keys: {', '.join(sorted(_ENTRY_KEYS))}")
    when = _parse_when(where, name, entry.get("when"))
    if "fixed" in entry:
        extra = set(entry) - {"fixed", "when"}
        if extra:
            raise where.fail(name, f"a fixed entry takes only `fixed` and `when`, got {', '.join(sorted(extra))}")
        return Param(name, "fixed", value=_value(where, name, entry["fixed"]), when=when)
    ptype = entry.get("type")
    if ptype not in _TYPES:
        raise where.fail(name, f"type must be one of {', '.join(_TYPES)} (or give `fixed: VALUE`), got {ptype!r}")
    if ptype == "categorical":
        return _parse_categorical(where, name, entry, when, lambda c: _value(where, name, c, "choice"))
    return _parse_range(where, name, ptype, kind, entry, when)


def _parse_categorical(where: _Where, name: str, entry: dict, when: dict, check: Any, *, free: bool = False) -> Param:
    extra = set(entry) - {"type", "choices", "when"}
    if extra:
        raise where.fail(name, f"a categorical entry takes `choices` (they are its grid), not {', '.join(sorted(extra))}")
    raw = entry.get("choices")
    if not isinstance(raw, list) or not raw:
        raise where.fail(name, f"choices must be a non-empty list, got {raw!r}")
    choices = tuple(check(c) for c in raw)
    if len(set(choices)) != len(choices):
        dup = next(c for c in choices if choices.count(c) > 1)
        raise where.fail(name, f"choice {dup!r} is listed twice")
    return Param(name, "categorical", choices=choices, when=when, free=free)


def _parse_free(where: _Where, name: str, entry: Any) -> Param:
    """A parameter of the person's own code: any name, but its type said explicitly, so that a
    misspelt built-in name is an error with its did-you-mean rather than a silent free parameter."""
    if not isinstance(entry, dict) or entry.get("type") not in _TYPES:
        close = _suggest_name(name, param_names())
        raise where.fail(
            name,
            f"unknown parameter; {close}valid: {', '.join(param_names())}; or, for a parameter of your own code "
            f"(--objective, --command), give its `type:`, e.g. {name}: {{type: float, low: 0.0, high: 1.0}}",
        )
    if not name.isidentifier():
        raise where.fail(name, "a free parameter's name must be an identifier (letters, digits, '_'), as it becomes a {placeholder} and --flag")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise where.fail(name, f"unknown key {sorted(map(str, unknown))[0]!r}; valid keys: {', '.join(sorted(_ENTRY_KEYS))}")
    ptype = entry["type"]
    when = _parse_when(where, name, entry.get("when"))
    if "fixed" in entry:
        extra = set(entry) - {"type", "fixed", "when"}
        if extra:
            raise where.fail(name, f"a fixed entry takes only `type`, `fixed` and `when`, got {', '.join(sorted(extra))}")
        value = _free_value(where, name, ptype, entry["fixed"], "fixed value")
        return Param(name, "fixed", value=value, when=when, free=True, declared=ptype)
    if ptype == "categorical":
        return _parse_categorical(where, name, entry, when, lambda c: _free_value(where, name, ptype, c, "choice"), free=True)
    param = _parse_range(where, name, ptype, int if ptype == "int" else float, entry, when)
    return Param(**{**param.__dict__, "free": True})


def _free_value(where: _Where, name: str, ptype: str, raw: Any, what: str) -> Any:
    if ptype == "categorical":
        # what Optuna can store as a choice, and what reads back the same from a command line
        if raw is None or isinstance(raw, (str, bool, int, float)):
            if isinstance(raw, float) and not math.isfinite(raw):
                raise where.fail(name, f"{what} must be finite, got {raw!r}")
            return raw
        raise where.fail(name, f"{what} must be a number, text, true/false or null, got {raw!r}")
    return _number(where, name, what, raw, int if ptype == "int" else float)


def _parse_range(where: _Where, name: str, ptype: str, kind: type, entry: dict, when: dict) -> Param:
    if kind is str:
        _, choices = param_kind(name)
        raise where.fail(name, f"{name} takes names, not a {ptype} range; use `choices: [{', '.join(choices[:3])}, ...]`")
    if kind is int and ptype == "float":
        raise where.fail(name, f"{name} is an integer; use `type: int`")
    if kind is float and ptype == "int":
        raise where.fail(name, f"{name} is a real number; use `type: float` (with `step:` for a lattice)")
    num = int if ptype == "int" else float
    for key in ("low", "high"):
        if key not in entry:
            raise where.fail(name, f"a {ptype} range needs `low` and `high`; `{key}` is missing")
    low, high = _number(where, name, "low", entry["low"], num), _number(where, name, "high", entry["high"], num)
    if low >= high:
        raise where.fail(name, f"low must be below high, but got low={low} high={high} (for one value use `fixed: {low}`)")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise where.fail(name, f"log must be true or false, got {log!r}")
    if log and low <= 0:
        raise where.fail(name, f"log scale needs low > 0, but got low={low}")
    step = entry.get("step")
    if step is not None:
        step = _number(where, name, "step", step, num)
        if step <= 0:
            raise where.fail(name, f"step must be positive, got {step}")
        if log:
            raise where.fail(name, "step and log cannot be combined (Optuna samples a log range continuously)")
    grid = _parse_grid(where, name, entry.get("grid"), num, low, high)
    if step is not None and isinstance(grid, tuple):
        n_steps = (Decimal(str(high)) - Decimal(str(low))) // Decimal(str(step))
        for v in grid:
            k = (Decimal(str(v)) - Decimal(str(low))) / Decimal(str(step))
            if k != k.to_integral_value() or k > n_steps:
                top = Decimal(str(low)) + n_steps * Decimal(str(step))
                raise where.fail(name, f"grid value {v} is not on the step lattice low={low}, step={step} (up to {top})")
    return Param(name, ptype, low=low, high=high, log=log, step=step, when=when, grid=grid)


def _parse_grid(where: _Where, name: str, raw: Any, num: type, low: float, high: float) -> tuple | int | None:
    if raw is None:
        return None
    if isinstance(raw, list):
        if not raw:
            raise where.fail(name, "grid must be a count or a non-empty list of values, got []")
        values = tuple(_number(where, name, "grid value", v, num) for v in raw)
        outside = [v for v in values if not low <= v <= high]
        if outside:
            raise where.fail(name, f"grid value {outside[0]} is outside low={low} high={high}")
        return values
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise where.fail(name, f"grid must be a count >= 1 or a list of values, got {raw!r}")
    if raw > MAX_GRID_POINTS:
        raise where.fail(name, f"grid count {raw} is more than the {MAX_GRID_POINTS:,} points a grid may have")
    return raw


def _parse_when(where: _Where, name: str, raw: Any) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise where.fail(name, f"when must map a parameter to its enabling values, e.g. {{optimizer: [sgd]}}, got {raw!r}")
    when = {}
    for parent, values in raw.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise where.fail(name, f"when: {parent} lists no values; name at least one")
        when[str(parent)] = tuple(values)
    return when


def _order(where: _Where, params: dict[str, Param]) -> dict[str, Param]:
    """Check every condition against its parent, and order parents before children (no cycles)."""
    for p in params.values():
        for parent, values in p.when.items():
            if parent == p.name:
                raise where.fail(p.name, "a parameter cannot be conditional on itself")
            if parent not in params:
                raise where.fail(
                    p.name,
                    f"condition on '{parent}', which is not in this space; {_suggest_name(parent, params)}"
                    f"parameters here: {', '.join(params)}",
                )
            q = params[parent]
            if q.type in ("float", "int"):
                raise where.fail(p.name, f"condition on '{parent}', a {q.type} range; conditions need a categorical or fixed parent")
            possible = q.choices if q.type == "categorical" else (q.value,)
            for v in values:
                if v not in possible:
                    raise where.fail(
                        p.name, f"condition {parent}={v!r} can never hold; {parent} takes {', '.join(map(repr, possible))}"
                    )
    ordered: dict[str, Param] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise where.fail(name, "conditions form a cycle; a parameter cannot depend on itself through others")
        visiting.add(name)
        for parent in params[name].when:
            visit(parent)
        visiting.discard(name)
        ordered[name] = params[name]

    for name in params:
        visit(name)
    return ordered


def parse_space(data: Any, *, name: str, source: str) -> Space:
    """Validate a space's parsed YAML; every problem raises SpaceError naming source and parameter."""
    where = _Where(source)
    if not isinstance(data, dict):
        raise where.fail(None, f"a space file must be a mapping with a `params` key, got {type(data).__name__}")
    unknown = set(data) - {"params", "description"}
    if unknown:
        raise where.fail(None, f"unknown top-level key {sorted(map(str, unknown))[0]!r}; valid: params, description")
    raw = data.get("params")
    if not isinstance(raw, dict) or not raw:
        raise where.fail(None, "`params` must be a non-empty mapping of parameter names to entries")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise where.fail(None, f"description must be text, got {description!r}")
    params = {str(k): _parse_param(where, k, v) for k, v in raw.items()}
    ordered = _order(where, params)
    _check_nesterov(where, ordered)
    return Space(name=name, params=ordered, description=description)


def _check_nesterov(where: _Where, params: dict[str, Param]) -> None:
    """Nesterov's look-ahead needs momentum: torch refuses momentum 0 with nesterov at every trial."""
    optimizer, momentum = params.get("optimizer"), params.get("momentum")
    if optimizer is None or momentum is None:
        return  # without a momentum entry, nesterov trains with the default momentum (0.9)
    can_be_nesterov = "nesterov" in (optimizer.choices if optimizer.type == "categorical" else (optimizer.value,))
    active = "nesterov" in momentum.when.get("optimizer", ("nesterov",))
    values = {"fixed": (momentum.value,), "categorical": momentum.choices}.get(momentum.type, (momentum.low,))
    if can_be_nesterov and active and 0 in values:
        shown = {"fixed": "fixed: 0", "categorical": "choice 0"}.get(momentum.type) or f"low={momentum.low:g}"
        raise where.fail(
            "momentum", f"{shown} with optimizer nesterov: nesterov needs momentum > 0; raise it (e.g. low: 0.5) or leave nesterov out of its `when`"
        )


def resolve_space_path(ref: str | Path, *, spaces_dir: Path = SPACES_DIR) -> Path:
    """A space name (search_spaces/NAME.yaml) or a path to a YAML file."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    return spaces_dir / f"{ref}.yaml"


def load_space(ref: str | Path, *, spaces_dir: Path = SPACES_DIR) -> Space:
    path = resolve_space_path(ref, spaces_dir=spaces_dir)
    if not path.is_file():
        raise SpaceError(f"search space '{ref}' not found: no file {path} (`tuner space list` shows the spaces)")
    return space_from_text(read_small_text(path, error=SpaceError), name=path.stem, source=str(path))


MAX_FILE_BYTES = 1_000_000  # space and spec files are a few KB; anything this big is a mistake


def read_small_text(path: Path, *, error: type[Exception]) -> str:
    """A settings file as text: refused if huge, not UTF-8 or unreadable (one line, no traceback)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise error(f"{path}: {size:,} bytes is too large for a settings file (at most {MAX_FILE_BYTES:,})")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise error(f"{path}: cannot read the file ({e.strerror or e})") from None


def space_from_text(text: str, *, name: str, source: str) -> Space:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpaceError(_one_line(f"{source}: not valid YAML{at}: {problem}")) from None
    except (ValueError, OverflowError, RecursionError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else (str(e).splitlines() or [""])[0]
        raise SpaceError(_one_line(f"{source}: not valid YAML: {e.__class__.__name__}: {what}")) from None
    return parse_space(data, name=name, source=source)


def save_space(space: Space, path: Path, *, overwrite: bool = False) -> Path:
    """Write atomically (temp file + rename): a failed write never leaves half a file."""
    if path.exists() and not overwrite:
        raise SpaceError(f"{path} already exists; pass --force to overwrite it or choose another name")
    text = space.to_yaml()
    space_from_text(text, name=space.name, source=str(path))  # what we write must load back
    with atomic_path(path, error=SpaceError) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# `tuner space create` option syntax


def parse_entry(name: str, text: str) -> Any:
    """One `space create` option into a YAML entry.

    `LOW:HIGH[:log][:step=S][:grid=N|grid=A|B|C]` is a range, `A,B,C` a choice, a lone value fixed."""
    if name not in param_names():
        raise SpaceError(f"unknown parameter {name!r}; {_suggest_name(name, param_names())}valid: {', '.join(param_names())}")
    kind, _ = param_kind(name)
    text = text.strip()
    if ":" in text:
        if kind is str:
            raise SpaceError(f"--{name.replace('_', '-')} {text}: {name} takes names, not a range; use A,B,C")
        return _range_entry(f"--{name.replace('_', '-')} {text}", text, "int" if kind is int else "float")
    if "," in text:
        return {"type": "categorical", "choices": [_scalar(v) for v in text.split(",") if v.strip() != ""]}
    return _scalar(text)


def _range_entry(shown: str, text: str, ptype: str | None) -> dict[str, Any]:
    """LOW:HIGH[:log][:step=S][:grid=..]; a free parameter's type is read from its bounds (both
    integers: int) unless an `:int` or `:float` flag says it."""
    low, high, *flags = text.split(":")
    entry: dict[str, Any] = {"type": ptype, "low": low, "high": high}
    for flag in flags:
        key, _, val = flag.partition("=")
        if key == "log" and not val:
            entry["log"] = True
        elif key == "step" and val:
            entry["step"] = val
        elif key == "grid" and val:
            entry["grid"] = _grid_option(val)
        elif key in ("int", "float") and not val and ptype is None:
            entry["type"] = key
        else:
            more = "[:int|:float]" if ptype is None else ""
            raise SpaceError(f"{shown}: unknown range flag {flag!r}; use LOW:HIGH[:log][:step=S][:grid=N|grid=A|B]{more}")
    if entry["type"] is None:
        entry["type"] = "int" if all(isinstance(_scalar(v), int) for v in (low, high)) else "float"
    return entry


def parse_param_option(text: str) -> tuple[str, Any]:
    """`--param NAME=SPEC`: a free parameter of the person's own code (or a built-in one, as its own
    option would give it). SPEC is a range LOW:HIGH[:log][:step=S][:grid=..][:int|:float], choices
    A,B,C or one fixed value; the type is explicit in the entry written."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise SpaceError(f"--param {text!r}: write NAME=SPEC, e.g. --param num_heads=2,4,8 or --param mixup=0.0:0.4")
    if name in param_names():
        return name, parse_entry(name, spec)
    if ":" in spec:
        return name, _range_entry(f"--param {text}", spec, None)
    if "," in spec:
        return name, {"type": "categorical", "choices": [_scalar(v) for v in spec.split(",") if v.strip() != ""]}
    value = _scalar(spec)
    ptype = "int" if isinstance(value, int) else "float" if isinstance(value, float) else "categorical"
    return name, {"type": ptype, "fixed": value}


def _grid_option(val: str) -> int | list[str]:
    """grid=5 is a count; grid=0.9 (not an integer) or grid=1|2|4 are values."""
    if "|" not in val and val.isdigit():
        return int(val)
    return [v for v in val.split("|") if v]


def _scalar(text: str) -> Any:
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_space(name: str, options: dict[str, str], *, description: str = "", free: Iterable[str] = ()) -> Space:
    """A space from `space create` options (and `--param NAME=SPEC` texts), with the conditions each
    setting needs added for you."""
    entries: dict[str, Any] = {}
    for pname, text in options.items():
        entries[pname] = parse_entry(pname, text)
    for text in free:
        pname, entry = parse_param_option(text)
        if pname in entries:
            raise SpaceError(f"--param {text}: {pname} is given twice; give each parameter once")
        entries[pname] = entry
    # Bad values (an unknown optimizer, low > high) are reported as such before any condition.
    parse_space({"params": entries}, name=name, source=f"space '{name}'")
    for child, (parent, values) in CONDITIONS.items():
        entry = entries.get(child)
        parent_entry = entries.get(parent)
        if entry is None or parent_entry is None:
            continue
        possible = parent_entry["choices"] if isinstance(parent_entry, dict) and "choices" in parent_entry else [parent_entry]
        enabling = [v for v in values if v in possible]
        if not enabling:
            raise SpaceError(
                f"--{child.replace('_', '-')} only applies when {parent} is one of {', '.join(values)}, "
                f"but --{parent} gives {', '.join(map(str, possible))}; drop --{child.replace('_', '-')} or add one of them"
            )
        if set(enabling) != set(possible):
            entry = entry if isinstance(entry, dict) else {"fixed": entry}
            entries[child] = {**entry, "when": {parent: enabling}}
    data = {"description": description, "params": entries} if description else {"params": entries}
    return parse_space(data, name=name, source=f"space '{name}'")
