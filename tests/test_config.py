import copy
import math
from dataclasses import dataclass

import pytest

from amk.schedule import ConfigError, ScheduleConfig
from amk.schedule.config import get_path, iter_knobs, knob, parse_dataclass, to_jsonable, with_value


def test_round_trip_and_schedule_id():
    cfg = ScheduleConfig()
    again = ScheduleConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.schedule_id == cfg.schedule_id
    other = with_value(cfg, "matvec.o.rows_per_task", 32)
    assert other.schedule_id != cfg.schedule_id


@pytest.mark.parametrize("bad, path", [
    ({"bogus": 1}, "$.bogus"),
    ({"matvec": {"qkv": {"k_splits": "2"}}}, "$.matvec.qkv.k_splits"),
    ({"matvec": {"o": {"rows_per_task": True}}}, "$.matvec.o.rows_per_task"),
    ({"matvec": {"o": {"rows_per_task": -3}}}, "$.matvec.o.rows_per_task"),
    ({"attention": {"kv_partitions": 10 ** 9}}, "$.attention.kv_partitions"),
    ({"attention": {"sync": "sometimes"}}, "$.attention.sync"),
    ({"threads_per_block": 300}, "$.threads_per_block"),
    ({"sm": {"explicit_map": {"qkv": [0, "x"]}}}, "$.sm.explicit_map.qkv[1]"),
    ({"sm": {"explicit_map": {"nope": [0]}}}, "$.sm.explicit_map.nope"),
    ({"fusion": []}, "$.fusion"),
    ({"pipelining_depth": math.nan}, "$.pipelining_depth"),
])
def test_bad_fields_name_their_path(bad, path):
    with pytest.raises(ConfigError) as e:
        ScheduleConfig.from_dict(bad)
    assert e.value.path == path


@pytest.mark.parametrize("junk", [None, [], "x", 3, 2.5])
def test_non_object_rejected(junk):
    with pytest.raises(ConfigError):
        ScheduleConfig.from_dict(junk)


def test_every_knob_has_help_and_search_values():
    for path, f, _ in iter_knobs():
        assert f.metadata["help"], path
        if path != "sm.explicit_map":
            assert f.metadata["search"], path


# ---- one definition of every default ---------------------------------------------------------------------

def _partial(path: str, value) -> dict:
    d: dict = {}
    node = d
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return d


def _other_value(knob):
    if knob.type.value == "object":
        return {"qkv": [0, 1]}
    values = [v for v in (knob.choices or knob.search or ()) if v != knob.default]
    if values:
        return values[0]
    if knob.default is None:
        return int(knob.minimum or 1)
    return knob.default + 1 if isinstance(knob.default, int) else not knob.default


def test_partial_nested_object_keeps_the_field_defaults():
    # {"matvec": {"lm_head": {"k_splits": 1}}} names no knob off its default: it is the default config
    for partial in ({"matvec": {"lm_head": {"k_splits": 1}}}, {"matvec": {"gate_up": {"k_splits": 1}}},
                    {"matvec": {"o": {}}}, {"matvec": {}}, {"build": {}}):
        cfg = ScheduleConfig.from_dict(partial)
        assert cfg == ScheduleConfig() and cfg.schedule_id == ScheduleConfig().schedule_id, partial
    cfg = ScheduleConfig.from_dict({"matvec": {"lm_head": {"k_splits": 2}}})
    default = ScheduleConfig().matvec
    assert (cfg.matvec.lm_head.rows_per_task, cfg.matvec.gate_up.rows_per_task) == (
        default.lm_head.rows_per_task, default.gate_up.rows_per_task)


def test_every_knob_of_every_nested_object_round_trips_from_a_partial_dict():
    from amk.schedule.space import search_space

    default = ScheduleConfig().to_dict()
    for k in search_space():
        value = _other_value(k)
        cfg = ScheduleConfig.from_dict(_partial(k.path, value))
        expect = copy.deepcopy(default)
        node = expect
        parts = k.path.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
        assert cfg.to_dict() == expect, k.path  # only the named knob moved
        assert ScheduleConfig.from_dict(cfg.to_dict()) == cfg
        assert with_value(ScheduleConfig(), k.path, value) == cfg


def test_defaults_are_not_shared_between_configs():
    a = ScheduleConfig()
    a.matvec.o.rows_per_task = 3
    a.sm.explicit_map["qkv"] = [0]
    assert ScheduleConfig().matvec.o.rows_per_task is None and ScheduleConfig().sm.explicit_map == {}


def test_schema_search_space_and_parser_share_every_default():
    from amk.harness.schema import generate_schema
    from amk.schedule.space import search_space

    schema = generate_schema()
    for k in search_space():
        node = schema
        for p in k.path.split("."):
            node = node["properties"][p]
        want = to_jsonable(get_path(ScheduleConfig(), k.path))
        assert node["default"] == want == k.default, k.path


# ---- every problem at once -------------------------------------------------------------------------------

def test_config_errors_list_every_problem_with_the_closest_key():
    bad = {"matvec": {"lm_head": {"rows_per_tsk": 64, "k_splits": 99}}, "atention": {},
           "attention": {"softmax": "partiton"}, "sm": {"explicit_map": {"qvk": [0], "o": [-1]}}}
    with pytest.raises(ConfigError) as e:
        ScheduleConfig.from_dict(bad)
    got = [(p.path, p.message) for p in e.value.problems]
    assert [p for p, _ in got] == ["$.matvec.lm_head.rows_per_tsk", "$.matvec.lm_head.k_splits", "$.atention",
                                   "$.attention.softmax", "$.sm.explicit_map.qvk", "$.sm.explicit_map.o[0]"]
    assert "did you mean 'rows_per_task'?" in got[0][1] and "did you mean 'attention'?" in got[2][1]
    assert "did you mean 'partition'?" in got[3][1] and "did you mean 'qkv'?" in got[4][1]
    assert (e.value.path, e.value.reason) == got[0]
    assert str(e.value).count("$.") == 6


def test_a_dotted_knob_path_as_a_key_is_shown_nested():
    for bad, nested in (({"matvec.qkv.k_splits": 2}, '{"matvec": {"qkv": {"k_splits": VALUE}}}'),
                        ({"attention.sync": 1}, '{"attention": {"sync": VALUE}}'),  # a near miss of `attention`
                        ({"matvec": {"qkv.k_splits": 2}}, '{"qkv": {"k_splits": VALUE}}')):
        with pytest.raises(ConfigError) as e:
            ScheduleConfig.from_dict(bad)
        assert e.value.problems[0].message.endswith(f"written nested in a config: {nested}")
    with pytest.raises(ConfigError, match="allowed: attention"):  # not a knob's path: the usual listing
        ScheduleConfig.from_dict({"foo.bar": 1})


# ---- knobs declared `int | None` (null: derived at lowering) ----------------------------------------------

@dataclass
class _Tiling:
    rows_per_task: int | None = knob(None, help="rows; null: derived", minimum=1, maximum=64,
                                     search=[None, 8, 16, 32])
    k_splits: int = knob(1, help="splits", minimum=1, maximum=4, search=[1, 2])


@dataclass
class _Config:
    tiling: _Tiling = knob(_Tiling(), help="a tiling")
    fixed: _Tiling = knob(_Tiling(16), help="a tiling whose default is not derived")

    def to_dict(self):
        return to_jsonable(self)


def test_optional_int_knob_parses_null_and_only_there():
    cfg = parse_dataclass(_Config, {})
    assert cfg.tiling.rows_per_task is None and cfg.fixed.rows_per_task == 16
    # a partial object merges onto its field's default (16), not its class's (null)
    assert parse_dataclass(_Config, {"fixed": {"k_splits": 2}}).fixed == _Tiling(16, 2)
    assert parse_dataclass(_Config, {"fixed": {"rows_per_task": None}}).fixed.rows_per_task is None
    assert parse_dataclass(_Config, {"tiling": {"rows_per_task": 8}}).tiling.rows_per_task == 8
    with pytest.raises(ConfigError) as e:
        parse_dataclass(_Config, {"tiling": {"k_splits": None, "rows_per_task": 65}})
    assert [(p.path, p.message) for p in e.value.problems] == [
        ("$.tiling.k_splits", "expected an integer, got null"), ("$.tiling.rows_per_task", "must be <= 64, got 65")]
    assert to_jsonable(cfg) == {"tiling": {"rows_per_task": None, "k_splits": 1},
                                "fixed": {"rows_per_task": 16, "k_splits": 1}}
    assert parse_dataclass(_Config, to_jsonable(cfg)) == cfg
    assert with_value(cfg, "fixed.rows_per_task", None).fixed.rows_per_task is None
    assert with_value(cfg, "tiling.rows_per_task", 32).tiling.rows_per_task == 32
    with pytest.raises(ConfigError):
        ScheduleConfig.from_dict({"matvec": {"o": {"k_splits": None}}})  # plain int knobs refuse null


def test_optional_int_knob_in_the_schema_and_the_search_space():
    from amk.harness.schema import generate_schema, strict_validator
    from amk.schedule.space import search_space

    schema = generate_schema(_Config)
    rows = schema["properties"]["tiling"]["properties"]["rows_per_task"]
    assert rows["type"] == ["integer", "null"] and rows["default"] is None and rows["minimum"] == 1
    assert schema["properties"]["fixed"]["properties"]["rows_per_task"]["default"] == 16
    assert schema["properties"]["tiling"]["properties"]["k_splits"]["type"] == "integer"
    v = strict_validator(schema)
    assert v.is_valid({"tiling": {"rows_per_task": None}}) and not v.is_valid({"tiling": {"k_splits": None}})
    assert not v.is_valid({"tiling": {"rows_per_task": 8.0}})
    knobs = {k.path: k for k in search_space("h100-sxm", cls=_Config)}
    rows = knobs["tiling.rows_per_task"]
    assert rows.nullable and rows.default is None and rows.default_text == "derived"
    assert rows.search == (None, 8, 16, 32) and rows.to_dict()["nullable"] is True
    assert knobs["fixed.rows_per_task"].default_text == "16" and not knobs["tiling.k_splits"].nullable


@pytest.mark.parametrize("text, message", [
    ('{"sm": {"explicit_map": {"o": [null, true, "x"]}}}',
     '$.sm.explicit_map.o[0]: expected an SM id in [0, 4096), got null; $.sm.explicit_map.o[1]: expected an SM id in '
     '[0, 4096), got a boolean (true); $.sm.explicit_map.o[2]: expected an SM id in [0, 4096), got a string ("x")'),
    ('{"sm": {"explicit_map": {"o": 7}}}', "$.sm.explicit_map.o: expected a non-empty list of SM ids, got an integer (7)"),
    ('{"sm": {"explicit_map": {"o": []}}}', "$.sm.explicit_map.o: expected a non-empty list of SM ids, got an empty array"),
    ('{"threads_per_block": true, "threads_per_block": null}',
     "$.threads_per_block: given twice in one JSON object (values true and null)"),
    ('{"threads_per_block": "' + "a" * 300 + '"}',
     '$.threads_per_block: expected an integer, got a string ("' + "a" * 59 + '... (302 characters))'),
    ('{"attention": {"softmax": "' + "b" * 3000 + '"}}',
     "$.attention.softmax: expected one of ['global', 'partition'], got \"" + "b" * 59 + "... (3002 characters)"),
])
def test_a_config_error_quotes_the_value_as_json_and_cut_short(text, message):
    # a config is JSON whatever built it: values in JSON's words, and a long one cut where it says so
    from amk.harness.verdict import parse_config

    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert str(e.value).startswith(message), str(e.value)


def test_numpy_scalars_in_a_config_dict_are_the_json_values_they_hold():
    np = pytest.importorskip("numpy")
    got = ScheduleConfig.from_dict({"threads_per_block": np.int64(256), "attention": {"kv_partitions": np.int32(4)},
                                    "build": {"tagged_hidden": np.bool_(True)}})
    plain = ScheduleConfig.from_dict({"threads_per_block": 256, "attention": {"kv_partitions": 4},
                                      "build": {"tagged_hidden": True}})
    assert got == plain and type(got.threads_per_block) is int and type(got.build.tagged_hidden) is bool
    for bad, message in (({"threads_per_block": np.bool_(True)}, "expected an integer"),
                         ({"threads_per_block": np.float64(256.0)}, "expected an integer"),
                         ({"build": {"tagged_hidden": np.int64(1)}}, "expected a boolean")):
        with pytest.raises(ConfigError, match=message):
            ScheduleConfig.from_dict(bad)
