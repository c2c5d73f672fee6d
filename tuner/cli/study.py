"""`tuner study ...`: create, run, resume, list, show, best, trials, export, delete, release."""

from __future__ import annotations

import dataclasses
import enum
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tuner.cli.common import Format, FormatOpt, StorageOpt, console, console_err, fmt_value, print_json
from tuner import attrs as A
from tuner.attrs import fail_reason
from tuner.errors import SpecError
from tuner.slots import DEFAULT_MAX_RESTARTS
from tuner.space import SPACES_DIR
from tuner.spec import StudySpec, load_spec, parse_pack, spec_file_settings
from tuner.urls import DEFAULT_ARTIFACTS, mask, resolve_url

app = typer.Typer(help="Studies: run a search and read its results.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The study's name in storage.")]
SpecOpt = Annotated[Optional[Path], typer.Option("--spec", metavar="FILE", help="A study spec YAML file (see studies/); options override it.")]
SpaceOpt = Annotated[Optional[str], typer.Option("--space", metavar="NAME|FILE", help="Search space: a name in search_spaces/ or a YAML path.")]
WorkloadOpt = Annotated[
    Optional[str],
    typer.Option("--workload", metavar="WORKLOAD", help="digits, breast_cancer, wine; a .csv (with --target) or .npz file; or module:function."),
]
TargetOpt = Annotated[Optional[str], typer.Option("--target", metavar="COLUMN", help="The column to predict, for a CSV workload.")]
SamplerOpt = Annotated[Optional[str], typer.Option("--sampler", metavar="NAME", help="tpe, random, grid, gp, qmc or cmaes \\[default: tpe].")]
PrunerOpt = Annotated[Optional[str], typer.Option("--pruner", metavar="NAME", help="none, median, percentile, sha or hyperband \\[default: median].")]
MetricOpt = Annotated[
    Optional[str],
    typer.Option("--metric", metavar="NAME", help="val_accuracy, val_loss or val_rmse; with your own code, any name it reports \\[default: val_accuracy]."),
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
StreakOpt = Annotated[
    Optional[int], typer.Option("--max-streak", metavar="N", min=1, help="Consecutive failures of one kind that stop a run \\[default: 5].")
]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", metavar="INT", min=0, help="Seeds the sampler, the split and every trial \\[default: 0].")]
TrialsOpt = Annotated[
    Optional[int], typer.Option("--trials", metavar="N", min=1, help="Finished trials the study should hold in total \\[default: 30, grid: its size].")
]
ValOpt = Annotated[Optional[float], typer.Option("--val-fraction", metavar="FRACTION", help="Share held out for validation \\[default: 0.2].")]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N; auto takes a GPU when torch sees one.")]
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


def _spec_from(name: Optional[str], spec_file: Optional[Path], options: dict[str, Any]) -> StudySpec:
    """A spec file as the base, options on top, the NAME argument naming the study."""
    base: dict[str, Any] = load_spec(spec_file).as_dict() if spec_file else {}
    merged = {**base, **{k: v for k, v in options.items() if v is not None}}
    if name:
        merged["name"] = name
    if not merged.get("name"):
        raise SpecError("give the study a NAME (or a --spec file with `name:`)")
    if not merged.get("space"):
        raise SpecError(f"study '{merged['name']}' needs a search space: pass --space NAME (see `tuner space list`) or --spec FILE")
    return StudySpec.from_dict(merged, source=str(spec_file) if spec_file else "options")


@app.command()
def create(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="The study's name (or `name:` in --spec).")] = None,
    spec: SpecOpt = None,
    space: SpaceOpt = None,
    workload: WorkloadOpt = None,
    target: TargetOpt = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    metric: MetricOpt = None,
    direction: DirectionOpt = None,
    objective: ObjectiveOpt = None,
    command: CommandOpt = None,
    trial_timeout: TrialTimeoutOpt = None,
    metric_pattern: MetricPatternOpt = None,
    step_pattern: StepPatternOpt = None,
    max_failures: MaxFailuresOpt = None,
    max_streak: StreakOpt = None,
    seed: SeedOpt = None,
    trials: TrialsOpt = None,
    val_fraction: ValOpt = None,
    storage: StorageOpt = None,
    spaces_dir: SpacesDirOpt = SPACES_DIR,
) -> None:
    """Create a study without running it (grid points are queued now)."""
    from tuner.study import create_study

    options = dict(
        space=space, workload=workload, target=target, sampler=sampler, pruner=pruner, metric=metric, direction=direction,
        objective=objective, command=command, trial_timeout=trial_timeout, seed=seed, trials=trials, val_fraction=val_fraction,
        metric_patterns=metric_pattern or None, step_pattern=step_pattern, max_failures=max_failures, max_streak=max_streak,
    )
    url = resolve_url(storage)
    new_db = _new_database(url)
    loaded = create_study(_spec_from(name, spec, options), url, spaces_dir=spaces_dir)
    _say_new_database(new_db)
    console.print(f"created study '{loaded.spec.name}' in {mask(url)}: {loaded.spec.sampler} over '{loaded.space.name}', budget {loaded.spec.trials} trials")


@app.command()
def run(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="The study's name; an existing study is continued.")] = None,
    spec: SpecOpt = None,
    space: SpaceOpt = None,
    workload: WorkloadOpt = None,
    target: TargetOpt = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    metric: MetricOpt = None,
    direction: DirectionOpt = None,
    objective: ObjectiveOpt = None,
    command: CommandOpt = None,
    trial_timeout: TrialTimeoutOpt = None,
    metric_pattern: MetricPatternOpt = None,
    step_pattern: StepPatternOpt = None,
    max_failures: MaxFailuresOpt = None,
    max_streak: StreakOpt = None,
    seed: SeedOpt = None,
    trials: TrialsOpt = None,
    val_fraction: ValOpt = None,
    device: DeviceOpt = "auto",
    timeout: TimeoutOpt = None,
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    per_gpu: PerGpuOpt = 1,
    max_restarts: MaxRestartsOpt = DEFAULT_MAX_RESTARTS,
    threads: ThreadsOpt = None,
    pack: PackOpt = None,
    quiet: QuietOpt = False,
    fmt: FormatOpt = Format.table,
    storage: StorageOpt = None,
    spaces_dir: SpacesDirOpt = SPACES_DIR,
) -> None:
    """Run a study until it holds --trials finished trials (creating it first if it is new)."""
    from tuner.study import prepare_run

    pool = _pool(workers=workers, gpus=gpus, per_gpu=per_gpu, max_restarts=max_restarts, device=device)
    url = resolve_url(storage)
    options = dict(
        space=space, workload=workload, target=target, sampler=sampler, pruner=pruner, metric=metric, direction=direction,
        objective=objective, command=command, trial_timeout=trial_timeout, seed=seed, trials=trials, val_fraction=val_fraction,
        metric_patterns=metric_pattern or None, step_pattern=step_pattern, max_failures=max_failures, max_streak=max_streak,
        pack=pack,
    )
    parse_pack(pack)
    given = _spec_from(name, spec, options) if spec or space else None  # a typo is told before torch loads
    study_name = name or (given.name if given else None)
    if not study_name:
        raise SpecError("give the study a NAME (or a --spec file with `name:`)")
    if given is not None:
        from tuner.space import load_space

        load_space(given.space, spaces_dir=spaces_dir)  # a missing or bad space too
    from tuner.train import resolve_device  # torch: after the settings are checked

    resolve_device(device)  # a bad --device fails before anything is written
    file_values = spec_file_settings(spec) if spec else {}
    new_db = _new_database(url)
    loaded, change = prepare_run(
        study_name, url, given=given, settings={k: v for k, v in options.items() if v is not None}, spaces_dir=spaces_dir,
        file_settings=file_values, spec_file=str(spec) if spec else None,
    )
    _say_new_database(new_db)
    _say_budget(loaded.spec.name, change)
    pack = pack or (given.pack if given else None) or loaded.spec.pack
    _run(loaded, url, device=device, timeout=timeout, pool=pool, threads=threads, pack=pack, quiet=quiet, fmt=fmt, limits=(max_failures, max_streak))


@dataclasses.dataclass(frozen=True)
class _Pool:
    """Local worker processes: their slots (GPU-pinned or not) and how many deaths are replaced."""

    slots: list[Any]
    max_restarts: int
    label: str


def _pool(*, workers: Optional[int], gpus: Optional[str], per_gpu: int, max_restarts: int, device: str) -> Optional[_Pool]:
    """--workers, --gpus and --per-gpu as slots, checked before anything is written; None for
    one worker in this process."""
    from tuner.slots import parse_gpus, plan_slots

    if gpus is not None and device not in ("auto", "cpu", "cuda", "cuda:0"):
        raise SpecError(f"--device {device} with --gpus: each worker sees only its own GPU, as cuda:0; pass --device cuda (or auto, or cpu)")
    ids = parse_gpus(gpus) if gpus is not None else None
    slots = plan_slots(ids, per_gpu=per_gpu, n_workers=workers)
    if ids is None and len(slots) == 1:
        return None
    label = f"{len(slots)} workers" if ids is None else f"{len(slots)} workers on GPU {','.join(ids)}"
    return _Pool(slots=slots, max_restarts=max_restarts, label=label)


def _new_database(url: str) -> Optional[Path]:
    """The SQLite file a command is about to create, if it does not exist yet."""
    from tuner.storage import sqlite_path

    path = sqlite_path(url)
    return path if path is not None and not path.exists() else None


def _say_new_database(path: Optional[Path]) -> None:
    if path is not None and path.exists():  # relative URLs depend on the folder: say where it went
        console_err.print(f"new database {path.resolve()}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def resume(
    name: NameArg,
    trials: TrialsOpt = None,
    device: DeviceOpt = "auto",
    timeout: TimeoutOpt = None,
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    per_gpu: PerGpuOpt = 1,
    max_restarts: MaxRestartsOpt = DEFAULT_MAX_RESTARTS,
    threads: ThreadsOpt = None,
    pack: PackOpt = None,
    max_failures: MaxFailuresOpt = None,
    max_streak: StreakOpt = None,
    quiet: QuietOpt = False,
    fmt: FormatOpt = Format.table,
    storage: StorageOpt = None,
) -> None:
    """Continue a study from the database with its stored space, sampler, pruner and budget."""
    from tuner.study import check_data, open_study, set_budget
    from tuner.train import resolve_device

    parse_pack(pack)
    pool = _pool(workers=workers, gpus=gpus, per_gpu=per_gpu, max_restarts=max_restarts, device=device)
    resolve_device(device)
    url = resolve_url(storage)
    loaded = open_study(name, url)
    check_data(loaded)  # before the budget is touched
    _say_budget(name, set_budget(loaded, trials))
    _run(
        loaded, url, device=device, timeout=timeout, pool=pool, threads=threads, pack=pack or loaded.spec.pack, quiet=quiet, fmt=fmt,
        limits=(max_failures, max_streak),
    )


class _LogLines:
    """Progress as lines, for output that is not a terminal: one per finished trial (a worker's
    own), or, with --workers, one when the study's count moves, at most every LOG_EVERY_S."""

    LOG_EVERY_S = 5.0

    def __init__(self, metric: str) -> None:
        import time

        self.metric, self._clock, self._last = metric, time.monotonic, (-1, -float("inf"))

    def _say(self, line: str) -> None:
        console_err.print(line, markup=False, highlight=False, soft_wrap=True)

    def trial(self, trial: Any, n_finished: int, budget: int, best: Optional[float]) -> None:
        state = trial.state.name.lower()
        what = f"{self.metric}={fmt_value(trial.value)}" if state == "complete" else ("failed: " + fail_reason(trial.user_attrs) if state == "fail" else state)
        self._say(f"trial {trial.number} {what} ({n_finished}/{budget} finished, best {fmt_value(best)})")

    def counts(self, n_finished: int, budget: int, best: Optional[float]) -> None:
        now = self._clock()
        if n_finished != self._last[0] and now - self._last[1] >= self.LOG_EVERY_S:
            self._last = (n_finished, now)
            self._say(f"{n_finished}/{budget} finished, best {self.metric} {fmt_value(best)}")


def _say_budget(name: str, change: Optional[tuple[int, int]]) -> None:
    if change is not None:
        console_err.print(f"study '{name}': budget {change[0]} -> {change[1]} finished trials", markup=False, highlight=False)


def _run(
    loaded: Any,
    url: str,
    *,
    device: str,
    timeout: Optional[float],
    pool: Optional[_Pool] = None,
    threads: Optional[int] = None,
    pack: Optional[str] = None,
    quiet: bool,
    fmt: Format,
    limits: tuple[Optional[int], Optional[int]] = (None, None),
) -> None:
    from tuner.study import FINISHED, run_study
    from tuner.slots import describe_death
    from tuner.workers import run_workers

    spec = loaded.spec
    # a bar on a terminal; in a log (nohup, CI, a cluster job) a line per finished trial instead,
    # as a redrawn bar writes nothing there until the study ends
    show_bar = not quiet and fmt == Format.table and console_err.is_terminal
    log_lines = _LogLines(spec.metric) if not quiet and fmt == Format.table and not show_bar else None
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console_err,
        disable=not show_bar,
    )
    done_before = len(loaded.study.get_trials(deepcopy=False, states=FINISHED))
    label = spec.name if pool is None else f"{spec.name} ({pool.label})"
    try:
        with progress:
            task = progress.add_task(label, total=spec.trials, completed=done_before, best=fmt_value(None))

            def on_progress(n_finished: int, budget: int, best: Optional[float]) -> None:
                progress.update(task, completed=n_finished, total=budget, best=fmt_value(best))
                if log_lines is not None and pool is not None:
                    log_lines.counts(n_finished, budget, best)

            def on_trial(trial: Any, n_finished: int, budget: int, best: Optional[float]) -> None:
                progress.update(task, completed=n_finished, total=budget, best=fmt_value(best))
                if log_lines is not None:
                    log_lines.trial(trial, n_finished, budget, best)
                if trial.state.name == "FAIL" and show_bar:
                    progress.console.print(f"trial {trial.number} failed: {fail_reason(trial.user_attrs)}", markup=False)

            if pool is not None:
                result = run_workers(
                    loaded, slots=pool.slots, max_restarts=pool.max_restarts, device=device, timeout=timeout, threads=threads, pack=pack, on_progress=on_progress,
                    limits=limits,
                )
            else:
                on_wait = _WaitNotice(progress.console if show_bar else console_err)
                result = run_study(
                    loaded, device=device, timeout=timeout, on_trial=on_trial, on_wait=on_wait, threads=threads, pack=pack,
                    max_failures=limits[0], max_streak=limits[1],
                )
    except KeyboardInterrupt as e:
        signal_name = getattr(e, "signal_name", "SIGINT")
        console_err.print(
            f"interrupted by {signal_name}: the running {'trials were' if pool is not None else 'trial was'} closed as failed and queued again; "
            f"`tuner study resume {spec.name}` continues the study",
            markup=False,
        )
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    if fmt == Format.json:
        print_json({**result.to_json(), "storage": mask(url), "metric": spec.metric, "direction": spec.direction})
        return
    why = result.stopped.says
    failed = f"; {result.n_failed} failed (not counted)" if result.n_failed else ""
    console.print(
        f"study '{result.name}': {result.n_finished}/{result.budget} finished ({result.n_complete} complete + "
        f"{result.n_pruned} pruned{failed}), {why}; this run: {_count(result.ran, 'trial')} in {result.elapsed_s:.1f}s"
    )
    for death in result.worker_deaths:
        console.print(f"{describe_death(death)}; replaced on its slot", markup=False, highlight=False, soft_wrap=True)
    if result.best_trial is None:
        console.print("no complete trial yet")
        return
    console.print(f"best {spec.metric}: {result.best_value:.4f} (trial {result.best_trial})")
    for k, v in result.best_params.items():
        console.print(f"  {k}: {fmt_value(v)}")
    if not quiet:
        console.print(_dashboard_hint(url), markup=False, highlight=False, soft_wrap=True)


class _WaitNotice:
    """Says, on stderr, which running trials of other workers this one waits for and when each
    will be declared lost: when that set changes, and every WAIT_NOTICE_S while it does not."""

    WAIT_NOTICE_S = 30.0

    def __init__(self, out: Any) -> None:
        self._out = out
        self._last: tuple[tuple[int, ...], float] = ((), -float("inf"))

    def __call__(self, running: list[dict[str, Any]]) -> None:
        import time

        numbers = tuple(r["number"] for r in running)
        if numbers == self._last[0] and time.monotonic() - self._last[1] < self.WAIT_NOTICE_S:
            return
        self._last = (numbers, time.monotonic())
        n = len(running)
        what = "; ".join(describe_running(r) for r in running) or "none left (a queued trial is on its way)"
        self._out.print(
            f"waiting for {n} running trial{'s' * (n != 1)} of other workers, the budget's last places: {what}",
            markup=False, highlight=False, soft_wrap=True,
        )


def describe_running(r: dict[str, Any]) -> str:
    """trial 3 on host:pid, last beat 4s ago, lost in 26s if silent."""
    beat = "no heartbeat yet" if r["heartbeat_age_s"] is None else f"last beat {r['heartbeat_age_s']:.0f}s ago"
    if r["worker_gone"]:
        lost = "its process is gone: freed at the next look"
    elif r["lost_in_s"] is None:
        lost = "no start time: cannot tell when it is lost"
    else:
        lost = f"lost in {r['lost_in_s']:.0f}s if silent" if r["lost_in_s"] > 0 else "lost at the next look"
    return f"trial {r['number']} on {r['worker'] or 'an unknown worker'}, {beat}, {lost}"


def _dashboard_hint(url: str) -> str:
    """A dashboard command that can be pasted as printed: no --storage where the dashboard finds
    the storage itself (the default, or TUNER_STORAGE), and never a masked password in one."""
    open_it = "(then open http://127.0.0.1:8080)"
    if url == resolve_url(None):
        return f"dashboard: tuner dashboard   {open_it}"
    if mask(url) != url:  # a password: printed, it would be in the terminal's history and logs
        return f"dashboard: TUNER_STORAGE='<this study's URL, with its password>' tuner dashboard   {open_it}"
    return f"dashboard: tuner dashboard --storage '{url}'   {open_it}"


@app.command("list")
def list_(storage: StorageOpt = None, fmt: FormatOpt = Format.table) -> None:
    """List the studies in the storage."""
    from tuner.study import list_studies

    url = resolve_url(storage)
    rows = list_studies(url)
    if fmt == Format.json:
        print_json(rows)
        return
    if not rows:
        console.print(f"no studies in {mask(url)}")
        return
    # the name is the one column a person must type: it is never cut; the other columns come in
    # their order of use while they fit, and the workload (perhaps a long path) takes what is left
    cells: dict[str, list[str]] = {
        "name": [r["name"] for r in rows],
        "trials": [str(r["trials"]) for r in rows],
        "best": [f"{r['best_value']:.4g}" if isinstance(r["best_value"], float) else fmt_value(r["best_value"]) for r in rows],
        "budget": [fmt_value(r["budget"]) for r in rows],
        "dir": [str(r["direction"])[:3] for r in rows],
        "sampler": [fmt_value(r["sampler"]) for r in rows],
        "workload": [fmt_value(r["workload"]) for r in rows],
    }
    workload = cells.pop("workload")
    widths = {"name": _column_width("name", cells["name"])}
    room = console.width - 1 - widths["name"] - 3  # the left border, then the name's column
    rest = {h: c for h, c in cells.items() if h != "name"}
    fitting = _fitting(rest, room)
    for header in fitting:
        widths[header] = _column_width(header, rest[header])
        room -= widths[header] + 3
    if len(fitting) == len(rest) and room - 3 >= 8:  # the workload takes what is left, cut short if it must
        cells["workload"] = workload
        widths["workload"] = min(_column_width("workload", workload), room - 3)
    table = Table()
    for header, width in widths.items():
        table.add_column(header, no_wrap=True, overflow="ellipsis", min_width=width, max_width=width)
    for i in range(len(rows)):
        table.add_row(*(cells[h][i] for h in widths))
    console.print(table)


@app.command()
def show(name: NameArg, storage: StorageOpt = None, fmt: FormatOpt = Format.table) -> None:
    """A study's settings, trial counts by state, why trials were pruned, and its best trial."""
    from tuner.study import open_study, study_summary

    url = resolve_url(storage)
    s = study_summary(open_study(name, url), url)
    if fmt == Format.json:
        print_json(s)
        return
    spec = s["spec"]
    console.print(f"study {s['name']}  ({s['storage']})")
    if spec.get("command"):
        trains = f"command {spec['command']}"
    elif spec.get("objective"):
        trains = f"objective {spec['objective']}"
    else:
        trains = f"workload {spec['workload']}"
    console.print(f"  space {spec['space']}, {trains}, sampler {spec['sampler']}, pruner {spec['pruner']}, seed {spec['seed']}", markup=False)
    if spec.get("metric_patterns") or spec.get("step_pattern"):
        read = [f"'{p}'" for p in spec.get("metric_patterns") or []] + ([f"step '{spec['step_pattern']}'"] if spec.get("step_pattern") else [])
        console.print(f"  reads from its output: {', '.join(read)}", markup=False, highlight=False)
    console.print(f"  metric {spec['metric']} ({s['direction']}), budget {spec['trials']}, finished {s['finished']}")
    counts = ", ".join(f"{k} {v}" for k, v in s["trials"].items() if v and k != "total")
    console.print(f"  trials: {s['trials']['total']} ({counts or 'none'})")
    if s["pruned_reasons"]:
        console.print("  pruned: " + ", ".join(f"{k} {v}" for k, v in s["pruned_reasons"].items()))
    if s["failed_reasons"]:
        console.print("  failed: " + ", ".join(f"{k} {v}" for k, v in s["failed_reasons"].items()), markup=False)
    if s["retried"]:
        console.print(f"  retried: {s['retried']} trials re-queued after a lost worker or an interruption")
    for r in s["running"]:
        console.print(f"  running: {describe_running(r)}", markup=False, highlight=False)
    _print_best(s["best"], spec["metric"], indent="  ")


def _print_best(best: Optional[dict[str, Any]], metric: str, *, indent: str = "") -> None:
    if best is None:
        console.print(f"{indent}no complete trial yet")
        return
    console.print(f"{indent}best {metric}: {best['value']:.4f} (trial {best['number']})")
    for k, v in best["params"].items():
        console.print(f"{indent}  {k}: {fmt_value(v)}")


@app.command()
def best(
    name: NameArg,
    retrain: Annotated[bool, typer.Option("--retrain", help="Retrain the best configuration and save its model.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Model file \\[default: studies/models/NAME-trialN.pt].")] = None,
    device: DeviceOpt = "auto",
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Folder of files attached to studies.")] = DEFAULT_ARTIFACTS,
    storage: StorageOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """The best trial: value, parameters and its training record; --retrain saves its model."""
    from tuner.study import open_study, trial_dict

    loaded = open_study(name, resolve_url(storage))
    try:
        trial = loaded.study.best_trial
    except ValueError:
        raise SpecError(f"study '{name}' has no complete trial yet; run it with `tuner study run {name}`") from None
    d = trial_dict(trial)
    if retrain:
        from tuner.retrain import retrain_best

        r = retrain_best(loaded, out=out, device=device, artifacts_dir=artifacts)
        d["retrained"] = {"file": str(r.path), "epoch": r.epoch, "reproduced": r.reproduced, "artifact_id": r.artifact_id}
    reproduce = _reproduce(loaded.spec, d["user_attrs"])
    if fmt == Format.json:
        print_json({"metric": loaded.spec.metric, **d, **({"reproduce": reproduce} if reproduce else {})})
        return
    _print_best(d, loaded.spec.metric)
    attrs = d["user_attrs"]
    steps = "epochs_run" if loaded.spec.command is None and loaded.spec.objective is None else "last step"  # a script's own count
    shown = {steps: attrs.get(A.EPOCHS_RUN), **{k: attrs.get(k) for k in (A.DURATION_S, A.DEVICE, A.SEED)}}
    console.print("  " + ", ".join(f"{k} {fmt_value(v)}" for k, v in shown.items() if v is not None))
    if attrs.get(A.TRIAL_DIR):
        listed = attrs.get(A.TRIAL_FILES) or []
        files = f": {', '.join(f['path'] for f in listed[:10])}" + (", ..." if len(listed) > 10 else "") if listed else ""
        console.print(f"  its folder: {attrs[A.TRIAL_DIR]}{files}", markup=False, highlight=False)
    if reproduce:
        console.print(f"reproduce it (from {reproduce['cwd']}):", highlight=False)
        typer.echo(reproduce["command"])  # plain, unwrapped: to paste into a shell
        if reproduce.get("note"):
            console.print(reproduce["note"], markup=False, highlight=False)
    if retrain:
        rt = d["retrained"]
        console.print(
            f"retrained: {rt['file']} (weights of epoch {rt['epoch']}, {loaded.spec.metric} {rt['reproduced']:.4f}; "
            f"attached to the study as artifact {rt['artifact_id']})"
        )


def _reproduce(spec: StudySpec, attrs: dict[str, Any]) -> Optional[dict[str, str]]:
    """For a command study: the exact command line the trial ran, where, and what else it saw."""
    command = attrs.get(A.COMMAND)
    if not spec.command or not command:
        return None
    out = {"command": command, "cwd": str(attrs.get(A.CWD, "."))}
    notes = []
    if attrs.get(A.THREADS):
        notes.append(f"it ran with OMP_NUM_THREADS={attrs[A.THREADS]}: another thread count may change the last digits")
    if "{seed}" not in spec.command:
        notes.append(f"its environment also had TUNER_SEED={attrs.get(A.SEED)} and TUNER_PARAMS, if your script reads them")
    if notes:
        out["note"] = "(" + "; ".join(notes) + ")"
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


class StateFilter(str, enum.Enum):
    all = "all"
    complete = "complete"
    pruned = "pruned"
    failed = "failed"
    fail = "fail"  # Optuna's name for it, as JSON and exports write it
    running = "running"
    waiting = "waiting"

    @property
    def trial_state(self) -> Any:
        from optuna.trial import TrialState

        return TrialState.FAIL if self in (StateFilter.failed, StateFilter.fail) else TrialState[self.value.upper()]


@app.command()
def trials(
    name: NameArg,
    state: Annotated[StateFilter, typer.Option(help="Only trials in this state (failed or fail: the same).")] = StateFilter.all,
    columns: Annotated[
        Optional[str], typer.Option("--columns", metavar="NAMES", help="Comma-separated parameters to show (default: those that vary, as many as fit).")
    ] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Every parameter, whatever the terminal's width.")] = False,
    storage: StorageOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Every trial: state, value, parameters, and why it was pruned or failed."""
    from tuner.study import open_study, trial_rows

    loaded = open_study(name, resolve_url(storage))
    states = None if state == StateFilter.all else (state.trial_state,)
    rows = trial_rows(loaded, states=states)
    if fmt == Format.json:
        print_json(rows)
        return
    measured = [key for key in FIGURES if any(key in r["user_attrs"] for r in rows)]
    params, left_out = _param_columns(rows, loaded.spec.metric, list(loaded.space.params), columns=columns, wide=wide, width=console.width, figures=measured)
    figures = [f for f in measured if f in params]  # shown first, as the width allows
    params = [p for p in params if p not in figures]
    table = Table()
    # numbers never wrap: identity, outcome and parameters keep one line; the free-text note folds
    steps = "epochs" if loaded.spec.command is None and loaded.spec.objective is None else "step"  # a script's own count
    for header in ("#", "state", loaded.spec.metric, *figures, *params, steps, "s"):
        table.add_column(header, no_wrap=True, overflow="ellipsis" if header in params else "fold")
    table.add_column("note", overflow="fold", ratio=1, min_width=8)
    for r in rows:
        attrs = r["user_attrs"]
        note = attrs.get(A.PRUNED_REASON) or ("early stopping" if attrs.get(A.STOPPED) == "early_stopping" else "")
        if r["state"] == "fail":
            note = fail_reason(attrs)
        elif A.RETRY_OF in attrs:
            note = f"{note} (retry of trial {attrs[A.RETRY_OF]})".strip()
        table.add_row(
            str(r["number"]), "failed" if r["state"] == "fail" else r["state"], _short(r["value"]), *(_short(attrs.get(f)) for f in figures),
            *(_short(r["params"].get(p)) for p in params),
            _short(attrs.get(A.EPOCHS_RUN)), _seconds(r["duration_s"]), str(note),
        )
    console.print(table)
    if left_out:
        console_err.print(
            f"{len(left_out)} more parameter(s) left out for the width: {', '.join(left_out)} (--wide, --columns NAMES or --format json show them)",
            markup=False,
            highlight=False,
        )


# what a trial measured besides its metric, shown beside it in `study trials` where trials have it
FIGURES = (A.PARAMS,)


def _param_columns(
    rows: list[dict[str, Any]], metric: str, order: list[str], *, columns: Optional[str], wide: bool, width: int, figures: list[str] = ()
) -> tuple[list[str], list[str]]:
    """The parameter columns to show, and those left out. Asked for by name, they are shown as
    asked; else the parameters that vary between the trials shown (a constant one says nothing
    row by row), in the space's order (its author's), as many as fit beside the fixed columns.
    The `figures` (measured attributes, FIGURES) come first among the shown, where they fit."""
    seen = {k for r in rows for k in r["params"]}
    every = [k for k in order if k in seen] + sorted(seen - set(order))
    if columns:
        asked = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in asked if c not in every]
        if unknown:
            raise SpecError(f"--columns {unknown[0]!r} is not a parameter of these trials; they have: {', '.join(every) or 'none'}")
        return [*figures, *asked], []
    varying = [k for k in every if len({repr(r["params"].get(k)) for r in rows}) > 1] if len(rows) > 1 else every
    if wide:
        return [*figures, *every], []

    fixed = {
        "#": [str(r["number"]) for r in rows],
        "state": ["complete"],
        metric: [_short(r["value"]) for r in rows],
        "epochs": [_short(r["user_attrs"].get(A.EPOCHS_RUN)) for r in rows],
        "s": [_seconds(r["duration_s"]) for r in rows],
    }
    used = 4 + sum(_column_width(h, c) + 3 for h, c in fixed.items()) + 10  # the note keeps room for a word a line
    cells = {f: [_short(r["user_attrs"].get(f)) for r in rows] for f in figures}
    cells.update({k: [_short(r["params"].get(k)) for r in rows] for k in varying if k not in cells})
    shown = _fitting(cells, width - used)
    return shown, [k for k in varying if k not in shown]


def _column_width(header: str, cells: list[str]) -> int:
    return max([len(header), *map(len, cells)])


def _fitting(columns: dict[str, list[str]], room: int) -> list[str]:
    """The leading columns, in order, that fit in `room` characters (each with its padding and
    border): a table drops the columns a narrow terminal has no room for instead of cutting them."""
    shown: list[str] = []
    for header, cells in columns.items():
        room -= _column_width(header, cells) + 3
        if room < 0:
            break
        shown.append(header)
    return shown


def _seconds(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else fmt_value(value)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else fmt_value(value)


class ExportFormat(str, enum.Enum):
    csv = "csv"
    json = "json"


@app.command()
def export(
    name: NameArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    fmt: Annotated[Optional[ExportFormat], typer.Option("--format", help="csv or json \\[default: from --out's suffix].")] = None,
    storage: StorageOpt = None,
) -> None:
    """Export every trial to CSV or JSON (JSON adds intermediate values, the spec and the space)."""
    from tuner.study import export_trials, open_study

    suffix = out.suffix.lower()
    if fmt is None and suffix not in (".csv", ".json", ""):
        raise SpecError(f"--out {out}: tuner writes CSV or JSON, not {suffix}; name the file .csv or .json (or pass --format)")
    chosen = fmt.value if fmt else ("json" if suffix == ".json" else "csv")
    n = export_trials(open_study(name, resolve_url(storage)), out, fmt=chosen)
    console.print(f"wrote {_count(n, 'trial')} to {out} ({chosen.upper()})")


@app.command()
def delete(
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    storage: StorageOpt = None,
) -> None:
    """Delete a study and all its trials (asks first, unless --yes)."""
    from tuner.study import delete_study, open_study

    url = resolve_url(storage)
    loaded = open_study(name, url)
    n = len(loaded.study.get_trials(deepcopy=False))
    if not yes:
        try:  # the question on stderr: stdout stays the command's output
            sure = typer.confirm(f"delete study '{name}' and its {_count(n, 'trial')} from {mask(url)}?", default=False, err=True)
        except typer.Abort:  # no answer: stdin closed or not a terminal
            raise SpecError(f"no answer to the question, so nothing deleted; pass --yes to delete study '{name}' without asking") from None
        if not sure:
            console.print("nothing deleted")
            raise typer.Exit(1)
    delete_study(name, url)
    console.print(f"deleted study '{name}' ({_count(n, 'trial')})")


@app.command()
def release(
    name: NameArg,
    trial: Annotated[Optional[list[int]], typer.Option("--trial", min=0, help="A running trial's number (repeat for more).")] = None,
    stale: Annotated[bool, typer.Option("--stale", help="Every running trial whose worker is gone from this host or missed a beat.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Release a trial even if its worker is alive on this host.")] = False,
    storage: StorageOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Fail and queue again, now, running trials whose worker you know is gone (instead of
    waiting for the heartbeat's grace period)."""
    from tuner.study import open_study, release_trials

    if bool(trial) == stale:
        raise SpecError("say which trials to release: --trial N (repeatable) or --stale, not both")
    released = release_trials(open_study(name, resolve_url(storage)), numbers=trial, stale=stale, force=force)
    if fmt == Format.json:
        print_json(released)
        return
    if not released:
        console.print(f"no running trial of study '{name}' has a silent or gone worker; nothing released")
    for r in released:
        again = "queued again" if r["queued_again"] else "not queued again (its retries are spent)"
        console.print(f"released trial {r['number']}: failed ({r['reason']}), {again}", markup=False, highlight=False)


def worker(
    name: NameArg,
    device: DeviceOpt = "auto",
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    worker_index: Annotated[int, typer.Option("--worker-index", min=0, help="This worker's number (seeds its sampler).")] = 0,
    workers: Annotated[int, typer.Option("--workers", metavar="N", min=1, help="How many workers share this machine (sizes --threads).")] = 1,
    pack: PackOpt = None,
    max_failures: MaxFailuresOpt = None,
    max_streak: StreakOpt = None,
    quiet: QuietOpt = False,
    fmt: FormatOpt = Format.table,
    storage: StorageOpt = None,
) -> None:
    """Join a study as one more worker, from this or any other host sharing its storage."""
    from tuner.study import open_study
    from tuner.train import resolve_device

    parse_pack(pack)
    resolve_device(device)
    url = resolve_url(storage)
    loaded = open_study(name, url, worker_index=worker_index)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)  # this worker's share of the cores
    _run(loaded, url, device=device, timeout=timeout, threads=threads, pack=pack or loaded.spec.pack, quiet=quiet, fmt=fmt, limits=(max_failures, max_streak))
