"""Optuna's own storage conformance suite (optuna.testing.pytest_storages.StorageTestCase), run
against tuner's write-behind storage on real SQLite and PostgreSQL: whatever Optuna, its samplers
and pruners expect of a storage holds for tuner's, including that trials it returned are never
changed afterwards."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.testing.pytest_storages import StorageTestCase

from tuner.buffered import BufferedStorage
from tuner.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> BufferedStorage:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    rdb = open_storage(url, create=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cached = optuna.storages._CachedStorage(rdb)
    yield BufferedStorage(cached, rdb)
    rdb.engine.dispose()


class TestBufferedStorage(StorageTestCase):
    pass
