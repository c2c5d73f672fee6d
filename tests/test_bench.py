"""`tuner bench` (the checkout's benchmarks/ package): it runs end to end and writes a well-formed
document. Benchmarks are not tests: nothing here asserts a timing, only that every figure is there,
positive and consistent."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from pathlib import Path

import pytest

from benchmarks import BenchSettings, reference_objective
from tests.conftest import _postgres_admin_url


def _positive(value: object, where: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r}"
    assert math.isfinite(value) and value > 0, f"{where}: {value!r}"


def _share(value: object, where: str) -> None:
    assert isinstance(value, float) and math.isfinite(value) and -0.05 < value < 1, f"{where}: {value!r}"


def _check_breakdown(part: dict, where: str) -> None:
    for key in ("wall_ms", "train_ms", "service_ms"):
        _positive(part[key], f"{where}.{key}")
    for key in ("sampling_ms", "reports_ms"):
        assert part[key] >= 0, f"{where}.{key}"
    assert part["train_ms"] < part["wall_ms"], where
    assert part["service_ms"] == pytest.approx(part["wall_ms"] - part["train_ms"], rel=1e-6)
    assert part["share"] == pytest.approx(part["service_ms"] / part["wall_ms"], rel=1e-6)
    _share(part["share"], f"{where}.share")


def _bench_databases() -> list[str]:
    """This process's bench databases on the PostgreSQL server."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(_postgres_admin_url())
    try:
        with engine.connect() as conn:
            names = conn.exec_driver_sql("SELECT datname FROM pg_database").scalars()
            return [n for n in names if n.startswith(f"tuner_bench_{os.getpid()}_")]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_quick_bench_writes_every_section_well_formed(project: Path, cli) -> None:
    out = project / "out" / "bench.json"
    result = cli("bench", "--quick", "--out", str(out), "--device", "cpu", "--postgres", _postgres_admin_url())
    assert result.code == 0, result.err
    assert "tuner bench" in result.out and "trials/s" in result.out  # the table
    doc = json.loads(out.read_text())

    machine = doc["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["device"] == "cpu"
    assert machine["torch"] and machine["optuna"] and machine["date"]
    assert doc["settings"] == json.loads(json.dumps(dataclasses.asdict(BenchSettings.quick())))
    assert doc["skipped"] == []
    _positive(doc["wall_s"], "wall_s")

    t = doc["throughput"]
    _positive(t["tuner"], "throughput.tuner")
    _positive(t["reference"], "throughput.reference")
    assert t["ratio"] == pytest.approx(t["tuner"] / t["reference"])
    assert t["met"] == (t["ratio"] >= t["target"]) and t["target"] == 2.0
    assert "threads 1" in t["how"]

    o = doc["overhead"]
    storages = ["sqlite"]
    if "skipped" in o["postgresql"]:  # no server here: said so, as the PostgreSQL tests skip
        assert "PostgreSQL not reachable" in o["postgresql"]["skipped"]
        assert os.environ.get("TUNER_REQUIRE_POSTGRES") != "1", o["postgresql"]["skipped"]
    else:
        storages.append("postgresql")
        assert _bench_databases() == []  # its temporary databases are dropped
    for storage in storages:
        for side in ("tuner", "reference"):
            _check_breakdown(o[storage][side], f"overhead.{storage}.{side}")
        assert o[storage]["ratio"] == pytest.approx(o[storage]["reference"]["share"] / o[storage]["tuner"]["share"])
    assert o["met"] == (o["sqlite"]["tuner"]["share"] <= o["target"])

    g = doc["growth"]
    assert g["sizes"] == [12, 40]
    for sampler in ("random", "tpe"):
        row = g[sampler]
        for key in ("service_ms", "wall_ms"):
            assert len(row[key]) == 2
            for v in row[key]:
                _positive(v, f"growth.{sampler}.{key}")
        assert row["ratio"] == pytest.approx(row["service_ms"][1] / row["service_ms"][0])
    assert all(v >= 0 for v in g["tpe"]["sampling_ms"] + g["random"]["sampling_ms"])

    s = doc["search"]
    assert set(s["strategies"]) == {"tpe+hyperband", "random", "grid"}
    for label, st in s["strategies"].items():
        assert len(st["runs"]) == 1 and st["reached"] == sum(r["reached"] for r in st["runs"])
        for run in st["runs"]:
            assert 1 <= run["trials"] <= s["cap"]
            if run["reached"]:
                _positive(run["seconds"], f"search.{label}.seconds")
            else:
                assert run["seconds"] is None
        if st["median_s"] is not None:
            _positive(st["median_s"], f"search.{label}.median_s")
    tpe, random = s["strategies"]["tpe+hyperband"]["median_s"], s["strategies"]["random"]["median_s"]
    assert s["ratio"] == (pytest.approx(random / tpe) if tpe and random else None)

    w = doc["workers"]
    for k in ("1", "2"):
        _positive(w[k]["trials_per_s"], f"workers.{k}")
        _positive(w[k]["with_startup_per_s"], f"workers.{k}.with_startup")
    assert w["ratio"] == pytest.approx(w["2"]["trials_per_s"] / w["1"]["trials_per_s"])
    assert w["impossible"] == (w["ratio"] > 1.1 * min(2, machine["cores"]))

    c = doc["command"]
    for key in ("by_hand_s", "as_trial_s"):
        _positive(c[key], f"command.{key}")
    assert c["ratio"] == pytest.approx(c["as_trial_s"] / c["by_hand_s"]) and c["n_runs"] == 2
    assert c["overhead_ms"] == pytest.approx(1000 * (c["as_trial_s"] - c["by_hand_s"]))

    p = doc["packing"]
    for key in ("reference", "unpacked", "packed"):
        _positive(p[key], f"packing.{key}")
    assert p["ratio_reference"] == pytest.approx(p["packed"] / p["reference"])
    assert p["ratio_unpacked"] == pytest.approx(p["packed"] / p["unpacked"])
    assert p["met"] == (p["ratio_reference"] >= p["target"]) and p["target"] == 10.0 and p["pack"] == 3
    assert 1 <= p["mean_pack_size"] <= 3 and len(p["repeats"]) == 1
    for label in ("unpacked", "packed"):
        assert len(p["search"][label]["runs"]) == 1
    q = p["quality"]
    assert q["auto"] == 2 and q["trials"] == 8  # a CPU's auto for tpe, a quarter of the budget
    for label in ("unpacked", "packed"):
        assert len(q[label]["best"]) == len(q[label]["seconds"]) == 1
        assert 0.0 < q[label]["best"][0] <= 1.0 and q[label]["best"][0] == q[label]["mean_best"]
        _positive(q[label]["median_s"], f"packing.quality.{label}.median_s")
    assert q["speedup"] == pytest.approx(q["unpacked"]["median_s"] / q["packed"]["median_s"])
    assert q["best_difference"] == pytest.approx(q["packed"]["mean_best"] - q["unpacked"]["mean_best"])
    assert "--pack 3" in p["how"]

    _check_pareto(doc["pareto"], BenchSettings.quick())
    assert "pareto hypervolume: on val_accuracy and log10(params), reference val_accuracy=0" in result.out  # the note under the table

    w = doc["warm"]  # cold against warm-started studies, seconds to the threshold
    assert set(w["arms"]) == {"cold", "warm related", "warm unrelated", "prior related"} and w["threshold"] == 0.97
    for arm, part in w["arms"].items():
        assert len(part["runs"]) == 1 and part["reached"] == sum(r["reached"] for r in part["runs"]), arm
        assert (part["median_s"] is None) == (part["reached"] == 0)
    for arm, ratio in w["ratios"].items():
        both = w["arms"]["cold"]["median_s"], w["arms"][arm]["median_s"]
        assert ratio == (pytest.approx(both[0] / both[1]) if all(both) else None)
    assert 0 < w["earlier_best"]["related"] <= 1 and 0 < w["earlier_best"]["unrelated"] <= 1
    assert "warm, seconds to 0.97 (cold over each): cold " in result.out  # the note under the table

    h = doc["health"]  # what the measurements behind each trial's verdict cost an epoch
    assert [m["hidden_units"] for m in h["models"]] == [64, 256]
    for m in h["models"]:
        for key in ("epoch_ms", "dead_units_ms", "grad_norms_ms", "latency_timing_ms", "per_epoch_ms"):
            _positive(m[key], f"health.{key}")
        assert m["per_epoch_ms"] == pytest.approx(m["dead_units_ms"] + m["grad_norms_ms"] + m["latency_timing_ms"] / 4)
        assert m["share"] == pytest.approx(m["per_epoch_ms"] / m["epoch_ms"])
    assert h["share"] == max(m["share"] for m in h["models"]) and "threads 1" in h["how"]
    assert "health, 64 units: " in result.out and "dead-units probe" in result.out  # the note under the table

    sc = doc["scale"]  # a study grown to each size on each database, then the read commands on it
    assert sc["sizes"] == [30, 60] and sc["target"] == 1.2
    for storage in storages:
        part = sc[storage]
        assert [r["trials"] for r in part["sizes"]] == [r["counted"] for r in part["sizes"]] == [30, 60]
        for r in part["sizes"]:
            for key in ("service_ms", "tpe_service_ms", "tpe_sampling_ms", "tpe_history_sampling_ms"):
                _positive(r[key], f"scale.{storage}.{key}")
            assert r["tpe_sampling_ms"] < r["tpe_service_ms"]
        assert part["ratio"] == pytest.approx(part["sizes"][-1]["service_ms"] / part["sizes"][0]["service_ms"])
        assert part["met"] == (part["ratio"] <= 1.2)
        assert set(part["commands_s"]) == {"study list", "study show", "study best", "study trials", "study export", "report"}
        assert all(v > 0 for v in part["commands_s"].values())
        assert f"scale {storage}, seconds a command at 60 trials: study list " in result.out  # the note under the table
    h = sc["history"]  # what --history costs in search, on the same seeds
    assert (h["trials"], h["history"], h["seeds"]) == (14, 7, 1)
    for arm in ("all", "window"):
        assert len(h[arm]["best"]) == 1 and 0 < h[arm]["mean_best"] <= 1 and h[arm]["median_sampling_ms"] > 0
    assert h["best_difference"] == pytest.approx(h["window"]["mean_best"] - h["all"]["mean_best"])
    assert "scale --history 7: best in 14-trial TPE studies " in result.out  # the note under the table
    if storages == ["sqlite"]:
        assert "skipped" in sc["postgresql"]
    else:
        assert _bench_databases() == []

    # the bench leaves nothing behind in the default storage
    assert not (project / "studies" / "tuner.db").exists()


def _check_pareto(p: dict, settings: BenchSettings) -> None:
    """The pareto section's figures: the none arm runs pareto_trials and the pareto arm twice as
    many; each run's hypervolume trace grows to its final figure within (0, 1]; the equal-trials
    figures are those of its first pareto_trials trials, the equal-time one the pareto trace's at
    the none run's end, the time to none's final front the first point of the pareto trace that
    holds it; only the pareto arm prunes, and the medians, ratios and differences are the runs'."""
    n = settings.pareto_trials
    seeds = list(range(settings.seed, settings.seed + settings.pareto_seeds))
    assert p["seeds"] == seeds and p["trials"] == n and p["space"] == settings.pareto_space
    assert p["reference"] == {"val_accuracy": 0.0, "params": 150794} and p["ideal"] == {"val_accuracy": 1.0, "params": 310}
    assert "params=150794" in p["how"] and f"pruner none for {n} trials and pruner pareto, with the same seed and sampler, for {2 * n}" in p["how"]
    for arm, budget in (("pareto", 2 * n), ("none", n)):
        a = p["arms"][arm]
        assert a["trials"] == budget and [r["seed"] for r in a["runs"]] == seeds
        for run in a["runs"]:
            where = f"pareto.{arm}.seed {run['seed']}"
            assert run["trials"] == budget == len(run["trace"]), where
            seconds, volumes = [s for s, _ in run["trace"]], [v for _, v in run["trace"]]
            assert volumes == sorted(volumes) and volumes[-1] == run["final_hv"], where  # a front's volume never shrinks
            assert seconds == sorted(seconds) and seconds[-1] <= run["total_s"] + 0.001, where  # rounded to ms
            assert 0 < run["final_hv"] <= 1, where
            eq = run["equal"]
            assert eq["trials"] == n and [eq["s"], eq["hv"]] == run["trace"][n - 1], where
            _positive(eq["t95_s"], f"{where}.t95_s")
            assert eq["t95_s"] in [s for s, v in run["trace"][:n] if v >= 0.95 * eq["hv"]][:1], where
            assert eq["complete"] + eq["pruned"] <= n and eq["pruned"] <= run["pruned"] and eq["epochs_run"] <= run["epochs_run"], where
            assert run["complete"] + run["pruned"] + run["diverged"] == run["trials"], where
            assert run["epochs_run"] <= run["trials"] * p["epochs"] and eq["epochs_run"] <= n * p["epochs"] and run["report_ms"] > 0, where
            _positive(run["train_s"], f"{where}.train_s")
            assert run["train_s"] < run["total_s"], where
        for key, of in (("hv_equal", "hv"), ("t95_s", "t95_s"), ("s_equal", "s"), ("pruned_equal", "pruned"), ("epochs_equal", "epochs_run")):
            assert a[key] == pytest.approx(statistics.median(r["equal"][of] for r in a["runs"])), f"{arm}.{key}"
        for key in ("final_hv", "total_s", "pruned", "epochs_run"):
            assert a[key] == pytest.approx(statistics.median(r[key] for r in a["runs"])), f"{arm}.{key}"
        assert a["hv_equal_range"] == [min(r["equal"]["hv"] for r in a["runs"]), max(r["equal"]["hv"] for r in a["runs"])]
    none, pareto = p["arms"]["none"], p["arms"]["pareto"]
    assert all(r["pruned"] == 0 for r in none["runs"]) and none["pruned"] == 0  # no pruner, nothing pruned by one
    assert all(r["equal"] == {**r["equal"], "hv": r["final_hv"], "pruned": 0, "epochs_run": r["epochs_run"]} for r in none["runs"])  # its whole run
    assert all(r["epochs_run"] == r["trials"] * p["epochs"] for r in none["runs"] if r["diverged"] == 0)
    assert p["ratio_t95"] == pytest.approx(pareto["t95_s"] / none["t95_s"])
    assert p["ratio_equal_s"] == pytest.approx(pareto["s_equal"] / none["s_equal"])
    assert p["ratio_total"] == pytest.approx(pareto["total_s"] / none["total_s"])
    assert p["pruner_ms_per_report"] == pytest.approx(pareto["report_ms"] - none["report_ms"])

    # (a) equal trials, and the verdict on them
    at_trials = [a["equal"]["hv"] - b["equal"]["hv"] for a, b in zip(pareto["runs"], none["runs"])]
    e = p["equal_trials"]
    assert e["per_seed"] == pytest.approx(at_trials) and e["median"] == pytest.approx(statistics.median(at_trials))
    assert [e["min"], e["max"]] == pytest.approx([min(at_trials), max(at_trials)])
    assert e["every_seed_lower"] == all(d < 0 for d in at_trials)
    assert e["noise"] == pytest.approx(none["hv_equal_range"][1] - none["hv_equal_range"][0])
    assert e["shrank"] is None if len(seeds) == 1 else e["shrank"] == (all(d < 0 for d in at_trials) and -e["median"] > e["noise"])
    # (b) equal time and (c) time to none's final front, seed by seed from the traces
    for pair, a, b in zip(p["pairs"], pareto["runs"], none["runs"]):
        assert pair["seed"] == a["seed"] == b["seed"] and pair["at_s"] == b["total_s"]
        by_then = [v for s, v in a["trace"] if s <= b["total_s"]]
        assert pair["pareto_hv_at_s"] == (by_then[-1] if by_then else 0.0) and pair["pareto_trials_at_s"] == len(by_then)
        assert pair["equal_time"] == pytest.approx(pair["pareto_hv_at_s"] - b["final_hv"])
        assert pair["pareto_ended_first"] == (a["total_s"] <= b["total_s"])
        assert pair["to_unpruned_s"] == next((s for s, v in a["trace"] if v >= b["final_hv"]), None)
        if pair["to_unpruned_s"] is None:
            assert a["final_hv"] < b["final_hv"] and pair["to_unpruned_ratio"] is None
        else:
            assert pair["to_unpruned_ratio"] == pytest.approx(pair["to_unpruned_s"] / b["total_s"])
    t = p["equal_time"]
    assert t["per_seed"] == [pair["equal_time"] for pair in p["pairs"]] and t["median"] == pytest.approx(statistics.median(t["per_seed"]))
    assert t["pareto_hv"] == pytest.approx(statistics.median(pair["pareto_hv_at_s"] for pair in p["pairs"])) and t["none_hv"] == none["final_hv"]
    reached = [pair for pair in p["pairs"] if pair["to_unpruned_s"] is not None]
    r = p["to_unpruned"]
    assert r["reached"] == len(reached) and r["of"] == len(seeds) and r["per_seed_s"] == [pair["to_unpruned_s"] for pair in p["pairs"]]
    if reached:
        assert r["median_s"] == pytest.approx(statistics.median(pair["to_unpruned_s"] for pair in reached))
        assert r["median_ratio"] == pytest.approx(statistics.median(pair["to_unpruned_ratio"] for pair in reached))
    else:
        assert r["median_s"] is r["median_ratio"] is None


def test_pareto_reference_is_the_tradeoff_space_s_largest_model() -> None:
    """The hypervolume's fixed reference and ideal: the largest and smallest MLP the tradeoff space
    allows on digits (64 inputs, 10 classes), as tuner's model builder builds them."""
    from benchmarks.pareto import param_count_range
    from tuner.space import load_space

    def mlp(width: int, depth: int) -> int:
        return 64 * width + width + (depth - 1) * (width * width + width) + 10 * width + 10

    assert param_count_range(load_space("tradeoff")) == (mlp(4, 1), mlp(256, 3)) == (310, 150794)


def test_pareto_rows_show_equal_trials_equal_time_and_the_time_to_the_unpruned_front() -> None:
    from rich.console import Console

    from tuner.cli.bench import _notes, _table

    def arm(trials: int, hv: float, pruned: tuple[int, int], epochs: tuple[int, int], runs: list[dict]) -> dict:
        return {
            "trials": trials, "hv_equal": hv, "hv_equal_range": [hv - 0.01, hv + 0.01], "t95_s": 2.0, "s_equal": 6.0 if pruned[0] else 10.0,
            "pruned_equal": pruned[0], "epochs_equal": epochs[0], "final_hv": hv, "total_s": 11.0 if pruned[0] else 10.0, "train_s": 9.0,
            "epochs_run": epochs[1], "pruned": pruned[1], "report_ms": 1.0 + pruned[0], "runs": runs,
        }

    pruned_runs = [{"equal": {"trials": 40, "complete": c, "pruned": 40 - c}} for c in (16, 14, 20)]
    doc = {
        "pareto": {
            "space": "tradeoff", "epochs": 10, "trials": 40, "seeds": [0, 1, 2], "share": 0.95,
            "reference": {"val_accuracy": 0.0, "params": 150794}, "ideal": {"val_accuracy": 1.0, "params": 310},
            "arms": {"pareto": arm(80, 0.90, (24, 47), (220, 450), pruned_runs), "none": arm(40, 0.95, (0, 0), (400, 400), [])},
            "equal_trials": {"per_seed": [-0.05, -0.04, -0.06], "median": -0.05, "min": -0.06, "max": -0.04, "every_seed_lower": True, "noise": 0.02, "shrank": True},
            "equal_time": {"pareto_hv": 0.96, "none_hv": 0.95, "per_seed": [0.01, 0.03, -0.02], "median": 0.01, "min": -0.02, "max": 0.03, "pareto_ended_first": 1},
            "to_unpruned": {"per_seed_s": [8.0, None, 9.0], "reached": 2, "of": 3, "median_s": 8.5, "median_none_s": 10.0, "median_ratio": 0.85},
            "pairs": [{"pareto_trials_at_s": k} for k in (62, 70, 58)],
            "ratio_t95": 1.0, "ratio_equal_s": 0.6, "ratio_total": 1.1, "pruner_ms_per_report": 24.0,
        }
    }
    console = Console(record=True, width=220)
    console.print(_table(doc))
    text = console.export_text()

    def row(start: str) -> str:
        return next(line for line in text.splitlines() if line.startswith(f"│ {start}"))

    at_trials = row("hypervolume after 40 trials (3 seeds): pareto vs none")
    assert "0.9000" in at_trials and "0.9500" in at_trials and "-0.0500 (-0.0600..-0.0400)" in at_trials
    assert "|d| <= 0.0200" in at_trials and at_trials.rstrip(" │").endswith("no")  # shrank beyond the seed-to-seed range
    at_time = row("hypervolume when none ended: pareto (80 trials) vs none")
    assert "0.9600" in at_time and "+0.0100 (-0.0200..+0.0300)" in at_time
    reach = row("s to none's final hypervolume: pareto vs none")
    assert "8.5 (2 of 3)" in reach and "10.0" in reach and "0.85x" in reach
    assert "0.60x" in row("s for 40 trials, 10 epochs: pareto vs none") and "1.10x" in row("s a study: pareto 80 trials vs none 40")
    assert "24, 47" in row("trials pruned: of 40, of all") and "220, 450" in row("epochs run: of 40 trials, of all") and "0.55x" in row("epochs run")
    assert "+24.00 ms" in row("ms a report")
    note = "\n".join(_notes(doc))
    assert "params=150794" in note and "after 40 trials -0.0500, -0.0400, -0.0600, when none ended +0.0100, +0.0300, -0.0200" in note
    assert "at 8.0s, not reached, 9.0s (within 80 trials)" in note
    assert "only from its complete trials (16, 14, 20 of 40 by seed); at equal time it had run 62, 70, 58 trials to none's 40" in note and "in 1 seed(s) it spent its 80 trials before none ended" in note


def test_skip_leaves_sections_out_and_a_bad_name_is_one_line(project: Path, cli) -> None:
    out = project / "bench.json"
    result = cli("bench", "--quick", "--out", str(out), "--skip", "throughput,overhead,growth,search,workers,command,packing,pareto", "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(out.read_text())
    assert json.loads(result.out) == doc
    assert not {"throughput", "overhead", "growth", "search", "workers", "command", "packing", "pareto"} & set(doc)
    assert doc["machine"]["cores"] >= 1

    bad = cli("bench", "--quick", "--out", str(project / "other.json"), "--skip", "speed")
    assert bad.code == 1 and bad.err.count("\n") == 1
    assert "'speed'" in bad.err and "throughput, overhead" in bad.err
    assert not (project / "other.json").exists()


def test_outside_a_checkout_bench_says_so_in_one_line(project: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """tuner installed from a wheel has no benchmarks/ beside it: one line saying where bench runs."""
    from tuner.cli import bench as bench_cli

    monkeypatch.setattr(bench_cli, "benchmarks_dir", lambda: project / "site-packages" / "benchmarks")
    result = cli("bench", "--quick", "--out", str(project / "out" / "bench.json"))
    assert result.code == 1 and result.err.count("\n") == 1, result.err
    assert "`tuner bench` runs from a checkout of tuner's repository" in result.err
    assert str(project / "site-packages" / "benchmarks") in result.err and "pip install -e ." in result.err
    assert "Traceback" not in result.err
    assert not (project / "out").exists()  # failed before making anything


def test_reference_objective_is_the_example_and_learns_digits() -> None:
    """The baseline is a fair one: it trains to a real accuracy, with the example's parameters."""
    import optuna
    import torch

    from benchmarks.reference import reference_arrays

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"n_layers": 2, "n_units_l0": 64, "dropout_l0": 0.2, "n_units_l1": 64, "dropout_l1": 0.2, "optimizer": "Adam", "lr": 3e-3})
    study.optimize(reference_objective(reference_arrays(0), torch.device("cpu")), n_trials=1)
    trial = study.trials[0]
    assert set(trial.params) == {"n_layers", "n_units_l0", "dropout_l0", "n_units_l1", "dropout_l1", "optimizer", "lr"}
    assert sorted(trial.intermediate_values) == list(range(10))  # accuracy reported every epoch
    assert trial.value >= 0.9


def test_a_worker_ratio_beyond_the_cores_is_flagged_not_reported() -> None:
    """2 workers cannot beat 1 by more than the cores allow: the table says the run was faulty."""
    from rich.console import Console

    from tuner.cli.bench import _table

    doc = {"workers": {"1": {"trials_per_s": 1.0}, "2": {"trials_per_s": 28.7}, "ratio": 28.7, "impossible": True}}
    console = Console(record=True, width=120)
    console.print(_table(doc))
    assert "28.70x (impossible: a faulty run)" in console.export_text()
