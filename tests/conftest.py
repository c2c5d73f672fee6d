"""Shared fixtures: a throwaway project folder, the CLI entry point in-process, and real PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests run side by side (pytest-xdist) and each torch takes every core: OpenMP threads that sleep,
# rather than spin, while they wait for one leave the cores to the tests' other processes. Set
# before any test imports torch; inherited by every tuner process a test starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped search_spaces/ and studies/ specs in a temp folder, made the cwd, so
    the default storage (studies/tuner.db) is this test's own."""
    shutil.copytree(REPO / "search_spaces", tmp_path / "search_spaces")
    (tmp_path / "studies").mkdir()
    for spec in (REPO / "studies").glob("*.yaml"):
        shutil.copy(spec, tmp_path / "studies" / spec.name)
    shutil.copytree(REPO / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    return tmp_path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run `tuner ARGS` through the real entry point (error handling included), in-process."""
    from tuner.cli import main

    def run(*args: str, input: str | None = None) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["tuner", *args])
        if input is not None:
            import io

            monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def copy_sqlite(src: Path, dst: Path) -> None:
    """A SQLite database copied whole (what is still in its -wal file included), as a test's own."""
    import sqlite3

    dst.parent.mkdir(parents=True, exist_ok=True)
    source, target = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def _postgres_admin_url() -> str:
    return os.environ.get("TUNER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_url() -> str:
    """A fresh PostgreSQL database for one test, dropped afterwards. Skips (with the reason) where
    no server runs, unless TUNER_REQUIRE_POSTGRES=1 (CI), where it fails instead."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(_postgres_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as e:
        admin.dispose()
        reason = f"PostgreSQL not reachable at {_postgres_admin_url()}: {str(e).splitlines()[0]}"
        if os.environ.get("TUNER_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"tuner_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sqlalchemy.engine.make_url(_postgres_admin_url()).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the fewest server connections tuner needs (docs/clusters.md), far fewer than the tests' 8 workers: a worker
# waiting for the study lock, or opening its storage, must not hold one while it waits for another
PGBOUNCER_POOL_SIZE = 2


@pytest.fixture
def pgbouncer_url(pg_url: str):
    """pg_url's database reached through a PgBouncer of this test's own (its own port, folder,
    ini and userlist; never the system's service) in transaction pooling, as
    `...?pgbouncer=transaction`; the PgBouncer's log path is the fixture's `.log`. Skips (with the
    reason) where pgbouncer is not installed, unless TUNER_REQUIRE_PGBOUNCER=1 (CI): then it fails."""
    import pwd
    import signal
    import subprocess
    import tempfile
    import time

    import psycopg
    import sqlalchemy

    binary = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None)
    if binary is None:
        reason = "pgbouncer is not installed (apt-get install pgbouncer)"
        if os.environ.get("TUNER_REQUIRE_PGBOUNCER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    server = sqlalchemy.engine.make_url(pg_url)
    folder = Path(tempfile.mkdtemp(prefix="tuner-pgbouncer-"))
    port = _free_port()
    (folder / "userlist.txt").write_text(f'"{server.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.host} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'userlist.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {PGBOUNCER_POOL_SIZE}\nmax_client_conn = 500\n"
        "query_wait_timeout = 60\n"  # a client waits this long for a server connection, then fails: no silent hang
        f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n"
    )
    argv = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root: as the database's own user, in a folder it owns
        user = pwd.getpwnam("postgres")
        for path in [folder, *folder.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
        argv[1:1] = ["-u", "postgres"]
    url = server.set(port=port).update_query_dict({"pgbouncer": "transaction"}).render_as_string(hide_password=False)
    conninfo = f"host=127.0.0.1 port={port} user={server.username} dbname={server.database}"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(conninfo, connect_timeout=2).close()
                return proc
            except psycopg.OperationalError as e:
                log = (folder / "pgbouncer.log").read_text() if (folder / "pgbouncer.log").exists() else ""
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"pgbouncer did not start on port {port}: {e}; {proc.stderr.read() if proc.poll() is not None else ''}{log[-2000:]}")
                time.sleep(0.1)

    def stop(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGINT)  # a safe shutdown: PgBouncer closes its server connections
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    bouncer = PgBouncer(url=url, log=folder / "pgbouncer.log", start=start, stop=stop)
    try:
        bouncer.proc = start()
        yield bouncer
    finally:
        if bouncer.proc is not None:
            stop(bouncer.proc)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class PgBouncer:
    url: str  # the study storage URL through it, ?pgbouncer=transaction
    log: Path
    start: Any = None
    stop: Any = None
    proc: Any = None

    def restart(self, down_s: float) -> None:
        """Stopped (its clients' connections close), down for `down_s`, and started again on its port."""
        import time

        self.stop(self.proc)
        self.proc = None
        time.sleep(down_s)
        self.proc = self.start()


def _pg_binaries() -> Path | None:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of one test's own (its own data folder and port), which the test may
    stop and start without touching the machine's server that other tests share."""

    url: str  # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
    bin: Path
    data: Path
    port: int
    log: Path

    def _ctl(self, *args: str) -> None:
        import subprocess

        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr + (self.log.read_text()[-2000:] if self.log.exists() else "")

    def start(self) -> None:
        self._ctl("-w", "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")  # as a failover or an upgrade does: every session is ended

    def restart(self, down_s: float) -> None:
        import time

        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture
def private_pg():
    """A PostgreSQL server of this test's own (initdb into a temporary folder, its own port), for
    tests that restart it. Skips where PostgreSQL's binaries are not installed, unless
    TUNER_REQUIRE_POSTGRES=1 (CI): then it fails."""
    import pwd
    import subprocess
    import tempfile

    binaries = _pg_binaries()
    if binaries is None:
        reason = "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
        if os.environ.get("TUNER_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
    data = folder / "data"
    argv = [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as its own user, in a folder it owns
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        argv = ["runuser", "-u", "postgres", "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    port = _free_port()
    server = PrivatePostgres(url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", bin=binaries, data=data, port=port, log=folder / "server.log")
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server._ctl("-w", "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long end-to-end tests (marked slow) first: under pytest-xdist (`make test` runs
    several workers) they start at once instead of one of them ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise
