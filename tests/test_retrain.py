"""`tuner best --retrain`: the saved model loads back into torch and scores the reported value."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tuner.retrain import load_model, score
from tuner.study import open_study

SQLITE = "sqlite:///studies/tuner.db"


def _retrain(cli, *args: str) -> dict:
    r = cli("best", *args, "--retrain", "--format", "json", "--device", "cpu")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_retrained_best_model_loads_back_and_scores_the_reported_accuracy(project, cli):
    assert cli("study", "run", "r", "--space", "quick", "--trials", "6", "-q").code == 0
    best = open_study("r", SQLITE).study.best_trial
    doc = _retrain(cli, "r")
    path = Path(doc["retrained"]["file"])
    assert path == Path(f"studies/models/r-trial{best.number}.pt") and path.is_file()
    model, meta = load_model(path)
    assert not model.training and meta["trial"] == best.number and meta["params"]["epochs"] == 12
    assert score(model, meta) == pytest.approx(best.value, abs=1e-9)
    assert doc["retrained"]["reproduced"] == pytest.approx(best.value, abs=1e-9)
    # attached to the study, where the dashboard links it
    study = open_study("r", SQLITE).study
    metas = optuna.artifacts.get_all_artifact_meta(study)
    assert [m.artifact_id for m in metas] == [doc["retrained"]["artifact_id"]]
    assert study.user_attrs["best_model"]["trial"] == best.number
    assert Path("studies/artifacts", doc["retrained"]["artifact_id"]).read_bytes() == path.read_bytes()


def test_cnn_and_user_callable_models_round_trip(project, cli):
    Path("search_spaces/cnn.yaml").write_text("params:\n  model: cnn\n  channels: 8\n  hidden_units: 32\n  n_layers: 1\n  epochs: 3\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n")
    assert cli("study", "run", "c", "--space", "cnn", "--trials", "2", "-q").code == 0
    model, meta = load_model(_retrain(cli, "c")["retrained"]["file"])
    assert type(model).__name__ == "CNN"
    assert score(model, meta) == pytest.approx(open_study("c", SQLITE).study.best_value, abs=1e-9)

    Path("mine.py").write_text(
        "import numpy as np, torch\n"
        "def build(config):\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.normal(size=(300, 5)).astype('float32')\n"
        "    y = (x[:, 0] - x[:, 2] > 0).astype('int64')\n"
        "    h = config['hidden_units']\n"
        "    return torch.nn.Sequential(torch.nn.Linear(5, h), torch.nn.Tanh(), torch.nn.Linear(h, 2)), x, y\n"
    )
    assert cli("study", "run", "u", "--space", "tiny", "--workload", "mine:build", "--trials", "3", "-q").code == 0
    out = Path("elsewhere/u.pt")
    doc = _retrain(cli, "u", "--out", str(out))
    assert doc["retrained"]["file"] == str(out)
    model, meta = load_model(out)
    assert meta["user_model"] and score(model, meta) == pytest.approx(open_study("u", SQLITE).study.best_value, abs=1e-9)


def test_retrain_errors_are_one_line(project, cli, tmp_path):
    Path("search_spaces/explode.yaml").write_text("params:\n  optimizer: sgd\n  lr: 1.0e+6\n  scaling: none\n  epochs: 3\n")
    assert cli("study", "run", "x", "--space", "explode", "--trials", "1", "-q").code == 0
    r = cli("best", "x", "--retrain")
    assert r.code == 1 and "has no complete trial yet" in r.err and len(r.err.strip().splitlines()) == 1
    assert cli("study", "run", "ok", "--space", "tiny", "--trials", "1", "-q").code == 0
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = cli("best", "ok", "--retrain", "--out", str(blocker / "m.pt"))
    assert r.code == 1 and "cannot write" in r.err and len(r.err.strip().splitlines()) == 1
    Path("junk.pt").write_bytes(b"not a model")
    from tuner.errors import TunerError

    with pytest.raises(TunerError, match="is not a tuner model file"):
        load_model("junk.pt")
