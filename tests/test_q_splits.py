"""attention.q_splits: a KV head's GQA group of q heads split over the partition tasks that read its K and V rows.
The ReferenceVM against transformers, the lowering's tasks and refusals, the kernel header, the derived value and
the search values a model's group allows."""

from __future__ import annotations

import functools

import pytest
from _schedules import CPU_TARGET, load

from amk.eval.oracle import eager_reference, verify
from amk.models.fields import model_dims
from amk.schedule import lower
from amk.schedule.config import ScheduleConfig
from amk.schedule.errors import LoweringError
from amk.schedule.inert import inert_reason
from amk.schedule.lower import lower_dims
from amk.schedule.opcodes import DType, Opcode
from amk.schedule.space import search_space
from amk.schedule.validate import validate
from amk.vm.abi import generate_header

MAX_SEQ = 64
FOLDED = {"fusion": {"rope_kv_into_attention": True}}


@functools.cache
def _reference(name: str, dtype: str, case):
    return eager_reference(load(name, dtype), case, MAX_SEQ)


# toy: 3 q heads a KV head, toy-2L: 5 (and one KV head); each split whole, combined by O, a join or a stage
@pytest.mark.parametrize("name,splits", [("toy", 3), ("toy-2L", 5)])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("extra", [{}, {"combine": "last_partition"}, {"combine": "stage"}, "folded"],
                         ids=["o_input", "last_partition", "stage", "folded_rope"])
def test_split_groups_verify_on_the_reference_vm(name, splits, dtype, extra):
    model = load(name, dtype)
    attention = {"q_splits": splits, "kv_partitions": 4, **({} if extra == "folded" else extra)}
    cfg = {"attention": attention, **(FOLDED if extra == "folded" else {})}
    prog = lower(model, CPU_TARGET, cfg, MAX_SEQ)
    partials = [t for t in prog.tasks if t.opcode == Opcode.ATTN_PARTIAL]
    dims = model.dims
    assert len(partials) == dims.n_layers * dims.n_kv_heads * 4 * splits
    assert {t.params.q_splits for t in partials} == {splits}
    assert validate(prog, CPU_TARGET).ok
    res = verify(prog, model, cases="reduced", adversarial=True, seed=splits,
                 reference=lambda case: _reference(name, dtype, case))
    assert res.ok, res.to_dict()["failures"]


def test_a_split_that_does_not_divide_the_group_is_refused_by_name():
    with pytest.raises(LoweringError, match=r"attention\.q_splits: 2 does not divide .* group of 3 q heads.*\[1, 3\]"):
        lower(load("toy", weights=False), CPU_TARGET, {"attention": {"q_splits": 2, "kv_partitions": 4}}, MAX_SEQ)


def test_the_knob_is_inert_without_partition_tasks():
    toy = load("toy", weights=False)

    def fingerprint(**attention) -> str:
        return lower(toy, CPU_TARGET, {"attention": attention}, MAX_SEQ).fingerprint()

    one = ScheduleConfig.from_dict({"attention": {"kv_partitions": 1, "q_splits": 3}})
    glob = ScheduleConfig.from_dict({"attention": {"kv_partitions": 4, "softmax": "global", "q_splits": 3}})
    assert "kv_partitions=1" in inert_reason(one, "attention.q_splits")
    assert "softmax=global" in inert_reason(glob, "attention.q_splits")
    assert fingerprint(kv_partitions=1, q_splits=3) == fingerprint(kv_partitions=1, q_splits=1)
    assert fingerprint(kv_partitions=4, softmax="global", q_splits=3) == fingerprint(kv_partitions=4, softmax="global")
    assert fingerprint(kv_partitions=4, q_splits=3) != fingerprint(kv_partitions=4, q_splits=1)


def test_the_kernel_header_takes_a_task_group_and_keeps_the_kv_group():
    prog = lower(load("toy", weights=False), CPU_TARGET, {"attention": {"q_splits": 3, "kv_partitions": 4}}, MAX_SEQ)
    header = generate_header(prog)
    assert "#define AMK_GROUP 1\n" in header and "#define AMK_KV_GROUP 3\n" in header
    assert "#define AMK_Q_SPLITS 3\n" in header


def _dims(heads: int, kv_heads: int, layers: int = 22):
    from transformers import LlamaConfig

    return model_dims(LlamaConfig(hidden_size=heads * 64, intermediate_size=5632, num_hidden_layers=layers,
                                  num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=32000))


@pytest.mark.parametrize("heads,kv_heads,want", [(32, 4, 2), (16, 2, 2), (32, 8, 1), (16, 8, 1), (14, 2, 1)],
                         ids=["tinyllama", "qwen2.5-3b", "llama-3.2-1b", "qwen3-1.7b", "qwen2.5-0.5b"])
def test_derived_splits_keep_the_attention_tasks_to_one_per_two_sms(heads, kv_heads, want):
    # the public shapes' groups (head_dim 64 here), on an H200's 132 SMs at max_seq 2048
    prog = lower_dims(_dims(heads, kv_heads), DType.BF16, "h200", None, max_seq=2048)
    derived = prog.meta["derived"]
    assert derived["attention.q_splits"] == want
    tasks = sum(t.opcode == Opcode.ATTN_PARTIAL for t in prog.tasks) // 22
    assert tasks == kv_heads * derived["attention.kv_partitions"] * want
    assert want == 1 or tasks <= 132 // 2


def test_the_search_tries_the_splits_the_group_allows():
    def values(group):
        (knob,) = [k for k in search_space("h200", group=group) if k.path == "attention.q_splits"]
        return knob.search, knob.unsearched

    assert values(8) == ((1, 2, 4, 8), None)
    assert values(3) == ((1, 3), None)
    assert values(32) == ((1, 2, 4, 8), None)  # at most 8 tasks a partition
    search, why = values(1)  # multi-head attention: nothing to split
    assert search == () and "one q head a KV head" in why
    search, why = values(11)  # 11 splits are valid, past what a search tries
    assert search == () and "group of 11" in why and "between 2 and 8" in why
    assert values(None)[0] == (1, 2, 4)  # no model: the knob's own values (a model they do not fit refuses them)


def test_split_tasks_fit_the_shared_memory_their_own_group_needs():
    # a whole group of 8 heads of 128 would not fit 48 KiB as one decode task; its partition tasks of 2 q heads
    # do, and the lowering sizes them alone (a decode-sized check once refused every split here)
    from transformers import LlamaConfig

    dims = model_dims(LlamaConfig(hidden_size=1024, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                                  num_key_value_heads=1, head_dim=128, vocab_size=256))
    cfg = {"smem_per_block": 48 * 1024, "attention": {"q_splits": 4, "kv_partitions": 4}}
    prog = lower_dims(dims, DType.BF16, "h200", cfg, max_seq=2048)
    assert validate(prog, "h200").ok
    assert {t.params.q_splits for t in prog.tasks if t.opcode == Opcode.ATTN_PARTIAL} == {4}
    with pytest.raises(LoweringError, match="smem_per_block: attention tasks of 8 q heads"):
        lower_dims(dims, DType.BF16, "h200", {**cfg, "attention": {"kv_partitions": 1}}, max_seq=2048)
