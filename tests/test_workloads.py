"""Workloads: the built-in datasets, CSV and npz files, and user callables load as promised, and every
way they can be wrong ends in one WorkloadError line that names the bad value."""

from __future__ import annotations

import io
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tuner.errors import WorkloadError
from tuner.params import TrainConfig
from tuner.train import train
from tuner.workloads import data as workload_data
from tuner.workloads.data import BUILTINS, Dataset, WorkloadRef, load_workload, parse_workload


def load(ref: str, *, target: str | None = None, seed: int = 0, val_fraction: float = 0.2, config: dict | None = None) -> tuple[Dataset, object]:
    return load_workload(parse_workload(ref, target=target), seed=seed, val_fraction=val_fraction, config=config)


def refused(ref: str, *, target: str | None = None, **kwargs: object) -> str:
    """The one-line message of the WorkloadError that loading `ref` raises."""
    with pytest.raises(WorkloadError) as caught:
        load(ref, target=target, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- built-ins


@pytest.mark.parametrize(
    "name,n_features,n_classes,n_rows,image_shape",
    [("digits", 64, 10, 1797, (1, 8, 8)), ("wine", 13, 3, 178, None), ("breast_cancer", 30, 2, 569, None)],
)
def test_builtin_shapes_and_classes(name: str, n_features: int, n_classes: int, n_rows: int, image_shape: tuple | None) -> None:
    data, model = load(name)
    assert model is None
    assert data.task == "classification" and data.n_classes == n_classes
    assert data.n_features == n_features and data.image_shape == image_shape
    assert len(data.x_train) + len(data.x_val) == n_rows
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert set(np.unique(data.y_train)) == set(range(n_classes))


def test_builtin_names_are_all_covered() -> None:
    assert set(BUILTINS) == {"digits", "wine", "breast_cancer"}


@pytest.mark.parametrize("val_fraction", [0.2, 0.5])
def test_val_fraction_is_respected(val_fraction: float) -> None:
    data, _ = load("wine", val_fraction=val_fraction)
    assert len(data.x_val) == int(np.ceil(val_fraction * 178))
    assert len(data.x_train) == 178 - len(data.x_val)


def test_split_is_stratified() -> None:
    data, _ = load("wine")
    everything = np.concatenate([data.y_train, data.y_val])
    whole = np.bincount(everything) / len(everything)
    assert np.allclose(np.bincount(data.y_val) / len(data.y_val), whole, atol=0.03)
    assert np.allclose(np.bincount(data.y_train) / len(data.y_train), whole, atol=0.03)


def test_split_depends_on_the_seed_only() -> None:
    wref = parse_workload("digits")
    a = load_workload(wref, seed=1)[0]
    workload_data._cached.cache_clear()  # a fresh load, not the cached object
    b = load_workload(wref, seed=1)[0]
    c = load_workload(wref, seed=2)[0]
    assert a is not b
    assert np.array_equal(a.x_val, b.x_val) and np.array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.x_val, c.x_val)


def test_splits_do_not_overlap() -> None:
    data, _ = load("breast_cancer")
    train_rows = {row.tobytes() for row in data.x_train}
    assert not any(row.tobytes() in train_rows for row in data.x_val)


# ---------------------------------------------------------------- parse_workload


def test_parse_workload_kinds() -> None:
    assert parse_workload(" digits ") == WorkloadRef("builtin", "digits")
    assert parse_workload("data/d.csv", target="label") == WorkloadRef("csv", "data/d.csv", "label")
    assert parse_workload("d.npz") == WorkloadRef("npz", "d.npz")
    assert parse_workload("mypkg.data:build") == WorkloadRef("callable", "mypkg.data:build")


def test_unknown_builtin_lists_the_valid_ones() -> None:
    with pytest.raises(WorkloadError) as caught:
        parse_workload("mnist")
    message = str(caught.value)
    assert "\n" not in message and "'mnist'" in message
    assert all(name in message for name in BUILTINS)
    assert ".csv" in message and ".npz" in message and "module:function" in message


@pytest.mark.parametrize("ref", ["digits", "d.npz", "m:f"])
def test_target_only_applies_to_csv(ref: str) -> None:
    with pytest.raises(WorkloadError) as caught:
        parse_workload(ref, target="label")
    message = str(caught.value)
    assert "\n" not in message and "--target label" in message and ref in message


def test_csv_without_target_asks_for_one() -> None:
    with pytest.raises(WorkloadError) as caught:
        parse_workload("d.csv")
    message = str(caught.value)
    assert "\n" not in message and "d.csv" in message and "--target" in message


@pytest.mark.parametrize("ref", [":build", "mod:"])
def test_half_a_callable_is_refused(ref: str) -> None:
    with pytest.raises(WorkloadError) as caught:
        parse_workload(ref)
    assert "\n" not in str(caught.value) and repr(ref) in str(caught.value)


# ---------------------------------------------------------------- CSV


def write_csv(path: Path, header: str, rows: list[str]) -> str:
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_csv_with_string_labels_loads(tmp_path: Path) -> None:
    rows = [f"{i},{i * 0.5},{['cat', 'dog', 'eel'][i % 3]}" for i in range(30)]
    ref = write_csv(tmp_path / "pets.csv", "a,b,kind", rows)
    data, _ = load(ref, target="kind")
    assert data.task == "classification" and data.n_classes == 3
    assert data.n_features == 2
    assert len(data.x_train) + len(data.x_val) == 30
    # the target column is not a feature: every feature row is (i, i / 2)
    x = np.concatenate([data.x_train, data.x_val])
    assert np.allclose(x[:, 1], x[:, 0] * 0.5)


def test_csv_target_may_be_any_column_and_int_labels(tmp_path: Path) -> None:
    rows = [f"{i % 2}, {i}.0 ,{-i}" for i in range(20)]
    ref = write_csv(tmp_path / "d.csv", "label, x1 , x2", rows)  # spaces around names and values
    data, _ = load(ref, target="label")
    assert data.n_classes == 2 and data.n_features == 2
    x = np.concatenate([data.x_train, data.x_val])
    assert np.allclose(x[:, 0], -x[:, 1])


def test_csv_regression_target_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [f"{a:.4f},{2 * a + 0.1:.4f}" for a in rng.normal(size=40)]
    data, _ = load(write_csv(tmp_path / "r.csv", "x,y", rows), target="y")
    assert data.task == "regression" and data.n_classes == 0
    assert data.y_train.dtype == np.float32
    result = train(TrainConfig(epochs=2, n_layers=1, hidden_units=8), data, metric="val_rmse")
    assert result.value == pytest.approx(result.history[result.best_epoch - 1].val_loss ** 0.5)


def test_csv_with_byte_order_mark_loads(tmp_path: Path) -> None:
    # spreadsheets save "CSV UTF-8" with a BOM before the first column's name
    path = tmp_path / "excel.csv"
    path.write_text("label,a\n" + "".join(f"{i % 2},{i}\n" for i in range(20)), encoding="utf-8-sig")
    data, _ = load(str(path), target="label")
    assert data.n_classes == 2 and data.n_features == 1


def test_csv_missing_target_names_it_and_lists_columns(tmp_path: Path) -> None:
    ref = write_csv(tmp_path / "d.csv", "a,b,label", [f"{i},{i},{i % 2}" for i in range(20)])
    message = refused(ref, target="class")
    assert "'class'" in message and "a, b, label" in message and "d.csv" in message


def test_csv_non_numeric_feature_names_line_and_column(tmp_path: Path) -> None:
    rows = [f"{i},{i},{i % 2}" for i in range(20)]
    rows[6] = "6,seven,0"  # file line 8: the header is line 1
    message = refused(write_csv(tmp_path / "d.csv", "a,b,label", rows), target="label")
    assert "line 8" in message and "'b'" in message and "'seven'" in message


def test_csv_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,label\n\n" + "".join(f"{i},{i % 2}\n" for i in range(12)) + "x,1\n", encoding="utf-8")
    assert "line 15" in refused(str(path), target="label")


def test_csv_ragged_row_is_refused(tmp_path: Path) -> None:
    rows = [f"{i},{i % 2}" for i in range(12)] + ["1,0,9"]
    message = refused(write_csv(tmp_path / "d.csv", "a,label", rows), target="label")
    assert "line 14" in message and "3 fields" in message


def test_csv_too_few_rows(tmp_path: Path) -> None:
    message = refused(write_csv(tmp_path / "d.csv", "a,label", [f"{i},{i % 2}" for i in range(5)]), target="label")
    assert "5 data rows" in message and "10" in message


def test_csv_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    assert "empty" in refused(str(tmp_path / "empty.csv"), target="label")


def test_csv_missing_file(tmp_path: Path) -> None:
    message = refused(str(tmp_path / "nowhere.csv"), target="label")
    assert "nowhere.csv" in message and "not found" in message


def test_csv_not_text(tmp_path: Path) -> None:
    (tmp_path / "bin.csv").write_bytes(b"a,label\n\xff\xfe\x00,1\n")
    message = refused(str(tmp_path / "bin.csv"), target="label")
    assert "bin.csv" in message and "CSV" in message


def test_csv_nan_feature_is_refused(tmp_path: Path) -> None:
    rows = [f"{i},{i % 2}" for i in range(12)] + ["nan,1"]
    assert "NaN" in refused(write_csv(tmp_path / "d.csv", "a,label", rows), target="label")


def test_csv_single_class_is_refused(tmp_path: Path) -> None:
    message = refused(write_csv(tmp_path / "d.csv", "a,label", [f"{i},yes" for i in range(12)]), target="label")
    assert "single class" in message and "'yes'" in message


# ---------------------------------------------------------------- npz


def test_npz_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), np.arange(60) % 3
    np.savez(tmp_path / "d.npz", X=x, y=y)
    data, _ = load(str(tmp_path / "d.npz"))
    assert data.n_features == 4 and data.n_classes == 3
    assert np.allclose(np.sort(np.concatenate([data.x_train, data.x_val]), axis=0), np.sort(x.astype(np.float32), axis=0))


def test_npz_images_keep_their_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", X=rng.normal(size=(40, 3, 4, 5)), y=np.arange(40) % 2)
    data, _ = load(str(tmp_path / "img.npz"))
    assert data.image_shape == (3, 4, 5) and data.n_features == 60


def test_npz_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", X=rng.normal(size=(80, 3)), y=rng.normal(size=80))
    data, _ = load(str(tmp_path / "r.npz"))
    assert data.task == "regression" and data.y_train.dtype == np.float32


def test_npz_missing_y_lists_the_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((20, 2)), labels=np.zeros(20))
    message = refused(str(tmp_path / "d.npz"))
    assert "'y'" in message and "X, labels" in message and "np.savez" in message


def write_bad_npz(path: Path, what: str) -> None:
    if what == "text":
        path.write_text("not an archive\n")
    elif what == "truncated":  # an interrupted copy: the zip directory is gone
        np.savez(path, X=np.zeros((50, 3)), y=np.zeros(50))
        path.write_bytes(path.read_bytes()[:200])
    else:  # np.save output renamed to .npz: one array, no X and y
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((5, 2)))
        path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("what,says", [("text", "not a readable .npz"), ("truncated", "not a readable .npz"), ("one array", "single array")])
def test_npz_that_is_not_an_archive_is_refused(tmp_path: Path, what: str, says: str) -> None:
    path = tmp_path / "bad.npz"
    write_bad_npz(path, what)
    message = refused(str(path))
    assert "bad.npz" in message and says in message


def test_npz_rows_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((20, 2)), y=np.arange(19) % 2)
    message = refused(str(tmp_path / "d.npz"))
    assert "X has 20 rows" in message and "y has 19" in message


def test_npz_too_small_to_split(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", X=np.zeros((1, 2)), y=np.array([0.5]))
    assert "1 rows" in refused(str(tmp_path / "one.npz"))


def test_few_rows_per_class_still_split(tmp_path: Path) -> None:
    # 5 classes of 2 rows: a 2-row validation split cannot hold every class, so it is not stratified
    np.savez(tmp_path / "few.npz", X=np.arange(20.0).reshape(10, 2), y=np.repeat(np.arange(5), 2))
    data, _ = load(str(tmp_path / "few.npz"))
    assert len(data.x_val) == 2 and len(data.x_train) == 8


def test_bad_val_fraction() -> None:
    assert "1.5" in refused("wine", val_fraction=1.5)


# ---------------------------------------------------------------- user callables


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a module into the working directory under a fresh name; returns a writer of (source) -> name.

    The working directory is taken off sys.path first, so the test also shows tuner makes it importable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    names: list[str] = []

    def write(source: str) -> str:
        name = f"user_workload_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_callable_returning_x_y_loads(user_module: Callable[[str], str]) -> None:
    name = user_module(
        """
        import numpy as np
        def build(config):
            x = np.arange(60.0).reshape(30, 2)
            return x, np.arange(30) % 2
        """
    )
    data, model = load(f"{name}:build")
    assert model is None and data.n_features == 2 and data.n_classes == 2
    assert data.name == f"{name}:build"


def test_callable_model_is_the_one_trained(user_module: Callable[[str], str]) -> None:
    name = user_module(
        """
        import numpy as np
        import torch
        def build(config):
            rng = np.random.default_rng(0)
            x = torch.tensor(rng.normal(size=(40, 1, 4, 4)), dtype=torch.float32)
            y = torch.arange(40) % 2
            model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, config["n_out"]))
            model.tag = "mine"
            return model, x, y
        """
    )
    data, model = load(f"{name}:build", config={"n_out": 2})
    assert isinstance(model, nn.Module) and model.tag == "mine"
    assert data.image_shape == (1, 4, 4) and data.n_features == 16  # torch tensors become arrays
    before = [p.detach().clone() for p in model.parameters()]
    result = train(TrainConfig(epochs=1), data, model=model)
    assert result.model is model
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_callable_may_return_a_dict(user_module: Callable[[str], str]) -> None:
    name = user_module(
        """
        import numpy as np
        def build(config):
            return {"X": np.arange(40.0).reshape(20, 2), "y": np.arange(20) % 2}
        """
    )
    data, model = load(f"{name}:build")
    assert model is None and data.n_features == 2


def test_callable_receives_a_copy_of_the_config(user_module: Callable[[str], str]) -> None:
    name = user_module(
        """
        import numpy as np
        def build(config):
            config["touched"] = True
            return np.zeros((20, config["width"])) + np.arange(20)[:, None], np.arange(20) % 2
        """
    )
    config = {"width": 3}
    data, _ = load(f"{name}:build", config=config)
    assert data.n_features == 3 and config == {"width": 3}


@pytest.mark.parametrize(
    "source,expected",
    [
        ("def build(config)\n    return 1\n", "SyntaxError"),
        ("import no_such_package_for_tuner_tests\n", "ModuleNotFoundError"),
        ("raise RuntimeError('setup failed')\n", "setup failed"),
    ],
)
def test_callable_module_that_fails_to_import(user_module: Callable[[str], str], source: str, expected: str) -> None:
    name = user_module(source)
    message = refused(f"{name}:build")
    assert f"'{name}'" in message and expected in message and "PYTHONPATH" in message


def test_callable_missing_module() -> None:
    message = refused("no_such_module_for_tuner_tests:build")
    assert "'no_such_module_for_tuner_tests'" in message


def test_callable_missing_function(user_module: Callable[[str], str]) -> None:
    name = user_module("def other(config):\n    return None\n")
    message = refused(f"{name}:build")
    assert f"'{name}'" in message and "'build'" in message


def test_callable_that_raises_is_named(user_module: Callable[[str], str]) -> None:
    name = user_module("def build(config):\n    raise ValueError('no data today')\n")
    message = refused(f"{name}:build")
    assert f"{name}:build" in message and "ValueError" in message and "no data today" in message


@pytest.mark.parametrize("returned,type_name", [("[1, 2]", "list"), ("(1, 2, 3, 4)", "tuple"), ("None", "NoneType")])
def test_callable_wrong_return_type(user_module: Callable[[str], str], returned: str, type_name: str) -> None:
    name = user_module(f"def build(config):\n    return {returned}\n")
    message = refused(f"{name}:build")
    assert f"{name}:build" in message and "(model, X, y) or (X, y)" in message and type_name in message


def test_a_csv_study_finds_its_file_from_another_folder_and_refuses_a_changed_or_missing_one(project, cli) -> None:
    """The CSV's absolute path is stored (a resume from elsewhere finds it) with its SHA-256: a
    changed or missing file fails up front in one line, before any trial and with the budget unchanged."""
    import os

    import optuna

    from sklearn.datasets import load_wine

    d = load_wine()
    Path("data").mkdir()
    lines = [",".join([f"f{i}" for i in range(13)] + ["y"])] + [",".join(map(str, [*row, t])) for row, t in zip(d.data, d.target)]
    Path("data/wine.csv").write_text("\n".join(lines) + "\n")
    url = f"sqlite:///{Path('studies/tuner.db').resolve()}"
    r = cli("study", "run", "w", "--space", "tiny", "--workload", "data/wine.csv", "--target", "y", "--trials", "2", "-q", "--storage", url)
    assert r.code == 0, r.err
    Path("elsewhere").mkdir()
    os.chdir("elsewhere")
    try:
        assert cli("study", "resume", "w", "--trials", "3", "-q", "--storage", url).code == 0  # found from another folder
        csv_path = Path("../data/wine.csv").resolve()
        csv_path.write_text("\n".join(lines[:100]) + "\n")  # the data changed
        r = cli("study", "resume", "w", "--trials", "4", "-q", "--storage", url)
        assert r.code == 1 and "has changed since the study was created" in r.err
        csv_path.unlink()
        r = cli("study", "resume", "w", "--trials", "4", "-q", "--storage", url)
        assert r.code == 1 and f"trains on {csv_path}, which is not on this host" in r.err
    finally:
        os.chdir("..")
    study = optuna.load_study(study_name="w", storage=url)
    assert len(study.trials) == 3 and study.user_attrs["tuner.spec"]["trials"] == 3  # nothing written by the refusals
