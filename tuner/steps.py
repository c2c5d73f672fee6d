"""Optimizer steps without torch.optim's per-call Python.

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
from typing import Any

import torch

from tuner._compat import torch_paths

__all__ = ["direct_step"]

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
