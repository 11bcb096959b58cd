"""attention.softmax = partition: one ATTN_PARTIAL task per (KV head, partition) normalises by its own
(max, sum) and a combine rescales the partitions. On the ReferenceVM it agrees with transformers, and with
the global softmax to fp32 rounding; the lowering gives two stages per layer and sizes the task's shared
memory (scores, staged K/V rows) so that the validator accepts it, or names smem_per_block."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _schedules import lower_builtin

import amk
from amk.eval.oracle import verify
from amk.schedule import DType, ModelDims, lower, lower_dims
from amk.schedule.config import ScheduleConfig
from amk.schedule.errors import LoweringError
from amk.schedule.opcodes import NO_BUFFER, Opcode
from amk.schedule.smem import attention_partial_smem_bytes
from amk.schedule.space import inert, with_value
from amk.schedule.validate import IssueKind, validate
from amk.vm.reference import ReferenceVM
from amk.vm.weights import pack_weights


def _cfg(parts: int, **extra) -> dict:
    return {"attention": {"softmax": "partition", "kv_partitions": parts}, **extra}


@pytest.mark.parametrize("parts", [2, 4, 16])
@pytest.mark.parametrize("name, dtype", [("toy", "fp32"), ("toy-2L", "bf16")])
def test_partition_softmax_verifies_against_transformers(name, dtype, parts):
    model = amk.load_model(name, dtype=dtype)
    prog = lower(model, "cpu-sim", _cfg(parts), max_seq=128)
    assert validate(prog, "cpu-sim").ok
    res = verify(prog, model, device="cpu", vm="reference", cases="reduced")
    assert res.ok, res.to_dict()["failures"]


@pytest.mark.parametrize("name", ["toy", "toy-2L"])
def test_fp16_partitions_stay_as_close_to_fp32_as_eager(name):
    # with its probabilities rounded to fp16 at the partition's own scale, the partition softmax left toy's
    # greedy8 logits at MARE 0.299 from fp32 (eager fp16: 0.0457) and toy-2L's pos128 at MERE 0.00887 (0.00421)
    model = amk.load_model(name, dtype="fp16")
    prog = lower(model, "h200", {"attention": {"softmax": "partition"}}, max_seq=256)
    res = verify(prog, model, device="cpu", vm="reference", cases="reduced")
    assert res.ok, res.to_dict()["failures"]


def test_scores_longer_than_the_shared_memory_chunk_go_through_scratch_and_still_verify():
    model = amk.load_model("toy-2L", dtype="fp32")
    prog = lower(model, "cpu-sim", _cfg(2, smem_per_block=24 * 1024), max_seq=256)
    partial = next(t for t in prog.tasks if t.opcode == Opcode.ATTN_PARTIAL)
    assert partial.params.chunk < 128  # a partition of a long context holds more positions than that
    assert validate(prog, "cpu-sim").ok
    assert verify(prog, model, device="cpu", vm="reference", cases="reduced").ok


def test_partition_and_global_softmax_give_the_same_step_in_fp32():
    model = amk.load_model("toy-2L", dtype="fp32")
    outs = []
    for softmax in ("global", "partition"):
        prog = lower(model, "cpu-sim", {"attention": {"kv_partitions": 4, "softmax": softmax}}, max_seq=64)
        vm = ReferenceVM(prog, pack_weights(model.eager, prog, device="cpu"))
        torch.manual_seed(0)
        c = prog.constants
        k, v = (torch.randn(c.n_layers, c.n_kv_heads, 40, c.head_dim) for _ in range(2))
        vm.load_kv_prefix(k, v)
        outs.append(vm.step(3)[0])
    assert torch.allclose(outs[0], outs[1], atol=1e-4, rtol=1e-4)


def test_two_attention_stages_per_layer_and_a_weighted_combine():
    model = amk.load_model("toy-2L", dtype="fp32", weights=False)
    d = model.dims
    glob = lower(model, "cpu-sim", {"attention": {"kv_partitions": 4, "softmax": "global", "combine": "stage"}},
                 max_seq=64)
    part = lower(model, "cpu-sim", {"attention": {"kv_partitions": 4, "softmax": "partition", "combine": "stage"}},
                 max_seq=64)

    def kinds(p):
        return sorted({t.kind for t in p.tasks if t.kind.startswith("attention")})

    assert kinds(glob) == ["attention", "attention_combine", "attention_values"]
    assert kinds(part) == ["attention", "attention_combine"]
    partials = [t for t in part.tasks if t.opcode == Opcode.ATTN_PARTIAL]
    assert len(partials) == d.n_layers * d.n_kv_heads * 4
    combines = [t for t in part.tasks if t.opcode == Opcode.ATTN_COMBINE]
    assert combines and all(t.params.part_stats != NO_BUFFER for t in combines)
    assert all(t.params.part_stats == NO_BUFFER for t in glob.tasks if t.opcode == Opcode.ATTN_COMBINE)
    # every combine waits for its own KV head's partials only (attention.sync = head)
    assert all(len(t.waits) >= 1 for t in combines)


def test_too_little_shared_memory_is_refused_by_name():
    model = amk.load_model("llama-3.2-1b", dtype="bf16", weights=False)
    with pytest.raises(LoweringError) as e:
        lower(model, "h100-sxm", _cfg(4, smem_per_block=16 * 1024, threads_per_block=1024), max_seq=2048)
    assert e.value.knob == "smem_per_block"


def test_validator_catches_a_partial_that_stages_more_than_fits():
    model = amk.load_model("llama-3.2-1b", dtype="bf16", weights=False)
    prog = lower(model, "h100-sxm", _cfg(4), max_seq=2048)
    tid = next(t.id for t in prog.tasks if t.opcode == Opcode.ATTN_PARTIAL)
    task = prog.tasks[tid]
    big = task.params.stage * 4
    need = attention_partial_smem_bytes(task.params.chunk, big, model.dims, prog.threads_per_block, 2)
    assert need > prog.smem_per_block
    prog.tasks[tid] = dataclasses.replace(task, params=dataclasses.replace(task.params, stage=big))
    report = validate(prog, "h100-sxm")
    assert any(i.kind == IssueKind.ABI and tid in i.tasks and "staged K/V rows" in i.message for i in report.issues)


def test_softmax_is_inert_with_one_partition_only():
    base = ScheduleConfig()
    assert not inert(base, "attention.softmax")
    assert inert(with_value(base, "attention.kv_partitions", 1), "attention.softmax")


@pytest.mark.parametrize("softmax", ["global", "partition"])
def test_o_projection_combines_the_partitions_when_fused(softmax):
    model = amk.load_model("toy-2L", dtype="fp32")
    cfg = {"attention": {"kv_partitions": 4, "softmax": softmax, "combine": "o_input"}}
    prog = lower(model, "cpu-sim", cfg, max_seq=64)
    assert not [t for t in prog.tasks if t.opcode == Opcode.ATTN_COMBINE]
    o_tasks = [t for t in prog.tasks if t.kind == "o"]
    assert o_tasks and all(t.params.inp_parts == 4 for t in o_tasks)
    assert all((t.params.inp_stats != NO_BUFFER) == (softmax == "partition") for t in o_tasks)
    assert validate(prog, "cpu-sim").ok
    assert verify(prog, model, device="cpu", vm="reference", cases="reduced").ok
    # the same step as with a combine stage or the last partition combining, to fp32 rounding
    outs = []
    for how in ("o_input", "stage", "last_partition"):
        p = lower(model, "cpu-sim", {"attention": {**cfg["attention"], "combine": how}}, max_seq=64)
        outs.append(ReferenceVM(p, pack_weights(model.eager, p, device="cpu")).step(3)[0])
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and torch.allclose(outs[0], outs[2], atol=1e-5)


@pytest.mark.parametrize("group, head_dim, cache_bytes", [(3, 64, 2), (4, 64, 2), (7, 64, 4), (8, 128, 2), (2, 128, 2)])
def test_partial_positions_is_the_largest_fit(group, head_dim, cache_bytes):
    """Every work size: the positions staged fit, and one more would not (or the partition's cap is reached).
    qwen2.5-3b's shape (G 8, head_dim 128) at 96 KiB once staged 41 of 68 positions where all 68 fit."""
    from amk.schedule.smem import partial_positions

    dims = dataclasses.replace(amk.load_model("toy", weights=False).dims, n_heads=group * 2, n_kv_heads=2,
                               head_dim=head_dim)
    for threads in (256, 512, 1024):
        for work in range(4096, 232 * 1024, 1536):
            for cap in (1, 17, 68, 512):
                n = partial_positions(work, cap, dims, threads, cache_bytes)
                assert 0 <= n <= cap
                if n > 0:
                    assert attention_partial_smem_bytes(n, n, dims, threads, cache_bytes) <= work
                if n < cap:
                    assert attention_partial_smem_bytes(n + 1, n + 1, dims, threads, cache_bytes) > work
    if (group, head_dim) == (8, 128):
        assert partial_positions(96 * 1024, 68, dims, 512, 2) == 68


@pytest.mark.parametrize("smem_kb", [48, 96, 160])
def test_combining_o_tasks_get_every_partition_slot_that_fits(smem_kb):
    # each thread copies its elements of the partitions into its own slots (vm/matvec.cuh stage_combined):
    # as many as fit the working shared memory, at most one a partition, and the validator counts them
    from amk.schedule.smem import (
        combine_heads,
        combine_per_copy,
        combine_smem_bytes,
        consumer_threads,
        program_work_smem_bytes,
    )

    cfg = {"attention": {"softmax": "partition", "kv_partitions": 16, "combine": "o_input"},
           "smem_per_block": smem_kb * 1024}
    prog = lower_builtin("llama-3.2-1b", cfg)
    work = program_work_smem_bytes(prog.smem_per_block, prog.build)
    threads = consumer_threads(prog.threads_per_block, prog.build)
    per_copy = combine_per_copy(prog.build, prog.constants.dtype.nbytes)
    assert per_copy == 8  # bf16 partials (attention.partials_dtype model, the default)

    def smem(p, heads, slots):
        return combine_smem_bytes(p.klen, 16, heads, threads, slots, per_copy)

    o_tasks = [t.params for t in prog.tasks if t.kind == "o"]
    assert o_tasks and all(p.inp_parts == 16 for p in o_tasks)
    for p in o_tasks:
        heads = combine_heads(p.k0, p.klen, prog.constants.head_dim)
        assert 1 <= p.inp_slots <= 16
        assert smem(p, heads, p.inp_slots) <= work
        # all partitions in one batch, or two even halves in flight: the most that fit either way
        assert p.inp_slots in (1, 16) or p.inp_slots % 2 == 0
        assert p.inp_slots == 16 or smem(p, heads, p.inp_slots + 2) > work
        assert p.inp_slots == 16 or smem(p, heads, 16) > work
    assert validate(prog, "h200").ok


def test_combine_slots_are_counted_for_the_threads_that_copy():
    from amk.schedule.smem import combine_slots, combine_smem_bytes

    # 120 elements: 30 threads copy 4 each, however many the block has
    assert combine_smem_bytes(120, 4, 0, 1024, 1) == combine_smem_bytes(120, 4, 0, 30, 1)
    assert combine_smem_bytes(120, 4, 0, 30, 1) - combine_smem_bytes(120, 4, 0, 30, 0) == 30 * 16
    # 4096 elements on 512 threads: every thread copies, two columns each through the same slots
    assert combine_smem_bytes(4096, 4, 0, 512, 1) - combine_smem_bytes(4096, 4, 0, 512, 0) == 512 * 16
    base = combine_smem_bytes(2048, 16, 32, 512, 0)
    assert combine_slots(base + 7 * 512 * 16, 2048, 16, 32, 512) == 6  # even below all partitions
    assert combine_slots(base + 16 * 512 * 16, 2048, 16, 32, 512) == 16
    assert combine_slots(base + 512 * 16, 2048, 16, 32, 512) == 1
    assert combine_slots(base + 512 * 16 - 1, 2048, 16, 32, 512) == 0


def test_combine_slots_the_kernel_would_overrun_are_named():
    model = amk.load_model("toy-2L", dtype="fp32")
    prog = lower(model, "cpu-sim", {"attention": {"kv_partitions": 4, "softmax": "partition",
                                                  "combine": "o_input"}}, max_seq=64)
    tid = next(i for i, t in enumerate(prog.tasks) if t.kind == "o")
    task = prog.tasks[tid]
    for slots, what in ((0, "outside [1, inp_parts=4]"), (5, "outside [1, inp_parts=4]"), (4, None)):
        prog.tasks[tid] = dataclasses.replace(task, params=dataclasses.replace(task.params, inp_slots=slots))
        named = [i for i in validate(prog, "cpu-sim").issues if tid in i.tasks and "inp_slots" in i.message]
        assert bool(named) == (what is not None) and all(what in i.message for i in named)
    prog.smem_per_block = 3 * 1024  # the slots the lowering gave (4 for each of 30 copying threads) no longer fit
    prog.tasks[tid] = dataclasses.replace(task, params=dataclasses.replace(task.params, inp_slots=4))
    assert any(tid in i.tasks and "combines an input" in i.message and "inp_slots=4" in i.message
               for i in validate(prog, "cpu-sim").issues)


def test_too_little_shared_memory_for_one_combine_slot_names_the_knob():
    # 64 heads of 64: an O task stages 4096 elements and, at 16 partitions, their stats and a slot a thread
    from transformers import LlamaConfig

    dims = ModelDims.from_hf_config(LlamaConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=64, num_key_value_heads=64, head_dim=64,
                                                vocab_size=256, max_position_embeddings=1024))
    cfg = {"attention": {"softmax": "global", "kv_partitions": 16, "combine": "o_input"}, "smem_per_block": 24 * 1024}
    with pytest.raises(LoweringError) as e:
        lower_dims(dims, DType.BF16, "h200", config=cfg, max_seq=1024)
    assert e.value.knob == "smem_per_block" and "o tasks combine an input of 4096 elements" in str(e.value)
    prog = lower_dims(dims, DType.BF16, "h200", config={**cfg, "smem_per_block": 28 * 1024}, max_seq=1024)
    assert {t.params.inp_slots for t in prog.tasks if t.kind == "o"} == {1}
    assert validate(prog, "h200").ok
    # where pages take the room, the pages are named
    paged = {**cfg, "smem_per_block": 56 * 1024, "pipeline": {"pages": 2, "page_kb": 16}}
    with pytest.raises(LoweringError) as e:
        lower_dims(dims, DType.BF16, "h200", config=paged, max_seq=1024)
    assert e.value.knob == "pipeline.pages" and "less 2 pages of 16 KiB leaves" in str(e.value)


def test_an_attention_chunk_with_no_room_for_the_warps_outputs_is_refused_when_lowered():
    # the value reduction keeps a partial output per consumer warp beside q: 31 warps of 5 heads of 16 do not
    # fit the 16 KiB that 3 pages of 16 KiB leave of 64 KiB; the lowering names the pages, not the validator
    model = amk.load_model("toy-2L", dtype="bf16", weights=False)
    cfg = {"smem_per_block": 65536, "threads_per_block": 1024, "pipeline": {"pages": 3, "page_kb": 16},
           "attention": {"kv_partitions": 3, "softmax": "global", "combine": "stage"}}
    with pytest.raises(LoweringError) as e:
        lower(model, "cpu-sim", cfg, max_seq=1024)
    assert e.value.knob == "pipeline.pages" and "31 consumer warps" in str(e.value)
    cfg["pipeline"] = {"pages": 2, "page_kb": 16}
    assert validate(lower(model, "cpu-sim", cfg, max_seq=1024), "cpu-sim").ok
