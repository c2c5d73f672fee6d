"""tuner/storage.py: the study lock."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tuner.storage import StudyLock


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_study_lock_excludes_other_holders_claim_after_claim(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else request.getfixturevalue("pg_url")
    mine, other = StudyLock(url, "s"), StudyLock(url, "s")  # as two workers hold them
    try:
        for _ in range(3):  # the same lock, held claim after claim
            got = threading.Event()

            def take() -> None:
                with other.held():
                    got.set()

            with mine.held():
                waiter = threading.Thread(target=take)
                waiter.start()
                assert not got.wait(0.3), "another holder got the lock while it was held"
            waiter.join(10)
            assert got.is_set()
    finally:
        mine.close()
        other.close()


@pytest.mark.parametrize(
    "url, said",
    [
        ("sqlit:///x.db", "unknown database 'sqlit'; did you mean sqlite?"),
        ("postgres://u:secret@h/db", "SQLAlchemy spells it postgresql, not postgres; use postgresql+psycopg://u:***@h/db"),
        ("sqlite://studies/tuner.db", "this one has two, which makes 'studies' a host"),
    ],
)
def test_a_mistyped_storage_url_says_the_right_form_and_where_it_came_from(project, cli, monkeypatch, url: str, said: str) -> None:
    r = cli("study", "list", "--storage", url)
    assert r.code == 1 and said in r.err and "secret" not in r.err and "plugin" not in r.err
    monkeypatch.setenv("TUNER_STORAGE", url)
    r = cli("study", "list")
    assert r.code == 1 and "(from TUNER_STORAGE)" in r.err and said in r.err
    assert not list(Path(".").glob("studies/*.db"))


def test_no_database_says_where_tuner_looked(project, cli) -> None:
    r = cli("study", "list", "--storage", "sqlite:///elsewhere/x.db")
    assert r.code == 1 and f"no studies yet: {Path('elsewhere/x.db').resolve()} does not exist" in r.err
