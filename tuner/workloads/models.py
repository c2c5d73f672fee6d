"""Models and the layer registries the training loop applies: activations, normalizations, initializers."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from tuner.params import ACTIVATIONS, INITIALIZERS, NORMS, TrainConfig

__all__ = ["ACTIVATION_LAYERS", "INIT_FUNCTIONS", "CNN", "MLP", "Dropout", "apply_init", "build_model"]

ACTIVATION_LAYERS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}
assert tuple(ACTIVATION_LAYERS) == ACTIVATIONS


class Dropout(nn.Dropout):
    """nn.Dropout, with the mask drawn as uniform noise on the CPU: torch's CPU dropout draws it
    with bernoulli_, about twice as slow for the same Bernoulli(1 - p) mask scaled by 1 / (1 - p).
    Elsewhere (CUDA's fused kernel) and outside training it is nn.Dropout itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0.0 < self.p < 1.0 or self.inplace:
            return super().forward(x)
        with torch.no_grad():
            mask = torch.rand(x.shape, dtype=x.dtype, device=x.device).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x * mask


def _norm_1d(kind: str, width: int) -> nn.Module:
    return {"none": nn.Identity, "batch": lambda: nn.BatchNorm1d(width), "layer": lambda: nn.LayerNorm(width)}[kind]()


def _norm_2d(kind: str, channels: int) -> nn.Module:
    # GroupNorm with one group normalizes over (C, H, W): layer norm for feature maps.
    return {"none": nn.Identity, "batch": lambda: nn.BatchNorm2d(channels), "layer": lambda: nn.GroupNorm(1, channels)}[kind]()


assert set(NORMS) == {"none", "batch", "layer"}


def _dense_stack(cfg: TrainConfig, width_in: int, n_outputs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(cfg.n_layers):
        layers += [nn.Linear(width_in, cfg.hidden_units), _norm_1d(cfg.norm, cfg.hidden_units)]
        layers += [ACTIVATION_LAYERS[cfg.activation](), Dropout(cfg.dropout)]
        width_in = cfg.hidden_units
    layers.append(nn.Linear(width_in, n_outputs))
    return layers


class MLP(nn.Sequential):
    """n_layers hidden blocks of Linear -> norm -> activation -> dropout, then a linear head."""

    def __init__(self, cfg: TrainConfig, n_features: int, n_outputs: int) -> None:
        super().__init__(*_dense_stack(cfg, n_features, n_outputs))


class CNN(nn.Module):
    """Two 3x3 conv blocks (channels, 2*channels) and a 2x2 pool, then the MLP head on the features."""

    def __init__(self, cfg: TrainConfig, image_shape: tuple[int, int, int], n_outputs: int) -> None:
        super().__init__()
        c, h, w = image_shape
        c1, c2 = cfg.channels, 2 * cfg.channels
        act = ACTIVATION_LAYERS[cfg.activation]
        self.image_shape = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), _norm_2d(cfg.norm, c1), act(),
            nn.Conv2d(c1, c2, 3, padding=1), _norm_2d(cfg.norm, c2), act(),
            nn.MaxPool2d(2) if min(h, w) >= 2 else nn.Identity(),
            nn.Flatten(),
        )
        n_flat = c2 * (h // 2) * (w // 2) if min(h, w) >= 2 else c2 * h * w
        self.head = nn.Sequential(Dropout(cfg.dropout), *_dense_stack(cfg, n_flat, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, *self.image_shape)))


def build_model(cfg: TrainConfig, *, n_features: int, n_outputs: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    if cfg.model == "cnn":
        if image_shape is None:
            from tuner.errors import WorkloadError

            raise WorkloadError("model=cnn needs image data (digits, or an (N, C, H, W) array); use model=mlp for tabular data")
        return CNN(cfg, image_shape, n_outputs)
    return MLP(cfg, n_features, n_outputs)


def _gain(activation: str) -> float:
    name = {"leaky_relu": "leaky_relu", "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}.get(activation, "relu")
    return nn.init.calculate_gain(name, 0.01) if name == "leaky_relu" else nn.init.calculate_gain(name)


def _kaiming_nonlinearity(activation: str) -> str:
    return activation if activation in ("relu", "leaky_relu", "tanh", "sigmoid") else "relu"


INIT_FUNCTIONS: dict[str, Callable[[torch.Tensor, TrainConfig], object] | None] = {
    "default": None,  # PyTorch's own per-layer initialization
    "xavier_uniform": lambda w, cfg: nn.init.xavier_uniform_(w, gain=_gain(cfg.activation)),
    "xavier_normal": lambda w, cfg: nn.init.xavier_normal_(w, gain=_gain(cfg.activation)),
    "kaiming_uniform": lambda w, cfg: nn.init.kaiming_uniform_(w, a=0.01, nonlinearity=_kaiming_nonlinearity(cfg.activation)),
    "kaiming_normal": lambda w, cfg: nn.init.kaiming_normal_(w, a=0.01, nonlinearity=_kaiming_nonlinearity(cfg.activation)),
    "orthogonal": lambda w, cfg: nn.init.orthogonal_(w, gain=_gain(cfg.activation)),
    "scaled_normal": lambda w, cfg: nn.init.normal_(w, 0.0, cfg.init_std),
}
assert tuple(INIT_FUNCTIONS) == INITIALIZERS


@torch.no_grad()
def apply_init(model: nn.Module, cfg: TrainConfig) -> None:
    """Re-initialize every Linear and Conv weight; biases start at zero (except with `default`)."""
    init = INIT_FUNCTIONS[cfg.init]
    if init is None:
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            init(module.weight, cfg)
            if module.bias is not None:
                module.bias.zero_()

