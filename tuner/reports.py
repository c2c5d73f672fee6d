"""Study reports: figures (PNG, drawn with matplotlib) and one self-contained HTML page.

`build_report` reads a stored study and writes into a folder:

    history.png       each trial's value and the best so far
    importances.png   which parameters mattered (optuna.importance)
    parallel.png      parallel coordinates of the complete trials, coloured by value
    intermediate.png  the metric per epoch, one line per trial
    best_curves.png   the best trial's learning curves (losses, accuracies)
    report.html       all of the above embedded as data URIs, with the study's settings, counts,
                      best trial, why trials were pruned or failed, and the best trial's diagnostics

A study of several metrics (tuner.metrics) has no best trial but a Pareto front, which its report
draws first and lists in place of the best trial, with the front's hypervolume:

    pareto.png        two metrics: every complete trial's pair of values, the front joined as a staircase
    pareto_pairs.png  three or more: the same for each pair of metrics, the front highlighted

Its other figures follow the first metric (what its history ranks and its importances explain),
and draw the front's trials where a single-metric report draws the best one. A study with
constraints ranks only the trials that meet them, and draws the others hollow or dashed.

A figure that cannot be drawn (no complete trial yet, a single trial, no recorded history) is
skipped, and the report says why. Every file is written atomically.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner import attrs as A
from tuner.atomic import atomic_path
from tuner.errors import ReportError
from tuner.attrs import fail_reason
from tuner.metrics import Metric, feasible
from tuner.study import Loaded, best_trial, study_summary

__all__ = ["DIAGNOSTICS", "Plot", "Report", "build_report", "summary_text"]

# What the objective records on a complete trial to judge its training beyond its score.
DIAGNOSTICS = (A.GRAD_NORM_FIRST, A.GRAD_NORM_LAST, A.VANISHING, A.EXPLODING, A.OVERFIT_GAP, A.TRAIN_ACCURACY)
N_TOP = 3  # parameters named in the terminal summary
N_REASONS = 5  # distinct failure reasons named in the terminal summary
MAX_ROWS = 100  # pruned trials listed one by one in the HTML page
N_FRONT = 10  # trials of a Pareto front listed in the terminal summary (the page lists them all)
MAX_FRONT_LABELS = 20  # front trials numbered in each pair plot of three or more metrics, beyond which the numbers hide the points
_PNG_DPI = 100
_COMPLETE_COLOUR = "tab:blue"
_PRUNED_COLOUR = "0.6"  # grey
_FAILED_COLOUR = "tab:red"
_BEST_COLOUR = "tab:red"
_INFEASIBLE_COLOUR = "0.55"  # grey, drawn hollow: a trial that misses a constraint
_LOG_DECADES = 2  # a metric axis whose positive values span more decades than this is drawn on a log scale
_MISSING = object()  # a conditional parameter absent from a trial


@dataclass
class Plot:
    """One figure of the report: written to `path`, or skipped with the reason in `note`."""

    file: str  # file name in the report folder, e.g. "history.png"
    title: str
    path: Path | None = None  # None: skipped
    note: str | None = None  # why it was skipped
    png: bytes = field(default=b"", repr=False)


@dataclass
class Report:
    """What `build_report` wrote, and the numbers behind it (JSON-ready)."""

    out_dir: Path
    html: Path
    plots: list[Plot]
    summary: dict[str, Any]

    @property
    def paths(self) -> list[Path]:
        """Every file written: the figures, then the HTML page."""
        return [p.path for p in self.plots if p.path is not None] + [self.html]

    @property
    def notes(self) -> list[str]:
        """What the report could not show, and why."""
        notes = [f"{p.title}: skipped, {p.note}" for p in self.plots if p.note]
        if self.summary["importances"] and self.summary["importance_note"]:
            notes.insert(0, f"parameter importances: {self.summary['importance_note']}")
        return notes

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary, "notes": self.notes, "files": [str(p) for p in self.paths]}


class _Skipped(Exception):
    """A figure that cannot be drawn from this study; the message says why."""


@dataclass(frozen=True)
class _Best:
    """The trials the figures draw as the study's best: its best trial, or with several metrics
    the trials of its Pareto front, none of which is better than another in every metric."""

    trials: tuple[FrozenTrial, ...]
    front: bool = False  # several metrics: the trials are the front's

    @functools.cached_property
    def _numbers(self) -> frozenset[int]:
        return frozenset(b.number for b in self.trials)

    def has(self, t: FrozenTrial) -> bool:
        return t.number in self._numbers  # asked of every trial: a front of thousands of ties is no list to scan

    def label(self, t: FrozenTrial) -> str:
        return "Pareto front" if self.front else f"best (trial {t.number})"


# ---------------------------------------------------------------------------------------------
# the report


def build_report(loaded: Loaded, out_dir: Path) -> Report:
    """Write the figures and report.html for a study into `out_dir` (created if missing)."""
    out_dir = Path(out_dir)
    _prepare(out_dir)
    trials = loaded.study.get_trials(deepcopy=False)
    summary = _summarize(loaded, trials)
    plots = []
    for file, title, draw in _drawers(loaded, trials, summary):
        plot = Plot(file, title)
        try:
            plot.png = _render(draw())
        except _Skipped as e:
            plot.note = str(e)
            (out_dir / file).unlink(missing_ok=True)  # an earlier report's figure would contradict this one
        else:
            plot.path = out_dir / file
            _write(plot.path, plot.png)
        plots.append(plot)
    report = Report(out_dir, out_dir / "report.html", plots, summary)
    _write(report.html, _html(report).encode("utf-8"))
    return report


def _drawers(loaded: Loaded, trials: list[FrozenTrial], summary: dict[str, Any]) -> list[tuple[str, str, Callable[[], Figure]]]:
    """Each figure's file, title and drawing. With several metrics the Pareto front comes first,
    and the figures of one metric follow the first (the one the study's results are ordered by)."""
    spec = loaded.spec
    objectives = spec.objectives
    first = objectives[0]
    minimize = first.direction == "minimize"
    # Optuna's intermediate values hold the metric the pruner watches: the first, unless --prune-on names another
    watched = next(m for m in objectives if m.name == (spec.prune_on or first.name))
    feasible = " feasible" if spec.constraints else ""
    if len(objectives) == 1:
        one = best_trial(loaded.study)
        best = _Best((one,) if one else ())
        curves_title, who = "Best trial's learning curves", f"the best trial ({one.number})" if one else ""
    else:
        by_number = {t.number: t for t in trials}  # the front the page lists (one that completed after this snapshot is listed, not drawn)
        best = _Best(tuple(by_number[r["number"]] for r in summary["front"]["trials"] if r["number"] in by_number), front=True)
        curves_title = f"Learning curves of the front's best {first.name}"
        who = f"trial {best.trials[0].number} (the front's best {first.name})" if best.trials else ""
    drawers: list[tuple[str, str, Callable[[], Figure]]] = [
        ("history.png", "Optimization history", lambda: _plot_history(trials, metric=first.name, minimize=minimize, n_metrics=len(objectives), intermediate_first=watched == first)),
        ("importances.png", "Parameter importances", lambda: _plot_importances(summary)),
        ("parallel.png", "Parallel coordinates", lambda: _plot_parallel(trials, objectives=objectives, best=best)),
        ("intermediate.png", "Intermediate values", lambda: _plot_intermediate(trials, metric=watched, index=objectives.index(watched), best=best)),
        ("health.png", "Health by parameter", lambda: _plot_health(summary["health"])),
        ("best_curves.png", curves_title, lambda: _plot_curves(best.trials[0] if best.trials else None, who=who, missing=f"needs a complete{feasible} trial, and the study has none")),
    ]
    if len(objectives) > 1:
        file = "pareto.png" if len(objectives) == 2 else "pareto_pairs.png"
        drawers.insert(0, (file, "Pareto front", lambda: _plot_front(trials, objectives=objectives, best=best)))
    return drawers


def _prepare(out_dir: Path) -> None:
    """Create the folder and prove it writable before any work, so a bad --out fails at once."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"--out {out_dir}: is a file, not a folder; give a folder for the report")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ReportError(f"--out {out_dir}: cannot write there ({e.strerror or e}); give a folder you can write to") from None


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path, error=ReportError) as tmp:
        tmp.write_bytes(data)


def _complete(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials with a finite value for every metric (`values`: one metric or several)."""
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None and all(math.isfinite(v) for v in t.values)]


# ---------------------------------------------------------------------------------------------
# the numbers


def _summarize(loaded: Loaded, trials: list[FrozenTrial]) -> dict[str, Any]:
    base = study_summary(loaded, loaded.url)
    best = best_trial(loaded.study)
    importances, importance_note = _importances(loaded, trials)
    objectives = loaded.spec.objectives
    return {
        "name": base["name"],
        "storage": base["storage"],
        "metric": loaded.spec.metric,
        "direction": base["direction"],
        **({"metrics": [m.text() for m in objectives]} if len(objectives) > 1 else {}),
        "spec": base["spec"],
        "trials": base["trials"],
        "retried": base["retried"],
        "best": _best_dict(loaded, best) if best else None,
        **({"front": _front_dict(loaded, base["front"])} if len(objectives) > 1 else {}),
        **({"constraints": base["constraints"]} if "constraints" in base else {}),
        "importances": importances,
        "importance_note": importance_note,
        "pruned": _pruned(trials),
        "failed": _failed(trials),
        "health": _health(trials, base.get("causes")),
    }


def _health(trials: list[FrozenTrial], causes: dict[str, Any] | None) -> dict[str, Any]:
    """The trials' verdicts (tuner.health): how many of each, the causes named across the study
    (study_summary's), and the counts by parameter value the figure draws."""
    from tuner.health import by_parameter

    from tuner.study.results import judged as judged_trials

    judged = judged_trials(trials)
    counts: dict[str, int] = {}
    for _, v in judged:
        counts[v] = counts.get(v, 0) + 1
    return {
        "counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "causes": causes if judged else None,
        "by_parameter": by_parameter(judged),
    }


def _front_dict(loaded: Loaded, summary: dict[str, Any]) -> dict[str, Any]:
    """The Pareto front as front_summary gives it (size, normalized hypervolume, reference and
    ideal points), each of its trials with its metrics by name and its parameters. Its trials are
    the ones front_summary measured, read again by number, so that the table, the hypervolume and
    the figures agree while workers still add trials."""
    names = [m.name for m in loaded.spec.objectives]
    by_number = {t.number: t for t in loaded.study.get_trials(deepcopy=False)}
    on_front = [by_number[n] for n in summary["trials"]]
    rows = [{"number": t.number, "values": dict(zip(names, t.values)), "params": dict(t.params)} for t in on_front]
    return {**summary, "trials": rows}


def _best_dict(loaded: Loaded, best: FrozenTrial) -> dict[str, Any]:
    active = {**loaded.space.fixed(), **best.params}
    fixed = {n: p.value for n, p in loaded.space.params.items() if p.type == "fixed" and p.is_active(active)}
    attrs = best.user_attrs
    return {
        "number": best.number,
        "value": best.value,
        "params": dict(best.params),
        "fixed": fixed,
        "epochs_run": attrs.get(A.EPOCHS_RUN),
        "diagnostics": {k: attrs.get(k) for k in DIAGNOSTICS},
    }


def _importances(loaded: Loaded, trials: list[FrozenTrial]) -> tuple[dict[str, float], str | None]:
    """Each parameter's share of the importance (summing to 1), or why there is none."""
    import optuna

    complete = _complete(trials)
    if len(complete) < 2:
        return {}, f"need at least 2 complete trials, the study has {len(complete)}"
    names = sorted({n for t in complete for n in t.params})
    varying = [n for n in names if len({repr(t.params.get(n, _MISSING)) for t in complete}) > 1]
    if not varying:
        what = "no parameter is sampled" if not names else f"no parameter varies across the complete trials ({', '.join(names)} are the same in all)"
        return {}, what
    # with several metrics Optuna needs one number a trial: the first metric's, as the report's headings say
    target = (lambda t: t.values[0]) if len(loaded.spec.objectives) > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna warns about small studies; the note below says it once
        try:
            shares = optuna.importance.get_param_importances(loaded.study, target=target)
        except Exception as e:  # an estimator failing on an odd study must not cost the rest of the report
            return {}, f"could not be computed ({e.__class__.__name__}: {e})"
    shares = {k: float(v) for k, v in shares.items()}
    if len(shares) > 1 and len({round(v, 9) for v in shares.values()}) == 1:
        return shares, f"all parameters got an equal share: {len(complete)} complete trials cannot tell them apart yet"
    return shares, None


def _pruned(trials: list[FrozenTrial]) -> dict[str, Any]:
    rows = []
    for t in trials:
        if t.state != TrialState.PRUNED:
            continue
        reason = str(t.user_attrs.get(A.PRUNED_REASON) or "pruned (no reason recorded)")
        diverged = A.pruned_kind(t.user_attrs) == A.DIVERGED
        rows.append({"number": t.number, "epoch": t.user_attrs.get(A.EPOCHS_RUN, t.last_step), "diverged": diverged, "reason": reason})
    n_diverged = sum(r["diverged"] for r in rows)
    return {"total": len(rows), "by_pruner": len(rows) - n_diverged, "diverged": n_diverged, "trials": rows}


def _failed(trials: list[FrozenTrial]) -> dict[str, Any]:
    reasons: dict[str, list[int]] = {}
    for t in trials:
        if t.state == TrialState.FAIL:
            reasons.setdefault(fail_reason(t.user_attrs), []).append(t.number)
    return {"total": sum(map(len, reasons.values())), "reasons": reasons}


# ---------------------------------------------------------------------------------------------
# the terminal summary


def summary_text(report: Report) -> str:
    """A few lines for the terminal: best trial (or Pareto front), what mattered, pruned, failed, files written."""
    s = report.summary
    counts = s["trials"]
    others = ", ".join(f"{counts[k]} {k}" for k in ("running", "waiting") if counts.get(k))
    lines = [
        f"study '{s['name']}': {_count(counts['total'], 'trial')} ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed{', ' + others if others else ''}); {_metrics_text(s)}"
    ]
    best = s["best"]
    if "front" in s:
        lines += _front_lines(s["front"], constrained="constraints" in s)
    elif best is None:
        lines.append("no complete feasible trial yet" if "constraints" in s and counts["complete"] else "no complete trial yet")
    else:
        lines.append(f"best {s['metric']}: {_value(best['value'])} (trial {best['number']})")
        lines += [f"  {k}: {_short(v)}" for k, v in best["params"].items()]
    if "constraints" in s:
        lines.append(_feasibility_text(s["constraints"]))
    if s["importances"]:
        top = list(s["importances"].items())[:N_TOP]
        of = f" for {s['metric']}" if "metrics" in s else ""
        lines.append(f"mattered most{of}: " + ", ".join(f"{k} {v:.0%}" for k, v in top))
    pruned = s["pruned"]
    if pruned["total"]:
        by_pruner = f"{pruned['by_pruner']} by the {s['spec']['pruner']} pruner, " if pruned["by_pruner"] else ""
        lines.append(f"pruned: {pruned['total']} ({by_pruner}{pruned['diverged']} diverged)")
    health = s["health"]
    if set(health["counts"]) - {"healthy"}:
        lines.append("health: " + ", ".join(f"{k} {v}" for k, v in health["counts"].items()))
        lines.append(f"  causes: {health['causes']['note']}")
        lines += [f"    {c['text']}" for c in health["causes"]["causes"]]
    failed = s["failed"]
    if failed["total"]:
        lines.append(f"failed: {failed['total']}")
        reasons = sorted(failed["reasons"].items(), key=lambda kv: -len(kv[1]))
        lines += [f"  {len(numbers)} x {reason}" for reason, numbers in reasons[:N_REASONS]]
        if len(reasons) > N_REASONS:
            lines.append(f"  and {len(reasons) - N_REASONS} other reasons (see the report)")
    lines.append(f"wrote {report.html}")
    lines += [f"  {p}" for p in report.paths if p != report.html]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def _front_lines(front: dict[str, Any], *, constrained: bool) -> list[str]:
    """The Pareto front for the terminal: its size and hypervolume, then its first trials."""
    if not front["trials"]:
        return [f"no complete{' feasible' if constrained else ''} trial yet: the Pareto front is empty"]
    reference = ", ".join(f"{k} {_metric_value(v)}" for k, v in front["reference"].items())
    lines = [f"Pareto front: {_count(front['size'], 'trial')}, hypervolume {front['hypervolume']} (normalized; reference point {reference})"]
    for row in front["trials"][:N_FRONT]:
        lines.append(f"  trial {row['number']}: " + ", ".join(f"{k} {_metric_value(v)}" for k, v in row["values"].items()))
    if front["size"] > N_FRONT:
        lines.append(f"  and {front['size'] - N_FRONT} more (see the report)")
    return lines


def _feasibility_text(feasibility: dict[str, Any]) -> str:
    """How many complete trials meet the constraints, and how many miss each (study_summary's numbers)."""
    missed = ", ".join(f"{n} miss {c}" for c, n in feasibility["missed"].items() if n)
    return f"constraints {', '.join(feasibility['bounds'])}: {feasibility['feasible']} of {feasibility['complete']} complete trials feasible" + (f" ({missed})" if missed else "")


def _metrics_text(s: dict[str, Any]) -> str:
    """The study's metric and direction, or each of its metrics with its own: `val_accuracy (maximize), params (minimize)`."""
    if "metrics" not in s:
        return f"{s['metric']} ({s['direction']})"
    return ", ".join(f"{name} ({direction})" for name, _, direction in (m.rpartition(":") for m in s["metrics"]))


def _axis_label(metric: Metric) -> str:
    return f"{metric.name} ({metric.direction})"


def _value(v: Any) -> str:
    """The metric as every command prints it."""
    return "-" if v is None else f"{v:.4f}"


def _metric_value(v: Any) -> str:
    """One of several metrics: a count stored as a float (a model's parameters) with every digit,
    anything else as every command prints a metric."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e12:
        return str(int(v))
    return _value(v)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _short(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


# ---------------------------------------------------------------------------------------------
# figures


def _figure(width: float = 8.0, height: float = 4.5) -> Figure:
    # The Agg canvas, set on the figure itself: no display, no pyplot, no global backend switch.
    fig = Figure(figsize=(width, height), dpi=_PNG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _render(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_PNG_DPI, facecolor="white")
    return buf.getvalue()


def _trial_value(t: FrozenTrial, *, intermediate_first: bool = True) -> float | None:
    """A complete trial's value (its first metric's); a pruned one's last reported value of it:
    from the vectors a study of several metrics keeps, else what Optuna stores as intermediate
    values, when they are the first metric's (`intermediate_first`)."""
    value = t.values[0] if t.values else None
    if value is None and t.state == TrialState.PRUNED:
        vectors = t.user_attrs.get(A.VECTORS)
        if isinstance(vectors, dict) and vectors:
            value = vectors[max(vectors, key=int)][0]
        elif intermediate_first and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
    return value if value is not None and math.isfinite(value) else None


def _plot_history(trials: list[FrozenTrial], *, metric: str, minimize: bool, n_metrics: int = 1, intermediate_first: bool = True) -> Figure:
    points = [(t, _trial_value(t, intermediate_first=intermediate_first)) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    points = [(t, v) for t, v in points if v is not None]
    if not points:
        raise _Skipped("no trial has a value yet")
    fig = _figure()
    ax = fig.add_subplot()
    # the best so far is the best feasible one: a trial that misses a constraint is never the study's best
    complete = [(t.number, v) for t, v in points if t.state == TrialState.COMPLETE and feasible(t)]
    infeasible = [(t.number, v) for t, v in points if t.state == TrialState.COMPLETE and not feasible(t)]
    pruned = [(t.number, v) for t, v in points if t.state == TrialState.PRUNED]
    if complete:
        ax.scatter(*zip(*complete), color=_COMPLETE_COLOUR, s=30, zorder=3, label="complete")
        best_so_far, best = [], None
        for number, v in complete:
            best = v if best is None else (min(best, v) if minimize else max(best, v))
            best_so_far.append((number, best))
        xs, ys = zip(*best_so_far)
        last = max(t.number for t, _ in points)
        ax.step([*xs, last], [*ys, ys[-1]], where="post", color=_BEST_COLOUR, linewidth=2, zorder=2, label="best so far")
        number, value = (min if minimize else max)(complete, key=lambda nv: nv[1])
        label = f"best (trial {number})" if n_metrics == 1 else f"best {metric} (trial {number})"
        ax.scatter([number], [value], color=_BEST_COLOUR, marker="*", s=260, edgecolors="black", linewidths=0.6, zorder=4, label=label)
    if infeasible:
        ax.scatter(*zip(*infeasible), facecolors="none", edgecolors=_INFEASIBLE_COLOUR, s=30, zorder=3, label="infeasible (misses a constraint)")
    if pruned:
        ax.scatter(*zip(*pruned), color=_PRUNED_COLOUR, marker="x", s=36, zorder=3, label="pruned (last reported value)")
    ax.set_xlabel("trial")
    ax.set_xlim(-0.5, max(1, max(t.number for t, _ in points)) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    of = "" if n_metrics == 1 else f" of {metric}, the first of {n_metrics} metrics"
    ax.set_title(f"Optimization history{of} ({'lower' if minimize else 'higher'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


def _plot_front(trials: list[FrozenTrial], *, objectives: Sequence[Metric], best: _Best) -> Figure:
    """Every complete trial's metrics against each other, the Pareto front's trials in red and
    numbered: with two metrics one plot, the front joined as the staircase that bounds what it
    dominates; with more, a grid of each pair of metrics (a front in several dimensions is no
    staircase in any two of them)."""
    complete = _complete(trials)
    if not complete:
        raise _Skipped("needs a complete trial, and the study has none")
    if len(objectives) == 2:
        fig = _figure(8.0, 6.0)
        ax = fig.add_subplot()
        _draw_pair(ax, complete, best, objectives, (0, 1), staircase=True, numbered=len(best.trials) <= MAX_FRONT_LABELS)
        ax.legend(loc="best", fontsize=8)
        ax.set_title(f"Pareto front: {_count(len(best.trials), 'trial')} of {_count(len(complete), 'complete trial')}")
        return fig
    n = len(objectives) - 1
    fig = _figure(3.6 * n + 1, 3.4 * n + 0.6)
    numbered = len(best.trials) <= MAX_FRONT_LABELS
    for row in range(n):  # the lower triangle: metric row + 1 (y) against each metric before it (x)
        for col in range(row + 1):
            ax = fig.add_subplot(n, n, row * n + col + 1)
            _draw_pair(ax, complete, best, objectives, (col, row + 1), staircase=False, numbered=numbered)
    legend = fig.add_subplot(n, n, n)  # the top right cell, empty in the lower triangle
    legend.axis("off")
    legend.legend(*fig.axes[0].get_legend_handles_labels(), loc="center", fontsize=9)
    fig.suptitle(f"Pareto front of {len(objectives)} metrics, each pair: {_count(len(best.trials), 'trial')} of {_count(len(complete), 'complete trial')}")
    return fig


def _draw_pair(ax: Axes, complete: list[FrozenTrial], best: _Best, objectives: Sequence[Metric], pair: tuple[int, int], *, staircase: bool, numbered: bool) -> None:
    """One pair of metrics (x, y: their indexes): feasible trials filled, infeasible ones hollow
    and grey, the front's trials in red, in the front's order, each with its number."""
    x, y = pair
    on_front = list(best.trials)
    others = [t for t in complete if not best.has(t)]
    met = [t for t in others if feasible(t)]
    infeasible = [t for t in others if not feasible(t)]
    if met:
        ax.scatter([t.values[x] for t in met], [t.values[y] for t in met], color=_COMPLETE_COLOUR, s=24, alpha=0.8, zorder=2, label="dominated")
    if infeasible:
        ax.scatter([t.values[x] for t in infeasible], [t.values[y] for t in infeasible], facecolors="none", edgecolors=_INFEASIBLE_COLOUR, s=24, zorder=2, label="infeasible (misses a constraint)")
    if on_front:
        xs, ys = [t.values[x] for t in on_front], [t.values[y] for t in on_front]
        if staircase:
            # the front best first at x: the next one is worse at x and better at y, so the corner between them is (its x, this y)
            ax.step(xs, ys, where="post", color=_BEST_COLOUR, linewidth=1.2, alpha=0.8, zorder=3)
        ax.scatter(xs, ys, color=_BEST_COLOUR, s=46, edgecolors="black", linewidths=0.5, zorder=4, label=f"Pareto front ({_count(len(on_front), 'trial')})")
        if numbered:
            for t, px, py in zip(on_front, xs, ys):
                ax.annotate(str(t.number), (px, py), xytext=(4, 4), textcoords="offset points", fontsize=8, zorder=5)
    for k, set_label, set_scale in ((x, ax.set_xlabel, ax.set_xscale), (y, ax.set_ylabel, ax.set_yscale)):
        set_label(_axis_label(objectives[k]))
        if _log_scale([t.values[k] for t in complete]):
            set_scale("log")
    ax.grid(alpha=0.3)


def _plot_importances(summary: dict[str, Any]) -> Figure:
    shares = summary["importances"]
    if not shares:
        raise _Skipped(summary["importance_note"])
    names = list(shares)[::-1]  # the largest on top
    fig = _figure(8.0, max(2.5, 0.45 * len(names) + 1.2))
    ax = fig.add_subplot()
    bars = ax.barh(names, [shares[n] for n in names], color=_COMPLETE_COLOUR)
    ax.bar_label(bars, labels=[f"{shares[n]:.1%}" for n in names], padding=3)
    ax.set_xlim(0, max(1e-9, max(shares.values())) * 1.18)
    ax.set_xlabel("share of importance (PED-ANOVA)")
    ax.set_title("Parameter importances" + (f" for {summary['metric']}, the first metric" if "metrics" in summary else ""))
    ax.grid(axis="x", alpha=0.3)
    return fig


_VERDICT_COLOURS = {
    "healthy": "tab:green", "overfitting": "tab:orange", "underfitting": "gold", "stalled": "tab:olive",
    "vanishing gradients": "tab:purple", "dying units": "tab:pink", "exploding gradients": "tab:brown",
    "dead network": "0.35", "diverged": "tab:red",
}


def _plot_health(health: dict[str, Any]) -> Figure:
    """Each parameter's values (or ranges) as bars of their trials, coloured by verdict: which
    values go with which failures, at a glance."""
    shown = health["by_parameter"]
    if not shown:
        raise _Skipped("needs complete or pruned trials with a verdict on their training and a parameter that varies")
    named = [c["condition"] for c in (health["causes"] or {}).get("causes", [])]
    order = sorted(shown, key=lambda p: (not any(p in c for c in named), p))[:MAX_HEALTH_PARAMS]  # the parameters causes name first
    fig = _figure(9.0, 1.0 + sum(0.32 * len(shown[p]) + 0.55 for p in order))
    axes = fig.subplots(len(order), 1, gridspec_kw={"height_ratios": [len(shown[p]) + 1 for p in order]}, squeeze=False)[:, 0]
    seen: dict[str, Any] = {}
    for ax, name in zip(axes, order):
        rows = shown[name][::-1]
        left = [0] * len(rows)
        for kind, colour in _VERDICT_COLOURS.items():
            counts = [r[1].get(kind, 0) for r in rows]
            if any(counts):
                seen[kind] = ax.barh([r[0] for r in rows], counts, left=left, color=colour, label=kind)
                left = [a + b for a, b in zip(left, counts)]
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("trials")
    axes[0].set_title("Health by parameter: each value's trials by verdict")
    fig.legend(seen.values(), seen.keys(), loc="outside right upper", fontsize="small")
    return fig


MAX_HEALTH_PARAMS = 8  # parameters drawn in the health figure


def _value_colours(values: list[float], *, minimize: bool) -> tuple[Normalize, Any]:
    low, high = min(values), max(values)
    if low == high:
        pad = abs(low) * 0.05 or 0.5
        low, high = low - pad, high + pad
    # The best trials are bright either way.
    return Normalize(low, high), matplotlib.colormaps["viridis_r" if minimize else "viridis"]


def _scaled(value: Any, dist: BaseDistribution) -> float:
    """A parameter value on [0, 1] within its distribution: categorical choices as their index."""
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        index = choices.index(value) if value in choices else 0
        return index / (len(choices) - 1) if len(choices) > 1 else 0.5
    low, high, v = float(dist.low), float(dist.high), float(value)
    if getattr(dist, "log", False) and low > 0 and v > 0:
        low, high, v = math.log(low), math.log(high), math.log(v)
    if high == low:
        return 0.5
    return min(1.0, max(0.0, (v - low) / (high - low)))


def _log_scale(values: Sequence[float]) -> bool:
    """Whether a metric's values, all positive, span more than _LOG_DECADES decades (a model's
    parameters often do), so that a linear axis would crowd all but the largest into one corner."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10**_LOG_DECADES


def _metric_axis(values: list[float], *, log: bool) -> tuple[Callable[[float], float], str, str]:
    """A metric's axis in the parallel coordinates: its values on [0, 1], and the labels of its ends."""
    low, high = min(values), max(values)
    if high == low:
        return (lambda v: 0.5), _short(low), _short(high)
    if log:
        return (lambda v: (math.log(v) - math.log(low)) / (math.log(high) - math.log(low))), _short(low), _short(high) + " (log)"
    return (lambda v: (v - low) / (high - low)), _short(low), _short(high)


MAX_LINES = 2000  # lines a plot draws, one per trial: past some thousands a line is a pixel, and 100,000 take matplotlib minutes


def _drawn(trials: list[FrozenTrial], best: _Best) -> list[FrozenTrial]:
    """The trials a line plot draws: all of them, or past MAX_LINES the best (the front) and an
    even sample of the others by number, so the picture keeps the study's shape."""
    if len(trials) <= MAX_LINES:
        return trials
    kept = [t for t in trials if best.has(t)]
    rest = [t for t in trials if not best.has(t)]
    room = max(MAX_LINES - len(kept), 1)
    sample = [rest[round(i * (len(rest) - 1) / max(room - 1, 1))] for i in range(min(room, len(rest)))]
    return sorted({t.number: t for t in kept + sample}.values(), key=lambda t: t.number)


def _of(drawn: list[FrozenTrial], trials: list[FrozenTrial]) -> str:
    return "" if len(drawn) == len(trials) else f", {len(drawn)} drawn (the best and an even sample)"


def _plot_parallel(trials: list[FrozenTrial], *, objectives: Sequence[Metric], best: _Best) -> Figure:
    complete = _complete(trials)
    if not complete:
        raise _Skipped("needs a complete trial, and the study has none")
    dists: dict[str, BaseDistribution] = {}
    for t in complete:
        for name, dist in t.distributions.items():
            dists.setdefault(name, dist)
    names = sorted(dists)
    if not names:
        raise _Skipped("no parameter is sampled: every value in the space is fixed")
    columns = [[t.values[k] for t in complete] for k in range(len(objectives))]
    norm, cmap = _value_colours(columns[0], minimize=objectives[0].direction == "minimize")  # coloured by the first metric
    # a single metric keeps its linear axis; of several, a cost such as params may span decades
    metric_axes = [_metric_axis(c, log=len(objectives) > 1 and _log_scale(c)) for c in columns]
    axes = [*(m.name for m in objectives), *names]
    fig = _figure(max(8.0, 1.3 * len(axes) + 2), 5.0)
    ax = fig.add_subplot()
    drawn = _drawn(complete, best)
    for t in sorted(drawn, key=best.has):  # the best on top
        xs = [float(k) for k in range(len(objectives))]
        ys = [scale(v) for (scale, _, _), v in zip(metric_axes, t.values)]
        for i, name in enumerate(names, start=len(objectives)):
            if name in t.params:  # a conditional parameter absent from this trial: the line skips its axis
                xs.append(float(i))
                ys.append(_scaled(t.params[name], dists[name]))
        is_best = best.has(t)
        style = "-" if feasible(t) else "--"  # dashed: misses a constraint
        ax.plot(xs, ys, style, color=cmap(norm(t.values[0])), linewidth=3 if is_best else 1.2, alpha=1 if is_best else 0.75, zorder=3 if is_best else 2)
    for i, name in enumerate(axes):
        ax.axvline(i, color="0.3", linewidth=0.8, zorder=1)
        if i < len(objectives):
            _, bottom, top = metric_axes[i]
        elif isinstance(dists[name], CategoricalDistribution):
            choices = list(dists[name].choices)
            for j, c in enumerate(choices):
                y = j / (len(choices) - 1) if len(choices) > 1 else 0.5
                ax.text(i + 0.04, y, str(c), fontsize=7, va="center", ha="left", zorder=4, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
            continue
        else:
            d = dists[name]
            bottom, top = _short(d.low), _short(d.high) + (" (log)" if getattr(d, "log", False) else "")
        ax.text(i, -0.06, bottom, fontsize=7, ha="center", va="top")
        ax.text(i, 1.06, top, fontsize=7, ha="center", va="bottom")
    ax.set_xticks(range(len(axes)), labels=axes, rotation=30, ha="right")
    ax.set_xlim(-0.3, len(axes) - 0.4)
    ax.set_ylim(-0.14, 1.14)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=objectives[0].name, fraction=0.04)
    thickest = "the Pareto front's are thickest" if best.front else "the best is thickest"
    dashed = "\ndashed: trials that miss a constraint" if not all(feasible(t) for t in complete) else ""
    ax.set_title(f"Parallel coordinates of {_count(len(complete), 'complete trial')}{_of(drawn, complete)} (scaled to [0, 1]; {thickest}){dashed}")
    return fig


def _plot_intermediate(trials: list[FrozenTrial], *, metric: Metric, index: int, best: _Best) -> Figure:
    """Optuna's intermediate values: the metric per epoch (of several, the one the pruner watches,
    `index` in the study's order), each complete trial coloured by its final value of it."""
    reported = [t for t in trials if t.intermediate_values]
    if not reported:
        raise _Skipped("no trial reported a metric per epoch yet")
    complete = [t for t in reported if t.state == TrialState.COMPLETE and t.values is not None]
    final = {t.number: t.values[index] for t in complete}
    norm, cmap = _value_colours(list(final.values()), minimize=metric.direction == "minimize") if complete else (None, None)
    fig = _figure()
    ax = fig.add_subplot()
    labelled: set[str] = set()

    def label(kind: str) -> str | None:
        if kind in labelled:
            return None
        labelled.add(kind)
        return kind

    drawn = _drawn(reported, best)
    for t in sorted(drawn, key=lambda t: (t.state == TrialState.COMPLETE, best.has(t))):
        steps = sorted(t.intermediate_values)
        ys = [t.intermediate_values[s] for s in steps]
        if best.has(t):
            ax.plot(steps, ys, color=_BEST_COLOUR, linewidth=2.5, marker="o", markersize=3, zorder=4, label=label(best.label(t)))
        elif t.state == TrialState.COMPLETE and cmap is not None and not feasible(t):
            ax.plot(steps, ys, color=cmap(norm(final[t.number])), linewidth=1.2, linestyle="--", zorder=3, label=label("infeasible (dashed)"))
        elif t.state == TrialState.COMPLETE and cmap is not None:
            ax.plot(steps, ys, color=cmap(norm(final[t.number])), linewidth=1.2, zorder=3, label=label("complete (coloured by value)"))
        elif t.state == TrialState.PRUNED:
            ax.plot(steps, ys, color=_PRUNED_COLOUR, linewidth=1, alpha=0.8, zorder=2, label=label("pruned"))
            ax.plot(steps[-1:], ys[-1:], color=_PRUNED_COLOUR, marker="x", zorder=2)
        else:
            ax.plot(steps, ys, color=_FAILED_COLOUR, linewidth=1, linestyle=":", zorder=2, label=label(t.state.name.lower()))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric.name)
    ax.set_title(f"Intermediate values: {metric.name} per epoch, {_count(len(reported), 'trial')}{_of(drawn, reported)}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def _plot_curves(best: FrozenTrial | None, *, who: str, missing: str) -> Figure:
    """The learning curves of the best trial (`who` names it: the best, or the front's best at the
    first metric), or skipped with `missing` when there is none."""
    if best is None:
        raise _Skipped(missing)
    history = best.user_attrs.get(A.HISTORY)
    if not isinstance(history, dict) or not history.get("epoch"):
        raise _Skipped(f"{who} recorded no per-epoch history")
    epochs = list(history["epoch"])

    def series(key: str) -> list[float] | None:
        ys = history.get(key)
        if not isinstance(ys, list) or len(ys) != len(epochs) or all(y is None for y in ys):
            return None
        return [math.nan if y is None else float(y) for y in ys]

    losses = {k: series(k) for k in ("train_loss", "val_loss")}
    accuracies = {k: series(k) for k in ("train_accuracy", "val_accuracy")}
    panels = [(title, {k: v for k, v in group.items() if v is not None}) for title, group in (("loss", losses), ("accuracy", accuracies))]
    panels = [(title, group) for title, group in panels if group]
    if not panels:
        raise _Skipped(f"{who} recorded neither losses nor accuracies per epoch")
    fig = _figure(4.5 * len(panels) + 1, 4.2)
    for i, (title, group) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for key, ys in group.items():
            ax.plot(epochs, ys, marker="o", markersize=3, linestyle="-" if key.startswith("train") else "--", label=key.replace("_", " "))
        finite = [y for ys in group.values() for y in ys if math.isfinite(y)]
        if title == "loss" and finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"Learning curves of {who}")
    return fig


# ---------------------------------------------------------------------------------------------
# the HTML page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 70rem; padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; } th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #666; } .note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4rem 0.8rem; margin: 0.4rem 0; }
.bar { background: #4c78a8; height: 0.8rem; display: inline-block; vertical-align: middle; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #555; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[Any]], *, numeric: Collection[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _best_html(s: dict[str, Any]) -> list[str]:
    """A single metric's best trial: its value, parameters and diagnostics."""
    parts: list[str] = []
    add = parts.append
    add("<h2>Best trial</h2>")
    best = s["best"]
    if best is None:
        if "constraints" in s and s["trials"]["complete"]:
            add('<p class="note">No complete trial meets the constraints yet: there is no best value, and the figures that need one are skipped.</p>')
        else:
            add('<p class="note">No complete trial yet: there is no best value, and the figures that need complete trials are skipped.</p>')
    else:
        add(f"<p>best {_e(s['metric'])}: <strong>{_e(_value(best['value']))}</strong> (trial {_e(best['number'])})</p>")
        rows = [[k, _short(v)] for k, v in best["params"].items()] + [[k, f"{_short(v)} (fixed)"] for k, v in best["fixed"].items()]
        add(_table(["parameter", "value"], rows) if rows else "<p>No parameters.</p>")
        add("<h3>Diagnostics</h3>")
        rows = [[k, "not recorded" if v is None else _short(v)] for k, v in best["diagnostics"].items()]
        add(_table(["diagnostic", "value"], rows))
        add(
            '<p class="muted">grad_norm_first/last: gradient norms of the first and last layers at the last epoch; '
            "overfit_gap: train minus validation accuracy (for regression, validation minus train loss).</p>"
        )
    return parts


def _front_html(s: dict[str, Any]) -> list[str]:
    """Several metrics: the Pareto front's trials (each metric's value, then the parameters), its
    size and hypervolume, with the reference and ideal points that normalize it."""
    front = s["front"]
    parts = ["<h2>Pareto front</h2>"]
    if not front["trials"]:
        feasible = " meets the constraints" if "constraints" in s else " is complete"
        parts.append(f'<p class="note">No trial{feasible} yet: the front is empty, and the figures that need it are skipped.</p>')
        return parts
    points = {k: ", ".join(f"{name} {_metric_value(v)}" for name, v in front[k].items()) for k in ("reference", "ideal")}
    parts.append(
        f"<p>{_e(_count(front['size'], 'trial'))} on the front: none is better than another in every metric "
        f"(listed best first by {_e(s['metric'])}). Hypervolume <strong>{_e(front['hypervolume'])}</strong>: the share the front dominates "
        f"of the box from the reference point ({_e(points['reference'])}: each metric's worst among the feasible complete trials) "
        f"to the ideal point ({_e(points['ideal'])}: each metric's best); 1.0 would be one trial best at everything.</p>"
    )
    metrics = [_axis_label(Metric(name, direction)) for name, _, direction in (m.rpartition(":") for m in s["metrics"])]
    params = list(dict.fromkeys(k for row in front["trials"] for k in row["params"]))  # in the order the trials have them
    rows = [
        [row["number"], *(_metric_value(v) for v in row["values"].values()), *(_short(row["params"].get(k)) for k in params)]
        for row in front["trials"]
    ]
    parts.append(_table(["trial", *metrics, *params], rows, numeric=range(len(metrics) + 1)))
    return parts


def _constraints_html(feasibility: dict[str, Any]) -> list[str]:
    """What the constraints left: feasible trials, and how many missed each bound."""
    return [
        "<h2>Constraints</h2>",
        (
            f"<p>{_e(feasibility['feasible'])} of {_e(_count(feasibility['complete'], 'complete trial'))} meet every constraint. "
            "The others are never the best nor on a front; the figures draw them hollow (or dashed).</p>"
        ),
        _table(["constraint", "complete trials that miss it"], [[c, n] for c, n in feasibility["missed"].items()], numeric={1}),
    ]


def _html(report: Report) -> str:
    s = report.summary
    parts: list[str] = []
    add = parts.append
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    add(f"<h1>Study {_e(s['name'])}</h1>")
    add(f'<p class="muted">{_e(_metrics_text(s))} &middot; storage {_e(s["storage"])} &middot; generated {_e(generated)}</p>')

    add("<h2>Settings</h2>")
    add(_table(["setting", "value"], [[k, _short(v)] for k, v in s["spec"].items()]))
    counts = s["trials"]
    add("<h2>Trials</h2>")
    add(_table(["state", "trials"], [[k, v] for k, v in counts.items() if k != "total" and v] + [["total", counts["total"]]], numeric={1}))
    if s["retried"]:
        add(f"<p>{_e(s['retried'])} trials were queued again after a lost worker or an interruption.</p>")

    if "front" in s:
        parts += _front_html(s)
    else:
        parts += _best_html(s)
    if "constraints" in s:
        parts += _constraints_html(s["constraints"])

    add("<h2>Parameter importances" + (f" for {_e(s['metric'])}, the first metric" if "metrics" in s else "") + "</h2>")
    if s["importance_note"]:
        add(f'<p class="note">{_e(s["importance_note"])}</p>')
    if s["importances"]:
        rows_html = "".join(
            f'<tr><td>{_e(k)}</td><td class="num">{_e(f"{v:.1%}")}</td><td><span class="bar" style="width:{max(0.0, v) * 20:.2f}rem"></span></td></tr>'
            for k, v in s["importances"].items()
        )
        add(f"<table><thead><tr><th>parameter</th><th>share</th><th></th></tr></thead><tbody>{rows_html}</tbody></table>")

    pruned = s["pruned"]
    add("<h2>Pruned trials</h2>")
    if not pruned["total"]:
        add("<p>None.</p>")
    else:
        why = "other trials were better in every metric at the same epoch" if s["spec"]["pruner"] == "pareto" else "their metric trailed the other trials' at the same epoch"
        by_pruner = f"{_e(pruned['by_pruner'])} by the {_e(s['spec']['pruner'])} pruner ({why}), " if pruned["by_pruner"] else ""
        add(f"<p>{_e(pruned['total'])} pruned: {by_pruner}{_e(pruned['diverged'])} diverged (a NaN or infinite loss).</p>")
        rows = [[r["number"], _short(r["epoch"]), r["reason"]] for r in pruned["trials"][:MAX_ROWS]]
        add(_table(["trial", "epoch", "reason"], rows, numeric={0, 1}))
        if pruned["total"] > MAX_ROWS:
            add(f'<p class="muted">and {_e(pruned["total"] - MAX_ROWS)} more.</p>')

    failed = s["failed"]
    add("<h2>Failed trials</h2>")
    if not failed["total"]:
        add("<p>None.</p>")
    else:
        rows = [[len(numbers), reason, ", ".join(map(str, numbers))] for reason, numbers in failed["reasons"].items()]
        add(_table(["trials", "reason", "trial numbers"], rows, numeric={0}))

    health = s["health"]
    add("<h2>Health</h2>")
    if not health["counts"]:
        add("<p>No trial has a verdict on its training.</p>")
    else:
        add("<p>" + _e(", ".join(f"{k} {v}" for k, v in health["counts"].items())) + " (each trial's verdict is in the trials table of <code>tuner study trials</code>).</p>")
        causes = health["causes"]
        add(f"<p>Causes across the study: {_e(causes['note'])}.</p>")
        if causes["causes"]:
            add("<ul>" + "".join(f"<li>{_e(c['text'])} (p={c['p']:.1g})</li>" for c in causes["causes"]) + "</ul>")

    add("<h2>Figures</h2>")
    for plot in report.plots:
        if plot.path is None:
            add(f'<p class="note">{_e(plot.title)}: skipped, {_e(plot.note)}.</p>')
            continue
        data = base64.b64encode(plot.png).decode("ascii")
        add(f'<figure><img src="data:image/png;base64,{data}" alt="{_e(plot.title)}"><figcaption>{_e(plot.title)} ({_e(plot.file)})</figcaption></figure>')

    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>tuner report: {_e(s['name'])}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )

