"""`tuner launch ...`: workers of one study started by a cluster's scheduler (Slurm, Kubernetes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tuner.cli.common import Format, FormatOpt, StorageOpt, console, print_json
from tuner.launch.k8s import DEFAULT_IMAGE, DEFAULT_SECRET
from tuner.urls import mask, resolve_url

app = typer.Typer(help="Start workers of a study on a cluster: a Slurm job array or a Kubernetes Job.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The study the workers join (create it first: `tuner study create`).")]
WorkersOpt = Annotated[int, typer.Option("--workers", metavar="N", min=1, help="Workers to start, one per array task or pod.")]
GpusOpt = Annotated[int, typer.Option("--gpus-per-worker", metavar="G", min=0, help="GPUs each worker gets; with any, it trains on cuda.")]
CpusOpt = Annotated[int, typer.Option("--cpus-per-worker", metavar="C", min=1, help="CPUs each worker gets, and its torch threads.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what would be submitted; submit nothing.")]


@app.command()
def slurm(
    name: NameArg,
    workers: WorkersOpt,
    gpus_per_worker: GpusOpt = 0,
    cpus_per_worker: CpusOpt = 1,
    partition: Annotated[Optional[str], typer.Option("--partition", metavar="P", help="Slurm partition \\[default: the cluster's].")] = None,
    time: Annotated[Optional[str], typer.Option("--time", metavar="T", help="Each task's time limit, e.g. 2:00:00 \\[default: the partition's].")] = None,
    sbatch_arg: Annotated[
        Optional[list[str]], typer.Option("--sbatch-arg", metavar="ARG", help="One more sbatch option, e.g. --sbatch-arg=--account=proj (repeatable).")
    ] = None,
    dry_run: DryRunOpt = False,
    storage: StorageOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Submit one Slurm job array: each task runs `tuner worker NAME` (the storage must be PostgreSQL)."""
    from tuner.launch import slurm as launch

    url = resolve_url(storage)
    array = launch.SlurmArray(
        study=name, n_workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
        partition=partition, time=time, sbatch_args=tuple(sbatch_arg or ()),
    )
    if dry_run:
        launch.check_storage(url)
        typer.echo(launch.batch_script(array), nl=False)
        return
    job_id = launch.submit(array, storage_url=url)
    tasks = [f"{job_id}_{i}" for i in range(workers)]
    if fmt == Format.json:
        print_json({"job_id": job_id, "tasks": tasks, "study": name, "storage": mask(url)})
        return
    console.print(f"submitted Slurm job array {job_id}: {workers} workers of study '{name}' (tasks {tasks[0]} to {tasks[-1]}) on {mask(url)}", markup=False)
    console.print(f"watch: squeue -j {job_id}; stop one: scancel {tasks[-1]}; stop all: scancel {job_id}; progress: tuner study show {name}", markup=False)


@app.command()
def k8s(
    name: NameArg,
    workers: WorkersOpt,
    image: Annotated[str, typer.Option("--image", metavar="IMG", help="Container image with tuner (and your code) installed.")] = DEFAULT_IMAGE,
    gpus_per_worker: GpusOpt = 0,
    cpus_per_worker: CpusOpt = 1,
    secret: Annotated[str, typer.Option("--secret", metavar="NAME", help="The Secret whose key `url` holds the storage URL.")] = DEFAULT_SECRET,
    namespace: Annotated[Optional[str], typer.Option("--namespace", metavar="NS", help="Namespace \\[default: kubectl's current one].")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", metavar="FILE", help="Where to write the manifest \\[default: out/tuner-NAME.yaml].")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the manifest (and write --out if given); apply nothing.")] = False,
    storage: Annotated[
        Optional[str],
        typer.Option(
            "--storage", metavar="URL", envvar="TUNER_STORAGE", show_envvar=True,
            help="The study's storage, if you give it: checked to be PostgreSQL, shown (password masked) in the Secret's command.",
        ),
    ] = None,
) -> None:
    """Write a Kubernetes Indexed Job whose pods each run `tuner worker NAME`; apply it where kubectl is."""
    from tuner.launch import k8s as launch

    job = launch.IndexedJob(
        study=name, n_workers=workers, image=image, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
        secret=secret, namespace=namespace,
    )
    if storage is not None:
        launch.check_storage(storage)
    if dry_run:
        if out is not None:
            launch.write_manifest(job, out)
        typer.echo(launch.manifest_yaml(job), nl=False)
        return
    path = launch.write_manifest(job, out or Path("out") / f"{job.job_name}.yaml")
    said = launch.apply(path)
    if said is None:
        first, then = launch.next_steps(job, path, storage_url=storage)
        masked = " (put its password in place of ***)" if storage and mask(storage) != storage else ""
        console.print(f"wrote {path}: Indexed Job {job.job_name}, {workers} workers of study '{name}'", markup=False)
        console.print(f"kubectl is not on PATH; where it is, create the Secret once{masked}, then the Job:", markup=False)
        console.print(f"  {first}\n  {then}", markup=False, highlight=False)
        return
    console.print(said, markup=False)
    ns = f" -n {namespace}" if namespace else ""
    console.print(f"watch: kubectl get pods{ns} -l job-name={job.job_name}; progress: tuner study show {name}; stop: kubectl delete -f {path}", markup=False)
