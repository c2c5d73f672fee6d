"""An earlier study's trials as the sampler's prior (`--warm-start-as-prior STUDY`).

Instead of running the earlier study's best configurations again, the new study's sampler is
given its finished trials as observations: TPE and GP model them beside the study's own trials
from the first trial on. They do not count toward the budget and are not the new study's trials:
the sampler sees a view of the study that holds them (PriorSampler), nothing else does. They are
stored with the new study when it is created (mapped onto its space, as tuner.warmstart maps a
warm start), so every worker on every host builds the same sampler without the earlier database.
"""

from __future__ import annotations

import math
from typing import Any, Container, Sequence

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState, create_trial

from tuner.errors import SpecError
from tuner.samplers import MODELING_SAMPLERS, StudyView, ViewSampler

__all__ = ["PRIOR_ATTR", "PRIOR_SAMPLERS", "PriorSampler", "prior_record", "prior_trials"]

PRIOR_ATTR = "tuner:prior"  # on the study: {"study", "storage", "trials": [{"params", "values"}], "skipped"}
PRIOR_SAMPLERS = MODELING_SAMPLERS  # random, qmc and grid ignore finished trials; nsga and cmaes keep their own populations
MAX_PRIOR = 500  # earlier trials kept as the prior, the best first: what TPE and GP model in well under a second


def prior_record(name: str, *, storage_url: str, space: Any, sampler: str, directions: Sequence[str]) -> dict[str, Any]:
    """The earlier study's finished trials mapped onto `space`, as the new study stores them.
    Raises SpecError (nothing written) when they cannot serve as its prior."""
    from tuner.storage import open_storage
    from tuner.urls import mask
    from tuner.warmstart import _map

    if sampler not in PRIOR_SAMPLERS:
        raise SpecError(f"--warm-start-as-prior gives the sampler observations; {sampler} does not model them: use --sampler {' or '.join(PRIOR_SAMPLERS)}, or --warm-start")
    names = optuna.get_all_study_names(open_storage(storage_url))
    if name not in names:
        raise SpecError(f"--warm-start-as-prior {name}: no study '{name}' in {mask(storage_url)} (studies there: {', '.join(names[:10]) or 'none'})")
    source = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    theirs = [d.name.lower() for d in source.directions]
    if theirs != list(directions):
        raise SpecError(f"--warm-start-as-prior {name}: it {' and '.join(theirs)}s its metrics, this study {' and '.join(directions)}s: its values would mislead the sampler")
    sign = 1.0 if directions[0] == "maximize" else -1.0
    complete = [t for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values and all(math.isfinite(v) for v in t.values)]
    complete.sort(key=lambda t: -sign * t.values[0])
    kept, skipped = [], 0
    for t in complete[:MAX_PRIOR]:
        params, _ = _map(t, space)
        if not params:
            skipped += 1
            continue
        kept.append({"params": params, "values": list(t.values)})
    if not kept:
        raise SpecError(f"--warm-start-as-prior {name}: none of its {len(complete)} complete trials shares a parameter value the new space can take")
    return {"study": name, "storage": mask(storage_url), "trials": kept, "skipped": skipped}


def prior_trials(record: dict[str, Any], space: Any) -> list[FrozenTrial]:
    """The stored prior as finished trials of the new space, numbered before its own (negative)."""
    distributions = {n: p.distribution() for n, p in space.params.items() if p.type != "fixed"}
    out = []
    for i, row in enumerate(record.get("trials") or []):
        params = {k: v for k, v in row["params"].items() if k in distributions}  # mapped onto this space when stored (tuner.warmstart)
        t = create_trial(state=TrialState.COMPLETE, values=row["values"], params=params, distributions={k: distributions[k] for k in params})
        t.number = i - len(record["trials"])
        out.append(t)
    return out


class _WithPrior(StudyView):
    """The study as the inner sampler sees it: its own trials and the prior's."""

    def __init__(self, study: optuna.Study, prior: list[FrozenTrial]) -> None:
        super().__init__(study)
        self._prior = prior

    def shown(self, trials: list[FrozenTrial], states: Container[TrialState] | None) -> list[FrozenTrial]:
        return [t for t in self._prior if states is None or t.state in states] + trials


class PriorSampler(ViewSampler):
    """A sampler that models an earlier study's trials beside the study's own."""

    def __init__(self, inner: BaseSampler, prior: list[FrozenTrial]) -> None:
        super().__init__(inner)
        self._prior = prior

    def view(self, study: optuna.Study) -> StudyView:
        return _WithPrior(study, self._prior)
