"""Fuzzed search specs: parse_spec returns a SearchSpec or raises UserError, never anything else.

Anything else would reach the user as a traceback instead of one line on stderr (tuner/cli.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuner.errors import UserError
from tuner.spec import TOP_KEYS, SearchSpec, SpecError, parse_spec

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What yaml.safe_load can hand over: scalars (nan/inf included), lists and mappings.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
yamlish = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-3, 3), children, max_size=4),
    max_leaves=20,
)

VALID: dict[str, Any] = {
    "name": "fuzz",
    "metric": "val_acc",
    "mode": "max",
    "data": {"train": "train", "val": "val", "test": "test", "image_size": 32},
    "fixed": {"epochs": 2, "augmentation": "light", "num_workers": 0},
    "space": {
        "lr": {"loguniform": [0.001, 0.5]},
        "momentum": {"uniform": [0.5, 0.99], "step": 0.01},
        "decay_patience": {"int": [1, 3]},
        "optimizer": {"choice": ["sgd", "adam"]},
        "arch": {"choice": ["resnet18"]},
        "width": {"choice": [0.125, 0.25], "when": {"arch": ["resnet18"]}},
    },
    "sampler": {"name": "tpe", "seed": 0, "options": {}},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    "budget": {"num_samples": 4, "max_concurrent": 2, "time_budget_s": 60, "max_failures": 1},
    "resources": {"cpu": 1, "gpu": 0},
    "points_to_evaluate": [{"lr": 0.01, "optimizer": "sgd"}],
    "storage": "postgresql://tuner:${PGPASS}@127.0.0.1/optuna",
}


# Mappings of the real top-level keys, each either its valid section or anything, so that the
# fuzz reaches every section parser instead of stopping at the first check.
spec_like = st.fixed_dictionaries(
    {key: st.just(VALID[key]) | yamlish for key in ("name", "data")},
    optional={key: st.just(VALID.get(key)) | yamlish for key in sorted(TOP_KEYS - {"name", "data"})},
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path inside ``value`` (the places a mutation can hit)."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append(prefix + (key,))
        found.extend(_paths(child, prefix + (key,)))
    return found


PATHS = _paths(VALID)


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict:
    spec = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = spec
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]]  # noqa: B018 - an earlier mutation may have removed it
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(parent, (dict, list)):  # an earlier mutation made it a string
            continue
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            old = parent[path[-1]]
            parent[path[-1]] = draw(yamlish.filter(lambda new, old=old: type(new) is not type(old)))
    return spec




def _check(raw: Any) -> None:
    try:
        spec = parse_spec(raw, source="fuzz.yaml", base_dir=Path("."))
    except UserError as err:
        assert str(err).startswith("fuzz.yaml: ")
        return
    assert isinstance(spec, SearchSpec)


def test_the_valid_base_parses() -> None:
    spec = parse_spec(copy.deepcopy(VALID), source="fuzz.yaml")
    assert len(spec.space) == 6 and spec.storage == VALID["storage"]


@SETTINGS
@given(yamlish)
def test_any_yaml_value(raw: Any) -> None:
    _check(raw)


@SETTINGS
@given(spec_like)
def test_any_mapping_of_spec_keys(raw: dict) -> None:
    _check(raw)


@SETTINGS
@given(mutated_specs())
def test_mutations_of_a_valid_spec(raw: dict) -> None:
    _check(raw)


@pytest.mark.parametrize(
    "points",
    [[None], [{1: 0.1, "bogus": 2}]],
    ids=["null_entry", "int_and_str_keys"],
)
def test_points_to_evaluate_bugs(points: list) -> None:
    raw = {**copy.deepcopy(VALID), "points_to_evaluate": points}
    with pytest.raises(SpecError, match=r"^fuzz.yaml: points_to_evaluate\[0\]"):
        parse_spec(raw, source="fuzz.yaml")
