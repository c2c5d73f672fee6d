"""`tuner report`: real studies in, real PNGs and a self-contained HTML page out, and a summary
on the terminal; studies with nothing complete, failures, regression and bad --out; studies of
several metrics (their Pareto front drawn and listed) and with constraints."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np
import optuna
from matplotlib import image as mpimg
from optuna.trial import TrialState

from tuner.metrics import dominates
from tuner.study import front, front_summary, open_study

SQLITE = "sqlite:///studies/tuner.db"
FIGURES = ("history.png", "importances.png", "parallel.png", "intermediate.png", "health.png", "best_curves.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _study(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=SQLITE)


def _assert_real_figure(path: Path) -> None:
    """A decodable PNG of a drawn figure: not tiny, not blank, with coloured marks (an empty set of
    axes is greyscale text and lines only)."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    rgb = mpimg.imread(path)[..., :3]
    height, width = rgb.shape[:2]
    assert width > 200 and height > 200, (path, rgb.shape)
    assert rgb.std() > 0.05, path
    pixels = (rgb * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 100, path
    chromatic = (rgb.max(axis=2) - rgb.min(axis=2)) > 0.15  # blank axes: 0; one marked trial: about 0.001
    assert chromatic.mean() > 0.0005, (path, chromatic.mean())


def _front_table(page: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows, as text, of the table under the page's "Pareto front" heading."""
    match = re.search(r"<h2>Pareto front</h2>.*?<table>(.*?)</table>", page, flags=re.S)
    assert match, "the page has no Pareto front table"

    def cells(row: str) -> list[str]:
        return [html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]

    rows = re.findall(r"<tr>(.*?)</tr>", match.group(1))
    return cells(rows[0]), [cells(r) for r in rows[1:]]


def _assert_embedded(page: str, path: Path) -> None:
    assert "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii") in page, path.name


def _printed_best(out: str, metric: str) -> tuple[str, int]:
    match = re.search(rf"^best {metric}: (\S+) \(trial (\d+)\)$", out, flags=re.M)
    assert match, out
    return match.group(1), int(match.group(2))


def test_report_of_a_small_study_has_every_figure_and_a_self_contained_page(project, cli):
    assert cli("study", "run", "r", "--space", "tiny", "--trials", "6", "--device", "cpu", "--threads", "1", "-q").code == 0
    result = cli("report", "r", "--out", "out/r")
    assert result.code == 0, result.err

    out = Path("out/r")
    for name in FIGURES:
        _assert_real_figure(out / name)
    assert sorted(p.name for p in out.iterdir()) == sorted([*FIGURES, "report.html"])  # no temp files left

    study = _study("r")
    value, number = _printed_best(result.out, "val_accuracy")
    assert value == f"{study.best_value:.4f}" and number == study.best_trial.number
    top = re.search(r"^mattered most: (\w+) (\d+)%", result.out, flags=re.M)
    assert top and top.group(1) in study.best_trial.params, result.out
    for path in [*(out / n for n in FIGURES), out / "report.html"]:
        assert str(path) in result.out

    page = (out / "report.html").read_text(encoding="utf-8")
    for name in FIGURES:
        data_uri = "data:image/png;base64," + base64.b64encode((out / name).read_bytes()).decode("ascii")
        assert data_uri in page, name
    assert "<h1>Study r</h1>" in page and f"<strong>{value}</strong>" in page
    assert "Parameter importances" in page and f"<td>{top.group(1)}</td>" in page
    # self-contained: no external assets, no script
    assert "<script" not in page and not re.search(r"(src|href)=\"(?!data:)", page)
    for diagnostic in ("grad_norm_first", "grad_norm_last", "vanishing_gradients", "exploding_gradients", "overfit_gap", "train_accuracy"):
        assert f"<td>{diagnostic}</td>" in page

    # the same as JSON, for scripts
    doc = json.loads(cli("report", "r", "--out", "out/json", "--format", "json").out)
    assert doc["best"]["value"] == study.best_value and doc["best"]["number"] == number
    assert list(doc["importances"])[0] == top.group(1) and abs(sum(doc["importances"].values()) - 1) < 1e-6
    assert doc["trials"]["complete"] == 6 and doc["pruned"]["total"] == 0 and doc["failed"]["total"] == 0
    assert all(Path(f).is_file() for f in doc["files"]) and len(doc["files"]) == len(FIGURES) + 1


def test_report_says_how_many_trials_were_pruned_and_why(project, cli):
    # quick has a conditional parameter (momentum, only for nesterov): the parallel plot and the
    # importances must cope with trials that lack it
    assert cli("study", "run", "p", "--space", "quick", "--trials", "12", "--pruner", "median", "--device", "cpu", "--threads", "1", "-q").code == 0
    pruned = _study("p").get_trials(states=(TrialState.PRUNED,))
    assert pruned, "the median pruner should stop some of 12 quick trials"
    assert any("momentum" not in t.params for t in _study("p").get_trials(states=(TrialState.COMPLETE,)))

    result = cli("report", "p", "--out", "out/p")
    assert result.code == 0, result.err
    n_diverged = sum(t.user_attrs["pruned_reason"].startswith("diverged") for t in pruned)
    assert f"pruned: {len(pruned)} ({len(pruned) - n_diverged} by the median pruner, {n_diverged} diverged)" in result.out
    for name in FIGURES:
        _assert_real_figure(Path("out/p") / name)
    page = Path("out/p/report.html").read_text(encoding="utf-8")
    for t in pruned:
        assert html.escape(t.user_attrs["pruned_reason"]) in page


def test_report_of_a_study_without_a_complete_trial_still_writes_the_page_with_notes(project, cli):
    Path("search_spaces/explode.yaml").write_text(
        "params:\n  optimizer: sgd\n  lr: 1.0e+6\n  scaling: none\n  epochs: 8\n  init: {type: categorical, choices: [default, kaiming_normal]}\n"
    )
    assert cli("study", "run", "boom", "--space", "explode", "--trials", "2", "--device", "cpu", "--threads", "1", "-q").code == 0
    assert all(t.state == TrialState.PRUNED for t in _study("boom").trials)

    result = cli("report", "boom", "--out", "out/boom")
    assert result.code == 0, result.err
    assert "no complete trial yet" in result.out and "pruned: 2 (2 diverged)" in result.out
    assert "note: Parameter importances: skipped, need at least 2 complete trials, the study has 0" in result.out
    assert "note: Best trial's learning curves: skipped" in result.out
    for name in ("importances.png", "parallel.png", "best_curves.png"):
        assert not Path("out/boom", name).exists()
    page = Path("out/boom/report.html").read_text(encoding="utf-8")
    assert "No complete trial yet" in page and "diverged: loss=" in page
    assert page.count('class="note"') >= 3


def test_report_of_a_regression_study_with_failures_and_a_single_trial(project, cli):
    # a user workload: regression (val_rmse, minimized), and every third call fails with markup in
    # its message, which the page must escape
    Path("report_regression.py").write_text(
        "import numpy as np\n"
        "calls = 0\n"
        "def build(config):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if calls % 3 == 0:\n"
        "        raise RuntimeError(f'<b>disk</b> & cache lost (call {calls})')\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.normal(size=(120, 4)).astype('float32')\n"
        "    return x, (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=120)).astype('float32')\n"
    )
    run = cli("study", "run", "reg", "--space", "tiny", "--workload", "report_regression:build", "--metric", "val_rmse", "--trials", "4", "--device", "cpu", "--threads", "1", "-q")
    assert run.code == 0, run.err
    study = _study("reg")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed and study.direction == optuna.study.StudyDirection.MINIMIZE

    result = cli("report", "reg", "--out", "out/reg")
    assert result.code == 0, result.err
    value, _ = _printed_best(result.out, "val_rmse")
    assert value == f"{min(t.value for t in study.get_trials(states=(TrialState.COMPLETE,))):.4f}"
    assert f"failed: {len(failed)}" in result.out and "<b>disk</b> & cache lost" in result.out
    for name in FIGURES:
        _assert_real_figure(Path("out/reg") / name)
    page = Path("out/reg/report.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;disk&lt;/b&gt; &amp; cache lost" in page and "<b>disk" not in page
    assert "val_rmse (minimize)" in page

    # a single trial: no importances (said why), every other figure drawn
    assert cli("study", "run", "one", "--space", "tiny", "--trials", "1", "--device", "cpu", "--threads", "1", "-q").code == 0
    single = cli("report", "one", "--out", "out/one")
    assert single.code == 0, single.err
    assert "note: Parameter importances: skipped, need at least 2 complete trials, the study has 1" in single.out
    assert not Path("out/one/importances.png").exists()
    assert "note: Health by parameter: skipped, needs complete or pruned trials with a verdict on their training and a parameter that varies" in single.out
    for name in set(FIGURES) - {"importances.png", "health.png"}:
        _assert_real_figure(Path("out/one") / name)


def test_unknown_study_and_unwritable_out_are_one_line_errors(project, cli):
    missing = cli("report", "ghost", "--out", "out/ghost")
    assert missing.code == 1 and "no studies yet" in missing.err and len(missing.err.strip().splitlines()) == 1
    assert cli("study", "run", "r", "--space", "tiny", "--trials", "1", "--device", "cpu", "--threads", "1", "-q").code == 0
    unknown = cli("report", "ghost", "--out", "out/ghost")
    assert unknown.code == 1 and "no study 'ghost'" in unknown.err and len(unknown.err.strip().splitlines()) == 1
    assert not Path("out/ghost").exists()

    Path("a_file").write_text("not a folder")
    for out, expected in (("a_file", "--out a_file: is a file, not a folder"), ("a_file/report", "--out a_file/report: cannot write there")):
        bad = cli("report", "r", "--out", out)
        assert bad.code == 1 and expected in bad.err, bad.err
        assert len(bad.err.strip().splitlines()) == 1 and "Traceback" not in bad.err
    assert Path("a_file").read_text() == "not a folder"


def test_report_of_a_two_metric_study_draws_its_pareto_front_and_lists_exactly_its_trials(project, cli):
    run = cli("study", "run", "duo", "--space", "tiny", "--metric", "val_accuracy", "--metric", "params:minimize", "--trials", "8", "--pruner", "none", "--device", "cpu", "--threads", "1", "-q")
    assert run.code == 0, run.err
    result = cli("report", "duo", "--out", "out/duo")
    assert result.code == 0, result.err

    out = Path("out/duo")
    figures = ("pareto.png", *FIGURES)
    assert sorted(p.name for p in out.iterdir()) == sorted([*figures, "report.html"])
    page = (out / "report.html").read_text(encoding="utf-8")
    for name in figures:  # every figure of one metric still drawn, on the first metric
        _assert_real_figure(out / name)
        _assert_embedded(page, out / name)
        assert str(out / name) in result.out

    loaded = open_study("duo", SQLITE)
    on_front = front(loaded.study)
    complete = loaded.study.get_trials(states=(TrialState.COMPLETE,))
    assert on_front and len(complete) == 8
    header, rows = _front_table(page)
    assert header[:3] == ["trial", "val_accuracy (maximize)", "params (minimize)"]
    assert set(header[3:]) == {k for t in on_front for k in t.params}
    assert [int(r[0]) for r in rows] == [t.number for t in on_front]  # the front, best val_accuracy first
    for row, t in zip(rows, on_front):
        assert row[1:3] == [f"{t.values[0]:.4f}", str(int(t.values[1]))]
        assert row[3:] == [f"{t.params[k]:.6g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "-")) for k in header[3:]]
    listed = {int(r[0]) for r in rows}
    for t in complete:  # exactly the front: each trial left out is dominated by (or equal to) one listed
        if t.number not in listed:
            assert any(dominates(f.values, t.values, (1.0, -1.0)) or f.values == t.values for f in on_front), t.number
    summary = front_summary(loaded)
    assert f"Hypervolume <strong>{summary['hypervolume']}</strong>" in page
    assert f"reference point (val_accuracy {summary['reference']['val_accuracy']:.4f}, params {int(summary['reference']['params'])}" in page
    assert "<h2>Best trial</h2>" not in page and "No complete trial yet" not in page
    assert "val_accuracy (maximize), params (minimize)" in page and "Parameter importances for val_accuracy, the first metric" in page

    # the terminal: the front's size, hypervolume and trials, not "no complete trial yet"
    assert f"Pareto front: {len(on_front)} trial{'s' if len(on_front) > 1 else ''}, hypervolume {summary['hypervolume']}" in result.out
    for t in on_front[:10]:
        assert f"  trial {t.number}: val_accuracy {t.values[0]:.4f}, params {int(t.values[1])}" in result.out
    assert "no complete trial yet" not in result.out

    doc = json.loads(cli("report", "duo", "--out", "out/json", "--format", "json").out)
    assert doc["best"] is None and doc["metrics"] == ["val_accuracy:maximize", "params:minimize"]
    assert [r["number"] for r in doc["front"]["trials"]] == [t.number for t in on_front]
    assert doc["front"]["hypervolume"] == summary["hypervolume"] and doc["front"]["size"] == len(on_front)


def test_report_of_a_three_metric_study_with_a_constraint_draws_each_pair_and_lists_only_feasible_trials(project, cli):
    run = cli(
        "study", "run", "trio", "--space", "tiny", "--metric", "val_accuracy", "--metric", "params:minimize", "--metric", "latency_ms:minimize",
        "--constraint", "params<=3000", "--trials", "8", "--pruner", "none", "--device", "cpu", "--threads", "1", "-q",
    )
    assert run.code == 0, run.err
    result = cli("report", "trio", "--out", "out/trio")
    assert result.code == 0, result.err

    out = Path("out/trio")
    figures = ("pareto_pairs.png", *FIGURES)
    assert sorted(p.name for p in out.iterdir()) == sorted([*figures, "report.html"])  # the pairs, no two-metric front
    page = (out / "report.html").read_text(encoding="utf-8")
    for name in figures:
        _assert_real_figure(out / name)
        _assert_embedded(page, out / name)

    loaded = open_study("trio", SQLITE)
    complete = loaded.study.get_trials(states=(TrialState.COMPLETE,))
    infeasible = {t.number for t in complete if t.user_attrs.get("violated")}
    assert infeasible and len(infeasible) < len(complete), "tiny's widest models (hidden_units 40 and up) miss params<=3000; its narrow ones meet it"
    header, rows = _front_table(page)
    assert header[:4] == ["trial", "val_accuracy (maximize)", "params (minimize)", "latency_ms (minimize)"]
    numbers = [int(r[0]) for r in rows]
    assert numbers == [t.number for t in front(loaded.study)] and not infeasible & set(numbers)
    feasible = len(complete) - len(infeasible)
    assert f"{feasible} of {len(complete)} complete trials meet every constraint" in page
    assert f"<tr><td>params&lt;=3000</td><td class=\"num\">{len(infeasible)}</td></tr>" in page
    assert f"constraints params<=3000: {feasible} of {len(complete)} complete trials feasible ({len(infeasible)} miss params<=3000)" in result.out


def test_report_of_a_constrained_single_metric_study_names_the_best_feasible_trial(project, cli):
    # score grows with width, and the widest model breaks the size bound: the best feasible trial is not the highest score
    Path("search_spaces/widths.yaml").write_text("params:\n  width: {type: categorical, choices: [16, 32, 64]}\n")
    Path("sized.py").write_text('def objective(trial):\n    width = trial.params["width"]\n    return {"score": width / 64, "size": width}\n')
    run = cli("study", "run", "sized", "--space", "widths", "--objective", "sized:objective", "--metric", "score", "--direction", "maximize",
              "--constraint", "size<=40", "--sampler", "grid", "--pruner", "none", "--trials", "3", "-q")
    assert run.code == 0, run.err
    study = _study("sized")
    widest = max(study.trials, key=lambda t: t.params["width"])
    assert widest.value == 1.0 and widest.user_attrs["violated"] == ["size<=40"]

    result = cli("report", "sized", "--out", "out/sized")
    assert result.code == 0, result.err
    value, number = _printed_best(result.out, "score")
    assert (value, number) == ("0.5000", study.best_trial.number) and study.best_trial.params["width"] == 32
    assert "constraints size<=40: 2 of 3 complete trials feasible (1 miss size<=40)" in result.out
    page = Path("out/sized/report.html").read_text(encoding="utf-8")
    assert "<strong>0.5000</strong>" in page and "<strong>1.0000</strong>" not in page
    assert "2 of 3 complete trials meet every constraint" in page and "Pareto front" not in page
    for name in ("history.png", "parallel.png"):  # no epochs reported: no intermediate values, no curves
        _assert_real_figure(Path("out/sized") / name)
