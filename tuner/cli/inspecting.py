"""`tuner study list`, `show`, `best`, `trials` and `export`: reading a study."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from tuner import attrs as A
from tuner.attrs import fail_reason
from tuner.cli.common import Format, FormatOpt, StorageOpt, console, console_err, fmt_value, print_json
from tuner.cli.options import DeviceOpt, NameArg
from tuner.cli.render import column_width, count, describe_running, fitting, seconds, short, verdict_of
from tuner.errors import SpecError
from tuner.metrics import MEASURES
from tuner.urls import DEFAULT_ARTIFACTS, mask, resolve_url


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
        "budget": [fmt_value(r["budget"]) + (f" ({r['stopped']})" if r.get("stopped") else "") for r in rows],
        "dir": [",".join(d[:3] for d in str(r["direction"]).split(",")) for r in rows],
        "sampler": [fmt_value(r["sampler"]) for r in rows],
        "workload": [fmt_value(r["workload"]) for r in rows],
    }
    workload = cells.pop("workload")
    widths = {"name": column_width("name", cells["name"])}
    room = console.width - 1 - widths["name"] - 3  # the left border, then the name's column
    rest = {h: c for h, c in cells.items() if h != "name"}
    fitted = fitting(rest, room)
    for header in fitted:
        widths[header] = column_width(header, rest[header])
        room -= widths[header] + 3
    if len(fitted) == len(rest) and room - 3 >= 8:  # the workload takes what is left, cut short if it must
        cells["workload"] = workload
        widths["workload"] = min(column_width("workload", workload), room - 3)
    table = Table()
    for header, width in widths.items():
        table.add_column(header, no_wrap=True, overflow="ellipsis", min_width=width, max_width=width)
    for i in range(len(rows)):
        table.add_row(*(cells[h][i] for h in widths))
    console.print(table)


def show(name: NameArg, storage: StorageOpt = None, fmt: FormatOpt = Format.table) -> None:
    """A study's settings, trial counts by state, why trials were pruned, and its best trial."""
    from tuner.study import open_study, study_summary

    url = resolve_url(storage)
    loaded = open_study(name, url)
    s = study_summary(loaded, url)
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
    window = f" (the last {spec['history']} trials)" if spec.get("history") else ""
    console.print(f"  space {spec['space']}, {trains}, sampler {spec['sampler']}{window}, pruner {spec['pruner']}, seed {spec['seed']}", markup=False)
    if spec.get("metric_patterns") or spec.get("step_pattern"):
        read = [f"'{p}'" for p in spec.get("metric_patterns") or []] + ([f"step '{spec['step_pattern']}'"] if spec.get("step_pattern") else [])
        console.print(f"  reads from its output: {', '.join(read)}", markup=False, highlight=False)
    metrics = ", ".join(f"{m['name']} ({m['direction']})" for m in s["metrics"])
    console.print(f"  {'metrics' if len(s['metrics']) > 1 else 'metric'} {metrics}, budget {spec['trials']}, finished {s['finished']}")
    if s.get("constraints"):
        c = s["constraints"]
        missed = ", ".join(f"{bound} missed by {n}" for bound, n in c["missed"].items())
        console.print(f"  constraints {', '.join(c['bounds'])}: {c['feasible']} of {count(c['complete'], 'complete trial')} feasible ({missed})", markup=False)
    rules = [f"{k.replace('_', ' ')} {spec[k]:g}" if isinstance(spec[k], float) else f"{k.replace('_', ' ')} {spec[k]}" for k in ("goal", "patience", "min_delta", "max_time") if spec.get(k) is not None]
    if rules:
        console.print(f"  stops early at: {', '.join(rules)}", markup=False, highlight=False)
    if s.get("stopped"):
        from tuner.stopping import GO_ON, said

        console.print(f"  {said(s['stopped'])}; to go on, {GO_ON.get(s['stopped']['rule'], 'change its rules')}", markup=False, highlight=False)
    counts = ", ".join(f"{k} {v}" for k, v in s["trials"].items() if v and k != "total")
    console.print(f"  trials: {s['trials']['total']} ({counts or 'none'})")
    if s["pruned_reasons"]:
        console.print("  pruned: " + ", ".join(f"{k} {v}" for k, v in s["pruned_reasons"].items()))
    if s["failed_reasons"]:
        console.print("  failed: " + ", ".join(f"{k} {v}" for k, v in s["failed_reasons"].items()), markup=False)
    if s.get("health"):
        console.print("  health: " + ", ".join(f"{k} {v}" for k, v in s["health"].items()), markup=False)
    if s.get("causes") and set(s["health"]) - {"healthy"}:  # why trials failed; nothing to say when none did
        causes = s["causes"]
        console.print(f"  causes: {causes['note']}", markup=False, highlight=False)
        for cause in causes["causes"]:
            console.print(f"    {cause['text']}", markup=False, highlight=False)
    if s["retried"]:
        console.print(f"  retried: {s['retried']} trials re-queued after a lost worker or an interruption")
    from tuner.prior import PRIOR_ATTR

    prior = loaded.study.user_attrs.get(PRIOR_ATTR)
    if isinstance(prior, dict):
        console.print(f"  prior: {len(prior['trials'])} finished trials of study '{prior['study']}' ({prior['storage']}) given to its sampler, not run", markup=False, highlight=False)
    warm = loaded.study.user_attrs.get(A.WARM_START)
    if isinstance(warm, dict):
        skipped = f", {len(warm['skipped'])} skipped" if warm["skipped"] else ""
        taken = f"{warm['grid_done']} grid points it had finished taken over" if "grid_done" in warm else f"{warm['queued']} configurations queued first{skipped}"
        console.print(f"  warm start from study '{warm['study']}' ({warm['storage']}): {taken}", markup=False, highlight=False)
    for r in s["running"]:
        console.print(f"  running: {describe_running(r)}", markup=False, highlight=False)
    if s.get("front") is not None:
        console.print("  " + _front_line(s["front"]) + f": trials {', '.join(map(str, s['front']['trials'][:20]))}", markup=False, highlight=False)
        return
    _print_best(s["best"], loaded.spec, indent="  ")


def _print_best(best: Optional[dict[str, Any]], spec: Any, *, indent: str = "", label: str = "best") -> None:
    if best is None:
        console.print(f"{indent}no complete{' feasible' if spec.constraints else ''} trial yet")
        return
    if len(spec.objectives) == 1:
        console.print(f"{indent}{label} {spec.metric}: {best['value']:.4f} (trial {best['number']})")
    else:
        shown = ", ".join(f"{m.name} {short(v)}" for m, v in zip(spec.objectives, best.get("values") or []))
        console.print(f"{indent}trial {best['number']}: {shown}")
    if best.get("feasible") is False:
        console.print(f"{indent}  infeasible: misses {', '.join(best['user_attrs'].get(A.VIOLATED) or [])}", markup=False)
    for k, v in best["params"].items():
        console.print(f"{indent}  {k}: {fmt_value(v)}")


def chosen_trial(loaded: Any, number: Optional[int]) -> Any:
    """The study's best trial (feasible, single metric), or complete trial `number` when asked."""
    from optuna.trial import TrialState

    name = loaded.spec.name
    if number is None:
        try:
            return loaded.study.best_trial
        except ValueError:
            complete = loaded.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if complete and loaded.spec.constraints:
                raise SpecError(
                    f"study '{name}' has no feasible trial: its {count(len(complete), 'complete trial')} all miss {' or '.join(loaded.spec.constraints)}; "
                    f"`tuner study trials {name}` shows by how much (run more trials, or pick one with --trial N)"
                ) from None
            raise SpecError(f"study '{name}' has no complete trial yet; run it with `tuner study run {name}`") from None
    from tuner.study import n_trials, trials_numbered

    found = next(iter(trials_numbered(loaded.study, [number])), None)
    if found is None:
        raise SpecError(f"study '{name}' has no trial {number} (its trials are 0..{n_trials(loaded.study) - 1})")
    if found.state != TrialState.COMPLETE:
        raise SpecError(f"trial {number} of study '{name}' is {found.state.name.lower()}, not complete; `tuner study best {name}` lists the complete ones that are best")
    return found


def _print_front(loaded: Any, front: dict[str, Any], *, fmt: Format, retrain: bool) -> None:
    """A study of several metrics: its Pareto front as a table, best first by the first metric,
    and its hypervolume."""
    name = loaded.spec.name
    if retrain:
        raise SpecError(f"study '{name}' has several metrics and no single best: pick a trial of its front with --trial N (`tuner study best {name}` lists them)")
    if fmt == Format.json:
        print_json({"metrics": [m.text() for m in loaded.spec.objectives], **front, "trials": _front_rows(loaded, front)})
        return
    if print_front(loaded, front):
        console.print(f"`tuner best {name} --trial N --retrain` saves the model of trial N", markup=False, highlight=False)


def _front_rows(loaded: Any, front: dict[str, Any], *, first: int | None = None) -> list[dict[str, Any]]:
    """The front's trials as rows (the `first` of them), each read alone, not the study's every trial."""
    from tuner.study import trial_dict, trials_numbered

    return [trial_dict(t) for t in trials_numbered(loaded.study, front["trials"][:first])]


def print_front(loaded: Any, front: dict[str, Any]) -> bool:
    """The front (tuner.study.front_summary) as a table (its first TABLE_LIMIT trials) and its
    hypervolume, as `study best` and the end of `study run` show it; False (said so) where no
    trial is on it yet."""
    rows = _front_rows(loaded, front, first=TABLE_LIMIT)
    if not rows:
        console.print(f"no complete{' feasible' if loaded.spec.constraints else ''} trial yet")
        return False
    _print_trials(rows, loaded)
    if front["size"] > len(rows):
        console.print(f"the first {len(rows)} of the front's {front['size']} trials; --format json gives them all", markup=False, highlight=False)
    console.print(_front_line(front), markup=False, highlight=False)
    return True


def _front_line(front: dict[str, Any]) -> str:
    reference = ", ".join(f"{k} {short(v)}" for k, v in (front["reference"] or {}).items())
    return (
        f"Pareto front: {count(front['size'], 'trial')}; hypervolume {front['hypervolume']} of the box from the reference point "
        f"({reference}: each metric's worst among the feasible complete trials) to the ideal one (each metric's best)"
    )


def best(
    name: NameArg,
    trial_number: Annotated[
        Optional[int], typer.Option("--trial", metavar="N", min=0, help="This complete trial instead of the best (a point of the front, to --retrain).")
    ] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Retrain the best configuration (or --trial N) and save its model.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Model file \\[default: studies/models/NAME-trialN.pt].")] = None,
    device: DeviceOpt = "auto",
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Folder of files attached to studies.")] = DEFAULT_ARTIFACTS,
    storage: StorageOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """The best trial: value, parameters and its training record; with several metrics, the Pareto
    front. --retrain saves the best's model (or --trial N's, a point of the front)."""
    from tuner.study import front_summary, open_study, reproduce_command, trial_dict

    loaded = open_study(name, resolve_url(storage))
    if trial_number is None and len(loaded.spec.objectives) > 1:
        _print_front(loaded, front_summary(loaded), fmt=fmt, retrain=retrain)
        return
    trial = chosen_trial(loaded, trial_number)
    d = trial_dict(trial)
    if retrain:
        from tuner.retrain import retrain_best

        r = retrain_best(loaded, out=out, device=device, artifacts_dir=artifacts, trial=trial)
        d["retrained"] = {"file": str(r.path), "epoch": r.epoch, "reproduced": r.reproduced, "artifact_id": r.artifact_id}
    reproduce = reproduce_command(loaded.spec, d["user_attrs"])
    if fmt == Format.json:
        print_json({"metric": loaded.spec.metric, **d, **({"reproduce": reproduce} if reproduce else {})})
        return
    _print_best(d, loaded.spec, label="best" if trial_number is None else "trial")
    health = d["user_attrs"].get(A.HEALTH)
    if isinstance(health, dict) and health.get("verdict") not in (None, "healthy"):
        console_err.print(
            f"warning: trial {d['number']} did not train well: {health['verdict']}: {health['evidence']}; {health['fix']} "
            "(its score may come from one lucky epoch)",
            markup=False, highlight=False,
        )
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
            f"retrained: {rt['file']} (weights of epoch {rt['epoch']}, {loaded.spec.epoch_metric} {rt['reproduced']:.4f}; "
            f"attached to the study as artifact {rt['artifact_id']})"
        )


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


def trials(
    name: NameArg,
    state: Annotated[StateFilter, typer.Option(help="Only trials in this state (failed or fail: the same).")] = StateFilter.all,
    columns: Annotated[
        Optional[str], typer.Option("--columns", metavar="NAMES", help="Comma-separated parameters to show (default: those that vary, as many as fit).")
    ] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Every parameter, whatever the terminal's width.")] = False,
    limit: Annotated[
        Optional[int],
        typer.Option("--limit", metavar="N", min=0, help=f"The last N trials by number; 0: every one. Without it a table shows the last {TABLE_LIMIT}, --format json every one."),
    ] = None,
    storage: StorageOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """The study's trials (a table shows the latest): state, value, parameters, and why each was pruned or failed."""
    from tuner.study import open_study, trial_rows

    loaded = open_study(name, resolve_url(storage))
    states = None if state == StateFilter.all else (state.trial_state,)
    last = (None if fmt == Format.json else TABLE_LIMIT) if limit is None else limit or None
    rows = trial_rows(loaded, states=states, last=last)
    if fmt == Format.json:
        print_json(rows)
        return
    _print_trials(rows, loaded, columns=columns, wide=wide)
    if last is not None and len(rows) == last:
        from tuner.study import n_trials

        total = n_trials(loaded.study, states=states)
        if total > last:
            console.print(f"the last {last} of {total} trials; --limit 0 shows every one, --format json gives them all to a script", markup=False, highlight=False)


TABLE_LIMIT = 200  # trials a table shows unless --limit says otherwise: a terminal holds no more, and a large study reads only these


def _print_trials(rows: list[dict[str, Any]], loaded: Any, *, columns: Optional[str] = None, wide: bool = False) -> None:
    """Trials as a table fitted to the terminal: number, state, each metric, measured figures and
    the parameters that fit, steps, seconds and a note (why it was pruned, failed or is infeasible)."""
    metrics = [m.name for m in loaded.spec.objectives]
    measured = [key for key in FIGURES if key not in metrics and any(key in r["user_attrs"] for r in rows)]
    health = any(verdict_of(r["user_attrs"]) for r in rows)  # trials recorded before verdicts have none
    verdicts = {"health": [fmt_value(verdict_of(r["user_attrs"])) for r in rows]} if health else {}
    order = list(loaded.space.params)
    if any(m in MEASURES for m in metrics):  # a model's cost is traded off: what shapes the model comes first
        from tuner.params import GROUPS

        order = sorted(order, key=lambda name: name not in GROUPS["Data and architecture"])
    params, left_out = _param_columns(rows, metrics, order, columns=columns, wide=wide, width=console.width, figures=measured, fixed_more=verdicts)
    figures = [f for f in measured if f in params]  # shown first, as the width allows
    params = [p for p in params if p not in figures]
    table = Table()
    # numbers never wrap: identity, outcome and parameters keep one line; the free-text note folds
    steps = "epochs" if loaded.spec.command is None and loaded.spec.objective is None else "step"  # a script's own count
    for header in ("#", "state", *metrics, *(["health"] if health else []), *figures, *params, steps, "s"):
        table.add_column(header, no_wrap=True, overflow="ellipsis" if header in params else "fold")
    table.add_column("note", overflow="fold", ratio=1, min_width=8)
    for r in rows:
        attrs = r["user_attrs"]
        note = attrs.get(A.PRUNED_REASON) or ("early stopping" if attrs.get(A.STOPPED) == "early_stopping" else "")
        if r["state"] == "fail":
            note = fail_reason(attrs)
        elif A.RETRY_OF in attrs:
            note = f"{note} (retry of trial {attrs[A.RETRY_OF]})".strip()
        if attrs.get(A.VIOLATED):
            note = f"infeasible: misses {', '.join(attrs[A.VIOLATED])}" + (f"; {note}" if note else "")
        warm = attrs.get(A.WARM_START)
        if isinstance(warm, dict):  # queued by --warm-start: where it came from, and what its mapping changed
            came = f"from '{warm['study']}' trial {warm['trial']}" + (f" ({'; '.join(warm['changes'])})" if warm.get("changes") else "")
            note = f"{came}; {note}" if note else came
        table.add_row(
            str(r["number"]), "failed" if r["state"] == "fail" else r["state"], *(short(v) for v in _values(r, len(metrics))),
            *([fmt_value(verdict_of(attrs))] if health else []), *(short(attrs.get(f)) for f in figures), *(short(r["params"].get(p)) for p in params),
            short(attrs.get(A.EPOCHS_RUN)), seconds(r["duration_s"]), str(note),
        )  # fmt: skip
    console.print(table)
    if left_out:
        console_err.print(
            f"{len(left_out)} more parameter(s) left out for the width: {', '.join(left_out)} (--wide, --columns NAMES or --format json show them)",
            markup=False,
            highlight=False,
        )


def _values(row: dict[str, Any], n: int) -> list[Any]:
    """A trial row's value of each of the study's n metrics (None where it has none)."""
    return row.get("values") or ([row["value"]] + [None] * (n - 1) if n > 1 else [row["value"]])


# what a trial measured besides its metrics, shown beside them in `study trials` where trials have it
FIGURES = (A.PARAMS,)


def _param_columns(
    rows: list[dict[str, Any]], metrics: list[str], order: list[str], *, columns: Optional[str], wide: bool, width: int, figures: list[str] = (),
    fixed_more: Optional[dict[str, list[str]]] = None,
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
        **{metric: [short(_values(r, len(metrics))[i]) for r in rows] for i, metric in enumerate(metrics)},
        "epochs": [short(r["user_attrs"].get(A.EPOCHS_RUN)) for r in rows],
        "s": [seconds(r["duration_s"]) for r in rows],
        **(fixed_more or {}),
    }
    used = 4 + sum(column_width(h, c) + 3 for h, c in fixed.items()) + 10  # the note keeps room for a word a line
    cells = {f: [short(r["user_attrs"].get(f)) for r in rows] for f in figures}
    cells.update({k: [short(r["params"].get(k)) for r in rows] for k in varying if k not in cells})
    shown = fitting(cells, width - used)
    return shown, [k for k in varying if k not in shown]


class ExportFormat(str, enum.Enum):
    csv = "csv"
    json = "json"


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
    console.print(f"wrote {count(n, 'trial')} to {out} ({chosen.upper()})")
