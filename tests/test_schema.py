"""schemas/schedule_config.schema.json: generated from the dataclasses, committed, and it accepts and rejects
exactly what ScheduleConfig.from_dict does."""

from __future__ import annotations

import copy
import json
import math

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amk.harness.schema import generate_schema, schema_path, strict_validator
from amk.schedule.config import EXPLICIT_MAP_KINDS, ScheduleConfig
from amk.schedule.space import KnobType, search_space

SPACE = search_space()
VALIDATOR = strict_validator()


def _accepts(d) -> bool:
    try:
        ScheduleConfig.from_dict(d)
        return True
    except ValueError:
        return False


def _agree(d) -> None:
    by_schema, by_parser = VALIDATOR.is_valid(d), _accepts(d)
    assert by_schema == by_parser, (json.dumps(d, default=repr)[:500], by_schema, by_parser)


def test_committed_schema_is_the_generated_one():
    committed = json.loads(schema_path().read_text())
    assert committed == generate_schema(), "run: python -m amk.harness.schema"


def test_schema_is_draft_2020_12_and_closed_everywhere():
    schema = generate_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert node.get("additionalProperties") is False, node
            for v in node.values():
                walk(v)
    walk(schema)


def test_defaults_and_empty_object_are_valid():
    assert VALIDATOR.is_valid({}) and VALIDATOR.is_valid(ScheduleConfig().to_dict())


def _set(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    node = d
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return d


@st.composite
def valid_configs(draw):
    """A dict from the search space: some knobs set to search values, others left out."""
    d: dict = {}
    for k in SPACE:
        if k.search and draw(st.booleans()):
            d = _set(d, k.path, draw(st.sampled_from(k.search)))
    if draw(st.booleans()):
        kinds = draw(st.lists(st.sampled_from(EXPLICIT_MAP_KINDS), max_size=3, unique=True))
        d = _set(d, "sm.explicit_map", {k: draw(st.lists(st.integers(0, 200), min_size=1, max_size=4)) for k in kinds})
    return d


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def mutated_configs(draw):
    d = draw(valid_configs())
    how = draw(st.sampled_from(["junk_leaf", "out_of_range", "unknown_key", "junk_section", "bad_map"]))
    knob = draw(st.sampled_from(SPACE))
    if how == "junk_leaf":
        return _set(d, knob.path, draw(JUNK))
    if how == "out_of_range" and knob.type == KnobType.INT:
        lo, hi = knob.minimum, knob.maximum
        if knob.choices is not None:
            value = draw(st.integers(-5, 5000).filter(lambda v: v not in knob.choices))
        else:
            value = draw(st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1)))
        return _set(d, knob.path, value)
    if how == "unknown_key":
        section = knob.path.rsplit(".", 1)[0] if "." in knob.path else ""
        key = draw(st.text(min_size=1, max_size=6))
        return _set(d, f"{section}.{key}" if section else key, draw(JUNK))
    if how == "junk_section":
        return _set(d, knob.path.split(".")[0], draw(JUNK))
    return _set(d, "sm.explicit_map", draw(st.dictionaries(
        st.one_of(st.sampled_from(EXPLICIT_MAP_KINDS), st.text(max_size=5)),
        st.one_of(JUNK, st.lists(st.one_of(st.integers(-3, 5000), st.booleans(), st.floats()), max_size=3)),
        max_size=3)))


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs())
def test_valid_configs_from_the_space_pass_both(d):
    assert VALIDATOR.is_valid(d) and _accepts(d)


@settings(max_examples=800, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_schema_and_parser_agree_on_mutated_configs(d):
    _agree(d)


def test_known_divergence_of_plain_json_schema_is_closed_by_the_strict_validator():
    # JSON Schema calls 4.0 an integer; AMK does not. The strict validator (and the schema's description)
    # say so; everything else is plain draft 2020-12.
    d = {"pipelining_depth": 2.0}
    assert jsonschema.Draft202012Validator(generate_schema()).is_valid(d)
    assert not VALIDATOR.is_valid(d) and not _accepts(d)
    for bad in ({"pipelining_depth": True}, {"pipelining_depth": math.nan}, {"pipelining_depth": math.inf}):
        assert not jsonschema.Draft202012Validator(generate_schema()).is_valid(bad) and not _accepts(bad)
