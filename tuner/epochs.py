"""A trial's epochs, as every trainer keeps them: the learning rate at each step, the epoch's
tallies, its end (divergence, the schedule, the study's metric, the report, the best epoch, early
stopping) and the result. The single-trial loop (tuner.train) and the packed one (tuner.packing)
differ in how they compute an epoch's losses; what they do with them is written here, once.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from tuner.errors import DivergedError
from tuner.params import METRICS, SCHEDULERS, TrainConfig

__all__ = [
    "EVAL_CHUNK",
    "Best",
    "Diagnostics",
    "EpochResult",
    "Schedule",
    "Tally",
    "TrainResult",
    "TrainTiming",
    "TrialEpochs",
    "forward_latency_ms",
    "gradient_flags",
    "metric_value",
    "report_timing",
    "seed_trial",
    "timing_hook",
]

EVAL_CHUNK = 8192  # rows evaluated at once; bounds memory on large validation splits
# latency_ms, measured the same way on every trial: one batch of LATENCY_ROWS validation rows (all
# of them if fewer), LATENCY_WARMUP passes first, then the median of LATENCY_REPEATS timed passes
LATENCY_ROWS = 64
LATENCY_WARMUP = 3
LATENCY_REPEATS = 15
# Diagnostics thresholds, from what makes networks fail to learn:
VANISHING_RATIO = 1e-3  # first layer's gradient norm below this share of the last layer's
EXPLODING_NORM = 1e3  # any layer's gradient norm above this (before clipping)


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
    params: int | None = None  # the model's trainable parameters (a packed member's: its own, unpadded)
    train_seconds: float | None = None  # training and evaluation so far (a packed member's: its share of each epoch)
    latency_ms: float | None = None  # inference: median forward pass on one validation batch (forward_latency_ms)
    grad_norm_first: float | None = None  # the first layer's gradient norm (of grad_norms)
    grad_norm_last: float | None = None  # the last layer's
    grad_norm_min: float | None = None  # the smallest layer's
    grad_norm_max: float | None = None  # the largest layer's
    dead_units: float | None = None  # the largest share of a ReLU-family layer's units never active on the validation batch (dead_units)
    dead_layer: int | None = None  # which hidden layer that is, 1-based

    def figures(self) -> dict[str, float | int | None]:
        """The epoch's measured figures by name (each a trial attribute's name in tuner.attrs):
        what a trial's history keeps per epoch and records of its last epoch. A new figure is a
        field here and its name in attrs.py."""
        return {name: getattr(self, name) for name in _FIGURES}

    def value_of(self, name: str) -> float | None:
        """A metric of the study (tuner.metrics) at this epoch: a figure, or one computed from them."""
        if name == "val_rmse":
            return math.sqrt(self.val_loss)
        value = getattr(self, name) if name in _FIGURES else None
        return None if value is None else float(value)


_FIGURES = tuple(f.name for f in fields(EpochResult) if f.name not in ("epoch", "metric", "grad_norms"))
_RELU_FAMILY = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU)  # units that are off below zero


@torch.no_grad()
def dead_units(model: nn.Module, batch: torch.Tensor) -> tuple[float, int] | None:
    """The largest share of a ReLU-family layer's units (a CNN's: channels) whose input is never
    above zero on `batch`, in eval mode, and which hidden layer that is (1-based); None for a
    model without such layers. One forward pass, its activations' inputs seen through hooks."""
    layers = [m for m in model.modules() if isinstance(m, _RELU_FAMILY)]
    if not layers:
        return None
    shares: list[float] = []

    def seen(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        active = (x > 0).transpose(0, 1).reshape(x.shape[1], -1).any(1) if x.dim() > 1 else (x > 0)
        shares.append(active.logical_not().float().mean())

    hooks = [m.register_forward_hook(seen) for m in layers]
    was_training = model.training
    model.eval()
    try:
        model(batch)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    values = torch.stack(shares).tolist()
    worst = max(range(len(values)), key=values.__getitem__)
    return values[worst], worst + 1


def gradient_flags(last_norms: list[float], every_norm: Iterable[float]) -> tuple[float | None, float | None, bool, bool]:
    """The first and last layers' norms, whether the first's collapsed against the last's
    (vanishing) and whether any norm blew up (exploding): one rule wherever diagnostics are read."""
    first, last = (last_norms[0], last_norms[-1]) if last_norms else (None, None)
    vanishing = bool(last_norms) and last > 0 and first < VANISHING_RATIO * last
    exploding = any(v > EXPLODING_NORM or not math.isfinite(v) for v in every_norm)
    return first, last, vanishing, exploding


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
        first, final, vanishing, exploding = gradient_flags(list(last.grad_norms.values()), [v for e in history for v in e.grad_norms.values()])
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


# --- timing -------------------------------------------------------------------------------------


@dataclass
class TrainTiming:
    """Where a training's wall time went: reports (the study's `on_epoch`: storage and the pruner)
    apart from the rest. Given to each timing hook when training ends, however it ends."""

    total_s: float = 0.0  # wall time of the training (a pack's: all its trials')
    reports_s: float = 0.0  # inside on_epoch
    n_trials: int = 1  # trials trained: a pack's size

    @property
    def train_s(self) -> float:
        return self.total_s - self.reports_s


# Callables given each training's TrainTiming when it ends (completed, pruned or failed). The
# benchmark registers here (see timing_hook) instead of replacing the trainers at run time.
_TIMING_HOOKS: list[Callable[[TrainTiming], None]] = []


@contextlib.contextmanager
def timing_hook(hook: Callable[[TrainTiming], None]) -> Iterator[None]:
    """Call `hook` with the timing of every training (single or packed) that ends inside the block."""
    _TIMING_HOOKS.append(hook)
    try:
        yield
    finally:
        _TIMING_HOOKS.remove(hook)


def report_timing(timing: TrainTiming) -> None:
    for hook in list(_TIMING_HOOKS):
        hook(timing)


@torch.no_grad()
def forward_latency_ms(model: nn.Module, batch: torch.Tensor) -> float:
    """Milliseconds of one forward pass over `batch` in eval mode: the median of LATENCY_REPEATS
    passes after LATENCY_WARMUP, each waited for on a GPU (kernels run asynchronously there)."""
    was_training = model.training
    model.eval()
    cuda = batch.device.type == "cuda"
    try:
        for _ in range(LATENCY_WARMUP):
            model(batch)
        times = []
        for _ in range(LATENCY_REPEATS):
            if cuda:
                torch.cuda.synchronize(batch.device)
            started = time.perf_counter()
            model(batch)
            if cuda:
                torch.cuda.synchronize(batch.device)
            times.append(time.perf_counter() - started)
    finally:
        model.train(was_training)
    return statistics.median(times) * 1e3


# --- the learning rate --------------------------------------------------------------------------


class Schedule:
    """A trial's learning rate at each step: linear warm-up, then none/step/cosine/plateau per
    epoch, or one-cycle per step (its own warm-up phase, sized by warmup_epochs when given). The
    rate is a function of (epoch, step), plus for plateau the validation losses seen
    (`end_epoch`); no optimizer is needed to hold it. One-cycle and plateau follow torch's
    OneCycleLR (cosine, div_factor 25, final_div_factor 1e4) and ReduceLROnPlateau (mode min,
    relative threshold 1e-4) exactly; tests/test_train.py compares them step by step."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        assert cfg.scheduler in SCHEDULERS
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        if cfg.scheduler == "onecycle":
            pct = cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs else 0.3
            total = cfg.epochs * steps_per_epoch
            self._initial = cfg.lr / 25.0
            self._phases = ((float(min(max(pct, 0.01), 0.99) * total) - 1, self._initial, cfg.lr), (total - 1, cfg.lr, self._initial / 1e4))
        self._plateau_lr, self._plateau_best, self._bad_epochs = cfg.lr, math.inf, 0

    def rate(self, epoch: int, step: int = 0) -> float:
        """The rate in epoch `epoch` (1-based) for the training's step `step` (0-based, counted
        from the start of training: one-cycle's clock; a batch skipped is not a step)."""
        cfg = self.cfg
        if cfg.scheduler == "onecycle":
            return self._onecycle(step)
        if epoch <= cfg.warmup_epochs:
            return cfg.lr * epoch / (cfg.warmup_epochs + 1)
        if cfg.scheduler == "plateau":
            return self._plateau_lr
        e, n = epoch - cfg.warmup_epochs - 1, max(cfg.epochs - cfg.warmup_epochs, 1)
        if cfg.scheduler == "step":
            return cfg.lr * cfg.gamma ** (e // cfg.step_size)
        if cfg.scheduler == "cosine":
            return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * e / n))
        return cfg.lr

    def rates(self, epoch: int, first_step: int, n_steps: int) -> list[float]:
        """The rate at each of an epoch's `n_steps` steps, the first being training's `first_step`."""
        if self.cfg.scheduler != "onecycle":
            return [self.rate(epoch)] * n_steps
        return [self.rate(epoch, first_step + s) for s in range(n_steps)]

    def per_step(self) -> bool:
        return self.cfg.scheduler == "onecycle"

    def _onecycle(self, step_num: int) -> float:
        start_step = 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(self._phases):
            if step_num <= end_step or i == len(self._phases) - 1:
                pct = (step_num - start_step) / (end_step - start_step)
                return end_lr + (start_lr - end_lr) / 2.0 * (math.cos(math.pi * pct) + 1)
            start_step = end_step
        raise AssertionError("unreachable: the last phase always answers")

    def end_epoch(self, epoch: int, val_loss: float) -> None:
        """Plateau: a validation loss not better than the best by 1e-4 (relative) for more than
        `plateau_patience` epochs cuts the rate by `gamma`. Nothing for the other schedules."""
        cfg = self.cfg
        if cfg.scheduler != "plateau" or epoch <= cfg.warmup_epochs:
            return
        if val_loss < self._plateau_best * (1.0 - 1e-4):
            self._plateau_best, self._bad_epochs = val_loss, 0
        else:
            self._bad_epochs += 1
        if self._bad_epochs > cfg.plateau_patience:
            cut = max(self._plateau_lr * cfg.gamma, 0.0)
            if self._plateau_lr - cut > 1e-8:
                self._plateau_lr = cut
            self._bad_epochs = 0


# --- an epoch's figures -------------------------------------------------------------------------


def seed_trial(seed: int, device: torch.device) -> None:
    """Seed the generators a trial draws from: the CPU's (initial weights, CPU dropout) and its
    GPU's (dropout there). torch.manual_seed does both and every other backend's, at ~130 µs."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


class Tally:
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


def metric_value(name: str, val_loss: float, val_accuracy: float | None) -> float:
    """The study's metric from an epoch's validation figures."""
    if name == "val_accuracy":
        return float(val_accuracy)  # the study checks the metric fits the task before training
    if name == "val_rmse":
        return math.sqrt(val_loss)
    return val_loss


class Best:
    """The best epoch so far by the study's metric (and its weights, with keep_state)."""

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


# --- a trial's epochs ---------------------------------------------------------------------------


class TrialEpochs:
    """One trial's epochs as its trainer ends each: the checks, the schedule's end of epoch, the
    metric, the report to the study (`on_epoch`, which may raise to prune), the best epoch and the
    decision to stop; then the result."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        metric: str,
        schedule: Schedule,
        on_epoch: Callable[[EpochResult], Any] | None,
        timing: TrainTiming,
        probe: torch.Tensor | None = None,
        probe_units: bool = True,
        keep_best: bool = False,
    ) -> None:
        self.cfg, self.metric, self.schedule, self.on_epoch, self.timing = cfg, metric, schedule, on_epoch, timing
        self.best = Best(METRICS[metric] == "maximize", keep_best)
        self.history: list[EpochResult] = []
        self.stopped = "completed"
        self._params: int | None = None
        self._probe = None if probe is None else probe[:LATENCY_ROWS]  # the validation batch latency is timed on
        self._latency_ms: float | None = None
        self._probe_units = probe_units  # the model given each epoch holds its current weights (a pack's members do not)
        self._seconds = 0.0

    @staticmethod
    def check(epoch: int, loss: float) -> None:
        """A NaN or infinite loss ends the trial as diverged (before its evaluation, where it can)."""
        if not math.isfinite(loss):
            raise DivergedError(epoch, loss)

    def end(
        self,
        epoch: int,
        model: nn.Module,
        *,
        train_loss: float,
        train_accuracy: float | None,
        val_loss: float,
        val_accuracy: float | None,
        lr: float,
        grad_norms: dict[str, float],
        seconds: float,
        dead: tuple[float, int] | None = None,
    ) -> bool:
        """Close the epoch, which took `seconds` to train and evaluate; True when the trial is done
        (early stopping, or its last epoch). `dead`: its dead units, where the trainer measured them
        (a pack's members); else measured here on the probe batch. Raises DivergedError, or what
        `on_epoch` raises (pruning)."""
        self._seconds += seconds
        self.check(epoch, train_loss)
        self.check(epoch, val_loss)
        self.schedule.end_epoch(epoch, val_loss)
        if self._params is None:
            self._params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self._latency_ms is None and self._probe is not None:  # the architecture is the trial's: timed once
            self._latency_ms = round(forward_latency_ms(model, self._probe), 4)
        value = metric_value(self.metric, val_loss, val_accuracy)
        norms = list(grad_norms.values())
        if dead is None and self._probe_units and self._probe is not None:
            dead = dead_units(model, self._probe)
        result = EpochResult(
            epoch, train_loss, val_loss, val_accuracy, value, lr, train_accuracy, grad_norms, self._params, round(self._seconds, 4), self._latency_ms,
            *((norms[0], norms[-1], min(norms), max(norms)) if norms else (None,) * 4), *(dead or (None, None)),
        )
        self.history.append(result)
        if self.on_epoch is not None:
            self.timing.reports_s -= time.perf_counter()
            try:
                self.on_epoch(result)
            finally:
                self.timing.reports_s += time.perf_counter()
        if not self.best.update(result, model) and self.cfg.patience and epoch - self.best.epoch >= self.cfg.patience:
            self.stopped = "early_stopping"
            return True
        return epoch >= self.cfg.epochs

    def result(self, device: str, duration_s: float, model: nn.Module, task: str) -> TrainResult:
        best = self.best.epoch_result
        assert best is not None, "epochs >= 1 is checked when the space is validated"
        return TrainResult(
            value=best.metric,
            best_epoch=best.epoch,
            epochs_run=len(self.history),
            stopped=self.stopped,
            history=self.history,
            device=device,
            duration_s=duration_s,
            model=model,
            diagnostics=Diagnostics.of(self.history, task),
            best_state=self.best.state,
        )
