"""Workloads: what a study trains on (datasets) and with what (models)."""

from tuner.workloads.data import BUILTINS, Dataset, TorchData, WorkloadRef, load_workload, parse_workload

__all__ = ["BUILTINS", "Dataset", "TorchData", "WorkloadRef", "load_workload", "parse_workload"]
