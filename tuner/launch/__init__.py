"""Workers started by a cluster's scheduler, all joining one study through its PostgreSQL storage:
a Slurm job array (slurm.py). Each is a value built from the options, checked at construction,
and the plain functions that submit it."""

from tuner.launch.slurm import SlurmArray

__all__ = ["SlurmArray"]
