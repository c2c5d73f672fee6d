"""The training loop applies every dimension a search space can name: each test shows the setting
changing what the model, the optimizer or the history actually do, not merely that it is accepted."""

from __future__ import annotations

import itertools
import math
import random
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from tuner.epochs import Schedule, Tally
from tuner.errors import DivergedError, TunerError, WorkloadError
from tuner.params import ACTIVATIONS, OPTIMIZERS, SCHEDULERS, TrainConfig
from tuner.train import FUSED, OPTIMIZER_FACTORIES, EpochResult, _flatten, device_tensors, resolve_device, train
from tuner.workloads.data import Dataset, load_workload, parse_workload
from tuner.workloads.models import ACTIVATION_LAYERS, CNN, MLP, Dropout, apply_init, build_model

ANY_ACTIVATION = tuple({type(ACTIVATION_LAYERS[a]()) for a in ACTIVATIONS})


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_workload(parse_workload("digits"), seed=0)[0]


@pytest.fixture(scope="module")
def wine() -> Dataset:
    return load_workload(parse_workload("wine"), seed=0)[0]


def small(**overrides: object) -> TrainConfig:
    """A tiny MLP trained briefly: enough to see each setting act, fast on a CPU."""
    settings: dict[str, object] = {"epochs": 2, "n_layers": 1, "hidden_units": 32}
    settings.update(overrides)
    return TrainConfig(**settings)


def weights(model: nn.Module) -> torch.Tensor:
    """Every weight matrix or kernel (not biases, not norm scales) as one flat vector."""
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.dim() > 1])


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def regression_data(*, n_rows: int = 240, n_features: int = 5, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    y = (x @ rng.normal(size=n_features) + 0.1 * rng.normal(size=n_rows)).astype(np.float32)
    cut = n_rows * 3 // 4
    return Dataset("synthetic-regression", x[:cut], y[:cut], x[cut:], y[cut:], "regression", 0)


# ---------------------------------------------------------------- initializers

FAN_IN, FAN_OUT = 512, 256  # one wide layer: 131k weights give the std to well under 1%
TANH_GAIN, RELU_GAIN = 5.0 / 3.0, math.sqrt(2.0)


def wide_layer_and_conv() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FAN_IN, FAN_OUT), nn.Tanh(), nn.Conv2d(32, 64, 3))


def expected_std(init: str, activation: str, fan_in: int, fan_out: int, init_std: float) -> float:
    gain = {"tanh": TANH_GAIN, "relu": RELU_GAIN}[activation]
    return {
        "xavier_uniform": gain * math.sqrt(2.0 / (fan_in + fan_out)),
        "xavier_normal": gain * math.sqrt(2.0 / (fan_in + fan_out)),
        "kaiming_uniform": gain / math.sqrt(fan_in),
        "kaiming_normal": gain / math.sqrt(fan_in),
        # rows orthonormal, scaled by the gain: each row's squares sum to gain^2 over fan_in entries
        "orthogonal": gain / math.sqrt(fan_in),
        "scaled_normal": init_std,
    }[init]


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize(
    "init", ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal", "scaled_normal"]
)
def test_initializer_gives_its_std_for_the_activation_and_zero_biases(init: str, activation: str) -> None:
    model = wide_layer_and_conv()
    apply_init(model, TrainConfig(init=init, activation=activation, init_std=0.05))

    linear, conv = model[0], model[2]
    conv_fan_in, conv_fan_out = 32 * 9, 64 * 9
    want_linear = expected_std(init, activation, FAN_IN, FAN_OUT, 0.05)
    want_conv = expected_std(init, activation, conv_fan_in, conv_fan_out, 0.05)
    assert linear.weight.std().item() == pytest.approx(want_linear, rel=0.03)
    assert conv.weight.std().item() == pytest.approx(want_conv, rel=0.03)
    assert torch.all(linear.bias == 0) and torch.all(conv.bias == 0)


def test_xavier_uniform_stays_within_the_glorot_bound_and_fills_it() -> None:
    model = wide_layer_and_conv()
    apply_init(model, TrainConfig(init="xavier_uniform", activation="tanh"))
    bound = TANH_GAIN * math.sqrt(6.0 / (FAN_IN + FAN_OUT))
    w = model[0].weight
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.99 * bound  # uniform over the whole interval, not a narrower one
    assert w.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.02)


def test_kaiming_normal_std_is_he_std_for_the_fan_in() -> None:
    model = wide_layer_and_conv()
    apply_init(model, TrainConfig(init="kaiming_normal", activation="relu"))
    assert model[0].weight.std().item() == pytest.approx(math.sqrt(2.0 / FAN_IN), rel=0.02)
    assert model[0].weight.mean().item() == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("activation,gain", [("tanh", TANH_GAIN), ("relu", RELU_GAIN)])
def test_orthogonal_rows_are_orthogonal_with_the_activation_gain(activation: str, gain: float) -> None:
    model = wide_layer_and_conv()
    apply_init(model, TrainConfig(init="orthogonal", activation=activation))
    w = model[0].weight.double()  # (256, 512): wider than tall, so the rows are orthonormal
    assert torch.allclose(w @ w.T, gain**2 * torch.eye(FAN_OUT, dtype=torch.float64), atol=1e-4)
    k = model[2].weight.double().reshape(64, -1)  # a conv kernel as (out, in * kh * kw)
    assert torch.allclose(k @ k.T, gain**2 * torch.eye(64, dtype=torch.float64), atol=1e-4)


def test_default_init_keeps_pytorch_own_initialization() -> None:
    fresh = wide_layer_and_conv()
    reinit = wide_layer_and_conv()
    apply_init(reinit, TrainConfig(init="default"))
    for a, b in zip(fresh.parameters(), reinit.parameters()):
        assert torch.equal(a, b)
    assert fresh[0].bias.abs().max().item() > 0  # PyTorch's biases, not zeroed


def test_train_applies_the_configured_initializer(digits: Dataset) -> None:
    # lr so small the weights cannot move: what is left after training is what the initializer drew
    cfg = small(init="scaled_normal", init_std=1e-3, hidden_units=256, optimizer="sgd", lr=1e-12, epochs=1)
    result = train(cfg, digits)
    assert weights(result.model).std().item() == pytest.approx(1e-3, rel=0.03)
    biases = [p for p in result.model.parameters() if p.dim() == 1]
    assert all(b.abs().max().item() < 1e-9 for b in biases)


# ---------------------------------------------------------------- regularization


def weight_norm(model: nn.Module) -> float:
    return weights(model).norm().item()


@pytest.mark.parametrize("optimizer,lr,decay", [("sgd", 0.1, 0.5), ("adamw", 0.01, 1.0), ("adam", 0.01, 0.1)])
def test_weight_decay_shrinks_the_weights(digits: Dataset, optimizer: str, lr: float, decay: float) -> None:
    plain = train(small(optimizer=optimizer, lr=lr, epochs=3), digits)
    decayed = train(small(optimizer=optimizer, lr=lr, epochs=3, weight_decay=decay), digits)
    assert weight_norm(decayed.model) < 0.8 * weight_norm(plain.model)


def test_adamw_decay_is_decoupled_and_adam_decay_is_l2() -> None:
    # With a zero gradient, AdamW still shrinks a weight by exactly lr * decay; Adam's L2 enters the
    # gradient instead, and its normalized step moves the weight by about lr.
    cfg = TrainConfig(lr=0.1, weight_decay=0.5)
    moved = {}
    for name in ("adamw", "adam"):
        p = nn.Parameter(torch.ones(3))
        opt = OPTIMIZER_FACTORIES[name]([p], cfg)
        p.grad = torch.zeros(3)
        opt.step()
        moved[name] = 1.0 - p.detach()[0].item()
    assert moved["adamw"] == pytest.approx(0.1 * 0.5, rel=1e-5)
    assert moved["adam"] == pytest.approx(0.1, rel=1e-3)


def test_l1_drives_weights_toward_zero(digits: Dataset) -> None:
    plain = train(small(optimizer="adam", lr=0.01, epochs=3), digits)
    sparse = train(small(optimizer="adam", lr=0.01, epochs=3, l1=1e-3), digits)
    w_plain, w_sparse = weights(plain.model).abs(), weights(sparse.model).abs()
    assert w_sparse.mean() < 0.8 * w_plain.mean()
    assert (w_sparse < 1e-3).float().mean() > 5 * (w_plain < 1e-3).float().mean()


def test_lbfgs_weight_decay_is_an_l2_term_in_the_loss(digits: Dataset) -> None:
    optimizer = OPTIMIZER_FACTORIES["lbfgs"](list(nn.Linear(2, 2).parameters()), TrainConfig(weight_decay=0.1))
    assert "weight_decay" not in optimizer.defaults  # L-BFGS has none: the loop must add it

    plain = train(small(optimizer="lbfgs", lr=0.5, epochs=3), digits)
    decayed = train(small(optimizer="lbfgs", lr=0.5, epochs=3, weight_decay=0.1), digits)
    # the reported training loss includes the penalty, and the penalty pulls the weights in
    assert decayed.history[0].train_loss > plain.history[0].train_loss + 0.3
    assert weight_norm(decayed.model) < 0.5 * weight_norm(plain.model)
    # evaluation scores the plain cross-entropy: the penalty is not part of val_loss
    x_val, y_val = device_tensors(digits, "standard", torch.device("cpu"))[2:]
    with torch.no_grad():
        ce = nn.functional.cross_entropy(decayed.model(x_val), y_val).item()
    assert decayed.last.val_loss == pytest.approx(ce, rel=1e-5)


def test_label_smoothing_raises_training_loss_but_not_eval_loss(digits: Dataset) -> None:
    plain = train(small(optimizer="adam", lr=0.01), digits)
    smoothed = train(small(optimizer="adam", lr=0.01, label_smoothing=0.3), digits)
    assert smoothed.history[0].train_loss > plain.history[0].train_loss + 0.2

    x_val, y_val = device_tensors(digits, "standard", torch.device("cpu"))[2:]
    with torch.no_grad():
        logits = smoothed.model(x_val)
    plain_ce = nn.functional.cross_entropy(logits, y_val).item()
    smoothed_ce = nn.functional.cross_entropy(logits, y_val, label_smoothing=0.3).item()
    assert smoothed.last.val_loss == pytest.approx(plain_ce, rel=1e-5)
    assert smoothed.last.val_loss != pytest.approx(smoothed_ce, rel=1e-2)


def test_dropout_drops_in_training_only(digits: Dataset) -> None:
    model = build_model(small(n_layers=2, dropout=0.5), n_features=64, n_outputs=10, image_shape=None)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.5 for d in drops)
    x = torch.randn(32, 64)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))

    # in the loop: training runs with dropout on (higher loss), evaluation with it off
    plain = train(small(optimizer="adam", lr=0.01), digits)
    dropped = train(small(optimizer="adam", lr=0.01, dropout=0.8), digits)
    assert dropped.history[0].train_loss > plain.history[0].train_loss
    assert not dropped.model.training
    x_val, y_val = device_tensors(digits, "standard", torch.device("cpu"))[2:]
    with torch.no_grad():
        ce = nn.functional.cross_entropy(dropped.model(x_val), y_val).item()
    assert dropped.last.val_loss == pytest.approx(ce, rel=1e-5)



@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_fast_dropout_keeps_one_minus_p_and_preserves_the_mean(p: float) -> None:
    torch.manual_seed(0)
    drop = Dropout(p).train()
    x = torch.ones(400, 500, requires_grad=True)
    out = drop(x)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.005)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))  # survivors scaled by 1/(1-p)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # the gradient flows through the same mask and scale
    assert torch.equal(drop.eval()(x), x)


def test_fast_dropout_is_seeded_like_the_rest_of_training() -> None:
    drop = Dropout(0.5).train()
    x = torch.ones(64, 64)
    torch.manual_seed(3)
    first = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), first)


# ---------------------------------------------------------------- the loop's own machinery


@pytest.mark.parametrize("optimizer", [o for o in OPTIMIZERS if o != "lbfgs"])
def test_flat_parameters_step_exactly_like_separate_ones(optimizer: str) -> None:
    """The loop steps one flat tensor holding every parameter; each update rule is elementwise,
    so three steps must leave the same weights as three steps over the separate parameters."""
    cfg = TrainConfig(optimizer=optimizer, lr=0.01, momentum=0.9, weight_decay=0.01)
    torch.manual_seed(0)
    separate = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    flat_model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    flat_model.load_state_dict(separate.state_dict())
    flat = _flatten(list(flat_model.parameters()))
    assert flat is not None and flat.numel() == sum(p.numel() for p in separate.parameters())
    assert all(p.data_ptr() >= flat.data_ptr() for p in flat_model.parameters())  # views into it
    fast = {"fused": True} if optimizer in FUSED else {}
    opt_separate = OPTIMIZER_FACTORIES[optimizer](list(separate.parameters()), cfg)
    opt_flat = OPTIMIZER_FACTORIES[optimizer]([flat], cfg, **fast)
    for step in range(3):
        x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
        opt_separate.zero_grad()
        nn.functional.cross_entropy(separate(x), y).backward()
        opt_separate.step()
        flat.grad.zero_()
        nn.functional.cross_entropy(flat_model(x), y).backward()
        # backward accumulated into the one buffer the optimizer reads
        assert torch.allclose(flat.grad, torch.cat([p.grad.reshape(-1) for p in separate.parameters()]), atol=1e-6)
        opt_flat.step()
    for a, b in zip(separate.parameters(), flat_model.parameters()):
        assert torch.allclose(a, b, atol=1e-5), optimizer


def test_parameters_that_cannot_share_a_buffer_are_left_alone() -> None:
    assert _flatten([nn.Parameter(torch.ones(3))]) is None  # one: nothing to gain
    mixed = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3, dtype=torch.float64))]
    assert _flatten(mixed) is None


def test_epoch_loss_and_accuracy_cover_every_row_once(digits: Dataset) -> None:
    """With a learning rate too small to move the weights, the first epoch's training loss and
    accuracy are those of the initial model over the whole training split, whatever the batching."""
    cfg = small(optimizer="sgd", lr=1e-12, epochs=1, batch_size=100, dropout=0.0, init="xavier_uniform")
    result = train(cfg, digits, seed=5)
    torch.manual_seed(5)
    model = build_model(cfg, n_features=64, n_outputs=10, image_shape=None)
    apply_init(model, cfg)
    x, y = device_tensors(digits, "standard", torch.device("cpu"))[:2]
    with torch.no_grad():
        out = model(x)
    assert result.history[0].train_loss == pytest.approx(nn.functional.cross_entropy(out, y).item(), rel=1e-4)
    assert result.history[0].train_accuracy == pytest.approx((out.argmax(1) == y).float().mean().item(), abs=1e-6)


def test_tally_sums_in_groups_without_losing_batches() -> None:
    tally = Tally("classification", torch.device("cpu"))
    outs = torch.eye(3).repeat(50, 1)  # predicts 0, 1, 2, 0, 1, 2, ...
    ys = torch.zeros(150, dtype=torch.long)
    for i in range(150):  # more than one group of held batches
        tally.add(torch.tensor(float(i)), outs[i : i + 1], ys[i : i + 1])
    loss_sum, correct = tally.totals().tolist()
    assert tally.n == 150
    assert loss_sum == sum(range(150))
    assert correct == 50


# ---------------------------------------------------------------- optimizers

# a learning rate at which each update rule learns digits in three epochs
LEARNING_RATES = {
    "sgd": 0.1,
    "momentum": 0.05,
    "nesterov": 0.05,
    "rmsprop": 1e-3,
    "adagrad": 0.05,
    "adadelta": 10.0,
    "adam": 1e-2,
    "adamw": 1e-2,
    "lbfgs": 0.02,  # without a line search, larger steps overshoot on some batches (0.1 blew up at epoch 3 on some CPUs)
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_learns_digits(digits: Dataset, optimizer: str) -> None:
    result = train(small(optimizer=optimizer, lr=LEARNING_RATES[optimizer], epochs=3), digits)
    assert result.value > 0.7  # chance is 0.1
    assert result.last.train_loss < result.history[0].train_loss


DISTINCT = TrainConfig(lr=0.123, momentum=0.77, beta1=0.81, beta2=0.97, eps=1e-5, rho=0.66, lbfgs_history=7, weight_decay=0.01)
EXPECTED_OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.123, "momentum": 0, "nesterov": False, "weight_decay": 0.01}),
    "momentum": (torch.optim.SGD, {"lr": 0.123, "momentum": 0.77, "nesterov": False, "weight_decay": 0.01}),
    "nesterov": (torch.optim.SGD, {"lr": 0.123, "momentum": 0.77, "nesterov": True, "weight_decay": 0.01}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 0.123, "alpha": 0.66, "eps": 1e-5, "momentum": 0.77, "weight_decay": 0.01}),
    "adagrad": (torch.optim.Adagrad, {"lr": 0.123, "eps": 1e-5, "weight_decay": 0.01}),
    "adadelta": (torch.optim.Adadelta, {"lr": 0.123, "rho": 0.66, "eps": 1e-5, "weight_decay": 0.01}),
    "adam": (torch.optim.Adam, {"lr": 0.123, "betas": (0.81, 0.97), "eps": 1e-5, "weight_decay": 0.01}),
    "adamw": (torch.optim.AdamW, {"lr": 0.123, "betas": (0.81, 0.97), "eps": 1e-5, "weight_decay": 0.01}),
    "lbfgs": (torch.optim.LBFGS, {"lr": 0.123, "history_size": 7}),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_optimizer_factory_builds_what_the_config_says(optimizer: str) -> None:
    kind, settings = EXPECTED_OPTIMIZERS[optimizer]
    built = OPTIMIZER_FACTORIES[optimizer](list(nn.Linear(3, 2).parameters()), DISTINCT)
    assert type(built) is kind
    group = built.param_groups[0]
    for key, value in settings.items():
        assert group[key] == pytest.approx(value), key


# ---------------------------------------------------------------- learning-rate schedules


def lrs(result: object) -> list[float]:
    return [h.lr for h in result.history]


def test_warmup_ramps_linearly_to_the_peak(wine: Dataset) -> None:
    result = train(small(lr=0.01, warmup_epochs=3, epochs=5), wine)
    assert lrs(result) == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])


def test_step_schedule_decays_by_gamma_every_step_size(wine: Dataset) -> None:
    result = train(small(lr=0.01, scheduler="step", step_size=2, gamma=0.5, epochs=6), wine)
    assert lrs(result) == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])


def test_step_schedule_starts_after_warmup(wine: Dataset) -> None:
    result = train(small(lr=0.01, scheduler="step", step_size=2, gamma=0.1, warmup_epochs=1, epochs=5), wine)
    assert lrs(result) == pytest.approx([0.005, 0.01, 0.01, 0.001, 0.001])


def test_cosine_schedule_decreases_from_the_peak(wine: Dataset) -> None:
    result = train(small(lr=0.01, scheduler="cosine", epochs=5), wine)
    rates = lrs(result)
    assert rates[0] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * e / 5)) for e in range(5)])


def test_onecycle_rises_then_falls_within_training(digits: Dataset) -> None:
    # batch 256 on 1437 rows: 6 steps per epoch; the peak comes 30% into the 36 steps, in epoch 3
    result = train(small(lr=0.02, scheduler="onecycle", batch_size=256, epochs=6), digits)
    rates = lrs(result)
    peak = rates.index(max(rates))
    assert rates[0] == pytest.approx(0.02 / 25)  # OneCycleLR starts at max_lr / div_factor
    assert 0 < peak < len(rates) - 1
    assert all(a < b for a, b in zip(rates[: peak + 1], rates[1 : peak + 1]))
    assert all(a > b for a, b in zip(rates[peak:], rates[peak + 1 :]))
    assert max(rates) <= 0.02


def run_schedule(cfg: TrainConfig, steps_per_epoch: int, losses: list[float] | None = None) -> list[float]:
    """The learning rate at every step of training, as the loop asks the schedule for it."""
    schedule = Schedule(cfg, steps_per_epoch)
    seen, step = [], 0
    for epoch in range(1, cfg.epochs + 1):
        for _ in range(steps_per_epoch):
            seen.append(schedule.rate(epoch, step))
            step += 1
        schedule.end_epoch(epoch, losses[epoch - 1] if losses else 1.0)
    return seen


class TorchSchedule:
    """The real thing tuner.epochs.Schedule replaces: the same rule driving an optimizer through
    torch's own OneCycleLR and ReduceLROnPlateau (as tuner.train did until 2026-12)."""

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        self.cfg, self.optimizer, self.onecycle, self.plateau = cfg, optimizer, None, None
        if cfg.scheduler == "onecycle":
            pct = cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs else 0.3
            self.onecycle = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=min(max(pct, 0.01), 0.99), cycle_momentum=False
            )
        elif cfg.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.gamma, patience=cfg.plateau_patience)

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def start_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        if self.onecycle is not None:
            return
        if epoch <= cfg.warmup_epochs:
            self._set(cfg.lr * epoch / (cfg.warmup_epochs + 1))
            return
        if self.plateau is not None:
            if epoch == cfg.warmup_epochs + 1 and cfg.warmup_epochs:
                self._set(cfg.lr)
            return
        e, n = epoch - cfg.warmup_epochs - 1, max(cfg.epochs - cfg.warmup_epochs, 1)
        if cfg.scheduler == "step":
            self._set(cfg.lr * cfg.gamma ** (e // cfg.step_size))
        elif cfg.scheduler == "cosine":
            self._set(cfg.lr * 0.5 * (1.0 + math.cos(math.pi * e / n)))
        else:
            self._set(cfg.lr)

    def after_batch(self) -> None:
        if self.onecycle is not None:
            self.onecycle.step()

    def end_epoch(self, epoch: int, val_loss: float) -> None:
        if self.plateau is not None and epoch > self.cfg.warmup_epochs:
            self.plateau.step(val_loss)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("warmup", [0, 2])
@pytest.mark.parametrize("seed", range(4))
def test_the_schedule_gives_torch_s_rates_step_by_step(scheduler: str, warmup: int, seed: int) -> None:
    """tuner.epochs.Schedule computes the rates itself; torch's schedulers driving a real
    optimizer give the same floats at every step, validation losses that stall and improve included."""
    rng = random.Random(seed)
    epochs, steps = rng.randint(warmup + 2, 12), rng.randint(1, 9)
    cfg = TrainConfig(lr=rng.choice([0.1, 0.013, 3e-4]), scheduler=scheduler, epochs=epochs, warmup_epochs=warmup, gamma=rng.choice([0.1, 0.5]),
                      step_size=rng.randint(1, 3), plateau_patience=rng.randint(0, 2), optimizer="sgd")
    losses = [rng.choice([1.0, 0.9, 0.99995, 2.0]) for _ in range(epochs)]
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    reference, seen = TorchSchedule(cfg, optimizer, steps), []
    for epoch in range(1, epochs + 1):
        reference.start_epoch(epoch)
        for _ in range(steps):
            seen.append(reference.lr)
            optimizer.step()
            reference.after_batch()
        reference.end_epoch(epoch, losses[epoch - 1])
    assert run_schedule(cfg, steps, losses) == seen


@pytest.mark.parametrize("warmup,peak_at", [(0, 0.3), (5, 0.5)])
def test_onecycle_peaks_at_lr_where_warmup_says(warmup: int, peak_at: float) -> None:
    cfg = TrainConfig(lr=0.1, scheduler="onecycle", epochs=10, warmup_epochs=warmup, optimizer="sgd")
    seen = run_schedule(cfg, steps_per_epoch=10)
    assert max(seen) == pytest.approx(0.1, rel=1e-3)
    assert seen.index(max(seen)) == pytest.approx(peak_at * 100, abs=2)
    assert seen[-1] < 0.1 / 25 / 100  # annealed far below where it started


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_onecycle_trains_every_optimizer(digits: Dataset, optimizer: str) -> None:
    cfg = small(optimizer=optimizer, lr=LEARNING_RATES[optimizer], scheduler="onecycle", momentum=0.77, beta1=0.81, beta2=0.97)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = train(cfg, digits)
    assert result.epochs_run == 2 and math.isfinite(result.last.val_loss)
    rates = lrs(result)
    assert rates[0] == pytest.approx(LEARNING_RATES[optimizer] / 25)


def test_plateau_cuts_lr_after_patience_without_progress() -> None:
    cfg = TrainConfig(lr=0.1, scheduler="plateau", gamma=0.1, plateau_patience=2, epochs=9)
    # the validation loss never improves after epoch 1: epochs 2-4 make three without progress
    # (more than the patience of 2)
    assert run_schedule(cfg, steps_per_epoch=1) == pytest.approx([0.1] * 4 + [0.01] * 3 + [0.001] * 2)


def test_plateau_keeps_lr_while_loss_improves() -> None:
    cfg = TrainConfig(lr=0.1, scheduler="plateau", gamma=0.1, plateau_patience=0, epochs=6)
    assert run_schedule(cfg, steps_per_epoch=1, losses=[1.0 / e for e in range(1, 7)]) == pytest.approx([0.1] * 6)


def test_plateau_in_training_cuts_when_val_loss_stalls(digits: Dataset) -> None:
    # lr so low the validation loss moves by less than the plateau threshold (1e-4 relative)
    cfg = small(optimizer="sgd", lr=1e-5, scheduler="plateau", gamma=0.1, plateau_patience=1, warmup_epochs=1, epochs=6, hidden_units=16)
    assert lrs(train(cfg, digits)) == pytest.approx([5e-6, 1e-5, 1e-5, 1e-5, 1e-6, 1e-6])


# ---------------------------------------------------------------- stopping: divergence, early stopping, pruning


def test_divergence_raises_at_the_first_bad_epoch(digits: Dataset) -> None:
    seen: list[EpochResult] = []
    with pytest.raises(DivergedError) as caught:
        train(small(optimizer="sgd", lr=1e6, epochs=50), digits, on_epoch=seen.append)
    assert caught.value.epoch == 1
    assert not math.isfinite(caught.value.loss)
    assert seen == []  # stopped inside epoch 1, not after running the budget
    message = str(caught.value)
    assert "\n" not in message and "epoch 1" in message


def test_early_stopping_stops_when_the_metric_stalls(digits: Dataset) -> None:
    # lr so low that the accuracy never changes: the best stays at epoch 1
    result = train(small(optimizer="sgd", lr=1e-9, patience=2, epochs=10), digits)
    assert result.stopped == "early_stopping"
    assert result.epochs_run == 3 < 10
    assert result.best_epoch == 1
    assert result.value == result.history[0].metric


def test_without_patience_all_epochs_run(digits: Dataset) -> None:
    result = train(small(optimizer="sgd", lr=1e-9, patience=0, epochs=5), digits)
    assert result.stopped == "completed"
    assert result.epochs_run == 5


def test_on_epoch_sees_each_epoch_once(digits: Dataset) -> None:
    seen: list[EpochResult] = []
    result = train(small(epochs=3), digits, metric="val_loss", on_epoch=seen.append)
    assert [r.epoch for r in seen] == [1, 2, 3]
    assert seen == result.history
    assert all(r.metric == r.val_loss and 0 <= r.val_accuracy <= 1 for r in seen)
    assert result.value == min(r.val_loss for r in seen)


def test_raising_in_on_epoch_stops_training(digits: Dataset) -> None:
    class Pruned(Exception):
        pass

    calls: list[int] = []

    def prune_at_two(result: EpochResult) -> None:
        calls.append(result.epoch)
        if result.epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        train(small(epochs=10), digits, on_epoch=prune_at_two)
    assert calls == [1, 2]


def test_lbfgs_evaluates_one_step_with_one_set_of_dropout_masks(digits: Dataset) -> None:
    """L-BFGS evaluates the loss several times a step and builds its curvature from the
    differences: each evaluation must see the same function, the same random masks included."""
    draws: list[float] = []

    class Recording(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = MLP(small(dropout=0.5), n_features=64, n_outputs=10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                draws.append(torch.rand(()).item())  # what the dropout masks are drawn from
            return self.mlp(x)

    cfg = small(optimizer="lbfgs", lr=0.1, dropout=0.5, batch_size=512, epochs=1)
    train(cfg, digits, model=Recording())
    n_steps = math.ceil(len(digits.x_train) / cfg.batch_size)
    assert len(draws) > n_steps  # several evaluations a step...
    runs = [len(list(group)) for _, group in itertools.groupby(draws)]
    assert len(runs) == n_steps  # ...each step's drawing the same masks, each step new ones


# ---------------------------------------------------------------- gradient clipping


def one_full_batch_step(digits: Dataset, grad_clip: float) -> float:
    """How far one SGD step over the whole training split moves the parameters."""
    torch.manual_seed(0)
    model = MLP(small(), n_features=64, n_outputs=10)
    before = flat_params(model)
    train(small(optimizer="sgd", lr=0.5, grad_clip=grad_clip, batch_size=4096, epochs=1), digits, model=model)
    return (flat_params(model) - before).norm().item()


def test_grad_clip_bounds_the_update(digits: Dataset) -> None:
    clipped = one_full_batch_step(digits, grad_clip=1e-3)
    assert clipped <= 0.5 * 1e-3 * (1 + 1e-4)
    assert clipped == pytest.approx(0.5 * 1e-3, rel=1e-3)  # the gradient was larger: scaled down to the clip
    assert one_full_batch_step(digits, grad_clip=0.0) > 100 * clipped


# ---------------------------------------------------------------- architecture


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_models_use_the_configured_activation(activation: str) -> None:
    cfg = small(activation=activation, n_layers=3, channels=4)
    expected = type(ACTIVATION_LAYERS[activation]())
    mlp = build_model(cfg, n_features=64, n_outputs=10, image_shape=None)
    cnn = build_model(replace(cfg, model="cnn"), n_features=64, n_outputs=10, image_shape=(1, 8, 8))
    for model, count in ((mlp, 3), (cnn, 3 + 2)):
        acts = [m for m in model.modules() if isinstance(m, ANY_ACTIVATION)]
        assert len(acts) == count
        assert all(type(m) is expected for m in acts)
    if activation == "leaky_relu":
        assert all(m.negative_slope == 0.01 for m in mlp.modules() if isinstance(m, nn.LeakyReLU))


@pytest.mark.parametrize(
    "norm,mlp_layer,cnn_layer",
    [("batch", nn.BatchNorm1d, nn.BatchNorm2d), ("layer", nn.LayerNorm, nn.GroupNorm), ("none", None, None)],
)
def test_models_carry_the_configured_norm(norm: str, mlp_layer: type | None, cnn_layer: type | None) -> None:
    cfg = small(norm=norm, n_layers=2, hidden_units=24, channels=4)
    mlp = build_model(cfg, n_features=64, n_outputs=10, image_shape=None)
    cnn = build_model(replace(cfg, model="cnn"), n_features=64, n_outputs=10, image_shape=(1, 8, 8))
    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    mlp_norms = [m for m in mlp.modules() if isinstance(m, norm_types)]
    cnn_norms = [m for m in cnn.features.modules() if isinstance(m, norm_types)]
    if norm == "none":
        assert mlp_norms == [] and cnn_norms == []
        return
    assert [type(m) for m in mlp_norms] == [mlp_layer] * 2
    assert [type(m) for m in cnn_norms] == [cnn_layer] * 2
    assert all(m.num_groups == 1 for m in cnn_norms if isinstance(m, nn.GroupNorm))  # one group: layer norm


def test_batch_norm_is_in_the_training_path(digits: Dataset) -> None:
    result = train(small(norm="batch"), digits)
    bns = [m for m in result.model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns and all(m.num_batches_tracked.item() > 0 and m.running_mean.abs().sum() > 0 for m in bns)


def test_batch_norm_skips_a_last_batch_of_one() -> None:
    # 9 training rows in batches of 4 leave one row over: batch norm cannot normalize it
    rng = np.random.default_rng(0)
    x = rng.normal(size=(13, 4)).astype(np.float32)
    y = np.array([0, 1] * 6 + [0])
    data = Dataset("nine", x[:9], y[:9], x[9:], y[9:], "classification", 2)
    result = train(small(norm="batch", batch_size=4), data)
    assert result.epochs_run == 2


def test_cnn_builds_convolutions_on_digits_and_learns(digits: Dataset) -> None:
    result = train(small(model="cnn", channels=4, lr=3e-3), digits)
    assert isinstance(result.model, CNN)
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 4), (4, 8)]
    assert result.value > 0.5


def test_cnn_on_tabular_data_is_refused(wine: Dataset) -> None:
    with pytest.raises(WorkloadError) as caught:
        train(small(model="cnn"), wine)
    message = str(caught.value)
    assert "\n" not in message and "model=cnn" in message and "mlp" in message


def test_a_user_model_is_trained_as_given(digits: Dataset) -> None:
    torch.manual_seed(0)
    mine = nn.Sequential(nn.Linear(64, 10))
    before = flat_params(mine)
    result = train(small(lr=0.01), digits, model=mine)
    assert result.model is mine
    assert not torch.equal(flat_params(mine), before)
    assert result.value > 0.5


# ---------------------------------------------------------------- data on the device


def test_standard_scaling_centres_training_features(wine: Dataset) -> None:
    x_tr, _, x_va, _ = device_tensors(wine, "standard", torch.device("cpu"))
    assert torch.allclose(x_tr.mean(0), torch.zeros(wine.n_features), atol=1e-4)
    assert torch.allclose(x_tr.std(0, unbiased=False), torch.ones(wine.n_features), atol=1e-3)
    mean, std = wine.x_train.mean(0), wine.x_train.std(0)
    assert np.allclose(x_va.numpy(), (wine.x_val - mean) / std, atol=1e-4)  # validation uses train statistics


def test_minmax_scaling_maps_training_features_to_unit_range(wine: Dataset) -> None:
    x_tr, _, x_va, _ = device_tensors(wine, "minmax", torch.device("cpu"))
    assert torch.allclose(x_tr.min(0).values, torch.zeros(wine.n_features))
    assert torch.allclose(x_tr.max(0).values, torch.ones(wine.n_features))
    lo, hi = wine.x_train.min(0), wine.x_train.max(0)
    assert np.allclose(x_va.numpy(), (wine.x_val - lo) / (hi - lo), atol=1e-5)


def test_no_scaling_leaves_features_as_they_are(wine: Dataset) -> None:
    x_tr, y_tr, x_va, y_va = device_tensors(wine, "none", torch.device("cpu"))
    assert np.array_equal(x_tr.numpy(), wine.x_train) and np.array_equal(x_va.numpy(), wine.x_val)
    assert np.array_equal(y_tr.numpy(), wine.y_train) and y_tr.dtype == torch.int64


def test_constant_feature_is_left_finite(digits: Dataset) -> None:
    # digits has pixels that are always 0: their std is 0 and must not divide
    for scaling in ("standard", "minmax"):
        x_tr, _, x_va, _ = device_tensors(digits, scaling, torch.device("cpu"))
        assert torch.isfinite(x_tr).all() and torch.isfinite(x_va).all()


def test_device_tensors_are_built_once_and_reused(wine: Dataset) -> None:
    first = device_tensors(wine, "standard", torch.device("cpu"))
    again = device_tensors(wine, "standard", torch.device("cpu"))
    assert all(a is b for a, b in zip(first, again))
    other = device_tensors(wine, "minmax", torch.device("cpu"))
    assert other[0] is not first[0]


def test_scaling_reaches_the_model(wine: Dataset) -> None:
    # wine's raw features run from ~0.1 to ~1700: unscaled, the same run learns far less
    scaled = train(small(optimizer="adam", lr=0.01, epochs=3, scaling="standard"), wine)
    raw = train(small(optimizer="adam", lr=0.01, epochs=3, scaling="none"), wine)
    assert scaled.value > raw.value + 0.1


# ---------------------------------------------------------------- reproducibility, devices, regression


def test_same_seed_reproduces_the_history(digits: Dataset) -> None:
    cfg = small(dropout=0.3, epochs=2)
    a, b = train(cfg, digits, seed=7), train(cfg, digits, seed=7)
    assert [(h.train_loss, h.val_loss) for h in a.history] == [(h.train_loss, h.val_loss) for h in b.history]
    c = train(cfg, digits, seed=8)
    assert [h.train_loss for h in c.history] != [h.train_loss for h in a.history]


def test_resolve_device_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_resolve_device_cuda_without_gpu_says_so() -> None:
    with pytest.raises(TunerError) as caught:
        resolve_device("cuda")
    message = str(caught.value)
    assert "\n" not in message and "cuda" in message and "no GPU" in message and "--device cpu" in message


@pytest.mark.parametrize("name", ["bogus", "mps", "meta"])
def test_resolve_device_refuses_other_names(name: str) -> None:
    if name == "mps" and torch.backends.mps.is_available():
        pytest.skip("mps exists here")
    with pytest.raises(TunerError) as caught:
        resolve_device(name)
    message = str(caught.value)
    assert "\n" not in message and repr(name) in message and "auto, cpu, cuda" in message


def test_regression_reports_rmse_from_mse() -> None:
    data = regression_data()
    result = train(small(optimizer="adam", lr=0.01, epochs=4), data, metric="val_rmse")
    assert result.model[-1].out_features == 1
    for epoch in result.history:
        assert epoch.val_accuracy is None
        assert epoch.metric == pytest.approx(math.sqrt(epoch.val_loss))
    assert result.value == min(h.metric for h in result.history)
    assert result.last.val_loss < result.history[0].val_loss

    x_val, y_val = device_tensors(data, "standard", torch.device("cpu"))[2:]
    with torch.no_grad():
        mse = nn.functional.mse_loss(result.model(x_val).squeeze(-1), y_val).item()
    assert result.last.val_loss == pytest.approx(mse, rel=1e-5)


def test_warm_up_pays_the_first_optimizers_imports_before_any_trial() -> None:
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from tuner.train import warm_up\n"
        "assert 'torch._dynamo' not in sys.modules\n"  # what a new worker's first optimizer would import (~1 s)
        "warm_up('cpu')\n"
        "assert 'torch._dynamo' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
