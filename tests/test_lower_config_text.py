"""amk.lower reads a config's JSON text as evaluate() does (schedule/config_text.py, one reader): a key given twice
in one object is a ConfigError naming it, not its last value silently; UTF-8 bytes are JSON text too; a string
that names a file is pointed out; anything that is no object is refused by name."""

from __future__ import annotations

import json

import pytest

import amk
from amk.harness.verdict import parse_config as parse_config_of_harness
from amk.schedule.config_text import parse_config
from amk.schedule.errors import ConfigError


@pytest.fixture(scope="module")
def toy():
    return amk.load_model("toy", dtype="fp32", weights=False)


def test_a_key_given_twice_is_refused_by_name(toy):
    with pytest.raises(ConfigError) as e:
        amk.lower(toy, "cpu-sim", '{"pipelining_depth": 1, "pipelining_depth": 2}')
    assert e.value.path == "$.pipelining_depth" and "given twice" in str(e.value)


def test_utf8_bytes_are_json_text(toy):
    text = json.dumps({"matvec": {"qkv": {"heads_per_task": 2}}})
    by_text = amk.lower(toy, "cpu-sim", text, max_seq=64)
    by_bytes = amk.lower(toy, "cpu-sim", text.encode(), max_seq=64)
    assert by_bytes.fingerprint() == by_text.fingerprint()
    assert by_text.fingerprint() != amk.lower(toy, "cpu-sim", {}, max_seq=64).fingerprint()


def test_a_file_name_is_pointed_out(toy, tmp_path):
    f = tmp_path / "cfg.json"
    f.write_text("{}")
    with pytest.raises(ConfigError, match="looks like a file name"):
        amk.lower(toy, "cpu-sim", str(f))


@pytest.mark.parametrize("bad", [3, [1, 2], "[]", "null"])
def test_no_object_is_refused(toy, bad):
    with pytest.raises(ConfigError) as e:
        amk.lower(toy, "cpu-sim", bad)
    assert e.value.path == "$" and "expected a config object" in str(e.value)


def test_none_is_the_defaults(toy):
    assert amk.lower(toy, "cpu-sim", None, max_seq=64).fingerprint() == amk.lower(toy, "cpu-sim", {}, max_seq=64).fingerprint()


def test_the_harness_reads_with_the_same_reader():
    assert parse_config_of_harness is parse_config
