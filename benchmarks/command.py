"""Command trials: what tuner adds to a training script it runs as a trial (`--command`), against
running the same script by hand, one run after another, with the same arguments and seeds."""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Bench, quiet
from tuner.errors import TunerError

__all__ = ["EXAMPLE", "measure_command"]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits_cnn" / "train.py"
EPOCHS = 3  # a short run, so that what tuner adds is a visible share of it


def measure_command(bench: Bench) -> dict[str, Any]:
    """Seconds per run of examples/digits_cnn/train.py by hand (subprocess.run, its output read)
    and as a trial of a one-worker SQLite study (no pruning), repeats alternating the two."""
    from tuner.spec import StudySpec
    from tuner.study import create_study, run_study

    if not EXAMPLE.is_file():
        raise TunerError(f"bench command: {EXAMPLE} not found; run `tuner bench` from a checkout of tuner's repository")
    settings = bench.settings
    quiet()
    n = settings.n_command
    threads = settings.threads
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        space = Path(tmp) / "command.yaml"
        space.write_text(f"params:\n  epochs: {EPOCHS}\n")
        template = f"{shlex.quote(sys.executable)} {shlex.quote(str(EXAMPLE))} --epochs {{epochs}} --seed {{seed}}"
        for r in range(settings.repeats):
            seed0 = settings.seed + r * n
            started = time.perf_counter()
            for i in range(n):
                argv = shlex.split(template.replace("{epochs}", str(EPOCHS)).replace("{seed}", str(seed0 + i)))
                subprocess.run(argv, env=env, capture_output=True, check=True)
            by_hand = (time.perf_counter() - started) / n
            spec = StudySpec(name="bench-command", space=str(space), sampler="random", pruner="none", seed=seed0, trials=n, command=template, metric="val_accuracy")
            loaded = create_study(spec, f"sqlite:///{Path(tmp) / f'command-{r}.db'}")
            started = time.perf_counter()
            result = run_study(loaded, device="cpu", threads=threads)
            as_trial = (time.perf_counter() - started) / n
            if result.n_complete != n:
                raise TunerError(f"bench command: {result.n_complete} of {n} command trials completed ({'; '.join(result.failures) or 'no reason recorded'})")
            runs.append({"by_hand_s": by_hand, "as_trial_s": as_trial})
            bench.log(f"command ({r + 1}/{settings.repeats}): by hand {by_hand:.2f} s, as a trial {as_trial:.2f} s")
    by_hand = statistics.median(r["by_hand_s"] for r in runs)
    as_trial = statistics.median(r["as_trial_s"] for r in runs)
    return {
        "how": (
            f"examples/digits_cnn/train.py --epochs {EPOCHS}, {n} runs one after another, by hand (subprocess.run) and as the "
            f"trials of a one-worker SQLite study with --command (no pruning), {threads} thread(s) each; seconds per run, "
            "medians over the repeats"
        ),
        "n_runs": n,
        "by_hand_s": by_hand,
        "as_trial_s": as_trial,
        "overhead_ms": 1000 * (as_trial - by_hand),
        "ratio": as_trial / by_hand,
    }
