"""tuner/_compat.py: every private name under torch and Optuna resolved in one place. On the
versions CI installs every fast path is on; hiding each name in turn (as a newer or older release
would) turns its fast path off, with the reason, and the public road gives the same result."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

import tuner._compat as compat
from tuner.buffered import BufferedStorage
from tuner.params import TrainConfig
from tuner.spec import StudySpec
from tuner.steps import direct_step
from tuner.steps import fast_options as _fast
from tuner.study import create_study, fail_lost, open_study, release_trials, run_study, running_trials
from tuner.train import OPTIMIZER_FACTORIES, train
from tuner.workloads.data import load_workload, parse_workload

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")

TORCH_NAMES = ["torch._fused_adam_", "torch._fused_adamw_", "torch._fused_adagrad_", "torch.optim.optimizer._global_optimizer_pre_hooks"]
OPTUNA_NAMES = [
    "optuna.study._tell._tell_with_warning",
    "optuna.storages._rdb.models.NOT_FOUND_MSG",
    "optuna.storages._rdb.models.TrialValueModel.value_to_stored_repr",
    "optuna.storages._rdb.storage._VersionManager",
]


@pytest.fixture
def hide(monkeypatch: pytest.MonkeyPatch):
    """hide("torch._fused_adam_"): tuner resolves that name as missing (torch itself keeps it)."""
    real = compat._lookup

    def hide(*names: str) -> None:
        def lookup(module: str, path: str) -> Any:
            full = f"{module}.{path}"
            return None if any(full == n or full.startswith(n + ".") for n in names) else real(module, path)

        monkeypatch.setattr(compat, "_lookup", lookup)
        compat.reresolve()

    yield hide
    monkeypatch.setattr(compat, "_lookup", real)
    compat.reresolve()


def test_every_fast_path_is_on_with_the_versions_ci_installs():
    paths = compat.fast_paths()
    assert [p.name for p in paths if not p.on] == [], compat.report()
    assert all(line.startswith("on ") for line in compat.report().splitlines())


@pytest.mark.parametrize("name", TORCH_NAMES + OPTUNA_NAMES)
def test_a_hidden_name_turns_its_fast_path_off_with_the_reason(hide, name):
    hide(name)
    off = [p for p in compat.fast_paths(rdb=optuna.storages.RDBStorage("sqlite:///:memory:")) if not p.on]
    assert len(off) == 1, compat.report()
    assert off[0].detail == HIDDEN_REASON[name], off[0]  # names exactly what is missing
    assert off[0].fallback


# what the reason says when each name is hidden: the name itself, where it went missing
HIDDEN_REASON = {
    "torch._fused_adam_": "missing: torch._fused_adam_",
    "torch._fused_adamw_": "missing: torch._fused_adamw_",
    "torch._fused_adagrad_": "missing: torch._fused_adagrad_",
    "torch.optim.optimizer._global_optimizer_pre_hooks": "missing: torch.optim.optimizer._global_optimizer_pre_hooks",
    "optuna.study._tell._tell_with_warning": "optuna.study._tell._tell_with_warning is gone",
    "optuna.storages._rdb.models.NOT_FOUND_MSG": "optuna.storages._rdb.models lacks NOT_FOUND_MSG",
    "optuna.storages._rdb.models.TrialValueModel.value_to_stored_repr": "optuna.storages._rdb.models lacks TrialValueModel.value_to_stored_repr",
    "optuna.storages._rdb.storage._VersionManager": "_VersionManager has moved",
}


def _digits():
    return load_workload(parse_workload("digits"), seed=0)[0]


@pytest.mark.parametrize(
    "optimizer, name",
    [("adam", "torch._fused_adam_"), ("adamw", "torch._fused_adamw_"), ("adagrad", "torch._fused_adagrad_"),
     ("adam", "torch.optim.optimizer._global_optimizer_pre_hooks"), ("momentum", "torch.optim.optimizer._global_optimizer_pre_hooks")],
)  # fmt: skip
def test_training_without_a_torch_name_takes_torchs_own_step_and_learns_the_same(hide, optimizer, name):
    cfg = TrainConfig(optimizer=optimizer, lr=0.01, momentum=0.9, weight_decay=1e-3, epochs=3, hidden_units=32, n_layers=1)
    data = _digits()
    fast = train(cfg, data, seed=3)
    flat = torch.nn.Parameter(torch.zeros(10))
    assert direct_step(OPTIMIZER_FACTORIES[optimizer]([flat], cfg, **_fast(optimizer, torch.device("cpu")))) is not None
    hide(name)
    assert direct_step(OPTIMIZER_FACTORIES[optimizer]([flat], cfg, **_fast(optimizer, torch.device("cpu")))) is None
    slow = train(cfg, data, seed=3)
    assert slow.value == fast.value
    assert [e.train_loss for e in slow.history] == [e.train_loss for e in fast.history]


def test_adamw_takes_the_decoupled_kernel_by_its_class_not_a_group_key():
    from tuner.steps import _adam

    p = torch.nn.Parameter(torch.randn(50))
    q = torch.nn.Parameter(p.detach().clone())
    mine, theirs = torch.optim.AdamW([p], lr=0.1, weight_decay=0.5, fused=True), torch.optim.AdamW([q], lr=0.1, weight_decay=0.5, fused=True)
    old_group = {k: v for k, v in mine.param_groups[0].items() if k != "decoupled_weight_decay"}  # as an older torch's AdamW groups read
    kernel = _adam(mine, old_group, p)
    assert kernel is not None
    for i in range(6):
        g = torch.randn(50)
        p.grad, q.grad = g.clone(), g.clone()
        if i == 0:
            mine.step()  # makes the state
        else:
            with torch.no_grad():
                assert kernel(mine.state[p])
        theirs.step()
        assert torch.equal(p, q), i


def _spec(**kw) -> StudySpec:
    return StudySpec(**{"name": "s", "space": "tiny", "workload": "digits", "pruner": "median", "trials": 5, "seed": 2, **kw})


def _outcome(url: str) -> list[tuple]:
    return [(t.number, t.state, t.params, t.value, dict(t.intermediate_values)) for t in optuna.load_study(study_name="s", storage=url).trials]


@pytest.mark.parametrize("name", ["optuna.study._tell._tell_with_warning", "optuna.storages._rdb.models.NOT_FOUND_MSG", "schema"])
def test_a_study_without_an_optuna_name_runs_the_same_on_optunas_own_calls(project, hide, monkeypatch, name):
    url_fast, url_slow = "sqlite:///studies/fast.db", "sqlite:///studies/slow.db"
    run_study(create_study(_spec(), url_fast), device="cpu")
    if name == "schema":  # an Optuna whose tables tuner's SQL was not written for
        monkeypatch.setattr(compat, "SQL_SCHEMA", "v0.0.0")
        compat.reresolve()
    else:
        hide(name)
    loaded = create_study(_spec(), url_slow)
    buffered = isinstance(loaded.study._storage, BufferedStorage)
    assert buffered == (name == "optuna.study._tell._tell_with_warning")  # the SQL path is off for the others
    run_study(loaded, device="cpu")
    fast, slow = _outcome(url_fast), _outcome(url_slow)
    assert slow == fast
    worker = optuna.load_study(study_name="s", storage=url_slow).trials[0].user_attrs["worker"]
    assert worker["pid"] > 0  # who ran it is recorded on either road


def test_lost_workers_are_found_and_released_on_optunas_road_too(project, hide, monkeypatch):
    monkeypatch.setattr(compat, "SQL_SCHEMA", "v0.0.0")
    compat.reresolve()
    url = "sqlite:///studies/tuner.db"
    loaded = create_study(_spec(), url)
    assert not isinstance(loaded.study._storage, BufferedStorage)
    silent, beating = loaded.study.ask(), loaded.study.ask()
    storage = optuna.storages.RDBStorage(url)
    storage.record_heartbeat(silent._trial_id)
    storage.record_heartbeat(beating._trial_id)
    import sqlalchemy

    with storage.engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-60 seconds') WHERE trial_id = :t"),
                     {"t": silent._trial_id})  # fmt: skip
    shown = {r["number"]: r for r in running_trials(loaded.study)}
    assert shown[silent.number]["lost_in_s"] == 0.0 and shown[beating.number]["lost_in_s"] is None  # known only past the grace
    assert fail_lost(loaded.study) == [silent.number]
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_reason"].startswith("lost its worker: no heartbeat for longer")
    assert trials[2].state == TrialState.WAITING and trials[2].user_attrs["retry_of"] == 0
    [released] = release_trials(open_study("s", url), numbers=[beating.number], force=True)
    assert released["queued_again"] and optuna.load_study(study_name="s", storage=url).trials[1].state == TrialState.FAIL


def test_doctor_says_which_fast_paths_are_on(project, cli, hide):
    ok = cli("doctor", "--format", "json")
    assert ok.code == 0
    doc = json.loads(ok.out)
    assert all(p["on"] for p in doc["fast_paths"]) and doc["versions"]["torch"] == torch.__version__
    hide("torch._fused_adagrad_")
    shown = cli("doctor")
    assert shown.code == 0 and "off  direct optimizer steps: missing: torch._fused_adagrad_ -> torch.optim's own step()" in shown.out
    assert cli("--version").out.startswith("tuner ")
