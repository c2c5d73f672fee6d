"""Studies: create and open them (store), run a worker on one (run), join a trial to the training
loop (objective), free trials whose worker is gone (lost), and read the results (results).

A command flows store -> run -> objective -> tuner.train, with lost and results beside; each module
imports only those before it. Everything a caller needs is re-exported here.
"""

from tuner.study.store import (
    SPACE_ATTR,
    SPEC_ATTR,
    Loaded,
    check_code,
    check_data,
    check_workload,
    create_study,
    delete_study,
    open_study,
    prepare_run,
    quiet_optuna,
    reconcile,
    set_budget,
    study_exists,
)
from tuner.study.lost import fail_lost, lost_reason, release_trials, requeue, running_trials
from tuner.study.objective import make_objective, trial_workload
from tuner.study.results import best_trial, export_trials, front, front_summary, fail_reason, list_studies, n_trials, reproduce_command, study_summary, trial_dict, trial_rows, trials_numbered
from tuner.study.run import (
    FINISHED,
    Interrupted,
    RunResult,
    Stop,
    run_study,
    set_threads,
    signals_interrupt,
    summarize,
)

__all__ = [
    "FINISHED",
    "SPACE_ATTR",
    "SPEC_ATTR",
    "Interrupted",
    "Loaded",
    "RunResult",
    "Stop",
    "best_trial",
    "front",
    "front_summary",
    "check_code",
    "check_data",
    "check_workload",
    "create_study",
    "delete_study",
    "export_trials",
    "fail_lost",
    "fail_reason",
    "list_studies",
    "lost_reason",
    "make_objective",
    "open_study",
    "prepare_run",
    "quiet_optuna",
    "reconcile",
    "release_trials",
    "reproduce_command",
    "requeue",
    "run_study",
    "running_trials",
    "set_budget",
    "set_threads",
    "signals_interrupt",
    "study_exists",
    "study_summary",
    "summarize",
    "trial_dict",
    "n_trials",
    "trial_rows",
    "trials_numbered",
    "trial_workload",
]
