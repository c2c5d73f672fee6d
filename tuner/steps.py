"""Every optimizer's steps, in one place: how torch builds it for a trial, the fused kernel that
replaces torch.optim's per-call Python where one exists, and the update a pack (tuner.packing)
applies to its members' rows. Adding an optimizer is its settings in params.py and its entry in
OPTIMIZERS here, packed or not.

Steps without torch.optim's per-call Python:

A torch.optim step costs about 100 µs of Python on a CPU core (step hooks, a profiler record,
compiler guards, regrouping the tensors by device) around a kernel of about 10 µs: a sixth of a
small MLP's training step. Tuner trains one flat parameter (train._flatten), so a step is one fused
kernel or a few tensor operations. `direct_step` gives a function that does to that parameter and
the optimizer's state exactly what the optimizer's own step does (tests/test_steps.py compares them
bit for bit), reading the group's hyperparameters at every step, since schedules change them. Where
it does not apply (several parameters, options it does not cover, an optimizer not listed) it gives
None and the optimizer's own step runs; so it does where a torch name it calls is missing (the
private kernels are resolved in tuner._compat). The first step is always the optimizer's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tuner._compat import torch_paths
from tuner.params import OPTIMIZERS as NAMES
from tuner.params import TrainConfig

__all__ = ["FAMILIES", "FUSED", "OPTIMIZERS", "OPTIMIZER_FACTORIES", "PACKED", "Optimizer", "direct_step", "fast_options"]

Step = Callable[[], None]
Kernel = Callable[[dict[str, Any]], bool]  # one step given the parameter's state; False: not made yet


def _adam(optimizer: torch.optim.Adam, group: dict[str, Any], p: torch.Tensor) -> Kernel | None:
    if not group.get("fused") or group["amsgrad"]:
        return None
    # AdamW decouples its weight decay: known from its class on every torch (the group key that
    # says so of an Adam is recent)
    decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay"))
    kernel = torch_paths().fused_adamw if decoupled else torch_paths().fused_adam
    if kernel is None:
        return None

    def step(state: dict[str, Any]) -> bool:
        if not state:
            return False
        beta1, beta2 = group["betas"]
        state["step"].add_(1)
        kernel(
            [p], [p.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
            amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip
        return True

    return step


def _adagrad(optimizer: torch.optim.Adagrad, group: dict[str, Any], p: torch.Tensor) -> Kernel | None:
    kernel = torch_paths().fused_adagrad
    if not group.get("fused") or kernel is None:
        return None

    def step(state: dict[str, Any]) -> bool:
        if not state:
            return False
        state["step"].add_(1)
        kernel(
            [p], [p.grad], [state["sum"]], [state["step"]], lr=group["lr"], lr_decay=group["lr_decay"],
            weight_decay=group["weight_decay"], eps=group["eps"], maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip
        return True

    return step


def _sgd(optimizer: torch.optim.SGD, group: dict[str, Any], p: torch.Tensor) -> Kernel | None:
    if group.get("fused") or group["dampening"] != 0:
        return None

    def step(state: dict[str, Any]) -> bool:  # torch's single-tensor SGD, operation for operation
        grad, momentum, weight_decay = p.grad, group["momentum"], group["weight_decay"]
        if weight_decay != 0:
            grad = grad.add(p, alpha=weight_decay)
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:  # the first step with momentum starts the buffer at the gradient
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad)
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        p.add_(grad, alpha=-group["lr"])
        return True

    return step


def _rmsprop(optimizer: torch.optim.RMSprop, group: dict[str, Any], p: torch.Tensor) -> Kernel | None:
    if group["centered"]:
        return None

    def step(state: dict[str, Any]) -> bool:  # torch's single-tensor RMSprop, operation for operation
        if not state:
            return False
        grad, alpha, weight_decay = p.grad, group["alpha"], group["weight_decay"]
        state["step"] += 1
        if weight_decay != 0:
            grad = grad.add(p, alpha=weight_decay)
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        avg = square_avg.sqrt().add_(group["eps"])
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).addcdiv_(grad, avg)
            p.add_(buf, alpha=-group["lr"])
        else:
            p.addcdiv_(grad, avg, value=-group["lr"])
        return True

    return step


# optimizer class -> maker of its direct step (or None for options it does not cover); AdamW is an
# Adam with decoupled weight decay
_MAKERS: dict[type, Callable[[Any, dict[str, Any], torch.Tensor], Kernel | None]] = {
    torch.optim.Adam: _adam,
    torch.optim.AdamW: _adam,
    torch.optim.Adagrad: _adagrad,
    torch.optim.SGD: _sgd,
    torch.optim.RMSprop: _rmsprop,
}


def _hooked(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a step hook is registered (its own or a global one), or that cannot be seen: then
    step() must run, since skipping it would skip the hooks."""
    registries = torch_paths().global_hooks
    if registries is None:
        return True
    return any(registries) or bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks)


def direct_step(optimizer: torch.optim.Optimizer) -> Step | None:
    """The optimizer's step on its one parameter, without torch.optim's per-call Python, or None
    where this module does not cover the optimizer or its options (see the module's docstring),
    or the torch names it needs are missing (tuner._compat)."""
    make = _MAKERS.get(type(optimizer))
    groups = optimizer.param_groups
    if make is None or _hooked(optimizer) or len(groups) != 1 or len(groups[0]["params"]) != 1:
        return None
    group, p = groups[0], groups[0]["params"][0]
    if p.is_sparse or p.is_complex() or group.get("maximize") or group.get("differentiable") or group.get("capturable") or group.get("foreach"):
        return None
    if isinstance(group["lr"], torch.Tensor):
        return None
    kernel = make(optimizer, group, p)
    if kernel is None:
        return None
    state_of, started = optimizer.state, False

    def step() -> None:
        nonlocal started
        if started and p.grad is not None:
            with torch.no_grad():
                if kernel(state_of[p]):
                    return
        # the first step is the optimizer's own: it makes the state, and a schedule sees that the
        # optimizer has stepped; so is any step of a parameter without a gradient (torch skips it)
        started = True
        optimizer.step()

    return step


# --- every optimizer --------------------------------------------------------------------------


@dataclass(frozen=True)
class Optimizer:
    """One optimizer tuner trains with."""

    build: Callable[..., torch.optim.Optimizer]  # (params, cfg, **fast) -> torch's optimizer; weight decay is its own L2 (decoupled for adamw)
    fused: str | None = None  # torch.optim's class, where torch has a fused kernel for it (fast_options)
    family: str | None = None  # the packed update it shares (PACKED); None: not packable
    packed: Callable[[TrainConfig], dict[str, float]] | None = None  # its settings as its family's update reads them (absent: 0)


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer(
        lambda p, c: torch.optim.SGD(p, lr=c.lr, weight_decay=c.weight_decay), family="sgd", packed=lambda c: {"coupled_wd": c.weight_decay}
    ),
    "momentum": Optimizer(
        lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
        family="sgd", packed=lambda c: {"momentum": c.momentum, "coupled_wd": c.weight_decay},
    ),
    "nesterov": Optimizer(
        lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, nesterov=True, weight_decay=c.weight_decay),
        family="sgd", packed=lambda c: {"momentum": c.momentum, "nesterov": 1.0, "coupled_wd": c.weight_decay},
    ),
    "rmsprop": Optimizer(
        lambda p, c: torch.optim.RMSprop(p, lr=c.lr, alpha=c.rho, eps=c.eps, momentum=c.momentum, weight_decay=c.weight_decay),
        family="rmsprop", packed=lambda c: {"momentum": c.momentum, "rho": c.rho, "eps": c.eps, "coupled_wd": c.weight_decay},
    ),
    "adagrad": Optimizer(
        lambda p, c, **fast: torch.optim.Adagrad(p, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay, **fast),
        fused="Adagrad", family="adagrad", packed=lambda c: {"eps": c.eps, "coupled_wd": c.weight_decay},
    ),
    "adadelta": Optimizer(
        lambda p, c: torch.optim.Adadelta(p, lr=c.lr, rho=c.rho, eps=c.eps, weight_decay=c.weight_decay),
        family="adadelta", packed=lambda c: {"rho": c.rho, "eps": c.eps, "coupled_wd": c.weight_decay},
    ),
    "adam": Optimizer(
        lambda p, c, **fast: torch.optim.Adam(p, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, weight_decay=c.weight_decay, **fast),
        fused="Adam", family="adam", packed=lambda c: {"beta1": c.beta1, "beta2": c.beta2, "eps": c.eps, "coupled_wd": c.weight_decay},
    ),
    "adamw": Optimizer(
        lambda p, c, **fast: torch.optim.AdamW(p, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, weight_decay=c.weight_decay, **fast),
        fused="AdamW", family="adam", packed=lambda c: {"beta1": c.beta1, "beta2": c.beta2, "eps": c.eps, "decoupled_wd": c.weight_decay},
    ),
    # quasi-Newton; L-BFGS has no weight_decay argument, so its L2 is added to the loss instead (not packable)
    "lbfgs": Optimizer(lambda p, c: torch.optim.LBFGS(p, lr=c.lr, history_size=c.lbfgs_history, max_iter=4)),
}
assert tuple(OPTIMIZERS) == NAMES, "every optimizer params.py names has its entry here, in the same order"

OPTIMIZER_FACTORIES = {name: o.build for name, o in OPTIMIZERS.items()}  # name -> factory(params, cfg, **fast)
FUSED = {name: o.fused for name, o in OPTIMIZERS.items() if o.fused}  # tuner's name -> torch.optim's class
FAMILIES = {name: o.family for name, o in OPTIMIZERS.items() if o.family}  # optimizer -> the update it shares in a pack


def fast_options(optimizer: str, device: torch.device) -> dict[str, Any]:
    """The options that make `optimizer` one fused kernel a step, where torch has one for the device."""
    from tuner._compat import fused_ok

    return {"fused": True} if optimizer in FUSED and fused_ok(FUSED[optimizer], device.type) else {}


# --- packed updates: each family's, as torch.optim's single-tensor code does it, on its members'
# rows (tuner.packing), every setting a (K, 1) column -------------------------------------------

Hyper = dict[str, torch.Tensor]


def _packed_sgd(p: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, hp: Hyper, state: Hyper, step: int, used: dict[str, Any]) -> None:
    # plain SGD is momentum 0: its buffer is then the gradient itself, as torch's step uses it
    buf, momentum = state["momentum_buffer"], hp["momentum"]
    if step == 1:
        buf.copy_(g)
    else:
        buf.mul_(momentum).add_(g)
    if used["nesterov"] == "all":
        update = g + momentum * buf
    else:
        update = torch.where(hp["nesterov"] > 0, g + momentum * buf, buf) if used["nesterov"] else buf
    p.sub_(lr * update)


def _packed_adam(p: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, hp: Hyper, state: Hyper, step: int, used: dict[str, Any]) -> None:
    beta1, beta2 = hp["beta1"], hp["beta2"]
    if used["decoupled_wd"]:
        p.mul_(1 - lr * hp["decoupled_wd"])  # AdamW's decay; 1 for Adam's rows
    state["exp_avg"].lerp_(g, hp["one_minus_beta1"])
    state["exp_avg_sq"].mul_(beta2).add_(hp["one_minus_beta2"] * g * g)
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    denom = (state["exp_avg_sq"].sqrt() / bias2.sqrt()).add_(hp["eps"])
    p.sub_(lr / bias1 * state["exp_avg"] / denom)


def _packed_rmsprop(p: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, hp: Hyper, state: Hyper, step: int, used: dict[str, Any]) -> None:
    alpha = hp["rho"]  # tuner's rho is RMSprop's smoothing constant alpha
    state["square_avg"].mul_(alpha).add_((1 - alpha) * g * g)
    avg = state["square_avg"].sqrt().add_(hp["eps"])
    buf = state["momentum_buffer"]
    buf.mul_(hp["momentum"]).add_(g / avg)  # momentum 0: the plain step
    p.sub_(lr * buf)


def _packed_adagrad(p: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, hp: Hyper, state: Hyper, step: int, used: dict[str, Any]) -> None:
    state["sum"].add_(g * g)
    p.sub_(lr * (g / state["sum"].sqrt().add_(hp["eps"])))


def _packed_adadelta(p: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, hp: Hyper, state: Hyper, step: int, used: dict[str, Any]) -> None:
    rho, eps = hp["rho"], hp["eps"]
    state["square_avg"].mul_(rho).add_((1 - rho) * g * g)
    std = state["square_avg"].add(eps).sqrt_()
    delta = state["acc_delta"].add(eps).sqrt_().div_(std).mul_(g)
    state["acc_delta"].mul_(rho).add_((1 - rho) * delta * delta)
    p.sub_(lr * delta)


# family -> its update and the state it keeps (one (K, n) tensor a name)
PACKED: dict[str, tuple[Callable[..., None], tuple[str, ...]]] = {
    "sgd": (_packed_sgd, ("momentum_buffer",)),
    "adam": (_packed_adam, ("exp_avg", "exp_avg_sq")),
    "rmsprop": (_packed_rmsprop, ("square_avg", "momentum_buffer")),
    "adagrad": (_packed_adagrad, ("sum",)),
    "adadelta": (_packed_adadelta, ("square_avg", "acc_delta")),
}
assert set(PACKED) == set(FAMILIES.values())
