"""tuner/atomic.py: every file tuner writes is written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.atomic import atomic_path
from tuner.errors import ReportError, TunerError


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()  # nothing is visible until the block ends
    assert target.read_text() == "new" and _leftovers(target.parent) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("the writer failed")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_a_folder_in_the_way_is_one_clear_error(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ReportError, match=r"^cannot write .*out: it is a folder; give a file$"):
        with atomic_path(tmp_path / "out", error=ReportError, hint="; give a file") as tmp:
            tmp.write_text("x")
    assert _leftovers(tmp_path) == [] and (tmp_path / "out").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(TunerError, match=r"^cannot write .*file/x/y"):  # a file where a folder must be
        with atomic_path(tmp_path / "file" / "x" / "y"):
            pass


def test_export_to_a_folder_is_refused_in_one_line_and_leaves_nothing(project, cli):
    assert cli("study", "run", "e", "--space", "tiny", "--trials", "2", "-q").code == 0
    Path("out").mkdir()
    r = cli("study", "export", "e", "--out", "out")
    assert r.code == 1 and r.err.strip() == "error: cannot write out: it is a folder; pass --out with a file path"
    assert list(Path("out").iterdir()) == [] and _leftovers(Path(".")) == []


def test_export_refuses_a_format_it_does_not_write_and_csv_nests_json(project, cli):
    import csv
    import json

    assert cli("study", "run", "x", "--space", "tiny", "--trials", "2", "-q").code == 0
    r = cli("study", "export", "x", "--out", "out/x.xlsx")
    assert r.code == 1 and "tuner writes CSV or JSON, not .xlsx" in r.err and not Path("out/x.xlsx").exists()
    r = cli("study", "export", "x", "--out", "out/x.csv")
    assert r.code == 0 and "wrote 2 trials to out/x.csv (CSV)" in r.out
    row = next(csv.DictReader(Path("out/x.csv").open()))
    history = json.loads(row["user_attrs_history"])  # JSON, not a Python repr
    assert history["epoch"] == [1, 2] and json.loads(row["user_attrs_grad_norms"])
