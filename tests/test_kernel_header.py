"""The generated ABI header compiles in exactly the code paths a program uses."""

from __future__ import annotations

import re

import amk
from amk.schedule import get_target, lower
from amk.schedule.opcodes import Epilogue, Opcode
from amk.vm.abi import generate_header


def _defines(prog) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define (AMK_USES_\w+) (\d+)$", generate_header(prog), re.M)}


def test_header_names_every_opcode_and_epilogue_the_program_uses_and_only_those():
    model = amk.load_model("toy", dtype="fp32")
    for cfg in ({}, {"attention": {"softmax": "global"}}, {"attention": {"combine": "stage"}},
                {"matvec": {"down": {"k_splits": 2}}}, {"matvec": {"down": {"k_splits": 2, "reduce": "last_task"}}}):
        prog = lower(model, get_target("cpu-sim"), cfg, max_seq=64)
        uses = _defines(prog)
        assert set(uses) == ({f"AMK_USES_{op.name}" for op in Opcode} | {f"AMK_USES_EPI_{e.name}" for e in Epilogue}
                             | {"AMK_USES_SPLIT_JOIN", "AMK_USES_SHORT_ROWS"})
        ops = {t.opcode for t in prog.tasks}
        epis = {Epilogue(t.params.epi.kind) for t in prog.tasks if hasattr(t.params, "epi")}
        joined = any(t.opcode == Opcode.MATVEC and t.params.join.active for t in prog.tasks)
        assert {k for k, v in uses.items() if v} == ({f"AMK_USES_{op.name}" for op in ops}
                                                     | {f"AMK_USES_EPI_{e.name}" for e in epis}
                                                     | ({"AMK_USES_SPLIT_JOIN"} if joined else set())
                                                     # toy's 96-weight rows, but not beside the global softmax
                                                     | ({"AMK_USES_SHORT_ROWS"} if "global" not in str(cfg)
                                                        else set())), cfg
        assert joined == ("reduce" in str(cfg))


def test_short_rows_are_compiled_in_only_where_a_task_has_them():
    # llama-3.2-1b's shape: no row of the default tiling is short; O split over its 8 KV heads has 256-weight rows,
    # 128 a task, walked four a unit (schedule/autotile.py short_row_units)
    model = amk.load_model("llama-3.2-1b", dtype="bf16", weights=False)
    assert _defines(lower(model, get_target("h200"), {}, max_seq=64))["AMK_USES_SHORT_ROWS"] == 0
    split = lower(model, get_target("h200"), {"matvec": {"o": {"k_splits": 8, "reduce": "last_task"}}}, max_seq=64)
    assert _defines(split)["AMK_USES_SHORT_ROWS"] == 1
    assert {t.params.klen for t in split.tasks if t.kind == "o"} == {256}
    paged = {"matvec": {"o": {"k_splits": 8}}, "pipeline": {"pages": 2, "page_kb": 8}}  # no register walk
    assert _defines(lower(model, get_target("h200"), paged, max_seq=64))["AMK_USES_SHORT_ROWS"] == 0
    # beside the global softmax's passes the short rows take the plain walk (registers: vm/abi.py)
    glob = {"matvec": {"o": {"k_splits": 8}}, "attention": {"softmax": "global"}}
    assert _defines(lower(model, get_target("h200"), glob, max_seq=64))["AMK_USES_SHORT_ROWS"] == 0


def test_partition_softmax_compiles_no_global_softmax_ops():
    model = amk.load_model("toy", dtype="fp32")
    uses = _defines(lower(model, get_target("cpu-sim"), {"attention": {"softmax": "partition"}}, max_seq=64))
    assert uses["AMK_USES_ATTN_PARTIAL"] == 1
    assert uses["AMK_USES_ATTN_SCORES"] == uses["AMK_USES_ATTN_VALUES"] == 0
    uses = _defines(lower(model, get_target("cpu-sim"), {"matvec": {"down": {"k_splits": 2}}}, max_seq=64))
    assert uses["AMK_USES_EPILOGUE"] == 1 and uses["AMK_USES_EPI_PARTIAL"] == 1


def test_the_producer_keeps_inflight_kb_of_copies_in_flight():
    # pipeline.inflight_kb over the page size, at least one page and at most all of them; 0 is all of them
    model = amk.load_model("llama-3.2-1b", dtype="bf16", weights=False)

    def in_flight(pages: int, page_kb: int, kb: int | None) -> int:
        pipe = {"pages": pages, "page_kb": page_kb} | ({} if kb is None else {"inflight_kb": kb})
        prog = lower(model, get_target("h200"), {"pipeline": pipe, "smem_per_block": 223 * 1024}, max_seq=64)
        return int(re.search(r"^#define AMK_PAGES_INFLIGHT (\d+)$", generate_header(prog), re.M)[1])

    assert [in_flight(10, 16, kb) for kb in (None, 16, 32, 64, 0)] == [2, 1, 2, 4, 10]
    assert [in_flight(4, 32, kb) for kb in (16, 32, 64, 0)] == [1, 1, 2, 4]
    assert in_flight(2, 8, 64) == 2
    # without pages the cap compiles in at its default: the program is the default's
    plain = lower(model, get_target("h200"), {}, max_seq=64)
    capped = lower(model, get_target("h200"), {"pipeline": {"inflight_kb": 16}}, max_seq=64)
    assert capped.build == plain.build and capped.build["PAGES_INFLIGHT"] == 0
