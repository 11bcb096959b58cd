"""Knob values that lower alike above a bound (schedule/inert.py value_caps): a matvec's row tiling above its
rows, QKV heads a task above its heads, and warps a q head above what the consumer warps give. The bound is held
to the lowering itself (one program at the bound and above it, another just below), the verdict names a value
above it, and the search sets a move between two such values back to the incumbent's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from _schedules import CPU_TARGET, load

from amk.harness.search.builder import BuildJob, build_one
from amk.harness.search.policy import Candidate, Source
from amk.harness.search.rounds import Rounds
from amk.schedule import get_target, lower
from amk.schedule.config import ScheduleConfig, with_value
from amk.schedule.cost import CostCoefficients
from amk.schedule.errors import LoweringError
from amk.schedule.inert import program_inert_knobs, value_caps
from amk.schedule.space import search_space

CAPPED = {"matvec.o.rows_per_task", "matvec.gate_up.rows_per_task", "matvec.down.rows_per_task",
          "matvec.lm_head.rows_per_task", "matvec.qkv.heads_per_task"}


def _fingerprint(model, target: str, cfg: ScheduleConfig) -> str:
    """The program's fingerprint, or the refusal (llama-3.2-1b's 128256 LM-head rows in one task overflow shared
    memory at any value from its vocabulary up)."""
    try:
        return lower(model, target, cfg, max_seq=128).fingerprint()
    except LoweringError as e:
        return f"refused: {e}"


@pytest.mark.parametrize("name,target", [("toy-2L", CPU_TARGET), ("toy-2L", "h200"), ("llama-3.2-1b", "h200")])
def test_values_from_the_cap_up_lower_to_one_program_and_the_value_below_to_another(name, target):
    model = load(name, "bf16", weights=False)
    base = ScheduleConfig()
    program = lower(model, target, base, max_seq=128)
    caps = value_caps(base, program)
    assert {c.path for c in caps} == CAPPED | ({"attention.head_warps"} if program.build.get("HEAD_WARPS") else set())
    for cap in caps:
        at, above, below = (_fingerprint(model, target, with_value(base, cap.path, v))
                            for v in (cap.cap, 2 * cap.cap, cap.cap - 1))
        assert at == above, (cap.path, cap.cap)
        if cap.cap > 1 and not at.startswith("refused"):
            assert below != at, (cap.path, cap.cap)


def test_a_row_tiling_above_the_rows_is_named_in_the_notes():
    model = load("toy-2L", "bf16", weights=False)  # its O projection has 120 rows
    cfg = ScheduleConfig.from_dict({"matvec": {"o": {"rows_per_task": 512}, "down": {"rows_per_task": 120}}})
    notes = [k.note() for k in program_inert_knobs(cfg, lower(model, CPU_TARGET, cfg, max_seq=128))]
    assert notes == ["matvec.o.rows_per_task=512 has no effect: beyond 120: the O projection's 120 rows are one "
                     "task; the program is the one at 120"]


def _settled(inc: dict, cand: dict, target: str = CPU_TARGET) -> Candidate:
    """The candidate `cand` as the search takes it in around the incumbent `inc` (toy-2L, bf16)."""
    tgt = get_target(target)
    inc_cfg, cand_cfg = ScheduleConfig.from_dict(inc), ScheduleConfig.from_dict(cand)
    built = build_one(BuildJob(load("toy-2L", "bf16", weights=False), tgt, cand_cfg.to_dict(), "bf16", 128,
                               CostCoefficients()))
    assert built.valid, built.reason
    rounds = SimpleNamespace(inc=SimpleNamespace(config=inc_cfg), space=search_space(tgt), target=tgt)
    moved = Candidate(cand_cfg, ("moves",), Source.MUTATE)
    return Rounds._settle_derived_inert(rounds, moved, built)[0]


def test_the_search_sets_a_move_between_values_alike_back_to_the_incumbents():
    inc = {"matvec": {"o": {"rows_per_task": 128}}}
    both = {"matvec": {"o": {"rows_per_task": 512}}, "build": {"rows_in_flight": 2}}
    settled = _settled(inc, both)
    assert settled.config.matvec.o.rows_per_task == 128
    assert settled.change == ("build.rows_in_flight=2",)
    # a value below the rows makes another program: the move stands
    kept = _settled(inc, {"matvec": {"o": {"rows_per_task": 64}}, "build": {"rows_in_flight": 2}})
    assert kept.config.matvec.o.rows_per_task == 64 and kept.change == ("moves",)


def test_the_search_sets_a_move_to_the_derived_value_back_to_null():
    # a move that sets a derived knob to what the lowering derives for null under the rest of the config is the
    # null program: its description would claim a change the program does not have
    model = load("toy-2L", "bf16", weights=False)
    rest = {"build": {"rows_in_flight": 2}}
    derived = lower(model, CPU_TARGET, ScheduleConfig.from_dict(rest), max_seq=128).meta["derived"]
    down = derived["matvec.down.rows_per_task"]
    settled = _settled({}, {"matvec": {"down": {"rows_per_task": down}}, **rest})
    assert settled.config.matvec.down.rows_per_task is None
    assert settled.change == ("build.rows_in_flight=2",)
    other = down // 2 if down > 1 else down * 2
    kept = _settled({}, {"matvec": {"down": {"rows_per_task": other}}, **rest})
    assert kept.config.matvec.down.rows_per_task == other and kept.change == ("moves",)
    # a non-null incumbent: the move to the derived value is a move (null would follow the shape)
    moved = _settled({"matvec": {"down": {"rows_per_task": other}}}, {"matvec": {"down": {"rows_per_task": down}}})
    assert moved.config.matvec.down.rows_per_task == down


def test_a_move_past_the_cap_is_a_move_to_the_cap():
    # 512 rows a task on an O projection of 120 rows is its one-task program: the keep carries 120, which acts, and
    # evaluate has no "has no effect" note for it
    settled = _settled({}, {"matvec": {"o": {"rows_per_task": 512}}})
    assert settled.config.matvec.o.rows_per_task == 120
    assert settled.change == ("matvec.o.rows_per_task=120",)


@pytest.mark.parametrize("page_kb,pages", [(16, 4), (32, 4), (8, 12)])
def test_inflight_kb_values_build_in_classes_of_the_copies_in_flight(page_kb, pages):
    # a class is one program and two classes two: held to the lowering, not to inert.py's own figures
    model = load("toy-2L", "bf16", weights=False)
    base = ScheduleConfig.from_dict({"pipeline": {"pages": pages, "page_kb": page_kb}, "smem_per_block": 200 * 1024})
    program = lower(model, "h200", base, max_seq=128)
    (classes,) = [c for c in value_caps(base, program) if c.path == "pipeline.inflight_kb"]
    prints = {kb: _fingerprint(model, "h200", with_value(base, "pipeline.inflight_kb", kb)) for kb in (16, 32, 64, 0)}
    for a in prints:
        for b in prints:
            assert classes.alike(a, b) == (prints[a] == prints[b]), (a, b)
    assert not any(c.path == "pipeline.inflight_kb" for c in value_caps(ScheduleConfig(), lower(model, "h200",
                                                                                                 ScheduleConfig(),
                                                                                                 max_seq=128)))


def test_an_inflight_kb_that_keeps_the_defaults_copies_is_named_in_the_notes():
    model = load("toy-2L", "bf16", weights=False)
    pipe = {"pages": 4, "page_kb": 32}  # the default 32 KiB and 16 KiB are both one page in flight
    cfg = ScheduleConfig.from_dict({"pipeline": pipe | {"inflight_kb": 16}, "smem_per_block": 200 * 1024})
    notes = [k.note() for k in program_inert_knobs(cfg, lower(model, "h200", cfg, max_seq=128))]
    assert notes == ["pipeline.inflight_kb=16 has no effect: with 4 pages of 32 KiB it allows the same copies in "
                     "flight as the default 32 (1)"]
    other = ScheduleConfig.from_dict({"pipeline": pipe | {"inflight_kb": 64}, "smem_per_block": 200 * 1024})
    assert program_inert_knobs(other, lower(model, "h200", other, max_seq=128)) == []


def test_the_search_sets_an_inflight_kb_move_that_builds_the_same_program_back():
    pipe = {"pages": 4, "page_kb": 16}  # 64 KiB and no cap are both all 4 pages
    inc = {"pipeline": pipe | {"inflight_kb": 64}, "smem_per_block": 200 * 1024}
    settled = _settled(inc, {"pipeline": pipe | {"inflight_kb": 0}, "smem_per_block": 200 * 1024,
                             "matvec": {"o": {"rows_per_task": 64}}}, target="h200")
    assert settled.config.pipeline.inflight_kb == 64 and settled.change == ("matvec.o.rows_per_task=64",)
    kept = _settled(inc, {"pipeline": pipe | {"inflight_kb": 16}, "smem_per_block": 200 * 1024,
                          "matvec": {"o": {"rows_per_task": 64}}}, target="h200")
    assert kept.config.pipeline.inflight_kb == 16 and kept.change == ("moves",)
