"""`amk bench` refusing a verify record of another program names what differs from it (dtype, gpu, max_seq,
config), where it blamed the config for any difference, flags included."""

from __future__ import annotations

import json

import pytest
from _cli import cli_json


@pytest.fixture()
def verified(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, rec = cli_json(capsys, "verify", "--model", "toy", "--cases", "reduced")
    assert code == 0 and rec["passed"] and rec["max_seq"] is None
    assert json.loads((tmp_path / "verify_result.json").read_text())["max_seq"] is None
    return tmp_path


@pytest.mark.parametrize("flags,named", [
    (["--dtype", "bf16"], "dtype bf16, where verify had fp32"),
    (["--max-seq", "64"], "max_seq 64, where verify had the default"),
    (["--gpu", "h100-sxm", "--dtype", "fp32"], "gpu h100-sxm, where verify had cpu-sim"),
    (["--config", '{"threads_per_block": 128}'], "the config, which differs from verify's"),
])
def test_the_refusal_names_the_setting_that_differs(verified, capsys, flags, named):
    code, out = cli_json(capsys, "bench", "--model", "toy", *flags)
    assert code == 2 and out["error_type"] == "unverified"
    assert named in out["error"] and "this config lowers" not in out["error"], out["error"]
    assert not any(other in out["error"] for other in ("dtype", "max_seq", "gpu ", "the config")
                   if other not in named), out["error"]


def test_a_record_without_max_seq_blames_no_setting_it_cannot_tell(verified, capsys):
    path = verified / "verify_result.json"
    rec = json.loads(path.read_text())
    del rec["max_seq"]  # a record of an older version
    path.write_text(json.dumps(rec))
    code, out = cli_json(capsys, "bench", "--model", "toy", "--max-seq", "64")
    assert code == 2 and "but this program lowers to program" in out["error"], out["error"]
    code, out = cli_json(capsys, "bench", "--model", "toy")
    assert code == 0 and out["verified"] is True
