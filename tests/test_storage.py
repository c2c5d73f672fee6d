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
