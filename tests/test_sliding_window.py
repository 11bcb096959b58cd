"""Sliding-window attention (Mistral's sliding_window, Qwen2's use_sliding_window + max_window_layers) on the
ReferenceVM in fp32 against transformers, positions on both sides of the window."""

from __future__ import annotations

import pytest
import torch
from _checkpoints import mistral_window, qwen2_window, with_windows

import amk
from amk.eval.oracle import verify
from amk.schedule.opcodes import Opcode

CONFIGS = [{}, {"attention": {"kv_partitions": 1}}, {"attention": {"softmax": "global"}},
           {"attention": {"kv_partitions": 8, "softmax": "partition", "sync": "stage"}},
           {"attention": {"kv_partitions": 8, "combine": "stage"}},
           {"attention": {"kv_partitions": 8, "combine": "last_partition"}}]


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    return amk.load_model(mistral_window(tmp_path_factory.mktemp("mistral")))


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return amk.load_model(qwen2_window(tmp_path_factory.mktemp("qwen2")))


def _failures(res):
    return [(c.case, c.message[:160]) for c in res.cases if not c.passed]


def test_mistral_window_is_lowered_into_every_attention_task(mistral):
    assert mistral.dims.windows == (8,)
    for cfg in CONFIGS:
        prog = amk.lower(mistral, "cpu-sim", cfg)
        attn = [t for t in prog.tasks if t.opcode in (Opcode.ATTN_DECODE, Opcode.ATTN_SCORES, Opcode.ATTN_VALUES,
                                                      Opcode.ATTN_PARTIAL)]
        assert attn and all(t.params.window == 8 for t in attn), cfg


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: str(c) or "default")
def test_mistral_sliding_window_matches_transformers(mistral, cfg):
    prog = amk.lower(mistral, "cpu-sim", cfg)
    res = verify(prog, mistral)  # pos0, pos1 (inside the window), pos32, pos61, tokens8, greedy32 (across it)
    assert {c.case for c in res.cases} >= {"pos1", "pos61_near_limit", "greedy32"}
    assert res.ok, _failures(res)


@pytest.mark.parametrize("windows", [(), (7,), (9,)], ids=["ignored", "one-short", "one-long"])
def test_a_wrong_window_fails_verify(mistral, windows):
    # what the lowering did before (no window), and both off-by-one readings of sliding_window
    wrong = with_windows(mistral, windows)
    res = verify(amk.lower(wrong, "cpu-sim", {}), wrong, cases="reduced")
    assert not res.ok
    assert "pos0" not in {n for n, _ in _failures(res)}  # the first position sees one key whatever the window


def test_qwen2_windows_only_the_layers_from_max_window_layers(qwen2):
    assert qwen2.dims.windows == (0, 8)
    res = verify(amk.lower(qwen2, "cpu-sim", {}), qwen2)
    assert res.ok, _failures(res)
    for wrong in ((), (8, 8)):
        bad = with_windows(qwen2, wrong)
        assert not verify(amk.lower(bad, "cpu-sim", {}), bad, cases="reduced").ok, wrong


def test_generate_matches_transformers_64_tokens_past_the_window(tmp_path):
    model = amk.load_model(mistral_window(tmp_path, window=8, max_pos=128))
    ids, n = [3, 17, 101, 42, 7], 80  # the last token sits at position 84: 76 past the window
    ref = model.eager.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    got = amk.generate(model, ids, max_new_tokens=n, device="cpu", stop_at_eos=False)
    assert got.tokens == ref
    # the same model with the window ignored drifts away from transformers
    assert amk.generate(with_windows(model, ()), ids, max_new_tokens=n, device="cpu", stop_at_eos=False).tokens != ref


def test_qwen3_windows_its_layers_like_qwen2(tmp_path):
    from _checkpoints import SMALL, save_checkpoint
    from transformers import Qwen3Config

    cfg = Qwen3Config(**SMALL, head_dim=16, num_hidden_layers=2, max_position_embeddings=64, use_sliding_window=True,
                      sliding_window=6, max_window_layers=1)
    model = amk.load_model(save_checkpoint(cfg, tmp_path))
    assert model.dims.windows == (0, 6) and model.dims.qk_norm
    res = verify(amk.lower(model, "cpu-sim", {"attention": {"softmax": "partition"}}), model)
    assert res.ok, _failures(res)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_transformers_disagrees_with_itself_at_a_window_of_one(tmp_path, family):
    # why a window of 1 is refused (amk.models.fields): the last position's logits through the cache differ from
    # the whole sequence's forward at a window of 1, and agree at a window of 2. Should transformers mend its
    # cache, this fails and the refusal can go.
    from transformers import AutoModelForCausalLM

    from amk.eval.cases import cache_kwargs

    make = mistral_window if family == "mistral" else qwen2_window
    ids = torch.tensor([[3, 17, 101, 42, 7]])

    def gaps(window: int) -> tuple[float, float]:
        eager = AutoModelForCausalLM.from_pretrained(make(tmp_path / f"w{window}", window=window)).eval()
        with torch.no_grad():
            full = eager(ids).logits[0, -1]
            past = eager(ids[:, :-1], use_cache=True).past_key_values
            cached = eager(ids[:, -1:], **cache_kwargs(eager, past)).logits[0, -1]
        return float((full - cached).abs().max()), float(full.abs().max())

    (gap1, scale1), (gap2, scale2) = gaps(1), gaps(2)
    assert gap1 > 1e-2 * scale1
    assert gap2 < 1e-5 * scale2


@pytest.mark.parametrize("window", [64, 2**31], ids=["context", "past-int32"])
def test_a_window_that_holds_the_whole_context_is_full_attention(tmp_path, window):
    # no position of a 64-position program reaches the edge of such a window: its tasks attend to every cached
    # position (window 0), and a window past int32 still lowers, validates and verifies
    model = amk.load_model(mistral_window(tmp_path / "m", window=window))
    assert model.dims.windows == (window,)
    prog = amk.lower(model, "cpu-sim", {})
    assert amk.validate(prog, "cpu-sim").ok
    attn = [t for t in prog.tasks if t.opcode == Opcode.ATTN_PARTIAL]
    assert attn and all(t.params.window == 0 for t in attn)
    res = verify(prog, model, cases="reduced")
    assert res.ok, _failures(res)


def test_a_mistral_config_with_layer_types_is_refused_by_that_field(tmp_path):
    # transformers reads it as another architecture (ministral): the refusal names the field the user wrote
    import json

    path = mistral_window(tmp_path, window=8, layers=2)
    raw = json.loads((path / "config.json").read_text())
    raw["layer_types"] = ["sliding_attention", "full_attention"]
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(amk.UnsupportedModelError, match="layer_types") as e:
        amk.load_model(path)
    assert e.value.feature == "layer_types"
