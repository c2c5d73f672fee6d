"""The options the study commands share (typed aliases, as typer declares them), and a spec
from a spec file and options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tuner.errors import SpecError
from tuner.metrics import MEASURES, parse_metric
from tuner.spec import StudySpec, load_spec

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The study's name in storage.")]


SpecOpt = Annotated[Optional[Path], typer.Option("--spec", metavar="FILE", help="A study spec YAML file (see studies/); options override it.")]


SpaceOpt = Annotated[Optional[str], typer.Option("--space", metavar="NAME|FILE", help="Search space: a name in search_spaces/ or a YAML path.")]


WorkloadOpt = Annotated[
    Optional[str],
    typer.Option("--workload", metavar="WORKLOAD", help="digits, breast_cancer, wine; a .csv (with --target) or .npz file; or module:function."),
]


TargetOpt = Annotated[Optional[str], typer.Option("--target", metavar="COLUMN", help="The column to predict, for a CSV workload.")]


SamplerOpt = Annotated[
    Optional[str], typer.Option("--sampler", metavar="NAME", help="tpe, random, grid, gp, qmc, cmaes, nsga2 or nsga3; nsga2 with several metrics \\[default: tpe].")
]
HistoryOpt = Annotated[
    Optional[int],
    typer.Option("--history", metavar="N", min=1, help="tpe and gp model only the last N finished trials: their time a trial grows with the history (TPE: a second at 100,000 trials) \\[default: all]."),
]


PrunerOpt = Annotated[
    Optional[str],
    typer.Option("--pruner", metavar="NAME", help="none, median, percentile, sha, hyperband or pareto; pareto with several metrics \\[default: median]."),
]


MetricOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--metric", metavar="NAME[:DIRECTION]",
        help="val_accuracy, val_loss, val_rmse, params, train_seconds or latency_ms; with your own code, any name it reports. "
        "Repeat for several objectives, each NAME:maximize or NAME:minimize where not built in: --metric val_accuracy --metric params:minimize \\[default: val_accuracy].",
    ),
]


ConstraintOpt = Annotated[
    Optional[list[str]],
    typer.Option("--constraint", metavar="METRIC<=N", help="A bound feasible trials meet, on any metric trials record: \"params<=50000\", \"latency_ms<=2\" (repeat for more)."),
]


PruneOnOpt = Annotated[
    Optional[str], typer.Option("--prune-on", metavar="METRIC", help="With several metrics: the one a single-metric pruner (median, percentile, sha) watches.")
]


DirectionOpt = Annotated[Optional[str], typer.Option("--direction", metavar="DIRECTION", help="maximize or minimize the metric (needed for a metric of your own).")]


ObjectiveOpt = Annotated[
    Optional[str], typer.Option("--objective", metavar="MODULE:FUNCTION", help="Your own objective: a function called with a trial handle per trial.")
]


CommandOpt = Annotated[
    Optional[str],
    typer.Option("--command", metavar="COMMAND", help='Your own training script, one process per trial: "python train.py --lr {lr}" ({name}, ${args}, $TUNER_*).'),
]


TrialTimeoutOpt = Annotated[Optional[float], typer.Option("--trial-timeout", metavar="SECONDS", help="Seconds a --command trial may run before it is ended as failed.")]


MetricPatternOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--metric-pattern", metavar="NAME=REGEX",
        help="Read metric NAME from a --command's output where REGEX matches, its group the number: 'test_loss=test loss: (\\S+)' (repeat for more; try them with `tuner command check-metrics`).",
    ),
]


StepPatternOpt = Annotated[
    Optional[str], typer.Option("--step-pattern", metavar="REGEX", help="Read the step of a --command's reports from its output: 'step (\\d+)' (or a (?P<step>...) group in a metric pattern).")
]


MaxFailuresOpt = Annotated[
    Optional[int], typer.Option("--max-failures", metavar="N", min=1, help="Failed trials in one run that stop it \\[default: a quarter of the budget, at least 10].")
]


PatienceOpt = Annotated[
    Optional[int],
    typer.Option("--patience", metavar="N", min=0, help="Stop the study when its best value (several metrics: the front's hypervolume) has not improved in the last N finished trials; 0: off.", rich_help_panel="Stopping early"),
]
MinDeltaOpt = Annotated[Optional[float], typer.Option("--min-delta", metavar="X", min=0.0, help="What counts as an improvement for --patience: more than X \\[default: any].", rich_help_panel="Stopping early")]
GoalOpt = Annotated[
    Optional[str], typer.Option("--goal", metavar="VALUE", help="Stop the study once a trial's metric reaches VALUE (one metric); none: off.", rich_help_panel="Stopping early")
]
MaxTimeOpt = Annotated[
    Optional[str],
    typer.Option("--max-time", metavar="DURATION", help="Stop the study when its trials have run this long in all, across runs and workers: 90m, 2h, 3600; none: off.", rich_help_panel="Stopping early"),
]


WarmStartOpt = Annotated[
    Optional[str],
    typer.Option("--warm-start", metavar="STUDY[:K]", help="Start a new study with the K best configurations of an earlier one (K 10; with several metrics, its Pareto front), mapped onto this space.", rich_help_panel="Warm starts"),
]
WarmStorageOpt = Annotated[
    Optional[str], typer.Option("--warm-start-storage", metavar="URL", help="Where the --warm-start (or --warm-start-as-prior) study is \\[default: this study's storage].", rich_help_panel="Warm starts")
]
WarmPriorOpt = Annotated[
    Optional[str],
    typer.Option("--warm-start-as-prior", metavar="STUDY", help="Give the sampler (tpe, gp) an earlier study's finished trials as observations: not run again, not counted.", rich_help_panel="Warm starts"),
]


def warm_start_of(study: Optional[str], storage: Optional[str], url: str, prior: Optional[str] = None) -> tuple[Optional[tuple[str, int, str]], Optional[tuple[str, str]]]:
    """--warm-start, --warm-start-as-prior and --warm-start-storage as create_study takes them."""
    from tuner.urls import resolve_url
    from tuner.warmstart import parse_warm_start

    if study is None and prior is None:
        if storage is not None:
            raise SpecError("--warm-start-storage says where the --warm-start study is; give --warm-start STUDY too")
        return None, None
    where = resolve_url(storage) if storage else url
    warm = (*parse_warm_start(study), where) if study is not None else None
    return warm, ((prior, where) if prior is not None else None)  # type: ignore[return-value]


StreakOpt = Annotated[
    Optional[int], typer.Option("--max-streak", metavar="N", min=1, help="Consecutive failures of one kind that stop a run \\[default: 5].")
]


SeedOpt = Annotated[Optional[int], typer.Option("--seed", metavar="INT", min=0, help="Seeds the sampler, the split and every trial \\[default: 0].")]


TrialsOpt = Annotated[
    Optional[int], typer.Option("--trials", metavar="N", min=1, help="Finished trials the study should hold in total \\[default: 30, grid: its size].")
]


ValOpt = Annotated[Optional[float], typer.Option("--val-fraction", metavar="FRACTION", help="Share held out for validation \\[default: 0.2].")]


DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N; auto takes a GPU when torch sees one.")]


DbRetryOpt = Annotated[
    Optional[str],
    typer.Option(
        "--db-retry-for",
        metavar="DURATION",
        help="How long a worker waits out a lost database (a restart, a failover, a locked or full SQLite file) before it stops: 90s, 15m, 2h "
        "[default: TUNER_DB_RETRY_FOR, else 10m]. Trials keep training meanwhile.",
        rich_help_panel="Database",
    ),
]

TimeoutOpt = Annotated[Optional[float], typer.Option("--timeout", metavar="SECONDS", min=1, help="Stop starting trials after this many seconds.")]


WorkersOpt = Annotated[
    Optional[int],
    typer.Option("--workers", metavar="N", min=1, max=256, help="Worker processes on this machine sharing the study \\[default: 1, with --gpus: its slots]."),
]


GpusOpt = Annotated[
    Optional[str],
    typer.Option("--gpus", metavar="IDS", help="Pin the workers to these GPUs (CUDA_VISIBLE_DEVICES): all, 0-7 or 0,2,5."),
]


PerGpuOpt = Annotated[int, typer.Option("--per-gpu", metavar="N", help="Workers on each GPU of --gpus.")]


MaxRestartsOpt = Annotated[
    int, typer.Option("--max-restarts", metavar="N", min=0, help="Dead workers replaced on their slot, in all, while work is left.")
]


ThreadsOpt = Annotated[
    Optional[int], typer.Option("--threads", metavar="N", min=1, help="Torch threads per worker \\[default: cores / workers].")
]


PackOpt = Annotated[
    Optional[str],
    typer.Option("--pack", metavar="K|auto", help="Trials trained at once as one batched model (tuner's loop, MLPs): a number, 1 for off, or auto (8 on a CPU, 32 on a GPU; at most a quarter of the budget under tpe, gp, cmaes) \\[default: auto on a GPU, 1 on a CPU]."),
]


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; print only the result.")]


SpacesDirOpt = Annotated[Path, typer.Option("--spaces-dir", metavar="DIR", help="Folder of space files.")]


# the options `study create` and `study run` share that are settings of the study's spec, by the
# name of the command's argument (its spec field's name, but --metric-pattern's: metric_patterns)
SPEC_OPTIONS = (
    "space", "workload", "target", "sampler", "history", "pruner", "metric", "direction", "objective", "command", "trial_timeout", "seed", "trials",
    "val_fraction", "metric_pattern", "step_pattern", "max_failures", "max_streak", "constraint", "prune_on",
    "patience", "min_delta", "goal", "max_time",
)


def spec_options(arguments: dict[str, Any]) -> dict[str, Any]:
    """The spec settings among a command's arguments (pass `locals()` first thing), None where not
    given; a repeatable option given no times is None too. One --metric is the spec's `metric`
    (NAME:DIRECTION as metric and direction), several its `metrics`."""
    options: dict[str, Any] = {}
    for name in SPEC_OPTIONS:
        if name == "metric_pattern":  # repeatable: given no times, an empty list
            options["metric_patterns"] = arguments[name] or None
        elif name == "constraint":
            options["constraints"] = arguments[name] or None
        elif name == "metric":
            given = arguments[name] or []
            if len(given) > 1:
                options["metrics"] = given
            elif given:
                metric, direction = parse_metric(given[0])
                if direction is not None and arguments["direction"] not in (None, direction):
                    raise SpecError(f"--metric {given[0]} and --direction {arguments['direction']} disagree; give one")
                options["metric"], options["direction"] = metric, direction or arguments["direction"]
        elif name != "direction" or "direction" not in options:
            options[name] = arguments[name]
    return options


# settings that say a new study is meant, where no space is given (--trials alone also resumes one)
_DEFINING = ("workload", "target", "sampler", "pruner", "metric", "metrics", "direction", "constraints", "prune_on", "seed", "val_fraction")


def default_space(options: dict[str, Any]) -> Optional[str]:
    """The search space of a new study of tuner's loop given none: `quick` (the tour's), or
    `tradeoff` (models from 4 to 256 units) where a metric is a model's cost, whose front should
    run from tiny to large. None for your own code, whose parameters only its own space can name,
    and where no setting says a new study is meant (a bare NAME, perhaps mistyped, must not start one)."""
    if options.get("objective") or options.get("command"):
        return None
    if not any(options.get(k) is not None for k in _DEFINING):
        return None
    names = [parse_metric(m)[0] for m in options.get("metrics") or []] + ([options["metric"]] if options.get("metric") else [])
    return "tradeoff" if any(n in MEASURES for n in names) else "quick"


def spec_from(name: Optional[str], spec_file: Optional[Path], options: dict[str, Any]) -> StudySpec:
    """A spec file as the base, options on top, the NAME argument naming the study."""
    base: dict[str, Any] = load_spec(spec_file).as_dict() if spec_file else {}
    if options.get("metrics") or options.get("metric"):  # the metrics given replace the file's, one or several
        base = {k: v for k, v in base.items() if k not in ("metric", "metrics", "direction")}
    merged = {**base, **{k: v for k, v in options.items() if v is not None}}
    if name:
        merged["name"] = name
    if not merged.get("name"):
        raise SpecError("give the study a NAME (or a --spec file with `name:`)")
    if not merged.get("space"):
        raise SpecError(f"study '{merged['name']}' needs a search space: pass --space NAME (see `tuner space list`) or --spec FILE")
    return StudySpec.from_dict(merged, source=str(spec_file) if spec_file else "options")
