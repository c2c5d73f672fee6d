"""tuner/attrs.py: a trial's kind of ending is read from what was recorded, never from wording;
trials stored before kinds were recorded are still read right."""

from __future__ import annotations

import pytest

from tuner import attrs as A


@pytest.mark.parametrize(
    "recorded, kind",
    [
        ({A.FAIL_REASON: "lost its worker: no heartbeat for 31s", A.FAIL_KIND: A.LOST_WORKER}, A.LOST_WORKER),
        ({A.FAIL_REASON: "interrupted by SIGTERM", A.FAIL_KIND: A.INTERRUPTED}, A.INTERRUPTED),
        ({A.FAIL_REASON: "lost-looking text from user code", A.FAIL_KIND: "RuntimeError"}, "RuntimeError"),  # the kind, not the words
        ({A.FAIL_REASON: "released by hand", A.FAIL_KIND: A.RELEASED}, A.RELEASED),
        ({}, A.LOST_WORKER),  # failed by Optuna's own stale check: nothing recorded
        ({A.FAIL_REASON: "lost its worker (no heartbeat for 30s)"}, A.LOST_WORKER),  # stored by an older tuner
        ({A.FAIL_REASON: "interrupted by SIGINT"}, A.INTERRUPTED),
        ({A.FAIL_REASON: "ValueError: bad shape"}, "ValueError"),
    ],
)
def test_a_failed_trials_kind(recorded, kind):
    assert A.fail_kind(recorded) == kind


@pytest.mark.parametrize(
    "recorded, kind",
    [
        ({A.PRUNED_REASON: "median pruner at epoch 2: val_accuracy=0.5", A.PRUNED_KIND: A.PRUNER}, A.PRUNER),
        ({A.PRUNED_REASON: "diverged: loss=nan at epoch 3", A.PRUNED_KIND: A.DIVERGED}, A.DIVERGED),
        ({A.PRUNED_REASON: "diverged: loss=inf at epoch 1"}, A.DIVERGED),  # stored by an older tuner
        ({A.PRUNED_REASON: "median pruner at epoch 2: val_accuracy=0.5"}, A.PRUNER),
    ],
)
def test_a_pruned_trials_kind(recorded, kind):
    assert A.pruned_kind(recorded) == kind


def test_trials_record_their_kind_of_ending(project):
    import optuna

    from tuner.spec import StudySpec
    from tuner.study import create_study, run_study, study_summary

    url = "sqlite:///studies/tuner.db"
    loaded = create_study(StudySpec(name="k", space="quick", workload="digits", pruner="median", trials=10, seed=1), url)
    run_study(loaded, device="cpu")
    trials = optuna.load_study(study_name="k", storage=url).trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(t.user_attrs[A.PRUNED_KIND] == A.PRUNER for t in pruned)
    summary = study_summary(loaded, url)
    assert sum(summary["pruned_reasons"].values()) == len(pruned)
