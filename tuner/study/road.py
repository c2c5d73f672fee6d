"""The worker loop's one road to a study's storage: count and claim, mark who runs a trial, tell
its end, and say what became of a trial another worker closed first. Two implementations: tuner's
write-behind storage (tuner.buffered), and Optuna's own storage, the fallback, through its public
API. The loop (run.py) asks `road_of(study)` once and never which storage it has; so do a
trial's durable and started (tuner.study.trial)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import attrs as A
from tuner._compat import optuna_paths
from tuner.buffered import BufferedStorage
from tuner.heartbeat import worker_identity
from tuner.storage import count_states

__all__ = ["Road", "road_of"]


class Road:
    """Optuna's own storage: counts by query, the worker recorded just after Study.ask, and
    Optuna's tell."""

    first_beat_written = False  # whether a claim writes the trial's first heartbeat itself

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.storage = study._storage

    def count(self, start_if: Callable[[Counter[TrialState]], bool]) -> Counter[TrialState]:
        """The study's trials by state (`start_if` says whether a trial would be started: a road
        that can create it within the count does so)."""
        return count_states(self.storage, self.study._study_id)

    def ask(self) -> optuna.Trial:
        trial = self.study.ask()
        trial.set_user_attr(A.WORKER, worker_identity())  # until then its start stands for a beat
        return trial

    def get(self, trial: optuna.Trial) -> FrozenTrial:
        return self.storage.get_trial(trial._trial_id)

    def durable(self, trial: optuna.Trial) -> None:
        """Make what the trial recorded so far durable (Optuna's storage writes each value at once)."""

    def started(self, trials: list[optuna.Trial]) -> None:
        """These claimed trials start training now (Optuna's storage keeps the claim's time)."""

    def adopt_orphans(self, held: list[optuna.Trial]) -> list[optuna.Trial]:
        """After a lost connection: the trials this worker claimed though the claim's answer never
        came (its commit landed, or the ask after it failed), asked again; none on Optuna's road,
        where such a trial turns stale and is queued again."""
        return []

    def reset(self) -> None:
        """A signal may have broken the connection's session mid-query: start a fresh one."""
        self.storage.remove_session()

    def tell(self, trial: optuna.Trial, value: float | list[float] | None = None, *, state: TrialState | None = None) -> FrozenTrial:
        return self.study.tell(trial, value, state=state)

    def closed_elsewhere(self, trial: optuna.Trial) -> FrozenTrial:
        """The trial as another worker (or a person) left it, when its tell found it finished."""
        return self.get(trial)

    def told_twice(self, trial: optuna.Trial) -> FrozenTrial | None:
        """Optuna's tell of a trial already failed raises ValueError: the trial as it stands if
        it is finished (someone closed it first), else None (the error is real)."""
        stored = self.get(trial)
        return stored if stored.state.is_finished() else None


class BufferedRoad(Road):
    """tuner's write-behind storage: a claim counts and creates the trial (with its worker and
    first beat) in one transaction, and a tell writes the trial whole."""

    first_beat_written = True

    def count(self, start_if: Callable[[Counter[TrialState]], bool]) -> Counter[TrialState]:
        return self.storage.claim(self.study._study_id, start_if)

    def ask(self) -> optuna.Trial:
        return self.study.ask()  # the claim recorded its worker

    def adopt_orphans(self, held: list[optuna.Trial]) -> list[optuna.Trial]:
        adopted = []
        for trial_id in self.storage.orphans(self.study._study_id, {t._trial_id for t in held}):
            self.storage.adopt(self.study._study_id, trial_id)
            adopted.append(self.ask())
        return adopted

    def durable(self, trial: optuna.Trial) -> None:
        self.storage.flush(trial._trial_id)

    def started(self, trials: list[optuna.Trial]) -> None:
        self.storage.set_started([t._trial_id for t in trials])

    def tell(self, trial: optuna.Trial, value: float | list[float] | None = None, *, state: TrialState | None = None) -> FrozenTrial:
        """Study.tell, less the deep copy of the finished trial it returns: this storage hands out
        a copy of its own (a deep copy of a trial's attributes costs ~0.2 ms)."""
        tell = optuna_paths().tell
        if tell is None:
            return self.study.tell(trial, value, state=state)
        tell(self.study, trial, value, state)
        return self.get(trial)

    def closed_elsewhere(self, trial: optuna.Trial) -> FrozenTrial:
        return self.storage.forget(trial._trial_id)

    def told_twice(self, trial: optuna.Trial) -> FrozenTrial | None:
        return None  # this storage raises UpdateFinishedTrialError for that, never ValueError


def road_of(study: optuna.Study) -> Road:
    return BufferedRoad(study) if isinstance(study._storage, BufferedStorage) else Road(study)
