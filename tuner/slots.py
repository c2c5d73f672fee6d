"""A GPU slot pool on one host: which GPUs (--gpus), how many workers each (--per-gpu), and the
slot every local worker is pinned to through CUDA_VISIBLE_DEVICES.

Pinning is an environment variable, so a worker sees its GPU as cuda:0 and nothing else, and
the ids need no GPU to be checked: `--gpus 0,1 --device cpu` pins CPU workers the same way.
Light on purpose (no torch): the CLI checks the options before anything heavy loads.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

from tuner.errors import SpecError

__all__ = ["DEFAULT_MAX_RESTARTS", "Slot", "describe_death", "describe_exit", "parse_gpus", "plan_slots", "visible_gpus"]

DEFAULT_MAX_RESTARTS = 3  # replacements of dead workers in one run, all slots together

_GPUS_FORMS = "--gpus all, a range --gpus 0-7, or a list --gpus 0,2,5"


@dataclass(frozen=True)
class Slot:
    """Where one local worker runs: its place in the pool and its GPU (None: no pinning)."""

    index: int
    gpu: str | None


def visible_gpus() -> list[str]:
    """The GPUs `--gpus all` means: CUDA_VISIBLE_DEVICES where it is set (a scheduler's share of
    the host, perhaps empty), else the GPUs `nvidia-smi -L` lists, else those torch counts."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            listing = None
        if listing is not None and listing.returncode == 0:
            return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU ")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def parse_gpus(text: str) -> list[str]:
    """`all`, a range `0-7`, a list `0,2,5`, or both `0-3,6`: the GPU ids, in order, each once."""
    raw = text.strip()
    if raw.lower() == "all":
        found = visible_gpus()
        if not found:
            where = "CUDA_VISIBLE_DEVICES is empty" if os.environ.get("CUDA_VISIBLE_DEVICES") is not None else "nvidia-smi and torch see none"
            raise SpecError(f"--gpus all: no GPU on this host ({where}); give ids (--gpus 0,1) to pin workers anyway, or drop --gpus")
        return found
    gpus: list[str] = []
    for part in raw.split(","):
        low, dash, high = part.strip().partition("-")
        if not (low.isdigit() and (not dash or high.isdigit())):
            raise SpecError(f"--gpus {text!r}: {part.strip()!r} is not a GPU id or a range of them; use {_GPUS_FORMS}")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise SpecError(f"--gpus {text!r}: the range {part.strip()} runs backwards; write it low to high, e.g. --gpus {last}-{first}")
        for gpu in map(str, range(first, last + 1)):
            if gpu in gpus:
                raise SpecError(f"--gpus {text!r}: GPU {gpu} is given twice; give each GPU once and --per-gpu N for N workers on it")
            gpus.append(gpu)
    return gpus


def plan_slots(gpus: list[str] | None, *, per_gpu: int, n_workers: int | None) -> list[Slot]:
    """The slots the workers fill: `per_gpu` on each GPU, spread across the GPUs first (with fewer
    workers than slots, each GPU gets its share); without GPUs, `n_workers` plain slots."""
    if per_gpu < 1:
        raise SpecError(f"--per-gpu {per_gpu}: each GPU needs at least one worker; use --per-gpu 1 or more")
    if gpus is None:
        if per_gpu != 1:
            raise SpecError(f"--per-gpu {per_gpu} needs --gpus: say which GPUs, e.g. --gpus all --per-gpu {per_gpu}")
        return [Slot(i, None) for i in range(n_workers or 1)]
    slots = [gpu for _ in range(per_gpu) for gpu in gpus]
    if n_workers is not None and n_workers > len(slots):
        raise SpecError(
            f"--workers {n_workers} is more than the {len(slots)} slots of {len(gpus)} GPU(s) x --per-gpu {per_gpu}; "
            f"raise --per-gpu to {-(-n_workers // len(gpus))} or drop --workers (it defaults to the slots)"
        )
    return [Slot(i, gpu) for i, gpu in enumerate(slots[: n_workers or len(slots)])]


def describe_exit(returncode: int) -> str:
    """How a worker process ended, as people say it: `killed by SIGKILL`, `exit code 1`."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def describe_death(death: dict[str, Any]) -> str:
    """One death in one phrase: `worker pid 123 on GPU 1 killed by SIGKILL (last stderr: ...)`."""
    where = f" on GPU {death['gpu']}" if death.get("gpu") is not None else f" in slot {death['slot']}"
    last = f" (last stderr: {death['last_stderr']})" if death.get("last_stderr") else ""
    return f"worker pid {death['pid']}{where} {death['exit']}{last}"
