"""`tuner bench`: tuner's trial loop and study service measured against Optuna's own PyTorch example.

Kept beside the product, not in it: the installed package is `tuner` alone, and `tuner bench` runs
from a checkout of the repository (tuner/cli/bench.py finds this folder beside `tuner/`).

One module a section, each a measure function given a `Bench` and returning plain dicts, each
figure a median over repeated runs and each ratio taken between figures measured in the same
process run:

    throughput   trials per second of tuner's objective and of the reference, same configurations
    overhead     the share of a trial's wall time spent outside training (sampling, storage,
                 reports), on SQLite and PostgreSQL
    growth       how that share grows from 100 to 2,000 trials
    search       wall time until a trial reaches 0.97 validation accuracy on digits, per strategy
    workers      trials per second with 1 and 2 local workers on one study
    command      seconds a run of an example script takes by hand and as a --command trial
    packing      trials per second packed against unpacked and the reference, and search quality packed
    pareto       the pareto pruner against none on a two-metric study, over seeds: the front's
                 hypervolume at equal trials and at equal time, the time to the unpruned front

run.py lists them in order (SECTIONS: adding a section is a module and an entry there) and builds
the document; common.py holds what they share; reference.py is the pattern of Optuna's
`pytorch_simple` example, written here as the baseline (it is not product code). tuner's side goes
only through public functions (create_study, run_study, make_objective, run_workers) and times
training through tuner.train's timing hook, so the harness keeps measuring the same thing when
their internals change.
"""

from benchmarks.common import Bench, BenchSettings
from benchmarks.growth import measure_growth
from benchmarks.overhead import measure_overhead
from benchmarks.pareto import measure_pareto
from benchmarks.reference import reference_objective
from benchmarks.run import SECTIONS, machine_info, run_bench, skip_names
from benchmarks.search import measure_search
from benchmarks.throughput import measure_throughput
from benchmarks.workers import measure_workers

__all__ = [
    "SECTIONS",
    "Bench",
    "BenchSettings",
    "machine_info",
    "measure_growth",
    "measure_overhead",
    "measure_pareto",
    "measure_search",
    "measure_throughput",
    "measure_workers",
    "reference_objective",
    "run_bench",
    "skip_names",
]
