"""`tuner bench`: measure tuner against Optuna's own PyTorch example, print a table, write the JSON.

The harness is the checkout's benchmarks/ package, beside tuner/ and not installed with it."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

import tuner
from tuner.atomic import atomic_path
from tuner.cli.common import Format, FormatOpt, console, console_err, print_json
from tuner.errors import TunerError
from tuner.space import SPACES_DIR

__all__ = ["bench", "benchmarks_dir"]


def benchmarks_dir() -> Path:
    """Where the checkout keeps the harness: benchmarks/ beside the tuner package folder."""
    return Path(tuner.__file__).resolve().parent.parent / "benchmarks"


def _load_benchmarks() -> ModuleType:
    """The checkout's benchmarks package; a TunerError where tuner was installed without one (a wheel)."""
    folder = benchmarks_dir()
    if not (folder / "__init__.py").is_file():
        raise TunerError(
            f"`tuner bench` runs from a checkout of tuner's repository: {folder} not found (this tuner was installed "
            "without its benchmarks/); clone the repository and install it there with `pip install -e .`"
        )
    if str(folder.parent) not in sys.path:  # the checkout's root; an editable install puts only tuner/ on the path
        sys.path.insert(0, str(folder.parent))
    return importlib.import_module("benchmarks")


def bench(
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="Where to write the figures as JSON.")] = Path("studies/bench.json"),
    quick: Annotated[bool, typer.Option("--quick", help="Every measurement once and small (under a minute): a smoke check, not figures.")] = False,
    repeats: Annotated[Optional[int], typer.Option("--repeats", min=1, help="Runs per measurement; figures are medians (default 3; 1 with --quick).")] = None,
    skip: Annotated[
        Optional[str],
        typer.Option("--skip", metavar="NAMES", help="Comma-separated sections to leave out: throughput, overhead, postgres (PostgreSQL in overhead and scale), growth, search, workers, command, packing, pareto, health, warm, scale."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N; auto takes a GPU when torch sees one.")] = "auto",
    postgres: Annotated[
        str, typer.Option("--postgres", help="Admin URL of a PostgreSQL server; a temporary database is created and dropped there.")
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    spaces_dir: Annotated[Path, typer.Option("--spaces-dir", help="Folder holding bench_ref.yaml.")] = SPACES_DIR,
    fmt: FormatOpt = Format.table,
) -> None:
    """Benchmark tuner against Optuna's PyTorch example: trial throughput, service overhead (and its
    growth to 2,000 trials), time to 0.97 accuracy per search strategy, worker scaling, command trials,
    trial packing, the pareto pruner on a two-metric study, and studies of 1,000 to 100,000 trials."""
    harness = _load_benchmarks()
    settings = harness.BenchSettings.quick(repeats) if quick else harness.BenchSettings(**({"repeats": repeats} if repeats else {}))
    names = tuple(s.strip() for s in (skip or "").split(",") if s.strip())
    try:  # a bad --out fails now, not after minutes of measuring
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TunerError(f"--out {out}: cannot create its folder ({e.strerror}); pass another --out") from None
    doc = harness.run_bench(
        settings,
        device=device,
        skip=names,
        postgres=postgres,
        spaces_dir=spaces_dir,
        log=lambda line: console_err.print(line, markup=False, highlight=False),
    )
    with atomic_path(out, hint="; pass --out with a file you can write") as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if fmt == Format.json:
        print_json(doc)
        return
    console.print(_table(doc))
    for line in _notes(doc):
        console.print(line, markup=False)
    busy = max((machine_load for machine_load in (doc["machine"].get("load_average") or [0])[:1] + (doc["machine"].get("load_average_after") or [0])[:1]), default=0)
    if busy > 0.5 * (doc["machine"].get("cores") or 1):
        console.print(f"note: the machine was busy (load average {busy:.2f} on {doc['machine']['cores']} cores): other work skews every figure", markup=False)
    machine = doc["machine"]
    console.print(
        f"{machine['cpu']}, {machine['cores']} cores, {machine['device_name']}; torch {machine['torch']}, optuna {machine['optuna']}; "
        f"load average {_load(machine.get('load_average'))} before, {_load(machine.get('load_average_after'))} after; {doc['wall_s']:.0f}s in all; written to {out}",
        markup=False,
    )
    console.print(
        "ratios: tuner/reference; service share: reference/tuner; growth: large/small; search: random/tpe; workers: 2/1; command: trial/by hand; packing: packed/other, search unpacked/packed; "
        "pareto: pruned/unpruned (to none's final: median by seed), hypervolume and ms a report pruned-unpruned",
        markup=False,
    )


def _load(averages: Any) -> str:
    return "-" if not averages else f"{averages[0]:.2f}"


def _num(value: Any, fmt: str = "{:.3g}") -> str:
    return "-" if value is None else fmt.format(value)


def _met(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _table(doc: dict[str, Any]) -> Table:
    """One row per figure; the ratio is tuner over the reference (for service share: how many times
    smaller tuner's is), 2,000 over 100 trials for growth, random over tpe, 2 workers over 1."""
    table = Table("metric", "tuner", "reference", "ratio", "target", "met?", title="tuner bench: medians")
    if "throughput" in doc:
        t = doc["throughput"]
        table.add_row("trials/s", _num(t["tuner"]), _num(t["reference"]), _num(t["ratio"], "{:.2f}x"), f">={t['target']:g}x", _met(t["met"]))
    if "overhead" in doc:
        o = doc["overhead"]
        for key, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
            part = o.get(key)
            if not part:
                continue
            if "skipped" in part:
                table.add_row(f"service share, {label}", "skipped", "", "", "", "")
                continue
            sqlite = key == "sqlite"
            table.add_row(
                f"service share, {label}",
                f"{part['tuner']['share']:.1%}",
                f"{part['reference']['share']:.1%}",
                _num(part["ratio"], "{:.2f}x"),
                f"<={o['target']:.0%}" if sqlite else "",
                _met(o["met"]) if sqlite else "",
            )
    if "growth" in doc:
        g = doc["growth"]
        small, large = g["sizes"]
        for sampler in ("random", "tpe"):
            row = g[sampler]
            table.add_row(
                f"service ms, {small}->{large} trials, {sampler}",
                f"{row['service_ms'][0]:.1f}->{row['service_ms'][1]:.1f}",
                "",
                _num(row["ratio"], "{:.2f}x"),
                "flat",
                "",
            )
    if "search" in doc:
        s = doc["search"]
        strategies = s["strategies"]

        def cell(label: str) -> str:
            st = strategies[label]
            reached = f"{st['reached']}/{len(st['runs'])}"
            return f"- ({reached})" if st["median_s"] is None else f"{st['median_s']:.1f} ({reached})"

        table.add_row(f"s to {s['threshold']}: tpe+hb vs random", cell("tpe+hyperband"), cell("random"), _num(s["ratio"], "{:.2f}x"), f">={s['target']:g}x", _met(s["met"]))
        table.add_row(f"s to {s['threshold']}: grid", cell("grid"), "", "", "", "")
    if "workers" in doc:
        w = doc["workers"]
        ratio = _num(w["ratio"], "{:.2f}x") + (" (impossible: a faulty run)" if w.get("impossible") else "")
        table.add_row("trials/s, 2 workers vs 1", _num(w["2"]["trials_per_s"]), _num(w["1"]["trials_per_s"]), ratio, "", "")
    if "command" in doc:
        c = doc["command"]
        table.add_row("s a run: --command trial vs by hand", _num(c["as_trial_s"]), _num(c["by_hand_s"]), _num(c["ratio"], "{:.3f}x"), "", "")
    if "packing" in doc:
        p = doc["packing"]
        table.add_row(f"trials/s packed by {p['pack']} vs reference", _num(p["packed"]), _num(p["reference"]), _num(p["ratio_reference"], "{:.2f}x"), f">={p['target']:g}x", _met(p["met"]))
        table.add_row("trials/s packed vs unpacked", _num(p["packed"]), _num(p["unpacked"]), _num(p["ratio_unpacked"], "{:.2f}x"), "", "")
        s = p["search"]

        def reached(part: dict[str, Any]) -> str:
            return f"{_num(part['median_s'], '{:.1f}')} ({part['reached']}/{len(part['runs'])})"

        table.add_row(f"s to {s['threshold']} tpe+hb: unpacked vs packed", reached(s["unpacked"]), reached(s["packed"]), _num(s["speedup"], "{:.2f}x"), "", "")
        q = p.get("quality")
        if q:
            runs = f"{len(q['packed']['best'])} seeds"
            table.add_row(
                f"tpe {q['trials']} trials, best (mean, {runs}): auto ({q['auto']}) vs 1",
                _num(q["packed"]["mean_best"], "{:.4f}"),
                _num(q["unpacked"]["mean_best"], "{:.4f}"),
                _num(q["best_difference"], "{:+.4f}"),
                "same",
                "",
            )
            table.add_row(f"s a {q['trials']}-trial tpe study: auto vs 1", _num(q["packed"]["median_s"], "{:.1f}"), _num(q["unpacked"]["median_s"], "{:.1f}"), _num(q["speedup"], "{:.2f}x"), "", "")
    if "pareto" in doc:
        _pareto_rows(table, doc["pareto"])
    if "warm" in doc:
        w = doc["warm"]
        cold = w["arms"]["cold"]

        def took(part: dict[str, Any]) -> str:
            return f"{_num(part['median_s'], '{:.1f}')} ({part['reached']}/{len(part['runs'])})"

        for arm in ("warm related", "warm unrelated", "prior related"):
            table.add_row(f"s to {w['threshold']}: cold vs {arm}", took(w["arms"][arm]), took(cold), _num(w["ratios"][arm], "{:.2f}x"), "", "")
    if "scale" in doc:
        sc = doc["scale"]
        small, large = sc["sizes"][0], sc["sizes"][-1]
        for key, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
            part = sc.get(key, {})
            if "sizes" not in part:
                continue
            table.add_row(
                f"service ms, {small}->{large} trials, random, {label}",
                "->".join(f"{r['service_ms']:.1f}" for r in part["sizes"]),
                "",
                _num(part["ratio"], "{:.2f}x"),
                f"<={sc['target']:g}x",
                _met(part["met"]),
            )
            table.add_row(f"TPE sampling ms, {small}->{large} trials, {label}", "->".join(_num(r["tpe_sampling_ms"], "{:.0f}") for r in part["sizes"]), "", "", "", "")
            table.add_row(
                f"TPE sampling ms, --history {doc['settings']['scale_history']}, {label}", "->".join(_num(r["tpe_history_sampling_ms"], "{:.0f}") for r in part["sizes"]), "", "", "", ""
            )
        h = sc.get("history")
        if h:
            table.add_row(
                f"TPE best in {h['trials']} trials: --history {h['history']} vs all ({h['seeds']} seeds)",
                _num(h["window"]["mean_best"], "{:.4f}"),
                _num(h["all"]["mean_best"], "{:.4f}"),
                _num(h["best_difference"], "{:+.4f}"),
                "",
                "",
            )
    if "health" in doc:
        for m in doc["health"]["models"]:
            table.add_row(f"health ms an epoch, {m['hidden_units']} units", _num(m["per_epoch_ms"]), _num(m["epoch_ms"]), f"{m['share']:.1%}", "", "")
    return table


def _pareto_rows(table: Table, p: dict[str, Any]) -> None:
    """The pareto pruner against none: the pruned arm (twice the trials) in the tuner column, the
    unpruned in the reference column. Hypervolumes at equal trials and at equal time have the
    difference in the ratio column, with its range over seeds; at equal trials the target is the
    unpruned arm's seed-to-seed range, and "met" says whether pruning left the hypervolume within it
    (no: lower in every seed, by more than that range)."""
    pruned, unpruned = p["arms"]["pareto"], p["arms"]["none"]
    n, several = p["trials"], len(p["seeds"]) > 1
    seeds = f"{len(p['seeds'])} seed{'s' if several else ''}"

    def difference(d: dict[str, Any]) -> str:
        return _num(d["median"], "{:+.4f}") + (f" ({d['min']:+.4f}..{d['max']:+.4f})" if several else "")

    at_trials, at_time, reach = p["equal_trials"], p["equal_time"], p["to_unpruned"]
    shrank = at_trials["shrank"]
    table.add_row(
        f"hypervolume after {n} trials ({seeds}): pareto vs none",
        _num(pruned["hv_equal"], "{:.4f}"),
        _num(unpruned["hv_equal"], "{:.4f}"),
        difference(at_trials),
        f"|d| <= {at_trials['noise']:.4f}" if several else "",
        "-" if shrank is None else _met(not shrank),
    )
    table.add_row(
        f"hypervolume when none ended: pareto ({pruned['trials']} trials) vs none", _num(at_time["pareto_hv"], "{:.4f}"), _num(at_time["none_hv"], "{:.4f}"), difference(at_time), "", ""
    )
    table.add_row(
        "s to none's final hypervolume: pareto vs none",
        f"{_num(reach['median_s'], '{:.1f}')} ({reach['reached']} of {reach['of']})",
        _num(reach["median_none_s"], "{:.1f}"),
        _num(reach["median_ratio"], "{:.2f}x"),
        "",
        "",
    )
    table.add_row(f"s to {p['share']:.0%} of own hypervolume after {n} trials", _num(pruned["t95_s"], "{:.1f}"), _num(unpruned["t95_s"], "{:.1f}"), _num(p["ratio_t95"], "{:.2f}x"), "", "")
    table.add_row(f"s for {n} trials, {p['epochs']} epochs: pareto vs none", _num(pruned["s_equal"], "{:.1f}"), _num(unpruned["s_equal"], "{:.1f}"), _num(p["ratio_equal_s"], "{:.2f}x"), "", "")
    table.add_row(f"s a study: pareto {pruned['trials']} trials vs none {unpruned['trials']}", _num(pruned["total_s"], "{:.1f}"), _num(unpruned["total_s"], "{:.1f}"), _num(p["ratio_total"], "{:.2f}x"), "", "")
    table.add_row(f"trials pruned: of {n}, of all (medians)", f"{_num(pruned['pruned_equal'], '{:g}')}, {_num(pruned['pruned'], '{:g}')}", _num(unpruned["pruned"], "{:g}"), "", "", "")
    table.add_row(
        f"epochs run: of {n} trials, of all (medians)",
        f"{_num(pruned['epochs_equal'], '{:g}')}, {_num(pruned['epochs_run'], '{:g}')}",
        _num(unpruned["epochs_run"], "{:g}"),
        _num(pruned["epochs_equal"] / unpruned["epochs_equal"] if pruned["epochs_equal"] and unpruned["epochs_equal"] else None, "{:.2f}x"),
        "",
        "",
    )
    table.add_row("ms a report (storage, pruner): pareto vs none", _num(pruned["report_ms"], "{:.2f}"), _num(unpruned["report_ms"], "{:.2f}"), _num(p["pruner_ms_per_report"], "{:+.2f} ms"), "", "")


def _notes(doc: dict[str, Any]) -> list[str]:
    """What the table has no room for: where each trial's service time goes."""
    lines = []
    for key in ("sqlite", "postgresql"):
        part = doc.get("overhead", {}).get(key, {})
        if "tuner" in part:
            for side in ("tuner", "reference"):
                p = part[side]
                lines.append(
                    f"{key} {side}: {p['wall_ms']:.0f} ms a trial = {p['train_ms']:.0f} training + {p['sampling_ms']:.1f} sampling "
                    f"+ {p['reports_ms']:.1f} reports + {p['storage_and_loop_ms']:.1f} storage and loop"
                )
    growth = doc.get("growth", {})
    for sampler in ("random", "tpe"):
        if sampler in growth:
            row = growth[sampler]
            lines.append(
                f"growth {sampler}: sampling {row['sampling_ms'][0]:.1f}->{row['sampling_ms'][1]:.1f} ms, "
                f"reports {row['reports_ms'][0]:.1f}->{row['reports_ms'][1]:.1f}, storage and loop "
                f"{row['storage_and_loop_ms'][0]:.1f}->{row['storage_and_loop_ms'][1]:.1f}"
            )
    pareto = doc.get("pareto")
    if pareto:
        lines.extend(_pareto_notes(pareto))
    for m in doc.get("health", {}).get("models", []):
        lines.append(
            f"health, {m['hidden_units']} units: {m['per_epoch_ms']:.2f} ms an epoch (of {m['epoch_ms']:.0f}) = {m['dead_units_ms']:.2f} dead-units probe "
            f"+ {m['grad_norms_ms']:.2f} gradient norms + {m['latency_timing_ms']:.1f} latency timing once a trial, shared by its epochs"
        )
    if "health" in doc:
        lines.append(f"health: {doc['health']['how']}")
    if "warm" in doc:
        w = doc["warm"]
        shown = ", ".join(
            f"{arm} {_num(part['median_s'], '{:.2f}')} s ({part['reached']}/{len(part['runs'])} reached)" + (f" {w['ratios'][arm]:.2f}x" if w["ratios"].get(arm) else "")
            for arm, part in w["arms"].items()
        )
        lines.append(f"warm, seconds to {w['threshold']} (cold over each): {shown}")
    scale = doc.get("scale", {})
    for key in ("sqlite", "postgresql"):
        part = scale.get(key, {})
        if "commands_s" in part:
            shown = ", ".join(f"{command} {seconds:.1f}" for command, seconds in part["commands_s"].items())
            lines.append(f"scale {key}, seconds a command at {scale['sizes'][-1]} trials: {shown}")
        elif "skipped" in part:
            lines.append(f"scale {key}: {part['skipped']}")
    h = scale.get("history")
    if h:
        lines.append(
            f"scale --history {h['history']}: best in {h['trials']}-trial TPE studies {h['window']['mean_best']:.4f} against {h['all']['mean_best']:.4f} "
            f"modeling all ({h['seeds']} seeds); TPE's sampling {h['window']['median_sampling_ms']:.1f} ms a trial against {h['all']['median_sampling_ms']:.1f}"
        )
    return lines


def _pareto_notes(p: dict[str, Any]) -> list[str]:
    """The hypervolume's scale, and the pareto section's figures seed by seed."""
    ref, ideal, pruned, n = p["reference"], p["ideal"], p["arms"]["pareto"], p["trials"]
    complete = [r["equal"]["complete"] for r in pruned["runs"]]

    def by_seed(values: list[float]) -> str:
        return ", ".join(f"{v:+.4f}" for v in values)

    reached = ", ".join("not reached" if s is None else f"{s:.1f}s" for s in p["to_unpruned"]["per_seed_s"])
    ended_first = p["equal_time"]["pareto_ended_first"]
    return [
        f"pareto hypervolume: on val_accuracy and log10(params), reference val_accuracy={ref['val_accuracy']:g}, params={ref['params']} "
        f"(the {p['space']} space's largest model), normalized by the box to val_accuracy={ideal['val_accuracy']:g}, params={ideal['params']} (its smallest)",
        f"pareto - none by seed: after {n} trials {by_seed(p['equal_trials']['per_seed'])}, when none ended {by_seed(p['equal_time']['per_seed'])}; "
        f"pareto reached none's final front at {reached} (within {pruned['trials']} trials)",
        f"at equal trials the pruned arm's sampler learned only from its complete trials ({', '.join(map(str, complete))} of {n} by seed); "
        f"at equal time it had run {', '.join(str(pair['pareto_trials_at_s']) for pair in p['pairs'])} trials to none's {n}"
        + (f"; in {ended_first} seed(s) it spent its {pruned['trials']} trials before none ended" if ended_first else ""),
    ]
