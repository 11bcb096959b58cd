"""Positions are bounded: verify cases fit the program's context (a short one scales them down, one too short
for the asked cases is a usage error), and a decode step past the last KV slot raises."""

from __future__ import annotations

import os

import pytest
import torch
from _checkpoints import llama

import amk
from amk.eval.cases import VerifyCase, default_cases
from amk.eval.oracle import make_vm, verify
from amk.harness.commands import ExitCode
from amk.schedule.errors import ContextError


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "amk_cache"))


def test_default_cases_fit_every_context():
    for max_seq in range(1, 80):
        for reduced in (False, True, "smoke"):
            cases = default_cases(max_seq, reduced=reduced)
            assert cases and all(c.positions <= max_seq for c in cases), (max_seq, reduced)
            assert len({c.name for c in cases}) == len(cases)
    # a long context runs the full-size cases, under the names (and cache keys) they always had
    big = default_cases(2048)
    assert [(c.name, c.prefix_len, c.tokens, c.generate) for c in big] == [
        ("pos0", 0, 1, 0), ("pos1", 1, 1, 0), ("pos300", 300, 2, 0), ("pos2045_near_limit", 2045, 3, 0),
        ("tokens8", 0, 8, 0), ("greedy32", 0, 4, 32)]
    assert all("scaled_from" not in c.to_dict() for c in big)
    short = {c.name: c for c in default_cases(16)}
    assert short["greedy13"].scaled_from == "greedy32" and short["greedy13"].positions == 16
    assert short["pos8"].scaled_from == "pos300"  # the mid case, cut to the context's middle


def test_a_short_context_verifies_with_scaled_cases(tmp_path, monkeypatch):
    path = llama(tmp_path, max_position_embeddings=16)
    v = amk.evaluate(os.path.relpath(path), "cpu-sim", {})
    assert v["correct"], v["failures"]
    assert {c["case"] for c in v["case_results"]} >= {"greedy13", "pos13_near_limit"}
    assert any("greedy32 -> greedy13" in n for n in v["notes"])
    # priced at the context the program leaves, and said so; the checkpoint named by its absolute path
    assert v["cost"]["context"] == 0 and v["model"] == str(path.resolve())
    assert any("KV context of 0 positions, not 1024" in n for n in v["notes"]), v["notes"]
    # a built-in name stays the built-in beside a directory of that name, as load_model and propose take it
    (tmp_path / "toy").mkdir()
    monkeypatch.chdir(tmp_path)
    v = amk.evaluate("toy", "cpu-sim", {}, max_seq=8)
    assert v["correct"] and v["cases_total"] == 6 and v["model"] == "toy", v["failures"]
    v = amk.evaluate("toy", "cpu-sim", {}, max_seq=1500)
    assert v["cost"]["context"] == 1024 and not any("KV context" in n for n in v["notes"]), v["notes"]


def test_cases_longer_than_the_context_are_a_usage_error():
    model = amk.load_model("toy")
    prog = amk.lower(model, "cpu-sim", {}, max_seq=16)
    long = [VerifyCase("fits", 0, 4), VerifyCase("greedy32", 0, 4, generate=32)]
    with pytest.raises(ContextError, match="greedy32 needs 35") as e:
        verify(prog, model, cases=long)
    assert (e.value.needed, e.value.max_seq) == (35, 16)
    with pytest.raises(ContextError):
        amk.evaluate(model, "cpu-sim", {}, max_seq=16, cases=long)
    assert ExitCode.of_exception(e.value) == (ExitCode.USAGE, "usage")


def test_a_step_past_the_last_position_raises_and_keeps_the_cache():
    model = amk.load_model("toy")
    prog = amk.lower(model, "cpu-sim", {}, max_seq=16)
    vm = make_vm(prog, model)
    for t in range(16):
        vm.step(t + 1)
    assert vm.position == 16
    k, v = (x.clone() for x in vm.kv_cache())
    with pytest.raises(ContextError, match="position 16") as e:
        vm.step(3)
    assert (e.value.needed, e.value.max_seq) == (17, 16)
    assert all(torch.equal(a, b) for a, b in zip((k, v), vm.kv_cache()))  # slot 15 not overwritten
    vm.reset()
    vm.load_kv_prefix(k[:, :, :15], v[:, :, :15])
    vm.step(1)  # the last slot
    with pytest.raises(ContextError):
        vm.step(2)


def test_generate_past_the_context_is_refused():
    with pytest.raises(ContextError, match="need 19 positions"):
        amk.generate("toy", [1, 2, 3, 4], max_new_tokens=16, device="cpu", max_seq=16)


def test_a_context_that_drops_default_cases_names_them():
    from amk.eval.cases import left_out_cases

    assert left_out_cases(2048) == [] and left_out_cases(16) == []
    # the mid case (pos300) lands on pos1; tokens3 on pos0_near_limit
    assert left_out_cases(3) == ["pos1 (from pos300, repeats pos1)", "tokens3 (from tokens8, repeats pos0_near_limit)"]
    # in one position pos1 does not fit at all
    assert left_out_cases(1)[0] == "pos1 (needs 2 positions)"
    v = amk.evaluate("toy", "cpu-sim", {}, max_seq=3)
    note = next(n for n in v["notes"] if n.startswith("verify cases in the program's context of 3 positions"))
    assert "left out: pos1 (from pos300, repeats pos1), tokens3 (from tokens8, repeats pos0_near_limit)" in note
    assert {c["case"] for c in v["case_results"]} == {"pos0", "pos1", "pos0_near_limit", "greedy3"}
    assert "greedy32 (4 prompt tokens) -> greedy3" in note


@pytest.mark.parametrize("rope", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                                  {"rope_type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 4.0}])
def test_rope_tables_are_the_rows_eager_computes_a_step_at_a_time(tmp_path, rope):
    # eager computes each decode step's cos/sin for its one position; the VM's table must hold those very values
    # (computed over threads, the rows past half the table once came out a few ulps of the angle apart)
    from amk.vm.weights import rope_tables

    model = amk.load_model(llama(tmp_path / "m", max_position_embeddings=512,
                                 **({"rope_scaling": rope} if rope else {})))
    rotary, probe = model.eager.model.rotary_emb, torch.zeros(1)
    threads = torch.get_num_threads()
    cos, sin = rope_tables(model.eager, 512, torch.float32)
    assert torch.get_num_threads() == threads
    for p in (0, 1, 255, 256, 300, 511):
        c, s = rotary(probe, torch.tensor([[p]]))
        assert torch.equal(cos[p], c[0, 0]) and torch.equal(sin[p], s[0, 0]), p


def test_dynamic_rope_runs_within_max_position_embeddings_and_is_refused_past_them(tmp_path):
    # transformers leaves dynamic (NTK) RoPE unscaled up to max_position_embeddings: there it verifies as it is; past
    # them it rescales every position by the sequence length it is given, which no table of the position matches
    from amk.schedule.errors import ArgumentError, UnsupportedModelError
    from amk.schedule.lower import lower_dims
    from amk.schedule.opcodes import DType

    path = llama(tmp_path / "m", max_position_embeddings=32, rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    v = amk.evaluate(str(path), "cpu-sim", {}, max_seq=32)
    assert v["correct"] and v["cases_total"] == 6, v["failures"]
    model = amk.load_model(str(path))
    with pytest.raises(ArgumentError, match=r"64 positions.*dynamic.*\(32\); use max_seq <= 32") as e:
        amk.lower(model, "cpu-sim", {}, max_seq=64)
    assert e.value.argument == "max_seq"
    # a program lowered from the dimensions alone is refused where the VM builds its RoPE tables
    with pytest.raises(UnsupportedModelError, match=r"rope_type dynamic.*64 positions.*\(32\).*max_seq <= 32"):
        make_vm(lower_dims(model.dims, DType.F32, "cpu-sim", {}, max_seq=64), model)
    # the refusal left transformers' rotary module as it was: eager still decodes with the unscaled frequencies
    rotary = model.eager.model.rotary_emb
    assert torch.equal(rotary.inv_freq, rotary.original_inv_freq) and rotary.max_seq_len_cached == 32
    with pytest.raises(ArgumentError, match="dynamic"):
        amk.generate(str(path), [1, 2, 3], max_new_tokens=40, device="cpu", max_seq=64)
    # a model that ran past max_position_embeddings keeps its rescaled frequencies until a shorter call: the tables
    # are the unscaled ones all the same, and the program verifies
    from amk.vm.weights import rope_tables

    fresh = rope_tables(model.eager, 32, torch.float32)
    with torch.no_grad():
        model.eager(torch.arange(40)[None] % model.dims.vocab)
    assert model.eager.model.rotary_emb.max_seq_len_cached == 40
    assert all(torch.equal(a, b) for a, b in zip(rope_tables(model.eager, 32, torch.float32), fresh))
    assert amk.verify(amk.lower(model, "cpu-sim", {}, max_seq=32), model).ok
    # evaluate and loop refuse it before any trial: a usage error, not a rejected config
    with pytest.raises(ArgumentError, match="max_seq: 64 positions"):
        amk.evaluate(str(path), "cpu-sim", {}, max_seq=64)
    with pytest.raises(ArgumentError, match="max_seq: 64 positions"):
        amk.loop(str(path), "cpu-sim", budget=1, max_seq=64, results=str(tmp_path / "r.tsv"),
                 corpus=str(tmp_path / "c"))
    assert not (tmp_path / "r.tsv").exists()
