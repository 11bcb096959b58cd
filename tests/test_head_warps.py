"""attention.head_warps: the warps that share a q head of a partition task (vm/attention_partitions.cuh
partial_warp_heads). The derived value, the bound the consumer warps set, the build define and kernel header, the
knob's inertness outside the partition attention, and the ReferenceVM against transformers at each value."""

from __future__ import annotations

import pytest
from _schedules import CPU_TARGET, load

from amk.eval.oracle import verify
from amk.schedule import lower
from amk.schedule.autotile import head_warps, max_head_warps
from amk.schedule.config import ScheduleConfig
from amk.schedule.inert import inert_reason
from amk.vm.abi import generate_header

LLAMA = "llama-3.2-1b"  # 4 q heads a KV head


def _lowered(name: str, cfg: dict, dtype: str = "bf16"):
    return lower(load(name, dtype, weights=False), "h200", cfg, max_seq=256)


@pytest.mark.parametrize("group,warps,derived,most", [(4, 16, 2, 4), (8, 16, 2, 2), (9, 16, 1, 1), (32, 16, 1, 1),
                                                      (3, 4, 1, 1), (2, 15, 2, 7), (1, 32, 2, 32)])
def test_the_derived_warps_are_two_where_the_warps_allow(group, warps, derived, most):
    assert head_warps(group, warps) == derived
    assert max_head_warps(group, warps) == most


def test_the_derived_value_follows_threads_q_splits_and_the_producer_warp():
    assert _lowered(LLAMA, {}).build["HEAD_WARPS"] == 2
    # 4 warps over 4 q heads: one each; q_splits 2: 2 q heads a task over 16 warps; a producer warp leaves 15
    assert _lowered(LLAMA, {"threads_per_block": 128}).build["HEAD_WARPS"] == 1
    cfg = {"attention": {"q_splits": 2, "head_warps": 8}}
    assert _lowered(LLAMA, cfg).build["HEAD_WARPS"] == 8
    assert _lowered(LLAMA, {"pipeline": {"pages": 2}, "attention": {"head_warps": 4}}).build["HEAD_WARPS"] == 3


def test_more_warps_than_the_heads_take_lower_as_the_most_one_program():
    most = _lowered(LLAMA, {"attention": {"head_warps": 4}})
    for w in (5, 8, 32):
        prog = _lowered(LLAMA, {"attention": {"head_warps": w}})
        assert prog.build["HEAD_WARPS"] == 4 and prog.fingerprint() == most.fingerprint()
    fingerprints = {_lowered(LLAMA, {"attention": {"head_warps": w}}).fingerprint() for w in (1, 2, 4)}
    assert len(fingerprints) == 3  # each value its own kernel


def test_the_header_defines_the_warps():
    header = generate_header(_lowered(LLAMA, {"attention": {"head_warps": 1}}))
    assert "#define AMK_HEAD_WARPS 1\n" in header


@pytest.mark.parametrize("attention", [{"kv_partitions": 1}, {"softmax": "global"}])
def test_outside_the_partition_attention_the_knob_is_inert_and_compiles_out(attention):
    programs = [_lowered(LLAMA, {"attention": {**attention, "head_warps": w}}) for w in (1, 4)]
    assert {p.build["HEAD_WARPS"] for p in programs} == {0}
    assert programs[0].fingerprint() == programs[1].fingerprint() == _lowered(LLAMA, {"attention": attention}).fingerprint()
    cfg = ScheduleConfig.from_dict({"attention": {**attention, "head_warps": 4}})
    assert inert_reason(cfg, "attention.head_warps") is not None
    assert inert_reason(ScheduleConfig.from_dict({"attention": {"head_warps": 4}}), "attention.head_warps") is None


# toy: 3 q heads a KV head, 16 consumer warps: one, two and five warps a head (the most), fp32 and bf16
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("warps", [1, 2, 5])
def test_each_value_verifies_on_the_reference_vm(warps, dtype):
    model = load("toy", dtype)
    prog = lower(model, CPU_TARGET, {"attention": {"kv_partitions": 4, "head_warps": warps}}, max_seq=64)
    assert prog.build["HEAD_WARPS"] == warps
    res = verify(prog, model, cases="reduced")
    assert res.ok, res.to_dict()["failures"]


def test_on_the_stand_in_every_value_prices_alike_and_is_not_searched():
    from amk.schedule import get_target
    from amk.schedule.inert import target_inert_reason
    from amk.schedule.space import search_space

    assert "only a GPU measures it" in target_inert_reason("attention.head_warps", get_target(CPU_TARGET))
    knob = {k.path: k for k in search_space(CPU_TARGET)}["attention.head_warps"]
    assert knob.search == () and {k.path: k for k in search_space("h200")}["attention.head_warps"].search == (1, 2, 4)


@pytest.mark.parametrize("cfg,note", [
    ({"attention": {"head_warps": 2}}, "16 consumer warps over a task's 4 q heads give 2 warps a q head, the derived"),
    ({"attention": {"head_warps": 4}}, None),
    ({"attention": {"head_warps": 8}}, "beyond 4: 16 consumer warps over a task's 4 q heads give at most 4"),
    ({"threads_per_block": 128, "attention": {"head_warps": 4}}, "give at most 1 warps a q head, the derived value"),
    ({"attention": {"head_warps": 1}}, None),
])
def test_a_value_the_program_does_not_take_gets_a_note(cfg, note):
    from amk.schedule.inert import program_inert_knobs

    config = ScheduleConfig.from_dict(cfg)
    notes = [k.note() for k in program_inert_knobs(config, _lowered(LLAMA, cfg))]
    assert notes == ([] if note is None else [notes[0]]) and (note is None or note in notes[0]), notes


def test_a_value_taken_as_the_derived_one_is_named_for_the_search_to_set_back():
    from amk.harness.search.builder import BuildJob, build_one
    from amk.schedule import get_target
    from amk.schedule.cost import CostCoefficients
    from amk.schedule.inert import taken_as_derived

    for cfg, named in [({"threads_per_block": 128, "attention": {"head_warps": 4}}, True),
                       ({"attention": {"head_warps": 2}}, True), ({"attention": {"head_warps": 4}}, False),
                       ({"attention": {"softmax": "global", "head_warps": 4}}, False)]:
        assert taken_as_derived(ScheduleConfig.from_dict(cfg), _lowered(LLAMA, cfg)) == (
            ["attention.head_warps"] if named else []), cfg
    cfg = ScheduleConfig.from_dict({"threads_per_block": 128, "attention": {"head_warps": 4}}).to_dict()
    job = BuildJob(load(LLAMA, "bf16", weights=False), get_target("h200"), cfg, "bf16", 256, CostCoefficients())
    assert build_one(job).as_derived == ("attention.head_warps",)
