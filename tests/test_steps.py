"""tuner/steps.py: direct optimizer steps do what torch.optim's steps do, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from tuner.steps import direct_step

CASES: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    "adam_l2": lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=1e-3, fused=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, fused=True),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-8, weight_decay=1e-3, fused=True),
    "adagrad_decay": lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01, fused=True),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_l2": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-2),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2),
    "rmsprop_momentum": lambda p: torch.optim.RMSprop(p, lr=1e-2, alpha=0.9, eps=1e-6, momentum=0.5, weight_decay=1e-3),
}


def _pair(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]) -> tuple[Any, ...]:
    torch.manual_seed(0)
    start = torch.randn(300)
    mine, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    return mine, make([mine]), theirs, make([theirs])


def _run(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], schedule: Callable[[torch.optim.Optimizer], Any] | None = None) -> None:
    mine, mine_opt, theirs, theirs_opt = _pair(make)
    step = direct_step(mine_opt)
    assert step is not None
    schedules = [schedule(o) for o in (mine_opt, theirs_opt)] if schedule else []
    for i in range(40):
        grad = torch.randn(300) * (1 + i % 3)
        mine.grad, theirs.grad = grad.clone(), grad.clone()
        step()
        theirs_opt.step()
        for s in schedules:
            s.step()
        assert torch.equal(mine, theirs), f"step {i}"
    for key, value in theirs_opt.state[theirs].items():
        assert torch.equal(torch.as_tensor(mine_opt.state[mine][key]), torch.as_tensor(value)), key


@pytest.mark.parametrize("name", list(CASES))
def test_a_direct_step_is_the_optimizers_own_step(name: str) -> None:
    _run(CASES[name])


@pytest.mark.parametrize("name", ["adam", "momentum", "rmsprop_momentum"])
def test_a_direct_step_follows_a_schedule_that_changes_lr_and_momentum(name: str) -> None:
    # one-cycle changes lr and momentum (Adam's beta1) at every step, in the param group
    _run(CASES[name], lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=50))


def test_what_it_does_not_cover_is_left_to_the_optimizer() -> None:
    p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    assert direct_step(torch.optim.Adam([p, q])) is None  # several parameters
    assert direct_step(torch.optim.Adam([p], fused=False)) is None  # torch's own unfused path
    assert direct_step(torch.optim.Adam([p], amsgrad=True, fused=True)) is None
    assert direct_step(torch.optim.RMSprop([p], centered=True)) is None
    assert direct_step(torch.optim.SGD([p], lr=0.1, maximize=True)) is None
    assert direct_step(torch.optim.Adadelta([p])) is None
    assert direct_step(torch.optim.LBFGS([p])) is None
    hooked = torch.optim.SGD([p], lr=0.1)
    hooked.register_step_post_hook(lambda *_: None)
    assert direct_step(hooked) is None  # its hooks must run


def test_a_parameter_without_a_gradient_is_left_alone() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    step = direct_step(torch.optim.SGD([p], lr=0.1))
    assert step is not None
    step()
    assert torch.equal(p.detach(), torch.ones(3))


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw"])
def test_tuners_optimizers_as_training_builds_them_step_directly(name: str) -> None:
    from tuner.params import TrainConfig
    from tuner.steps import OPTIMIZER_FACTORIES
    from tuner.steps import fast_options as _fast

    flat = torch.nn.Parameter(torch.zeros(10))  # training steps one flat parameter
    optimizer = OPTIMIZER_FACTORIES[name]([flat], TrainConfig(optimizer=name, momentum=0.9), **_fast(name, torch.device("cpu")))
    assert direct_step(optimizer) is not None
