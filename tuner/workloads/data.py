"""Training data: built-in datasets shipped inside scikit-learn, a CSV file, an .npz file, or a user callable.

Nothing is downloaded at run time. A workload reference is a built-in name (`digits`,
`breast_cancer`, `wine`), a path ending in .csv (with a target column) or .npz (arrays X and y),
or `module:function` for a user's own model and data.
"""

from __future__ import annotations

import csv
import functools
import importlib
import math
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tuner.errors import WorkloadError

__all__ = ["BUILTINS", "Dataset", "TorchData", "WorkloadRef", "load_workload", "parse_workload", "user_callable"]

BUILTINS = ("digits", "breast_cancer", "wine")
_MAX_CLASSES = 50  # an integer target with at most this many distinct values is a classification


@dataclass(frozen=True)
class WorkloadRef:
    """What a study trains on, as stored with the study."""

    kind: str  # builtin | csv | npz | callable
    ref: str  # the name, path or module:function as the person gave it
    target: str | None = None  # the CSV column to predict

    def describe(self) -> str:
        return f"{self.ref} (target column '{self.target}')" if self.target else self.ref


@dataclass(frozen=True)
class Dataset:
    """A train/validation split as float32 features and int64 (classes) or float32 (regression) targets."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    task: str  # classification | regression
    n_classes: int  # 0 for regression
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width) when rows are images

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


@dataclass(frozen=True)
class TorchData:
    """A user callable's own `torch.utils.data.Dataset`s: trained through a DataLoader, batch by
    batch, for data that does not fit the in-memory path or needs per-sample transforms. tuner's
    input scaling does not apply (the datasets transform their own samples)."""

    name: str
    train_set: Any
    val_set: Any
    task: str  # classification (integer targets) | regression
    n_classes: int  # 0 for regression; counted only where tuner builds the model
    n_features: int  # elements of one input sample
    image_shape: tuple[int, int, int] | None = None  # a sample's (channels, height, width), if 3-D


def parse_workload(ref: str, *, target: str | None = None) -> WorkloadRef:
    ref = ref.strip()
    if ref.endswith(".csv"):
        if not target:
            raise WorkloadError(f"workload {ref}: a CSV workload needs the column to predict; pass --target COLUMN")
        return WorkloadRef("csv", ref, target)
    if target:
        raise WorkloadError(f"--target {target} only applies to a .csv workload, not {ref}")
    if ref.endswith(".npz"):
        return WorkloadRef("npz", ref)
    if ":" in ref:
        module, _, func = ref.partition(":")
        if not module or not func:
            raise WorkloadError(f"workload {ref!r}: a callable is written module:function, e.g. mypkg.data:build")
        return WorkloadRef("callable", ref)
    if ref not in BUILTINS:
        raise WorkloadError(
            f"unknown workload {ref!r}; use one of {', '.join(BUILTINS)}, a .csv file (with --target), "
            "an .npz file with X and y, or module:function"
        )
    return WorkloadRef("builtin", ref)


def user_callable(ref: str, *, what: str = "workload", error: type[Exception] = WorkloadError) -> Callable[..., Any]:
    """Import `module:function`; the current directory is importable, as with `python -m`. Errors
    name the setting it came from (`what`) and are raised as `error`."""
    module_name, _, func_name = ref.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure of user code is the user's to fix
        raise error(
            f"{what} {ref}: cannot import module '{module_name}' ({e.__class__.__name__}: {e}); "
            "run from the folder that holds it or put that folder on PYTHONPATH"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise error(f"{what} {ref}: module '{module_name}' has no function '{func_name}'")
    return func


def load_workload(
    wref: WorkloadRef, *, seed: int, val_fraction: float = 0.2, config: dict | None = None
) -> tuple[Dataset, Any]:
    """The split data, and the user's model for a callable workload (None: tuner builds one).

    Files and built-ins are cached per process, so a worker loads them once for all its trials."""
    if wref.kind == "callable":
        try:
            out = user_callable(wref.ref)(dict(config or {}))
        except WorkloadError:
            raise
        except Exception as e:  # the user's code: its failure is the trial's, with the reason kept
            raise WorkloadError(f"workload {wref.ref} raised {e.__class__.__name__}: {e}") from e
        if _torch_datasets(out):
            return torch_data(wref.ref, out[1], out[2], count_classes=out[0] is None), _model(wref.ref, out[0])
        model, x, y = split_callable_output(wref.ref, out)
        return _split(wref.ref, x, y, seed=seed, val_fraction=val_fraction), model
    return _cached(wref, seed, val_fraction), None


@functools.lru_cache(maxsize=8)
def _cached(wref: WorkloadRef, seed: int, val_fraction: float) -> Dataset:
    if wref.kind == "builtin":
        x, y, shape = _builtin(wref.ref)
        return _split(wref.ref, x, y, seed=seed, val_fraction=val_fraction, image_shape=shape)
    if wref.kind == "npz":
        x, y = _npz(Path(wref.ref))
    else:
        x, y = _csv(Path(wref.ref), wref.target or "")
    return _split(wref.ref, x, y, seed=seed, val_fraction=val_fraction)


def split_callable_output(ref: str, out: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """A user callable returns (model, X, y), or (X, y) to let tuner build the MLP."""
    if isinstance(out, dict):
        out = (out.get("model"), out.get("X"), out.get("y"))
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise WorkloadError(f"workload {ref} must return (model, X, y) or (X, y) of arrays, or (model, train_dataset, val_dataset) of torch Datasets, got {type(out).__name__}")
    model, x, y = (None, *out) if len(out) == 2 else out
    return _model(ref, model), np.asarray(_numpy(x)), np.asarray(_numpy(y))


def _model(ref: str, model: Any) -> Any:
    if model is not None:
        from torch import nn

        if not isinstance(model, nn.Module):
            raise WorkloadError(f"workload {ref} returned a {type(model).__name__} as its model; return a torch.nn.Module (or None for tuner's)")
    return model


def _torch_datasets(out: Any) -> bool:
    """(model, train_dataset, val_dataset) with torch Datasets, rather than arrays."""
    if not isinstance(out, tuple) or len(out) != 3 or "torch" not in sys.modules:
        return False
    from torch.utils.data import Dataset as TorchDataset

    return isinstance(out[1], TorchDataset) and isinstance(out[2], TorchDataset)


def torch_data(ref: str, train_set: Any, val_set: Any, *, count_classes: bool) -> TorchData:
    """What tuner needs to know of the user's datasets, read from their first sample: the input's
    size and shape and, from its target, the task. Classes are counted (a pass over the targets)
    only where tuner builds the model: a `targets` attribute (torchvision's) spares the pass."""
    import torch

    for name, ds in (("training", train_set), ("validation", val_set)):
        try:
            n = len(ds)
        except TypeError:
            raise WorkloadError(f"workload {ref}: its {name} dataset has no len(); return map-style torch Datasets") from None
        if n == 0:
            raise WorkloadError(f"workload {ref}: its {name} dataset is empty")
    try:
        x, y = train_set[0][:2]
    except Exception as e:
        raise WorkloadError(f"workload {ref}: its training dataset's first item is not (input, target): {e.__class__.__name__}: {e}") from None
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    task = "regression" if y.is_floating_point() else "classification"
    image_shape = tuple(int(d) for d in x.shape) if x.dim() == 3 else None
    n_classes = 0
    if task == "classification" and count_classes:
        labels = getattr(train_set, "targets", None)
        labels = torch.as_tensor(labels) if labels is not None else torch.as_tensor([int(train_set[i][1]) for i in range(len(train_set))])
        n_classes = int(labels.max()) + 1
        if n_classes < 2:
            raise WorkloadError(f"workload {ref}: the training targets hold a single class; nothing to learn")
    return TorchData(ref, train_set, val_set, task, n_classes, int(x.numel()), image_shape)  # type: ignore[arg-type]


def _numpy(a: Any) -> Any:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else a


def _builtin(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int] | None]:
    from sklearn import datasets

    if name == "digits":
        d = datasets.load_digits()
        return d.data, d.target, (1, 8, 8)
    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}[name]
    d = loader()
    return d.data, d.target, None


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise WorkloadError(f"workload {path}: file not found")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # an .npy array saved under an .npz name
            raise WorkloadError(f"workload {path}: holds a single array, not X and y (save with np.savez(path, X=..., y=...))")
        with f:
            missing = [k for k in ("X", "y") if k not in f.files]
            if missing:
                raise WorkloadError(f"workload {path}: no array '{missing[0]}'; it has {', '.join(f.files) or 'none'} (save with np.savez(path, X=..., y=...))")
            return f["X"], f["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # BadZipFile: truncated or not a zip
        raise WorkloadError(f"workload {path}: not a readable .npz file ({e})") from None


def _csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise WorkloadError(f"workload {path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: drop the BOM spreadsheets write
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise WorkloadError(f"workload {path}: cannot read it as CSV ({e})") from None
    if not rows:
        raise WorkloadError(f"workload {path}: the file is empty")
    header = [h.strip() for h in rows[0]]
    body = [(line, r) for line, r in enumerate(rows[1:], start=2) if r]  # blank lines skipped, numbers kept
    if target not in header:
        raise WorkloadError(f"workload {path}: no column '{target}' for --target; columns: {', '.join(header)}")
    if len(body) < 10:
        raise WorkloadError(f"workload {path}: {len(body)} data rows; at least 10 are needed to hold out a validation split")
    t = header.index(target)
    features, labels = [], []
    for line, row in body:
        if len(row) != len(header):
            raise WorkloadError(f"workload {path}: line {line} has {len(row)} fields, the header has {len(header)}")
        labels.append(row[t].strip())
        try:
            features.append([float(v) for i, v in enumerate(row) if i != t])
        except ValueError:
            col = next(header[i] for i, v in enumerate(row) if i != t and not _is_float(v))
            raise WorkloadError(f"workload {path}: line {line}, column '{col}' is not a number: {row[header.index(col)]!r}") from None
    return np.asarray(features, dtype=np.float64), np.asarray(labels)


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _targets(name: str, y: np.ndarray) -> tuple[np.ndarray, str, int]:
    """Classes as 0..K-1 when the target is text or a small set of integers; otherwise a regression."""
    y = np.asarray(y).reshape(len(y), -1)
    if y.shape[1] != 1:
        raise WorkloadError(f"workload {name}: y must be one column, got shape {y.shape}")
    y = y[:, 0]
    try:
        numeric = y.astype(np.float64)
    except ValueError:
        numeric = None
    if numeric is not None and not np.all(np.isfinite(numeric)):
        raise WorkloadError(f"workload {name}: the target has NaN or infinite values")
    if numeric is None or (np.all(numeric == np.round(numeric)) and len(np.unique(numeric)) <= _MAX_CLASSES):
        classes, codes = np.unique(y if numeric is None else numeric, return_inverse=True)
        if len(classes) < 2:
            raise WorkloadError(f"workload {name}: the target has a single class ({classes[0]!r}); nothing to learn")
        return codes.astype(np.int64), "classification", len(classes)
    return numeric.astype(np.float32), "regression", 0


def _split(
    name: str, x: Any, y: Any, *, seed: int, val_fraction: float, image_shape: tuple[int, int, int] | None = None
) -> Dataset:
    from sklearn.model_selection import train_test_split

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 and image_shape is None and x.ndim == 4:
        image_shape = tuple(x.shape[1:])  # (N, C, H, W) images from a user
    x = x.reshape(len(x), -1)
    if len(x) != len(y):
        raise WorkloadError(f"workload {name}: X has {len(x)} rows but y has {len(y)}")
    if not np.all(np.isfinite(x)):
        raise WorkloadError(f"workload {name}: X has NaN or infinite values; impute or drop them first")
    if not 0.0 < val_fraction < 1.0:
        raise WorkloadError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    n_val = math.ceil(val_fraction * len(x))  # as train_test_split rounds it
    if n_val >= len(x):
        raise WorkloadError(f"workload {name}: {len(x)} rows leave none to train on after holding out {val_fraction} for validation")
    targets, task, n_classes = _targets(name, y)
    # stratify only where both splits can hold every class, else train_test_split refuses
    feasible = task == "classification" and np.bincount(targets).min() >= 2 and min(n_val, len(x) - n_val) >= n_classes
    stratify = targets if feasible else None
    x_tr, x_va, y_tr, y_va = train_test_split(
        x, targets, test_size=val_fraction, random_state=seed, stratify=stratify
    )
    return Dataset(name, x_tr, y_tr, x_va, y_va, task, n_classes, image_shape)
