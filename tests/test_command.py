"""tuner.command and tuner.reporting: a user's script run as a trial, with real child processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tuner.command import (
    RESERVED,
    CommandError,
    CommandTimeout,
    check_template,
    expand,
    parse_stdout_line,
    run,
    trial_env,
)
from tuner.errors import TunerError
from tuner.reporting import report

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="trial commands run in POSIX process groups")


# --- helpers ----------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return "State:\tZ" not in status


def _gone(pid: int, *, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def _wait_for_file(path: Path, *, within: float = 10.0) -> str:
    end = time.monotonic() + within
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < end, f"{path} was never written"
        time.sleep(0.02)
    return path.read_text()


def _script(tmp_path: Path, body: str, name: str = "child.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _run(tmp_path: Path, argv: list[str], *, env: dict[str, str] | None = None, on_record=None, **kw):
    """run() with the files in tmp_path and a child environment like a trial's."""
    seen: list[dict[str, float]] = []
    metrics = tmp_path / "metrics.jsonl"
    base = dict(os.environ) if env is None else env
    child_env = {**base, "TUNER_METRICS_FILE": str(metrics), "PYTHONUNBUFFERED": "1"}

    def record(r: dict[str, float]) -> None:
        seen.append(r)
        if on_record is not None:
            on_record(r)

    outcome = run(argv, env=child_env, metrics_file=metrics, log_path=tmp_path / "trial.log", on_record=record, **kw)
    return outcome, seen


class Stop(Exception):
    """What a pruner's TrialPruned stands for here."""


def _raise_stop(record: dict[str, float]) -> None:
    raise Stop(record)


# --- check_template ---------------------------------------------------------------------------


def test_a_valid_template_returns_its_tokens_unfilled():
    tokens = check_template("python train.py --lr={lr} 'a b' --seed {seed} ${args} out/{trial}.pt", ["lr", "layers"])
    assert tokens == ["python", "train.py", "--lr={lr}", "a b", "--seed", "{seed}", "${args}", "out/{trial}.pt"]


def test_braces_around_anything_but_a_name_are_text_and_doubled_braces_escape(tmp_path):
    template = """python -c 'import json; print({"a": {"b": 1}}, {}, "{{lr}}")' {{nope}} --lr={lr}"""
    assert check_template(template, ["lr"]) == ["python", "-c", """import json; print({"a": {"b": 1}}, {}, "{{lr}}")""", "{{nope}}", "--lr={lr}"]
    argv = expand(template, {"lr": 0.1}, seed=1, trial=2, args_json_file=tmp_path / "args.json")
    assert argv == ["python", "-c", """import json; print({"a": {"b": 1}}, {}, "{lr}")""", "{nope}", "--lr=0.1"]


@pytest.mark.parametrize(
    "template, names, words",
    [
        ("", [], ["empty", "--command"]),
        ("   ", [], ["empty"]),
        ("python 'train.py", [], ["no closing quotation", "close the quote"]),
        ("python train.py --lr={lrr}", ["lr", "layers"], ["{lrr}", "did you mean {lr}?", "{layers}", "{seed}", "{trial}", "{{lrr}}"]),
        ("python train.py --x={zzzz}", ["lr"], ["{zzzz}", "valid: {lr}, {seed}, {trial}"]),
        ("python train.py ${arg}", [], ["${arg}", "did you mean ${args}?", "${args_no_hyphens}", "${args_json_file}", "sh -c"]),
        ("python train.py ${HOME}/x", [], ["${HOME}", "environment variables are not expanded"]),
        ("python train.py --config=${args_json_file}", [], ["${args_json_file}", "argument of its own", "--config=${args_json_file}"]),
        ("python train.py --seed={seed}", ["seed", "lr"], ["'seed'", "{seed}", "the trial's seed", "rename the parameter"]),
        ("python train.py", ["trial"], ["'trial'", "the trial's number"]),
    ],
)
def test_each_bad_template_is_one_line_naming_the_token_and_the_fix(template, names, words):
    with pytest.raises(CommandError) as e:
        check_template(template, names)
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert isinstance(e.value, TunerError)


def test_reserved_names_are_seed_trial_and_trial_dir():
    assert RESERVED == ("seed", "trial", "trial_dir")


# --- expand -----------------------------------------------------------------------------------


def _expand(template: str, params: dict, tmp_path: Path, **kw) -> list[str]:
    check_template(template, list(params) + kw.pop("inactive", []))
    return expand(template, params, seed=kw.pop("seed", 7), trial=kw.pop("trial", 3), args_json_file=tmp_path / "args.json")


def test_placeholders_fill_inside_tokens_and_floats_read_back_bit_for_bit(tmp_path):
    lr, wd = 1e-05, 0.1 + 0.2
    argv = _expand("python t.py --lr={lr} --wd {wd} --name={name} --n={n} out/s{seed}-t{trial}", {"lr": lr, "wd": wd, "name": "two words", "n": 64}, tmp_path)
    assert argv == ["python", "t.py", "--lr=1e-05", "--wd", repr(wd), "--name=two words", "--n=64", "out/s7-t3"]
    assert float(argv[2].split("=")[1]) == lr and float(argv[4]) == wd


def test_booleans_and_none_are_spelt_as_json_does(tmp_path):
    argv = _expand("p --a={a} --b={b} --c={c} ${args}", {"a": True, "b": False, "c": None}, tmp_path)
    assert argv == ["p", "--a=true", "--b=false", "--c=null", "--a=true", "--b=false", "--c=null"]


def test_args_macros_give_one_token_per_parameter_in_order(tmp_path):
    params = {"lr": 0.001, "optimizer": "adam", "layers": 2}
    assert _expand("python t.py ${args}", params, tmp_path) == ["python", "t.py", "--lr=0.001", "--optimizer=adam", "--layers=2"]
    assert _expand("python t.py ${args_no_hyphens} +x=1", params, tmp_path) == ["python", "t.py", "lr=0.001", "optimizer=adam", "layers=2", "+x=1"]


def test_args_json_file_is_written_and_its_absolute_path_passed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = {"lr": 1e-05, "bn": True, "act": "relu"}
    check_template("python t.py --config ${args_json_file}", params)
    argv = expand("python t.py --config ${args_json_file}", params, seed=1, trial=0, args_json_file=Path("trial-0/args.json"))
    assert argv[-1] == str(tmp_path / "trial-0" / "args.json")
    assert json.loads(Path(argv[-1]).read_text()) == params
    assert list(tmp_path.glob("trial-0/.*")) == []  # no temporary file left


def test_an_inactive_parameter_leaves_out_its_token_and_its_args_entry(tmp_path):
    template = "python t.py --model={model} --dropout={dropout} ${args}"
    argv = _expand(template, {"model": "linear"}, tmp_path, inactive=["dropout"])
    assert argv == ["python", "t.py", "--model=linear", "--model=linear"]


def test_a_doubled_brace_name_is_a_literal_placeholder(tmp_path):
    assert _expand("p {{lr}} {lr}", {"lr": 0.5}, tmp_path) == ["p", "{lr}", "0.5"]


# --- trial_env --------------------------------------------------------------------------------


def _env(base: dict[str, str], **kw) -> dict[str, str]:
    options = dict(params={"lr": 0.1, "bn": True}, study="s1", trial=4, seed=99, metrics_file=Path("m.jsonl"), device="cpu", threads=None)
    options.update(kw)
    return trial_env(base, **options)


def test_the_trial_is_described_in_tuner_variables_and_inherited_ones_are_dropped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = _env({"PATH": "/bin", "TUNER_STORAGE": "postgresql://u:secret@h/db", "TUNER_OLD": "x"})
    assert env["PATH"] == "/bin"
    assert "TUNER_STORAGE" not in env and "TUNER_OLD" not in env and "secret" not in json.dumps(env)
    assert json.loads(env["TUNER_PARAMS"]) == {"lr": 0.1, "bn": True}
    assert (env["TUNER_TRIAL"], env["TUNER_STUDY"], env["TUNER_SEED"]) == ("4", "s1", "99")
    assert env["TUNER_METRICS_FILE"] == str(tmp_path / "m.jsonl")
    assert env["PYTHONUNBUFFERED"] == "1"
    assert _env({"PYTHONUNBUFFERED": ""})["PYTHONUNBUFFERED"] == ""  # the person's choice stands


@pytest.mark.parametrize(
    "device, inherited, visible, tuner_device",
    [
        ("cpu", None, "", "cpu"),
        ("cpu", "0,1", "", "cpu"),
        ("cuda:1", None, "1", "cuda:0"),
        ("cuda:1", "4, 5,6", "5", "cuda:0"),
        ("cuda:0", "GPU-aaaa,GPU-bbbb", "GPU-aaaa", "cuda:0"),
        ("auto", "3", "3", "auto"),
        ("cuda", None, None, "cuda"),
        ("auto", None, None, "auto"),
    ],
)
def test_the_device_places_the_child_through_cuda_visible_devices(device, inherited, visible, tuner_device):
    base = {} if inherited is None else {"CUDA_VISIBLE_DEVICES": inherited}
    env = _env(base, device=device)
    assert env.get("CUDA_VISIBLE_DEVICES") == visible
    assert env["TUNER_DEVICE"] == tuner_device


@pytest.mark.parametrize("inherited, words", [("0,1", ["cuda:3", "2 GPU(s)", "cuda:0 to cuda:1"]), ("", ["hides every GPU", "--device cpu"])])
def test_a_gpu_outside_the_visible_ones_is_an_error(inherited, words):
    with pytest.raises(CommandError) as e:
        _env({"CUDA_VISIBLE_DEVICES": inherited}, device="cuda:3")
    assert all(w in str(e.value) for w in words)


def test_threads_bound_the_childs_thread_pools():
    env = _env({"OMP_NUM_THREADS": "64"}, threads=2)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert _env({"OMP_NUM_THREADS": "64"})["OMP_NUM_THREADS"] == "64"
    with pytest.raises(CommandError, match="--threads"):
        _env({}, threads=0)


# --- stdout lines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        ("epoch=3 val_accuracy=0.91 loss=0.25", {"epoch": 3.0, "val_accuracy": 0.91, "loss": 0.25}),
        ("epoch=3, loss=1e-3; acc=0.5", {"epoch": 3.0, "loss": 0.001, "acc": 0.5}),
        ("[train] step=10 name=resnet lr=abc val/loss=0.5 top-1=0.7", {"step": 10.0, "val/loss": 0.5, "top-1": 0.7}),
        ("\r 10% loss=0.9\r 20% loss=0.8", {"loss": 0.8}),
        ("Epoch: 3 loss: 0.5", None),
        ("", None),
        ("just some words = here", None),
        ("--lr=0.1 Namespace(lr=0.1, epochs=3)", None),
        ("loss=0,5", None),
        ("=1 1=2 a==3", None),
    ],
)
def test_stdout_lines_give_numeric_name_value_tokens(line, expected):
    assert parse_stdout_line(line) == expected


def test_non_finite_values_are_read_as_floats():
    record = parse_stdout_line("loss=nan acc=inf gap=-Infinity")
    assert record is not None
    assert record["loss"] != record["loss"] and record["acc"] == float("inf") and record["gap"] == float("-inf")


# --- run: metrics -----------------------------------------------------------------------------


def test_stdout_metrics_arrive_in_order_and_the_log_keeps_both_streams_as_printed(tmp_path):
    child = _script(tmp_path, """
        import sys
        print("starting up")
        for epoch in range(3):
            print(f"epoch={epoch} loss={1 / (epoch + 1)}")
            print(f"warn {epoch} lr=0.{epoch}", file=sys.stderr)  # stderr's tokens are not metrics
        print("done")
    """)
    outcome, seen = _run(tmp_path, [PY, str(child)])
    assert outcome.exit_code == 0
    assert seen == outcome.records == [{"epoch": 0.0, "loss": 1.0}, {"epoch": 1.0, "loss": 0.5}, {"epoch": 2.0, "loss": 1 / 3}]
    log = outcome.log_path.read_text().splitlines()
    assert sorted(log) == sorted(["starting up", "epoch=0 loss=1.0", "warn 0 lr=0.0", "epoch=1 loss=0.5", "warn 1 lr=0.1", "epoch=2 loss=0.3333333333333333", "warn 2 lr=0.2", "done"])
    assert [line for line in log if line.startswith("epoch")] == ["epoch=0 loss=1.0", "epoch=1 loss=0.5", "epoch=2 loss=0.3333333333333333"]
    assert outcome.stderr_tail == "warn 0 lr=0.0\nwarn 1 lr=0.1\nwarn 2 lr=0.2"


def test_file_metrics_wait_for_their_newline_and_invalid_lines_are_skipped(tmp_path):
    child = _script(tmp_path, """
        import os, time
        with open(os.environ["TUNER_METRICS_FILE"], "a") as f:
            f.write('{"step": 1, "acc": 0.5}\\n'); f.flush()
            f.write('not json\\n[1, 2]\\n{"note": "text only"}\\n'); f.flush()
            f.write('{"step": 2, '); f.flush()
            time.sleep(0.3)  # several polls see half a line
            f.write('"acc": 0.75, "tag": "x", "flag": true}\\n'); f.flush()
            f.write('{"step": 3, "acc": NaN}')  # the last line, never ended: the writer is gone
    """)
    outcome, seen = _run(tmp_path, [PY, str(child)])
    assert outcome.exit_code == 0
    assert seen[:2] == [{"step": 1.0, "acc": 0.5}, {"step": 2.0, "acc": 0.75}]
    assert seen[2]["step"] == 3.0 and seen[2]["acc"] != seen[2]["acc"]
    assert len(seen) == 3


def test_a_stale_metrics_file_from_an_earlier_attempt_is_emptied_first(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9, "acc": 0.1}\n')
    outcome, seen = _run(tmp_path, [PY, "-c", "pass"])
    assert seen == [] and outcome.records == []


def test_report_reaches_the_worker_from_a_child_script(tmp_path):
    child = _script(tmp_path, """
        import sys, time
        from tuner.reporting import report

        class Scalar:  # as a torch or numpy scalar: a number through __float__
            def __float__(self):
                return 0.25

        for epoch in range(3):
            report(step=epoch, val_accuracy=0.5 + epoch / 10, loss=Scalar())
        print("ok")
        time.sleep(0.1)
        report(val_accuracy=1)
    """)
    outcome, seen = _run(tmp_path, [PY, str(child)])
    assert outcome.exit_code == 0, outcome.stderr_tail
    assert seen == [
        {"step": 0.0, "val_accuracy": 0.5, "loss": 0.25},
        {"step": 1.0, "val_accuracy": 0.6, "loss": 0.25},
        {"step": 2.0, "val_accuracy": 0.7, "loss": 0.25},
        {"val_accuracy": 1.0},
    ]


def test_a_whole_trial_from_template_to_records(tmp_path):
    """The pieces together, as the study will use them: a script reading its flags, its
    environment and the JSON file, and reporting through stdout and the helper."""
    child = _script(tmp_path, """
        import argparse, json, os
        from tuner.reporting import report
        p = argparse.ArgumentParser()
        p.add_argument("--lr", type=float)
        p.add_argument("--layers", type=int)
        p.add_argument("--bn", choices=["true", "false"])
        p.add_argument("--seed", type=int)
        p.add_argument("--config")
        a = p.parse_args()
        with open(a.config) as f:
            config = json.load(f)
        assert config == json.loads(os.environ["TUNER_PARAMS"]) == {"lr": a.lr, "layers": a.layers, "bn": a.bn == "true"}
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and os.environ["TUNER_DEVICE"] == "cpu"
        assert os.environ["OMP_NUM_THREADS"] == "1" and "TUNER_STORAGE" not in os.environ
        print(f"seed={a.seed} trial={os.environ['TUNER_TRIAL']}")
        report(step=0, score=a.lr * a.layers)
    """)
    params = {"lr": 0.125, "layers": 3, "bn": True}
    template = f"{PY} {child} ${{args}} --seed={{seed}} --config ${{args_json_file}}"
    check_template(template, params)
    argv = expand(template, params, seed=11, trial=5, args_json_file=tmp_path / "args.json")
    metrics = tmp_path / "metrics.jsonl"
    env = trial_env({**os.environ, "TUNER_STORAGE": "sqlite:///x.db"}, params=params, study="s", trial=5, seed=11, metrics_file=metrics, device="cpu", threads=1)
    seen: list[dict[str, float]] = []
    outcome = run(argv, env=env, metrics_file=metrics, log_path=tmp_path / "log" / "5.log", on_record=seen.append)
    assert outcome.exit_code == 0, outcome.stderr_tail
    assert seen == [{"seed": 11.0, "trial": 5.0}, {"step": 0.0, "score": 0.375}]


def test_lines_stay_whole_in_the_log_when_both_streams_write_at_once(tmp_path):
    child = _script(tmp_path, """
        import fcntl, struct, sys, termios, time

        def read_by_the_worker(stream):  # its pipe holds no unread byte (FIONREAD): no guessed sleep
            stream.flush()
            deadline = time.monotonic() + 60
            while struct.unpack("i", fcntl.ioctl(stream.fileno(), termios.FIONREAD, b"\\0" * 4))[0] and time.monotonic() < deadline:
                time.sleep(0.005)

        sys.stdout.write("epoch=1 "); read_by_the_worker(sys.stdout)  # the half line is read first
        sys.stderr.write("a warning\\n"); read_by_the_worker(sys.stderr)  # then the other stream's whole line
        sys.stdout.write("loss=0.5\\n"); read_by_the_worker(sys.stdout)
        sys.stdout.write("acc=0.75")  # the last line, never ended
    """)
    outcome, seen = _run(tmp_path, [PY, str(child)])
    assert outcome.log_path.read_text().splitlines() == ["a warning", "epoch=1 loss=0.5", "acc=0.75"]
    assert seen == [{"epoch": 1.0, "loss": 0.5}, {"acc": 0.75}]


def test_more_output_than_a_pipe_holds_is_read_to_the_end(tmp_path):
    child = _script(tmp_path, """
        import sys
        for i in range(100_000):
            print(f"line {i} of noise", file=sys.stderr if i % 2 else sys.stdout)
        print("val_loss=0.125")
    """)
    outcome, seen = _run(tmp_path, [PY, str(child)])
    assert outcome.exit_code == 0 and seen == [{"val_loss": 0.125}]
    assert len(outcome.log_path.read_text().splitlines()) == 100_001
    assert outcome.stderr_tail.splitlines()[-1] == "line 99999 of noise"


def test_a_progress_bar_leaves_its_last_state_in_the_stderr_tail(tmp_path):
    child = _script(tmp_path, """
        import sys
        for i in range(1, 101):
            sys.stderr.write(f"\\r{i:3d}%|{'#' * (i // 10)}")
        sys.stderr.write("\\nRuntimeError: CUDA out of memory\\n")
        sys.exit(1)
    """)
    outcome, _ = _run(tmp_path, [PY, str(child)])
    assert outcome.exit_code == 1
    assert outcome.stderr_tail.splitlines() == ["100%|##########", "RuntimeError: CUDA out of memory"]


# --- run: endings -----------------------------------------------------------------------------


def test_a_failing_command_returns_its_exit_code_and_the_tail_of_stderr(tmp_path):
    child = _script(tmp_path, """
        import sys
        for i in range(30):
            print(f"\\x1b[31mline {i}\\x1b[0m\\x07", file=sys.stderr)
        print("x" * 5000, file=sys.stderr)
        sys.stderr.write("ValueError: bad batch size")  # no newline at the end
        sys.exit(3)
    """)
    outcome, _ = _run(tmp_path, [PY, str(child)])
    assert outcome.exit_code == 3
    tail = outcome.stderr_tail.splitlines()
    assert tail[-1] == "ValueError: bad batch size"
    assert len(tail) == 20 and tail[0] == "line 12" and "line 11" not in tail
    assert len(tail[-2]) < 1000 and len(outcome.stderr_tail) < 10000
    assert all(c.isprintable() for line in tail for c in line)
    assert "\x1b[31mline 29" in outcome.log_path.read_text()  # the log keeps what was printed


def test_a_child_killed_by_a_signal_has_a_negative_exit_code(tmp_path):
    outcome, _ = _run(tmp_path, [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert outcome.exit_code == -signal.SIGKILL


def test_on_record_raising_stops_the_child_and_propagates(tmp_path):
    child = _script(tmp_path, """
        import os, sys, time
        open(sys.argv[1], "w").write(f"{os.getpid()}\\n")
        for epoch in range(1000):
            print(f"epoch={epoch}")
            time.sleep(0.05)
    """)
    with pytest.raises(Stop) as e:
        _run(tmp_path, [PY, str(child), str(tmp_path / "pid")], on_record=lambda r: r["epoch"] >= 2 and _raise_stop(r))
    assert e.value.args[0] == {"epoch": 2.0}
    assert _gone(int((tmp_path / "pid").read_text()))


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_while_waiting_stops_the_child_and_propagates(tmp_path, exc):
    child = _script(tmp_path, """
        import os, sys, time
        open(sys.argv[1], "w").write(f"{os.getpid()}\\n")
        print("epoch=0")
        time.sleep(60)
    """)

    def interrupt(record):
        raise exc()

    with pytest.raises(exc):
        _run(tmp_path, [PY, str(child), str(tmp_path / "pid")], on_record=interrupt)
    assert _gone(int((tmp_path / "pid").read_text()))


def test_a_child_ignoring_sigterm_is_killed_after_the_grace(tmp_path):
    child = _script(tmp_path, """
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(sys.argv[1], "w").write(f"{os.getpid()}\\n")
        print("epoch=0")
        while True:
            time.sleep(0.05)
    """)
    with pytest.raises(Stop):
        _run(tmp_path, [PY, str(child), str(tmp_path / "pid")], on_record=_raise_stop, grace_s=0.3)
    assert _gone(int((tmp_path / "pid").read_text()))


def test_the_childs_own_children_are_stopped_with_it(tmp_path):
    child = _script(tmp_path, """
        import os, subprocess, sys, time
        sleeper = subprocess.Popen(["sleep", "60"])
        open(sys.argv[1], "w").write(f"{os.getpid()} {sleeper.pid}\\n")
        print("epoch=0")
        time.sleep(60)
    """)
    with pytest.raises(Stop):
        _run(tmp_path, [PY, str(child), str(tmp_path / "pids")], on_record=_raise_stop, grace_s=1.0)
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert all(_gone(pid) for pid in pids)


def test_what_a_child_leaves_running_when_it_exits_is_stopped_too(tmp_path):
    child = _script(tmp_path, """
        import subprocess, sys
        sleeper = subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL)  # keeps no pipe open
        open(sys.argv[1], "w").write(f"{sleeper.pid}\\n")
        print("acc=0.5")
    """)
    outcome, seen = _run(tmp_path, [PY, str(child), str(tmp_path / "pid")], grace_s=1.0)
    assert outcome.exit_code == 0 and seen == [{"acc": 0.5}]
    assert _gone(int((tmp_path / "pid").read_text()))


def test_a_timeout_stops_the_child_and_keeps_the_log(tmp_path):
    child = _script(tmp_path, """
        import os, sys, time
        open(sys.argv[1], "w").write(f"{os.getpid()}\\n")
        print("epoch=0 loss=1.0")
        time.sleep(60)
    """)
    with pytest.raises(CommandTimeout) as e:
        _run(tmp_path, [PY, str(child), str(tmp_path / "pid")], timeout_s=4, grace_s=0.5)  # time for Python to start on a busy machine
    message = str(e.value)
    assert "4 s" in message and "--trial-timeout" in message and "\n" not in message
    assert isinstance(e.value, CommandError) and e.value.log_path == tmp_path / "trial.log"
    assert _gone(int((tmp_path / "pid").read_text()))
    assert "epoch=0 loss=1.0" in (tmp_path / "trial.log").read_text()


def test_a_killed_worker_leaves_no_orphan_child(tmp_path):
    """The worker dies by SIGKILL, so nothing of it runs to stop the child: the kernel does."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    child = _script(tmp_path, """
        import os, sys, time
        open(sys.argv[1], "w").write(f"{os.getpid()}\\n")
        time.sleep(60)
    """)
    worker = _script(tmp_path, f"""
        import os, sys
        from pathlib import Path
        from tuner.command import run
        tmp = Path({str(tmp_path)!r})
        run([sys.executable, {str(child)!r}, str(tmp / "pid")], env=dict(os.environ), metrics_file=tmp / "m.jsonl",
            log_path=tmp / "trial.log", on_record=print)
    """, name="worker.py")
    proc = subprocess.Popen([PY, str(worker)], cwd=REPO)
    try:
        pid = int(_wait_for_file(tmp_path / "pid"))
        assert _alive(pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _gone(pid), "the trial's child outlived its worker"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_reaches_the_worker_which_ends_the_child(tmp_path):
    """A terminal's Ctrl-C goes to its foreground group: the worker's. The child, in its own
    session, does not see it; the worker stops it with SIGTERM, then raises KeyboardInterrupt."""
    child = _script(tmp_path, """
        import os, signal, sys, time
        out = sys.argv[1]
        def seen(signum, frame):
            open(out + ".signal", "w").write(signal.Signals(signum).name + "\\n")
            sys.exit(0)
        signal.signal(signal.SIGINT, seen)
        signal.signal(signal.SIGTERM, seen)
        open(out, "w").write(f"{os.getpid()}\\n")
        time.sleep(60)
    """)
    worker = _script(tmp_path, f"""
        import os, sys
        from pathlib import Path
        from tuner.command import run
        tmp = Path({str(tmp_path)!r})
        try:
            run([sys.executable, {str(child)!r}, str(tmp / "pid")], env=dict(os.environ), metrics_file=tmp / "m.jsonl",
                log_path=tmp / "trial.log", on_record=print)
        except KeyboardInterrupt:
            sys.exit(130)
    """, name="worker.py")
    proc = subprocess.Popen([PY, str(worker)], cwd=REPO, start_new_session=True)  # the worker's group stands for the terminal's
    try:
        pid = int(_wait_for_file(tmp_path / "pid"))
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert _gone(pid)
        assert (tmp_path / "pid.signal").read_text() == "SIGTERM\n"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["no-such-program-here", "--lr=1"], ["'no-such-program-here' not found", "PATH"]),
        (["./missing.py"], ["'./missing.py' not found", "python ./missing.py"]),
    ],
)
def test_a_program_that_is_not_there_is_one_line_naming_it(tmp_path, argv, words):
    with pytest.raises(CommandError) as e:
        _run(tmp_path, argv)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words)
    assert str(e.value) in (tmp_path / "trial.log").read_text()


def test_a_script_that_is_not_executable_is_one_line_with_the_fix(tmp_path):
    script = _script(tmp_path, "print('hi')\n", name="train.py")
    script.chmod(0o644)
    with pytest.raises(CommandError) as e:
        _run(tmp_path, [str(script)])
    assert "not executable" in str(e.value) and f"chmod +x {script}" in str(e.value)


def test_a_script_without_a_shebang_is_one_line_with_the_fix(tmp_path):
    script = _script(tmp_path, "print('hi')\n", name="train.py")
    script.chmod(0o755)
    with pytest.raises(CommandError) as e:
        _run(tmp_path, [str(script)])
    assert "#! line" in str(e.value)


def test_a_missing_working_folder_is_named(tmp_path):
    with pytest.raises(CommandError) as e:
        _run(tmp_path, [PY, "-c", "pass"], cwd=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value) and "does not exist" in str(e.value)


def test_the_child_runs_in_its_own_session_with_no_stdin(tmp_path):
    child = _script(tmp_path, """
        import os, sys
        print(f"new_session={int(os.getsid(0) == os.getpid())} stdin_bytes={len(sys.stdin.read())}")
    """)
    _, seen = _run(tmp_path, [PY, str(child)])
    assert seen == [{"new_session": 1.0, "stdin_bytes": 0.0}]


# --- tuner.reporting --------------------------------------------------------------------------


def test_report_appends_one_json_line_a_call(tmp_path, monkeypatch):
    path = tmp_path / "m.jsonl"
    monkeypatch.setenv("TUNER_METRICS_FILE", str(path))
    report(step=1, acc=0.5, loss=float("nan"))
    report(acc=1)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["step"] == 1 and first["acc"] == 0.5 and first["loss"] != first["loss"]
    assert json.loads(lines[1]) == {"acc": 1}


def test_report_prints_name_value_tokens_when_run_by_hand(capsys, monkeypatch):
    monkeypatch.delenv("TUNER_METRICS_FILE", raising=False)
    report(step=3, val_accuracy=0.91, loss=float("inf"))
    out = capsys.readouterr().out
    assert out == "step=3 val_accuracy=0.91 loss=inf\n"
    assert parse_stdout_line(out) == {"step": 3.0, "val_accuracy": 0.91, "loss": float("inf")}


def test_report_takes_numpy_scalars(tmp_path, monkeypatch):
    np = pytest.importorskip("numpy")
    path = tmp_path / "m.jsonl"
    monkeypatch.setenv("TUNER_METRICS_FILE", str(path))
    report(step=np.int64(2), acc=np.float32(0.5), n=np.int64(7))
    assert json.loads(path.read_text()) == {"step": 2, "acc": 0.5, "n": 7.0}


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"acc": "0.5"}, ["acc must be one number", "'0.5'", "str"]),
        ({"acc": [0.5]}, ["acc must be one number", "list"]),
        ({"done": True}, ["done must be one number"]),
        ({"step": 1.5, "acc": 0.5}, ["step must be an int", "1.5"]),
        ({"step": True, "acc": 0.5}, ["step must be an int"]),
        ({"step": 2}, ["at least one metric"]),
    ],
)
def test_report_refuses_what_is_not_a_number_naming_the_key(kwargs, words, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_METRICS_FILE", str(tmp_path / "m.jsonl"))
    with pytest.raises(TypeError) as e:
        report(**kwargs)
    assert all(w in str(e.value) for w in words)
    assert not (tmp_path / "m.jsonl").exists()


def test_report_refuses_a_tensor_of_several_values():
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match="loss must be one number"):
        report(loss=np.array([0.1, 0.2]))


def test_importing_report_imports_nothing_heavy():
    code = "import sys; from tuner.reporting import report; print(sorted(m for m in ('torch', 'optuna', 'numpy') if m in sys.modules))"
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
