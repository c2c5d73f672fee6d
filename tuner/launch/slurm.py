"""`tuner launch slurm`: one Slurm job array whose tasks each run `tuner worker NAME`.

The study lives in PostgreSQL and each array task is one more worker of it, on whichever node
Slurm gives it; the database is where they meet (see tuner.workers). tuner submits with Slurm's
own sbatch and leaves the job to Slurm's tools: squeue to watch it, scancel to stop a task or
all of them. A task cancelled mid-trial closes its trial as failed and queues it again (SIGTERM);
one killed outright leaves it to the heartbeat, and another worker retries it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tuner.errors import LaunchError, SpecError
from tuner.launch.common import check_workers, last_line, require_postgresql

__all__ = ["SlurmArray", "batch_script", "check_storage", "submit"]

# sbatch options the launcher sets itself: one worker per array task, and the storage URL reaching
# the tasks through the environment. Given again by hand, they would silently undo both.
_RESERVED = ("--array", "-a", "--export", "--wrap")
_SUBMIT_TIMEOUT_S = 120  # sbatch waits for slurmctld; a controller that never answers is an error


@dataclass(frozen=True)
class SlurmArray:
    study: str  # the study every task joins as a worker
    n_workers: int  # array tasks, one `tuner worker` each
    gpus_per_worker: int = 0  # GPUs each task requests (--gres=gpu:G); with any, its worker trains on cuda
    cpus_per_worker: int = 1  # CPUs each task requests, and its worker's torch threads
    partition: str | None = None  # the Slurm partition; None: the cluster's default
    time: str | None = None  # each task's time limit in Slurm's forms (MM, HH:MM:SS, D-HH:MM); None: the partition's
    sbatch_args: tuple[str, ...] = ()  # more sbatch options (--account=..., --qos=...), on sbatch's command line
    # Compute nodes run the launching tuner's own Python, in the launch folder: a Slurm cluster
    # shares its home and project filesystems between login and compute nodes as a rule.
    python: str = field(default_factory=lambda: sys.executable)
    workdir: Path = field(default_factory=Path.cwd)

    def __post_init__(self) -> None:
        check_workers(self.study, n_workers=self.n_workers, gpus_per_worker=self.gpus_per_worker, cpus_per_worker=self.cpus_per_worker)
        for flag, value in (("--partition", self.partition), ("--time", self.time)):
            if value is not None and (not value or any(c.isspace() for c in value)):
                raise SpecError(f"{flag} {value!r} is not a Slurm value: it must be one word")
        for arg in self.sbatch_args:
            if "\n" in arg or "\r" in arg:
                raise SpecError(f"--sbatch-arg {arg!r} holds a line break; give each sbatch option as one --sbatch-arg")
            option = arg.split("=", 1)[0]
            if option in _RESERVED or (option.startswith("-a") and not option.startswith("--")):
                raise SpecError(
                    f"--sbatch-arg {arg!r}: tuner launch sets {option.split('=')[0]} itself (one worker per array task, "
                    "the storage URL in the environment); use --workers for the number of tasks"
                )

    @property
    def job_name(self) -> str:
        return f"tuner-{self.study}"


def batch_script(array: SlurmArray) -> str:
    """The batch script sbatch gets: the array's directives, then one worker per task. It holds
    no storage URL (see `submit`), so it can be printed, kept and read by anyone."""
    directives = [
        f"--job-name={array.job_name}",
        f"--array=0-{array.n_workers - 1}",
        "--ntasks=1",
        f"--cpus-per-task={array.cpus_per_worker}",
    ]
    if array.gpus_per_worker:
        directives.append(f"--gres=gpu:{array.gpus_per_worker}")
    if array.partition:
        directives.append(f"--partition={array.partition}")
    if array.time:
        directives.append(f"--time={array.time}")
    extra = f" {shlex.join(array.sbatch_args)}" if array.sbatch_args else ""
    worker = [
        array.python, "-m", "tuner", "worker", array.study,
        "--threads", str(array.cpus_per_worker),
        "--device", "cuda" if array.gpus_per_worker else "cpu",
    ]
    return "\n".join(
        [
            "#!/bin/bash",
            *(f"#SBATCH {d}" for d in directives),
            f"# tuner launch slurm: {array.n_workers} workers of study '{array.study}', one per array task.",
            f"# Submitted as: sbatch --parsable --export=ALL{extra} < this script, with TUNER_STORAGE in",
            "# sbatch's environment (the URL is in no file and on no command line). Slurm sets the",
            "# GPUs a task may see (CUDA_VISIBLE_DEVICES), so its worker's cuda is its own.",
            f"cd {shlex.quote(str(array.workdir))} || exit 1",
            # exec: the worker is the task's process, so scancel's SIGTERM reaches it directly
            # (it closes its trial and queues it again) and the task ends with its exit code
            f'exec {shlex.join(worker)} --worker-index "$SLURM_ARRAY_TASK_ID"',
            "",
        ]
    )


def check_storage(url: str) -> None:
    require_postgresql(url, launcher="slurm", where="each array task may run on another host")


def submit(array: SlurmArray, *, storage_url: str) -> str:
    """Submit the array with sbatch and return its job id. The study must exist (each task would
    fail on its own otherwise). The storage URL, which may hold a password, travels in sbatch's
    environment, passed on to every task by --export=ALL: a command line is public (ps shows it
    to every user of the host), the script is stored with the job (`scontrol write batch_script`),
    while a process's environment is readable only by its owner and root. --export=ALL is on
    sbatch's command line, where no SBATCH_EXPORT setting can override it."""
    check_storage(storage_url)
    from tuner.study import open_study

    open_study(array.study, storage_url)  # a missing study or an unreachable server: one line now, not N later
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LaunchError("sbatch is not on PATH: run tuner launch slurm on a Slurm login node (--dry-run prints the batch script)")
    command = [sbatch, "--parsable", "--export=ALL", *array.sbatch_args]
    try:
        result = subprocess.run(
            command, input=batch_script(array), env={**os.environ, "TUNER_STORAGE": storage_url}, cwd=array.workdir,
            capture_output=True, text=True, timeout=_SUBMIT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"sbatch did not answer in {_SUBMIT_TIMEOUT_S}s; is the Slurm controller up? (scontrol ping)") from None
    if result.returncode != 0:
        raise LaunchError(f"sbatch refused the job array: {last_line(result)}")
    job_id = result.stdout.strip().split(";")[0]  # --parsable: JOBID or JOBID;CLUSTER
    if not job_id.isdigit():
        raise LaunchError(f"sbatch printed no job id, but {result.stdout.strip()!r}")
    return job_id
