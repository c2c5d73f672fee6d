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


def test_every_trial_attribute_key_is_named_in_attrs_py_alone():
    """Where tuner writes or reads a trial's attribute (record, set_user_attr, user_attrs,
    attrs.get/attrs[...]), the key is a name from tuner/attrs.py, never a bare string: one place
    to rename a key, and a reader and its writer cannot drift apart."""
    import re
    from pathlib import Path

    known = {v for k, v in vars(A).items() if k.isupper() and isinstance(v, str)}
    bare = re.compile(
        r"""(?:set_user_attr\(\s*|user_attrs(?:\.get\(|\[)|\battrs(?:\.get\(|\[)|record\([^,]+,\s*\{[^}]*?)["']([a-z_]+)["']"""
    )
    found = []
    for path in sorted(Path(A.__file__).parent.rglob("*.py")):
        if path.name == "attrs.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            found += [f"{path.name}:{number}: {key}" for key in bare.findall(line) if key in known]
    assert not found, found


def test_the_diagnostics_recorded_whole_are_named_in_attrs_py():
    import dataclasses

    from tuner.epochs import Diagnostics

    assert {f.name for f in dataclasses.fields(Diagnostics)} == {A.GRAD_NORM_FIRST, A.GRAD_NORM_LAST, A.VANISHING, A.EXPLODING, A.OVERFIT_GAP}


def test_every_epoch_figure_is_named_in_attrs_py():
    """A trial records its last epoch's figures (EpochResult.figures) under their own names: each
    must be a name of attrs.py, so that a figure added to EpochResult is named once, there."""
    from tuner.epochs import EpochResult

    known = {v for k, v in vars(A).items() if k.isupper() and isinstance(v, str)}
    figures = EpochResult(1, 0.5, 0.4, 0.9, 0.9, 0.01, 0.95, {}, 1234).figures()
    assert set(figures) <= known and {A.TRAIN_LOSS, A.VAL_LOSS, A.VAL_ACCURACY, A.TRAIN_ACCURACY, A.LR, A.PARAMS, A.TRAIN_SECONDS, A.LATENCY_MS, A.GRAD_NORM_FIRST, A.GRAD_NORM_LAST, A.GRAD_NORM_MIN, A.GRAD_NORM_MAX, A.DEAD_UNITS, A.DEAD_LAYER} == set(figures)
