"""Trial packing: many MLP trainings as one batched model.

A small model's step is mostly fixed costs (kernel launches, Python, the optimizer's loop), not
arithmetic. K trials trained side by side pay those costs once: each layer's weights are stacked
over a pack dimension and multiplied with one batched matmul, each trial's hyperparameters are
(K, 1) tensors the optimizers broadcast, and every trial still sees its own seed's initial weights
and batch order, so a packed trial trains as it would alone (tests/test_packing.py compares them).

What cannot differ inside a pack (HFTA's non-fusible settings) makes the pack key: the number of
layers, batch size (steps per epoch), input scaling (the data), normalization. Widths may differ:
narrower trials are padded to the pack's widest with zeros whose gradients are masked, so they stay
zero and change nothing. Optimizers and activations may differ too: rows are kept in order of
(optimizer family, activation), and each family's update runs on its own contiguous rows. L-BFGS
(closures re-evaluating a batch) and the CNN are never packed; neither is a user's model or Dataset.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from tuner.epochs import EVAL_CHUNK, LATENCY_ROWS, EpochResult, Schedule, Tally, TrainResult, TrainTiming, TrialEpochs, report_timing, seed_trial
from tuner.params import TrainConfig
from tuner.spec import parse_pack
from tuner.steps import FAMILIES, OPTIMIZERS, PACKED
from tuner.train import device_tensors, layer_weights
from tuner.workloads.data import Dataset
from tuner.workloads.models import ACTIVATION_LAYERS, apply_init, build_model

__all__ = ["ADAPTIVE", "FAMILIES", "MEMORY_SHARE", "PACK_CPU", "PACK_CUDA", "fit_pack", "free_memory", "member_bytes", "pack_key", "plan_packs", "resolve_pack", "schedule", "train_packed"]

# `--pack auto`: trials claimed at once. On a CPU core the gain flattens past this (tuner bench's
# packing section shows the figures); on a GPU a pack of small MLPs stays far from its memory.
PACK_CPU = 8
PACK_CUDA = 32
ADAPTIVE = frozenset({"tpe", "gp", "cmaes"})  # samplers whose next trials depend on finished ones

_BN_MOMENTUM, _NORM_EPS = 0.1, 1e-5  # nn.BatchNorm1d's and nn.LayerNorm's defaults
# A layer's gradient is a strided view of the pack's flat gradient (see _PackedMLP._bind), not laid
# out as autograd would choose; it still accumulates in place, which is the point.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


def resolve_pack(value: int | str | None, device: torch.device, *, budget: int | None = None, sampler: str | None = None) -> int:
    """Trials a worker claims and packs at once: the number given, or auto's for the device. When
    nothing is given: auto on a GPU, where a small model's step waits on launches that a pack
    shares; 1 (off) on a CPU, where tuner bench's packing section measured a TPE study over
    bench_ref's varied shapes (packs of about two) at 0.95x to 1.20x the time unpacked, by the
    machine's load, and a slower time to 0.97 (TPE is asked K trials at once and learns of them
    only as their pack ends). Same-shaped spaces gain more on a CPU: ask with --pack auto.

    Auto's pack is at most a quarter of the `budget` under a sampler that learns from results
    (ADAPTIVE): it hears of a pack's trials only when the pack ends, and a 30-trial TPE study
    asked 32 trials at once would be a random search. A number given is taken as it is."""
    n = parse_pack(value if value is not None else "auto")
    if n is not None:
        return n
    if device.type == "cuda":
        n = PACK_CUDA
    elif value is None:
        return 1
    else:
        n = PACK_CPU
    if budget and sampler in ADAPTIVE:
        n = min(n, max(1, budget // 4))
    return n


def pack_key(cfg: TrainConfig, data: Any) -> tuple[Any, ...] | None:
    """What trials must share to train in one pack, or None where this one trains alone."""
    if cfg.optimizer not in FAMILIES or cfg.model != "mlp" or not isinstance(data, Dataset):
        return None
    return (cfg.n_layers, cfg.batch_size, cfg.scaling, cfg.norm)


# A step's fixed cost (launches, Python, the optimizer's loop) in floating-point operations that
# take as long: what padding a narrow trial to a wide pack-mate's width is weighed against (see
# plan_packs). The CPU's is the value that gave the quickest plans over bench_ref's
# configurations (tuner bench's packing section); the GPU's assumes its arithmetic ~100x faster
# for the same launch-bound overhead, an estimate no GPU has measured yet.
STEP_OVERHEAD_FLOPS = {"cpu": 1e7, "cuda": 1e9}


def step_flops(cfg: TrainConfig, *, width: int, n_features: int, n_outputs: int) -> float:
    """Multiply-adds of one training step (forward and backward) of an MLP of this width."""
    if cfg.n_layers == 0:
        return 6.0 * cfg.batch_size * n_features * n_outputs
    return 6.0 * cfg.batch_size * width * (n_features + (cfg.n_layers - 1) * width + n_outputs)


# Share of a GPU's free memory a pack may take: the rest is headroom for the allocator's
# fragmentation, the validation pass, and what other processes on the GPU take meanwhile.
MEMORY_SHARE = 0.5


def free_memory(device: torch.device | str) -> int | None:
    """Bytes free on a GPU (torch.cuda.mem_get_info); None on a CPU, where a pack never comes near
    the machine's memory first."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def member_bytes(cfg: TrainConfig, data: Dataset, device: torch.device | str) -> int:
    """Memory one more member adds to a pack of this configuration, found by a dry run as HFHT
    sizes its packs: one packed training step of the configuration alone on `device`, counting its
    parameters, their gradient and the optimizer's state, the tensors autograd keeps for the
    backward pass (counted by saved-tensor hooks, so it runs the same on any device), and its
    copy of each epoch's shuffled training split."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = build_model(cfg, n_features=data.n_features, n_outputs=data.n_classes or 1, image_shape=None)
        net = _PackedMLP([cfg], [model], n_features=data.n_features, n_outputs=data.n_classes or 1, device=device)
        optimizer = _PackedOptimizer([cfg], net.flat.shape[1], device)
        x_train, y_train, _, _ = device_tensors(data, cfg.scaling, device)
        saved = 0

        def count(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            out = net.forward(x_train[: cfg.batch_size].unsqueeze(0), training=True)
            loss = _members_loss(out, y_train[: cfg.batch_size].unsqueeze(0), data.task, None).sum()
        loss.backward()
    kept = [net.flat, net.flat_grad, *optimizer.state.values(), x_train, y_train]
    return saved + sum(t.numel() * t.element_size() for t in kept)


def fit_pack(n_pack: int, per_member: int, free: int) -> int:
    """The largest pack up to n_pack whose members fit in MEMORY_SHARE of `free` bytes (at least 1)."""
    return max(1, min(n_pack, int(MEMORY_SHARE * free) // max(per_member, 1)))


def schedule(cfgs: list[TrainConfig], datas: list[Dataset | None], n_pack: int, device: torch.device | str) -> list[list[int]]:
    """Claimed trials (their configurations and data; None: no data, it failed to load) grouped
    into packs: those that can share a pack by pack_key, at most n_pack each, fewer on a GPU whose
    free memory holds fewer (a dry run of each key's widest member), cut where padding to the
    widest member would cost more than packing gains. A trial that cannot pack is a pack of one."""
    keys = [pack_key(c, d) if d is not None else None for c, d in zip(cfgs, datas)]
    widths = [c.hidden_units for c in cfgs]
    free = free_memory(device)
    if free is not None and n_pack > 1:
        widest = {key: max((i for i, k in enumerate(keys) if k == key), key=lambda i: widths[i]) for key in set(keys) - {None}}
        for i in widest.values():
            n_pack = fit_pack(n_pack, member_bytes(cfgs[i], datas[i], device), free)  # type: ignore[arg-type]

    def cost(i: int, width: int) -> float:
        data = datas[i]
        assert data is not None
        return step_flops(cfgs[i], width=width, n_features=data.n_features, n_outputs=data.n_classes or 1)

    overhead = STEP_OVERHEAD_FLOPS["cuda" if str(device).startswith("cuda") else "cpu"]
    return plan_packs(keys, n_pack, cost=cost, widths=widths, overhead=overhead)


def plan_packs(keys: list[tuple[Any, ...] | None], n_max: int, *, cost: Callable[[int, int], float] | None = None, widths: list[int] | None = None, overhead: float = 0.0) -> list[list[int]]:
    """Indices grouped into packs of at most n_max by key; a trial with no key, or alone under
    its key, is a pack of one. With `cost(i, width)` (trial i's step at that width) and `widths`,
    each key's trials are sorted by width and cut where a pack padded to its widest member would
    cost more than packs apart, each pack's step paying `overhead` once (a dynamic programme over
    the cut points); without, trials pack in their order."""
    groups: dict[Any, list[int]] = {}
    packs: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            packs.append([i])
        else:
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        if cost is None or widths is None:
            packs += [members[a : a + n_max] for a in range(0, len(members), n_max)]
            continue
        members = sorted(members, key=lambda i: widths[i])
        best = [0.0] + [math.inf] * len(members)  # best[j]: cheapest packing of the j narrowest
        cut = [0] * (len(members) + 1)
        for j in range(1, len(members) + 1):
            widest = widths[members[j - 1]]
            for a in range(max(0, j - n_max), j):
                total = best[a] + overhead + sum(cost(i, widest) for i in members[a:j])
                if total < best[j]:
                    best[j], cut[j] = total, a
        j, segments = len(members), []
        while j > 0:
            segments.append(members[cut[j] : j])
            j = cut[j]
        packs += segments[::-1]
    return packs


def _row_order(cfgs: list[TrainConfig]) -> list[int]:
    """Members sorted so that each optimizer family, and each activation within it, holds
    contiguous rows: its update and its activation then run on a view."""
    return sorted(range(len(cfgs)), key=lambda i: (FAMILIES[cfgs[i].optimizer], cfgs[i].activation, i))


def _runs(labels: list[str]) -> list[tuple[str, int, int]]:
    """(label, start, stop) of each run of equal labels."""
    runs: list[tuple[str, int, int]] = []
    for i, label in enumerate(labels):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], i + 1)
        else:
            runs.append((label, i, i + 1))
    return runs


@dataclass
class _Slot:
    """Where one tensor of a member's MLP lives in a row of the flat parameters."""

    name: str  # "hidden.0.weight", "head.bias", "norm.1.weight", ...
    offset: int
    shape: tuple[int, ...]  # padded to the pack's width

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class _PackedMLP:
    """K MLPs (Linear -> norm -> activation -> dropout, then a linear head) as one: a (K, n) flat
    parameter whose rows are the members, viewed per layer as (K, out, in) weights."""

    def __init__(self, cfgs: list[TrainConfig], models: list[nn.Module], *, n_features: int, n_outputs: int, device: torch.device) -> None:
        cfg0 = cfgs[0]
        self.n_layers, self.norm = cfg0.n_layers, cfg0.norm
        self.width = max(c.hidden_units for c in cfgs) if self.n_layers else 0
        self.n_outputs = n_outputs
        slots: list[_Slot] = []

        def add(name: str, *shape: int) -> None:
            slots.append(_Slot(name, sum(s.size for s in slots), tuple(shape)))

        width_in = n_features
        for layer in range(self.n_layers):
            add(f"hidden.{layer}.weight", self.width, width_in)
            add(f"hidden.{layer}.bias", self.width)
            if self.norm != "none":
                add(f"norm.{layer}.weight", self.width)
                add(f"norm.{layer}.bias", self.width)
            width_in = self.width
        add("head.weight", n_outputs, width_in)
        add("head.bias", n_outputs)
        self.slots = slots
        n = sum(s.size for s in slots)
        flat = torch.zeros(len(cfgs), n, device=device)
        mask = torch.zeros(len(cfgs), n, device=device)
        for row, model in enumerate(models):
            for slot, tensor in zip(slots, _mlp_tensors(model, self.n_layers, self.norm)):
                view = flat[row, slot.offset : slot.offset + slot.size].view(slot.shape)
                region = tuple(slice(0, d) for d in tensor.shape)
                view[region] = tensor.detach().to(device)
                mask[row, slot.offset : slot.offset + slot.size].view(slot.shape)[region] = 1.0
        self.flat = flat
        self.grad_mask = None if bool(mask.all()) else mask  # None: no member is padded
        widths = torch.tensor([float(c.hidden_units) for c in cfgs], device=device)
        self.unit_mask = (torch.arange(max(self.width, 1), device=device) < widths[:, None]).float() if self.grad_mask is not None else None
        self.n_units = widths.view(-1, 1, 1)
        self.running = [(torch.zeros(len(cfgs), self.width, device=device), torch.ones(len(cfgs), self.width, device=device)) for _ in range(self.n_layers)] if self.norm == "batch" else []
        self.activations = _runs([c.activation for c in cfgs])
        self.dropout = torch.tensor([c.dropout for c in cfgs], device=device).view(-1, 1, 1)
        self.dropout_scale = 1 / (1 - self.dropout)
        self.dropping = any(c.dropout > 0 for c in cfgs)
        self.n_batches = 0  # training batches seen (batch norm's num_batches_tracked)
        self._bind()

    def _bind(self) -> None:
        """Each tensor a leaf viewing its columns of the flat rows, its gradient a view of the flat
        gradient: backward accumulates straight into one (K, n) buffer the optimizers update."""
        self.flat_grad = torch.zeros_like(self.flat)
        self.params: dict[str, nn.Parameter] = {}
        for slot in self.slots:
            p = nn.Parameter(self.flat[:, slot.offset : slot.offset + slot.size].view(-1, *slot.shape))
            p.grad = self.flat_grad[:, slot.offset : slot.offset + slot.size].view(-1, *slot.shape)
            self.params[slot.name] = p

    def keep(self, rows: torch.Tensor) -> None:
        """Only these members from now on (the others stopped)."""
        self.flat = self.flat.index_select(0, rows)
        if self.grad_mask is not None:
            self.grad_mask = self.grad_mask.index_select(0, rows)
            self.unit_mask = self.unit_mask.index_select(0, rows)
        self.n_units = self.n_units.index_select(0, rows)
        self.running = [(m.index_select(0, rows), v.index_select(0, rows)) for m, v in self.running]
        self.dropout = self.dropout.index_select(0, rows)
        self.dropout_scale = self.dropout_scale.index_select(0, rows)
        kept = rows.tolist()
        labels = [label for label, a, b in self.activations for _ in range(a, b)]
        self.activations = _runs([labels[i] for i in kept])
        self._bind()

    @property
    def weights(self) -> list[nn.Parameter]:
        """The weight matrices, first layer to head: what L1 and the gradient diagnostics read."""
        return [self.params[f"hidden.{i}.weight"] for i in range(self.n_layers)] + [self.params["head.weight"]]

    def _normalize(self, layer: int, h: torch.Tensor, training: bool) -> torch.Tensor:
        if self.norm == "none":
            return h
        gamma = self.params[f"norm.{layer}.weight"].unsqueeze(1)
        beta = self.params[f"norm.{layer}.bias"].unsqueeze(1)
        if self.norm == "batch":  # statistics over each member's batch, per unit
            running_mean, running_var = self.running[layer]
            if training:
                mean = h.mean(1, keepdim=True)
                var = h.var(1, unbiased=False, keepdim=True)
                with torch.no_grad():
                    n = h.shape[1]
                    running_mean.mul_(1 - _BN_MOMENTUM).add_(mean.squeeze(1), alpha=_BN_MOMENTUM)
                    running_var.mul_(1 - _BN_MOMENTUM).add_(var.squeeze(1) * (n / (n - 1)), alpha=_BN_MOMENTUM)
            else:
                mean, var = running_mean.unsqueeze(1), running_var.unsqueeze(1)
            return (h - mean) * torch.rsqrt(var + _NORM_EPS) * gamma + beta
        if self.unit_mask is None:  # layer norm over each example's units
            return torch.nn.functional.layer_norm(h, h.shape[-1:], eps=_NORM_EPS) * gamma + beta
        # over a padded member's real units only
        m = self.unit_mask.unsqueeze(1)
        mean = (h * m).sum(-1, keepdim=True) / self.n_units
        centred = (h - mean) * m
        var = (centred * centred).sum(-1, keepdim=True) / self.n_units
        return centred * torch.rsqrt(var + _NORM_EPS) * gamma + beta

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        if len(self.activations) == 1:
            return _ACTIVATE[self.activations[0][0]](h)
        return torch.cat([_ACTIVATE[name](h[a:b]) for name, a, b in self.activations])

    def forward(self, x: torch.Tensor, *, training: bool) -> torch.Tensor:
        """(K, B, features) -> (K, B, outputs)."""
        h = x
        self.n_batches += training
        for layer in range(self.n_layers):
            w, b = self.params[f"hidden.{layer}.weight"], self.params[f"hidden.{layer}.bias"]
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            h = self._activate(self._normalize(layer, h, training))
            if training and self.dropping:  # a Bernoulli(1 - p) mask scaled by 1 / (1 - p), p per member
                with torch.no_grad():
                    mask = torch.rand(h.shape, dtype=h.dtype, device=h.device).ge_(self.dropout).mul_(self.dropout_scale)
                h = h * mask
        w, b = self.params["head.weight"], self.params["head.bias"]
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    @torch.no_grad()
    def dead_units(self, x: torch.Tensor, cfgs: list[TrainConfig]) -> list[tuple[float, int] | None]:
        """Each member's largest share of a hidden layer's units (its own width, not the padding)
        whose input is never above zero on `x`, in eval mode, and which layer (1-based), as
        tuner.epochs.dead_units gives alone; None for a member without ReLU-family units."""
        k = self.flat.shape[0]
        h = x.expand(k, *x.shape)
        worst: list[tuple[float, int] | None] = [None] * k
        for layer in range(self.n_layers):
            w, b = self.params[f"hidden.{layer}.weight"], self.params[f"hidden.{layer}.bias"]
            pre = self._normalize(layer, torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)), False)
            active = (pre > 0).any(1)  # (K, width)
            shares = [1.0 - float(active[i, : c.hidden_units].float().mean()) for i, c in enumerate(cfgs)]
            for i, (c, share) in enumerate(zip(cfgs, shares)):
                if c.activation in RELU_FAMILY and (worst[i] is None or share > worst[i][0]):
                    worst[i] = (share, layer + 1)
            h = self._activate(pre)
        return worst

    def unpack(self, row: int, model: nn.Module) -> nn.Module:
        """Member `row`'s weights copied into its own MLP (built as it would be alone)."""
        with torch.no_grad():
            for slot, tensor in zip(self.slots, _mlp_tensors(model, self.n_layers, self.norm)):
                view = self.flat[row, slot.offset : slot.offset + slot.size].view(slot.shape)
                tensor.copy_(view[tuple(slice(0, d) for d in tensor.shape)])
            if self.norm == "batch":
                norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
                for (mean, var), bn in zip(self.running, norms):
                    bn.running_mean.copy_(mean[row, : bn.num_features])
                    bn.running_var.copy_(var[row, : bn.num_features])
                    bn.num_batches_tracked.fill_(self.n_batches)
        return model


_ACTIVATE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {name: make() for name, make in ACTIVATION_LAYERS.items()}
RELU_FAMILY = ("relu", "leaky_relu", "elu", "gelu", "silu")  # activations whose units are off below zero (tuner.epochs.dead_units)


def _mlp_tensors(model: nn.Module, n_layers: int, norm: str) -> list[torch.Tensor]:
    """An MLP's tensors in _PackedMLP's slot order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))]
    tensors: list[torch.Tensor] = []
    for layer in range(n_layers):
        tensors += [linears[layer].weight, linears[layer].bias]
        if norm != "none":
            tensors += [norms[layer].weight, norms[layer].bias]
    return tensors + [linears[-1].weight, linears[-1].bias]


def _column(rows: list[Any], value: Callable[[Any], float], device: torch.device) -> torch.Tensor:
    return torch.tensor([float(value(r)) for r in rows], device=device).view(-1, 1)


# every setting a packed update may read (steps.OPTIMIZERS' `packed`), each a column of the pack
_SETTINGS = sorted({k for o in OPTIMIZERS.values() if o.packed is not None for k in o.packed(TrainConfig())} | {"beta1", "beta2"})


class _PackedOptimizer:
    """Each family's update, as torch.optim's single-tensor code does it, on its members' rows,
    with every hyperparameter a (K, 1) column; state rows follow the members."""

    def __init__(self, cfgs: list[TrainConfig], n_params: int, device: torch.device) -> None:
        self.cfgs = cfgs
        self.runs = _runs([FAMILIES[c.optimizer] for c in cfgs])
        settings = [OPTIMIZERS[c.optimizer].packed(c) for c in cfgs]  # type: ignore[misc]
        self.hp = {k: _column(settings, lambda s, k=k: s.get(k, 0.0), device) for k in _SETTINGS}  # absent: 0
        self.hp["one_minus_beta1"], self.hp["one_minus_beta2"] = 1 - self.hp["beta1"], 1 - self.hp["beta2"]
        self.settings = settings
        self.state = {name: torch.zeros(len(cfgs), n_params, device=device) for family in {FAMILIES[c.optimizer] for c in cfgs} for name in PACKED[family][1]}
        self.steps = 0
        self._plan()

    def _plan(self) -> None:
        """Each family's rows: its hyperparameter and state views, and which options any row uses
        (an update skips what none does)."""
        self.families = []
        for family, a, b in self.runs:
            rows = self.settings[a:b]
            nesterov = [s.get("nesterov", 0.0) > 0 for s in rows]
            used = {
                "coupled_wd": any(s.get("coupled_wd", 0.0) > 0 for s in rows),
                "decoupled_wd": any(s.get("decoupled_wd", 0.0) > 0 for s in rows),
                "nesterov": "all" if all(nesterov) else any(nesterov),
            }
            hp = {k: v[a:b] for k, v in self.hp.items()}
            update, state_names = PACKED[family]
            state = {name: self.state[name][a:b] for name in state_names}
            self.families.append((update, a, b, hp, state, used))

    def keep(self, rows: torch.Tensor) -> None:
        kept = rows.tolist()
        self.cfgs = [self.cfgs[i] for i in kept]
        self.settings = [self.settings[i] for i in kept]
        self.runs = _runs([FAMILIES[c.optimizer] for c in self.cfgs])
        self.hp = {k: v.index_select(0, rows) for k, v in self.hp.items()}
        self.state = {k: v.index_select(0, rows) for k, v in self.state.items()}
        self._plan()

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> None:
        self.steps += 1
        for update, a, b, hp, state, used in self.families:
            p, g = flat[a:b], grad[a:b]
            if used["coupled_wd"]:
                g = g + hp["coupled_wd"] * p
            update(p, g, lr[a:b], hp, state, self.steps, used)




class _Member:
    """One trial of the pack: its settings, batch order, epochs (tuner.epochs) and outcome."""

    def __init__(self, cfg: TrainConfig, seed: int, model: nn.Module, epochs: TrialEpochs, device: torch.device) -> None:
        self.cfg, self.seed, self.model, self.epochs = cfg, seed, model, epochs
        self.generator = torch.Generator(device=device).manual_seed(seed)  # the batch order alone would use
        self.steps_taken = 0  # one-cycle's clock, as alone
        self.outcome: TrainResult | BaseException | None = None

    def rates(self, epoch: int, n_steps: int) -> list[float]:
        """The learning rate at each of the epoch's steps."""
        rates = self.epochs.schedule.rates(epoch, self.steps_taken, n_steps)
        self.steps_taken += n_steps
        return rates


def _members_loss(out: torch.Tensor, y: torch.Tensor, task: str, smoothing: torch.Tensor | None) -> torch.Tensor:
    """Each member's mean loss on its batch: (K,)."""
    if task == "regression":
        return (out.squeeze(-1) - y).pow(2).mean(1)
    logp = out - out.logsumexp(-1, keepdim=True)  # log_softmax, which is ~4x slower for few classes on a CPU
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if smoothing is None:
        return nll.mean(1)
    return ((1 - smoothing) * nll + smoothing * -logp.mean(-1)).mean(1)  # CrossEntropyLoss(label_smoothing)


def train_packed(
    cfgs: list[TrainConfig],
    data: Dataset,
    *,
    seeds: list[int],
    metric: str = "val_accuracy",
    device: torch.device | str = "cpu",
    on_epoch: list[Callable[[EpochResult], Any] | None] | None = None,
) -> list[TrainResult | BaseException]:
    """Train each configuration as `train` would alone, all at once; all must share a pack_key.
    Each member's `on_epoch` may raise to stop that member only (pruning); a member whose loss
    turns NaN or infinite ends with DivergedError. Returns, per member, its TrainResult or the
    exception that ended it."""
    device = torch.device(device)
    timing, started = TrainTiming(n_trials=len(cfgs)), time.perf_counter()
    try:
        return _train_packed(cfgs, data, seeds=seeds, metric=metric, device=device, on_epoch=on_epoch, timing=timing, started=started)
    finally:
        timing.total_s = time.perf_counter() - started
        report_timing(timing)


def _train_packed(
    cfgs: list[TrainConfig],
    data: Dataset,
    *,
    seeds: list[int],
    metric: str,
    device: torch.device,
    on_epoch: list[Callable[[EpochResult], Any] | None] | None,
    timing: TrainTiming,
    started: float,
) -> list[TrainResult | BaseException]:
    keys = {pack_key(c, data) for c in cfgs}
    if len(keys) != 1 or None in keys:
        raise ValueError(f"trials that cannot share a pack: keys {sorted(map(str, keys))}")
    x_train, y_train, x_val, y_val = device_tensors(data, cfgs[0].scaling, device)
    batch_size, n_train, task = cfgs[0].batch_size, len(x_train), data.task
    steps_per_epoch = math.ceil(n_train / batch_size)
    callbacks = on_epoch or [None] * len(cfgs)
    order = _row_order(cfgs)
    members: list[_Member] = []
    for i in order:  # each member's initial weights are those it would have alone
        seed_trial(seeds[i], device)
        model = build_model(cfgs[i], n_features=data.n_features, n_outputs=data.n_classes or 1, image_shape=None)
        apply_init(model, cfgs[i])
        model.to(device)  # its own copy, on the device: latency is timed on it, and the trained weights land in it
        epochs = TrialEpochs(cfgs[i], metric=metric, schedule=Schedule(cfgs[i], steps_per_epoch), on_epoch=callbacks[i], timing=timing, probe=x_val, probe_units=False)
        members.append(_Member(cfgs[i], seeds[i], model, epochs, device))
    active = list(members)
    layer_names = [name for name, _ in layer_weights(members[0].model)]  # as alone; every member has the same layers
    net = _PackedMLP([m.cfg for m in active], [m.model for m in active], n_features=data.n_features, n_outputs=data.n_classes or 1, device=device)
    optimizer = _PackedOptimizer([m.cfg for m in active], net.flat.shape[1], device)
    col = lambda f: _column([m.cfg for m in active], f, device)  # noqa: E731
    smoothing = col(lambda c: c.label_smoothing) if task == "classification" and any(m.cfg.label_smoothing > 0 for m in active) else None
    l1 = col(lambda c: c.l1).view(-1) if any(m.cfg.l1 > 0 for m in active) else None
    clip = col(lambda c: c.grad_clip).view(-1) if any(m.cfg.grad_clip > 0 for m in active) else None
    skip_single = cfgs[0].norm == "batch"  # batch norm cannot normalize a batch of one
    epoch = 0
    while active:
        epoch += 1
        epoch_started = time.perf_counter()
        # train: each member's batches in its own order, one step for all
        perms = torch.stack([torch.randperm(n_train, device=device, generator=m.generator) for m in active])
        # index_select of the flattened orders: 2.5x quicker on a CPU than x_train[perms], whose
        # advanced indexing was a fifth of a small pack's time (same values)
        xs = x_train.index_select(0, perms.view(-1)).view(*perms.shape, *x_train.shape[1:])
        ys = y_train.index_select(0, perms.view(-1)).view(perms.shape)
        bounds = [(a, min(a + batch_size, n_train)) for a in range(0, n_train, batch_size)]
        bounds = [(a, b) for a, b in bounds if not (skip_single and b - a < 2)]
        member_rates = [m.rates(epoch, len(bounds)) for m in active]
        epoch_lr = [r[0] if r else m.epochs.schedule.rate(epoch, m.steps_taken) for r, m in zip(member_rates, active)]
        rates = torch.tensor(member_rates, device=device)  # (K, steps)
        tally = Tally(task, device, n_members=len(active))
        norms = torch.zeros(len(net.weights), len(active), device=device)
        for s, (a, b) in enumerate(bounds):
            xb, yb = xs[:, a:b], ys[:, a:b]
            net.flat_grad.zero_()
            out = net.forward(xb, training=True)
            losses = _members_loss(out, yb, task, smoothing)
            if l1 is not None:  # the L1 penalty is part of each member's loss, as alone
                losses = losses + l1 * sum(w.abs().sum((1, 2)) for w in net.weights)
            losses.sum().backward()
            with torch.no_grad():
                if net.grad_mask is not None:  # padding stays zero
                    net.flat_grad.mul_(net.grad_mask)
                if s >= steps_per_epoch - 2:  # per-layer norms near the epoch's end, before clipping
                    norms = torch.stack([torch.linalg.vector_norm(w.grad, dim=(1, 2)) for w in net.weights])
                if clip is not None:  # clip_grad_norm_ per member; 0 = off
                    coef = torch.where(clip > 0, (clip / (net.flat_grad.norm(dim=1) + 1e-6)).clamp(max=1.0), 1.0)
                    net.flat_grad.mul_(coef.unsqueeze(1))
                tally.add(losses.detach(), out.detach(), yb)
            optimizer.step(net.flat, net.flat_grad, rates[:, s : s + 1])
        train_loss, train_correct = (tally.totals() / max(tally.n, 1)).tolist()
        norms_list = norms.t().tolist()
        # evaluate every member on the validation split
        val_loss, val_accuracy = _evaluate(net, x_val, y_val, task)
        dead = net.dead_units(x_val[:LATENCY_ROWS], [m.cfg for m in active])  # as alone: on the validation batch latency is timed on
        # report, then decide who stops; each member's train_seconds is its share of the epoch
        share = (time.perf_counter() - epoch_started) / len(active)
        ending: list[int] = []
        for i, m in enumerate(active):
            try:
                accuracy = val_accuracy[i] if val_accuracy is not None else None
                done = m.epochs.end(
                    epoch, m.model, train_loss=train_loss[i], train_accuracy=train_correct[i] if task == "classification" else None,
                    val_loss=val_loss[i], val_accuracy=accuracy, lr=epoch_lr[i], grad_norms=dict(zip(layer_names, norms_list[i])), seconds=share, dead=dead[i],
                )
                if not done:
                    continue
                m.outcome = m.epochs.result(str(device), time.perf_counter() - started, net.unpack(i, m.model), task)
            except Exception as e:  # pruned, diverged or failed: this member only
                m.outcome = e
            ending.append(i)
        if ending:
            rows = torch.tensor([i for i in range(len(active)) if i not in ending], dtype=torch.long, device=device)
            active = [m for i, m in enumerate(active) if i not in ending]
            if active:
                net.keep(rows)
                optimizer.keep(rows)
                smoothing = smoothing.index_select(0, rows) if smoothing is not None else None
                l1 = l1.index_select(0, rows) if l1 is not None else None
                clip = clip.index_select(0, rows) if clip is not None else None
    outcomes: list[Any] = [None] * len(cfgs)
    for i, m in zip(order, members):
        outcomes[i] = m.outcome
    return outcomes


@torch.no_grad()
def _evaluate(net: _PackedMLP, x: torch.Tensor, y: torch.Tensor, task: str) -> tuple[list[float], list[float] | None]:
    """Every member's validation loss and accuracy (the loss without label smoothing)."""
    k = net.flat.shape[0]
    loss_sum = torch.zeros(k, device=x.device)
    correct = torch.zeros(k, device=x.device)
    for xb, yb in zip(x.split(EVAL_CHUNK), y.split(EVAL_CHUNK)):
        out = net.forward(xb.expand(k, *xb.shape), training=False)
        yk = yb.expand(k, *yb.shape)
        loss_sum += _members_loss(out, yk, task, None) * len(xb)
        if task == "classification":
            correct += (out.argmax(-1) == yk).sum(1)
    n = len(x)
    return (loss_sum / n).tolist(), (correct / n).tolist() if task == "classification" else None
