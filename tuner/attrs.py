"""What tuner records on a trial (its user attributes): each name written once, here.

A trial that did not complete says why twice: a reason for people (FAIL_REASON, PRUNED_REASON)
and a kind for programs (FAIL_KIND, PRUNED_KIND). Summaries, reports and tables group by the
kind, never by the wording of a reason; trials stored before kinds were recorded are read by the
start of their reason, in `fail_kind` and `pruned_kind` alone.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DIVERGED",
    "EPOCHS_RUN",
    "FAIL_KIND",
    "FAIL_REASON",
    "HISTORY",
    "COMMAND",
    "LOG_ARTIFACT",
    "INTERRUPTED",
    "LOST_WORKER",
    "NON_FINITE",
    "NO_METRIC",
    "EXIT_CODE",
    "EXIT_STATUS",
    "TRIAL_DIR",
    "TRIAL_FILES",
    "TIMED_OUT",
    "PRUNED_KIND",
    "PRUNED_REASON",
    "PRUNER",
    "RELEASED",
    "RETRY_COUNT",
    "RETRY_OF",
    "RETRY_REASON",
    "RETRY_ROOT",
    "SEED",
    "DEVICE",
    "CWD",
    "THREADS",
    "DURATION_S",
    "VALUE_FROM",
    "BEST_EPOCH",
    "STOPPED",
    "TRAIN_LOSS",
    "VAL_LOSS",
    "VAL_ACCURACY",
    "TRAIN_ACCURACY",
    "GRAD_NORMS",
    "LR",
    "PARAMS",
    "TRAIN_SECONDS",
    "LATENCY_MS",
    "VECTORS",
    "GRAD_NORM_MIN",
    "GRAD_NORM_MAX",
    "DEAD_UNITS",
    "DEAD_LAYER",
    "HEALTH",
    "VIOLATED",
    "GRAD_NORM_FIRST",
    "GRAD_NORM_LAST",
    "VANISHING",
    "EXPLODING",
    "OVERFIT_GAP",
    "LOG_ERROR",
    "FILES_NOT_LISTED",
    "WORKER",
    "fail_kind",
    "fail_reason",
    "pruned_kind",
]

FAIL_REASON = "fail_reason"  # why a failed trial failed, for people
FAIL_KIND = "fail_kind"  # LOST_WORKER, INTERRUPTED, RELEASED, NON_FINITE, TIMED_OUT, EXIT_CODE, NO_METRIC, or the exception's class name
COMMAND = "command"  # a command trial's command line, as run
LOG_ARTIFACT = "log_artifact"  # the artifact id of a command trial's stdout and stderr
EXIT_STATUS = "exit_status"  # a command trial's exit status (negative: killed by that signal)
TRIAL_DIR = "trial_dir"  # a command trial's own folder for its outputs ({trial_dir})
TRIAL_FILES = "files"  # what the trial left in its folder: [{"path", "bytes", "artifact"}]
PRUNED_REASON = "pruned_reason"  # why a pruned trial was pruned, for people
PRUNED_KIND = "pruned_kind"  # PRUNER or DIVERGED
EPOCHS_RUN = "epochs_run"  # epochs trained before the trial ended
HISTORY = "history"  # per-epoch curves: {"epoch": [...], "train_loss": [...], ...}
RETRY_OF = "retry_of"  # on a queued copy: the number of the trial it repeats
SPEC_ATTR = "tuner.spec"  # on a study: its spec (tuner.spec.StudySpec.as_dict)
SPACE_ATTR = "tuner.space"  # on a study: its search space, whole
WARM_START = "warm_start"  # on a trial queued by --warm-start: {"study", "trial", "value", "changes"}; on its study: {"study", "storage", "queued", "skipped"}
RETRY_ROOT = "retry_root"  # the first trial of the chain of copies
RETRY_COUNT = "retry_count"  # how many times the configuration has been queued again
RETRY_REASON = "retry_reason"  # why the trial it repeats ended
PACK = "pack"  # a packed trial: the numbers of the trials it trained beside (tuner.packing)
SEED = "seed"  # the trial's seed: the study's seed plus its number
DEVICE = "device"  # where it trained
CWD = "cwd"  # a command trial's working folder
THREADS = "threads"  # a command trial's OMP_NUM_THREADS
DURATION_S = "duration_s"  # seconds its training (or command) took
VALUE_FROM = "value_from"  # how a command trial's value was chosen among its reports
BEST_EPOCH = "best_epoch"  # the epoch whose metric is the trial's value
STOPPED = "stopped"  # completed | early_stopping
TRAIN_LOSS = "train_loss"  # at the last epoch
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
TRAIN_ACCURACY = "train_accuracy"
GRAD_NORMS = "grad_norms"  # per layer, at the last epoch
LR = "lr"  # the learning rate in force in the last epoch
PARAMS = "params"  # the model's trainable parameters
TRAIN_SECONDS = "train_seconds"  # seconds of training and evaluation (a packed trial's: its share of each epoch)
LATENCY_MS = "latency_ms"  # milliseconds of a forward pass on one validation batch (tuner.epochs.forward_latency_ms)
GRAD_NORM_MIN = "grad_norm_min"  # per epoch: the smallest layer's gradient norm
GRAD_NORM_MAX = "grad_norm_max"  # per epoch: the largest
DEAD_UNITS = "dead_units"  # per epoch: the largest share of a ReLU-family layer's units never active on a validation batch
DEAD_LAYER = "dead_layer"  # which hidden layer that is (1: the first)
HEALTH = "health"  # the trial's verdict (tuner.health): {"verdict", "evidence", "fix"}
VERDICT = "verdict"  # the same in one line of words, as optuna-dashboard shows a trial's attributes: "stalled: ...; fix"
VECTORS = "intermediate_vectors"  # with several metrics: {step: [each metric's value]}, what the pareto pruner compares
VIOLATED = "violated"  # the constraints an infeasible trial missed, as written: ["params<=20000"]
# the diagnostics (tuner.epochs.Diagnostics, whose fields are these names)
GRAD_NORM_FIRST = "grad_norm_first"
GRAD_NORM_LAST = "grad_norm_last"
VANISHING = "vanishing_gradients"
EXPLODING = "exploding_gradients"
OVERFIT_GAP = "overfit_gap"
LOG_ERROR = "log_error"  # why a command trial's log or files could not be attached
FILES_NOT_LISTED = "files_not_listed"  # files of its folder beyond those listed
WORKER = "worker"  # the process that claimed the trial: {"host", "pid", "proc"; "gpu" when pinned, "slurm" in a Slurm job} (tuner.heartbeat)

# kinds of failure
LOST_WORKER = "lost worker"  # its worker stopped beating, or its process is gone
INTERRUPTED = "interrupted"  # SIGINT or SIGTERM closed it
RELEASED = "released"  # a person released it (tuner study release)
NON_FINITE = "non-finite value"  # the objective returned NaN or an infinity
TIMED_OUT = "timed out"  # a command trial ran past --trial-timeout
EXIT_CODE = "exit code"  # a command trial's process exited non-zero (or was killed by a signal)
NO_METRIC = "no metric"  # a command trial ended without reporting the study's metric
# kinds of pruning
PRUNER = "pruner"  # the study's pruner stopped it
DIVERGED = "diverged"  # its loss became NaN or infinite


def fail_reason(attrs: dict[str, Any]) -> str:
    """Why a failed trial failed: what tuner recorded, or (nothing recorded) its worker was lost
    (a trial failed by Optuna's own stale check records nothing)."""
    return str(attrs.get(FAIL_REASON) or "lost its worker: no heartbeat within the grace period")


def fail_kind(attrs: dict[str, Any]) -> str:
    kind = attrs.get(FAIL_KIND)
    if kind:
        return str(kind)
    reason = fail_reason(attrs)  # stored before kinds were: the start of the reason tells
    if reason.startswith("lost"):
        return LOST_WORKER
    if reason.startswith("interrupted"):
        return INTERRUPTED
    return reason.split(":")[0]


def pruned_kind(attrs: dict[str, Any]) -> str:
    kind = attrs.get(PRUNED_KIND)
    if kind:
        return str(kind)
    return DIVERGED if str(attrs.get(PRUNED_REASON, "")).startswith("diverged") else PRUNER
