"""tuner/space.py: space files are validated with one-line errors, expand to grids and Optuna distributions."""

from __future__ import annotations

import os
import textwrap
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tuner.errors import SpaceError
from tuner.params import (
    ACTIVATIONS,
    CONDITIONS,
    INITIALIZERS,
    MODELS,
    NORMS,
    OPTIMIZERS,
    SCALINGS,
    SCHEDULERS,
    param_names,
)
from tuner.space import (
    MAX_GRID_POINTS,
    Param,
    Space,
    build_space,
    load_space,
    parse_entry,
    save_space,
    space_from_text,
)

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))
SOURCE = "spaces/mine.yaml"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load(text: str) -> Space:
    return space_from_text(textwrap.dedent(text), name="mine", source=SOURCE)


def error_of(text: str) -> str:
    with pytest.raises(SpaceError) as info:
        load(text)
    message = str(info.value)
    assert "\n" not in message and len(message.splitlines()) == 1, message
    assert message.startswith(f"{SOURCE}: "), message
    return message


def params_yaml(body: str) -> str:
    return "params:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def in_distribution(dist: object, value: object) -> bool:
    return dist._contains(dist.to_internal_repr(value))  # type: ignore[attr-defined]


def distribution_of(param: Param) -> object:
    with warnings.catch_warnings():  # Optuna warns when it rounds a stepped high down
        warnings.simplefilter("ignore", UserWarning)
        return param.distribution()


def has_finite_grid(param: Param) -> bool:
    if param.type == "float":
        return param.grid is not None
    if param.type == "int":
        return param.grid is not None or (param.high - param.low) // (param.step or 1) < 64
    return True


# ---------------------------------------------------------------------------------------------
# every bad input: a SpaceError, one line, naming the file, the parameter and the bad value

BAD_PARAMS = [
    # bounds
    ("low_above_high", "lr: {type: float, low: 0.1, high: 0.01}", "lr", ["low=0.1", "high=0.01"]),
    ("low_equals_high", "epochs: {type: int, low: 5, high: 5}", "epochs", ["low=5 high=5", "fixed: 5"]),
    ("log_low_zero", "weight_decay: {type: float, low: 0, high: 0.1, log: true}", "weight_decay", ["log", "low=0.0"]),
    ("log_int_low_zero", "patience: {type: int, low: 0, high: 5, log: true}", "patience", ["log", "low=0"]),
    ("log_not_bool", "lr: {type: float, low: 0.001, high: 0.1, log: 'true'}", "lr", ["log", "'true'"]),
    ("non_numeric_low", "lr: {type: float, low: abc, high: 1}", "lr", ["low", "'abc'"]),
    ("list_low", "lr: {type: float, low: [0.1], high: 1}", "lr", ["low", "[0.1]"]),
    ("bool_low", "epochs: {type: int, low: true, high: 5}", "epochs", ["low", "True"]),
    ("nan_high", "lr: {type: float, low: 0.1, high: .nan}", "lr", ["high", "finite"]),
    ("inf_high", "lr: {type: float, low: 0.1, high: .inf}", "lr", ["high", "finite"]),
    ("fractional_int", "epochs: {type: int, low: 1.5, high: 5}", "epochs", ["low", "1.5", "integer"]),
    ("missing_high", "lr: {type: float, low: 0.1}", "lr", ["`high` is missing"]),
    # registered choices
    ("unknown_optimizer", "optimizer: [adam, adamx]", "optimizer", ["'adamx'", "adamw"]),
    ("unknown_optimizer_fixed", "optimizer: adamx", "optimizer", ["'adamx'", "lbfgs"]),
    ("unknown_initializer", "init: {type: categorical, choices: [xavier_uniform, he]}", "init", ["'he'", "kaiming_normal"]),
    ("unknown_initializer_fixed", "init: {fixed: xavier}", "init", ["'xavier'", "xavier_uniform"]),
    ("unknown_activation", "activation: {type: categorical, choices: [relu, swish]}", "activation", ["'swish'", "gelu"]),
    ("number_as_choice_name", "scheduler: [none, 3]", "scheduler", ["3", "cosine"]),
    ("empty_choices", "optimizer: {type: categorical, choices: []}", "optimizer", ["choices", "[]"]),
    ("empty_list_shorthand", "optimizer: []", "optimizer", ["choices", "[]"]),
    ("choices_not_list", "optimizer: {type: categorical, choices: adam}", "optimizer", ["choices", "'adam'"]),
    ("duplicate_numbers", "batch_size: [32, 64, 32]", "batch_size", ["32", "twice"]),
    ("duplicate_int_and_float", "batch_size: [32, 32.0]", "batch_size", ["32", "twice"]),
    ("duplicate_names", "optimizer: [adam, sgd, adam]", "optimizer", ["'adam'", "twice"]),
    ("categorical_extra_key", "optimizer: {type: categorical, choices: [adam], low: 1}", "optimizer", ["low"]),
    # entries and types
    ("unknown_entry_key", "lr: {type: float, low: 0.001, high: 0.1, logg: true}", "lr", ["'logg'", "log"]),
    ("unknown_type", "lr: {type: range, low: 0.001, high: 0.1}", "lr", ["type", "'range'"]),
    ("missing_type", "lr: {low: 0.001, high: 0.1}", "lr", ["type", "None"]),
    ("float_for_int_param", "batch_size: {type: float, low: 16, high: 64}", "batch_size", ["integer", "type: int"]),
    ("range_for_optimizer", "optimizer: {type: float, low: 0, high: 1}", "optimizer", ["names", "choices"]),
    ("int_range_for_activation", "activation: {type: int, low: 0, high: 3}", "activation", ["names", "choices"]),
    ("fixed_with_extra_key", "epochs: {fixed: 5, type: int}", "epochs", ["fixed", "type"]),
    ("fixed_wrong_type", "epochs: {fixed: fast}", "epochs", ["'fast'", "number"]),
    ("fixed_fractional_int", "batch_size: 12.5", "batch_size", ["12.5", "integer"]),
    # out of the vocabulary's bounds
    ("dropout_1_5", "dropout: 1.5", "dropout", ["1.5", "[0, 1)"]),
    ("dropout_choice_1", "dropout: [0.1, 1.0]", "dropout", ["1.0", "[0, 1)"]),
    ("dropout_high_1", "dropout: {type: float, low: 0, high: 1}", "dropout", ["high=1.0", "[0, 1)"]),
    ("lr_zero", "lr: {type: float, low: 0, high: 0.1}", "lr", ["low=0.0", "(0, inf)"]),
    ("lr_fixed_negative", "lr: -0.1", "lr", ["-0.1", "(0, inf)"]),
    ("epochs_zero", "epochs: 0", "epochs", ["0", "[1, inf)"]),
    ("hidden_units_too_many", "hidden_units: {type: int, low: 16, high: 100000}", "hidden_units", ["100000", "65536"]),
    # a huge integer is still an integer, and out of range (not "not an integer", not OverflowError)
    ("hidden_units_huge", "hidden_units: 100000000000000000000001", "hidden_units", ["100000000000000000000001", "out of range"]),
    ("epochs_beyond_float", f"epochs: {'9' * 400}", "epochs", ["finite"]),
    ("lr_beyond_float", f"lr: {{type: float, low: 0.1, high: {'9' * 400}}}", "lr", ["high"]),
    # grids
    ("grid_value_above_high", "lr: {type: float, low: 0.001, high: 0.1, grid: [0.01, 0.5]}", "lr", ["0.5", "outside", "high=0.1"]),
    ("grid_value_below_low", "epochs: {type: int, low: 5, high: 30, grid: [1, 10]}", "epochs", ["1", "outside", "low=5"]),
    ("grid_value_not_number", "lr: {type: float, low: 0.001, high: 0.1, grid: [0.01, x]}", "lr", ["grid value", "'x'"]),
    ("grid_empty_list", "lr: {type: float, low: 0.001, high: 0.1, grid: []}", "lr", ["grid", "[]"]),
    ("grid_zero", "lr: {type: float, low: 0.001, high: 0.1, grid: 0}", "lr", ["grid", "got 0"]),
    ("grid_negative", "lr: {type: float, low: 0.001, high: 0.1, grid: -3}", "lr", ["grid", "-3"]),
    ("grid_true", "lr: {type: float, low: 0.001, high: 0.1, grid: true}", "lr", ["grid", "True"]),
    ("grid_text", "lr: {type: float, low: 0.001, high: 0.1, grid: x}", "lr", ["grid", "'x'"]),
    ("grid_fraction", "epochs: {type: int, low: 1, high: 5, grid: 2.5}", "epochs", ["grid", "2.5"]),
    ("grid_count_too_big", f"lr: {{type: float, low: 0.001, high: 0.1, grid: {MAX_GRID_POINTS + 1}}}", "lr", [str(MAX_GRID_POINTS + 1), "100,000"]),
    ("step_zero", "dropout: {type: float, low: 0, high: 0.5, step: 0}", "dropout", ["step", "0"]),
    ("step_negative", "epochs: {type: int, low: 1, high: 9, step: -2}", "epochs", ["step", "-2"]),
    ("step_text", "dropout: {type: float, low: 0, high: 0.5, step: big}", "dropout", ["step", "'big'"]),
    ("step_with_log", "lr: {type: float, low: 0.001, high: 0.1, log: true, step: 0.001}", "lr", ["step", "log"]),
    # unknown names
    ("unknown_param_did_you_mean", "batchsize: [32]", "batchsize", ["unknown parameter", "did you mean 'batch_size'"]),
    ("unknown_param", "colour: red", "colour", ["unknown parameter", "valid:", "dropout"]),
    ("param_name_number", "7: 1", "7", ["unknown parameter"]),
]


@pytest.mark.parametrize(("body", "param", "facts"), [c[1:] for c in BAD_PARAMS], ids=[c[0] for c in BAD_PARAMS])
def test_a_bad_entry_is_one_line_naming_file_parameter_and_value(body: str, param: str, facts: list[str]) -> None:
    message = error_of(params_yaml(body))
    assert message.startswith(f"{SOURCE}: {param}: "), message
    for fact in facts:
        assert fact in message, f"{fact!r} not in {message!r}"


BAD_CONDITIONS = [
    (
        "parent_missing",
        "momentum: {type: float, low: 0.5, high: 0.9, when: {optimizer: [sgd]}}",
        "momentum",
        ["'optimizer'", "not in this space", "momentum"],
    ),
    (
        "parent_typo",
        """\
        optimizer: [sgd, nesterov]
        momentum: {type: float, low: 0.5, high: 0.9, when: {optimizr: [nesterov]}}""",
        "momentum",
        ["'optimizr'", "did you mean 'optimizer'"],
    ),
    (
        "value_parent_never_takes",
        """\
        optimizer: [adam, sgd]
        momentum: {type: float, low: 0.5, high: 0.9, when: {optimizer: [nesterov]}}""",
        "momentum",
        ["optimizer='nesterov'", "can never hold", "'adam', 'sgd'"],
    ),
    (
        "value_fixed_parent_never_takes",
        """\
        optimizer: adam
        momentum: {fixed: 0.9, when: {optimizer: nesterov}}""",
        "momentum",
        ["optimizer='nesterov'", "can never hold", "'adam'"],
    ),
    (
        "float_range_parent",
        """\
        lr: {type: float, low: 0.001, high: 0.1}
        momentum: {fixed: 0.9, when: {lr: [0.01]}}""",
        "momentum",
        ["'lr'", "float range"],
    ),
    (
        "int_range_parent",
        """\
        epochs: {type: int, low: 1, high: 5}
        patience: {fixed: 2, when: {epochs: [3]}}""",
        "patience",
        ["'epochs'", "int range"],
    ),
    (
        "nesterov_momentum_from_zero",
        """\
        optimizer: [sgd, nesterov]
        momentum: {type: float, low: 0.0, high: 0.9, when: {optimizer: [nesterov]}}""",
        "momentum",
        ["low=0", "nesterov needs momentum > 0", "low: 0.5"],
    ),
    (
        "nesterov_momentum_fixed_zero",
        """\
        optimizer: nesterov
        momentum: 0""",
        "momentum",
        ["fixed: 0", "nesterov needs momentum > 0"],
    ),
    (
        "nesterov_momentum_choice_zero",
        """\
        optimizer: [nesterov, adam]
        momentum: [0.0, 0.9]""",
        "momentum",
        ["choice 0", "nesterov needs momentum > 0"],
    ),
    (
        "self_condition",
        "optimizer: {type: categorical, choices: [adam, sgd], when: {optimizer: [adam]}}",
        "optimizer",
        ["itself"],
    ),
    (
        "two_cycle",
        """\
        optimizer: {type: categorical, choices: [adam, sgd], when: {scheduler: [none]}}
        scheduler: {type: categorical, choices: [none, step], when: {optimizer: [adam]}}""",
        "optimizer",
        ["cycle"],
    ),
    (
        "three_cycle",
        """\
        model: {type: categorical, choices: [mlp, cnn], when: {init: [default]}}
        optimizer: {type: categorical, choices: [adam, sgd], when: {model: [mlp]}}
        init: {type: categorical, choices: [default, orthogonal], when: {optimizer: [adam]}}""",
        "model",
        ["cycle"],
    ),
    ("when_not_mapping", "momentum: {fixed: 0.9, when: optimizer}", "momentum", ["when", "'optimizer'"]),
    ("when_empty_mapping", "momentum: {fixed: 0.9, when: {}}", "momentum", ["when", "{}"]),
    (
        "when_no_values",
        """\
        optimizer: [adam, sgd]
        momentum: {fixed: 0.9, when: {optimizer: []}}""",
        "momentum",
        ["optimizer", "no values"],
    ),
]


@pytest.mark.parametrize(("body", "param", "facts"), [c[1:] for c in BAD_CONDITIONS], ids=[c[0] for c in BAD_CONDITIONS])
def test_a_bad_condition_is_one_line_naming_file_parameter_and_value(body: str, param: str, facts: list[str]) -> None:
    message = error_of(params_yaml(body))
    assert message.startswith(f"{SOURCE}: {param}: "), message
    for fact in facts:
        assert fact in message, f"{fact!r} not in {message!r}"


BAD_FILES = [
    ("list_top_level", "- lr\n- epochs\n", ["mapping", "list"]),
    ("text_top_level", "just some words\n", ["mapping", "str"]),
    ("empty_file", "", ["mapping"]),
    ("no_params", "description: nothing here\n", ["`params`"]),
    ("empty_params", "params: {}\n", ["`params`", "non-empty"]),
    ("null_params", "params:\n", ["`params`"]),
    ("params_list", "params: [lr, epochs]\n", ["`params`", "mapping"]),
    ("unknown_top_level_key", "param:\n  lr: 0.1\n", ["unknown top-level key 'param'", "params"]),
    ("description_not_text", "description: [a, b]\nparams: {epochs: 3}\n", ["description", "['a', 'b']"]),
]


@pytest.mark.parametrize(("text", "facts"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_bad_file_shape_is_one_line_naming_the_file(text: str, facts: list[str]) -> None:
    message = error_of(text)
    for fact in facts:
        assert fact in message, f"{fact!r} not in {message!r}"


def test_malformed_yaml_names_file_and_line() -> None:
    text = "params:\n  lr: 0.1\n  epochs: [1, 2\n  dropout: 0.1\n"
    message = error_of(text)
    assert "not valid YAML" in message
    assert "at line 4" in message  # where the unclosed list runs into the next key


def test_a_tab_in_yaml_names_the_line() -> None:
    message = error_of("params:\n  lr: 0.1\n\tepochs: 2\n")
    assert "line 3" in message and "'\\t'" in message


@pytest.mark.parametrize(
    "text",
    [
        "params:\n  epochs: !!int fast\n",  # the constructor raises ValueError
        "params:\n  optimizer: 2001-02-30\n",  # a timestamp that is no date
        "params:\n  epochs: " + "9" * 5000 + "\n",  # beyond Python's int-from-text limit
        "params: " + "[" * 5000 + "]" * 5000 + "\n",  # deeper than the parser's recursion
        "params:\n  lr: 0.1\n  lr: 0.2\nparams: {x: [\n",
        "\x00params: {}",
    ],
    ids=["bad_int_tag", "impossible_date", "5000_digits", "deep_nesting", "unclosed", "nul"],
)
def test_yaml_the_loader_rejects_is_a_space_error(text: str) -> None:
    message = error_of(text)
    assert "YAML" in message


def test_a_key_with_a_line_break_still_gives_one_line() -> None:
    message = error_of('params: {"lr\\nx": 1}\n')  # error_of asserts the single line
    assert "lr\\nx" in message and "did you mean 'lr'" in message
    message = error_of('params:\n  optimizer: [adam]\n  momentum: {fixed: 0.9, when: {"opti\\u2028mizer": [adam]}}\n')
    assert "momentum" in message and "opti\\u2028mizer" in message


def test_load_space_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"search space 'nowhere' not found: no file .*nowhere\.yaml"):
        load_space("nowhere", spaces_dir=tmp_path)


def test_load_space_error_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("params:\n  dropout: 1.5\n")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: dropout: ")


# ---------------------------------------------------------------------------------------------
# valid entries


@pytest.mark.parametrize(
    ("body", "name", "expected"),
    [
        ("lr: {type: float, low: 1e-4, high: 1e-1, log: true}", "lr", FloatDistribution(1e-4, 0.1, log=True)),
        ("lr: {type: float, low: 1.0e-4, high: 0.1}", "lr", FloatDistribution(1e-4, 0.1)),
        ("dropout: {type: float, low: 0, high: 0.5, step: 0.1}", "dropout", FloatDistribution(0.0, 0.5, step=0.1)),
        ("epochs: {type: int, low: 5, high: 30, step: 5}", "epochs", IntDistribution(5, 30, step=5)),
        ("epochs: {type: int, low: 5, high: 30}", "epochs", IntDistribution(5, 30)),
        ("hidden_units: {type: int, low: 16, high: 512, log: true}", "hidden_units", IntDistribution(16, 512, log=True)),
        ("batch_size: [32, 64]", "batch_size", CategoricalDistribution([32, 64])),
        ("optimizer: {type: categorical, choices: [adam, sgd]}", "optimizer", CategoricalDistribution(["adam", "sgd"])),
        ("dropout: [0, 0.25]", "dropout", CategoricalDistribution([0.0, 0.25])),
    ],
)
def test_entries_become_the_matching_optuna_distribution(body: str, name: str, expected: object) -> None:
    space = load(params_yaml(body))
    dist = space.params[name].distribution()
    assert dist == expected
    assert space.distributions() == {name: expected}


def test_int_ranges_hold_ints_and_float_ranges_floats() -> None:
    space = load(params_yaml("epochs: {type: int, low: 5.0, high: 30}\nweight_decay: {type: float, low: 0, high: 1}"))
    epochs, wd = space.params["epochs"], space.params["weight_decay"]
    assert (epochs.low, epochs.high) == (5, 30) and type(epochs.low) is int and type(epochs.high) is int
    assert (wd.low, wd.high) == (0.0, 1.0) and type(wd.low) is float and type(wd.high) is float


def test_exponents_without_a_dot_are_numbers() -> None:
    # PyYAML reads 1e-4 as the string '1e-4'; a space file still means the number
    space = load(
        params_yaml(
            """\
            lr: {type: float, low: 1e-5, high: 1e-1, log: true, grid: [1e-4, 1e-2]}
            weight_decay: [0, 1e-4]
            eps: 1e-8
            epochs: {type: int, low: 1e1, high: 3e1}"""
        )
    )
    lr = space.params["lr"]
    assert (lr.low, lr.high, lr.grid) == (1e-5, 0.1, (1e-4, 1e-2))
    assert space.params["weight_decay"].choices == (0.0, 1e-4)
    assert space.params["eps"].value == 1e-8 and type(space.params["eps"].value) is float
    assert (space.params["epochs"].low, space.params["epochs"].high) == (10, 30)


def test_fixed_values_scalar_and_explicit() -> None:
    space = load(
        params_yaml(
            """\
            epochs: 12
            dropout: 0
            scaling: standard
            optimizer: [adam, nesterov]
            momentum: {fixed: 0.9, when: {optimizer: [nesterov]}}"""
        )
    )
    assert space.params["epochs"] == Param("epochs", "fixed", value=12)
    assert space.params["dropout"].value == 0.0 and type(space.params["dropout"].value) is float
    assert space.params["momentum"] == Param("momentum", "fixed", value=0.9, when={"optimizer": ("nesterov",)})
    assert space.fixed() == {"epochs": 12, "dropout": 0.0, "scaling": "standard", "momentum": 0.9}
    assert set(space.distributions()) == {"optimizer"}


def test_list_shorthand_is_categorical() -> None:
    space = load(params_yaml("optimizer: [sgd, adam]\nbatch_size: [16, 32]"))
    assert space.params["optimizer"] == Param("optimizer", "categorical", choices=("sgd", "adam"))
    assert space.params["batch_size"] == Param("batch_size", "categorical", choices=(16, 32))


def test_description_is_kept() -> None:
    space = load("description: for the demo\nparams: {epochs: 3}\n")
    assert space.description == "for the demo"
    assert space.name == "mine"


def test_parents_come_before_children_whatever_the_file_order() -> None:
    space = load(
        params_yaml(
            """\
            init_std: {type: float, low: 0.01, high: 0.1, when: {init: [scaled_normal]}}
            momentum: {type: float, low: 0.5, high: 0.9, when: {optimizer: [nesterov]}}
            lr: {type: float, low: 0.001, high: 0.1}
            init: {type: categorical, choices: [default, scaled_normal], when: {optimizer: [adam]}}
            optimizer: [adam, nesterov]"""
        )
    )
    assert list(space.params) == ["optimizer", "init", "init_std", "momentum", "lr"]


# ---------------------------------------------------------------------------------------------
# grids


def grid_of(body: str, name: str) -> list:
    return load(params_yaml(body)).params[name].grid_values()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("lr: {type: float, low: 1e-4, high: 1e-1, log: true, grid: 4}", [1e-4, 1e-3, 1e-2, 1e-1]),
        ("lr: {type: float, low: 1e-4, high: 1e-2, log: true, grid: 1}", [1e-3]),
        ("lr: {type: float, low: 1e-5, high: 1.0, log: true, grid: 6}", [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]),
        ("dropout: {type: float, low: 0, high: 0.5, grid: 6}", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]),
        ("dropout: {type: float, low: 0, high: 0.5, grid: 1}", [0.25]),
        ("dropout: {type: float, low: 0, high: 0.5, grid: [0.3, 0.0]}", [0.3, 0.0]),
        ("epochs: {type: int, low: 1, high: 10, grid: 4}", [1, 4, 7, 10]),
        ("hidden_units: {type: int, low: 16, high: 256, log: true, grid: 5}", [16, 32, 64, 128, 256]),
        ("epochs: {type: int, low: 1, high: 3, grid: 10}", [1, 2, 3]),  # no point twice
        ("n_layers: {type: int, low: 1, high: 3}", [1, 2, 3]),  # a small int range needs no grid
        ("epochs: {type: int, low: 5, high: 30, step: 5}", [5, 10, 15, 20, 25, 30]),
        ("epochs: {type: int, low: 5, high: 30, grid: [10, 20]}", [10, 20]),
        ("dropout: {type: float, low: 0, high: 0.5, step: 0.1, grid: 3}", [0.0, 0.2, 0.5]),
        ("optimizer: [sgd, adam]", ["sgd", "adam"]),
        ("epochs: 7", [7]),
    ],
)
def test_grid_values(body: str, expected: list) -> None:
    name = body.split(":")[0]
    assert grid_of(body, name) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Optuna samples these on [1, 5] and [0.0, 0.3]: the high is rounded down to the step
        ("epochs: {type: int, low: 1, high: 8, step: 4, grid: 2}", [1, 5]),
        ("dropout: {type: float, low: 0, high: 0.5, step: 0.3, grid: 2}", [0.0, 0.3]),
        ("dropout: {type: float, low: 0.1, high: 0.9, step: 0.2, grid: 5}", [0.1, 0.3, 0.5, 0.7, 0.9]),
    ],
)
def test_counted_grids_stay_on_the_step_optuna_samples(body: str, expected: list) -> None:
    name = body.split(":")[0]
    param = load(params_yaml(body)).params[name]
    values = param.grid_values()
    assert values == pytest.approx(expected)
    dist = distribution_of(param)
    assert all(in_distribution(dist, v) for v in values), (values, dist)


def test_conditional_parameters_multiply_the_grid_only_where_active() -> None:
    space = load(
        params_yaml(
            """\
            lr: {type: float, low: 1e-3, high: 1e-1, log: true, grid: 2}
            optimizer: [adam, sgd, nesterov]
            momentum: {type: float, low: 0.5, high: 0.99, grid: [0.5, 0.9], when: {optimizer: [nesterov]}}
            beta1: {type: float, low: 0.8, high: 0.95, grid: 3, when: {optimizer: [adam]}}
            epochs: 5"""
        )
    )
    grid = space.grid()
    # lr 2 x (adam: 3 beta1 + sgd: 1 + nesterov: 2 momentum) = 12, not 2 x 3 x 2 x 3 = 36
    assert len(grid) == 12
    assert len({tuple(sorted(p.items())) for p in grid}) == 12
    for point in grid:
        assert ("momentum" in point) == (point["optimizer"] == "nesterov")
        assert ("beta1" in point) == (point["optimizer"] == "adam")
        assert "epochs" not in point  # fixed values are added when the trial runs
    assert sorted(p["beta1"] for p in grid if "beta1" in p) == [0.8, 0.8, 0.875, 0.875, 0.95, 0.95]


def test_an_inactive_fixed_parent_does_not_enable_its_children_in_the_grid() -> None:
    space = load(
        params_yaml(
            """\
            optimizer: [adam, sgd]
            init: {fixed: scaled_normal, when: {optimizer: [adam]}}
            init_std: {type: float, low: 0.01, high: 0.1, grid: [0.01, 0.02], when: {init: [scaled_normal]}}"""
        )
    )
    assert space.grid() == [
        {"optimizer": "adam", "init_std": 0.01},
        {"optimizer": "adam", "init_std": 0.02},
        {"optimizer": "sgd"},
    ]
    # the grid agrees with what a trial samples
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        values = space.suggest(study.ask())
        assert ("init_std" in values) == (values["optimizer"] == "adam")


def test_grid_small_has_the_twelve_points_it_promises() -> None:
    space = load_space(SPACES_DIR / "grid_small.yaml")
    assert "12-point grid" in space.description
    assert space.grid_problem() is None
    grid = space.grid()
    assert len(grid) == 12
    assert not any("momentum" in p for p in grid)  # a fixed value, never a grid dimension


def test_grid_problem_names_a_continuous_float() -> None:
    space = load(params_yaml("optimizer: [adam, sgd]\nlr: {type: float, low: 1e-4, high: 1e-1, log: true}"))
    problem = space.grid_problem()
    assert problem is not None and "'mine'" in problem and "lr" in problem and "grid" in problem


def test_grid_problem_names_a_wide_int_range_but_not_a_narrow_one() -> None:
    wide = load(params_yaml("epochs: {type: int, low: 1, high: 100}"))
    assert "epochs spans 100 integers" in (wide.grid_problem() or "")
    narrow = load(params_yaml("epochs: {type: int, low: 1, high: 64}"))
    assert narrow.grid_problem() is None
    assert len(narrow.grid()) == 64
    counted = load(params_yaml("epochs: {type: int, low: 1, high: 100, grid: 3}"))
    assert counted.grid_problem() is None
    assert counted.grid() == [{"epochs": 1}, {"epochs": 50}, {"epochs": 100}]


def test_grid_of_exactly_max_points_is_allowed() -> None:
    assert MAX_GRID_POINTS == 100_000
    space = load(params_yaml("epochs: {type: int, low: 1, high: 1000, grid: 1000}\nhidden_units: {type: int, low: 1, high: 100, grid: 100}"))
    assert len(space.grid()) == MAX_GRID_POINTS


def test_grid_over_max_points_is_refused() -> None:
    space = load(params_yaml("epochs: {type: int, low: 1, high: 1000, grid: 1000}\nhidden_units: {type: int, low: 1, high: 101, grid: 101}"))
    assert space.grid_problem() is None
    with pytest.raises(SpaceError, match=r"space 'mine': the grid has more than 100,000 points") as info:
        space.grid()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# suggest with a real Optuna trial

SUGGEST_SPACE = """\
optimizer: [adam, nesterov]
momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: [nesterov]}}
beta1: {fixed: 0.85, when: {optimizer: [adam]}}
lr: {type: float, low: 1e-5, high: 1e-1, log: true}
dropout: {type: float, low: 0, high: 0.5, step: 0.1}
n_layers: {type: int, low: 1, high: 4}
hidden_units: {type: int, low: 16, high: 256, log: true}
epochs: 12
"""


def test_suggest_samples_active_parameters_inside_their_distributions() -> None:
    space = load(params_yaml(SUGGEST_SPACE))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = space.suggest(trial)
        seen.add(values["optimizer"])
        assert values["epochs"] == 12
        assert ("momentum" in values) == (values["optimizer"] == "nesterov")
        assert ("beta1" in values) == (values["optimizer"] == "adam")
        if "beta1" in values:
            assert values["beta1"] == 0.85
        # only sampled parameters reach Optuna, each with the distribution the space declares
        assert set(trial.params) == set(values) - set(space.fixed())
        for name, value in trial.params.items():
            assert trial.distributions[name] == space.params[name].distribution()
            assert in_distribution(trial.distributions[name], value)
            assert values[name] == value
        study.tell(trial, 0.0)
    assert seen == {"adam", "nesterov"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_suggest_on_shipped_spaces_is_consistent_with_conditions(path: Path) -> None:
    space = load_space(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        trial = study.ask()
        values = space.suggest(trial)
        for name, param in space.params.items():
            assert (name in values) == param.is_active(values), name
        for name, value in trial.params.items():
            assert in_distribution(space.params[name].distribution(), value)


# ---------------------------------------------------------------------------------------------
# `tuner space create` options


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("lr", "1e-5:1e-1:log", Param("lr", "float", low=1e-5, high=0.1, log=True)),
        ("lr", "1e-4:1e-1:log:grid=4", Param("lr", "float", low=1e-4, high=0.1, log=True, grid=4)),
        ("dropout", "0:0.5:step=0.1", Param("dropout", "float", low=0.0, high=0.5, step=0.1)),
        ("dropout", "0:0.5:grid=0.1|0.2", Param("dropout", "float", low=0.0, high=0.5, grid=(0.1, 0.2))),
        ("dropout", "0:0.5:grid=5", Param("dropout", "float", low=0.0, high=0.5, grid=5)),
        ("weight_decay", "0:1", Param("weight_decay", "float", low=0.0, high=1.0)),
        ("epochs", "5:30:step=5", Param("epochs", "int", low=5, high=30, step=5)),
        ("epochs", "1:10", Param("epochs", "int", low=1, high=10)),
        ("hidden_units", "16:512:log:grid=64|256", Param("hidden_units", "int", low=16, high=512, log=True, grid=(64, 256))),
        ("batch_size", "32,64,128", Param("batch_size", "categorical", choices=(32, 64, 128))),
        ("optimizer", "sgd, adam,adamw", Param("optimizer", "categorical", choices=("sgd", "adam", "adamw"))),
        ("dropout", "0,0.5", Param("dropout", "categorical", choices=(0.0, 0.5))),
        ("epochs", "12", Param("epochs", "fixed", value=12)),
        ("lr", "1e-3", Param("lr", "fixed", value=1e-3)),
        ("optimizer", "adam", Param("optimizer", "fixed", value="adam")),
    ],
)
def test_create_option_syntax(name: str, text: str, expected: Param) -> None:
    param = build_space("made", {name: text}).params[name]
    assert param == expected
    if param.type == "int":
        assert type(param.low) is int and type(param.high) is int
    if param.type == "float":
        assert type(param.low) is float and type(param.high) is float


def test_parse_entry_gives_the_yaml_entry() -> None:
    assert parse_entry("lr", "1e-5:1e-1:log:step=0.1") == {"type": "float", "low": "1e-5", "high": "1e-1", "log": True, "step": "0.1"}
    assert parse_entry("epochs", "1:9:grid=3") == {"type": "int", "low": "1", "high": "9", "grid": 3}
    assert parse_entry("batch_size", "32,64") == {"type": "categorical", "choices": [32, 64]}
    assert parse_entry("optimizer", "adam") == "adam"


@pytest.mark.parametrize(
    ("options", "facts"),
    [
        ({"lr": "1e-5:1e-1:logg"}, ["--lr", "'logg'"]),
        ({"lr": "1e-5:1e-1:grid=x"}, ["space 'made'", "lr", "grid value must be a number", "'x'"]),
        ({"optimizer": "0:1"}, ["--optimizer", "names"]),
        ({"lr": "0.1:0.01"}, ["space 'made'", "lr", "low=0.1 high=0.01"]),
        ({"lr": "1e-5:1e-1:grid=0"}, ["space 'made'", "lr", "grid", "0"]),
        ({"optimizer": "adam,adamx"}, ["space 'made'", "optimizer", "'adamx'"]),
        ({"batch_size": "16:64.5"}, ["space 'made'", "batch_size", "64.5", "integer"]),
        ({"dropout": "1.5"}, ["space 'made'", "dropout", "1.5"]),
        ({"optimizer": "adam,adam"}, ["space 'made'", "optimizer", "twice"]),
    ],
)
def test_create_option_errors(options: dict[str, str], facts: list[str]) -> None:
    with pytest.raises(SpaceError) as info:
        build_space("made", options)
    message = str(info.value)
    assert "\n" not in message
    for fact in facts:
        assert fact in message, f"{fact!r} not in {message!r}"


def test_create_adds_conditions_for_the_enabling_choices_only() -> None:
    space = build_space(
        "made",
        {
            "lr": "1e-4:1e-1:log",
            "momentum": "0.5:0.99",
            "beta1": "0.9",
            "rho": "0.8:0.99",
            "optimizer": "sgd,momentum,adam,rmsprop",
            "scheduler": "none,step",
            "gamma": "0.1:0.9",
        },
    )
    when = {n: p.when for n, p in space.params.items()}
    assert set(when["momentum"]["optimizer"]) == {"momentum", "rmsprop"}
    assert set(when["rho"]["optimizer"]) == {"rmsprop"}
    assert when["beta1"] == {"optimizer": ("adam",)}
    assert space.params["beta1"].type == "fixed" and space.params["beta1"].value == 0.9
    assert when["gamma"] == {"scheduler": ("step",)}
    assert when["lr"] == {}
    assert when["optimizer"] == {} and when["scheduler"] == {}
    names = list(space.params)
    assert names.index("optimizer") < names.index("momentum")
    assert names.index("scheduler") < names.index("gamma")


def test_create_adds_no_condition_when_the_parent_only_takes_enabling_values() -> None:
    space = build_space("made", {"optimizer": "momentum,nesterov", "momentum": "0.5:0.99", "model": "cnn", "channels": "8:32"})
    assert space.params["momentum"].when == {}
    assert space.params["channels"].when == {}
    fixed = build_space("made", {"optimizer": "nesterov", "momentum": "0.9"})
    assert fixed.params["momentum"] == Param("momentum", "fixed", value=0.9)


@pytest.mark.parametrize(
    ("options", "facts"),
    [
        ({"optimizer": "adam", "momentum": "0.5:0.99"}, ["--momentum", "optimizer", "momentum, nesterov, rmsprop", "adam"]),
        ({"optimizer": "adam,adamw", "rho": "0.9"}, ["--rho", "rmsprop, adadelta", "adam, adamw"]),
        ({"model": "mlp", "channels": "8:32"}, ["--channels", "model", "cnn", "mlp"]),
        ({"init": "default,orthogonal", "init_std": "0.01"}, ["--init-std", "scaled_normal", "default, orthogonal"]),
    ],
)
def test_create_refuses_a_setting_that_can_never_apply(options: dict[str, str], facts: list[str]) -> None:
    with pytest.raises(SpaceError) as info:
        build_space("made", options)
    message = str(info.value)
    assert "\n" not in message
    for fact in facts:
        assert fact in message, f"{fact!r} not in {message!r}"


def test_created_space_saves_and_loads_back(tmp_path: Path) -> None:
    space = build_space(
        "made",
        {"lr": "1e-5:1e-1:log:grid=4", "optimizer": "sgd,nesterov,adam", "momentum": "0.9", "beta1": "0.8:0.95:grid=0.85|0.9"},
        description="built by hand",
    )
    path = save_space(space, tmp_path / "made.yaml")
    loaded = load_space(path)
    assert loaded == space
    assert loaded.description == "built by hand"
    assert loaded.params["momentum"].when == {"optimizer": ("nesterov",)}


# ---------------------------------------------------------------------------------------------
# save_space


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_saved_space_loads_back_equal(path: Path, tmp_path: Path) -> None:
    space = load_space(path)
    target = save_space(space, tmp_path / "out" / f"{space.name}.yaml")
    assert target == tmp_path / "out" / f"{space.name}.yaml"
    loaded = load_space(target)
    assert loaded == space
    assert loaded.to_dict() == space.to_dict()
    assert list(loaded.params) == list(space.params)


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "mine.yaml"
    target.write_text("original\n")
    space = load(params_yaml("epochs: 3"))
    with pytest.raises(SpaceError) as info:
        save_space(space, target)
    assert str(target) in str(info.value) and "--force" in str(info.value)
    assert target.read_text() == "original\n"
    save_space(space, target, overwrite=True)
    assert load_space(target) == space


def test_a_failed_rename_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "mine.yaml"
    target.write_text("params: {epochs: 1}\n")

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    import tuner.atomic

    monkeypatch.setattr(tuner.atomic.os, "replace", fail)  # every file tuner writes goes through it
    with pytest.raises(SpaceError, match="No space left on device"):
        save_space(load(params_yaml("epochs: 3")), target, overwrite=True)
    assert target.read_text() == "params: {epochs: 1}\n"
    assert os.listdir(tmp_path) == ["mine.yaml"]


def test_a_target_that_is_a_folder_is_left_alone(tmp_path: Path) -> None:
    # a real failure of os.replace: a file cannot replace a non-empty folder
    target = tmp_path / "mine.yaml"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises((OSError, SpaceError)):
        save_space(load(params_yaml("epochs: 3")), target, overwrite=True)
    assert (target / "keep.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["mine.yaml"]


def test_save_refuses_a_space_that_would_not_load_back(tmp_path: Path) -> None:
    broken = Space(name="broken", params={"lr": Param("lr", "float", low=0.1, high=0.01)})
    with pytest.raises(SpaceError, match="low must be below high"):
        save_space(broken, tmp_path / "broken.yaml")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# shipped spaces


def test_shipped_spaces_exist() -> None:
    assert {p.stem for p in SHIPPED} >= {"full", "quick", "grid_small"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_space_validates_and_its_grid_points_are_sampleable(path: Path) -> None:
    space = load_space(path)
    assert space.params and space.description
    for param in space.params.values():
        if param.type == "fixed" or not has_finite_grid(param):
            continue
        dist = distribution_of(param)
        for value in param.grid_values():
            assert in_distribution(dist, value), (param.name, value, dist)


def test_full_covers_the_whole_vocabulary() -> None:
    space = load_space(SPACES_DIR / "full.yaml")
    assert set(space.params) == set(param_names())
    registries = {
        "optimizer": OPTIMIZERS,
        "scheduler": SCHEDULERS,
        "init": INITIALIZERS,
        "activation": ACTIVATIONS,
        "norm": NORMS,
        "scaling": SCALINGS,
        "model": MODELS,
    }
    for name, choices in registries.items():
        assert set(space.params[name].choices) == set(choices), name


def test_full_conditions_match_the_vocabulary() -> None:
    space = load_space(SPACES_DIR / "full.yaml")
    for name, param in space.params.items():
        if name in CONDITIONS:
            parent, values = CONDITIONS[name]
            assert set(param.when) == {parent}, name
            assert set(param.when[parent]) == set(values), name
        else:
            assert param.when == {}, name
    assert space.grid_problem() is None  # every dimension has grid points


def test_create_option_grid_single_value_and_review_fixes():
    from tuner.space import build_space

    assert build_space("x", {"lr": "1e-3:1e-1:grid=0.01"}).params["lr"].grid == (0.01,)
    assert build_space("x", {"lr": "1e-3:1e-1:grid=3"}).params["lr"].grid == 3
    with pytest.raises(SpaceError, match="unknown value 'Adam'"):  # the bad choice, not the condition
        build_space("x", {"optimizer": "Adam", "momentum": "0.9"})
    with pytest.raises(SpaceError, match="unknown parameter 'lrx'; did you mean 'lr'"):
        build_space("x", {"lrx": "0.1"})


@pytest.mark.parametrize(
    "text, fact",
    [
        ("params: {lr: {type: int, low: 1, high: 5}}", "lr is a real number; use `type: float`"),
        ("params: {epochs: {type: int, low: 1, high: 8, step: 4, grid: [3]}}", "grid value 3 is not on the step lattice"),
        ("params: {epochs: {type: int, low: 1, high: 8, step: 4, grid: [9]}}", "outside"),
    ],
)
def test_type_and_step_lattice_are_checked(text, fact):
    with pytest.raises(SpaceError, match=fact.replace("`", ".").replace("[", ".").replace("]", ".")):
        space_from_text(text, name="x", source="x.yaml")


def test_save_space_turns_os_errors_into_one_line(tmp_path):
    from tuner.space import build_space

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpaceError, match="cannot write"):
        save_space(build_space("x", {"lr": "0.1"}), blocker / "sub" / "x.yaml")


def test_momentum_from_zero_is_fine_where_nesterov_cannot_use_it() -> None:
    for body in (
        "optimizer: [sgd, momentum]\nmomentum: {type: float, low: 0.0, high: 0.9}",  # no nesterov
        "optimizer: [nesterov, rmsprop]\nmomentum: {type: float, low: 0.0, high: 0.9, when: {optimizer: [rmsprop]}}",
        "optimizer: [nesterov]\nmomentum: {type: float, low: 0.1, high: 0.9}",
    ):
        space = load(params_yaml(body))
        assert space.params["momentum"].type == "float"
