"""Study specs: what a study binds (space, workload, sampler, pruner, metric, seed, budget).

A spec comes from CLI options or a YAML file in studies/, and is stored with the study (as a study
user attribute, beside the full search space) so that `run` and `resume` restore exactly what the
study was created with, on any machine.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import SpecError
from tuner.metrics import MEASURES, RECORDED, VALIDATION, Constraint, Metric, parse_constraint, parse_metric
from tuner.patterns import parse_metric_pattern, parse_step_pattern

__all__ = ["DEFAULT_TRIALS", "RUN_OPTIONS", "STOPPING_OPTIONS", "StudySpec", "check_study_name", "load_spec", "parse_pack", "spec_file_settings"]

# What may change between runs of one study; everything else is fixed at creation.
STOPPING_OPTIONS = ("patience", "min_delta", "goal", "max_time")  # stored with the study; a run may change them (tuner.stopping)
RUN_OPTIONS = ("trials", "pack", "max_failures", "max_streak", *STOPPING_OPTIONS)
DEFAULT_TRIALS = 30  # the budget of a spec that gives none (a grid study: its size)
DIRECTIONS = ("maximize", "minimize")
_OPTIONAL_TEXT = ("target", "direction", "objective", "command", "sampler", "pruner", "metric", "prune_on")
_OMITTED_WHEN_UNSET = ("metrics", "constraints", "prune_on", "patience", "min_delta", "goal", "max_time")  # not stored with a study that does not use them: its record reads as before
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


# the values a built-in metric can take: a goal outside them is never reached
_RANGES = {"val_accuracy": (0.0, 1.0), "val_loss": (0.0, math.inf), "val_rmse": (0.0, math.inf), "params": (1.0, math.inf), "train_seconds": (0.0, math.inf), "latency_ms": (0.0, math.inf)}


def check_study_name(name: object) -> None:
    """A study's name: what a spec, a worker's command line and a launcher's job all carry."""
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS or len(name) > 100 or not name.strip("."):
        raise SpecError(f"study name {name!r} is not valid; use letters, digits, '-', '_' and '.' (at most 100, not only dots: it names a folder)")


@dataclass(frozen=True)
class StudySpec:
    name: str  # the study's name in storage
    space: str  # search space: a name in search_spaces/ or a path to a YAML file
    workload: str = "digits"  # builtin name, a .csv or .npz path, or module:function (tuner's own loop only)
    target: str | None = None  # the column to predict, for a CSV workload
    sampler: str | None = None  # see tuner.samplers.SAMPLERS; None: tpe, or nsga2 with several metrics
    pruner: str | None = None  # see tuner.samplers.PRUNERS; None: median, or pareto with several metrics
    metric: str | None = None  # the (first) metric: see tuner.metrics; with your own code, any name it reports; None: val_accuracy
    direction: str | None = None  # maximize | minimize; None: the built-in metric's own
    metrics: list[str] | None = None  # with several objectives, each as NAME:DIRECTION (the first is `metric`); None: one
    constraints: list[str] | None = None  # bounds a feasible trial meets: "params<=50000" (tuner.metrics.Constraint)
    prune_on: str | None = None  # with several metrics, the one a single-metric pruner (median, ...) watches
    objective: str | None = None  # your own code as module:function, called with a trial handle
    command: str | None = None  # your own script, run once a trial: "python train.py --lr {lr}"
    trial_timeout: float | None = None  # seconds a command trial may run before it is ended as failed
    seed: int = 0  # seeds the sampler, the validation split and each trial (seed + trial number)
    trials: int | None = None  # budget: finished (complete or pruned) trials, all runs together; None: 30, or the grid size
    val_fraction: float = 0.2  # share of the data held out for validation
    retries: int = 2  # times a trial lost to a dead worker or a signal is queued again
    startup_trials: int | None = None  # random trials before tpe or gp model the results; None: budget / 20, in 3..10
    history: int | None = None  # tpe and gp model the last N finished trials only (tuner.samplers.HistoryWindow); None: all
    max_failures: int | None = None  # failed trials in one run that stop it; None: a quarter of the budget, at least 10
    max_streak: int = 5  # consecutive failures of one kind (tuner.failures) that stop a run
    metric_patterns: list[str] | None = None  # a command's metrics read from its output: "name=REGEX" (tuner.patterns)
    step_pattern: str | None = None  # a command's step read from its output: a REGEX with one group
    pack: int | str | None = None  # trials a worker trains at once as one batched model (tuner.packing): a number (1: off) or auto; None: auto on a GPU, 1 on a CPU
    # stopping before the budget (tuner.stopping), each None when off
    patience: int | None = None  # finished trials without an improvement of the best (several metrics: the front's hypervolume) that stop the study
    min_delta: float | None = None  # what counts as an improvement for patience: more than this; None: any
    goal: float | None = None  # stop once a complete feasible trial's value reaches this (one metric)
    max_time: str | float | None = None  # the study's wall time across its runs that stops it: seconds, or "90m", "2h"

    @property
    def n_startup(self) -> int:
        from tuner.samplers import default_startup_trials

        return self.startup_trials if self.startup_trials is not None else default_startup_trials(self.trials or DEFAULT_TRIALS)

    def __post_init__(self) -> None:
        from tuner.samplers import PRUNERS, SAMPLERS, check_name

        for key in ("name", "space", "workload", "sampler", "pruner", "metric", "target", "direction", "objective", "command", "prune_on"):
            value = getattr(self, key)
            if not isinstance(value, str) and not (key in _OPTIONAL_TEXT and value is None):
                raise SpecError(f"{key} must be text, got {value!r}"[:300])
        check_study_name(self.name)
        self._check_code()
        self._resolve_objectives()
        check_name("sampler", self.sampler, SAMPLERS)
        check_name("pruner", self.pruner, PRUNERS)
        self._check_search()
        for key in ("seed", "trials", "retries", "startup_trials", "history", "max_failures", "max_streak"):
            value = getattr(self, key)
            if (isinstance(value, bool) or not isinstance(value, int)) and not (key in ("trials", "startup_trials", "history", "max_failures") and value is None):
                raise SpecError(f"{key} must be an integer, got {value!r}")
            if key.startswith("max_failures") and value is not None and value < 1:
                raise SpecError(f"{key} must be at least 1, got {value}")
        if self.trials is not None and self.trials < 1:
            raise SpecError(f"trials must be at least 1, got {self.trials}")
        if self.seed < 0:
            raise SpecError(f"seed must be 0 or more, got {self.seed}")
        if self.retries < 0:
            raise SpecError(f"retries must be 0 or more, got {self.retries}")
        if self.startup_trials is not None and self.startup_trials < 1:
            raise SpecError(f"startup_trials must be at least 1, got {self.startup_trials}")
        if self.history is not None:
            from tuner.samplers import MODELING_SAMPLERS

            if self.sampler not in MODELING_SAMPLERS:
                raise SpecError(f"--history bounds what {' and '.join(MODELING_SAMPLERS)} model; sampler {self.sampler} does not model the trials' results: drop --history")
            if self.history < max(self.n_startup, 2):
                raise SpecError(f"--history {self.history} is fewer than the {max(self.n_startup, 2)} trials the sampler starts modeling from; pass --history {max(self.n_startup, 2)} or more")
        parse_pack(self.pack)
        self._check_stopping()
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise SpecError(f"val_fraction must be between 0 and 1, got {self.val_fraction!r}")

    def _check_stopping(self) -> None:
        """--patience, --min-delta, --goal and --max-time: 0 or "none" turns one off."""
        from tuner.stopping import parse_duration

        if self.patience is not None:
            if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
                raise SpecError(f"patience must be a number of finished trials (0: off), got {self.patience!r}")
            object.__setattr__(self, "patience", self.patience or None)
        if self.min_delta is not None:
            if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, (int, float)) or not 0 <= self.min_delta < math.inf:
                raise SpecError(f"min_delta must be a number, 0 or more, got {self.min_delta!r}")
            if self.patience is None:
                raise SpecError("--min-delta says what improvement --patience waits for; give --patience N too (or drop --min-delta)")
            object.__setattr__(self, "min_delta", float(self.min_delta) or None)
        for key in ("goal", "max_time"):
            if isinstance(getattr(self, key), str) and getattr(self, key).strip().lower() in ("none", "off"):
                object.__setattr__(self, key, None)
        if self.max_time is not None:
            parse_duration(self.max_time)
        if self.goal is not None:
            goal = self.goal
            if isinstance(goal, str):
                try:
                    goal = float(goal)
                except ValueError:
                    raise SpecError(f"goal {self.goal!r} is not a number; give the value of {self.metric} that ends the study (or none)") from None
            if isinstance(goal, bool) or not isinstance(goal, (int, float)) or not math.isfinite(goal):
                raise SpecError(f"goal must be a number, the value of {self.metric} that ends the study, got {self.goal!r}")
            if self.metrics is not None:
                raise SpecError(f"--goal is a value of one metric and this study has {len(self.metrics)}; with several metrics use --patience (it watches the front's hypervolume)")
            low, high = _RANGES.get(str(self.metric), (-math.inf, math.inf))
            if not low <= goal <= high:
                said = f"between {low:g} and {high:g}" if math.isfinite(high) else f"at least {low:g}"
                raise SpecError(f"goal {goal:g} for {self.metric} ({self.direction}d) is never reached: {self.metric} is {said}")
            object.__setattr__(self, "goal", float(goal))

    def _check_code(self) -> None:
        """The workload is tuner's own loop, or the person's code (an objective or a command); the
        metric and its direction follow from which."""
        if self.objective is not None and self.command is not None:
            raise SpecError("give either --objective (a Python function) or --command (a script), not both")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise SpecError(f"direction must be maximize or minimize, got {self.direction!r}")
        if self.trial_timeout is not None:
            if isinstance(self.trial_timeout, bool) or not isinstance(self.trial_timeout, (int, float)) or not self.trial_timeout > 0:
                raise SpecError(f"trial_timeout must be a number of seconds above 0, got {self.trial_timeout!r}")
            if self.command is None:
                raise SpecError("--trial-timeout ends a --command trial's process; an objective or tuner's loop runs in the worker itself")
        if self.user_code:
            if self.workload != "digits" or self.target is not None:
                raise SpecError(f"--workload and --target feed tuner's own loop; your {self.code_kind} loads its own data, so drop them")
            if self.objective is not None and (":" not in self.objective or not all(self.objective.partition(":")[::2])):
                raise SpecError(f"objective {self.objective!r}: write it module:function, e.g. mypkg.tune:objective")
            if self.command is not None and not self.command.strip():
                raise SpecError("command is empty; give the command line that trains one trial, e.g. \"python train.py --lr {lr}\"")

    def _resolve_objectives(self) -> None:
        """The study's metrics, each with its direction: `metric` (and `direction`) for one, or
        `metrics` for several, stored as NAME:DIRECTION; then its constraints, its sampler and
        pruner (NSGA-II and pareto by default with several metrics) and the metric they prune on."""
        if self.metrics is not None and (not isinstance(self.metrics, list) or not self.metrics or not all(isinstance(m, str) for m in self.metrics)):
            raise SpecError(f"metrics must be a list of NAME or NAME:DIRECTION texts, got {self.metrics!r}"[:300])
        given = [parse_metric(m) for m in self.metrics] if self.metrics else [parse_metric(self.metric or "val_accuracy")]
        if self.metrics and self.metric is not None and parse_metric(self.metric)[0] != given[0][0]:
            raise SpecError(f"metric {self.metric} and metrics {', '.join(self.metrics)} disagree; give the metrics alone (the first is the study's metric)")
        names = [name for name, _ in given]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise SpecError(f"metric {twice} is given twice; name each metric once")
        if self.direction is not None and len(given) == 1:
            given[0] = (given[0][0], self._agree(given[0][0], given[0][1], self.direction))
        resolved = [Metric(name, self._direction_of(name, direction)) for name, direction in given]
        if len(given) > 1 and self.direction not in (None, resolved[0].direction):  # a stored spec has the first's
            raise SpecError("--direction sets one metric's direction; with several metrics give each as NAME:DIRECTION, e.g. --metric test_loss:minimize")
        self._check_metrics(resolved)
        object.__setattr__(self, "metric", resolved[0].name)
        object.__setattr__(self, "direction", resolved[0].direction)
        object.__setattr__(self, "metrics", [m.text() for m in resolved] if len(resolved) > 1 else None)
        if self.constraints is not None and (not isinstance(self.constraints, list) or not all(isinstance(c, str) for c in self.constraints)):
            raise SpecError(f"constraints must be a list of METRIC<=NUMBER or METRIC>=NUMBER texts, got {self.constraints!r}"[:300])
        parsed = [parse_constraint(c) for c in self.constraints or []]
        for constraint in parsed:
            self._check_recorded(constraint)
        object.__setattr__(self, "constraints", [c.text() for c in parsed] or None)
        multi = len(resolved) > 1
        if self.sampler is None:
            object.__setattr__(self, "sampler", "nsga2" if multi else "tpe")
        if self.pruner is None:
            object.__setattr__(self, "pruner", "pareto" if multi else "median")

    @staticmethod
    def _agree(name: str, suffix: str | None, flag: str) -> str:
        if flag not in DIRECTIONS:
            raise SpecError(f"direction must be maximize or minimize, got {flag!r}")
        if suffix is not None and suffix != flag:
            raise SpecError(f"metric {name}:{suffix} and --direction {flag} disagree; give one")
        return flag

    def _direction_of(self, name: str, direction: str | None) -> str:
        """A metric's direction: as given, or a built-in metric's own (which tuner's loop requires)."""
        builtin = {**VALIDATION, **MEASURES}.get(name)
        if not self.user_code:
            if builtin is None:
                raise SpecError(
                    f"unknown metric {name!r}; valid: {', '.join([*VALIDATION, *MEASURES])}, which tuner's loop measures "
                    "(any name your own code reports, with --objective or --command)"
                )
            if direction not in (None, builtin):
                raise SpecError(f"metric {name} is {builtin}d, not {direction}d; drop --direction (or the :{direction})")
        if direction is None and builtin is None:
            raise SpecError(f"metric {name}: say whether to --direction maximize or minimize it (with several metrics: --metric {name}:maximize)")
        return direction or builtin or "maximize"

    def _check_metrics(self, metrics: list[Metric]) -> None:
        if not self.user_code and not any(m.name in VALIDATION for m in metrics):
            costs = " and ".join(m.name for m in metrics)
            raise SpecError(
                f"{costs} alone would tune for the cheapest model whatever it learns; add a validation metric: "
                f"--metric val_accuracy --metric {metrics[0].name}:minimize"
            )
        self._check_patterns([m.name for m in metrics])

    def _check_recorded(self, constraint: Constraint) -> None:
        """A constraint bounds a metric the trials record: tuner's loop's, or a command's patterns'."""
        if not self.user_code and constraint.metric not in RECORDED:
            raise SpecError(f"constraint {constraint.text()}: tuner's loop records no {constraint.metric}; constrain one of {', '.join(RECORDED)}")
        names = [parse_metric_pattern(p).name for p in self.metric_patterns or []]
        if names and constraint.metric not in names:
            raise SpecError(f"constraint {constraint.text()}: no --metric-pattern reads {constraint.metric} (they read {', '.join(names)}); add one")

    def _check_search(self) -> None:
        """Samplers and pruners that fit the number of metrics."""
        from tuner.samplers import MULTI_SAMPLERS, SINGLE_PRUNERS

        multi = self.metrics is not None
        if multi and self.sampler not in MULTI_SAMPLERS:
            raise SpecError(f"sampler {self.sampler} optimizes one metric; with several metrics use {', '.join(MULTI_SAMPLERS)} (nsga2 by default)")
        if not multi and self.pruner == "pareto":
            raise SpecError("pruner pareto compares trials on several metrics; with one metric use median, percentile, sha or hyperband")
        if self.prune_on is not None:
            names = [parse_metric(m)[0] for m in self.metrics or []]
            if not multi:
                raise SpecError(f"--prune-on picks which of several metrics a single-metric pruner watches; this study has one ({self.metric}): drop it")
            if self.prune_on not in names:
                raise SpecError(f"--prune-on {self.prune_on} is not one of the study's metrics ({', '.join(names)})")
            if self.pruner == "hyperband":
                raise SpecError("hyperband cannot watch one of several metrics (its brackets read the study's directions); use --pruner sha (its one-bracket form) or pareto")
            if self.pruner not in SINGLE_PRUNERS:
                raise SpecError(f"--prune-on goes with a single-metric pruner ({', '.join(SINGLE_PRUNERS)}), not {self.pruner}: add --pruner median, or drop --prune-on")
        elif multi and self.pruner in SINGLE_PRUNERS:
            raise SpecError(
                f"pruner {self.pruner} watches one metric and this study has {len(self.metrics or [])}; use --pruner pareto (the default with several), "
                f"or name the metric it watches: --prune-on {self.metric}"
            )

    @property
    def objectives(self) -> tuple[Metric, ...]:
        """The metrics the study optimizes, in order, each with its direction."""
        if self.metrics is None:
            return (Metric(str(self.metric), str(self.direction)),)
        return tuple(Metric(*parse_metric(m)) for m in self.metrics)  # type: ignore[arg-type]

    @property
    def epoch_metric(self) -> str:
        """The metric that picks a trial's best epoch in tuner's loop: the first validation metric
        among the study's (a model's cost does not say which epoch learned most)."""
        return next((m.name for m in self.objectives if m.name in VALIDATION), str(self.metric))

    @property
    def bounds(self) -> tuple[Constraint, ...]:
        """The constraints a feasible trial meets."""
        return tuple(parse_constraint(c) for c in self.constraints or [])

    def _check_patterns(self, metrics: list[str]) -> None:
        """--metric-pattern and --step-pattern: a command's output read with regular expressions."""
        patterns = self.metric_patterns
        if patterns is None and self.step_pattern is None:
            return
        if self.command is None:
            raise SpecError("--metric-pattern and --step-pattern read a --command's output; an objective or tuner's loop reports its metrics itself")
        if patterns is not None and (not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns)):
            raise SpecError(f"metric_patterns must be a list of NAME=REGEX texts, got {patterns!r}"[:300])
        if self.step_pattern is not None and not isinstance(self.step_pattern, str):
            raise SpecError(f"step_pattern must be text, a REGEX with one group, got {self.step_pattern!r}"[:300])
        parsed = [parse_metric_pattern(p) for p in patterns or []]
        names = [p.name for p in parsed]
        if len(set(names)) < len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise SpecError(f"metric {twice} has two --metric-pattern; give one pattern a metric")
        if self.step_pattern is not None:
            parse_step_pattern(self.step_pattern)
        for metric in metrics:
            if names and metric not in names:
                close = difflib.get_close_matches(metric, names, n=1, cutoff=0.6)
                if close:
                    raise SpecError(f"metric {metric} is read by no --metric-pattern, which read {', '.join(names)}; did you mean --metric {close[0]}?")

    @property
    def user_code(self) -> bool:
        """Trials run the person's own code (an objective or a command), not tuner's loop."""
        return self.objective is not None or self.command is not None

    @property
    def code_kind(self) -> str:
        return "objective" if self.objective is not None else "command" if self.command is not None else "tuner's loop"

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in _OMITTED_WHEN_UNSET and v is None)}

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> "StudySpec":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: a study spec must be a mapping of settings, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, data)) - fields)
        if unknown:
            raise SpecError(f"{source}: unknown setting {unknown[0]!r}; valid: {', '.join(sorted(fields))}")
        for key in ("name", "space"):
            if not data.get(key):
                raise SpecError(f"{source}: `{key}` is required")
        try:
            return cls(**data)
        except SpecError as e:
            raise SpecError(f"{source}: {e}") from None


def parse_pack(value: int | str | None) -> int | None:
    """--pack / `pack:` as given: a number of trials (1: off), or auto (None)."""
    if value is None or value == "auto":
        return None
    n = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and value.strip().isdigit():
        n = int(value)
    if n is None or n < 1:
        raise SpecError(f"pack {value!r} is not valid; give the number of trials trained at once (1: off) or auto")
    return n


def spec_file_settings(path: Path) -> dict[str, Any]:
    """The settings a spec file states (validated), without the defaults of those it leaves out:
    what to check against a stored study."""
    spec = load_spec(path)
    stated = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {k: v for k, v in spec.as_dict().items() if k in stated}


def load_spec(path: Path) -> StudySpec:
    if not path.is_file():
        raise SpecError(f"study spec {path} not found (the shipped ones are in studies/)")
    from tuner.space import read_small_text

    text = read_small_text(path, error=SpecError)
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = (getattr(e, "problem", None) or str(e) or e.__class__.__name__).splitlines()[0]
        raise SpecError(f"{path}: not valid YAML{at}: {problem}") from None
    return StudySpec.from_dict(data, source=str(path))
