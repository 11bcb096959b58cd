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
                {"matvec": {"down": {"k_splits": 2}}}):
        prog = lower(model, get_target("cpu-sim"), cfg, max_seq=64)
        uses = _defines(prog)
        assert set(uses) == {f"AMK_USES_{op.name}" for op in Opcode} | {f"AMK_USES_EPI_{e.name}" for e in Epilogue}
        ops = {t.opcode for t in prog.tasks}
        epis = {Epilogue(t.params.epi.kind) for t in prog.tasks if hasattr(t.params, "epi")}
        assert {k for k, v in uses.items() if v} == ({f"AMK_USES_{op.name}" for op in ops}
                                                     | {f"AMK_USES_EPI_{e.name}" for e in epis}), cfg


def test_partition_softmax_compiles_no_global_softmax_ops():
    model = amk.load_model("toy", dtype="fp32")
    uses = _defines(lower(model, get_target("cpu-sim"), {"attention": {"softmax": "partition"}}, max_seq=64))
    assert uses["AMK_USES_ATTN_PARTIAL"] == 1
    assert uses["AMK_USES_ATTN_SCORES"] == uses["AMK_USES_ATTN_VALUES"] == 0
    uses = _defines(lower(model, get_target("cpu-sim"), {"matvec": {"down": {"k_splits": 2}}}, max_seq=64))
    assert uses["AMK_USES_EPILOGUE"] == 1 and uses["AMK_USES_EPI_PARTIAL"] == 1
