"""Trial packing: a trial trained in a pack gives what it gives alone (train()), member by member,
for every optimizer, schedule and regularizer in the pack vocabulary; pruning, divergence and
early stopping end one member and leave the others as they were."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.test_train import regression_data
from tuner.errors import DivergedError
from tuner.packing import FAMILIES, pack_key, plan_packs, train_packed
from tuner.params import OPTIMIZERS, TrainConfig
from tuner.train import EpochResult, train
from tuner.workloads.data import Dataset, load_workload, parse_workload


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_workload(parse_workload("digits"), seed=0)[0]


def cfg(**overrides: object) -> TrainConfig:
    settings: dict[str, object] = {"epochs": 3, "batch_size": 64, "n_layers": 2, "hidden_units": 24, "lr": 3e-3, "weight_decay": 1e-3}
    settings.update(overrides)
    return TrainConfig(**settings)


def assert_same(alone: object, packed: object, *, tol: float = 2e-5) -> None:
    """Same epochs, losses, accuracies, learning rates, gradient norms and final weights."""
    assert not isinstance(packed, BaseException), packed
    assert packed.epochs_run == alone.epochs_run and packed.best_epoch == alone.best_epoch and packed.stopped == alone.stopped
    for a, p in zip(alone.history, packed.history, strict=True):
        assert p.lr == pytest.approx(a.lr, rel=1e-9)
        assert p.train_loss == pytest.approx(a.train_loss, rel=tol, abs=tol)
        assert p.val_loss == pytest.approx(a.val_loss, rel=tol, abs=tol)
        if a.val_accuracy is not None:
            assert p.val_accuracy == pytest.approx(a.val_accuracy, abs=1e-6)
            assert p.train_accuracy == pytest.approx(a.train_accuracy, abs=1e-6)
        assert list(p.grad_norms) == list(a.grad_norms)
        assert (p.dead_units is None) == (a.dead_units is None) and p.dead_layer == a.dead_layer  # tuner.health reads them
        if a.dead_units is not None:
            assert p.dead_units == pytest.approx(a.dead_units, abs=0.02)
        assert list(p.grad_norms.values()) == pytest.approx(list(a.grad_norms.values()), rel=1e-3, abs=1e-6)
    for name, value in alone.model.state_dict().items():
        torch.testing.assert_close(packed.model.state_dict()[name], value, rtol=1e-3, atol=1e-4, msg=name)
    # every field, the floats to the tolerance of the losses (a pack sums its members' gradients in another order)
    pd, ad = packed.diagnostics, alone.diagnostics
    assert (pd.vanishing_gradients, pd.exploding_gradients) == (ad.vanishing_gradients, ad.exploding_gradients)
    for field in ("grad_norm_first", "grad_norm_last", "overfit_gap"):
        got, want = getattr(pd, field), getattr(ad, field)
        assert (got is None) == (want is None), (field, got, want)
        if want is not None:
            assert got == pytest.approx(want, rel=1e-3, abs=tol), (field, got, want)


def alone_and_packed(cfgs: list[TrainConfig], data: Dataset, **kwargs: object) -> tuple[list, list]:
    seeds = [7 * i + 1 for i in range(len(cfgs))]
    alone = [train(c, data, seed=s, **kwargs) for c, s in zip(cfgs, seeds)]
    return alone, train_packed(cfgs, data, seeds=seeds, **kwargs)


PACKABLE = [o for o in OPTIMIZERS if o in FAMILIES]


def test_every_optimizer_in_one_pack_trains_as_alone(digits: Dataset) -> None:
    """One pack holding every family (each on its own rows), with weight decay coupled or
    decoupled as each optimizer has it: member by member the same as trained alone."""
    assert set(PACKABLE) == set(OPTIMIZERS) - {"lbfgs"}
    cfgs = [cfg(optimizer=o, lr=1.0 if o == "adadelta" else 3e-3, momentum=0.8, rho=0.95) for o in PACKABLE]
    alone, packed = alone_and_packed(cfgs, digits)
    for a, p in zip(alone, packed):
        assert_same(a, p)


@pytest.mark.parametrize("scheduler", ["none", "step", "cosine", "onecycle", "plateau"])
def test_every_schedule_trains_as_alone(digits: Dataset, scheduler: str) -> None:
    cfgs = [
        cfg(optimizer="adam", scheduler=scheduler, step_size=1, gamma=0.5, plateau_patience=0, epochs=4),
        cfg(optimizer="nesterov", lr=0.02, scheduler=scheduler, warmup_epochs=1, epochs=4),
        cfg(optimizer="rmsprop", lr=1e-3, scheduler=scheduler, epochs=3),
    ]
    alone, packed = alone_and_packed(cfgs, digits)
    for a, p in zip(alone, packed):
        assert_same(a, p)


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_mixed_widths_and_activations_are_padded_without_effect(digits: Dataset, norm: str) -> None:
    """Narrower members padded to the widest (zeros whose gradients are masked), activations
    differing by row: each member still trains exactly as its own narrower MLP; batch norm's
    running statistics come back with the weights.

    Under batch norm a layer's bias has no gradient but rounding noise, which the adaptive
    optimizers scale up to full steps (alone as much as packed): there, SGD's family is compared."""
    adaptive = [("adamw", 3e-3), ("adagrad", 0.01)] if norm != "batch" else [("nesterov", 0.02), ("sgd", 0.05)]
    cfgs = [
        cfg(hidden_units=40, activation="relu", norm=norm, init="kaiming_uniform", optimizer="momentum", lr=0.02),
        cfg(hidden_units=9, activation="tanh", norm=norm, init="xavier_normal", optimizer=adaptive[0][0], lr=adaptive[0][1]),
        cfg(hidden_units=17, activation="sigmoid", norm=norm, init="orthogonal", optimizer="momentum", lr=0.05),
        cfg(hidden_units=40, activation="gelu", norm=norm, init="scaled_normal", optimizer=adaptive[1][0], lr=adaptive[1][1]),
    ]
    alone, packed = alone_and_packed(cfgs, digits)
    for a, p in zip(alone, packed):
        assert_same(a, p)


def test_regularizers_and_clipping_per_member(digits: Dataset) -> None:
    """L1, label smoothing and gradient clipping are per-member columns: a member without them is
    untouched by its neighbours' (clipped at 0.5 vs unclipped, smoothed vs not)."""
    cfgs = [
        cfg(l1=1e-4, label_smoothing=0.1, grad_clip=0.5),
        cfg(optimizer="sgd", lr=0.05),
        cfg(optimizer="adadelta", lr=1.0, l1=1e-3, grad_clip=2.0, weight_decay=0.0),
    ]
    alone, packed = alone_and_packed(cfgs, digits)
    for a, p in zip(alone, packed):
        assert_same(a, p)


def test_regression_and_no_hidden_layer() -> None:
    data = regression_data()
    cfgs = [cfg(optimizer="adam", epochs=4, batch_size=32), cfg(optimizer="sgd", lr=0.01, epochs=4, batch_size=32, hidden_units=8)]
    alone, packed = alone_and_packed(cfgs, data, metric="val_rmse")
    for a, p in zip(alone, packed):
        assert_same(a, p)
    linear = [cfg(n_layers=0, epochs=2), cfg(n_layers=0, epochs=2, optimizer="rmsprop", lr=1e-3)]
    alone, packed = alone_and_packed(linear, data, metric="val_loss")
    for a, p in zip(alone, packed):
        assert_same(a, p)


def test_own_epochs_and_early_stopping(digits: Dataset) -> None:
    """Members end at their own epoch counts or patience; those that go on are unaffected."""
    cfgs = [cfg(epochs=2), cfg(epochs=6, lr=0.05, optimizer="sgd", patience=1), cfg(epochs=4, optimizer="nesterov", lr=0.02)]
    alone, packed = alone_and_packed(cfgs, digits, metric="val_loss")
    assert [p.epochs_run for p in packed] == [a.epochs_run for a in alone]
    for a, p in zip(alone, packed):
        assert_same(a, p)


def test_a_pruned_member_stops_and_the_others_go_on(digits: Dataset) -> None:
    calls: list[list[int]] = [[], [], []]

    class Pruned(Exception):
        pass

    def watch(i: int):  # noqa: ANN202
        def on_epoch(result: object) -> None:
            calls[i].append(result.epoch)
            if i == 1 and result.epoch == 2:
                raise Pruned()

        return on_epoch

    cfgs = [cfg(epochs=4), cfg(epochs=4, optimizer="adamw"), cfg(epochs=4, optimizer="nesterov", lr=0.02)]
    seeds = [1, 8, 15]
    alone = [train(c, digits, seed=s) for c, s in zip(cfgs, seeds)]
    packed = train_packed(cfgs, digits, seeds=seeds, on_epoch=[watch(i) for i in range(3)])
    assert calls == [[1, 2, 3, 4], [1, 2], [1, 2, 3, 4]]
    assert isinstance(packed[1], Pruned)
    assert_same(alone[0], packed[0])
    assert_same(alone[2], packed[2])


def test_a_pack_reports_its_time_to_the_timing_hook_as_training_does(digits: Dataset) -> None:
    """The benchmark times training through tuner.epochs' timing hook: a pack reports once, for
    its trials, with the time its members' reports took apart."""
    from tuner.epochs import timing_hook

    seen = []
    cfgs = [cfg(lr=lr) for lr in (0.01, 0.02, 0.05)]
    with timing_hook(seen.append):
        train_packed(cfgs, digits, seeds=[1, 2, 3], on_epoch=[lambda r: __import__("time").sleep(0.01)] * 3)
        train(cfgs[0], digits, seed=1)
    [packed, alone] = seen
    assert packed.n_trials == 3 and alone.n_trials == 1
    assert packed.reports_s >= 0.01 * 3 * cfgs[0].epochs and 0 < packed.train_s < packed.total_s


def test_a_diverging_member_ends_alone(digits: Dataset) -> None:
    """A learning rate of 1e6 blows one member up: it ends with DivergedError at the epoch it
    would alone, and its NaNs reach none of its neighbours."""
    cfgs = [cfg(), cfg(optimizer="sgd", lr=1e6, weight_decay=0.0), cfg(optimizer="rmsprop", lr=1e-3)]
    seeds = [3, 4, 5]
    with pytest.raises(DivergedError) as alone_error:
        train(cfgs[1], digits, seed=4)
    packed = train_packed(cfgs, digits, seeds=seeds)
    assert isinstance(packed[1], DivergedError) and packed[1].epoch == alone_error.value.epoch
    assert_same(train(cfgs[0], digits, seed=3), packed[0])
    assert_same(train(cfgs[2], digits, seed=5), packed[2])


def test_dropout_accuracy_is_indistinguishable_from_alone(digits: Dataset) -> None:
    """With dropout the masks are drawn differently, so results differ run by run; over seeds,
    packed and alone final accuracies are the same distribution (Welch's t below 3, means within
    two points)."""
    seeds = list(range(8))
    cfgs = [cfg(dropout=0.3, epochs=4, hidden_units=64) for _ in seeds]
    alone = np.array([train(c, digits, seed=s).value for c, s in zip(cfgs, seeds)])
    packed = np.array([r.value for r in train_packed(cfgs, digits, seeds=seeds)])
    t = abs(alone.mean() - packed.mean()) / math.sqrt(alone.var(ddof=1) / len(seeds) + packed.var(ddof=1) / len(seeds) + 1e-12)
    assert t < 3 and abs(alone.mean() - packed.mean()) < 0.02, (alone, packed)
    assert not np.allclose(alone, packed)  # the masks did differ: this is not the dropout-free case


def test_pack_keys_and_plans(digits: Dataset) -> None:
    base = cfg()
    assert pack_key(base, digits) == pack_key(replace(base, hidden_units=200, optimizer="rmsprop", activation="tanh", epochs=9, lr=0.1), digits)
    for other in (replace(base, n_layers=1), replace(base, batch_size=32), replace(base, scaling="minmax"), replace(base, norm="batch")):
        assert pack_key(base, digits) != pack_key(other, digits)
    assert pack_key(replace(base, optimizer="lbfgs"), digits) is None
    assert pack_key(replace(base, model="cnn"), digits) is None
    assert sorted(plan_packs([("a",), ("b",), ("a",), None, ("a",), ("a",)], 2)) == [[0, 2], [1], [3], [4, 5]]
    # by width: padding a 4-wide trial to 128 costs more than a step's overhead saves
    widths = [128, 4, 120, 8, 6]
    plan = plan_packs([("a",)] * 5, 8, cost=lambda i, w: float(w * w), widths=widths, overhead=3000.0)
    assert sorted(sorted(widths[i] for i in p) for p in plan) == [[4, 6, 8], [120, 128]]
    assert plan_packs([("a",)] * 5, 8, cost=lambda i, w: float(w * w), widths=widths, overhead=1e9) == [[1, 4, 3, 2, 0]]  # overhead dominates: one pack
    assert sorted(map(len, plan_packs([("a",)] * 5, 2, cost=lambda i, w: 1.0, widths=widths, overhead=1e9))) == [1, 2, 2]
    with pytest.raises(ValueError, match="cannot share a pack"):
        train_packed([base, replace(base, n_layers=1)], digits, seeds=[0, 1])


# ---------------------------------------------------------------- packed studies

# learning rates where training is not chaotic: above them (rmsprop at 0.03), float rounding alone
# moves a trial's accuracy by an example, alone or packed
# lr up to 3e-3: at 1e-2 RMSprop's validation loss climbs each epoch, and that chaos turns the
# float-rounding differences of a batched matmul into percents (test_every_optimizer_in_one_pack...
# checks each optimizer's step itself to 2e-5)
PACK_SPACE = """\
params:
  lr: {type: float, low: 1.0e-3, high: 3.0e-3, log: true, grid: 3}
  optimizer: {type: categorical, choices: [adam, nesterov, rmsprop]}
  momentum: {fixed: 0.9, when: {optimizer: [nesterov]}}
  hidden_units: {type: categorical, choices: [16, 48]}
  epochs: 3
  n_layers: 1
"""


def _study_trials(url: str, name: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_a_packed_grid_study_stores_every_trial_as_an_unpacked_one(project, cli) -> None:
    """The same 18-point grid run with --pack 1 and --pack 6: each point's value, per-epoch values
    and attributes agree; only the packed trials carry `pack`, naming the trials beside them."""
    from optuna.trial import TrialState

    Path = __import__("pathlib").Path
    Path("search_spaces/pack.yaml").write_text(PACK_SPACE)
    url = "sqlite:///studies/tuner.db"
    for name, pack in (("alone", "1"), ("packed", "6")):
        r = cli("study", "run", name, "--space", "pack", "--sampler", "grid", "--pruner", "none", "--pack", pack, "-q")
        assert r.code == 0, r.err
    alone = {tuple(sorted(t.params.items())): t for t in _study_trials(url, "alone")}
    packed = {tuple(sorted(t.params.items())): t for t in _study_trials(url, "packed")}
    assert len(alone) == len(packed) == 18 and set(alone) == set(packed)
    packs = set()
    # Batched and single matmuls sum in different orders: where two classes' logits all but tie,
    # one validation sample may flip between them (seen on one CPU, not another). The values may
    # differ by that one sample, the losses only at float tolerance.
    one_sample = 1.0 / len(load_workload(parse_workload("digits"), seed=0)[0].y_val)
    for point, a in alone.items():
        p = packed[point]
        assert a.state == p.state == TrialState.COMPLETE
        assert p.value == pytest.approx(a.value, abs=1.01 * one_sample)
        assert sorted(p.intermediate_values) == sorted(a.intermediate_values) == [1, 2, 3]
        assert list(p.intermediate_values.values()) == pytest.approx(list(a.intermediate_values.values()), abs=1.01 * one_sample)
        assert "pack" not in a.user_attrs
        assert set(p.user_attrs) - {"pack"} == set(a.user_attrs)
        assert p.user_attrs["history"]["val_loss"] == pytest.approx(a.user_attrs["history"]["val_loss"], rel=1e-3)
        assert p.user_attrs["seed"] == p.number  # its own seed, as alone
        packs.add(tuple(p.user_attrs["pack"]))
        assert p.number in p.user_attrs["pack"]
    assert max(map(len, packs)) == 6  # 18 trials claimed 6 at a time, each claim one pack (same shape key)


def test_packed_trials_are_pruned_one_by_one(project, cli) -> None:
    """Median pruning in packs of 8: pruned trials stop at their own epoch with the reason; the
    others of their pack train on to the end; the budget is exact."""
    from optuna.trial import TrialState

    __import__("pathlib").Path("search_spaces/prune.yaml").write_text(
        "params:\n  lr: {type: float, low: 1.0e-4, high: 0.3, log: true}\n  optimizer: {type: categorical, choices: [adam, nesterov]}\n"
        "  hidden_units: {type: categorical, choices: [24, 32]}\n  epochs: 6\n  n_layers: 1\n"
    )
    r = cli("study", "run", "p", "--space", "prune", "--sampler", "random", "--pruner", "median", "--trials", "16", "--pack", "8", "-q")
    assert r.code == 0, r.err
    trials = _study_trials("sqlite:///studies/tuner.db", "p")
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 16
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned
    for t in pruned:
        assert t.user_attrs["pruned_reason"].startswith("median pruner at epoch")
        assert len(t.intermediate_values) == t.user_attrs["epochs_run"] < 6
    by_number = {t.number: t for t in trials}
    went_on = [
        t for t in pruned if "pack" in t.user_attrs
        and any(by_number[n].state == TrialState.COMPLETE and len(by_number[n].intermediate_values) == 6 for n in t.user_attrs["pack"])
    ]  # fmt: skip
    assert went_on, "a pruned trial's pack-mates trained on to the end"


@pytest.mark.parametrize("bad", ["0", "-2", "x", "1.5"])
def test_a_bad_pack_is_one_line_and_nothing_is_written(project, cli, bad) -> None:
    r = cli("study", "run", "b", "--space", "tiny", "--pack", bad)
    assert r.code != 0 and "pack" in r.err and "auto" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (project / "studies" / "tuner.db").exists()
    Path = __import__("pathlib").Path
    Path("studies/bad.yaml").write_text(f"name: b\nspace: tiny\npack: {bad}\n")
    r = cli("study", "run", "--spec", "studies/bad.yaml")
    assert r.code != 0 and "pack" in r.err and len(r.err.strip().splitlines()) == 1


def test_a_pack_that_fails_as_a_whole_trains_its_trials_alone_and_the_worker_stops_packing(project, monkeypatch, capfd) -> None:
    """Packed training that raises for the whole pack (out of memory, an op a device lacks) before
    any epoch: its trials train alone and complete, the worker says so once and packs no more, so
    a pack the machine cannot train costs one pack's time, not the study. A pack that fails after
    reporting epochs fails its trials with the reason (their epochs cannot be reported again)."""
    import tuner.packing
    from optuna.trial import TrialState

    from tuner.spec import StudySpec
    from tuner.study import create_study, run_study

    calls: list[int] = []

    def out_of_memory(cfgs: list, *args: object, on_epoch: list, **kwargs: object) -> None:
        calls.append(len(cfgs))
        if len(calls) == 2:  # after an epoch of each member
            for report in on_epoch:
                report(EpochResult(epoch=1, train_loss=1.0, val_loss=1.0, val_accuracy=0.5, metric=0.5, lr=0.1))
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tuner.packing, "train_packed", out_of_memory)
    __import__("pathlib").Path("search_spaces/two.yaml").write_text(
        "params:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n  n_layers: {type: categorical, choices: [1, 2]}\n"
        "  hidden_units: 16\n  epochs: 2\n"
    )
    loaded = create_study(StudySpec(name="oom", space="two", sampler="random", pruner="none", trials=6), "sqlite:///studies/tuner.db")
    result = run_study(loaded, device="cpu", pack=6)  # one claim of six: a pack for each depth
    assert len(calls) == 1 and result.n_finished == 6  # one pack tried; its trials, and the other pack's, alone
    trials = _study_trials("sqlite:///studies/tuner.db", "oom")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6 and not any("pack" in t.user_attrs for t in trials)
    err = capfd.readouterr().err
    assert err.count("failed as a whole (RuntimeError: CUDA out of memory (simulated))") == 1 and "alone from now on" in err

    calls.clear()
    loaded = create_study(StudySpec(name="late", space="tiny", sampler="random", pruner="none", trials=4), "sqlite:///studies/tuner.db")
    calls.append(0)  # the next call is the second: it reports an epoch first
    result = run_study(loaded, device="cpu", pack=3)
    trials = _study_trials("sqlite:///studies/tuner.db", "late")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 3 and all(t.user_attrs["fail_reason"] == "RuntimeError: CUDA out of memory (simulated)" for t in failed)
    assert result.n_finished == 4 and not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.parametrize("pack, road", [(1, "sql"), (3, "sql"), (3, "optuna")])
def test_a_trial_failed_as_lost_while_it_trains_is_given_up_and_the_worker_goes_on(project, monkeypatch, pack, road) -> None:
    """Another worker may fail a running trial as lost (this worker's beats came late: a stalled
    machine, a saturated connection pool) and queue its copy. The worker that trained it must not
    crash at its tell: it drops that result, keeps the others of its pack, and runs on until the
    budget is met exactly; the lost trial is left as the other worker failed it. On tuner's SQL
    and on Optuna's own storage (where tuner._compat turns the SQL off)."""
    import tuner._compat as compat
    import tuner.packing
    import tuner.train
    from optuna.trial import TrialState

    from tuner import attrs as A
    from tuner.buffered import BufferedStorage
    from tuner.spec import StudySpec
    from tuner.storage import fail_running, open_storage
    from tuner.study import create_study, run_study
    from tuner.study.lost import requeue

    if road == "optuna":  # an Optuna whose tables tuner's SQL was not written for
        monkeypatch.setattr(compat, "SQL_SCHEMA", "v0.0.0")
        compat.reresolve()
    url = "sqlite:///studies/tuner.db"
    loaded = create_study(StudySpec(name="lost", space="tiny", sampler="random", pruner="none", trials=6), url)
    assert isinstance(loaded.study._storage, BufferedStorage) == (road == "sql")
    taken: list[int] = []

    def fail_the_first_as_lost() -> None:
        if taken:
            return
        import optuna

        rdb = open_storage(url)
        study = optuna.load_study(study_name="lost", storage=rdb)
        first = min(t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING)
        assert fail_running(rdb, first._trial_id, reason="lost its worker: no heartbeat for 31s (grace 30s)", kind=A.LOST_WORKER)
        requeue(study, rdb.get_trial(first._trial_id), "lost")
        taken.append(first.number)

    real_train, real_packed = tuner.train.train, tuner.packing.train_packed

    def train(*args: object, **kwargs: object) -> object:
        fail_the_first_as_lost()
        return real_train(*args, **kwargs)

    def train_packed(*args: object, **kwargs: object) -> object:
        fail_the_first_as_lost()
        return real_packed(*args, **kwargs)

    monkeypatch.setattr(tuner.train, "train", train)
    monkeypatch.setattr(tuner.packing, "train_packed", train_packed)
    result = run_study(loaded, device="cpu", pack=pack)
    assert taken and result.n_finished == 6 and result.failures == []
    trials = {t.number: t for t in _study_trials(url, "lost")}
    lost = trials[taken[0]]
    assert lost.state == TrialState.FAIL and lost.user_attrs[A.FAIL_KIND] == A.LOST_WORKER and lost.value is None
    if road == "sql":  # Optuna's storage writes each value as reported: there the epochs before the failure stay
        assert not lost.intermediate_values  # this worker's late writes were dropped, not mixed into the failed trial
    copy = [t for t in trials.values() if t.user_attrs.get(A.RETRY_OF) == lost.number]
    assert len(copy) == 1 and copy[0].state == TrialState.COMPLETE and copy[0].params == lost.params
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]


def test_a_trial_claimed_with_others_starts_when_its_own_pack_starts(project, cli) -> None:
    """Six trials claimed at once train as two packs, one after the other (one and two layers
    cannot share one). The second pack's trials start when it starts, not at the claim: their
    durations in the dashboard and the report do not count the first pack's training."""
    from optuna.trial import TrialState

    __import__("pathlib").Path("search_spaces/two.yaml").write_text(
        "params:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n  n_layers: {type: categorical, choices: [1, 2]}\n"
        "  hidden_units: 32\n  epochs: 4\n"
    )
    r = cli("study", "run", "t", "--space", "two", "--sampler", "random", "--pruner", "none", "--trials", "12", "--pack", "6", "-q")
    assert r.code == 0, r.err
    trials = [t for t in _study_trials("sqlite:///studies/tuner.db", "t") if t.state == TrialState.COMPLETE]
    assert len(trials) == 12
    seen_two_packs = False
    for claim in (trials[:6], trials[6:]):  # one worker: each claim is six consecutive numbers
        packs: dict[tuple[int, ...], list] = {}
        for t in claim:
            packs.setdefault(tuple(t.user_attrs.get("pack", [t.number])), []).append(t)
        order = sorted(packs.values(), key=lambda p: min(t.datetime_start for t in p))
        for before, after in zip(order, order[1:]):
            seen_two_packs = True
            assert min(t.datetime_start for t in after) >= max(t.datetime_complete for t in before)
        for pack in order:  # one statement starts a pack: one start for all its trials, however slow the machine
            assert len({t.datetime_start for t in pack}) == 1, [(t.number, t.datetime_start) for t in pack]
    assert seen_two_packs


def test_the_pack_a_worker_uses_by_default_and_on_request() -> None:
    """Nothing given: auto on a GPU, off on a CPU (the bench's measured choice); auto and a number
    as asked, on either."""
    from tuner.packing import PACK_CPU, PACK_CUDA, resolve_pack

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert (resolve_pack(None, cpu), resolve_pack(None, cuda)) == (1, PACK_CUDA)
    assert (resolve_pack("auto", cpu), resolve_pack("auto", cuda)) == (PACK_CPU, PACK_CUDA) == (8, 32)
    assert [resolve_pack(v, d) for v in (1, "4", 12) for d in (cpu, cuda)] == [1, 1, 4, 4, 12, 12]
    # auto under a sampler that learns from results: at most a quarter of the budget
    assert [resolve_pack("auto", cuda, budget=b, sampler="tpe") for b in (2, 30, 100, 1000)] == [1, 7, 25, 32]
    assert [resolve_pack(None, cuda, budget=30, sampler=s) for s in ("gp", "cmaes", "random", "grid", "qmc")] == [7, 7, 32, 32, 32]
    assert (resolve_pack("auto", cpu, budget=30, sampler="tpe"), resolve_pack(None, cpu, budget=30, sampler="tpe")) == (7, 1)
    assert resolve_pack(16, cuda, budget=30, sampler="tpe") == 16  # a number given is taken as it is


def test_a_members_memory_by_dry_run_adds_up_to_a_packs(digits: Dataset) -> None:
    """member_bytes (a dry run of one member's step) against a real pack of four on this device:
    the tensors a pack keeps (parameters, gradient, optimizer state, each member's shuffled split)
    and what autograd saves for its backward pass grow member by member as the dry run says."""
    from tuner.packing import _members_loss, _PackedMLP, _PackedOptimizer, member_bytes
    from tuner.workloads.models import build_model

    for c in (cfg(optimizer="adam", hidden_units=48), cfg(optimizer="sgd", hidden_units=48, n_layers=3, batch_size=32)):
        one = member_bytes(c, digits, "cpu")
        n_params = 48 * 64 + 48 + (c.n_layers - 1) * (48 * 48 + 48) + 48 * 10 + 10
        n_state = 2 if c.optimizer == "adam" else 1
        split = digits.x_train.size * 4 + digits.y_train.size * 8
        assert one > 4 * n_params * (2 + n_state) + split  # and the saved activations besides
        k = 4
        models = [build_model(c, n_features=64, n_outputs=10, image_shape=None) for _ in range(k)]
        net = _PackedMLP([c] * k, models, n_features=64, n_outputs=10, device=torch.device("cpu"))
        optimizer = _PackedOptimizer([c] * k, net.flat.shape[1], torch.device("cpu"))
        x = torch.as_tensor(digits.x_train[: c.batch_size], dtype=torch.float32).expand(k, -1, -1)
        y = torch.as_tensor(digits.y_train[: c.batch_size]).expand(k, -1)
        saved = [0]

        def count(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            loss = _members_loss(net.forward(x, training=True), y, "classification", None).sum()
        loss.backward()
        kept = sum(t.numel() * t.element_size() for t in (net.flat, net.flat_grad, *optimizer.state.values()))
        pack = saved[0] + kept + k * split
        assert pack == pytest.approx(k * one, rel=0.05)


def test_a_gpus_free_memory_caps_the_pack(project, cli, monkeypatch) -> None:
    """On a GPU, packs hold as many members as MEMORY_SHARE of its free memory does (a dry run of
    each key's widest trial); on a CPU free_memory is None and auto's number stands. Shown here on
    a CPU told it has room for three members."""
    import tuner.packing
    from optuna.trial import TrialState

    from tuner.packing import MEMORY_SHARE, free_memory, member_bytes

    assert free_memory("cpu") is None
    real = member_bytes
    sizes: list[int] = []

    def room_for_three(device: object) -> int:
        data = load_workload(parse_workload("digits"), seed=0)[0]
        return int(3.5 * real(TrainConfig(n_layers=1, hidden_units=32, epochs=2), data, "cpu") / MEMORY_SHARE)

    monkeypatch.setattr(tuner.packing, "free_memory", room_for_three)
    monkeypatch.setattr(tuner.packing, "member_bytes", lambda *a: sizes.append(1) or real(*a))
    __import__("pathlib").Path("search_spaces/mem.yaml").write_text(
        "params:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n  hidden_units: 32\n  n_layers: 1\n  epochs: 2\n"
    )
    r = cli("study", "run", "m", "--space", "mem", "--sampler", "random", "--pruner", "none", "--trials", "8", "--pack", "8", "-q")
    assert r.code == 0, r.err
    trials = _study_trials("sqlite:///studies/tuner.db", "m")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8 and sizes
    assert max(len(t.user_attrs.get("pack", [t.number])) for t in trials) == 3


def test_a_packed_member_counts_its_own_parameters_as_alone(digits: Dataset) -> None:
    """`params` (the model's trainable parameters) is measured where both trainers end an epoch:
    a packed member's is its own unpadded model's, as alone."""
    cfgs = [cfg(hidden_units=w) for w in (16, 40, 24)]
    alone, packed = alone_and_packed(cfgs, digits)
    for a, p in zip(alone, packed):
        counted = sum(x.numel() for x in a.model.parameters())
        assert {e.params for e in a.history} == {e.params for e in p.history} == {counted}
    assert len({a.history[0].params for a in alone}) == 3
