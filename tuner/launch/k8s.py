"""`tuner launch k8s`: a Kubernetes Indexed Job whose pods each run `tuner worker NAME`.

As with Slurm, the study lives in PostgreSQL and every pod is one more worker of it. The storage
URL comes from a Secret (key `url`) through the pod's environment, never from the manifest, so
the manifest can be kept in git and shown to anyone. tuner writes the manifest and, where
kubectl is installed, applies it with kubectl; Kubernetes' own tools do the rest.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuner import __version__
from tuner.atomic import atomic_path
from tuner.errors import LaunchError, SpecError
from tuner.launch.common import check_workers, last_line, require_postgresql

__all__ = ["DEFAULT_IMAGE", "DEFAULT_SECRET", "SECRET_KEY", "IndexedJob", "apply", "check_storage", "manifest", "manifest_yaml", "next_steps", "write_manifest"]

DEFAULT_IMAGE = f"tuner:{__version__}"  # an image with tuner (and your code) installed, `tuner` on its PATH
DEFAULT_SECRET = "tuner-storage"
SECRET_KEY = "url"  # the Secret's key holding the storage URL
_APPLY_TIMEOUT_S = 120
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # Kubernetes' names of namespaces, Jobs
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")  # of Secrets
_STUDY_ANNOTATION = "tuner/study"  # the study's exact name (a Job's name allows fewer characters)


@dataclass(frozen=True)
class IndexedJob:
    study: str  # the study every pod joins as a worker
    n_workers: int  # pods, all running at once: completions = parallelism
    image: str = DEFAULT_IMAGE  # the container image, with `tuner` on its PATH
    gpus_per_worker: int = 0  # nvidia.com/gpu each pod is limited to; with any, its worker trains on cuda
    cpus_per_worker: int = 1  # CPUs each pod requests, and its worker's torch threads
    secret: str = DEFAULT_SECRET  # the Secret whose key `url` holds the storage URL
    namespace: str | None = None  # None: kubectl's current namespace

    def __post_init__(self) -> None:
        check_workers(self.study, n_workers=self.n_workers, gpus_per_worker=self.gpus_per_worker, cpus_per_worker=self.cpus_per_worker)
        if not self.image or any(c.isspace() for c in self.image):
            raise SpecError(f"--image {self.image!r} is not an image reference; e.g. --image registry.example.com/tuner:0.1.0")
        if len(self.secret) > 253 or not _DNS_SUBDOMAIN.match(self.secret):
            raise SpecError(f"--secret {self.secret!r} is not a Kubernetes Secret name; use lower-case letters, digits, '-' and '.'")
        if self.namespace is not None and (len(self.namespace) > 63 or not _DNS_LABEL.match(self.namespace)):
            raise SpecError(f"--namespace {self.namespace!r} is not a Kubernetes namespace; use lower-case letters, digits and '-' (at most 63)")

    @property
    def job_name(self) -> str:
        """tuner-NAME, as a Job may be named: lower case, '-' for '_' and '.', at most 63
        characters (its pods carry it as a label); the exact name is in an annotation."""
        name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", self.study.lower())).strip("-")
        return f"tuner-{name}"[:63].rstrip("-")


def check_storage(url: str) -> None:
    require_postgresql(url, launcher="k8s", where="each pod may run on another node")


def manifest(job: IndexedJob) -> dict[str, Any]:
    """The Job as Kubernetes' API reads it (batch/v1)."""
    worker = [
        "tuner", "worker", job.study,
        # the Job controller sets JOB_COMPLETION_INDEX (0..N-1) in each pod; Kubernetes expands
        # $(NAME) in a container's command from its environment: each worker seeds its own sampler
        "--worker-index", "$(JOB_COMPLETION_INDEX)",
        "--threads", str(job.cpus_per_worker),
        "--device", "cuda" if job.gpus_per_worker else "cpu",
    ]
    resources: dict[str, Any] = {"requests": {"cpu": str(job.cpus_per_worker)}}
    if job.gpus_per_worker:
        # extended resources are given as limits (a request, if any, must equal the limit)
        resources["limits"] = {"nvidia.com/gpu": str(job.gpus_per_worker)}
    labels = {"app.kubernetes.io/name": "tuner", "app.kubernetes.io/component": "worker"}
    metadata: dict[str, Any] = {"name": job.job_name, "labels": labels, "annotations": {_STUDY_ANNOTATION: job.study}}
    if job.namespace:
        metadata["namespace"] = job.namespace
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "completionMode": "Indexed",
            "completions": job.n_workers,
            "parallelism": job.n_workers,
            # A pod is a worker, not a unit of work: the trials live in the database, and a pod
            # lost mid-trial leaves its trial to tuner's heartbeat, which fails it and queues it
            # again for any worker (tuner.study.lost). So the Job only has to keep N workers:
            # restartPolicy Never replaces a failed pod with a new one, on any node (OnFailure
            # would restart it on the same node, and cannot have a podFailurePolicy); pods
            # disrupted by the cluster (node drained or lost, preemption, eviction) are
            # replaced without counting against backoffLimit; other failures (a worker's error,
            # a container killed for memory) may happen once per worker on average before the
            # Job gives up (backoffLimit N) rather than never: a wrong Secret or a missing study
            # fails every pod. A usage error (exit 2: a flag the image's tuner does not know)
            # fails the Job at once, as no new pod can fix it.
            "backoffLimit": job.n_workers,
            "podFailurePolicy": {
                "rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}},
                ]
            },
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {_STUDY_ANNOTATION: job.study}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "worker",
                            "image": job.image,
                            "command": worker,
                            "env": [
                                {"name": "TUNER_STORAGE", "valueFrom": {"secretKeyRef": {"name": job.secret, "key": SECRET_KEY}}},
                                {"name": "PYTHONUNBUFFERED", "value": "1"},  # a trial's log line reaches `kubectl logs` when written
                            ],
                            "resources": resources,
                        }
                    ],
                },
            },
        },
    }


def manifest_yaml(job: IndexedJob) -> str:
    head = (
        f"# tuner launch k8s: {job.n_workers} workers of study '{job.study}', one per pod of an Indexed Job.\n"
        f"# The storage URL comes from Secret '{job.secret}' (key '{SECRET_KEY}'), not from this file.\n"
    )
    return head + yaml.safe_dump(manifest(job), sort_keys=False, default_flow_style=False)


def write_manifest(job: IndexedJob, path: Path) -> Path:
    with atomic_path(path, error=LaunchError, hint="; pass --out FILE elsewhere") as tmp:
        tmp.write_text(manifest_yaml(job))
    return path


def next_steps(job: IndexedJob, path: Path, *, storage_url: str | None) -> list[str]:
    """The commands that start the workers where kubectl is: the Secret, then the Job. The URL
    is shown with its password masked (a command line is kept in the shell's history)."""
    from tuner.urls import mask

    url = mask(storage_url) if storage_url else "postgresql+psycopg://USER:PASSWORD@HOST:5432/DB"
    ns = f" --namespace {job.namespace}" if job.namespace else ""
    return [
        f"kubectl create secret generic {job.secret}{ns} --from-literal={SECRET_KEY}={shlex.quote(url)}",
        f"kubectl apply -f {shlex.quote(str(path))}",
    ]


def apply(path: Path) -> str | None:
    """`kubectl apply -f FILE`, and what kubectl said; None where kubectl is not on PATH."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    try:
        result = subprocess.run([kubectl, "apply", "-f", str(path)], capture_output=True, text=True, timeout=_APPLY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"kubectl apply -f {path} did not answer in {_APPLY_TIMEOUT_S}s; is the cluster reachable? (kubectl cluster-info)") from None
    if result.returncode != 0:
        raise LaunchError(f"kubectl apply -f {path} failed: {last_line(result)} (the manifest is kept in {path})")
    said = result.stdout.strip()
    if said.endswith(" unchanged"):  # the same Job exists (perhaps finished): apply starts no pod
        raise LaunchError(f"{said}: a Job of that name exists, so no new worker starts; once it is done, `kubectl delete -f {path}` and launch again")
    return said
