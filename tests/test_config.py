import math

import pytest

from amk.schedule import ConfigError, ScheduleConfig
from amk.schedule.config import iter_knobs, with_value


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
