"""Workers started by a cluster's scheduler, all joining one study through its PostgreSQL storage:
a Slurm job array (slurm.py) or a Kubernetes Indexed Job (k8s.py). Each is a value built from the
options, checked at construction, and the plain functions that submit or write it."""

from tuner.launch.k8s import IndexedJob
from tuner.launch.slurm import SlurmArray

__all__ = ["IndexedJob", "SlurmArray"]
