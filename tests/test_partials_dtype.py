"""attention.partials_dtype = model: the attention partitions' outputs are stored rounded to the model's dtype
for their combine. On the ReferenceVM such programs agree with transformers under every combine and softmax;
the rounding is where the knob says (a bf16 step differs from the fp32 partials' step, an fp32 one does not);
a combine's bytes, O's copy slots and the derived partition count follow the element size."""

from __future__ import annotations

import pytest
import torch
from _schedules import load, lower_builtin

import amk
from amk.eval.oracle import verify
from amk.schedule import DType, cost, lower, lower_dims
from amk.schedule.config import ScheduleConfig
from amk.schedule.inert import inert_reason
from amk.schedule.opcodes import NO_BUFFER, Opcode
from amk.schedule.smem import (
    combine_heads,
    combine_slots,
    combine_smem_bytes,
    consumer_threads,
    program_work_smem_bytes,
)
from amk.schedule.validate import validate
from amk.vm.reference import ReferenceVM
from amk.vm.weights import pack_weights


def _attention(**kw) -> dict:
    return {"attention": {"kv_partitions": 4, **kw}}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("attention", [{}, {"combine": "stage"}, {"combine": "last_partition"},
                                       {"softmax": "global"}], ids=["o_input", "stage", "last_partition", "global"])
def test_model_dtype_partials_verify_against_transformers(dtype, attention):
    model = amk.load_model("toy-2L", dtype=dtype)
    prog = lower(model, "cpu-sim", _attention(partials_dtype="model", **attention), max_seq=128)
    assert prog.build["PARTIALS_MODEL_DTYPE"] == 1
    assert validate(prog, "cpu-sim").ok
    res = verify(prog, model, device="cpu", vm="reference", cases="reduced")
    assert res.ok, res.to_dict()["failures"]


def _step(model, partials: str) -> torch.Tensor:
    prog = lower(model, "cpu-sim", _attention(partials_dtype=partials), max_seq=64)
    vm = ReferenceVM(prog, pack_weights(model.eager, prog, device="cpu"))
    torch.manual_seed(0)
    c = prog.constants
    k, v = (torch.randn(c.n_layers, c.n_kv_heads, 40, c.head_dim) for _ in range(2))
    vm.load_kv_prefix(k, v)
    return vm.step(3)[0]


def test_the_partials_are_rounded_only_in_a_16_bit_model():
    bf16 = amk.load_model("toy-2L", dtype="bf16")
    fp32_parts, model_parts = _step(bf16, "fp32"), _step(bf16, "model")
    assert not torch.equal(fp32_parts, model_parts)  # one rounding more on the way to O
    assert torch.allclose(fp32_parts, model_parts, atol=0.1, rtol=0.05)
    fp32 = amk.load_model("toy-2L", dtype="fp32")
    assert torch.equal(_step(fp32, "fp32"), _step(fp32, "model"))


@pytest.mark.parametrize("combine", ["o_input", "stage", "last_partition"])
def test_a_combine_reads_half_the_partial_bytes(combine):
    att = {"kv_partitions": 8, "combine": combine}
    fp32 = lower_builtin("llama-3.2-1b", {"attention": {**att, "partials_dtype": "fp32"}})
    half = lower_builtin("llama-3.2-1b", {"attention": {**att, "partials_dtype": "model"}})
    c = half.constants
    readers = [t for t in half.tasks if cost.combine_bytes(t, half)]
    assert readers and len(readers) == len([t for t in fp32.tasks if cost.combine_bytes(t, fp32)])
    for t in readers:
        p = t.params
        if t.opcode == Opcode.MATVEC:
            stats = p.inp_parts * combine_heads(p.k0, p.klen, c.head_dim) * 8 if p.inp_stats != NO_BUFFER else 0
            assert cost.combine_bytes(t, half) == p.inp_parts * p.klen * 2 + stats
        else:
            assert cost.combine_bytes(t, half) == p.parts * (c.n_heads // c.n_kv_heads) * (c.head_dim * 2 + 8)
    assert cost.predict(half, "h200").latency_us < cost.predict(fp32, "h200").latency_us


@pytest.mark.parametrize("smem_kb", [48, 96])
def test_o_tasks_copy_eight_elements_a_slot(smem_kb):
    # a 16-byte copy holds 8 bf16 partials: half as many threads copy, so more partitions fit a batch
    cfg = {"attention": {"kv_partitions": 16, "partials_dtype": "model"}, "smem_per_block": smem_kb * 1024}
    prog = lower_builtin("llama-3.2-1b", cfg)
    work = program_work_smem_bytes(prog.smem_per_block, prog.build)
    threads = consumer_threads(prog.threads_per_block, prog.build)
    o_tasks = [t.params for t in prog.tasks if t.kind == "o"]
    assert o_tasks
    for p in o_tasks:
        heads = combine_heads(p.k0, p.klen, prog.constants.head_dim)
        assert p.inp_slots == combine_slots(work, p.klen, 16, heads, threads, per_copy=8)
        assert combine_smem_bytes(p.klen, 16, heads, threads, p.inp_slots, per_copy=8) <= work
        assert p.inp_slots >= combine_slots(work, p.klen, 16, heads, threads, per_copy=4)
    assert validate(prog, "h200").ok


def test_the_validator_counts_slots_of_the_model_dtype():
    # a slot count that fits 8-element copies but not 4-element ones: the validator must count the program's
    import dataclasses

    cfg = {"attention": {"kv_partitions": 16, "partials_dtype": "model"}, "smem_per_block": 48 * 1024}
    prog = lower_builtin("llama-3.2-1b", cfg)
    assert validate(prog, "h200").ok
    fp32_build = dict(prog.build, PARTIALS_MODEL_DTYPE=0)
    o = [t for t in prog.tasks if t.kind == "o"]
    work = program_work_smem_bytes(prog.smem_per_block, prog.build)
    threads = consumer_threads(prog.threads_per_block, prog.build)
    p = o[0].params
    heads = combine_heads(p.k0, p.klen, prog.constants.head_dim)
    assert combine_smem_bytes(p.klen, 16, heads, threads, p.inp_slots, per_copy=4) > work
    report = validate(dataclasses.replace(prog, build=fp32_build), "h200")
    assert not report.ok and any("combines an input" in i.message for i in report.issues)


def test_the_derived_partitions_do_not_follow_the_partial_bytes():
    # llama-3.2-1b measured 8 partitions fastest with bf16 partials too (schedule/autotile.py MAX_COMBINE_BYTES)
    fp32 = lower_builtin("llama-3.2-1b", {"attention": {"partials_dtype": "fp32"}})
    half = lower_builtin("llama-3.2-1b", {"attention": {"partials_dtype": "model"}})
    assert fp32.meta["derived"]["attention.kv_partitions"] == 8
    assert half.meta["derived"]["attention.kv_partitions"] == 8


def test_partials_dtype_is_inert_with_one_partition():
    cfg = ScheduleConfig.from_dict({"attention": {"kv_partitions": 1, "partials_dtype": "model"}})
    assert "kv_partitions=1" in inert_reason(cfg, "attention.partials_dtype")
    assert inert_reason(ScheduleConfig.from_dict(_attention(partials_dtype="model")), "attention.partials_dtype") is None


def test_a_program_the_knob_cannot_change_keeps_its_fingerprint():
    # an fp32 model's partials are fp32 either way, and one partition has none: the same program, which the
    # search's duplicate check then sees (amk/harness/search/rounds.py)
    model = {"fp32": amk.load_model("toy-2L", dtype="fp32", weights=False),
             "bf16": amk.load_model("toy-2L", dtype="bf16", weights=False)}

    def fingerprint(dtype: str, **attention) -> str:
        return lower(model[dtype], "h200", {"attention": attention}, max_seq=128).fingerprint()

    for dtype, parts, same in (("fp32", 4, True), ("bf16", 1, True), ("bf16", 4, False)):
        model_parts = fingerprint(dtype, kv_partitions=parts, partials_dtype="model")
        assert model_parts == fingerprint(dtype, kv_partitions=parts)  # the default
        assert (model_parts == fingerprint(dtype, kv_partitions=parts, partials_dtype="fp32")) == same


def test_a_head_dim_a_copy_would_straddle_is_refused_by_name():
    # amk.models refuses such a head_dim; a shape given to lower_dims directly reaches the O tiling's check
    import dataclasses

    from amk.schedule.errors import LoweringError

    odd = dataclasses.replace(load("llama-3.2-1b", "bf16", weights=False).dims, head_dim=68)  # a multiple of 4, not of 8
    cfg = {"attention": {"kv_partitions": 4, "partials_dtype": "model"}}
    with pytest.raises(LoweringError) as e:
        lower_dims(odd, DType.BF16, "h200", config=cfg, max_seq=256)
    assert e.value.knob == "attention.partials_dtype" and "multiple of 8" in str(e.value)
    lower_dims(odd, DType.BF16, "h200", config={"attention": {"kv_partitions": 4, "partials_dtype": "fp32"}},
               max_seq=256)


def test_an_fp32_run_never_searches_the_knob(tmp_path):
    # a move of it on fp32 could only ride along a move that acts, and a keep would then carry a knob that does
    # nothing; a bf16 run searches it
    from amk.schedule.space import search_space

    def knob(dtype):
        (k,) = [k for k in search_space("h200", dtype=dtype) if k.path == "attention.partials_dtype"]
        return k

    assert knob("fp32").search == () and "fp32" in knob("fp32").unsearched
    assert knob("bf16").search == ("fp32", "model") and knob("bf16").unsearched is None
    assert knob(None).search == ("fp32", "model")
    p = amk.propose("toy", "cpu-sim", corpus=None, dtype="fp32")
    assert [k["search"] for k in p["search_space"] if k["path"] == "attention.partials_dtype"] == [[]]
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    amk.loop("toy", "cpu-sim", budget=30, device="cpu", results=res, corpus=cor, seed=1, max_reverts=1000)
    from amk.flywheel.records import load_records

    records = load_records(cor)
    assert len(records) >= 30 and all(r.dtype == "fp32" for r in records)
    assert all(r.config.get("attention", {}).get("partials_dtype", "model") == "model" for r in records)  # default
