"""amk.generate stops where transformers' generate stops: at the eos ids of the generation config transformers
reads, and only those. A checkpoint whose generation_config.json gives no eos_token_id decodes on (transformers does
not fall back to config.json's there, and AMK stopped at it); one without that file stops at config.json's. An
eos_token_id that is no token id is refused by file and field, where it crashed generate with a traceback."""

from __future__ import annotations

import json

import pytest
import torch
from _checkpoints import llama
from _cli import cli_json

import amk
from amk.generation import stop_tokens
from amk.schedule.errors import CheckpointError

PROMPT = [5, 17, 42, 99, 3]


def _hf_greedy(path, n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=n, do_sample=False)
    return out[0, len(PROMPT):].tolist()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint whose config.json's eos is the third greedy token, and whose generation_config.json gives none."""
    path = llama(tmp_path_factory.mktemp("gc") / "m")
    (path / "generation_config.json").unlink(missing_ok=True)
    eos = _hf_greedy(path, 3)[2]
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "eos_token_id": eos}))
    return path, eos


def test_a_generation_config_without_eos_decodes_on_as_transformers_does(checkpoint):
    path, eos = checkpoint
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1}))
    try:
        model = amk.load_model(str(path))
        assert stop_tokens(model) == set()
        got = amk.generate(model, PROMPT, max_new_tokens=8).tokens
        assert got == _hf_greedy(path, 8) and len(got) == 8
    finally:
        (path / "generation_config.json").unlink()


def test_without_a_generation_config_file_the_config_json_eos_stops_as_transformers_does(checkpoint):
    path, eos = checkpoint
    model = amk.load_model(str(path))
    assert stop_tokens(model) == {eos}
    got = amk.generate(model, PROMPT, max_new_tokens=8).tokens
    want = _hf_greedy(path, 8)
    assert got == want[:want.index(eos) + 1] and got[-1] == eos


@pytest.mark.parametrize("value", ["x", [[3]], {"a": 1}, 74.5, True, "74"])
def test_an_eos_that_is_no_token_id_is_refused_by_file_and_field(checkpoint, value, capsys):
    path, _ = checkpoint
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": value}))
    try:
        with pytest.raises(CheckpointError) as e:
            stop_tokens(amk.load_model(str(path)))
        assert e.value.field == "eos_token_id" and e.value.path.endswith("generation_config.json")
        code, out = cli_json(capsys, "generate", "--model", str(path), "--prompt-ids", "5,17", "--max-new-tokens", "2")
        assert code == 2 and "generation_config.json: eos_token_id: expected a token id" in out["error"], out
    finally:
        (path / "generation_config.json").unlink()
