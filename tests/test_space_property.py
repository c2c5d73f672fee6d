"""Property: whatever a space file holds, loading it gives a Space or one SpaceError line, never a crash."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuner.errors import SpaceError
from tuner.params import ACTIVATIONS, INITIALIZERS, MODELS, NORMS, OPTIMIZERS, SCALINGS, SCHEDULERS, param_kind, param_names
from tuner.space import Space, space_from_text

SOURCE = "spaces/fuzz.yaml"
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

NAMES = list(param_names())
CHOICE_NAMES = list(dict.fromkeys(OPTIMIZERS + SCHEDULERS + INITIALIZERS + ACTIVATIONS + NORMS + SCALINGS + MODELS))
_TYPES = ["float", "int", "categorical"]
ENTRY_KEYS = ["type", "low", "high", "log", "step", "choices", "when", "grid", "fixed"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),  # nan and inf included
    st.text(max_size=12),
    st.sampled_from(CHOICE_NAMES),
    st.sampled_from(["1e-4", "1e400", "nan", "-inf", "0x10", "1_000", " 5 ", ""]),
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.sampled_from(NAMES + ENTRY_KEYS), inner, max_size=4),
    max_leaves=12,
)
numbers = st.one_of(
    st.integers(min_value=-5, max_value=600),
    st.floats(min_value=-1, max_value=2),
    st.sampled_from([1e-8, 1e-4, 0.5, 0.999, 1.0, 65536, 65537]),
    st.sampled_from(["1e-4", "2e1", "abc"]),
    anything,
)
CATEGORICAL_PARENTS = ["optimizer", "scheduler", "init", "model", "activation", "norm", "scaling", "batch_size"]
when_maps = st.dictionaries(
    st.sampled_from(CATEGORICAL_PARENTS + NAMES) | st.text(max_size=6),
    st.lists(st.sampled_from(CHOICE_NAMES) | scalars, min_size=1, max_size=3) | st.sampled_from(CHOICE_NAMES) | anything,
    min_size=1,
    max_size=2,
)


def plausible_entry(name: str) -> st.SearchStrategy[object]:
    """Entries close to valid for this parameter, so that generation reaches the deep checks too."""
    kind, choices = param_kind(name)
    if kind is str:
        pick = st.sampled_from(list(choices)) | st.sampled_from(CHOICE_NAMES)
        values = st.lists(pick, min_size=1, max_size=4, unique=True)
        return st.one_of(
            pick,
            values,
            st.fixed_dictionaries({"type": st.just("categorical"), "choices": values}, optional={"when": when_maps}),
            st.fixed_dictionaries({"fixed": pick}, optional={"when": when_maps}),
        )
    low, high = st.integers(min_value=0, max_value=40), st.integers(min_value=1, max_value=80)
    if kind is float:
        low = st.floats(min_value=0, max_value=0.5) | st.sampled_from([1e-6, 1e-4, "1e-4", 0.1])
        high = st.floats(min_value=0.05, max_value=0.99) | st.sampled_from([0.5, 0.9, "1e-1"])
    return st.one_of(
        low,
        st.lists(low, min_size=1, max_size=4),
        st.fixed_dictionaries(
            {"type": st.just("int" if kind is int else "float") | st.sampled_from(_TYPES), "low": low, "high": high},
            optional={
                "log": st.booleans(),
                "step": low | high,
                "grid": st.integers(min_value=0, max_value=6) | st.lists(low | high, min_size=1, max_size=3),
                "when": when_maps,
            },
        ),
    )


def entry_pair(name: str) -> st.SearchStrategy[tuple[object, object]]:
    return st.tuples(st.just(name), plausible_entry(name) | plausible_entry(name) | wild_entries)


wild_entries = st.one_of(
    anything,
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["float", "int", "categorical", "range", ""]) | anything,
            "low": numbers,
            "high": numbers,
            "log": st.booleans() | anything,
            "step": numbers,
            "choices": st.lists(st.sampled_from(CHOICE_NAMES) | numbers, max_size=5) | anything,
            "when": when_maps | anything,
            "grid": st.integers(min_value=-2, max_value=20) | st.lists(numbers, max_size=4) | anything,
            "fixed": numbers | st.sampled_from(CHOICE_NAMES),
            "junk": anything,
        },
    ),
)
named = st.sampled_from(NAMES).flatmap(entry_pair)
params_maps = st.lists(
    st.one_of(named, named, named, named, st.tuples(st.text(max_size=10), wild_entries)),
    min_size=1,
    max_size=5,
).map(dict)
plausible_spaces = st.fixed_dictionaries({"params": params_maps}, optional={"description": st.text(max_size=20)})
spaces = st.one_of(
    plausible_spaces,
    plausible_spaces,
    plausible_spaces,
    st.fixed_dictionaries(
        {"params": params_maps | anything},
        optional={"description": st.text(max_size=20) | anything, "extra": anything},
    ),
    anything,
)


def check(text: str) -> None:
    try:
        space = space_from_text(text, name="fuzz", source=SOURCE)
    except SpaceError as e:
        message = str(e)
        assert message.startswith(SOURCE + ": "), message
        assert "\n" not in message and len(message.splitlines()) == 1, repr(message)
        return
    assert isinstance(space, Space)
    # nothing is dropped on the way: a space loads only when every key it holds is one tuner reads
    data = yaml.safe_load(text)
    assert set(data) <= {"params", "description"}, data
    assert sorted(map(str, data["params"])) == sorted(space.params), (data["params"], space.params)
    for entry in data["params"].values():
        if isinstance(entry, dict):
            assert set(entry) <= set(ENTRY_KEYS), entry
    # a space that loads also saves: its YAML loads back equal
    assert space_from_text(space.to_yaml(), name="fuzz", source=SOURCE) == space


@SETTINGS
@given(spaces)
def test_generated_space_structures_load_or_fail_with_one_line(data: object) -> None:
    check(yaml.safe_dump(data, allow_unicode=True))


@SETTINGS
@given(spaces, st.data())
def test_damaged_space_text_loads_or_fails_with_one_line(data: object, draw: st.DataObject) -> None:
    text = yaml.safe_dump(data, allow_unicode=True, default_flow_style=draw.draw(st.booleans()))
    cut = draw.draw(st.integers(min_value=0, max_value=len(text)))
    junk = draw.draw(st.text(alphabet="{}[]:,-#&*!|>'\"%@`?\t\n \\0123456789.eE", max_size=6))
    check(text[:cut] + junk + text[cut + draw.draw(st.integers(min_value=0, max_value=3)) :])


@SETTINGS
@given(st.text(max_size=200) | st.text(alphabet="{}[]:,-#&*!|>'\"%@`?\t\n abcdelowhigprams0123456789.", max_size=200))
def test_garbage_text_loads_or_fails_with_one_line(text: str) -> None:
    check(text)
