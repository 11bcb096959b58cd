"""A ScheduleConfig edited by hand in Python is held to what the dict parser holds a config dict to: a misspelt field
is refused naming its dotted path and the field meant, a nested dict is parsed as the dict path parses it, to_dict and
schedule_id refuse what from_dict refuses (numpy scalars read as the JSON values they hold), and with_value takes a
config dict, refusing anything else naming its `config` argument."""

import copy
import dataclasses
import pickle
import random

import numpy as np
import pytest

from amk.schedule import ConfigError, ScheduleConfig
from amk.schedule.config import (
    MatvecConfig,
    RowTiling,
    ScratchPolicy,
    UnknownFieldError,
    get_path,
    iter_knobs,
    to_jsonable,
    with_value,
    with_values,
)


def _refused(assign) -> UnknownFieldError:
    with pytest.raises(UnknownFieldError) as e:
        assign()
    return e.value


# ---- 1. a name that is no field --------------------------------------------------------------------------------

@pytest.mark.parametrize("where, name, path, meant", [
    ("matvec.lm_head", "k_split", "$.matvec.lm_head.k_split", "k_splits"),
    ("matvec.o", "k_split", "$.matvec.o.k_split", "k_splits"),
    ("matvec.gate_up", "rows_per_tsk", "$.matvec.gate_up.rows_per_tsk", "rows_per_task"),
    ("matvec.qkv", "head_split", "$.matvec.qkv.head_split", "head_splits"),
    ("attention", "kv_partition", "$.attention.kv_partition", "kv_partitions"),
    ("build", "taged_residual", "$.build.taged_residual", "tagged_residual"),
    ("", "pipelining_dept", "$.pipelining_dept", "pipelining_depth"),
])
def test_a_misspelt_field_is_refused_naming_its_dotted_path_and_the_field_meant(where, name, path, meant):
    cfg = ScheduleConfig()
    obj = get_path(cfg, where) if where else cfg
    err = _refused(lambda: setattr(obj, name, 2))
    assert isinstance(err, ConfigError) and isinstance(err, AttributeError)
    assert err.path == path and str(err).startswith(f"{path}: unknown field; did you mean {meant!r}?")
    assert name not in vars(obj) and cfg == ScheduleConfig()  # nothing was set
    assert cfg.schedule_id == ScheduleConfig().schedule_id


def test_the_path_is_named_on_parsed_copied_and_pickled_configs():
    parsed = ScheduleConfig.from_dict({"matvec": {"down": {"k_splits": 2}}})
    for cfg in (parsed, copy.deepcopy(parsed), pickle.loads(pickle.dumps(parsed)),
                dataclasses.replace(parsed, scratch=ScratchPolicy.NONE)):
        assert _refused(lambda c=cfg: setattr(c.matvec.down, "k_split", 4)).path == "$.matvec.down.k_split"
        assert _refused(lambda c=cfg: setattr(c.matvec.lm_head, "k_split", 4)).path == "$.matvec.lm_head.k_split"
    # a tiling no config holds yet is named from itself
    assert _refused(lambda: setattr(RowTiling(), "k_split", 4)).path == "$.k_split"


def test_a_moved_knob_assigned_by_hand_names_its_successor():
    err = _refused(lambda: setattr(ScheduleConfig().fusion, "attention_combine_into_o", True))
    assert err.path == "$.fusion.attention_combine_into_o" and "it became attention.combine" in str(err)


def test_the_refusal_pickles_as_itself():
    err = _refused(lambda: setattr(ScheduleConfig().matvec.lm_head, "k_split", 2))
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is UnknownFieldError and again.path == err.path and str(again) == str(err)


def test_fields_are_still_assigned_replaced_and_copied():
    cfg = ScheduleConfig()
    cfg.matvec.lm_head.k_splits = 2
    cfg.attention.kv_partitions = 4
    cfg.scratch = ScratchPolicy.LINEAR
    cfg.threads_per_block = 7  # a bad value is taken here, and refused where the config is read (below)
    cfg.threads_per_block = 256
    want = ScheduleConfig.from_dict({"matvec": {"lm_head": {"k_splits": 2}}, "attention": {"kv_partitions": 4},
                                     "scratch": "linear", "threads_per_block": 256})
    assert cfg == want and cfg.schedule_id == want.schedule_id
    assert copy.deepcopy(cfg) == cfg and copy.copy(cfg) == cfg and pickle.loads(pickle.dumps(cfg)) == cfg
    replaced = dataclasses.replace(cfg, matvec=dataclasses.replace(cfg.matvec, o=RowTiling(32)))
    assert replaced.matvec.o.rows_per_task == 32 and replaced.matvec.lm_head.k_splits == 2
    assert "_config_field" not in repr(cfg) and "_config_field" not in cfg.to_dict()


# ---- 2. a nested dict, numpy scalars -----------------------------------------------------------------------------

def test_a_nested_dict_is_parsed_as_the_dict_path_parses_it():
    data = {"matvec": {"lm_head": {"k_splits": 2}}, "attention": {"kv_partitions": 4}}
    want = ScheduleConfig.from_dict(data)
    cfg = ScheduleConfig(**data)
    assert isinstance(cfg.matvec, MatvecConfig) and isinstance(cfg.matvec.lm_head, RowTiling)
    assert cfg == want and cfg.schedule_id == want.schedule_id
    assert cfg.to_dict() == want.to_dict()
    later = ScheduleConfig()
    later.matvec = {"lm_head": {"k_splits": 2}}
    later.attention = {"kv_partitions": 4}
    later.matvec.o = {"rows_per_task": 32}
    assert later == with_value(want, "matvec.o.rows_per_task", 32)


def test_evaluate_reports_the_schedule_id_of_a_nested_dict_config():
    import amk

    cfg = ScheduleConfig(matvec={"lm_head": {"k_splits": 2}})
    assert amk.evaluate("toy", "cpu-sim", cfg)["schedule_id"] == cfg.schedule_id


def test_a_bad_nested_dict_is_refused_by_name():
    with pytest.raises(ConfigError) as e:
        ScheduleConfig(matvec={"lm_head": {"k_split": 2}})
    assert e.value.path == "$.matvec.lm_head.k_split" and "did you mean 'k_splits'?" in str(e.value)
    cfg = ScheduleConfig()
    with pytest.raises(ConfigError) as e:
        cfg.matvec.lm_head = {"k_splits": 99}
    assert e.value.path == "$.matvec.lm_head.k_splits" and "must be <= 16" in str(e.value)
    assert cfg == ScheduleConfig()


def test_numpy_scalars_are_the_json_values_they_hold():
    cfg = ScheduleConfig(pipelining_depth=np.int64(2), matvec={"lm_head": {"k_splits": np.int32(2)}})
    cfg.fusion.norm_into_matvec = np.bool_(False)
    cfg.attention.kv_partitions = np.int16(4)
    data = {"pipelining_depth": 2, "matvec": {"lm_head": {"k_splits": 2}}, "fusion": {"norm_into_matvec": False},
            "attention": {"kv_partitions": 4}}
    want = ScheduleConfig.from_dict(data)
    assert cfg.schedule_id == want.schedule_id and cfg.to_dict() == want.to_dict()
    assert type(cfg.to_dict()["pipelining_depth"]) is int
    cfg.pipelining_depth = np.bool_(True)  # a numpy boolean is no integer, as in a dict
    with pytest.raises(ConfigError) as e:
        _ = cfg.schedule_id
    assert e.value.path == "$.pipelining_depth" and "expected an integer, got a boolean (true)" in str(e.value)


# ---- 3. to_dict and schedule_id refuse what from_dict refuses ------------------------------------------------------

@pytest.mark.parametrize("edit, data", [
    (lambda c: setattr(c, "pipelining_depth", 99), {"pipelining_depth": 99}),
    (lambda c: setattr(c, "threads_per_block", "512"), {"threads_per_block": "512"}),
    (lambda c: setattr(c.matvec.o, "k_splits", True), {"matvec": {"o": {"k_splits": True}}}),
    (lambda c: setattr(c.matvec.qkv, "head_splits", 2.0), {"matvec": {"qkv": {"head_splits": 2.0}}}),
    (lambda c: setattr(c.attention, "softmax", "partiton"), {"attention": {"softmax": "partiton"}}),
    (lambda c: setattr(c, "matvec", 5), {"matvec": 5}),
    (lambda c: setattr(c.matvec, "o", c.matvec.qkv), {"matvec": {"o": to_jsonable(ScheduleConfig().matvec.qkv)}}),
    (lambda c: setattr(c.sm, "explicit_map", {"qkv": [0, "x"]}), {"sm": {"explicit_map": {"qkv": [0, "x"]}}}),
    (lambda c: setattr(c.fusion, "rope_kv_into_qkv", 1), {"fusion": {"rope_kv_into_qkv": 1}}),
])
def test_schedule_id_and_to_dict_refuse_a_bad_value_as_from_dict_does(edit, data):
    with pytest.raises(ConfigError) as want:
        ScheduleConfig.from_dict(data)
    cfg = ScheduleConfig()
    edit(cfg)
    for read in (lambda: cfg.schedule_id, cfg.to_dict, cfg.canonical_json):
        with pytest.raises(ConfigError) as got:
            read()
        assert type(got.value) is ConfigError and got.value.problems == want.value.problems


def test_every_problem_is_named_at_once():
    cfg = ScheduleConfig(pipelining_depth=99)
    cfg.threads_per_block = "512"
    with pytest.raises(ConfigError) as e:
        cfg.to_dict()
    assert [p.path for p in e.value.problems] == ["$.pipelining_depth", "$.threads_per_block"]


def test_a_valid_config_keeps_its_id():
    # the check runs beside to_jsonable, never in place of it: every searched value of every knob, and random
    # mixes of them, give the JSON form and the id they always had (sm.explicit_map and enums as strings included)
    rng = random.Random(7)
    configs = [ScheduleConfig(), with_value(ScheduleConfig(), "sm.explicit_map", {"qkv": [0, 1], "down": [2]})]
    for path, f, _ in iter_knobs():
        for value in f.metadata.get("search") or []:
            configs.append(with_value(ScheduleConfig(), path, to_jsonable(value)))
    knobs = [(p, f.metadata["search"]) for p, f, _ in iter_knobs() if f.metadata.get("search")]
    for _ in range(50):
        cfg = ScheduleConfig()
        for path, values in rng.sample(knobs, 6):
            cfg = with_value(cfg, path, to_jsonable(rng.choice(values)))
        configs.append(cfg)
    for cfg in configs:
        assert cfg.to_dict() == to_jsonable(cfg)
        assert cfg.schedule_id == ScheduleConfig.from_dict(to_jsonable(cfg)).schedule_id
    by_hand = ScheduleConfig()
    by_hand.scratch = "linear"  # an enum field given its JSON value
    by_hand.sm.explicit_map = {"qkv": (0, np.int64(1))}
    assert by_hand.to_dict() == with_values(ScheduleConfig(), {"scratch": "linear",
                                                               "sm.explicit_map": {"qkv": [0, 1]}}).to_dict()


# ---- 4. with_value's config ----------------------------------------------------------------------------------------

def test_with_value_parses_a_config_dict():
    data = {"scratch": "none", "matvec": {"lm_head": {"k_splits": 2}}}
    want = with_value(ScheduleConfig.from_dict(data), "pipelining_depth", 1)
    got = with_value(data, "pipelining_depth", 1)
    assert type(got) is ScheduleConfig and got == want and got.scratch == ScratchPolicy.NONE
    assert with_value(ScheduleConfig().to_dict(), "scratch", "linear") == ScheduleConfig(scratch=ScratchPolicy.LINEAR)
    assert with_values(data, {"pipelining_depth": 1}) == want
    assert with_values(data, {"matvec": {"o": {"k_splits": 2}}, "matvec.o.k_splits": 4}).matvec.o.k_splits == 4
    assert data == {"scratch": "none", "matvec": {"lm_head": {"k_splits": 2}}}  # not changed
    with pytest.raises(ConfigError) as e:  # the knobs allowed are the whole config's, not the dict's own keys
        with_value({"scratch": "none"}, "pipelining_dept", 1)
    assert e.value.path == "$.pipelining_dept" and "did you mean 'pipelining_depth'?" in str(e.value)
    assert e.value.argument is None


@pytest.mark.parametrize("config", [{"scratch": "nne"}, {"matvec": {"lm_head": {"k_split": 2}}}])
def test_with_value_names_config_for_a_bad_config_dict(config):
    for call in (lambda: with_value(config, "pipelining_depth", 1),
                 lambda: with_values(config, {"pipelining_depth": 1})):
        with pytest.raises(ConfigError) as e:
            call()
        assert e.value.argument == "config" and str(e.value).startswith("config: $.")


@pytest.mark.parametrize("config", [None, 3, "scratch", ["scratch"], ScheduleConfig])
def test_with_value_names_config_for_anything_else(config):
    for call in (lambda: with_value(config, "scratch", "linear"), lambda: with_values(config, {"scratch": "linear"})):
        with pytest.raises(ConfigError) as e:
            call()
        assert e.value.argument == "config" and e.value.path == "$"
        assert str(e.value).startswith("config: $: expected a ScheduleConfig")


def test_with_value_still_replaces_a_bad_value_set_by_hand():
    cfg = ScheduleConfig()
    cfg.threads_per_block = 7
    assert with_value(cfg, "threads_per_block", 256).threads_per_block == 256
