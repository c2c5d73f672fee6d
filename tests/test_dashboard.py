"""`tuner dashboard` as a real server process, read by a real headless Chromium: a finished study,
a study of two metrics with its Pareto front, a study that two workers are writing, a study in
PostgreSQL, artifacts, the loopback default, and the one-line errors. Browser tests skip (saying why) without Chromium or playwright, unless
TUNER_REQUIRE_BROWSER=1 (CI), where they fail."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import optuna
import pytest
import sqlalchemy

from tests.conftest import REPO, copy_sqlite
from tuner.health import VERDICTS
from tuner.storage import open_storage

try:  # without it the browser tests skip, or fail where TUNER_REQUIRE_BROWSER=1
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:
    sync_playwright = None

pytestmark = [pytest.mark.slow, pytest.mark.dashboard]

TUNER = str(Path(sys.executable).with_name("tuner"))
SQLITE = "sqlite:///studies/tuner.db"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 15_000


# -- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """The system's headless Chromium driven by playwright (never a downloaded browser)."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"no browser: {CHROMIUM} is missing (`make setup` as root installs it, or apt-get install chromium)"
    elif sync_playwright is None:
        reason = "playwright is not installed (pip install -e '.[test]')"
    if reason is not None:
        if os.environ.get("TUNER_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _shown_trial_count(page: Page, *, above: int = 0, timeout: float = UI_TIMEOUT_MS / 1000) -> int:
    """The "N Trials" heading of the study's trial list, once it shows more than `above` (it reads
    "0 Trials" until the first poll has answered)."""
    heading = page.get_by_text(re.compile(r"^\d+ Trials$"))
    deadline = time.monotonic() + timeout
    while True:
        n = int(heading.inner_text().split()[0])
        if n > above or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


def _as_javascript(x: float) -> str:
    """A value as the dashboard prints it (JavaScript's Number#toString): the shortest digits that
    read back to the same float, like Python's repr, but 1 rather than 1.0."""
    return str(int(x)) if x.is_integer() else repr(x)


# -- the server -------------------------------------------------------------------------------


@dataclass
class Dashboard:
    url: str  # http://127.0.0.1:PORT/
    port: int
    proc: subprocess.Popen
    log: Path  # its stdout and stderr

    def output(self) -> str:
        return self.log.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _dashboard(*args: str, log: Path, env: dict[str, str] | None = None) -> Iterator[Dashboard]:
    """`tuner dashboard ARGS --port FREE` as a subprocess, ready for HTTP; always stopped after."""
    port = _free_port()
    with log.open("w") as out:  # a file, not a pipe nobody reads: a full pipe would stall the server
        proc = subprocess.Popen([TUNER, "dashboard", *args, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    dash = Dashboard(f"http://127.0.0.1:{port}/", port, proc, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"tuner dashboard exited with {proc.returncode}:\n{dash.output()}")
            try:
                with urllib.request.urlopen(dash.url + "api/meta", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"tuner dashboard not answering on {dash.url} after 30 s:\n{dash.output()}")
            time.sleep(0.1)
        yield dash
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (from /proc/net, so no `ss` needed)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, raw))
    return found


# -- studies ----------------------------------------------------------------------------------


def _run_study(name: str, *args: str, cwd: Path | None = None) -> None:
    r = subprocess.run([TUNER, "study", "run", name, "--space", "tiny", *args, "-q"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def finished_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 5-trial tuner study, 'watched', run once for this module's tests to copy."""
    root = tmp_path_factory.mktemp("finished")
    shutil.copytree(REPO / "search_spaces", root / "search_spaces")
    _run_study("watched", "--trials", "5", "--storage", SQLITE, cwd=root)
    return root / "studies" / "tuner.db"


@pytest.fixture
def watched(project: Path, finished_db: Path) -> optuna.Study:
    """That study, copied into this test's project as its default storage."""
    copy_sqlite(finished_db, Path("studies/tuner.db"))
    return _load(SQLITE, "watched")


def _load(url: str, name: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=url)


def _n_complete_readonly(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0  # the tables are not there yet


def _wait_for(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (KeyError, ValueError, optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError):
            pass  # the study (or its tables) may not exist yet
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _check_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.load()
        width, height = img.size
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert width >= 1000 and height >= 800, img.size
    # a blank or half-rendered page has a handful of colours; plots and text have hundreds
    assert len(colors) > 100, f"{path} looks blank: {len(colors)} colours"


# -- a finished study, in the browser ---------------------------------------------------------


def test_finished_study_is_listed_and_its_page_shows_trials_and_best_value(watched: optuna.Study, page: Page, tmp_path: Path) -> None:
    study_id = watched._study_id
    best = watched.best_trial
    with _dashboard(log=tmp_path / "dashboard.log") as dash:
        page.goto(dash.url)
        link = page.locator(f'a[href="/dashboard/studies/{study_id}"]')
        expect(link).to_contain_text("watched")
        link.click()
        expect(page).to_have_url(f"{dash.url}dashboard/studies/{study_id}")
        body = page.locator("body")
        expect(body).to_contain_text(f"watched (id={study_id})")
        expect(body).to_contain_text(f"Best Trial (number={best.number})")
        expect(body).to_contain_text(_as_javascript(best.value))
        expect(page.locator(".js-plotly-plot").first).to_be_visible()  # the history plot drew
        expect(page.locator("#plot-history .ytitle")).to_have_text("val_accuracy")  # the metric by its name
        page.wait_for_load_state("networkidle")
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=shot, full_page=True)

        page.locator(f'a[href="/dashboard/studies/{study_id}/trials"]').click()
        assert _shown_trial_count(page) == 5
    _check_png(shot)
    kept = REPO / "out" / "dashboard.png"  # out/ is git-ignored: a copy to look at after the run
    kept.parent.mkdir(exist_ok=True)
    shutil.copy(shot, kept)


def test_a_study_larger_than_the_window_shows_its_latest_trials_and_its_best(watched: optuna.Study, page: Page, tmp_path: Path) -> None:
    """`--window 2` on the 5-trial study: the page holds trials 3 and 4 and the best before them,
    its best trial card is the study's best, and the server says which trials the page shows.
    (At 100,000 trials the default window keeps the page to seconds: docs/studies.md.)"""
    study_id = watched._study_id
    best = watched.best_trial
    earlier = [t for t in watched.trials if t.number < 3 and t.state == optuna.trial.TrialState.COMPLETE]
    shown = {max(earlier, key=lambda t: t.value).number, 3, 4}
    with _dashboard("--window", "2", log=tmp_path / "dashboard.log") as dash:
        page.goto(f"{dash.url}dashboard/studies/{study_id}")
        expect(page.locator("body")).to_contain_text(f"Best Trial (number={best.number})")
        page.goto(f"{dash.url}dashboard/studies/{study_id}/trials")
        assert _shown_trial_count(page) == len(shown)
        assert "'watched': the dashboard shows its trials from #3 on (2 now) and 1 best before them, of 5" in dash.output()


# -- a study of two metrics ------------------------------------------------------------------


UNNAMED = re.compile(r"Objective \d")  # what the dashboard calls a metric the study did not name


def _pareto_front_drawn(page: Page) -> list[int]:
    """The numbers of the trials the Pareto front plot draws as its best: read from the plot's own
    data (plotly keeps it on the element), each point's hover text being its trial as JSON."""
    traces = page.locator("#graph-pareto-front").evaluate("plot => plot.data.map(trace => [trace.hovertemplate, trace.text])")
    return sorted(json.loads(text.replace("<br>", ""))["number"] for template, texts in traces if template.endswith("<extra>Best Trial</extra>") for text in texts)


def test_a_two_metric_study_is_shown_with_its_metric_names_and_pareto_front(project: Path, page: Page, tmp_path: Path) -> None:
    """`--metric val_accuracy --metric params:minimize`: the study's pages call each value by its
    metric's name (Optuna's metric names, which tuner sets), never "Objective 0", and its page draws
    every trial on a Pareto front whose best trials are the study's own."""
    # The run and the dashboard each spend seconds importing: both start at once, on a storage
    # that is there before either (the dashboard refuses a missing one).
    open_storage(SQLITE, create=True)
    run = subprocess.Popen(
        [TUNER, "study", "run", "front", "--space", "tiny", "--metric", "val_accuracy", "--metric", "params:minimize", "--trials", "3", "--pruner", "none", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with _dashboard(log=tmp_path / "dashboard.log") as dash:
            _, err = run.communicate(timeout=300)
            assert run.returncode == 0, err
            study = _load(SQLITE, "front")
            study_id, complete = study._study_id, study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            assert len(complete) == 3
            body = page.locator("body")
            page.goto(f"{dash.url}dashboard/studies/{study_id}")
            expect(body).to_contain_text(f"front (id={study_id})")
            expect(body).to_contain_text("Pareto Front")
            for axis, name in (("Objective X:", "val_accuracy"), ("Objective Y:", "params")):  # unnamed, these read 0 and 1
                expect(page.locator("fieldset").filter(has_text=axis).get_by_role("combobox")).to_have_text(name)
            expect(page.locator("#graph-pareto-front .point")).to_have_count(len(complete))
            assert _pareto_front_drawn(page) == sorted(t.number for t in study.best_trials)
            expect(page.locator("#plot-history .ytitle")).to_have_text("val_accuracy")
            expect(page.locator("#graph-hyperparameter-importances .legendtext")).to_have_text(["val_accuracy", "params"])
            expect(body).not_to_contain_text(UNNAMED)

            page.get_by_role("link", name="Analytics", exact=True).click()
            expect(body).to_contain_text("EDF for val_accuracy")
            expect(body).to_contain_text("EDF for params")
            expect(body).not_to_contain_text(UNNAMED)

            page.get_by_role("link", name="Smart Selection", exact=True).click()
            expect(page.locator("#plot-parallel-coordinate .axis-title")).to_contain_text(["val_accuracy", "params"])
            expect(body).not_to_contain_text(UNNAMED)

            # a trial's page: both of its values, and what tuner measured (its user attributes)
            trial = study.best_trials[0]
            page.goto(f"{dash.url}dashboard/studies/{study_id}/trials?numbers={trial.number}")
            expect(body).to_contain_text(f"Trial {trial.number} (trial_id={trial._trial_id})")
            expect(body).to_contain_text(", ".join(_as_javascript(v) for v in trial.values))
            expect(page.get_by_text(f"params {trial.user_attrs['params']}", exact=True)).to_be_visible()
            # and its verdict on its training, in words (tuner.health): what went wrong and the fix
            verdict = trial.user_attrs["verdict"]
            assert verdict.split(":")[0] in VERDICTS, verdict
            expect(page.get_by_text(f"verdict {verdict}", exact=True)).to_be_visible()
            expect(body).not_to_contain_text(UNNAMED)
    finally:
        if run.poll() is None:  # the dashboard failed to start: the run is not left behind
            run.kill()
            run.communicate()


# -- a study being written by two workers -----------------------------------------------------


# Trials that wait at gates the test opens: the study is still running at each look, whatever the
# machine's speed (trials 10-19 wait for the file gate-1, 20-29 for gate-2).
GATED_OBJECTIVE = """
import os, time

def objective(trial):
    gate = f"gate-{trial.number // 10}"
    while trial.number >= 10 and not os.path.exists(gate):
        time.sleep(0.02)
    return trial.params["x"]
"""


def test_trial_count_rises_in_the_browser_while_two_workers_write(project: Path, page: Page, tmp_path: Path) -> None:
    Path("gated_live.py").write_text(GATED_OBJECTIVE)
    Path("search_spaces/gated.yaml").write_text("params:\n  x: {type: float, low: 0.0, high: 1.0}\n")
    env = {**os.environ, "TUNER_HEARTBEAT": "1", "PYTHONPATH": str(project)}
    budget = 30
    created = subprocess.run(
        [TUNER, "study", "create", "live", "--space", "gated", "--objective", "gated_live:objective", "--metric", "x", "--direction", "maximize",
         "--trials", str(budget), "--pruner", "none"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    study_id = _load(SQLITE, "live")._study_id
    # the dashboard is up and showing the empty study before any worker starts: no race with its start
    with _dashboard(log=tmp_path / "dashboard.log") as dash:
        page.goto(f"{dash.url}dashboard/studies/{study_id}/trials")
        assert _shown_trial_count(page, timeout=2) == 0
        run = subprocess.Popen(
            [TUNER, "study", "run", "live", "--workers", "2", "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            def n_complete_at_least(n: int) -> Callable[[], bool]:
                def check() -> bool:
                    assert run.poll() is None, f"the study ended early: {run.communicate()[1]}"
                    return _n_complete_readonly(Path("studies/tuner.db")) >= n
                return check

            _wait_for(n_complete_at_least(10), timeout=120, what="the first ten trials")
            page.reload()
            first = _shown_trial_count(page, above=9)
            assert 10 <= first <= 12, first  # ten finished, the next two (one a worker) waiting at gate-1
            Path("gate-1").write_text("")
            _wait_for(n_complete_at_least(20), timeout=120, what="ten more trials")
            page.reload()
            second = _shown_trial_count(page, above=first)
            assert first < second and 20 <= second <= 22, (first, second)
            Path("gate-2").write_text("")
            # the study finishes cleanly beside the dashboard, which then shows the whole budget
            _, err = run.communicate(timeout=180)
            assert run.returncode == 0, err
            page.reload()
            assert _shown_trial_count(page, above=budget - 1) == budget
            expect(page.locator("body")).not_to_contain_text("Running")
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGTERM)  # stops its workers, closing their trials
                run.communicate(timeout=60)


# -- PostgreSQL -------------------------------------------------------------------------------


def test_study_in_postgresql_is_shown_and_the_password_masked(project: Path, page: Page, pg_url: str, tmp_path: Path) -> None:
    secret = "s3cr3t-Pa55"
    url = pg_url.replace("postgres@", f"postgres:{secret}@")  # trust auth accepts any password
    assert secret in url
    _run_study("pg_watched", "--trials", "3", "--storage", url)
    study = _load(pg_url, "pg_watched")
    with _dashboard("--storage", url, log=tmp_path / "dashboard.log") as dash:
        page.goto(f"{dash.url}dashboard/studies/{study._study_id}")
        body = page.locator("body")
        expect(body).to_contain_text(f"pg_watched (id={study._study_id})")
        expect(body).to_contain_text(_as_javascript(study.best_value))
        page.goto(f"{dash.url}dashboard/studies/{study._study_id}/trials")
        assert _shown_trial_count(page) == 3
        banner = dash.output()
    assert "postgres:***@" in banner and secret not in banner


# -- binding and errors (no browser) ----------------------------------------------------------


@pytest.fixture
def storage(project: Path) -> str:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.create_study(study_name="empty", storage=SQLITE)
    return SQLITE


def test_binds_to_loopback_by_default_and_prints_where(storage: str, tmp_path: Path) -> None:
    with _dashboard(log=tmp_path / "dashboard.log") as dash:
        assert _listening_addresses(dash.port) == {"127.0.0.1"}
        lines = dash.output().splitlines()
    assert lines == [f"optuna-dashboard for {storage} at http://127.0.0.1:{dash.port}/ (artifacts: studies/artifacts; Ctrl-C stops it)"]
    assert Path("studies/artifacts").is_dir()  # the default artifact store, created


def test_binds_to_every_interface_only_when_asked_and_warns(storage: str, tmp_path: Path) -> None:
    with _dashboard("--host", "0.0.0.0", log=tmp_path / "dashboard.log") as dash:
        assert _listening_addresses(dash.port) == {"0.0.0.0"}
        output = dash.output()
    assert f"at http://0.0.0.0:{dash.port}/" in output
    assert f"warning: listening on 0.0.0.0: anyone who reaches this host on port {dash.port} can read and change the studies" in output


def test_a_taken_port_is_a_one_line_error(storage: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([TUNER, "dashboard", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"error: cannot serve on 127.0.0.1:{port}: Address already in use; pick another --port or --host"]


def test_an_unreachable_storage_is_a_one_line_error_with_the_password_masked(project: Path) -> None:
    secret = "s3cr3t-Pa55"
    url = f"postgresql+psycopg://postgres:{secret}@127.0.0.1:1/tuner"  # nothing listens on port 1
    r = subprocess.run([TUNER, "dashboard", "--storage", url, "--port", str(_free_port())], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("error: cannot open storage postgresql+psycopg://postgres:***@127.0.0.1:1/tuner")
    assert secret not in r.stderr + r.stdout


# -- artifacts --------------------------------------------------------------------------------


def test_artifacts_on_the_best_trial_and_the_study_are_linked(watched: optuna.Study, page: Page, tmp_path: Path) -> None:
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    study = watched
    folder = tmp_path / "attached"  # not there yet: the dashboard creates it
    with _dashboard("--artifacts", str(folder), log=tmp_path / "dashboard.log") as dash:
        assert folder.is_dir()
        store = FileSystemArtifactStore(folder)
        notes, summary = tmp_path / "notes.txt", tmp_path / "summary.txt"
        notes.write_text("weights of the best trial\n")
        summary.write_text("what the study found\n")
        # Optuna attaches files to a trial only while it runs (a finished trial is read-only), so
        # this one is told a perfect accuracy after the upload, which makes it the best trial.
        trial = study.ask()
        trial_artifact = upload_artifact(artifact_store=store, file_path=str(notes), study_or_trial=trial)
        study.tell(trial, 1.0)
        assert study.best_trial.number == trial.number
        study_artifact = upload_artifact(artifact_store=store, file_path=str(summary), study_or_trial=study)

        page.goto(f"{dash.url}dashboard/studies/{study._study_id}/trials?numbers={trial.number}")
        expect(page.locator("body")).to_contain_text(f"Trial {trial.number} (trial_id={trial._trial_id})")
        link = page.locator(f'a[href="/artifacts/{study._study_id}/{trial._trial_id}/{trial_artifact}"]')
        expect(link).to_have_attribute("download", "notes.txt")
        assert page.request.get(dash.url + link.get_attribute("href").lstrip("/")).body() == notes.read_bytes()

        page.goto(f"{dash.url}dashboard/studies/{study._study_id}")
        expect(page.locator("body")).to_contain_text("Study Artifacts")
        link = page.locator(f'a[href="/artifacts/{study._study_id}/{study_artifact}"]')
        expect(link).to_have_attribute("download", "summary.txt")
        assert page.request.get(dash.url + link.get_attribute("href").lstrip("/")).body() == summary.read_bytes()


def test_a_command_trial_s_log_is_linked_from_its_trial_page(project: Path, page: Page, tmp_path: Path) -> None:
    """Each --command trial keeps its script's output as a log artifact: the dashboard's trial
    page links it, and the link serves what the script printed."""
    (project / "say.py").write_text("import sys\nprint('hello from trial', sys.argv[1])\nprint(f'epoch=1 score={float(sys.argv[2]):.3f}')\n")
    (project / "search_spaces" / "say.yaml").write_text("params:\n  x: {type: float, low: 0.0, high: 1.0}\n")
    command = f"{sys.executable} say.py {{trial}} {{x}}"
    result = subprocess.run(
        [TUNER, "study", "run", "say", "--space", "say", "--command", command, "--metric", "score", "--direction", "maximize", "--trials", "2", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    study = _load("sqlite:///studies/tuner.db", "say")
    trial = study.trials[1]
    with _dashboard(log=tmp_path / "dashboard.log") as dash:
        page.goto(f"{dash.url}dashboard/studies/{study._study_id}/trials?numbers={trial.number}")
        expect(page.locator("body")).to_contain_text(f"Trial {trial.number} (trial_id={trial._trial_id})")
        link = page.locator(f'a[href="/artifacts/{study._study_id}/{trial._trial_id}/{trial.user_attrs["log_artifact"]}"]')
        expect(link).to_have_attribute("download", "trial-1.log")
        body = page.request.get(dash.url + link.get_attribute("href").lstrip("/")).body().decode()
        assert "hello from trial 1" in body and "epoch=1 score=" in body


def test_constraints_reach_the_dashboard_and_its_best_of_one_metric_is_feasible(project: Path, tmp_path: Path) -> None:
    """Optuna 5 stores each constraint under its own key, which optuna-dashboard does not read:
    served by `tuner dashboard`, infeasible trials carry their constraint values and the best
    trial of a one-metric study is the best feasible one (Optuna's own pick), not the storage's."""
    _run_study("one", "--constraint", "params<=2000", "--trials", "6", "--pruner", "none", "--seed", "1")
    _run_study("two", "--metric", "val_accuracy", "--metric", "params:minimize", "--constraint", "params<=2000", "--trials", "6", "--pruner", "none")
    with _dashboard("--storage", SQLITE, log=tmp_path / "dash.log") as dash:
        for name in ("one", "two"):
            study = _load(SQLITE, name)
            shown = json.load(urllib.request.urlopen(f"{dash.url}api/studies/{study._study_id}", timeout=30))
            by_number = {t.number: t for t in study.get_trials()}
            infeasible = [t for t in shown["trials"] if t["state"] == "Complete" and by_number[t["number"]].user_attrs.get("violated")]
            assert infeasible, f"{name}: the space must give an infeasible trial"
            for t in shown["trials"]:
                if t["state"] == "Complete":
                    assert t["constraints"] == list(by_number[t["number"]].constraints.values())
            if name == "one":
                assert [t["number"] for t in shown["best_trials"]] == [study.best_trial.number]
                assert by_number[study.best_trial.number].user_attrs["params"] <= 2000
