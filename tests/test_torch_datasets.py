"""A user callable may return its own torch Datasets, (model, train_dataset, val_dataset): tuner's
loop then trains through a DataLoader, for data that does not fit in memory or transforms its
samples. Same loop, same records; the same data gives the same training as the in-memory path."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tuner.errors import WorkloadError
from tuner.params import TrainConfig
from tuner.train import device_tensors, train
from tuner.workloads import TorchData, load_workload, parse_workload
from tuner.workloads.data import torch_data

MODULE = '''
import torch
from torch import nn
from torch.utils.data import Dataset
from sklearn.datasets import load_digits

class Digits(Dataset):
    """8x8 digit images as 1x8x8 tensors, with a random one-pixel shift when augmenting."""
    def __init__(self, images, labels, augment):
        self.images = torch.as_tensor(images, dtype=torch.float32).div(16).unsqueeze(1)
        self.labels = torch.as_tensor(labels)
        self.augment = augment
    def __len__(self):
        return len(self.labels)
    def __getitem__(self, i):
        x = self.images[i]
        if self.augment:
            x = torch.roll(x, shifts=int(torch.randint(-1, 2, ())), dims=2)
        return x, self.labels[i]

def build(config):
    d = load_digits()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return model, Digits(d.images[:1400], d.target[:1400], True), Digits(d.images[1400:], d.target[1400:], False)

def tuner_model(config):
    d = load_digits()
    return None, Digits(d.images[:1400], d.target[:1400], False), Digits(d.images[1400:], d.target[1400:], False)

def empty(config):
    d = load_digits()
    return None, Digits(d.images[:0], d.target[:0], False), Digits(d.images[:10], d.target[:10], False)

def not_pairs(config):
    from torch.utils.data import Dataset
    class Bad(Dataset):
        def __len__(self):
            return 3
        def __getitem__(self, i):
            return 7
    return None, Bad(), Bad()
'''


@pytest.fixture
def user_datasets(project: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (project / "mydata.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(project))
    sys.modules.pop("mydata", None)
    return "mydata"


def test_a_study_trains_through_the_user_s_own_datasets(user_datasets: str, cli) -> None:
    space = Path("search_spaces/ds.yaml")
    space.write_text("params:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n  batch_size: [32, 64]\n  epochs: 3\n")
    r = cli("study", "run", "ds", "--space", "ds", "--workload", "mydata:build", "--trials", "3", "--pruner", "none", "--device", "cpu", "-q")
    assert r.code == 0, r.err
    trials = optuna.load_study(study_name="ds", storage="sqlite:///studies/tuner.db").get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert max(t.value for t in trials) > 0.6  # well above chance (0.1) after 3 epochs
    assert trials[0].user_attrs["epochs_run"] == 3 and len(trials[0].user_attrs["history"]["val_loss"]) == 3
    # the best configuration retrains and scores through the same datasets
    r = cli("best", "ds", "--retrain", "--device", "cpu", "--format", "json")
    assert r.code == 0, r.err
    import json

    retrained = json.loads(r.out)["retrained"]
    assert Path(retrained["file"]).is_file() and 0.6 < retrained["reproduced"] <= 1.0


def test_first_sample_gives_task_shape_and_classes(user_datasets: str) -> None:
    data, model = load_workload(parse_workload("mydata:tuner_model"), seed=0)
    assert isinstance(data, TorchData) and model is None
    assert (data.task, data.n_classes, data.n_features, data.image_shape) == ("classification", 10, 64, (1, 8, 8))
    result = train(TrainConfig(epochs=2, model="cnn", channels=4), data, device="cpu")
    assert result.epochs_run == 2 and result.value > 0.3


@pytest.mark.parametrize("func, match", [("empty", "training dataset is empty"), ("not_pairs", "first item is not \\(input, target\\)")])
def test_bad_datasets_are_one_line(user_datasets: str, func: str, match: str) -> None:
    with pytest.raises(WorkloadError, match=match):
        load_workload(parse_workload(f"mydata:{func}"), seed=0)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "lbfgs"])
def test_the_loader_path_trains_exactly_as_the_in_memory_path(optimizer: str) -> None:
    """The same (scaled) examples as TensorDatasets: the loader's sampler draws each epoch's order
    as the in-memory path does, and nothing else draws from torch's generator, so every epoch's
    figures are the in-memory path's, dropout included."""
    from torch.utils.data import TensorDataset

    data, _ = load_workload(parse_workload("wine"), seed=0)
    x_tr, y_tr, x_va, y_va = device_tensors(data, "standard", torch.device("cpu"))
    loader_data = torch_data("wine", TensorDataset(x_tr, y_tr), TensorDataset(x_va, y_va), count_classes=True)
    cfg = TrainConfig(epochs=4, batch_size=16, optimizer=optimizer, lr=0.01, dropout=0.2, n_layers=1, hidden_units=16)
    a = train(cfg, data, device="cpu", seed=3)
    b = train(cfg, loader_data, device="cpu", seed=3)
    for ea, eb in zip(a.history, b.history):
        assert (ea.train_loss, ea.val_loss, ea.val_accuracy, ea.train_accuracy) == (eb.train_loss, eb.val_loss, eb.val_accuracy, eb.train_accuracy)
