"""The training loop: build, then for each epoch train, evaluate, report, decide to stop.

It knows nothing of Optuna or the CLI: the study passes `on_epoch`, which may raise to prune.
Data lives on the device as tensors and is batched by index (no DataLoader, no per-batch copy);
the loss is summed on the device and read once per epoch, so there is no host sync per batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from tuner.errors import DivergedError, TunerError
from tuner.params import METRICS, OPTIMIZERS, SCHEDULERS, TrainConfig
from tuner.steps import direct_step
from tuner.workloads.data import Dataset, TorchData
from tuner.workloads.models import apply_init, build_model

__all__ = ["Feed", "make_feed", "FUSED", "OPTIMIZER_FACTORIES", "Diagnostics", "EpochResult", "TrainResult", "TrainTiming", "evaluate", "gradient_diagnostics", "layer_weights", "resolve_device", "scale_features", "timing_hook", "train", "warm_up"]

_EVAL_CHUNK = 8192  # rows evaluated at once; bounds memory on large validation splits
_GATHER_ONCE_BYTES = 256 * 2**20  # training splits up to this size are shuffled by one copy an epoch
# Diagnostics thresholds, from what makes networks fail to learn:
VANISHING_RATIO = 1e-3  # first layer's gradient norm below this share of the last layer's
EXPLODING_NORM = 1e3  # any layer's gradient norm above this (before clipping)


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# name -> factory(params, cfg, **fast); weight decay is the optimizer's own L2 (decoupled for adamw).
# `fast` carries fused=True to the optimizers named in FUSED: one kernel per step on the CPU and CUDA.
OPTIMIZER_FACTORIES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p, c: torch.optim.SGD(p, lr=c.lr, weight_decay=c.weight_decay),
    "momentum": lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "nesterov": lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, nesterov=True, weight_decay=c.weight_decay),
    "rmsprop": lambda p, c: torch.optim.RMSprop(
        p, lr=c.lr, alpha=c.rho, eps=c.eps, momentum=c.momentum, weight_decay=c.weight_decay
    ),
    "adagrad": lambda p, c, **fast: torch.optim.Adagrad(p, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay, **fast),
    "adadelta": lambda p, c: torch.optim.Adadelta(p, lr=c.lr, rho=c.rho, eps=c.eps, weight_decay=c.weight_decay),
    "adam": lambda p, c, **fast: torch.optim.Adam(
        p, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, weight_decay=c.weight_decay, **fast
    ),
    "adamw": lambda p, c, **fast: torch.optim.AdamW(
        p, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, weight_decay=c.weight_decay, **fast
    ),
    # quasi-Newton; L-BFGS has no weight_decay argument, so its L2 is added to the loss instead
    "lbfgs": lambda p, c: torch.optim.LBFGS(p, lr=c.lr, history_size=c.lbfgs_history, max_iter=4),
}
FUSED = {"adagrad": "Adagrad", "adam": "Adam", "adamw": "AdamW"}  # tuner's name -> torch.optim's class
assert tuple(OPTIMIZER_FACTORIES) == OPTIMIZERS


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float | None  # classification only
    metric: float  # the study's metric at this epoch
    lr: float  # learning rate in force during the epoch
    train_accuracy: float | None = None  # on the training batches as trained (dropout on)
    grad_norms: dict[str, float] = field(default_factory=dict)  # per layer, on the epoch's last batch


@dataclass
class Diagnostics:
    """What a person looks at to judge a trial's training, beyond its score."""

    grad_norm_first: float | None  # first layer's gradient norm at the last epoch
    grad_norm_last: float | None  # last layer's
    vanishing_gradients: bool  # early layers' gradients collapsed relative to the last layer's
    exploding_gradients: bool  # some gradient norm blew up (or the loss diverged)
    overfit_gap: float  # train minus validation accuracy; for regression, val minus train loss

    @classmethod
    def of(cls, history: list[EpochResult], task: str) -> "Diagnostics":
        last = history[-1]
        first, final, vanishing, exploding = _gradient_flags(list(last.grad_norms.values()), [v for e in history for v in e.grad_norms.values()])
        if task == "classification" and last.train_accuracy is not None and last.val_accuracy is not None:
            gap = last.train_accuracy - last.val_accuracy
        else:
            gap = last.val_loss - last.train_loss
        return cls(first, final, vanishing, exploding, gap)


@dataclass
class TrainResult:
    value: float  # best metric over the epochs run
    best_epoch: int
    epochs_run: int
    stopped: str  # completed | early_stopping
    history: list[EpochResult]
    device: str
    duration_s: float
    model: nn.Module = field(repr=False)
    diagnostics: Diagnostics | None = None
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # with keep_best

    @property
    def last(self) -> EpochResult:
        return self.history[-1]


def resolve_device(name: str) -> torch.device:
    """auto takes the first GPU torch sees; cuda:N is checked against what is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TunerError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TunerError(f"--device {name}: torch {torch.__version__} sees no GPU; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TunerError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise TunerError(f"--device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


# Tensors on the device, per (dataset, scaling, device): a worker loads them once and reuses them
# across trials. The dataset is kept in the value so its id stays unique while cached.
_DEVICE_DATA: dict[tuple[int, str, str], tuple[Dataset, tuple[torch.Tensor, ...]]] = {}


def scale_features(x_train: np.ndarray, x_val: np.ndarray, scaling: str) -> tuple[np.ndarray, np.ndarray]:
    """Both splits scaled (none, minmax, standard) by the training split's statistics only, so
    validation stays unseen; retraining scales exactly so."""
    if scaling == "none":
        return x_train, x_val
    if scaling == "minmax":
        lo, span = x_train.min(0), x_train.max(0) - x_train.min(0)
        span[span == 0] = 1.0
        return (x_train - lo) / span, (x_val - lo) / span
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1.0
    return (x_train - mean) / std, (x_val - mean) / std


def device_tensors(data: Dataset, scaling: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    key = (id(data), scaling, str(device))
    if key not in _DEVICE_DATA:
        if len(_DEVICE_DATA) >= 8:
            _DEVICE_DATA.pop(next(iter(_DEVICE_DATA)))
        x_tr, x_va = scale_features(data.x_train, data.x_val, scaling)
        arrays = (x_tr.astype(np.float32), data.y_train, x_va.astype(np.float32), data.y_val)
        tensors = tuple(torch.as_tensor(a).to(device, non_blocking=True) for a in arrays)
        _DEVICE_DATA[key] = (data, tensors)
    return _DEVICE_DATA[key][1]


class _Schedule:
    """Learning rate over training: linear warm-up, then none/step/cosine/plateau per epoch, or
    one-cycle per batch (one-cycle has its own warm-up phase, sized by warmup_epochs when given)."""

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        assert cfg.scheduler in SCHEDULERS
        self.cfg, self.optimizer = cfg, optimizer
        self.onecycle = None
        self.plateau = None
        if cfg.scheduler == "onecycle":
            pct = cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs else 0.3
            # cycle_momentum off: momentum/beta1 stay as configured, and adagrad, adadelta and lbfgs
            # (which have neither) can use one-cycle at all
            self.onecycle = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=cfg.lr,
                total_steps=cfg.epochs * steps_per_epoch,
                pct_start=min(max(pct, 0.01), 0.99),
                cycle_momentum=False,
            )
        elif cfg.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=cfg.gamma, patience=cfg.plateau_patience
            )

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
                self._set(cfg.lr)  # warm-up is over; from here the plateau rule owns the rate
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


def _flatten(params: list[nn.Parameter]) -> nn.Parameter | None:
    """One parameter holding all of `params`, each of them a view into it, with one gradient
    buffer that their gradients are views of and that backward accumulates into. An optimizer then
    updates one tensor per step instead of one per layer, a few large operations instead of many
    small ones; every optimizer here but L-BFGS updates element by element, so the result is the
    same. None where the parameters cannot share one buffer (mixed dtypes or devices, sparse, one)."""
    if len(params) < 2 or len({(p.dtype, p.device) for p in params}) > 1 or any(p.layout != torch.strided for p in params):
        return None
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset : offset + n].view_as(p)
        p.grad = flat.grad[offset : offset + n].view_as(p)
        offset += n
    return flat


def _grad_norm(w: torch.Tensor) -> torch.Tensor:
    return w.grad.detach().norm() if w.grad is not None else torch.zeros((), device=w.device)


def _penalty(weights: list[torch.Tensor], cfg: TrainConfig) -> torch.Tensor | float:
    """L1 on weights for every optimizer; L2 too for L-BFGS, which has no weight_decay of its own."""
    total: torch.Tensor | float = 0.0
    if cfg.l1 > 0:
        total = total + cfg.l1 * sum(w.abs().sum() for w in weights)
    if cfg.optimizer == "lbfgs" and cfg.weight_decay > 0:
        total = total + 0.5 * cfg.weight_decay * sum(w.pow(2).sum() for w in weights)
    return total


def _seed(seed: int, device: torch.device) -> None:
    """Seed the generators a trial draws from: the CPU's (initial weights, CPU dropout) and its
    GPU's (dropout there). torch.manual_seed does both and every other backend's, at ~130 µs."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def _batches(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's batches in `perm`'s order. Where the training split is small enough, it is
    gathered once into shuffled copies whose batches are views: two gathers an epoch instead of
    two a batch."""
    if x.nelement() * x.element_size() <= _GATHER_ONCE_BYTES:
        return zip(x[perm].split(batch_size), y[perm].split(batch_size))
    return ((x[idx], y[idx]) for idx in perm.split(batch_size))


class _Tally:
    """An epoch's summed training loss and correct predictions, kept on the device. Batches are
    held (detached) and summed a group at a time, so a step pays no bookkeeping operations of its
    own and memory stays bounded. For a pack (tuner.packing), every figure has a leading member
    dimension: losses (K,), outputs (K, B, C), targets (K, B), sums (2, K)."""

    GROUP = 64  # batches held before they are summed

    def __init__(self, task: str, device: torch.device, *, n_members: int | None = None) -> None:
        self.task, self.n = task, 0
        self.sums = torch.zeros(2, *(() if n_members is None else (n_members,)), device=device)  # loss * rows, correct rows
        self.held: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.held.append((loss, out, y))
        self.n += y.shape[-1]
        if len(self.held) >= self.GROUP:
            self._sum()

    def _sum(self) -> None:
        if not self.held:
            return
        losses, outs, ys = zip(*self.held)
        sizes = torch.tensor([y.shape[-1] for y in ys], dtype=self.sums.dtype, device=self.sums.device)
        self.sums[0] += (torch.stack(losses, -1).to(sizes.dtype) * sizes).sum(-1)
        if self.task == "classification":
            self.sums[1] += (torch.cat(outs, -2).argmax(-1) == torch.cat(ys, -1)).sum(-1)
        self.held.clear()

    def totals(self) -> torch.Tensor:
        self._sum()
        return self.sums


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, task: str) -> tuple[float, float | None]:
    """The model's loss and (classification) accuracy on (x, y), in eval mode."""
    return _evaluate_batches(model, zip(x.split(_EVAL_CHUNK), y.split(_EVAL_CHUNK)), loss_fn, task, x.device)


@torch.no_grad()
def _evaluate_batches(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module, task: str, device: torch.device
) -> tuple[float, float | None]:
    """Loss and accuracy summed on the device over the batches, read once at the end."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    n = 0
    for xb, yb in batches:
        out = model(xb)
        out = out.squeeze(-1) if task == "regression" else out
        loss_sum += loss_fn(out, yb) * len(xb)
        if task == "classification":
            correct += (out.argmax(1) == yb).sum()
        n += len(xb)
    return (loss_sum / n).item(), (correct / n).item() if task == "classification" else None


def _metric(name: str, val_loss: float, val_accuracy: float | None) -> float:
    if name == "val_accuracy":
        return float(val_accuracy)  # the study checks the metric fits the task before training
    if name == "val_rmse":
        return math.sqrt(val_loss)
    return val_loss


def _fast(optimizer: str, device: torch.device) -> dict[str, Any]:
    """The options that make `optimizer` one fused kernel a step, where torch has one for the device."""
    from tuner._compat import fused_ok

    return {"fused": True} if optimizer in FUSED and fused_ok(FUSED[optimizer], device.type) else {}


_WARMED: set[str] = set()  # devices this process has warmed up


def warm_up(device: torch.device | str) -> None:
    """Pay torch's one-time costs in a new worker before its first trial, not inside it: the first
    optimizer imports torch._dynamo (~1 s on a CPU core), the first backward starts autograd's
    engine, and on a GPU the first kernels set up the context and cuBLAS."""
    device = torch.device(device)
    if str(device) in _WARMED:
        return
    _WARMED.add(str(device))
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **_fast("adam", device))
    nn.CrossEntropyLoss()(model(torch.zeros(3, 4, device=device)), torch.zeros(3, dtype=torch.long, device=device)).backward()
    optimizer.step()


@dataclass
class TrainTiming:
    """Where a training's wall time went: reports (the study's `on_epoch`: storage and the pruner)
    apart from the rest. Given to each timing hook when training ends, however it ends."""

    total_s: float = 0.0  # wall time of train()
    reports_s: float = 0.0  # inside on_epoch

    @property
    def train_s(self) -> float:
        return self.total_s - self.reports_s


# Callables given each training's TrainTiming when it ends (completed, pruned or failed). The
# benchmark registers here (see timing_hook) instead of replacing train() at run time.
_TIMING_HOOKS: list[Callable[[TrainTiming], None]] = []


@contextlib.contextmanager
def timing_hook(hook: Callable[[TrainTiming], None]) -> Iterator[None]:
    """Call `hook` with the timing of every training that ends inside the block."""
    _TIMING_HOOKS.append(hook)
    try:
        yield
    finally:
        _TIMING_HOOKS.remove(hook)


def layer_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layers with a weight matrix, named for people: "0 Linear", "features.3 Conv2d"; the
    layers whose gradient norms diagnostics read."""
    return [
        (f"{name or 'model'} {type(m).__name__}", m.weight)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() > 1 and m.weight.requires_grad
    ]


def gradient_diagnostics(model: nn.Module) -> dict[str, Any]:
    """The gradient diagnostics tuner's loop records, read from the gradients a model holds now
    (after a backward): per-layer norms, the first and last layers' and the vanishing/exploding
    flags by the same thresholds as Diagnostics."""
    named = [(n, w) for n, w in layer_weights(model) if w.grad is not None]
    norms = dict(zip((n for n, _ in named), torch.stack([_grad_norm(w) for _, w in named]).tolist())) if named else {}
    first, last, vanishing, exploding = _gradient_flags(list(norms.values()), norms.values())
    return {"grad_norms": norms, "grad_norm_first": first, "grad_norm_last": last, "vanishing_gradients": vanishing, "exploding_gradients": exploding}


def _gradient_flags(last_norms: list[float], every_norm: Iterable[float]) -> tuple[float | None, float | None, bool, bool]:
    """The first and last layers' norms, whether the first's collapsed against the last's
    (vanishing) and whether any norm blew up (exploding): one rule wherever diagnostics are read."""
    first, last = (last_norms[0], last_norms[-1]) if last_norms else (None, None)
    vanishing = bool(last_norms) and last > 0 and first < VANISHING_RATIO * last
    exploding = any(v > EXPLODING_NORM or not math.isfinite(v) for v in every_norm)
    return first, last, vanishing, exploding


class Feed:
    """Where a training's batches come from: device tensors batched by index (tuner's data), or a
    DataLoader over the user's own Datasets, each batch moved to the device."""

    n_train: int  # training examples an epoch

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loss_fn: nn.Module, task: str) -> tuple[float, float | None]:
        raise NotImplementedError


class _TensorFeed(Feed):
    def __init__(self, data: Dataset, scaling: str, batch_size: int, device: torch.device, seed: int) -> None:
        self.x_train, self.y_train, self.x_val, self.y_val = device_tensors(data, scaling, device)
        self.n_train, self.batch_size = len(self.x_train), batch_size
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(self.n_train, device=self.x_train.device, generator=self.generator)
        return _batches(self.x_train, self.y_train, perm, self.batch_size)

    def evaluate(self, model: nn.Module, loss_fn: nn.Module, task: str) -> tuple[float, float | None]:
        return evaluate(model, self.x_val, self.y_val, loss_fn, task)


class _Permutations:
    """A sampler: a fresh random permutation of range(n) each epoch, drawn from `generator`."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


class _LoaderFeed(Feed):
    _EVAL_BATCH = 512  # samples of the user's validation set evaluated at once

    def __init__(self, data: TorchData, batch_size: int, device: torch.device, seed: int) -> None:
        from torch.utils.data import DataLoader

        pin = device.type == "cuda"
        # Each epoch's order is one randperm of the trial's seed, as on the in-memory path, so the
        # same examples train the same way either road. The loader's own generator only seeds its
        # workers (were it the sampler's, each epoch's iterator would consume a draw of it first).
        order = _Permutations(len(data.train_set), torch.Generator().manual_seed(seed))
        self.train_loader = DataLoader(data.train_set, batch_size=batch_size, sampler=order, generator=torch.Generator().manual_seed(seed), pin_memory=pin)
        # with a generator of its own, starting an epoch's loader draws nothing from torch's global
        # one, which the model's dropout draws from
        self.val_loader = DataLoader(data.val_set, batch_size=self._EVAL_BATCH, generator=torch.Generator().manual_seed(seed), pin_memory=pin)
        self.n_train, self.device, self.task = len(data.train_set), device, data.task

    def _on_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        x = x.to(self.device, dtype=torch.float32, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        return x, y.long() if self.task == "classification" else y.float()

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self._on_device(b) for b in self.train_loader)

    def evaluate(self, model: nn.Module, loss_fn: nn.Module, task: str) -> tuple[float, float | None]:
        return _evaluate_batches(model, map(self._on_device, self.val_loader), loss_fn, task, self.device)


def make_feed(data: Dataset | TorchData, scaling: str, batch_size: int, device: torch.device, seed: int) -> Feed:
    """The batches of `data` for one training: tuner's arrays as device tensors (scaled by the
    training split's statistics), or the user's Datasets through a DataLoader."""
    if isinstance(data, TorchData):
        return _LoaderFeed(data, batch_size, device, seed)
    return _TensorFeed(data, scaling, batch_size, device, seed)


class _Stepper:
    """One optimizer step on a batch, and the per-layer gradient norms read at the steps asked."""

    def __init__(self, cfg: TrainConfig, task: str, model: nn.Module, device: torch.device) -> None:
        self.cfg, self.task, self.model, self.device = cfg, task, model, device
        named = layer_weights(model)
        self.layer_names = [n for n, _ in named]
        self.weights = [w for _, w in named]
        self.params = _params(model)
        self.flat = None if cfg.optimizer == "lbfgs" else _flatten(self.params)  # L-BFGS keeps its own flat view
        self.optimizer = OPTIMIZER_FACTORIES[cfg.optimizer]([self.flat] if self.flat is not None else self.params, cfg, **_fast(cfg.optimizer, device))
        self.loss_fn: nn.Module = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing) if task == "classification" else nn.MSELoss()
        self.penalized = cfg.l1 > 0 or (cfg.optimizer == "lbfgs" and cfg.weight_decay > 0)
        self.grad_norms = torch.zeros(len(self.weights), device=device)
        self.after_batch: Callable[[], None] = lambda: None  # the schedule's per-batch step, once it exists
        self._direct: Callable[[], Any] | None = None

    def bind_schedule(self, schedule: "_Schedule") -> None:
        self.after_batch = schedule.after_batch
        # the same step, less torch.optim's Python; taken after the schedule wraps optimizer.step
        self._direct = direct_step(self.optimizer) or self.optimizer.step

    def _loss(self, xb: torch.Tensor, yb: torch.Tensor, read_norms: bool, seen: list[torch.Tensor]) -> torch.Tensor:
        """Forward and backward on the batch (called several times a step by L-BFGS, once otherwise)."""
        if self.flat is not None:
            self.flat.grad.zero_()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        out = self.model(xb)
        out = out.squeeze(-1) if self.task == "regression" else out
        loss = self.loss_fn(out, yb)
        loss = loss + _penalty(self.weights, self.cfg) if self.penalized else loss
        loss.backward()
        if read_norms:  # per-layer gradient norms, before clipping
            self.grad_norms.copy_(torch.stack([_grad_norm(w) for w in self.weights]))
        if self.cfg.grad_clip > 0:  # the guard against exploding gradients
            nn.utils.clip_grad_norm_([self.flat] if self.flat is not None else self.params, self.cfg.grad_clip)
        seen[:] = [out.detach()]
        return loss

    def step(self, xb: torch.Tensor, yb: torch.Tensor, *, read_norms: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch: its loss and the model's output, both detached."""
        seen: list[torch.Tensor] = []
        read_norms = read_norms and bool(self.weights)
        if self.cfg.optimizer == "lbfgs":
            loss = self.optimizer.step(self._replaying_masks(lambda: self._loss(xb, yb, read_norms, seen)))
        else:
            loss = self._loss(xb, yb, read_norms, seen)
            self._direct()
        self.after_batch()
        return loss.detach(), seen[0]

    def _replaying_masks(self, closure: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """L-BFGS evaluates the batch's loss several times a step and builds its curvature from the
        differences: every evaluation must draw the same dropout masks, or it compares the
        gradients of different functions."""
        device = self.device
        rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.default_generator.get_state()

        def same_masks() -> torch.Tensor:
            if device.type == "cuda":
                torch.cuda.set_rng_state(rng, device)
            else:
                torch.default_generator.set_state(rng)
            return closure()

        return same_masks


@dataclass
class _Setup:
    """What one training builds before its first epoch."""

    model: nn.Module
    stepper: _Stepper
    schedule: _Schedule
    eval_loss_fn: nn.Module  # label smoothing shapes training, not the score
    steps_per_epoch: int


def _set_up(cfg: TrainConfig, data: Dataset | TorchData, model: nn.Module | None, device: torch.device, n_train: int) -> _Setup:
    if model is None:
        model = build_model(cfg, n_features=data.n_features, n_outputs=data.n_classes or 1, image_shape=data.image_shape)
    apply_init(model, cfg)
    model.to(device)
    stepper = _Stepper(cfg, data.task, model, device)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    schedule = _Schedule(cfg, stepper.optimizer, steps_per_epoch)
    stepper.bind_schedule(schedule)
    eval_loss_fn = nn.CrossEntropyLoss() if data.task == "classification" else nn.MSELoss()
    return _Setup(model, stepper, schedule, eval_loss_fn, steps_per_epoch)


def _train_epoch(run: _Setup, cfg: TrainConfig, task: str, feed: Feed) -> tuple[float, float | None, list[float]]:
    """One pass over the shuffled training split: mean loss, accuracy as trained (classification)
    and the per-layer gradient norms near the epoch's end (the last batch may be skipped)."""
    run.model.train()
    tally = _Tally(task, run.stepper.device)
    run.stepper.grad_norms.zero_()
    for i, (xb, yb) in enumerate(feed.batches()):
        if len(xb) < 2 and cfg.norm == "batch":
            continue  # batch norm cannot normalize a batch of one
        loss, out = run.stepper.step(xb, yb, read_norms=i >= run.steps_per_epoch - 2)
        tally.add(loss, out, yb)
    # one read from the device per epoch, not one per batch
    loss_sum, correct, *norms = torch.cat([tally.totals(), run.stepper.grad_norms]).tolist()
    n = max(tally.n, 1)
    return loss_sum / n, correct / n if task == "classification" else None, norms


def train(
    cfg: TrainConfig,
    data: Dataset | TorchData,
    *,
    metric: str = "val_accuracy",
    device: torch.device | str = "cpu",
    seed: int = 0,
    model: nn.Module | None = None,
    on_epoch: Callable[[EpochResult], Any] | None = None,
    keep_best: bool = False,
) -> TrainResult:
    """Train one configuration; `on_epoch` sees each epoch's result and may raise to stop (pruning).
    With `keep_best`, the weights of the best epoch are kept (a copy per improvement) in `best_state`.

    Raises DivergedError as soon as an epoch's loss is NaN or infinite."""
    timing, started = TrainTiming(), time.perf_counter()
    try:
        device = torch.device(device)
        _seed(seed, device)
        feed = make_feed(data, cfg.scaling, cfg.batch_size, device, seed)
        run = _set_up(cfg, data, model, device, feed.n_train)
        history: list[EpochResult] = []
        best: _Best = _Best(METRICS[metric] == "maximize", keep_best)
        stopped = "completed"
        for epoch in range(1, cfg.epochs + 1):
            # train
            run.schedule.start_epoch(epoch)
            lr = run.schedule.lr
            train_loss, train_accuracy, norms = _train_epoch(run, cfg, data.task, feed)
            if not math.isfinite(train_loss):
                raise DivergedError(epoch, train_loss)
            # evaluate
            val_loss, val_accuracy = feed.evaluate(run.model, run.eval_loss_fn, data.task)
            if not math.isfinite(val_loss):
                raise DivergedError(epoch, val_loss)
            run.schedule.end_epoch(epoch, val_loss)
            metric_value = _metric(metric, val_loss, val_accuracy)
            norms_by_layer = dict(zip(run.stepper.layer_names, norms))
            result = EpochResult(epoch, train_loss, val_loss, val_accuracy, metric_value, lr, train_accuracy, norms_by_layer)
            history.append(result)
            # report (may raise to prune), then decide to stop early
            if on_epoch is not None:
                timing.reports_s -= time.perf_counter()
                try:
                    on_epoch(result)
                finally:
                    timing.reports_s += time.perf_counter()
            if not best.update(result, run.model) and cfg.patience and epoch - best.epoch >= cfg.patience:
                stopped = "early_stopping"
                break
        return best.result(history, stopped, str(device), time.perf_counter() - started, run.model, data.task)
    finally:
        timing.total_s = time.perf_counter() - started
        for hook in list(_TIMING_HOOKS):
            hook(timing)


class _Best:
    """The best epoch so far by the study's metric (and its weights, with keep_best)."""

    def __init__(self, maximize: bool, keep_state: bool) -> None:
        self.sign = 1.0 if maximize else -1.0
        self.keep_state = keep_state
        self.epoch_result: EpochResult | None = None
        self.state: dict[str, torch.Tensor] | None = None

    @property
    def epoch(self) -> int:
        assert self.epoch_result is not None
        return self.epoch_result.epoch

    def update(self, result: EpochResult, model: nn.Module) -> bool:
        """Whether `result` is the new best."""
        if self.epoch_result is not None and self.sign * result.metric <= self.sign * self.epoch_result.metric:
            return False
        self.epoch_result = result
        if self.keep_state:
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True

    def result(self, history: list[EpochResult], stopped: str, device: str, duration_s: float, model: nn.Module, task: str) -> TrainResult:
        best = self.epoch_result
        assert best is not None, "epochs >= 1 is checked when the space is validated"
        return TrainResult(
            value=best.metric,
            best_epoch=best.epoch,
            epochs_run=len(history),
            stopped=stopped,
            history=history,
            device=device,
            duration_s=duration_s,
            model=model,
            diagnostics=Diagnostics.of(history, task),
            best_state=self.state,
        )
