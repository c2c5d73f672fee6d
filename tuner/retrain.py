"""The best model as a file: retrain the best trial's configuration with its seed, keep the weights
of its best epoch, save them with everything needed to use them, and attach the file to the study.

    model, meta = load_model("studies/models/demo-trial14.pt")   # back in torch, ready to predict
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from optuna.trial import FrozenTrial
from torch import nn

from tuner import attrs as A
from tuner.atomic import atomic_path
from tuner.handle import attach
from tuner.errors import SpecError, TunerError
from tuner.params import TrainConfig
from tuner.storage import DEFAULT_ARTIFACTS
from tuner.study import Loaded, quiet_optuna, set_threads, trial_workload
from tuner.train import evaluate, resolve_device, scale_features, train
from tuner.workloads.data import Dataset, TorchData, load_workload, parse_workload
from tuner.workloads.models import build_model

__all__ = ["Retrained", "load_model", "retrain_best", "score"]

BEST_MODEL_ATTR = "best_model"
MODELS_DIR = Path("studies/models")
_FORMAT = "tuner.model/1"


@dataclass
class Retrained:
    path: Path
    trial: int  # the best trial's number
    metric: str
    reported: float  # the trial's value in the study
    reproduced: float  # the retrained model's score on the same validation split
    epoch: int  # the epoch whose weights were kept
    artifact_id: str | None


def _input_scaling(data: Dataset | TorchData, scaling: str) -> dict[str, Any]:
    """The affine map the loop applied to inputs, so a saved model can be fed raw features."""
    if isinstance(data, TorchData):  # the user's datasets transform their own samples
        return {"kind": "none", "scale": None, "shift": None}
    probe = np.stack([np.zeros(data.n_features, np.float32), np.ones(data.n_features, np.float32)])
    scaled, _ = scale_features(data.x_train, probe, scaling)
    shift = scaled[0]
    return {"kind": scaling, "scale": (scaled[1] - shift).tolist(), "shift": shift.tolist()}


def retrain_best(
    loaded: Loaded,
    *,
    out: Path | None = None,
    device: str = "auto",
    artifacts_dir: Path = DEFAULT_ARTIFACTS,
    threads: int | None = None,
    trial: FrozenTrial | None = None,
) -> Retrained:
    """Retrain the study's best trial (or `trial`, a complete one: a point of a front) with its
    seed, keep the weights of its best epoch, save them with what loads them again, and attach
    the file to the study."""
    quiet_optuna()
    study, spec = loaded.study, loaded.spec
    if spec.user_code:
        raise SpecError(
            f"study '{spec.name}' trains your own {spec.code_kind}, and retrain runs tuner's own loop; "
            f"`tuner study best {spec.name}` gives the best parameters (and the command line) to retrain it with your code"
        )
    if trial is None and len(spec.objectives) > 1:
        raise SpecError(f"study '{spec.name}' has several metrics and no single best: pick a trial of its front (`tuner best {spec.name} --trial N --retrain`)")
    try:
        best = trial or study.best_trial
    except ValueError:
        raise SpecError(f"study '{spec.name}' has no complete{' feasible' if spec.constraints else ''} trial yet; run it with `tuner study run {spec.name}`") from None
    metric = spec.epoch_metric  # the one that picked its best epoch
    reported = best.values[[m.name for m in spec.objectives].index(metric)] if metric in (m.name for m in spec.objectives) else best.values[0]
    torch_device = resolve_device(device)
    set_threads(threads)
    params = {**loaded.space.fixed(), **best.params}
    seed = int(best.user_attrs.get(A.SEED, spec.seed + best.number))
    data, user_model = trial_workload(loaded, params, seed)
    cfg = TrainConfig.from_params(params)
    result = train(cfg, data, metric=metric, device=torch_device, seed=seed, model=user_model, keep_best=True)
    model = result.model
    assert result.best_state is not None
    model.load_state_dict(result.best_state)
    reproduced = next(e.metric for e in result.history if e.epoch == result.best_epoch)

    out = out or MODELS_DIR / f"{spec.name}-trial{best.number}.pt"
    payload = {
        "format": _FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": cfg.as_dict(),
        "params": params,
        "study": spec.name,
        "trial": best.number,
        "seed": seed,
        "metric": metric,
        "value": reproduced,
        "reported_value": reported,
        "best_epoch": result.best_epoch,
        "workload": {"ref": spec.workload, "target": spec.target, "seed": spec.seed, "val_fraction": spec.val_fraction},
        "task": data.task,
        "n_features": data.n_features,
        "n_outputs": data.n_classes or 1,
        "image_shape": data.image_shape,
        "input_scaling": _input_scaling(data, cfg.scaling),
        "user_model": user_model is not None,
    }
    _save(payload, out)
    artifact_id = attach(loaded.study, out, artifacts_dir, mimetype="application/octet-stream")
    study.set_user_attr(
        BEST_MODEL_ATTR,
        {"trial": best.number, "file": str(out), "artifact_id": artifact_id, metric: reproduced, "epoch": result.best_epoch},
    )
    return Retrained(out, best.number, metric, float(reported), reproduced, result.best_epoch, artifact_id)


def _save(payload: dict[str, Any], out: Path) -> None:
    with atomic_path(out, hint="; pass --out with a writable path") as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path, *, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A saved best model back in torch (eval mode) with its metadata. For a user-callable workload
    the architecture comes from calling it again with the saved parameters."""
    path = Path(path)
    if not path.is_file():
        raise TunerError(f"no model file {path}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise TunerError(f"{path} is not a tuner model file ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise TunerError(f"{path} is not a tuner model file (no {_FORMAT} marker)")
    cfg = TrainConfig(**payload["config"])
    if payload["user_model"]:
        wl = payload["workload"]
        _, model = load_workload(parse_workload(wl["ref"], target=wl["target"]), seed=wl["seed"], val_fraction=wl["val_fraction"], config=payload["params"])
    else:
        shape = tuple(payload["image_shape"]) if payload["image_shape"] else None
        model = build_model(cfg, n_features=payload["n_features"], n_outputs=payload["n_outputs"], image_shape=shape)
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta


def score(model: nn.Module, meta: dict[str, Any], *, device: str = "cpu") -> float:
    """The saved model's metric on its study's validation split, from raw features."""
    wl = meta["workload"]
    data, _ = load_workload(parse_workload(wl["ref"], target=wl["target"]), seed=wl["seed"], val_fraction=wl["val_fraction"], config=meta["params"])
    loss_fn: nn.Module = nn.CrossEntropyLoss() if meta["task"] == "classification" else nn.MSELoss()
    if isinstance(data, TorchData):
        from tuner.train import make_feed

        val_loss, val_accuracy = make_feed(data, "none", 1, torch.device(device), 0).evaluate(model, loss_fn, meta["task"])
    else:
        _, x_val = scale_features(data.x_train, data.x_val, meta["config"]["scaling"])  # exactly as in training
        x = torch.as_tensor(x_val.astype(np.float32), device=device)
        y = torch.as_tensor(data.y_val, device=device)
        val_loss, val_accuracy = evaluate(model, x, y, loss_fn, meta["task"])
    return {"val_accuracy": val_accuracy, "val_loss": val_loss, "val_rmse": val_loss**0.5}[meta["metric"]]
