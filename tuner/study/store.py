"""Create and open studies: what a study is bound to, stored with it so that any host can run it.

A tuner study is a plain Optuna RDB study. What tuner needs to run it again, from any machine, is
stored with it as study user attributes: the spec ("tuner.spec") and the whole search space
("tuner.space"), so a resume never depends on files that may have changed since.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tuner import attrs as A
from tuner.attrs import SPACE_ATTR, SPEC_ATTR
from tuner.buffered import BufferedStorage
from tuner.errors import NoStorageError, SpaceError, SpecError, StorageError
from tuner.heartbeat import worker_identity
from tuner.metrics import parse_constraint
from tuner.params import TrainConfig
from tuner.samplers import make_pruner, make_sampler
from tuner.space import SPACES_DIR, Space, load_space, parse_space
from tuner.spec import DEFAULT_TRIALS, RUN_OPTIONS, STOPPING_OPTIONS, StudySpec
from tuner.storage import count_states, mask, open_storage, sql_rdb
from tuner.workloads import WorkloadRef, load_workload, parse_workload

__all__ = [
    "SPACE_ATTR",
    "SPEC_ATTR",
    "Loaded",
    "check_code",
    "check_data",
    "check_workload",
    "create_study",
    "delete_study",
    "open_study",
    "prepare_run",
    "quiet_optuna",
    "reconcile",
    "set_budget",
    "study_exists",
]

DATA_ATTR = "tuner.data_sha256"  # a CSV or npz workload's content when the study was created


_DATA_FILES = (".csv", ".npz")  # workloads read from a file, which a study must find again


def absolute_workload(ref: str) -> str:
    """A CSV or npz workload by its absolute path: a study resumed from another folder, or by a
    worker started elsewhere, finds the same file. Other workloads as given."""
    if ref.endswith(_DATA_FILES):
        return str(Path(ref).expanduser().resolve())
    return ref


def _data_file(spec: StudySpec) -> Path | None:
    """The file tuner's loop reads a study's data from, if it does (a CSV or npz workload)."""
    return Path(spec.workload) if spec.workload.endswith(_DATA_FILES) and not spec.user_code else None


def data_digest(spec: StudySpec) -> str | None:
    """SHA-256 of a CSV or npz workload's file (None for other workloads)."""
    path = _data_file(spec)
    if path is None:
        return None
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by the file's size and modification time too: a run checks its data at each step
    (before the budget changes, before a worker claims) and reads the file once, while an edited
    file is read again."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_data(loaded: "Loaded") -> None:
    """Before a worker creates any trial: the study's data file is where it was stored, and holds
    what it held when the study was created (a changed file would make trials incomparable)."""
    spec = loaded.spec
    path = _data_file(spec)
    if path is None:
        return
    if not path.is_file():
        raise SpecError(
            f"study '{spec.name}' trains on {path}, which is not on this host (from {Path.cwd()}); "
            f"copy the file to that path, or run from the host that has it"
        )
    stored = loaded.study.user_attrs.get(DATA_ATTR)
    if stored is not None and data_digest(spec) != stored:
        raise SpecError(f"study '{spec.name}': {path} has changed since the study was created (its SHA-256 differs); restore it, or start a new study on the new data")


@dataclass
class Loaded:
    """A study as stored: the Optuna study, what tuner created it with, and where it lives."""

    study: optuna.Study
    spec: StudySpec
    space: Space
    url: str

    @property
    def workload(self) -> WorkloadRef:
        return parse_workload(self.spec.workload, target=self.spec.target)


def quiet_optuna() -> None:
    # Optuna logs each failed trial with its traceback; tuner records the reason on the trial instead.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").propagate = False


def check_workload(spec: StudySpec, space: Space) -> WorkloadRef:
    """Load the data once before anything is written: a CSV without its target column, a module
    that does not import, or a metric that does not fit the task fails here, not in trial 0."""
    wref = parse_workload(spec.workload, target=spec.target)
    config = {**TrainConfig().as_dict(), **space.fixed()}
    data, _ = load_workload(wref, seed=spec.seed, val_fraction=spec.val_fraction, config=config)
    if "val_accuracy" in (m.name for m in spec.objectives) and data.task != "classification":
        raise SpecError(f"metric val_accuracy needs a classification target, but {wref.describe()} is a regression; use --metric val_rmse")
    cnn = space.params.get("model")
    if cnn is not None and "cnn" in (cnn.choices or (cnn.value,)) and data.image_shape is None:
        raise SpecError(f"space '{space.name}' can pick model=cnn, but {wref.describe()} is not image data; drop cnn from `model`")
    return wref


def check_code(spec: StudySpec, space: Space) -> None:
    """What trials will run, checked before anything is written: tuner's loop on a workload that
    loads and fits the space, or the person's objective (it imports) or command (its placeholders
    name parameters of the space)."""
    if spec.objective is not None:
        from tuner.workloads.data import user_callable

        user_callable(spec.objective, what="--objective", error=SpecError)  # it imports (as usercode.import_objective)
    elif spec.command is not None:
        from tuner.command import check_template

        check_template(spec.command, list(space.params))
    else:
        problem = space.builtin_problem()
        if problem:
            raise SpecError(problem)
        check_workload(spec, space)


def create_study(
    spec: StudySpec, storage_url: str, *, spaces_dir: Path = SPACES_DIR, warm_start: tuple[str, int, str] | None = None, prior: tuple[str, str] | None = None
) -> Loaded:
    """Validate everything, then create the study; nothing is written when any check fails.
    `warm_start`: (study, K, its storage URL) whose best configurations are queued first
    (tuner.warmstart); `prior`: (study, its storage URL) whose trials the sampler is given as
    observations (tuner.prior)."""
    space = load_space(spec.space, spaces_dir=spaces_dir)
    grid: list[dict[str, Any]] = []
    if spec.sampler == "grid":
        problem = space.grid_problem()
        if problem:
            raise SpecError(f"grid search: {problem}")
        try:
            grid = space.grid()
        except SpaceError as e:
            raise SpecError(f"grid search: {e}") from None
    check_code(spec, space)
    budget = spec.trials or (len(grid) if grid else DEFAULT_TRIALS)
    spec = StudySpec(**{**spec.as_dict(), "trials": budget, "workload": absolute_workload(spec.workload)})

    quiet_optuna()
    warm = None
    if warm_start is not None:
        from tuner.warmstart import plan

        warm = plan(warm_start[0], warm_start[1], storage_url=warm_start[2], space=space, budget=budget, sampler=str(spec.sampler), workload=spec.workload)
        grid = warm.skip_points(grid)  # a grid study: the points the earlier study ran are taken over, not run again
    prior_attr = None
    if prior is not None:
        from tuner.prior import prior_record

        prior_attr = prior_record(prior[0], storage_url=prior[1], space=space, sampler=str(spec.sampler), directions=[m.direction for m in spec.objectives])
    storage = open_storage(storage_url, create=True)
    if spec.name in optuna.get_all_study_names(storage):
        raise SpecError(f"study '{spec.name}' already exists in {mask(storage_url)}; `tuner study run {spec.name}` continues it")
    objectives = spec.objectives
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        directions=[m.direction for m in objectives],
        sampler=make_sampler(str(spec.sampler), spec.seed, n_startup=spec.n_startup, history=spec.history),
        pruner=make_pruner(str(spec.pruner)),
    )
    with warnings.catch_warnings():  # the dashboard and Optuna's plots name each value by its metric (not "Objective 0")
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([m.name for m in objectives])
    study.set_user_attr(SPEC_ATTR, spec.as_dict())
    study.set_user_attr(SPACE_ATTR, space.to_dict())
    digest = data_digest(spec)
    if digest is not None:
        study.set_user_attr(DATA_ATTR, digest)
    if prior_attr is not None:
        from tuner.prior import PRIOR_ATTR

        study.set_user_attr(PRIOR_ATTR, prior_attr)
    if warm is not None:  # first in the queue: the earlier study's best configurations
        warm.enqueue(study)
    for point in grid:  # a new study, distinct points: nothing to skip, so no re-read per point
        study.enqueue_trial(point)
    return open_study(spec.name, storage_url, storage=storage)  # opened once: Optuna's schema check takes ~50 ms


def open_study(name: str, storage_url: str, *, worker_index: int = 0, storage: optuna.storages.RDBStorage | None = None) -> Loaded:
    quiet_optuna()
    storage = storage or open_storage(storage_url)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        known = ", ".join(names[:10]) + (f" and {len(names) - 10} more (`tuner study list`)" if len(names) > 10 else "")
        raise StorageError(f"no study '{name}' in {mask(storage_url)}; {hint}studies there: {known or 'none'}")
    bare = optuna.load_study(study_name=name, storage=storage)
    attrs = bare.user_attrs
    if SPEC_ATTR not in attrs or SPACE_ATTR not in attrs:
        raise SpecError(f"study '{name}' was not created by tuner (no {SPEC_ATTR} attribute); inspect it with optuna-dashboard")
    spec = StudySpec.from_dict(attrs[SPEC_ATTR], source=f"study '{name}'")
    space = parse_space(attrs[SPACE_ATTR], name=Path(spec.space).stem, source=f"study '{name}' (stored space)")
    # The sampler is rebuilt from the stored spec. Its seed moves on with the study's size so that
    # a resumed run does not replay the random start-up points of the first run, and differs per
    # worker so that parallel workers do not sample the same points.
    n_existing = sum(count_states(storage, bare._study_id).values())
    # Trials this worker runs write through a buffer: one transaction per trial, not one per value
    # (where tuner's SQL fits Optuna's schema; else Optuna's own storage, a transaction per write).
    chosen: Any = bare._storage
    if sql_rdb(storage) is not None:
        chosen = BufferedStorage(bare._storage, storage, claimed_by={A.WORKER: worker_identity()})
    sampler = make_sampler(str(spec.sampler), spec.seed + n_existing + 7919 * worker_index, n_startup=spec.n_startup, history=spec.history)
    from tuner.prior import PRIOR_ATTR

    if isinstance(attrs.get(PRIOR_ATTR), dict):  # an earlier study's trials, given to the sampler (tuner.prior)
        from tuner.prior import PriorSampler, prior_trials

        sampler = PriorSampler(sampler, prior_trials(attrs[PRIOR_ATTR], space))
    study = optuna.load_study(study_name=name, storage=chosen, sampler=sampler, pruner=make_pruner(str(spec.pruner)))
    return Loaded(study, spec, space, storage_url)


def reconcile(loaded: Loaded, given: dict[str, Any], *, spaces_dir: Path = SPACES_DIR, source: str | None = None) -> StudySpec:
    """Settings given to `run` for an existing study (flags, or a spec file named by `source`)
    must agree with what it was created with."""
    stored = loaded.spec

    def drop(key: str) -> str:
        return f"remove `{key}:` from {source}" if source else "drop --" + key.replace("_", "-")

    for key, value in given.items():
        if value is None or key in RUN_OPTIONS or key == "name":
            continue
        if key == "space":
            if load_space(value, spaces_dir=spaces_dir).to_dict() != loaded.space.to_dict():
                raise SpecError(
                    f"study '{stored.name}' was created with a different search space than {value}; "
                    f"{drop('space')} to resume with the stored one, or start a new study"
                )
            continue
        if key == "workload":
            value = absolute_workload(value)
        if key == "metrics":  # as stored: each NAME:DIRECTION
            value = StudySpec(**{**stored.as_dict(), "metrics": value, "metric": None, "direction": None, "sampler": None, "pruner": None, "prune_on": None}).metrics
        if key == "constraints":
            value = [parse_constraint(c).text() for c in value]
        if value != getattr(stored, key):
            raise SpecError(
                f"study '{stored.name}' was created with {key}={getattr(stored, key)!r}, not {value!r}; "
                f"{drop(key)} to continue it, or start a new study name"
            )
    trials = given.get("trials")
    return StudySpec(**{**stored.as_dict(), "trials": trials or stored.trials})


def study_exists(name: str, storage_url: str) -> bool:
    try:
        return name in optuna.get_all_study_names(open_storage(storage_url))
    except NoStorageError:
        return False


def set_budget(loaded: Loaded, trials: int | None) -> tuple[int, int] | None:
    """Store a new budget (finished trials in total) if `trials` differs: (old, new), else None."""
    old = int(loaded.spec.trials or DEFAULT_TRIALS)
    if trials is None or trials == old:
        return None
    loaded.spec = StudySpec(**{**loaded.spec.as_dict(), "trials": trials})
    loaded.study.set_user_attr(SPEC_ATTR, loaded.spec.as_dict())
    return old, trials


def prepare_run(
    name: str,
    storage_url: str,
    *,
    given: StudySpec | None,
    settings: dict[str, Any],
    spaces_dir: Path = SPACES_DIR,
    file_settings: dict[str, Any] | None = None,
    spec_file: str | None = None,
    warm_start: tuple[str, int, str] | None = None,
    prior: tuple[str, str] | None = None,
) -> tuple[Loaded, tuple[int, int] | None]:
    """The study a `run` works on: an existing one, checked against every setting given (flags,
    and the spec file's, see reconcile) and given the budget asked for; or a new one, created from
    `given`. Returns it and the budget change made, (old, new), if any."""
    if study_exists(name, storage_url):
        if warm_start is not None or prior is not None:
            flag = "--warm-start" if warm_start is not None else "--warm-start-as-prior"
            raise SpecError(f"{flag} seeds a new study, and study '{name}' exists already; drop {flag} to continue it, or give a new name")
        loaded = open_study(name, storage_url)
        check_data(loaded)  # before the budget is touched: nothing is written for a run that cannot go on
        reconcile(loaded, file_settings or {}, spaces_dir=spaces_dir, source=spec_file)
        reconcile(loaded, settings, spaces_dir=spaces_dir)
        # stopping rules given now replace the stored ones (checked before anything is written)
        rules = {k: v for k, v in {**(file_settings or {}), **settings}.items() if k in STOPPING_OPTIONS and v is not None}
        ruled = StudySpec(**{**loaded.spec.as_dict(), **rules}) if rules else None
        # the budget asked for: the flag's, else the file's; neither leaves the stored one
        change = set_budget(loaded, settings.get("trials") or (file_settings or {}).get("trials"))
        if ruled is not None:
            updated = StudySpec(**{**loaded.spec.as_dict(), **{k: getattr(ruled, k) for k in STOPPING_OPTIONS}})
            if updated != loaded.spec:
                from tuner.stopping import STOPPED_ATTR

                loaded.spec = updated
                loaded.study.set_user_attr(SPEC_ATTR, updated.as_dict())
                if loaded.study.user_attrs.get(STOPPED_ATTR):  # stopped by the rules it had: the new ones decide afresh
                    loaded.study.set_user_attr(STOPPED_ATTR, None)
        return loaded, change
    if given is None:
        raise SpecError(f"no study '{name}' in {mask(storage_url)} yet; to create it pass --space NAME (or --spec FILE)")
    return create_study(given, storage_url, spaces_dir=spaces_dir, warm_start=warm_start, prior=prior), None


def delete_study(name: str, storage_url: str) -> None:
    open_study(name, storage_url)  # a clear error for a missing study
    optuna.delete_study(study_name=name, storage=open_storage(storage_url))
