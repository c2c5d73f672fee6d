"""The whole bench: the sections in the order they run, and the document `tuner bench` writes."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import optuna

from benchmarks.command import measure_command
from benchmarks.common import REFERENCE_SPACE, Bench, BenchSettings, torch_threads
from benchmarks.growth import measure_growth
from benchmarks.health import measure_health
from benchmarks.overhead import POSTGRES_ADMIN, measure_overhead
from benchmarks.packing import measure_packing
from benchmarks.pareto import measure_pareto
from benchmarks.scale import measure_scale
from benchmarks.search import measure_search
from benchmarks.throughput import measure_throughput
from benchmarks.warm import measure_warm
from benchmarks.workers import measure_workers
from tuner.errors import TunerError
from tuner.space import SPACES_DIR

__all__ = ["PARTS", "SECTIONS", "machine_info", "run_bench", "skip_names"]

# Each section's name (its key in the document and its --skip name) and the function measuring it,
# in the order they run. A section is one module with a measure function, and one entry here.
SECTIONS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "throughput": measure_throughput,
    "overhead": measure_overhead,
    "growth": measure_growth,
    "search": measure_search,
    "workers": measure_workers,
    "command": measure_command,
    "packing": measure_packing,
    "pareto": measure_pareto,
    "health": measure_health,
    "warm": measure_warm,
    "scale": measure_scale,
}
# --skip names that leave out a part of a section rather than all of it: the part -> its section.
PARTS = {"postgres": "overhead"}  # the PostgreSQL halves of overhead and scale


def skip_names() -> tuple[str, ...]:
    """Every name --skip takes, each section followed by its parts."""
    return tuple(name for section in SECTIONS for name in (section, *(p for p, s in PARTS.items() if s == section)))


def machine_info(device: Any) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    name = torch.cuda.get_device_name(device) if getattr(device, "type", "") == "cuda" else "cpu"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average": _load_average(),  # other work on the machine skews every figure: note it
    }


def run_bench(
    settings: BenchSettings,
    *,
    device: str = "auto",
    skip: tuple[str, ...] = (),
    postgres: str = POSTGRES_ADMIN,
    spaces_dir: Path = SPACES_DIR,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every section not skipped, in order; the document `tuner bench` writes as JSON."""
    from tuner.train import resolve_device

    valid = skip_names()
    unknown = [s for s in skip if s not in valid]
    if unknown:
        raise TunerError(f"--skip {unknown[0]!r} is not a section; valid: {', '.join(valid)}")
    if not (spaces_dir / f"{REFERENCE_SPACE}.yaml").is_file():
        raise TunerError(f"{spaces_dir / REFERENCE_SPACE}.yaml not found: run `tuner bench` from the repository root, or pass --spaces-dir")
    torch_device = resolve_device(device)
    started = time.perf_counter()
    doc: dict[str, Any] = {"machine": machine_info(torch_device), "settings": dataclasses.asdict(settings), "skipped": list(skip)}
    bench = Bench(settings, torch_device, spaces_dir=spaces_dir, postgres=None if "postgres" in skip else postgres, log=log)
    seconds: dict[str, float] = {}
    with torch_threads(_current_threads()):  # run_study sets the process's threads; put them back after
        for name, measure in SECTIONS.items():
            if name in skip:
                continue
            section_started = time.perf_counter()
            doc[name] = measure(bench)
            seconds[name] = time.perf_counter() - section_started
    doc["machine"]["load_average_after"] = _load_average()
    doc["section_s"] = seconds
    doc["wall_s"] = time.perf_counter() - started
    return _finite(doc)


def _current_threads() -> int:
    import torch

    return torch.get_num_threads()


def _load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a figure that is not finite is written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
