"""amk.models: built-in configs, seeded random weights, local checkpoints and the SmolLM2 GGUF (CPU only)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from _schedules import load

from amk.models import list_models, load_model
from amk.models.registry import model_shape
from amk.schedule.errors import UnknownModelError, UnsupportedModelError
from amk.schedule.graph import Architecture

EXPECTED_DIMS = {
    "toy": dict(arch=Architecture.LLAMA, hidden=96, n_layers=1, n_heads=6, n_kv_heads=2, head_dim=16,
                qkv_bias=False, qk_norm=False, tied_embeddings=False),
    "toy-2L": dict(arch=Architecture.QWEN2, hidden=120, n_layers=2, n_heads=5, n_kv_heads=1, head_dim=24,
                   qkv_bias=True, qk_norm=False, tied_embeddings=True),
    "llama-3.2-1b": dict(arch=Architecture.LLAMA, hidden=2048, intermediate=8192, n_layers=16, n_heads=32,
                         n_kv_heads=8, head_dim=64, vocab=128256, qk_norm=False, tied_embeddings=True),
    "qwen3-0.6b": dict(arch=Architecture.QWEN3, hidden=1024, n_layers=28, n_heads=16, n_kv_heads=8,
                       head_dim=128, qk_norm=True, qkv_bias=False),
    "smollm2-135m": dict(arch=Architecture.LLAMA, hidden=576, intermediate=1536, n_layers=30, n_heads=9,
                         n_kv_heads=3, head_dim=64, vocab=49152),
}

TOKENS = torch.tensor([[1, 5, 17, 42, 7, 99]])


def logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(tokens).logits.float()


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
def test_builtin_dims_without_weights(name):
    m = load_model(name, weights=False)
    assert m.eager is None and m.tokenizer is None and m.source == "random"
    for k, v in EXPECTED_DIMS[name].items():
        assert getattr(m.dims, k) == v, k
    assert m.graph.dims == m.dims
    assert m.describe()["params"] > 0
    assert model_shape(name) == m.dims  # what propose derives its tiling from


def test_list_models():
    rows = {r["name"]: r for r in list_models()}
    assert set(rows) == set(EXPECTED_DIMS) | {"smollm2-135m-instruct"}
    assert 1.1e9 < rows["llama-3.2-1b"]["params"] < 1.3e9
    assert 130e6 < rows["smollm2-135m"]["params"] < 140e6
    assert rows["qwen3-0.6b"]["arch"] == "qwen3" and all(r["description"] for r in rows.values())


@pytest.mark.parametrize("name", ["toy", "toy-2L"])
def test_random_weights_forward_and_seed(name):
    a, b, c = (load_model(name, seed=s) for s in (0, 0, 1))
    la = logits(a.eager)
    assert la.shape == (1, TOKENS.shape[1], a.dims.vocab) and torch.isfinite(la).all()
    assert torch.equal(la, logits(b.eager))
    assert not torch.allclose(la, logits(c.eager))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.eager.config.use_cache and not any(p.requires_grad for p in a.eager.parameters())
    assert a.fp32_eager() is a.eager
    d = a.describe()
    assert d["name"] == name and d["dtype"] == "float32" and d["fingerprint"] == a.fingerprint
    assert d["params"] == sum(p.numel() for p in a.eager.parameters())


def test_norms_and_biases_are_perturbed():
    m = load_model("toy-2L")
    norms = [mod.weight for mod in m.eager.modules() if type(mod).__name__.endswith("RMSNorm")]
    assert len(norms) == 2 * 2 + 1
    for w in norms:
        assert not torch.all(w == 1) and (w - 1).abs().max() < 1
    biases = [p for n, p in m.eager.named_parameters() if n.endswith("bias")]
    assert len(biases) == 3 * 2  # q, k, v per layer
    assert all(b.abs().sum() > 0 for b in biases)


@pytest.mark.parametrize("name", ["toy", "toy-2L"])
def test_random_matrices_are_transformers_initialisation_drawn_once(name, monkeypatch):
    # every matrix holds transformers' normal(0, initializer_range) draw, none is left as the uninitialised
    # memory its constructor got, and torch's default init (which transformers overwrote) is never drawn
    kaiming = []
    real = torch.nn.init.kaiming_uniform_
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", lambda *a, **k: kaiming.append(1) or real(*a, **k))
    m = load_model(name)
    assert not kaiming
    std = m.eager.config.initializer_range
    mats = [mod.weight for mod in m.eager.modules() if isinstance(mod, torch.nn.Linear | torch.nn.Embedding)]
    assert len(mats) >= 4 * m.dims.n_layers
    for w in mats:
        assert torch.isfinite(w).all() and abs(w.mean().item()) < 0.1 * std
        assert 0.85 * std < w.std().item() < 1.15 * std


def test_bf16_is_fp32_cast():
    f, b = load_model("toy-2L", dtype="fp32", seed=3), load_model("toy-2L", dtype=torch.bfloat16, seed=3)
    assert b.dtype == torch.bfloat16 and b.describe()["dtype"] == "bfloat16"
    fp = dict(f.eager.named_parameters())
    for n, p in b.eager.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.equal(p, fp[n].to(torch.bfloat16)), n
    up = b.fp32_eager()
    assert up is not b.eager and up is b.fp32_eager()  # cached
    for n, p in up.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, fp[n].to(torch.bfloat16).float()), n
    assert b.eager.dtype == torch.bfloat16  # upcasting a copy left the bf16 model alone
    assert f.fingerprint == b.fingerprint  # same weights, whatever the compute dtype


def test_bad_dtype_and_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="int8"):
        load_model("toy", dtype="int8")
    with pytest.raises(ValueError, match="float64"):
        load_model("toy", dtype=torch.float64)
    with pytest.raises(UnknownModelError, match="no-such-model") as e:
        load_model("no-such-model")
    assert "toy" in str(e.value)
    with pytest.raises(UnknownModelError):
        load_model(tmp_path / "missing")


def test_unsupported_architecture(tmp_path):
    cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 64, "n_head": 4,
           "n_layer": 2, "vocab_size": 100, "n_positions": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="gpt2") as e:
        load_model(tmp_path)
    assert "gpt2" in e.value.feature


def _tiny(kind):
    from transformers import MistralConfig, Qwen3Config

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    if kind == "mistral":
        return MistralConfig(**common, head_dim=16, tie_word_embeddings=False)
    return Qwen3Config(**common, head_dim=16, tie_word_embeddings=True)


@pytest.mark.parametrize("kind", ["mistral", "qwen3"])
def test_checkpoint_directory_roundtrip(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    ref = AutoModelForCausalLM.from_config(_tiny(kind), attn_implementation="eager").eval()
    with torch.no_grad():  # make norms non-trivial so a dropped weight would show
        for mod in ref.modules():
            if type(mod).__name__.endswith("RMSNorm"):
                mod.weight.uniform_(0.5, 1.5)
    ref.save_pretrained(tmp_path)
    m = load_model(tmp_path)
    assert m.source == "path" and m.dims.arch.value == kind and m.tokenizer is None
    assert m.dims.qk_norm == (kind == "qwen3")
    torch.testing.assert_close(logits(m.eager), logits(ref), rtol=0, atol=0)
    again = load_model(str(tmp_path), weights=False)
    assert again.eager is None and again.fingerprint == m.fingerprint
    assert model_shape(tmp_path) == m.dims
    # Changing one byte of the weights changes the fingerprint.
    st = next(tmp_path.glob("*.safetensors"))
    data = bytearray(st.read_bytes())
    data[-1] ^= 1
    st.write_bytes(bytes(data))
    assert load_model(tmp_path, weights=False).fingerprint != m.fingerprint


@pytest.fixture(scope="module")
def smollm():
    # the GGUF parse and dequantisation take ~30 s on two cores: one load serves every module that needs it
    return load("smollm2-135m-instruct")


def test_smollm2_instruct_gguf_says_paris(smollm):
    m = smollm
    assert m.source == "gguf" and m.tokenizer is not None and m.dtype == torch.float32
    assert (m.dims.hidden, m.dims.n_layers, m.dims.vocab) == (576, 30, 49152)
    # Trained weights, not an initialiser's: the final norm is far from 1.
    assert m.eager.model.norm.weight.mean() > 1.2
    tok = m.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = m.eager.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


def test_smollm2_fingerprint_stable(smollm):
    again = load_model("smollm2-135m-instruct", weights=False)
    assert again.fingerprint == smollm.fingerprint
    # its shape without parsing the GGUF: the shipped stand-in config's, all but the eps the GGUF stores in fp32
    assert dataclasses.replace(model_shape("smollm2-135m-instruct"), rms_eps=again.dims.rms_eps) == again.dims
    assert again.fingerprint != load_model("smollm2-135m", weights=False).fingerprint


def test_a_model_prints_as_one_line_of_its_shape():
    text = repr(load_model("toy"))
    assert "\n" not in text and len(text) < 300, text
    assert text.startswith("Model('toy', fp32, layers 1, hidden 96") and "weights loaded" in text
    assert "weights not loaded" in repr(load_model("llama-3.2-1b", weights=False))
