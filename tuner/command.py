"""Any training script as a trial: a command template filled with one trial's parameters, run as a
child process whose metrics come back while it runs.

The flow for one trial: `check_template` once per study (before anything is written), then per
trial `expand` (the argv), `trial_env` (the environment) and `run` (start, watch, stop). The
script reports metrics either by appending JSON lines to $TUNER_METRICS_FILE (`tuner.reporting`
does it for them) or by printing `name=value` tokens on stdout, as Katib reads them.

POSIX only: the child gets its own process group, which is what is stopped, and on Linux it is
killed by the kernel if its worker dies.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.atomic import atomic_path
from tuner.errors import TunerError

__all__ = [
    "MACROS",
    "RESERVED",
    "CommandError",
    "CommandTimeout",
    "Outcome",
    "check_template",
    "default_reader",
    "expand",
    "parse_stdout_line",
    "pattern_reader",
    "run",
    "trial_env",
]

RESERVED = ("seed", "trial", "trial_dir")  # placeholders tuner fills itself
_RESERVED_MEANING = {"seed": "the trial's seed", "trial": "the trial's number", "trial_dir": "the trial's own folder for its outputs"}
MACROS = ("${args}", "${args_no_hyphens}", "${args_json_file}")  # each stands alone as one argv token

_POLL_S = 0.05  # how often the metrics file is looked at, and the longest a stop or timeout waits unseen
_DRAIN_S = 2.0  # after the child's group is gone, how long a process outside it may hold the pipes open
_CHUNK = 65536
_MAX_LINE = 1 << 20  # bytes of one unfinished line kept (a \r progress bar may never end its line)
_TAIL_LINES = 20
_TAIL_LINE_CHARS = 300

# {name} is a placeholder, {{name}} a literal {name}; other braces (JSON, dict literals) are text,
# and ${name} is a macro's.
_PLACEHOLDER = re.compile(r"(?<!\$)(?:\{\{([^\W\d]\w*)\}\}|\{([^\W\d]\w*)\})")
_MACRO = re.compile(r"\$\{([^}]*)\}")
_STDOUT_NAME = re.compile(r"[^\W\d][\w.\-/]*")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")


class CommandError(TunerError):
    """A trial command that cannot be filled in or started."""


class CommandTimeout(CommandError):
    """A trial command ran past its timeout and was stopped."""

    def __init__(self, timeout_s: float, log_path: Path) -> None:
        super().__init__(
            f"the trial command ran past its timeout of {timeout_s:g} s and was stopped (log: {log_path}); "
            "give it longer with --trial-timeout"
        )
        self.timeout_s = timeout_s
        self.log_path = log_path


# --- the template -----------------------------------------------------------------------------


def _split(template: str) -> list[str]:
    """The template's argv tokens, with the checks that need no parameter names."""
    try:
        tokens = shlex.split(template)
    except ValueError as e:
        raise CommandError(
            f"trial command {template!r}: {str(e).lower()}; close the quote, or escape it with a backslash"
        ) from None
    if not tokens:
        raise CommandError("the trial command is empty; give --command the command that trains one trial, e.g. 'python train.py --lr={lr}'")
    for token in tokens:
        for m in _MACRO.finditer(token):
            macro = m.group(0)
            if macro not in MACROS:
                close = difflib.get_close_matches(macro, MACROS, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise CommandError(
                    f"trial command: unknown macro {macro}; {hint}valid: {', '.join(MACROS)} "
                    "(no shell runs the command, so environment variables are not expanded: run it through sh -c '...' for that)"
                )
            if token != macro:
                raise CommandError(
                    f"trial command: {macro} must be an argument of its own, but got {token!r}; put spaces around it"
                )
    return tokens


def check_template(template: str, param_names: Collection[str]) -> list[str]:
    """Validate a trial command before anything is written, and return its argv tokens unfilled.

    Raises CommandError (one line: the bad token and the fix) for an empty command, an unclosed
    quote, a {placeholder} naming neither a parameter nor a RESERVED name, an unknown or embedded
    ${macro}, and a parameter named like a RESERVED placeholder. `{{name}}` is a literal `{name}`;
    braces around anything that is not a name (`{}`, `{"a": 1}`) are plain text."""
    for name in param_names:
        if name in RESERVED:
            raise CommandError(
                f"search-space parameter {name!r} has the name of tuner's own {{{name}}} placeholder "
                f"({_RESERVED_MEANING[name]}); rename the parameter in the search space"
            )
    tokens = _split(template)
    valid = sorted(param_names) + list(RESERVED)
    for token in tokens:
        for m in _PLACEHOLDER.finditer(token):
            name = m.group(2)
            if name is not None and name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f"did you mean {{{close[0]}}}? " if close else ""
                listed = ", ".join(f"{{{v}}}" for v in valid)
                raise CommandError(
                    f"trial command: unknown placeholder {{{name}}} in {token!r}; {hint}valid: {listed} "
                    f"(write {{{{{name}}}}} for a literal {{{name}}})"
                )
    return tokens


def _text(value: Any) -> str:
    """One parameter as command-line text: floats by repr (they read back bit for bit), booleans and
    None as JSON spells them (true, false, null: what Hydra, YAML and the JSON channels say too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _params_json(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), default=str)


def expand(template: str, params: Mapping[str, Any], *, seed: int, trial: int, args_json_file: Path, trial_dir: Path | None = None) -> list[str]:
    """One trial's argv. Call check_template first: here an unknown {name} is taken for an inactive one.

    - `{name}` -> the value, anywhere in a token (`--lr={lr}`); `{seed}`, `{trial}` -> the trial's;
      `{trial_dir}` -> the absolute path of `trial_dir`, the trial's own folder for its outputs.
      A token holding the placeholder of a parameter absent from `params` (an inactive conditional
      one) is left out whole, so write `--dropout={dropout}` as one token for the flag to go with it.
    - `${args}` -> one token `--name=value` per parameter in `params`, in its order (W&B's macro;
      W&B writes Python's True/False where tuner writes true/false).
    - `${args_no_hyphens}` -> `name=value` tokens (Hydra's overrides).
    - `${args_json_file}` -> the absolute path of `args_json_file`, which this function writes (the
      parameters as one JSON object) whenever the macro is used, so the path it passes exists.
    """
    tokens = _split(template)
    values = {name: _text(v) for name, v in params.items()}
    values.update(seed=str(seed), trial=str(trial))
    if trial_dir is not None:
        values["trial_dir"] = os.path.abspath(trial_dir)
    argv: list[str] = []
    for token in tokens:
        if token == "${args}":
            argv += [f"--{name}={_text(v)}" for name, v in params.items()]
        elif token == "${args_no_hyphens}":
            argv += [f"{name}={_text(v)}" for name, v in params.items()]
        elif token == "${args_json_file}":
            path = Path(os.path.abspath(args_json_file))
            with atomic_path(path, error=CommandError, hint="; the trial's ${args_json_file} goes there") as tmp:
                tmp.write_text(_params_json(params) + "\n")
            argv.append(str(path))
        else:
            filled = _fill(token, values)
            if filled is not None:
                argv.append(filled)
    if not argv:
        raise CommandError(f"trial command {template!r} is empty once trial {trial}'s inactive parameters are left out; start it with the program to run")
    return argv


def _fill(token: str, values: Mapping[str, str]) -> str | None:
    """The token with its placeholders filled, or None when one names an absent (inactive) parameter."""
    missing = False

    def one(m: re.Match[str]) -> str:
        nonlocal missing
        if m.group(1) is not None:
            return "{" + m.group(1) + "}"
        if m.group(2) not in values:
            missing = True
            return ""
        return values[m.group(2)]

    filled = _PLACEHOLDER.sub(one, token)
    return None if missing else filled


# --- the environment --------------------------------------------------------------------------


def trial_env(
    base: Mapping[str, str],
    *,
    params: Mapping[str, Any],
    study: str,
    trial: int,
    seed: int,
    metrics_file: Path,
    device: str,
    threads: int | None,
    trial_dir: Path | None = None,
) -> dict[str, str]:
    """The child's environment: `base` (the worker's), less every inherited TUNER_* variable (the
    storage URL in TUNER_STORAGE may carry a password, and an outer run's variables are not this
    trial's), plus:

    - TUNER_PARAMS (the parameters as a JSON object), TUNER_TRIAL, TUNER_STUDY, TUNER_SEED,
      TUNER_METRICS_FILE and TUNER_TRIAL_DIR (absolute, so a script that changes folder still
      finds them);
    - TUNER_DEVICE, the device as the child names it: `cuda:N` is the child's only GPU, `cuda:0`;
      `cpu`, `cuda`, `auto` and others pass as given (`auto`: the script picks);
    - CUDA_VISIBLE_DEVICES: `cuda:N` -> the N-th GPU the worker sees (counted within an inherited
      CUDA_VISIBLE_DEVICES, as torch counts), `cpu` -> '' (no GPU), others leave it as inherited;
    - OMP_NUM_THREADS and MKL_NUM_THREADS = `threads`, so that the children of several workers do
      not each take every core;
    - PYTHONUNBUFFERED=1 unless set: a Python script's prints reach tuner as they happen, not when a
      pipe's buffer fills (or the script ends), which would keep metrics from the pruner.
    """
    env = {k: v for k, v in base.items() if not k.startswith("TUNER_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(
        TUNER_PARAMS=_params_json(params),
        TUNER_TRIAL=str(trial),
        TUNER_STUDY=study,
        TUNER_SEED=str(seed),
        TUNER_METRICS_FILE=os.path.abspath(metrics_file),
        TUNER_DEVICE=device,
    )
    if trial_dir is not None:
        env["TUNER_TRIAL_DIR"] = os.path.abspath(trial_dir)
    gpu = re.fullmatch(r"cuda:(\d+)", device)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif gpu:
        env["CUDA_VISIBLE_DEVICES"] = _physical_gpu(int(gpu.group(1)), base.get("CUDA_VISIBLE_DEVICES"))
        env["TUNER_DEVICE"] = "cuda:0"
    if threads is not None:
        if threads < 1:
            raise CommandError(f"threads must be at least 1, but got {threads}; set --threads to 1 or more")
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _physical_gpu(index: int, inherited: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES entry of the worker's `index`-th visible GPU."""
    if inherited is None:
        return str(index)
    ids = [s.strip() for s in inherited.split(",") if s.strip()]
    if not ids:
        raise CommandError(
            f"device cuda:{index} asked for, but CUDA_VISIBLE_DEVICES={inherited!r} hides every GPU; unset it or use --device cpu"
        )
    if index >= len(ids):
        raise CommandError(
            f"device cuda:{index} is not one of the {len(ids)} GPU(s) CUDA_VISIBLE_DEVICES={inherited!r} leaves visible; "
            f"pick --device cuda:0 to cuda:{len(ids) - 1}"
        )
    return ids[index]


# --- metrics ----------------------------------------------------------------------------------


def parse_stdout_line(line: str) -> dict[str, float] | None:
    """The metrics on one stdout line, Katib's way: whitespace-separated `name=value` tokens whose
    value is a number (`epoch=3 val_accuracy=0.91 loss=nan`); other tokens are ignored, and a line
    with no such token is None. A token may end with ',' or ';' (`epoch=3, loss=0.2`). A name
    starts with a letter or '_' and may hold '.', '-', '/' (so `--lr=0.1`, an echoed flag, is not a
    metric). `nan` and `inf` are read as floats: what a non-finite metric means is the caller's.
    `name: value` is not read: that is how prose logs are written ('Epoch: 3', 'ETA: 5'), and
    it would turn them into metrics. The last of a repeated name wins (a `\\r` progress line)."""
    record: dict[str, float] = {}
    for token in line.split():
        name, sep, value = token.rstrip(",;").partition("=")
        if sep and _STDOUT_NAME.fullmatch(name):
            try:
                record[name] = float(value)
            except ValueError:
                continue
    return record or None


def _json_record(line: bytes) -> dict[str, float] | None:
    """One metrics-file line as a record: a JSON object's numeric values; anything else is None."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    record = {k: float(v) for k, v in obj.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return record or None


class _MetricsFile:
    """JSON lines the script appends to $TUNER_METRICS_FILE, read as they complete: a line without
    its newline may be half-written and waits, unless the writer is gone (`final`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(b"")  # a retried trial's old lines are not this run's
        except OSError as e:
            raise CommandError(f"cannot create the metrics file {self.path}: {e.strerror or e}; choose a writable folder") from None
        self._offset = 0
        self._partial = b""

    def poll(self, *, final: bool = False) -> list[dict[str, float]]:
        try:
            if os.stat(self.path).st_size > self._offset:
                with open(self.path, "rb") as f:
                    f.seek(self._offset)
                    data = f.read()
                self._offset += len(data)
                self._partial += data
        except FileNotFoundError:  # the script removed it: nothing more to read
            pass
        lines = self._partial.split(b"\n")
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return [r for r in map(_json_record, lines) if r is not None]


def _printable(raw: bytes) -> str:
    """A stderr line as a terminal would leave it (the text after its last \\r), colours and other
    control characters removed, cut to a bounded length."""
    line = raw.decode("utf-8", "replace").rstrip("\r").rsplit("\r", 1)[-1]
    line = "".join(c for c in _ANSI.sub("", line) if c.isprintable() or c == "\t").rstrip()
    return line if len(line) <= _TAIL_LINE_CHARS else line[: _TAIL_LINE_CHARS - 1] + "…"


class _Pipes:
    """The child's stdout and stderr, read in the calling thread (so `on_record` runs there, where it
    may raise). Both go to one log as the script wrote them, each piece cut at a line break (\\n or
    a progress bar's \\r) so the two streams never split each other's lines; stdout lines are parsed
    for metrics and stderr's last lines kept for a failure's reason."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Any, read_line: LineReader) -> None:
        self._log = log
        self._read_line = read_line
        self._sel = selectors.DefaultSelector()
        self._names: dict[int, str] = {}
        for name, pipe in (("out", proc.stdout), ("err", proc.stderr)):
            assert pipe is not None
            self._sel.register(pipe, selectors.EVENT_READ)
            self._names[pipe.fileno()] = name
        self._unlogged = {"out": b"", "err": b""}
        self._line = {"out": b"", "err": b""}
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)

    @property
    def open(self) -> bool:
        return bool(self._sel.get_map())

    def read(self, timeout: float, *, parse: bool = True) -> list[dict[str, float]]:
        """Whatever arrives within `timeout` seconds; the stdout records in it (none when not `parse`)."""
        if not self.open:
            time.sleep(timeout)
            return []
        records: list[dict[str, float]] = []
        for key, _ in self._sel.select(timeout):
            name = self._names[key.fd]
            data = os.read(key.fd, _CHUNK)
            if not data:
                self._sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
            records += self._take(name, data, parse=parse)
        return records

    def _take(self, name: str, data: bytes, *, parse: bool) -> list[dict[str, float]]:
        eof = not data
        unlogged = self._unlogged[name] + data
        cut = len(unlogged) if eof or len(unlogged) > _MAX_LINE else max(unlogged.rfind(b"\n"), unlogged.rfind(b"\r")) + 1
        if cut:
            self._log.write(unlogged[:cut])
        self._unlogged[name] = unlogged[cut:]

        lines = (self._line[name] + data).split(b"\n")
        rest = b"" if eof else lines.pop()
        self._line[name] = rest if len(rest) <= _MAX_LINE else rest[-_MAX_LINE:]
        if name == "err":
            self._tail.extend(p for p in map(_printable, lines) if p)
        if not parse:
            return []
        return [r for r in (self._read_line(name, line.decode("utf-8", "replace")) for line in lines) if r is not None]

    def drain(self, *, parse: bool) -> list[dict[str, float]]:
        """Read to the end of both pipes; a process outside the child's group (one that left it with
        setsid) that still holds them is given _DRAIN_S, then the rest of its output is not logged."""
        records: list[dict[str, float]] = []
        deadline = time.monotonic() + _DRAIN_S
        while self.open and time.monotonic() < deadline:
            records += self.read(_POLL_S, parse=parse)
        for key in list(self._sel.get_map().values()):
            self._sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
            records += self._take(self._names[key.fd], b"", parse=parse)
        self._sel.close()
        return records

    @property
    def stderr_tail(self) -> str:
        pending = _printable(self._line["err"])
        return "\n".join([*self._tail, pending] if pending else self._tail)[-_TAIL_LINES * _TAIL_LINE_CHARS :]


LineReader = Callable[[str, str], "dict[str, float] | None"]  # (stream: "out" or "err", line) -> a metrics record


def default_reader(stream: str, line: str) -> dict[str, float] | None:
    """Without patterns: `name=value` tokens on stdout (parse_stdout_line); stderr is not read."""
    return parse_stdout_line(line) if stream == "out" else None


def pattern_reader(reader: Any) -> LineReader:
    """A study's metric patterns (a tuner.patterns.OutputReader) on both streams, then the
    `name=value` tokens of stdout; a pattern's value wins over a token of the same name. A group
    that captured something not a number ends the trial as failed, saying so."""

    def read(stream: str, line: str) -> dict[str, float] | None:
        try:
            matched = reader.line(_ANSI.sub("", line.rstrip("\r").rsplit("\r", 1)[-1]))  # as a terminal shows it
        except ValueError as e:
            raise CommandError(str(e)) from None
        tokens = default_reader(stream, line)
        if tokens and matched:
            return {**tokens, **matched}
        return matched or tokens

    return read


# --- the child --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How a trial's command ended. It ran to its end: a stopped one raised instead."""

    exit_code: int  # the child's exit status; negative: killed by that signal
    records: list[dict[str, float]]  # every metrics record seen, in order, from both channels
    stderr_tail: str  # the last lines of stderr, printable, bounded (a failure's reason)
    duration_s: float  # from start to the end of the child and its output
    log_path: Path  # stdout and stderr as the script wrote them


_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved in the worker: the forked child must not import or look anything up
    (another thread of the worker may hold a lock the child would wait on for ever)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _die_with_worker() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGKILL the child when its worker dies, even by kill -9, so
    no trial runs on unwatched; None where prctl is missing. The signal comes when the *thread* that
    started the child ends: run() blocks that thread until the child is gone, so this holds from
    any thread, and the worker's main thread is where run() is meant to be called."""
    prctl = _prctl()
    if prctl is None:
        return None
    worker = os.getpid()
    kill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, kill)
        if os.getppid() != worker:  # the worker died before prctl: the signal would never come
            os.kill(os.getpid(), kill)

    return preexec


def _start(argv: list[str], *, env: Mapping[str, str], cwd: Path | None) -> subprocess.Popen[bytes]:
    program = argv[0]
    try:
        return subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,  # a trial is not interactive: input() ends at once instead of waiting
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group: stopped as one, and the terminal's Ctrl-C goes to the worker only
            preexec_fn=_die_with_worker(),
        )
    except FileNotFoundError as e:
        if cwd is not None and e.filename is not None and os.fspath(e.filename) == os.fspath(cwd):
            raise CommandError(f"cannot start the trial command in {cwd}: the folder does not exist; create it or change the working folder") from None
        raise CommandError(
            f"cannot start the trial command: {program!r} not found; give its path, put it on PATH, or run it through its interpreter (python {program})"
        ) from None
    except PermissionError:
        raise CommandError(
            f"cannot start the trial command: {program!r} is not executable; chmod +x {program}, or run it through its interpreter (python {program})"
        ) from None
    except OSError as e:
        raise CommandError(
            f"cannot start the trial command {program!r}: {e.strerror or e}; if it is a script, give it a #! line or run it through its interpreter"
        ) from None


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    """Whether any process of the child's group still runs. A zombie does not count: no signal ends
    it, and its reaper may be slow, or (a container's init that does not reap) never come."""
    proc.poll()  # reaps the child itself once it ends
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _running_in_group(proc.pid)


def _running_in_group(pgid: int) -> bool:
    """Linux: whether /proc shows a member of `pgid` that is not a zombie; elsewhere assume so."""
    try:
        entries = os.scandir("/proc")
    except OSError:
        return True
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:  # it ended while we looked
                continue
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            state, _ppid, pgrp = stat.rsplit(b")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != b"Z":
                return True
    return False


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """End the child and every process of its group: SIGTERM, then SIGKILL to those left after
    `grace_s` (at once on a second Ctrl-C). Returns once the child is reaped."""
    try:
        if not _group_alive(proc):
            return
        _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _group_alive(proc) and time.monotonic() < deadline:
            time.sleep(min(_POLL_S, grace_s))
    finally:
        if _group_alive(proc):
            _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _open_log(log_path: Path) -> Any:
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return open(log_path, "wb", buffering=0)  # unbuffered: `tail -f` shows each line as it comes
    except OSError as e:
        raise CommandError(f"cannot write the trial log {log_path}: {e.strerror or e}; choose a writable folder") from None


def run(
    argv: list[str],
    *,
    env: Mapping[str, str],
    metrics_file: Path,
    log_path: Path,
    on_record: Callable[[dict[str, float]], None],
    timeout_s: float | None = None,
    grace_s: float = 5.0,
    cwd: Path | None = None,
    read_line: LineReader = default_reader,
) -> Outcome:
    """Run one trial's command to its end and return how it ended (a non-zero exit included).

    The child starts directly (no shell), with no stdin, in its own session; on Linux the kernel
    kills it if the worker dies (see _die_with_worker: call run() from the worker's main thread).
    Its stdout and stderr both go to `log_path` (replaced), as written.

    Metrics records reach `on_record`, in the calling thread, in the order tuner sees them (each
    channel in its own order; between them, within _POLL_S): the JSON objects the script appends to
    `metrics_file` (emptied first; a line counts once its newline is written) and the `name=value`
    lines of its stdout (or what `read_line` reads on either stream). After the child exits, the records still on their way are delivered.

    Stopping: if `on_record` raises (the pruner's TrialPruned), or anything interrupts the wait
    (Ctrl-C, SIGTERM made KeyboardInterrupt, SystemExit), the child's group gets SIGTERM, then
    SIGKILL after `grace_s`, and the exception is re-raised once the child is gone. Past
    `timeout_s` the same stop ends in CommandTimeout. Processes the child leaves in its group when
    it exits by itself are stopped the same way: a trial leaves nothing running.
    """
    if not argv:
        raise CommandError("the trial command is empty; give --command the command that trains one trial")
    log_path = Path(log_path)
    metrics = _MetricsFile(metrics_file)
    log = _open_log(log_path)
    records: list[dict[str, float]] = []

    def deliver(new: list[dict[str, float]]) -> None:
        for record in new:
            records.append(record)
            on_record(record)

    with log:
        try:
            proc = _start(argv, env=env, cwd=cwd)
        except CommandError as e:
            log.write(f"{e}\n".encode())
            raise
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        pipes = _Pipes(proc, log, read_line)
        try:
            while proc.poll() is None:
                wait = _POLL_S
                if deadline is not None:
                    if time.monotonic() >= deadline:
                        raise CommandTimeout(timeout_s, log_path)  # type: ignore[arg-type]
                    wait = min(wait, deadline - time.monotonic())
                deliver(pipes.read(max(wait, 0.0)))
                deliver(metrics.poll())
        except BaseException:
            _stop(proc, grace_s)
            pipes.drain(parse=False)  # the last words go to the log; the trial is over for the caller
            raise
        _stop(proc, grace_s)  # what the child left running in its group
        last = pipes.drain(parse=True)
        deliver(last + metrics.poll(final=True))
        return Outcome(
            exit_code=proc.returncode,
            records=records,
            stderr_tail=pipes.stderr_tail,
            duration_s=time.monotonic() - started,
            log_path=log_path,
        )
