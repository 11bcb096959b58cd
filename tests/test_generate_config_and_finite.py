"""amk.generate against transformers' generate on what a checkpoint's generation config asks: its eos ids (a list,
as Llama 3 ships end-of-turn ids) stop decoding where transformers stops, and what greedy decoding does not apply
(a repetition penalty, sampling) is named in the notes; logits that are not finite are named too."""

from __future__ import annotations

import torch
from _checkpoints import llama, save_checkpoint

import amk

PROMPT = [1, 5, 9]


def _hf_generate(path, n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    out = hf.generate(torch.tensor([PROMPT]), max_new_tokens=n, do_sample=False)
    return out[0, len(PROMPT):].tolist()


def test_decoding_stops_at_the_generation_configs_eos_list_as_transformers_does(tmp_path):
    from transformers import GenerationConfig

    path = llama(tmp_path / "m", num_hidden_layers=2, eos_token_id=2)
    free = amk.generate(str(path), PROMPT, max_new_tokens=8, device="cpu", stop_at_eos=False).tokens
    stop = free[2] if free[2] not in free[:2] else free[1]
    GenerationConfig(bos_token_id=1, eos_token_id=[2, stop]).save_pretrained(path)  # config.json says 2 alone
    want = _hf_generate(path, 8)
    got = amk.generate(str(path), PROMPT, max_new_tokens=8, device="cpu")
    assert got.tokens == want == free[:free.index(stop) + 1]
    assert not got.notes


def test_a_repetition_penalty_and_sampling_are_named_as_not_applied(tmp_path):
    from transformers import GenerationConfig

    path = llama(tmp_path / "m", num_hidden_layers=2)
    GenerationConfig(repetition_penalty=1.5).save_pretrained(path)
    got = amk.generate(str(path), PROMPT, max_new_tokens=4, device="cpu", stop_at_eos=False)
    assert any("repetition_penalty 1.5" in n and "greedy" in n for n in got.notes), got.notes
    GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, repetition_penalty=1.0).save_pretrained(path)
    notes = amk.generate(str(path), PROMPT, max_new_tokens=2, device="cpu").notes
    assert any("do_sample True" in n and "temperature 0.6" in n and "top_p 0.9" in n for n in notes), notes
    assert not any("repetition_penalty" in n for n in notes)  # its neutral value is no request


def test_logits_past_fp16_range_are_named(tmp_path):
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=256, num_hidden_layers=2, max_position_embeddings=64)
    path = save_checkpoint(cfg, tmp_path / "m")
    from _checkpoints import edit_tensors

    # finite fp16 weights whose MLP output is not: the largest about 100, the products past 65504
    edit_tensors(path, lambda sd: sd.update({k: v * 2000.0 for k, v in sd.items() if ".mlp." in k}))
    got = amk.generate(str(path), PROMPT, max_new_tokens=3, device="cpu", dtype="fp16")
    assert any("not finite" in n and "step 1 " in n for n in got.notes), got.notes
    fine = amk.generate(str(path), PROMPT, max_new_tokens=3, device="cpu", dtype="fp32")
    assert not any("not finite" in n for n in fine.notes)
