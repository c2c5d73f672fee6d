"""Every name tuner takes from below torch's and Optuna's public APIs, resolved here and only here.

tuner's speed comes from a few shortcuts under its dependencies: torch's fused optimizer kernels
called directly (tuner.steps), Optuna's tables written with plain SQL (tuner.sql, tuner.buffered),
Study.tell without its final deep copy, Optuna's schema scripts read once a process. Each is a fast
path with a public road beside it. A fast path is on only when every name it needs resolves here
(and, for the SQL, Optuna's schema is the one tuner's statements were written for); otherwise it is
off, with the reason, and tuner takes the public road: torch.optim's own step, Optuna's own storage
calls, Study.tell. `tuner doctor` prints the record (`report()`); tests hide each name in turn and
check that the fallback gives the same result.

Optuna's names resolve at import (tuner imports Optuna for any study anyway); torch's on first use,
so that commands which never train do not pay for importing torch.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Callable

__all__ = [
    "SQL_SCHEMA",
    "FastPath",
    "fast_paths",
    "fused_ok",
    "optuna_paths",
    "report",
    "reresolve",
    "sql_ok",
    "sql_schema_ok",
    "torch_paths",
]

# The Optuna schema (alembic head) tuner's hand-written SQL was written and tested for.
SQL_SCHEMA = "v3.2.0.a"


@dataclass(frozen=True)
class FastPath:
    name: str  # what people call it
    on: bool
    detail: str  # on: what it uses; off: what is missing
    fallback: str  # what runs when it is off

    def line(self) -> str:
        """`on   name: what it uses` or `off  name: why -> fallback`."""
        return f"on   {self.name}: {self.detail}" if self.on else f"off  {self.name}: {self.detail} -> {self.fallback}"


def _lookup(module: str, path: str) -> Any:
    """`module`'s attribute `path` (dotted), or None if the module or any step is missing."""
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        return None
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _missing(names: dict[str, Any]) -> list[str]:
    return [name for name, value in names.items() if value is None]


# -- Optuna ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptunaPaths:
    tell: Callable[..., Any] | None  # Study.tell's body, without the deep copy of the trial it returns
    not_found_msg: str | None  # the KeyError text of a missing trial, as Optuna's storage says it
    value_repr: Callable[[float], Any] | None  # a trial value as Optuna stores it (value, kind)
    intermediate_repr: Callable[[float], Any] | None  # an intermediate value as Optuna stores it
    alembic_reader: type | None  # the class whose method reads the schema's migration scripts
    stale_query: Callable[..., Any] | None  # RDBStorage._get_stale_trial_ids: heartbeats without tuner's SQL

    @property
    def sql(self) -> bool:
        return None not in (self.not_found_msg, self.value_repr, self.intermediate_repr)


def _resolve_optuna() -> OptunaPaths:
    models = "optuna.storages._rdb.models"
    reader = _lookup("optuna.storages._rdb.storage", "_VersionManager")
    return OptunaPaths(
        tell=_lookup("optuna.study._tell", "_tell_with_warning"),
        not_found_msg=_lookup(models, "NOT_FOUND_MSG"),
        value_repr=_lookup(models, "TrialValueModel.value_to_stored_repr"),
        intermediate_repr=_lookup(models, "TrialIntermediateValueModel.intermediate_value_to_stored_repr"),
        alembic_reader=reader if reader is not None and hasattr(reader, "_create_alembic_script") else None,
        stale_query=_lookup("optuna.storages", "RDBStorage._get_stale_trial_ids"),
    )


_OPTUNA = _resolve_optuna()


def optuna_paths() -> OptunaPaths:
    return _OPTUNA


_SQL_OK: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def sql_ok(rdb: Any) -> bool:
    """sql_schema_ok's verdict, judged once per storage."""
    ok = _SQL_OK.get(rdb)
    if ok is None:
        ok = _SQL_OK[rdb] = sql_schema_ok(rdb)[0]
    return ok


def sql_schema_ok(rdb: Any) -> tuple[bool, str]:
    """Whether tuner's SQL may write this storage's tables: the names it needs resolved and the
    schema is the one it was written for. (False, why) otherwise."""
    paths = optuna_paths()
    if not paths.sql:
        missing = _missing({"NOT_FOUND_MSG": paths.not_found_msg, "TrialValueModel.value_to_stored_repr": paths.value_repr,
                            "TrialIntermediateValueModel.intermediate_value_to_stored_repr": paths.intermediate_repr})  # fmt: skip
        return False, f"optuna.storages._rdb.models lacks {', '.join(missing)}"
    try:
        head = rdb.get_head_version()
    except Exception as e:  # noqa: BLE001 - any failure to read it means: do not trust the schema
        return False, f"Optuna's schema version could not be read ({e.__class__.__name__})"
    if head != SQL_SCHEMA:
        return False, f"Optuna's schema is {head}; tuner's SQL was written for {SQL_SCHEMA}"
    return True, f"Optuna schema {SQL_SCHEMA}"


# -- torch ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchPaths:
    fused_adam: Callable[..., Any] | None
    fused_adamw: Callable[..., Any] | None
    fused_adagrad: Callable[..., Any] | None
    # the global step-hook registries (pre, post); with each optimizer's own, what skipping
    # step() must check is empty (None: they cannot be seen, so step() is never skipped)
    global_hooks: tuple[Any, Any] | None
    fused_classes: frozenset[str]  # torch.optim classes whose constructor takes fused=True
    hooks_missing: tuple[str, ...] = ()  # what kept global_hooks None, named in the fast path's reason

    @property
    def hooks_visible(self) -> bool:
        return self.global_hooks is not None


@functools.lru_cache(maxsize=1)
def torch_paths() -> TorchPaths:
    import torch

    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    own_names = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")
    global_names = ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")
    own = all(isinstance(getattr(probe, a, None), dict) for a in own_names)
    pre, post = (_lookup("torch.optim.optimizer", a) for a in global_names)
    missing = [f"torch.optim.Optimizer.{a}" for a in own_names if not own] + [
        f"torch.optim.optimizer.{a}" for a, v in zip(global_names, (pre, post)) if v is None
    ]
    fused = frozenset(
        name for name in ("Adam", "AdamW", "Adagrad") if "fused" in inspect.signature(getattr(torch.optim, name)).parameters
    )
    return TorchPaths(
        fused_adam=_lookup("torch", "_fused_adam_"),
        fused_adamw=_lookup("torch", "_fused_adamw_"),
        fused_adagrad=_lookup("torch", "_fused_adagrad_"),
        global_hooks=(pre, post) if own and pre is not None and post is not None else None,
        fused_classes=fused,
        hooks_missing=tuple(missing),
    )


@functools.lru_cache(maxsize=None)
def fused_ok(class_name: str, device_type: str) -> bool:
    """Whether torch.optim.`class_name`(fused=True) works for parameters on `device_type` (its
    signature may take `fused` while the device has no fused kernel, as on CPUs before torch 2.4)."""
    if class_name not in torch_paths().fused_classes:
        return False
    import torch

    try:
        param = torch.nn.Parameter(torch.zeros(2, device=device_type))
        getattr(torch.optim, class_name)([param], lr=0.1, fused=True)
    except Exception:  # noqa: BLE001 - whatever torch raises for an unsupported device, the answer is no
        return False
    return True


def reresolve() -> None:
    """Resolve every name again (after a dependency changed under a running process; tests)."""
    global _OPTUNA
    _OPTUNA = _resolve_optuna()
    torch_paths.cache_clear()
    fused_ok.cache_clear()
    _SQL_OK.clear()


# -- the record -----------------------------------------------------------------------------------


def fast_paths(*, rdb: Any = None, with_torch: bool = True) -> list[FastPath]:
    """Each fast path, on or off and why. `rdb`: a storage whose schema to check (else the
    SQL path is judged by the names alone)."""
    o = optuna_paths()
    out: list[FastPath] = []
    if rdb is not None:
        sql_on, sql_detail = sql_schema_ok(rdb)
    else:
        sql_on = o.sql
        sql_detail = f"optuna.storages._rdb.models; for schema {SQL_SCHEMA}" if sql_on else "optuna.storages._rdb.models has moved"
    out.append(FastPath("write-behind storage (plain SQL on Optuna's tables)", sql_on, sql_detail, "Optuna's RDB storage, one transaction per write"))
    out.append(FastPath("tell without a deep copy", o.tell is not None,
                        "optuna.study._tell._tell_with_warning" if o.tell else "optuna.study._tell._tell_with_warning is gone", "Study.tell"))  # fmt: skip
    out.append(FastPath("schema scripts read once a process", o.alembic_reader is not None,
                        "optuna.storages._rdb.storage._VersionManager._create_alembic_script" if o.alembic_reader else "_VersionManager has moved",
                        "Optuna reads them at every storage opened (~50 ms)"))  # fmt: skip
    out.append(FastPath("lost workers found without tuner's SQL", o.stale_query is not None,
                        "RDBStorage._get_stale_trial_ids (used only where tuner's SQL is off)" if o.stale_query else "RDBStorage._get_stale_trial_ids is gone",
                        "where tuner's SQL is off too: only workers of this host whose process is gone are found"))  # fmt: skip
    if with_torch:
        t = torch_paths()
        kernels = {"torch._fused_adam_": t.fused_adam, "torch._fused_adamw_": t.fused_adamw, "torch._fused_adagrad_": t.fused_adagrad}
        missing = _missing(kernels)
        if not t.hooks_visible:
            missing += list(t.hooks_missing) or ["torch.optim's step-hook registries"]
        detail = ", ".join(kernels) + " and torch.optim's step-hook registries" if not missing else "missing: " + ", ".join(missing)
        out.append(FastPath("direct optimizer steps", not missing, detail, "torch.optim's own step() for the optimizers affected"))
        cpu = sorted(name for name in ("Adam", "AdamW", "Adagrad") if fused_ok(name, "cpu"))
        out.append(FastPath("fused optimizers on the CPU", len(cpu) == 3, "fused=True for " + (", ".join(cpu) or "none"),
                            "the optimizers' default (foreach) implementation for the others"))  # fmt: skip
    return out


def report(*, rdb: Any = None, with_torch: bool = True) -> str:
    """The record, one line a fast path (FastPath.line)."""
    return "\n".join(p.line() for p in fast_paths(rdb=rdb, with_torch=with_torch))
