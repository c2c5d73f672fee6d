"""Study reports: figures (PNG, drawn with matplotlib) and one self-contained HTML page.

`build_report` reads a stored study and writes into a folder:

    history.png       each trial's value and the best so far
    importances.png   which parameters mattered (optuna.importance)
    parallel.png      parallel coordinates of the complete trials, coloured by value
    intermediate.png  the metric per epoch, one line per trial
    best_curves.png   the best trial's learning curves (losses, accuracies)
    report.html       all of the above embedded as data URIs, with the study's settings, counts,
                      best trial, why trials were pruned or failed, and the best trial's diagnostics

A figure that cannot be drawn (no complete trial yet, a single trial, no recorded history) is
skipped, and the report says why. Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Collection

import matplotlib
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
from tuner.study import Loaded, best_trial, study_summary

__all__ = ["DIAGNOSTICS", "Plot", "Report", "build_report", "summary_text"]

# What the objective records on a complete trial to judge its training beyond its score.
DIAGNOSTICS = (A.GRAD_NORM_FIRST, A.GRAD_NORM_LAST, A.VANISHING, A.EXPLODING, A.OVERFIT_GAP, A.TRAIN_ACCURACY)
N_TOP = 3  # parameters named in the terminal summary
N_REASONS = 5  # distinct failure reasons named in the terminal summary
MAX_ROWS = 100  # pruned trials listed one by one in the HTML page
_PNG_DPI = 100
_COMPLETE_COLOUR = "tab:blue"
_PRUNED_COLOUR = "0.6"  # grey
_FAILED_COLOUR = "tab:red"
_BEST_COLOUR = "tab:red"
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


# ---------------------------------------------------------------------------------------------
# the report


def build_report(loaded: Loaded, out_dir: Path) -> Report:
    """Write the figures and report.html for a study into `out_dir` (created if missing)."""
    out_dir = Path(out_dir)
    _prepare(out_dir)
    trials = loaded.study.get_trials(deepcopy=False)
    summary = _summarize(loaded, trials)
    minimize = loaded.spec.direction == "minimize"
    metric = loaded.spec.metric
    best = best_trial(loaded.study)
    drawers: list[tuple[str, str, Callable[[], Figure]]] = [
        ("history.png", "Optimization history", lambda: _plot_history(trials, metric=metric, minimize=minimize)),
        ("importances.png", "Parameter importances", lambda: _plot_importances(summary)),
        ("parallel.png", "Parallel coordinates", lambda: _plot_parallel(trials, metric=metric, minimize=minimize, best=best)),
        ("intermediate.png", "Intermediate values", lambda: _plot_intermediate(trials, metric=metric, minimize=minimize, best=best)),
        ("best_curves.png", "Best trial's learning curves", lambda: _plot_curves(best)),
    ]
    plots = []
    for file, title, draw in drawers:
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
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]


# ---------------------------------------------------------------------------------------------
# the numbers


def _summarize(loaded: Loaded, trials: list[FrozenTrial]) -> dict[str, Any]:
    base = study_summary(loaded, loaded.url)
    best = best_trial(loaded.study)
    importances, importance_note = _importances(loaded, trials)
    return {
        "name": base["name"],
        "storage": base["storage"],
        "metric": loaded.spec.metric,
        "direction": base["direction"],
        "spec": base["spec"],
        "trials": base["trials"],
        "retried": base["retried"],
        "best": _best_dict(loaded, best) if best else None,
        "importances": importances,
        "importance_note": importance_note,
        "pruned": _pruned(trials),
        "failed": _failed(trials),
    }


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna warns about small studies; the note below says it once
        try:
            shares = optuna.importance.get_param_importances(loaded.study)
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
    """A few lines for the terminal: best trial, what mattered, pruned, failed, files written."""
    s = report.summary
    counts = s["trials"]
    others = ", ".join(f"{counts[k]} {k}" for k in ("running", "waiting") if counts.get(k))
    lines = [
        f"study '{s['name']}': {_count(counts['total'], 'trial')} ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed{', ' + others if others else ''}); {s['metric']} ({s['direction']})"
    ]
    best = s["best"]
    if best is None:
        lines.append("no complete trial yet")
    else:
        lines.append(f"best {s['metric']}: {_value(best['value'])} (trial {best['number']})")
        lines += [f"  {k}: {_short(v)}" for k, v in best["params"].items()]
    if s["importances"]:
        top = list(s["importances"].items())[:N_TOP]
        lines.append("mattered most: " + ", ".join(f"{k} {v:.0%}" for k, v in top))
    pruned = s["pruned"]
    if pruned["total"]:
        lines.append(f"pruned: {pruned['total']} ({pruned['by_pruner']} by the {s['spec']['pruner']} pruner, {pruned['diverged']} diverged)")
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


def _value(v: Any) -> str:
    """The metric as every command prints it."""
    return "-" if v is None else f"{v:.4f}"


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


def _trial_value(t: FrozenTrial) -> float | None:
    """A complete trial's value; a pruned one's last reported metric (what Optuna stores, if any)."""
    value = t.value
    if value is None and t.state == TrialState.PRUNED and t.intermediate_values:
        value = t.intermediate_values[max(t.intermediate_values)]
    return value if value is not None and math.isfinite(value) else None


def _plot_history(trials: list[FrozenTrial], *, metric: str, minimize: bool) -> Figure:
    points = [(t, _trial_value(t)) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    points = [(t, v) for t, v in points if v is not None]
    if not points:
        raise _Skipped("no trial has a value yet")
    fig = _figure()
    ax = fig.add_subplot()
    complete = [(t.number, v) for t, v in points if t.state == TrialState.COMPLETE]
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
        ax.scatter([number], [value], color=_BEST_COLOUR, marker="*", s=260, edgecolors="black", linewidths=0.6, zorder=4, label=f"best (trial {number})")
    if pruned:
        ax.scatter(*zip(*pruned), color=_PRUNED_COLOUR, marker="x", s=36, zorder=3, label="pruned (last reported value)")
    ax.set_xlabel("trial")
    ax.set_xlim(-0.5, max(1, max(t.number for t, _ in points)) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"Optimization history ({'lower' if minimize else 'higher'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


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
    ax.set_title("Parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return fig


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


def _plot_parallel(trials: list[FrozenTrial], *, metric: str, minimize: bool, best: FrozenTrial | None) -> Figure:
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
    values = [t.value for t in complete]
    norm, cmap = _value_colours(values, minimize=minimize)
    v_low, v_high = min(values), max(values)
    axes = [metric, *names]
    fig = _figure(max(8.0, 1.3 * len(axes) + 2), 5.0)
    ax = fig.add_subplot()
    ordered = sorted(complete, key=lambda t: t.number == (best.number if best else -1))  # the best on top
    for t in ordered:
        xs = [0.0]
        ys = [0.5 if v_high == v_low else (t.value - v_low) / (v_high - v_low)]
        for i, name in enumerate(names, start=1):
            if name in t.params:  # a conditional parameter absent from this trial: the line skips its axis
                xs.append(float(i))
                ys.append(_scaled(t.params[name], dists[name]))
        is_best = best is not None and t.number == best.number
        ax.plot(xs, ys, color=cmap(norm(t.value)), linewidth=3 if is_best else 1.2, alpha=1 if is_best else 0.75, zorder=3 if is_best else 2)
    for i, name in enumerate(axes):
        ax.axvline(i, color="0.3", linewidth=0.8, zorder=1)
        if i == 0:
            bottom, top = _short(v_low), _short(v_high)
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
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric, fraction=0.04)
    ax.set_title(f"Parallel coordinates of {_count(len(complete), 'complete trial')} (scaled to [0, 1]; the best is thickest)")
    return fig


def _plot_intermediate(trials: list[FrozenTrial], *, metric: str, minimize: bool, best: FrozenTrial | None) -> Figure:
    reported = [t for t in trials if t.intermediate_values]
    if not reported:
        raise _Skipped("no trial reported a metric per epoch yet")
    complete = [t for t in reported if t.state == TrialState.COMPLETE and t.value is not None]
    norm, cmap = _value_colours([t.value for t in complete], minimize=minimize) if complete else (None, None)
    fig = _figure()
    ax = fig.add_subplot()
    labelled: set[str] = set()

    def label(kind: str) -> str | None:
        if kind in labelled:
            return None
        labelled.add(kind)
        return kind

    for t in sorted(reported, key=lambda t: (t.state == TrialState.COMPLETE, best is not None and t.number == best.number)):
        steps = sorted(t.intermediate_values)
        ys = [t.intermediate_values[s] for s in steps]
        if best is not None and t.number == best.number:
            ax.plot(steps, ys, color=_BEST_COLOUR, linewidth=2.5, marker="o", markersize=3, zorder=4, label=f"best (trial {t.number})")
        elif t.state == TrialState.COMPLETE and cmap is not None:
            ax.plot(steps, ys, color=cmap(norm(t.value)), linewidth=1.2, zorder=3, label=label("complete (coloured by value)"))
        elif t.state == TrialState.PRUNED:
            ax.plot(steps, ys, color=_PRUNED_COLOUR, linewidth=1, alpha=0.8, zorder=2, label=label("pruned"))
            ax.plot(steps[-1:], ys[-1:], color=_PRUNED_COLOUR, marker="x", zorder=2)
        else:
            ax.plot(steps, ys, color=_FAILED_COLOUR, linewidth=1, linestyle=":", zorder=2, label=label(t.state.name.lower()))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"Intermediate values: {metric} per epoch, {_count(len(reported), 'trial')}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def _plot_curves(best: FrozenTrial | None) -> Figure:
    if best is None:
        raise _Skipped("needs a complete trial, and the study has none")
    history = best.user_attrs.get(A.HISTORY)
    if not isinstance(history, dict) or not history.get("epoch"):
        raise _Skipped(f"the best trial ({best.number}) recorded no per-epoch history")
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
        raise _Skipped(f"the best trial ({best.number}) recorded neither losses nor accuracies per epoch")
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
    fig.suptitle(f"Learning curves of the best trial ({best.number})")
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


def _html(report: Report) -> str:
    s = report.summary
    parts: list[str] = []
    add = parts.append
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    add(f"<h1>Study {_e(s['name'])}</h1>")
    add(f'<p class="muted">{_e(s["metric"])} ({_e(s["direction"])}) &middot; storage {_e(s["storage"])} &middot; generated {_e(generated)}</p>')

    add("<h2>Settings</h2>")
    add(_table(["setting", "value"], [[k, _short(v)] for k, v in s["spec"].items()]))
    counts = s["trials"]
    add("<h2>Trials</h2>")
    add(_table(["state", "trials"], [[k, v] for k, v in counts.items() if k != "total" and v] + [["total", counts["total"]]], numeric={1}))
    if s["retried"]:
        add(f"<p>{_e(s['retried'])} trials were queued again after a lost worker or an interruption.</p>")

    add("<h2>Best trial</h2>")
    best = s["best"]
    if best is None:
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

    add("<h2>Parameter importances</h2>")
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
        add(
            f"<p>{_e(pruned['total'])} pruned: {_e(pruned['by_pruner'])} by the {_e(s['spec']['pruner'])} pruner "
            f"(their metric trailed the other trials' at the same epoch), {_e(pruned['diverged'])} diverged (a NaN or infinite loss).</p>"
        )
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

