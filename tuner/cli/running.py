"""`tuner study run`, `resume` and `tuner worker`: a study run in this process or by local
workers, with its progress on the terminal or as log lines, and its result."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tuner.attrs import fail_reason
from tuner.cli.common import Format, FormatOpt, StorageOpt, console, console_err, fmt_value, print_json
from tuner.cli.options import (
    CommandOpt, ConstraintOpt, DbRetryOpt, PruneOnOpt, DeviceOpt, DirectionOpt, GpusOpt, MaxFailuresOpt, MaxTimeOpt, WarmPriorOpt, WarmStartOpt, WarmStorageOpt, warm_start_of, MinDeltaOpt, PatienceOpt, GoalOpt, HistoryOpt, MaxRestartsOpt, MetricOpt, MetricPatternOpt, NameArg, ObjectiveOpt, PackOpt, PerGpuOpt,
    PrunerOpt, QuietOpt, SamplerOpt, SeedOpt, SpaceOpt, SpacesDirOpt, SpecOpt, StepPatternOpt, StreakOpt, TargetOpt, ThreadsOpt, TimeoutOpt, TrialsOpt,
    TrialTimeoutOpt, ValOpt, WorkersOpt, WorkloadOpt, default_space, spec_from, spec_options,
)
from tuner.cli.render import values_text, verdict_of, count, describe_running
from tuner.errors import SpecError
from tuner.slots import DEFAULT_MAX_RESTARTS
from tuner.space import SPACES_DIR
from tuner.spec import parse_pack, spec_file_settings
from tuner.urls import mask, resolve_url


def run(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="The study's name; an existing study is continued.")] = None,
    spec: SpecOpt = None,
    space: SpaceOpt = None,
    workload: WorkloadOpt = None,
    target: TargetOpt = None,
    sampler: SamplerOpt = None,
    history: HistoryOpt = None,
    pruner: PrunerOpt = None,
    metric: MetricOpt = None,
    constraint: ConstraintOpt = None,
    prune_on: PruneOnOpt = None,
    direction: DirectionOpt = None,
    objective: ObjectiveOpt = None,
    command: CommandOpt = None,
    trial_timeout: TrialTimeoutOpt = None,
    metric_pattern: MetricPatternOpt = None,
    step_pattern: StepPatternOpt = None,
    max_failures: MaxFailuresOpt = None,
    max_streak: StreakOpt = None,
    patience: PatienceOpt = None,
    min_delta: MinDeltaOpt = None,
    goal: GoalOpt = None,
    max_time: MaxTimeOpt = None,
    warm_start: WarmStartOpt = None,
    warm_start_storage: WarmStorageOpt = None,
    warm_start_as_prior: WarmPriorOpt = None,
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
    db_retry_for: DbRetryOpt = None,
    quiet: QuietOpt = False,
    fmt: FormatOpt = Format.table,
    storage: StorageOpt = None,
    spaces_dir: SpacesDirOpt = SPACES_DIR,
) -> None:
    """Run a study until it holds --trials finished trials (creating it first if it is new)."""
    options = {**spec_options(locals()), "pack": pack}
    from tuner.study import prepare_run, study_exists

    _db_retry(db_retry_for)

    pool = _pool(workers=workers, gpus=gpus, per_gpu=per_gpu, max_restarts=max_restarts, device=device)
    url = resolve_url(storage)
    parse_pack(pack)
    given = spec_from(name, spec, options) if spec or space else None  # a typo is told before torch loads
    default = default_space(options) if given is None and name else None
    chosen = default if default and not study_exists(name, url) else None  # the default space of a new study given none
    if chosen:
        given = spec_from(name, None, {**options, "space": chosen})
    study_name = name or (given.name if given else None)
    if not study_name:
        raise SpecError("give the study a NAME (or a --spec file with `name:`)")
    if given is not None:
        from tuner.space import load_space

        load_space(given.space, spaces_dir=spaces_dir)  # a missing or bad space too
    from tuner.train import resolve_device  # torch: after the settings are checked

    resolve_device(device)  # a bad --device fails before anything is written
    file_values = spec_file_settings(spec) if spec else {}
    new_db = new_database(url)
    warm, prior = warm_start_of(warm_start, warm_start_storage, url, warm_start_as_prior)
    loaded, change = prepare_run(
        study_name, url, given=given, settings={k: v for k, v in options.items() if v is not None}, spaces_dir=spaces_dir,
        file_settings=file_values, spec_file=str(spec) if spec else None, warm_start=warm, prior=prior,
    )
    say_new_database(new_db)
    if warm is not None or prior is not None:
        say_warm_start(loaded, to=console_err)
    if chosen:
        console_err.print(f"study '{study_name}': search space '{chosen}', the default (--space NAME picks another; `tuner space list`)", markup=False, highlight=False)
    _say_budget(loaded.spec.name, change)
    pack = pack or (given.pack if given else None) or loaded.spec.pack
    _run(loaded, url, device=device, timeout=timeout, pool=pool, threads=threads, pack=pack, quiet=quiet, fmt=fmt, limits=(max_failures, max_streak))


def _db_retry(value: Optional[str]) -> None:
    """--db-retry-for (else TUNER_DB_RETRY_FOR) for this process and the workers it starts."""
    from tuner.outage import OUTAGE, retry_for_from

    OUTAGE.configure(retry_for_from(value))


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


def say_warm_start(loaded: Any, *, to: Any = None) -> None:
    """What a warm start queued, and what it skipped with why."""
    from tuner import attrs as A

    from tuner.prior import PRIOR_ATTR

    out = to or console
    record = loaded.study.user_attrs.get(A.WARM_START)
    if isinstance(record, dict) and "grid_done" in record:
        out.print(f"warm start: {count(record['grid_done'], 'grid point')} study '{record['study']}' finished taken over, not run again", markup=False, highlight=False)
    elif isinstance(record, dict):
        out.print(f"warm start: {count(record['queued'], 'configuration')} of study '{record['study']}' queued first", markup=False, highlight=False)
        for why in record["skipped"]:
            out.print(f"  skipped {why}", markup=False, highlight=False)
    prior = loaded.study.user_attrs.get(PRIOR_ATTR)
    if isinstance(prior, dict):
        out.print(f"warm start: {count(len(prior['trials']), 'trial')} of study '{prior['study']}' given to the {loaded.spec.sampler} sampler as its prior (not run, not counted)", markup=False, highlight=False)


def new_database(url: str) -> Optional[Path]:
    """The SQLite file a command is about to create, if it does not exist yet."""
    from tuner.storage import sqlite_path

    path = sqlite_path(url)
    return path if path is not None and not path.exists() else None


def say_new_database(path: Optional[Path]) -> None:
    if path is not None and path.exists():  # relative URLs depend on the folder: say where it went
        console_err.print(f"new database {path.resolve()}", markup=False, highlight=False, soft_wrap=True)


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
    db_retry_for: DbRetryOpt = None,
    quiet: QuietOpt = False,
    fmt: FormatOpt = Format.table,
    storage: StorageOpt = None,
) -> None:
    """Continue a study from the database with its stored space, sampler, pruner and budget."""
    from tuner.study import check_data, open_study, set_budget
    from tuner.train import resolve_device

    _db_retry(db_retry_for)
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

    def __init__(self, spec: Any) -> None:
        import time

        self.metric, self.names, self._clock, self._last = spec.metric, [m.name for m in spec.objectives], time.monotonic, (-1, -float("inf"))

    def _say(self, line: str) -> None:
        console_err.print(line, markup=False, highlight=False, soft_wrap=True)

    def trial(self, trial: Any, n_finished: int, budget: int, best: Optional[float]) -> None:
        state = trial.state.name.lower()
        what = values_text(trial, self.names) if state == "complete" else ("failed: " + fail_reason(trial.user_attrs) if state == "fail" else state)
        best_text = f", best {fmt_value(best)}" if len(self.names) == 1 else ""
        verdict = verdict_of(trial.user_attrs)
        unhealthy = f" [{verdict}]" if verdict not in (None, "healthy") and state != "fail" else ""
        self._say(f"trial {trial.number} {what}{unhealthy} ({n_finished}/{budget} finished{best_text})")

    def counts(self, n_finished: int, budget: int, best: Optional[float]) -> None:
        now = self._clock()
        if n_finished != self._last[0] and now - self._last[1] >= self.LOG_EVERY_S:
            self._last = (n_finished, now)
            self._say(f"{n_finished}/{budget} finished" + (f", best {self.metric} {fmt_value(best)}" if len(self.names) == 1 else ""))


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
    from tuner.slots import describe_death
    from tuner.study import FINISHED, run_study
    from tuner.workers import run_workers

    spec = loaded.spec
    # a bar on a terminal; in a log (nohup, CI, a cluster job) a line per finished trial instead,
    # as a redrawn bar writes nothing there until the study ends
    show_bar = not quiet and fmt == Format.table and console_err.is_terminal
    log_lines = _LogLines(spec) if not quiet and fmt == Format.table and not show_bar else None
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console_err,
        disable=not show_bar,
    )
    done_before = len(loaded.study.get_trials(deepcopy=False, states=FINISHED))
    label = spec.name if pool is None else f"{spec.name} ({pool.label})"
    one = len(spec.objectives) == 1

    def best_field(best: Optional[float]) -> str:  # several metrics have a front, shown at the end
        return f"best {fmt_value(best)}" if one else ""

    try:
        with progress:
            task = progress.add_task(label, total=spec.trials, completed=done_before, best=best_field(None))

            def on_progress(n_finished: int, budget: int, best: Optional[float]) -> None:
                progress.update(task, completed=n_finished, total=budget, best=best_field(best))
                if log_lines is not None and pool is not None:
                    log_lines.counts(n_finished, budget, best)

            def on_trial(trial: Any, n_finished: int, budget: int, best: Optional[float]) -> None:
                progress.update(task, completed=n_finished, total=budget, best=best_field(best))
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
    if result.stopped.early:
        from tuner.stopping import GO_ON

        why = f"stopped early: {result.stop_reason or why}; to go on, {GO_ON[result.stopped.value]}"
    failed = f"; {result.n_failed} failed (not counted)" if result.n_failed else ""
    console.print(
        f"study '{result.name}': {result.n_finished}/{result.budget} finished ({result.n_complete} complete + "
        f"{result.n_pruned} pruned{failed}), {why}; this run: {count(result.ran, 'trial')} in {result.elapsed_s:.1f}s"
    )
    for death in result.worker_deaths:
        console.print(f"{describe_death(death)}; replaced on its slot", markup=False, highlight=False, soft_wrap=True)
    if result.front is not None:
        from tuner.cli.inspecting import print_front
        from tuner.study import front_summary

        print_front(loaded, front_summary(loaded))
        if not quiet:
            console.print(_dashboard_hint(url), markup=False, highlight=False, soft_wrap=True)
        return
    if result.best_trial is None:
        console.print(f"no complete{' feasible' if spec.constraints else ''} trial yet")
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


def _dashboard_hint(url: str) -> str:
    """A dashboard command that can be pasted as printed: no --storage where the dashboard finds
    the storage itself (the default, or TUNER_STORAGE), and never a masked password in one."""
    open_it = "(then open http://127.0.0.1:8080)"
    if url == resolve_url(None):
        return f"dashboard: tuner dashboard   {open_it}"
    if mask(url) != url:  # a password: printed, it would be in the terminal's history and logs
        return f"dashboard: TUNER_STORAGE='<this study's URL, with its password>' tuner dashboard   {open_it}"
    return f"dashboard: tuner dashboard --storage '{url}'   {open_it}"


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
    db_retry_for: DbRetryOpt = None,
    quiet: QuietOpt = False,
    fmt: FormatOpt = Format.table,
    storage: StorageOpt = None,
) -> None:
    """Join a study as one more worker, from this or any other host sharing its storage."""
    from tuner.study import open_study
    from tuner.train import resolve_device

    _db_retry(db_retry_for)
    parse_pack(pack)
    resolve_device(device)
    url = resolve_url(storage)
    loaded = open_study(name, url, worker_index=worker_index)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)  # this worker's share of the cores
    _run(loaded, url, device=device, timeout=timeout, threads=threads, pack=pack or loaded.spec.pack, quiet=quiet, fmt=fmt, limits=(max_failures, max_streak))
