"""`tuner study create`, `delete` and `release`: a study made, removed, or its stuck trials freed."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tuner.cli.common import Format, FormatOpt, StorageOpt, console, console_err, print_json
from tuner.cli.options import (
    CommandOpt, ConstraintOpt, PruneOnOpt, DirectionOpt, MaxFailuresOpt, MaxTimeOpt, WarmPriorOpt, WarmStartOpt, WarmStorageOpt, warm_start_of, MinDeltaOpt, PatienceOpt, GoalOpt, HistoryOpt, MetricOpt, MetricPatternOpt, NameArg, ObjectiveOpt, PrunerOpt, SamplerOpt, SeedOpt, SpaceOpt, SpacesDirOpt,
    SpecOpt, StepPatternOpt, StreakOpt, TargetOpt, TrialsOpt, TrialTimeoutOpt, ValOpt, WorkloadOpt, default_space, spec_from, spec_options,
)
from tuner.cli.render import count
from tuner.cli.running import say_warm_start, new_database, say_new_database
from tuner.errors import SpecError
from tuner.space import SPACES_DIR
from tuner.urls import mask, resolve_url


def create(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="The study's name (or `name:` in --spec).")] = None,
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
    storage: StorageOpt = None,
    spaces_dir: SpacesDirOpt = SPACES_DIR,
) -> None:
    """Create a study without running it (grid points are queued now)."""
    options = spec_options(locals())
    from tuner.study import create_study

    url = resolve_url(storage)
    new_db = new_database(url)
    chosen = default_space(options) if not spec and not options.get("space") and name else None
    warm, prior = warm_start_of(warm_start, warm_start_storage, url, warm_start_as_prior)
    loaded = create_study(spec_from(name, spec, {**options, "space": options.get("space") or chosen}), url, spaces_dir=spaces_dir, warm_start=warm, prior=prior)
    say_new_database(new_db)
    if chosen:
        console_err.print(f"study '{name}': search space '{chosen}', the default (--space NAME picks another; `tuner space list`)", markup=False, highlight=False)
    console.print(f"created study '{loaded.spec.name}' in {mask(url)}: {loaded.spec.sampler} over '{loaded.space.name}', budget {loaded.spec.trials} trials")
    say_warm_start(loaded)


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
            sure = typer.confirm(f"delete study '{name}' and its {count(n, 'trial')} from {mask(url)}?", default=False, err=True)
        except typer.Abort:  # no answer: stdin closed or not a terminal
            raise SpecError(f"no answer to the question, so nothing deleted; pass --yes to delete study '{name}' without asking") from None
        if not sure:
            console.print("nothing deleted")
            raise typer.Exit(1)
    delete_study(name, url)
    console.print(f"deleted study '{name}' ({count(n, 'trial')})")


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
