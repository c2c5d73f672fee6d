"""The training loop: build, then for each epoch train, evaluate, report, decide to stop.

It knows nothing of Optuna or the CLI: the study passes `on_epoch`, which may raise to prune.
Data lives on the device as tensors and is batched by index (no DataLoader, no per-batch copy);
the loss is summed on the device and read once per epoch, so there is no host sync per batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from tuner import attrs as A
from tuner.epochs import (
    EVAL_CHUNK,
    LATENCY_ROWS,
    Diagnostics,
    EpochResult,
    Schedule,
    Tally,
    TrainResult,
    TrainTiming,
    TrialEpochs,
    gradient_flags,
    report_timing,
    seed_trial,
    timing_hook,
)
from tuner.errors import TunerError
from tuner.params import TrainConfig
from tuner.steps import FUSED, OPTIMIZER_FACTORIES, direct_step, fast_options
from tuner.workloads.data import Dataset, TorchData
from tuner.workloads.models import apply_init, build_model

__all__ = ["Feed", "make_feed", "FUSED", "OPTIMIZER_FACTORIES", "Diagnostics", "EpochResult", "TrainResult", "TrainTiming", "evaluate", "gradient_diagnostics", "layer_weights", "resolve_device", "scale_features", "timing_hook", "train", "warm_up"]

_GATHER_ONCE_BYTES = 256 * 2**20  # training splits up to this size are shuffled by one copy an epoch


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]




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


def _batches(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's batches in `perm`'s order. Where the training split is small enough, it is
    gathered once into shuffled copies whose batches are views: two gathers an epoch instead of
    two a batch."""
    if x.nelement() * x.element_size() <= _GATHER_ONCE_BYTES:
        return zip(x[perm].split(batch_size), y[perm].split(batch_size))
    return ((x[idx], y[idx]) for idx in perm.split(batch_size))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, task: str) -> tuple[float, float | None]:
    """The model's loss and (classification) accuracy on (x, y), in eval mode."""
    return _evaluate_batches(model, zip(x.split(EVAL_CHUNK), y.split(EVAL_CHUNK)), loss_fn, task, x.device)


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
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **fast_options("adam", device))
    nn.CrossEntropyLoss()(model(torch.zeros(3, 4, device=device)), torch.zeros(3, dtype=torch.long, device=device)).backward()
    optimizer.step()


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
    first, last, vanishing, exploding = gradient_flags(list(norms.values()), norms.values())
    return {A.GRAD_NORMS: norms, A.GRAD_NORM_FIRST: first, A.GRAD_NORM_LAST: last, A.VANISHING: vanishing, A.EXPLODING: exploding}


class Feed:
    """Where a training's batches come from: device tensors batched by index (tuner's data), or a
    DataLoader over the user's own Datasets, each batch moved to the device."""

    n_train: int  # training examples an epoch

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loss_fn: nn.Module, task: str) -> tuple[float, float | None]:
        raise NotImplementedError

    def probe(self) -> torch.Tensor:
        """A batch of validation inputs on the device: what latency_ms is timed on."""
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

    def probe(self) -> torch.Tensor:
        return self.x_val[:LATENCY_ROWS]


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

    def probe(self) -> torch.Tensor:
        return self._on_device(next(iter(self.val_loader)))[0][:LATENCY_ROWS]


def make_feed(data: Dataset | TorchData, scaling: str, batch_size: int, device: torch.device, seed: int) -> Feed:
    """The batches of `data` for one training: tuner's arrays as device tensors (scaled by the
    training split's statistics), or the user's Datasets through a DataLoader."""
    if isinstance(data, TorchData):
        return _LoaderFeed(data, batch_size, device, seed)
    return _TensorFeed(data, scaling, batch_size, device, seed)


class _Stepper:
    """One optimizer step on a batch, and the per-layer gradient norms read at the steps asked."""

    def __init__(self, cfg: TrainConfig, task: str, model: nn.Module, device: torch.device, schedule: Schedule) -> None:
        self.cfg, self.task, self.model, self.device, self.schedule = cfg, task, model, device, schedule
        named = layer_weights(model)
        self.layer_names = [n for n, _ in named]
        self.weights = [w for _, w in named]
        self.params = _params(model)
        self.flat = None if cfg.optimizer == "lbfgs" else _flatten(self.params)  # L-BFGS keeps its own flat view
        self.optimizer = OPTIMIZER_FACTORIES[cfg.optimizer]([self.flat] if self.flat is not None else self.params, cfg, **fast_options(cfg.optimizer, device))
        self.loss_fn: nn.Module = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing) if task == "classification" else nn.MSELoss()
        self.penalized = cfg.l1 > 0 or (cfg.optimizer == "lbfgs" and cfg.weight_decay > 0)
        self.grad_norms = torch.zeros(len(self.weights), device=device)
        self._direct = direct_step(self.optimizer) or self.optimizer.step  # the same step, less torch.optim's Python
        self.steps_taken = 0  # in all of training: one-cycle's clock
        self.per_step = schedule.per_step()  # the rate changes at every step, not only with the epoch
        self.epoch = 0

    def start_epoch(self, epoch: int) -> float:
        """Set the rate for the epoch's first step; the rate in force as the epoch starts."""
        self.epoch = epoch
        return self._set_lr()

    def _set_lr(self) -> float:
        lr = self.schedule.rate(self.epoch, self.steps_taken)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

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
        self.steps_taken += 1
        if self.per_step:
            self._set_lr()
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
    schedule: Schedule
    eval_loss_fn: nn.Module  # label smoothing shapes training, not the score
    steps_per_epoch: int


def _set_up(cfg: TrainConfig, data: Dataset | TorchData, model: nn.Module | None, device: torch.device, n_train: int) -> _Setup:
    if model is None:
        model = build_model(cfg, n_features=data.n_features, n_outputs=data.n_classes or 1, image_shape=data.image_shape)
    apply_init(model, cfg)
    model.to(device)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    schedule = Schedule(cfg, steps_per_epoch)
    stepper = _Stepper(cfg, data.task, model, device, schedule)
    eval_loss_fn = nn.CrossEntropyLoss() if data.task == "classification" else nn.MSELoss()
    return _Setup(model, stepper, schedule, eval_loss_fn, steps_per_epoch)


def _train_epoch(run: _Setup, cfg: TrainConfig, task: str, feed: Feed) -> tuple[float, float | None, list[float]]:
    """One pass over the shuffled training split: mean loss, accuracy as trained (classification)
    and the per-layer gradient norms near the epoch's end (the last batch may be skipped)."""
    run.model.train()
    tally = Tally(task, run.stepper.device)
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
        seed_trial(seed, device)
        feed = make_feed(data, cfg.scaling, cfg.batch_size, device, seed)
        run = _set_up(cfg, data, model, device, feed.n_train)
        epochs = TrialEpochs(cfg, metric=metric, schedule=run.schedule, on_epoch=on_epoch, timing=timing, probe=feed.probe(), keep_best=keep_best)
        for epoch in range(1, cfg.epochs + 1):
            epoch_started = time.perf_counter()
            lr = run.stepper.start_epoch(epoch)
            train_loss, train_accuracy, norms = _train_epoch(run, cfg, data.task, feed)
            epochs.check(epoch, train_loss)  # before an evaluation that would tell nothing more
            val_loss, val_accuracy = feed.evaluate(run.model, run.eval_loss_fn, data.task)
            norms_by_layer = dict(zip(run.stepper.layer_names, norms))
            done = epochs.end(
                epoch, run.model, train_loss=train_loss, train_accuracy=train_accuracy, val_loss=val_loss, val_accuracy=val_accuracy, lr=lr,
                grad_norms=norms_by_layer, seconds=time.perf_counter() - epoch_started,
            )
            if done:
                break
        return epochs.result(str(device), time.perf_counter() - started, run.model, data.task)
    finally:
        timing.total_s = time.perf_counter() - started
        report_timing(timing)
