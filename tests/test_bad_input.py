"""Bad input, everywhere: each malformed or hostile input gets one clear line, a non-zero exit, no
traceback, and leaves the database byte-for-byte unchanged (main file and WAL)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuner.errors import SpaceError
from tuner.params import param_names
from tuner.space import space_from_text

DB = Path("studies/tuner.db")

# name -> (space file text, or None when the case is not about a space file)
SPACES = {
    "low_above_high": "params:\n  lr: {type: float, low: 0.1, high: 0.001}\n",
    "low_equals_high": "params:\n  lr: {type: float, low: 0.1, high: 0.1}\n",
    "log_zero": "params:\n  weight_decay: {type: float, low: 0, high: 0.1, log: true}\n",
    "log_negative": "params:\n  l1: {type: float, low: -1.0e-3, high: 0.1, log: true}\n",
    "unknown_optimizer": "params:\n  optimizer: [sgd, adamm]\n",
    "unknown_init": "params:\n  init: [he_normal]\n",
    "unknown_activation": "params:\n  activation: [swish]\n",
    "condition_missing_parent": "params:\n  momentum: {fixed: 0.9, when: {optimizer: [sgd]}}\n",
    "condition_impossible": "params:\n  optimizer: [adam]\n  momentum: {fixed: 0.9, when: {optimizer: [sgd]}}\n",
    "condition_on_range": "params:\n  lr: {type: float, low: 0.001, high: 0.1}\n  momentum: {fixed: 0.9, when: {lr: [0.01]}}\n",
    "condition_cycle": "params:\n  optimizer: {type: categorical, choices: [sgd], when: {init: [default]}}\n  init: {type: categorical, choices: [default], when: {optimizer: [sgd]}}\n",
    "empty_choices": "params:\n  batch_size: {type: categorical, choices: []}\n",
    "duplicate_choices": "params:\n  batch_size: [32, 32]\n",
    "malformed_yaml": "params:\n  lr: [0.1, 0.2\n",
    "tabs_yaml": "params:\n\tlr: 0.1\n",
    "top_level_list": "- lr\n- 0.1\n",
    "empty_file": "",
    "no_params": "description: nothing to search\n",
    "unknown_parameter": "params:\n  learning_rate: 0.1\n",
    "unknown_entry_key": "params:\n  lr: {type: float, low: 0.001, high: 0.1, scale: log}\n",
    "dropout_out_of_range": "params:\n  dropout: {type: float, low: 0, high: 1.5}\n",
    "epochs_zero": "params:\n  epochs: 0\n",
    "grid_outside": "params:\n  lr: {type: float, low: 0.001, high: 0.1, grid: [0.5]}\n",
    "grid_count_zero": "params:\n  lr: {type: float, low: 0.001, high: 0.1, grid: 0}\n",
    "step_negative": "params:\n  epochs: {type: int, low: 1, high: 9, step: -1}\n",
    "step_with_log": "params:\n  lr: {type: float, low: 0.001, high: 0.1, log: true, step: 0.01}\n",
    "low_not_a_number": "params:\n  lr: {type: float, low: small, high: 0.1}\n",
    "python_tag": "params: !!python/object/apply:os.system ['echo hacked']\n",
    "billion_laughs": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\nparams: {optimizer: {type: categorical, choices: *d}}\n",
    "huge_grid_count": "params:\n  lr: {type: float, low: 0.001, high: 0.1, grid: 1000000000}\n",
    "int_range_for_lr": "params:\n  lr: {type: int, low: 1, high: 5}\n",
    "range_for_names": "params:\n  optimizer: {type: float, low: 0, high: 1}\n",
}


def _bad_files(root: Path) -> None:
    for name, text in SPACES.items():
        (root / "search_spaces" / f"{name}.yaml").write_text(text)
    (root / "search_spaces" / "not_utf8.yaml").write_bytes(b"params:\n  lr: \xff\xfe\n")
    (root / "search_spaces" / "huge.yaml").write_text("params:\n" + "#" * 2_000_000 + "\n")
    specs = root / "specs"
    specs.mkdir()
    (specs / "unknown_key.yaml").write_text("name: s\nspace: tiny\nsamplr: tpe\n")
    (specs / "bad_sampler.yaml").write_text("name: s\nspace: tiny\nsampler: bayes\n")
    (specs / "zero_trials.yaml").write_text("name: s\nspace: tiny\ntrials: 0\n")
    (specs / "list.yaml").write_text("- name: s\n")
    (specs / "malformed.yaml").write_text("name: s\nspace: [tiny\n")
    (specs / "bad_name.yaml").write_text("name: ../../etc\nspace: tiny\n")
    (specs / "name_not_text.yaml").write_text("name: [1, 2]\nspace: tiny\n")
    (specs / "no_space.yaml").write_text("name: s\n")
    (root / "nodata.csv").write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(30)))
    np.savez(root / "noy.npz", X=np.zeros((20, 3)))
    np.savez(root / "regression.npz", X=np.random.default_rng(0).normal(size=(50, 3)), y=np.linspace(0, 1, 50))
    (root / "broken_module.py").write_text("def build(config):\n    return (\n")
    (root / "not_a_db.db").write_text("this is not a database\n")


def _cases() -> list[tuple[str, list[str], str]]:
    """(label, argv, a fact the one-line message must contain)."""
    run = ["study", "run", "new"]
    cases = [(f"space:{n}", [*run, "--space", n], f"search_spaces/{n}.yaml") for n in SPACES]
    cases += [
        ("space:not_utf8", [*run, "--space", "not_utf8"], "not UTF-8"),
        ("space:huge", [*run, "--space", "huge"], "too large"),
        ("space:missing", [*run, "--space", "nope"], "search space 'nope' not found"),
        ("validate:missing", ["space", "validate", "nope"], "not found"),
        ("show:malformed", ["space", "show", "malformed_yaml"], "not valid YAML"),
        ("spec:missing", ["study", "run", "--spec", "specs/none.yaml"], "not found"),
        ("spec:unknown_key", ["study", "run", "--spec", "specs/unknown_key.yaml"], "unknown setting 'samplr'"),
        ("spec:bad_sampler", ["study", "run", "--spec", "specs/bad_sampler.yaml"], "unknown sampler 'bayes'"),
        ("spec:zero_trials", ["study", "run", "--spec", "specs/zero_trials.yaml"], "trials must be at least 1"),
        ("spec:list", ["study", "run", "--spec", "specs/list.yaml"], "must be a mapping"),
        ("spec:malformed", ["study", "run", "--spec", "specs/malformed.yaml"], "not valid YAML"),
        ("spec:bad_name", ["study", "run", "--spec", "specs/bad_name.yaml"], "study name '../../etc' is not valid"),
        ("spec:name_not_text", ["study", "run", "--spec", "specs/name_not_text.yaml"], "name must be text"),
        ("spec:no_space", ["study", "run", "--spec", "specs/no_space.yaml"], "`space` is required"),
        ("opt:sampler", [*run, "--space", "tiny", "--sampler", "bayes"], "unknown sampler 'bayes'"),
        ("opt:pruner", [*run, "--space", "tiny", "--pruner", "always"], "unknown pruner 'always'"),
        ("opt:metric", [*run, "--space", "tiny", "--metric", "f1"], "unknown metric 'f1'"),
        ("opt:trials", [*run, "--space", "tiny", "--trials", "0"], "--trials"),
        ("opt:device", [*run, "--space", "tiny", "--device", "cuda:3"], "--device cuda:3"),
        ("opt:device_kind", [*run, "--space", "tiny", "--device", "tpu"], "--device 'tpu'"),
        ("opt:name", ["study", "run", "bad name", "--space", "tiny"], "study name 'bad name' is not valid"),
        ("opt:name_dots", ["study", "run", "..", "--space", "tiny"], "study name '..' is not valid"),
        ("opt:metric_pattern", [*run, "--space", "tiny", "--command", "python t.py", "--metric", "m", "--direction", "minimize", "--metric-pattern", "m=(("],
         "metric pattern 'm=((': '((' is not a valid regular expression"),
        ("opt:step_pattern", [*run, "--space", "tiny", "--command", "python t.py", "--metric", "m", "--direction", "minimize", "--step-pattern", "step"],
         "step pattern 'step' needs exactly one capturing group"),
        ("opt:pattern_no_command", [*run, "--space", "tiny", "--metric-pattern", "val_accuracy=acc (\\S+)"], "read a --command's output"),
        ("opt:max_failures", [*run, "--space", "tiny", "--max-failures", "0"], "--max-failures"),
        ("gpus:backwards", [*run, "--space", "tiny", "--gpus", "3-1"], "--gpus '3-1': the range 3-1 runs backwards"),
        ("gpus:not_an_id", [*run, "--space", "tiny", "--gpus", "x"], "--gpus 'x': 'x' is not a GPU id"),
        ("gpus:per_gpu_zero", [*run, "--space", "tiny", "--gpus", "0", "--per-gpu", "0"], "--per-gpu 0: each GPU needs at least one worker"),
        ("gpus:per_gpu_alone", [*run, "--space", "tiny", "--per-gpu", "2"], "--per-gpu 2 needs --gpus"),
        ("gpus:too_many_workers", [*run, "--space", "tiny", "--gpus", "0,1", "--workers", "3"], "--workers 3 is more than the 2 slots"),
        ("gpus:device", [*run, "--space", "tiny", "--gpus", "0,1", "--device", "cuda:1"], "--device cuda:1 with --gpus"),
        ("gpus:resume", ["study", "resume", "base", "--gpus", "1-0"], "--gpus '1-0'"),
        ("opt:unknown_option", [*run, "--space", "tiny", "--lr", "0.1"], "No such option: --lr"),
        ("study:show", ["study", "show", "ghost"], "no study 'ghost'"),
        ("study:best", ["study", "best", "ghost"], "no study 'ghost'"),
        ("study:trials", ["study", "trials", "ghost"], "no study 'ghost'"),
        ("study:export", ["study", "export", "ghost", "--out", "x.csv"], "no study 'ghost'"),
        ("study:delete", ["study", "delete", "ghost", "--yes"], "no study 'ghost'"),
        ("study:resume", ["study", "resume", "ghost"], "no study 'ghost'"),
        ("study:worker", ["worker", "ghost"], "no study 'ghost'"),
        ("study:run_unknown", ["study", "run", "ghost"], "no study 'ghost'"),
        ("existing:sampler", ["study", "run", "base", "--sampler", "random"], "created with sampler='tpe'"),
        ("existing:create", ["study", "create", "base", "--space", "tiny"], "already exists"),
        ("existing:space", ["study", "run", "base", "--space", "quick"], "different search space"),
        ("storage:malformed", [*run, "--space", "tiny", "--storage", "not a url"], "is not a SQLAlchemy URL"),
        ("storage:unreachable", [*run, "--space", "tiny", "--storage", "postgresql+psycopg://u:pw@127.0.0.1:1/db"], "cannot open storage"),
        ("storage:no_driver", [*run, "--space", "tiny", "--storage", "mssql+pymssql://u@h/db"], "driver is not installed"),
        ("storage:not_a_db", ["study", "list", "--storage", "sqlite:///not_a_db.db"], "cannot open storage"),
        ("storage:directory", ["study", "list", "--storage", "sqlite:///specs"], "cannot open storage"),
        ("workload:builtin", [*run, "--space", "tiny", "--workload", "mnist"], "unknown workload 'mnist'"),
        ("workload:module", [*run, "--space", "tiny", "--workload", "broken_module:build"], "cannot import module 'broken_module'"),
        ("workload:function", [*run, "--space", "tiny", "--workload", "broken_module_x:build"], "cannot import module"),
        ("workload:csv_target", [*run, "--space", "tiny", "--workload", "nodata.csv", "--target", "y"], "no column 'y'"),
        ("workload:csv_no_target", [*run, "--space", "tiny", "--workload", "nodata.csv"], "--target COLUMN"),
        ("workload:npz", [*run, "--space", "tiny", "--workload", "noy.npz"], "no array 'y'"),
        ("workload:target_for_builtin", [*run, "--space", "tiny", "--target", "y"], "--target y only applies"),
        ("workload:metric_task", [*run, "--space", "tiny", "--workload", "regression.npz"], "needs a classification target"),
        ("workload:cnn_on_table", [*run, "--space", "full", "--workload", "wine"], "not image data"),
        ("grid:continuous", [*run, "--space", "quick", "--sampler", "grid", "--spaces-dir", "specs"], "not found"),
        ("grid:no_points", [*run, "--space", "full", "--sampler", "grid"], "grid search"),
        ("command:unknown", ["studies"], "No such command"),
    ]
    return cases


def _fingerprint() -> str:
    with sqlite3.connect(DB) as conn:  # settle the WAL so that only real writes change the bytes
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    h = hashlib.sha256(DB.read_bytes())
    wal = DB.with_name(DB.name + "-wal")
    h.update(wal.read_bytes() if wal.exists() else b"")
    return h.hexdigest()


def test_fifty_malformed_inputs_each_get_one_line_and_leave_the_database_unchanged(project, cli):
    _bad_files(project)
    assert cli("study", "run", "base", "--space", "tiny", "--trials", "2", "-q").code == 0
    cases = _cases()
    assert len(cases) >= 50
    before = _fingerprint()
    problems = []
    for label, argv, fact in cases:
        r = cli(*argv)
        lines = r.err.strip().splitlines()
        if r.code == 0 or len(lines) != 1 or fact not in r.err or "Traceback" in r.err + r.out or "pw@" in r.err:
            problems.append(f"{label}: exit {r.code}, stderr {r.err!r}")
        elif _fingerprint() != before:
            problems.append(f"{label}: the database changed")
    assert not problems, "\n".join(problems)
    assert not Path("x.csv").exists()


# ---------------------------------------------------------------------------------------------
# generated malformed spaces, at the validator and at the CLI

_NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.text(max_size=5))


# corruptions that can land on a valid space (a drawn value inside the bounds, text that parses);
# every other kind is invalid whatever is drawn, so a validator that lets one through fails the test
MAYBE_VALID = {"bounds", "value", "text"}


@st.composite
def malformed_spaces(draw) -> tuple[str, str]:
    """(kind, text): a valid space with one corruption, drawn from what people (and attackers) get wrong."""
    params = {
        "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
        "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["momentum"]}},
        "epochs": 2,
    }
    kind = draw(st.sampled_from(["bounds", "log", "choice", "empty", "when", "name", "key", "type", "value", "text"]))
    target = draw(st.sampled_from(["lr", "momentum"]))
    if kind == "bounds":
        low = draw(st.floats(1e-3, 1.0))
        params[target] = {**params[target], "low": low, "high": low * draw(st.floats(0.0, 1.0))}
    elif kind == "log":
        params["lr"] = {**params["lr"], "low": draw(st.floats(-10, 0))}
    elif kind == "choice":
        params["optimizer"]["choices"] = ["sgd", draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in param_names() and s not in ("sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adadelta", "adam", "adamw", "lbfgs")))]
    elif kind == "empty":
        params["optimizer"]["choices"] = []
    elif kind == "when":
        params["momentum"]["when"] = {draw(st.sampled_from(["optimiser", "lr", "momentum", "batch_size"])): ["sgd"]}
    elif kind == "name":
        params[draw(st.text(min_size=1, max_size=12).filter(lambda s: s not in param_names()))] = 1
    elif kind == "key":
        params["lr"][draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in ("type", "low", "high", "log", "step", "choices", "when", "grid", "fixed")))] = 1
    elif kind == "type":
        params["lr"]["type"] = draw(st.sampled_from(["int", "categorical", "real", "", "Float"]))
    elif kind == "value":
        params[target] = {**params[target], draw(st.sampled_from(["low", "high", "step", "grid"])): draw(_NUMBERS)}
        if params[target].get("step") is not None and params[target].get("log"):
            pass  # step with log is itself invalid
    else:
        return kind, draw(st.text(max_size=200).filter(lambda t: not t.strip().startswith("params")))
    return kind, yaml.safe_dump({"params": params}, sort_keys=False)


def _is_valid(text: str) -> bool:
    try:
        space_from_text(text, name="x", source="x.yaml")
        return True
    except SpaceError:
        return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=malformed_spaces())
def test_generated_malformed_spaces_are_refused_by_the_cli_without_writing(project, cli, case):
    kind, text = case
    if not DB.exists():
        assert cli("study", "run", "base", "--space", "tiny", "--trials", "1", "-q").code == 0
    if _is_valid(text):  # a "corruption" that happens to be valid (e.g. a value inside bounds)
        assert kind in MAYBE_VALID, f"a {kind} corruption was accepted:\n{text}"
        return
    Path("search_spaces/gen.yaml").write_text(text)
    before = _fingerprint()
    for argv in (["space", "validate", "gen"], ["study", "run", "gen_study", "--space", "gen"], ["study", "create", "gen_study", "--space", "gen"]):
        r = cli(*argv)
        assert r.code == 1, (argv, text, r.out)
        assert len(r.err.strip().splitlines()) == 1 and "search_spaces/gen.yaml" in r.err and "Traceback" not in r.err
    assert _fingerprint() == before
