"""A config.json name that neither transformers nor AMK reads (a near spelling of a field) is noted by generate and
propose too, as evaluate and compile note it: the value meant is not used, whichever verb the user ran."""

from __future__ import annotations

import json

from _checkpoints import llama

import amk


def test_generate_and_propose_note_a_misspelt_config_field(tmp_path):
    path = llama(tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "rms_norm_epsilon": 1e-3}))
    said = "config field 'rms_norm_epsilon' is read by neither transformers nor AMK"
    assert any(said in n for n in amk.evaluate(str(path), "cpu-sim", {}, cases="reduced")["notes"])
    assert any(said in n for n in amk.generate(str(path), [5, 17], max_new_tokens=2).notes)
    assert any(said in n for n in amk.propose(str(path), "cpu-sim", corpus=None)["notes"])
