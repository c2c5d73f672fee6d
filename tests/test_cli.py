"""The CLI through its commands: README examples, output formats, and bad input (one line, exit 1,
nothing written, no traceback)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_sqlite

TUNER = str(Path(sys.executable).with_name("tuner"))


# The pages whose ```bash blocks a test runs: the README and every page of docs/.
DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _readme_commands(page: Path = REPO / "README.md") -> list[list[str]]:
    """Every line of a page's ```bash blocks, in order (optuna's own CLI included)."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", page.read_text(), flags=re.S | re.M)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("page", [p for p in DOC_PAGES if _readme_commands(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_readme_examples_all_run(project, cli, monkeypatch, page):
    """A page's commands in order, in this test's own project folder: one test a page, so that
    pages run in parallel (pytest-xdist). ```sh blocks are not run (tests/test_docs.py checks that
    each says why); tests/test_launch.py runs the cluster ones. `tuner` lines run through the
    CLI's own entry point in this process (a new process a line would pay seconds of imports
    each); the processes they start (workers, a --command's script) are real."""
    commands = _readme_commands(page)
    before = {p for p in Path(".").rglob("*") if p.is_file()}
    # as the README says: the virtual environment active, so `python` in a --command is its own
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for argv in commands:
        if argv[0] == "tuner":
            r = cli(*argv[1:])
            code, out, err = r.code, r.out, r.err
        else:
            result = subprocess.run([str(Path(sys.executable).with_name(argv[0])), *argv[1:]], capture_output=True, text=True)
            code, out, err = result.returncode, result.stdout, result.stderr
        assert code == 0, f"{shlex.join(argv)}\n{out}\n{err}"
    for argv in commands:  # an export wrote its file, and a JSON export holds the trials
        if argv[:3] == ["tuner", "study", "export"]:
            out = Path(argv[argv.index("--out") + 1])
            assert out.is_file(), shlex.join(argv)
            if out.suffix == ".json":
                assert json.loads(out.read_text())["trials"], shlex.join(argv)
    # what following the page leaves behind is ignored by git (spaces a person made are theirs)
    left = sorted(str(p) for p in {p for p in Path(".").rglob("*") if p.is_file()} - before if p.parts[0] != "search_spaces")
    shutil.copy(REPO / ".gitignore", ".gitignore")
    subprocess.run(["git", "init", "-q"], check=True)
    ignored = subprocess.run(["git", "check-ignore", "--stdin"], input="\n".join(left), capture_output=True, text=True).stdout.split()
    assert sorted(ignored) == left, set(left) - set(ignored)


def test_readme_files_exist():
    """The spec files, spaces, modules and tests the README and docs/ name are in the repository."""
    for page in DOC_PAGES:
        text = page.read_text()
        for path in re.findall(r"studies/\w+\.yaml", text):
            assert (REPO / path).is_file(), f"{page.name}: {path}"
        for path in re.findall(r"\b(?:tuner|benchmarks|examples|tests)/[\w/]+\.py\b", text):
            assert (REPO / path).is_file(), f"{page.name}: {path}"
        for path, test in re.findall(r"\b(tests/\w+\.py)::(\w+)", text):
            assert f"def {test}(" in (REPO / path).read_text(), f"{page.name}: {path}::{test}"
    for name in ("quick", "full", "grid_small", "tiny", "bench_ref"):
        assert (REPO / "search_spaces" / f"{name}.yaml").is_file()


@pytest.mark.slow
def test_demo_reaches_095_on_digits_with_tpe_in_30_trials(project, cli):
    result = cli("study", "run", "--spec", "studies/demo.yaml", "--format", "json", "--device", "cpu")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["n_finished"] == 30 and doc["best_value"] >= 0.95


def test_space_create_show_validate_list(project, cli):
    r = cli("space", "create", "s1", "--lr", "1e-4:1e-1:log", "--optimizer", "sgd,momentum", "--momentum", "0.5:0.9", "--epochs", "3")
    assert r.code == 0 and "wrote search_spaces/s1.yaml" in r.out
    shown = cli("space", "show", "s1", "--format", "json")
    doc = json.loads(shown.out)
    assert doc["params"]["momentum"]["when"] == {"optimizer": ["momentum"]}
    assert doc["params"]["epochs"] == 3
    assert cli("space", "validate", "s1", "quick").code == 0
    listing = json.loads(cli("space", "list", "--format", "json").out)
    assert {"s1", "quick", "full"} <= {r["name"] for r in listing}
    # refuses to overwrite without --force, and leaves the file as it was
    before = Path("search_spaces/s1.yaml").read_bytes()
    again = cli("space", "create", "s1", "--lr", "0.1")
    assert again.code == 1 and "already exists; pass --force" in again.err
    assert Path("search_spaces/s1.yaml").read_bytes() == before
    assert cli("space", "create", "s1", "--lr", "0.1", "--force").code == 0


BAD_SPACES = {
    "low_above_high": ("params:\n  lr: {type: float, low: 0.1, high: 0.001}\n", "lr: low must be below high, but got low=0.1 high=0.001"),
    "log_nonpositive": ("params:\n  weight_decay: {type: float, low: 0, high: 0.1, log: true}\n", "log scale needs low > 0"),
    "unknown_optimizer": ("params:\n  optimizer: [sgd, adamm]\n", "unknown choice 'adamm'; valid: sgd"),
    "unknown_init": ("params:\n  init: [he_normal]\n", "unknown choice 'he_normal'; valid: default"),
    "condition_missing_parent": ("params:\n  momentum: {fixed: 0.9, when: {optimizer: [sgd]}}\n", "condition on 'optimizer', which is not in this space"),
    "empty_choices": ("params:\n  batch_size: {type: categorical, choices: []}\n", "choices must be a non-empty list"),
    "malformed_yaml": ("params:\n  lr: [0.1, 0.2\n", "not valid YAML at line"),
}


@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_bad_space_is_one_line_exit_1_and_writes_nothing(project, cli, case):
    text, expected = BAD_SPACES[case]
    Path(f"search_spaces/{case}.yaml").write_text(text)
    r = cli("space", "validate", case)
    assert r.code == 1 and expected in r.err and f"search_spaces/{case}.yaml" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    run = cli("study", "run", "x", "--space", case)
    assert run.code == 1 and expected in run.err and len(run.err.strip().splitlines()) == 1
    assert not Path("studies/tuner.db").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["study", "run", "x", "--space", "quick", "--sampler", "bayes"], "unknown sampler 'bayes'; valid: tpe, random, grid"),
        (["study", "run", "x", "--space", "quick", "--pruner", "always"], "unknown pruner 'always'; valid: none, median"),
        (["study", "run", "x", "--space", "quick", "--metric", "f1"], "unknown metric 'f1'; valid: val_accuracy"),
        (["study", "run", "x", "--space", "nope"], "search space 'nope' not found: no file search_spaces/nope.yaml"),
        (["study", "run", "x", "--space", "quick", "--workload", "mnist"], "unknown workload 'mnist'; use one of digits"),
        (["study", "run", "x", "--space", "quick", "--workload", "missing.csv", "--target", "y"], "workload missing.csv: file not found"),
        (["study", "run", "x", "--space", "quick", "--workload", "no_such_module:build"], "cannot import module 'no_such_module'"),
        (["study", "run", "x", "--space", "quick", "--device", "cuda:7"], "--device cuda:7"),
        (["study", "run", "x", "--space", "quick", "--storage", "notaurl"], "storage URL 'notaurl' is not a SQLAlchemy URL"),
        (["study", "run", "x", "--space", "quick", "--storage", "postgresql://u:hunter2@127.0.0.1:1/db"], "cannot open storage postgresql://u:***@127.0.0.1:1/db: connection failed"),
        (["study", "run", "x", "--spec", "studies/none.yaml"], "study spec studies/none.yaml not found"),
        (["study", "run", "bad name!", "--space", "quick"], "study name 'bad name!' is not valid"),
        (["study", "show", "ghost"], "studies/tuner.db does not exist"),
        (["study", "run", "ghost"], "no study 'ghost' in sqlite:///studies/tuner.db yet; to create it pass --space"),
        (["study", "run", "x", "--space", "full", "--workload", "wine"], "can pick model=cnn, but wine is not image data"),
    ],
)
def test_bad_study_input_is_one_line_and_writes_nothing(project, cli, argv, expected):
    r = cli(*argv)
    assert r.code == 1, r.out
    assert expected in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert "Traceback" not in r.err and "hunter2" not in r.err + r.out
    assert not Path("studies/tuner.db").exists()


def test_bad_input_leaves_an_existing_database_byte_for_byte_unchanged(project, cli):
    assert cli("study", "run", "a", "--space", "tiny", "--trials", "2", "-q").code == 0
    db = Path("studies/tuner.db")
    cli("study", "run", "a", "--space", "tiny", "--trials", "2", "-q")  # a no-op run settles the WAL
    subprocess.run([sys.executable, "-c", f"import sqlite3; sqlite3.connect('{db}').execute('PRAGMA wal_checkpoint(TRUNCATE)')"], check=True)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    for argv in (
        ["study", "run", "a", "--sampler", "random"],
        ["study", "run", "b", "--space", "tiny", "--sampler", "nope"],
        ["study", "run", "b", "--space", "tiny", "--workload", "x.csv", "--target", "t"],
        ["study", "show", "nope"],
        ["study", "delete", "nope", "--yes"],
        ["study", "create", "a", "--space", "tiny"],
    ):
        r = cli(*argv)
        assert r.code == 1 and len(r.err.strip().splitlines()) == 1, (argv, r.err)
    subprocess.run([sys.executable, "-c", f"import sqlite3; sqlite3.connect('{db}').execute('PRAGMA wal_checkpoint(TRUNCATE)')"], check=True)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


def test_debug_shows_the_traceback_and_plain_does_not():
    plain = subprocess.run([TUNER, "space", "show", "/nonexistent/x.yaml"], capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and "not found" in plain.stderr
    debug = subprocess.run([TUNER, "--debug", "space", "show", "/nonexistent/x.yaml"], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "SpaceError" in debug.stderr
    # after the subcommand too, where a person adds it when an error surprises them
    late = subprocess.run([TUNER, "space", "show", "/nonexistent/x.yaml", "--debug"], capture_output=True, text=True)
    assert late.returncode == 1 and "Traceback" in late.stderr and "SpaceError" in late.stderr


def test_help_shows_defaults_plain_metavars_and_answers_to_h(cli) -> None:
    r = cli("study", "run", "-h")
    assert r.code == 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.out).split())  # the panels' borders out, lines joined
    for shown in ("[default: tpe]", "[default: median]", "[default: 0]", "[default: 0.2]", "[default: sqlite:///studies/tuner.db]", "[default: auto]"):
        assert shown in text, shown
    assert "range>" not in r.out and "--storage URL" in text and "--sampler NAME" in text
    assert cli("-h").code == 0 and cli("space", "create", "-h").code == 0
    assert cli("--version").out.startswith("tuner ")


def test_run_continues_an_existing_study_to_its_total_budget(project, cli):
    first = json.loads(cli("study", "run", "c", "--space", "tiny", "--trials", "3", "--format", "json").out)
    assert first["ran"] == 3
    again = json.loads(cli("study", "run", "c", "--trials", "5", "--format", "json").out)
    assert again["ran"] == 2 and again["n_finished"] == 5
    resumed = json.loads(cli("study", "resume", "c", "--format", "json").out)
    assert resumed["ran"] == 0 and resumed["budget"] == 5  # the raised budget was stored
    refused = cli("study", "run", "c", "--sampler", "random")
    assert refused.code == 1 and "created with sampler='tpe', not 'random'; drop --sampler" in refused.err


def test_show_best_trials_and_json_formats(project, cli):
    cli("study", "run", "d", "--space", "tiny", "--trials", "3", "-q")
    show = json.loads(cli("study", "show", "d", "--format", "json").out)
    assert show["finished"] == 3 and show["spec"]["sampler"] == "tpe"
    best = json.loads(cli("study", "best", "d", "--format", "json").out)
    assert best["value"] == show["best"]["value"]
    rows = json.loads(cli("study", "trials", "d", "--format", "json").out)
    assert len(rows) == 3 and all(r["state"] == "complete" for r in rows)
    table = cli("study", "trials", "d")
    assert table.code == 0 and "complete" in table.out
    listing = json.loads(cli("study", "list", "--format", "json").out)
    assert listing == [{"name": "d", "direction": "maximize", "trials": 3, "best_value": best["value"], "sampler": "tpe", "stopped": None, "workload": "digits", "budget": 3}]


def test_delete_asks_and_keeps_the_study_unless_confirmed(project, cli):
    cli("study", "run", "e", "--space", "tiny", "--trials", "1", "-q")
    no = cli("study", "delete", "e", input="n\n")
    assert no.code == 1 and "nothing deleted" in no.out
    assert "delete study 'e'" in no.err and "delete study" not in no.out  # the question on stderr
    silent = cli("study", "delete", "e", input="")  # no answer: a script without --yes
    assert silent.code == 1 and "nothing deleted; pass --yes" in silent.err
    assert cli("study", "show", "e").code == 0
    yes = cli("study", "delete", "e", input="y\n")
    assert yes.code == 0 and "deleted study 'e' (1 trial)" in yes.out
    assert cli("study", "show", "e").code == 1
    best = cli("study", "run", "e2", "--space", "tiny", "--trials", "1", "-q")
    shown = cli("study", "best", "e2")
    assert shown.out.startswith("best val_accuracy: ") and best.code == 0  # no stray indent


def test_tuner_storage_environment_variable_is_used(project, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("TUNER_STORAGE", f"sqlite:///{tmp_path}/elsewhere.db")
    assert cli("study", "run", "f", "--space", "tiny", "--trials", "1", "-q").code == 0
    assert (tmp_path / "elsewhere.db").exists() and not Path("studies/tuner.db").exists()


def test_grid_study_from_the_cli_stops_when_exhausted(project, cli):
    r = json.loads(cli("study", "run", "--spec", "studies/digits_grid.yaml", "--format", "json").out)
    assert r["n_finished"] == 12 and r["budget"] == 12
    assert json.loads(cli("study", "run", "digits_grid", "--trials", "20", "--format", "json").out)["stopped"] == "grid_exhausted"


@pytest.fixture(scope="module")
def six_trials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 6-trial study 'w' on the quick space, run once for the module's tests to copy."""
    root = tmp_path_factory.mktemp("six")
    shutil.copytree(REPO / "search_spaces", root / "search_spaces")
    run = subprocess.run([TUNER, "study", "run", "w", "--space", "quick", "--trials", "6", "--pruner", "none", "--sampler", "random", "-q", "--device", "cpu"],
                         cwd=root, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return root / "studies" / "tuner.db"


@pytest.mark.xdist_group("six_trials")  # on one worker: the module's study is run once, not once a worker
@pytest.mark.parametrize("width", [60, 80, 120])
def test_trials_table_fits_the_terminal_without_splitting_a_number(project, six_trials, width: int) -> None:
    copy_sqlite(six_trials, Path("studies/tuner.db"))
    env = {**os.environ, "COLUMNS": str(width)}
    result = subprocess.run([TUNER, "study", "trials", "w"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= width for line in lines)
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    header = [c.strip() for c in next(line for line in lines if line.startswith("┃")).split("┃")[1:-1]]
    first_rows = [r for r in rows if r[0]]
    assert len(first_rows) == 6  # one line a trial, whatever the width: a wrapped number would add lines
    for r in rows:
        if not r[0]:  # a continuation line: only the note folds
            assert not any(r[:-1]), r
            continue
        for name, cell in zip(header[2:-1], r[2:-1]):  # the value, parameters, epochs, seconds
            if cell not in ("", "-") and name not in ("optimizer", "activation", "init", "scheduler", "norm", "model", "scaling", "health"):
                float(cell.rstrip("…")) if not cell.endswith("…") else None
    if width == 120:
        assert "lr" in header
    wide = subprocess.run([TUNER, "study", "trials", "w", "--wide"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})
    assert "lr" in wide.stdout and "optimizer" in wide.stdout
    cols = subprocess.run([TUNER, "study", "trials", "w", "--columns", "lr"], capture_output=True, text=True, env=env)
    assert "lr" in cols.stdout and cols.returncode == 0
    bad = subprocess.run([TUNER, "study", "trials", "w", "--columns", "lrr"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "--columns 'lrr' is not a parameter" in bad.stderr


def test_failed_and_fail_are_one_state_and_counts_add_up(project, cli) -> None:
    Path("boom.py").write_text("def objective(trial):\n    raise RuntimeError('no data')\n")
    r = cli("study", "run", "f", "--space", "tiny", "--objective", "boom:objective", "--trials", "2")
    assert r.code == 1
    for spelling in ("failed", "fail"):
        shown = cli("study", "trials", "f", "--state", spelling, "--format", "json")
        assert shown.code == 0 and len(json.loads(shown.out)) == 5
    assert "failed" in cli("study", "trials", "f").out
    r = cli("study", "run", "g", "--space", "tiny", "--trials", "1", "--pruner", "none")
    assert "1/1 finished (1 complete + 0 pruned), budget reached; this run: 1 trial in" in r.out


def test_a_run_logged_to_a_file_says_each_trial_as_it_ends(project) -> None:
    """Output that is not a terminal (nohup, CI, a cluster job) gets a line a trial, not a bar
    that shows nothing until the study ends."""
    with open("run.log", "w") as log:
        result = subprocess.run([TUNER, "study", "run", "logged", "--space", "tiny", "--trials", "3", "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT)
    assert result.returncode == 0
    lines = [line for line in Path("run.log").read_text().splitlines() if not line.startswith("new database ")]
    # a line as each trial ends: trials packed together (--pack auto) end when their pack does
    assert sorted(line.split(" val_accuracy=")[0] for line in lines[:3]) == ["trial 0", "trial 1", "trial 2"]
    assert lines[2].endswith(")") and "(3/3 finished, best " in lines[2]
    quiet = subprocess.run([TUNER, "study", "run", "logged", "--trials", "4", "-q"], capture_output=True, text=True)
    assert "trial 3" not in quiet.stderr  # --quiet: only the result


def test_a_typo_is_told_before_torch_is_imported(project) -> None:
    """A mistyped sampler or space is answered at once: torch (seconds to import on a busy
    machine) is not loaded before the settings are checked."""
    probe = "import sys, runpy; sys.argv = ['tuner'] + sys.argv[1:]\ntry:\n    runpy.run_module('tuner', run_name='__main__')\nfinally:\n    print('torch' in sys.modules, file=sys.stderr)\n"
    for args in (["--space", "tiny", "--sampler", "tpee"], ["--space", "tinyy"]):
        result = subprocess.run([sys.executable, "-c", probe, "study", "run", "x", *args], capture_output=True, text=True)
        assert result.returncode == 1 and result.stderr.strip().endswith("False"), result.stderr


def test_the_dashboard_hint_can_be_pasted_as_printed(project, cli, monkeypatch, pg_url) -> None:
    r = cli("study", "run", "h", "--space", "tiny", "--trials", "1")
    assert "dashboard: tuner dashboard   (then open" in r.out  # the default storage: no flag
    other = "sqlite:///studies/other.db"
    r = cli("study", "run", "h", "--space", "tiny", "--trials", "1", "--storage", other)
    assert f"dashboard: tuner dashboard --storage '{other}'   (then open" in r.out
    monkeypatch.setenv("TUNER_STORAGE", other)
    assert "dashboard: tuner dashboard   (then open" in cli("study", "run", "h", "--trials", "2").out  # it reads TUNER_STORAGE too
    monkeypatch.delenv("TUNER_STORAGE")
    secret = pg_url.replace("postgres@", "postgres:s3cret@")
    r = cli("study", "run", "h", "--space", "tiny", "--trials", "1", "--storage", secret)
    assert r.code == 0, r.err
    assert "***" not in r.out and "s3cret" not in r.out and "TUNER_STORAGE='<this study's URL, with its password>' tuner dashboard" in r.out


def test_a_new_database_is_named_by_its_absolute_path(project, cli) -> None:
    r = cli("study", "create", "n", "--space", "tiny")
    assert r.code == 0 and f"new database {Path('studies/tuner.db').resolve()}" in r.err
    r = cli("study", "run", "n2", "--space", "tiny", "--trials", "1", "-q")
    assert "new database" not in r.err  # only when it is created


def test_study_list_keeps_the_name_whole_at_60_columns(project, cli) -> None:
    long_name = "a-study-with-a-rather-long-name"
    assert cli("study", "create", long_name, "--space", "tiny").code == 0
    result = subprocess.run([TUNER, "study", "list"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "60"})
    assert result.returncode == 0 and long_name in result.stdout
    assert all(len(line) <= 60 for line in result.stdout.splitlines())


def test_help_is_light(project) -> None:
    """`tuner --help` and every command's help load neither torch, Optuna nor SQLAlchemy."""
    probe = (
        "import sys, runpy; sys.argv = ['tuner'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('tuner', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'optuna', 'sqlalchemy') if m in sys.modules), file=sys.stderr)\n"
    )
    for args in (["--help"], ["study", "run", "--help"], ["space", "create", "--help"], ["launch", "slurm", "--help"], ["launch", "k8s", "--help"]):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        assert result.stderr.strip().splitlines()[-1] == "[]", (args, result.stderr)
