"""Shared helpers for the knob and schedule-property tests: every knob value, the models, program edits and
one adversarial ReferenceVM step."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from enum import Enum

import torch

import amk
from amk.schedule.config import ScheduleConfig, get_path, iter_knobs, with_value

CPU_TARGET = "cpu-sim"  # 8 SMs
CPU_SMS = 8
RING_TEST_SMEM = 223 * 1024  # a Hopper block's 227 KiB opt-in less the kernel's static shared memory
# explicit maps for sm.explicit_map (under sm.assignment=explicit); SM ids < 8 so that they lower on cpu-sim too
EXPLICIT_MAPS = ({"attention": [0, 1]}, {"qkv": [0, 1, 2, 3], "lm_head": [5], "down": [7, 6]})
_ROWS_OF = {"o": "hidden", "gate_up": "intermediate", "down": "hidden", "lm_head": "vocab"}


def _json(v):
    return v.value if isinstance(v, Enum) else v


def base_config(path: str) -> ScheduleConfig:
    """The config a knob is varied from: the default, except that sm.explicit_map only acts under
    sm.assignment=explicit."""
    if path == "sm.explicit_map":
        return with_value(ScheduleConfig(), "sm.assignment", "explicit")
    if path == "pipeline.pages":  # pages come out of smem_per_block: leave room, with 8 KiB pages so that the
        # most pages searched (12) still leave llama's down tasks their 8192-element input (the lowering refuses)
        return with_value(with_value(ScheduleConfig(), "smem_per_block", RING_TEST_SMEM), "pipeline.page_kb", 8)
    if path == "pipeline.inflight_kb":  # the cap acts only with pages: 12 of 8 KiB, so that each value caps apart
        return ScheduleConfig.from_dict({"smem_per_block": RING_TEST_SMEM, "pipeline": {"pages": 12, "page_kb": 8}})
    if path == "pipeline.page_kb":  # the page size acts only with pages, and they need room
        return with_value(with_value(ScheduleConfig(), "smem_per_block", RING_TEST_SMEM), "pipeline.pages", 4)
    if path in ("build.loads_in_flight", "build.rows_in_flight"):  # the register path's stream (no pages)
        return ScheduleConfig()
    if path == "build.l2_prefetch_kb":  # the cap acts on the L2 prefetch, which pipelining_depth turns on
        return with_value(ScheduleConfig(), "pipelining_depth", 1)
    if path.startswith("matvec.") and path.endswith(".reduce"):  # who reduces k-splits: there must be some
        return with_value(ScheduleConfig(), path.rsplit(".", 1)[0] + ".k_splits", 2)
    return ScheduleConfig()


def values_of(path: str, field) -> list:
    """JSON-form values a knob is tested at: the choices of an enum/bool knob (all of them, not only the
    searched ones), else its search list, and null (derived) where the knob is nullable; the empty map and two
    maps for sm.explicit_map."""
    if path == "sm.explicit_map":
        return [{}, *copy.deepcopy(list(EXPLICIT_MAPS))]
    meta = field.metadata
    vals = meta["choices"] if meta.get("choices") is not None else meta["search"]
    nullable = field.default is None
    return [_json(v) for v in vals] + ([None] if nullable else [])


def knob_values() -> list[tuple[str, object]]:
    """(dotted path, JSON value) for every knob and every value it is tested at."""
    return [(path, v) for path, f, _ in iter_knobs() for v in values_of(path, f)]


def knob_config(path: str, value) -> ScheduleConfig:
    return with_value(base_config(path), path, value)


def default_value(path: str):
    return _json(get_path(base_config(path), path))


REFUSED = "refused"  # the effective value of a knob value the lowering refuses for the model


def effective_value(dims, path: str, value, derived: dict | None = None):
    """The value as the lowering sees it for this model: null is the value the lowering derived (`derived`,
    the base program's), a row tiling at or above a matvec's row count is one task either way, as is a QKV
    tiling at or above the heads there are, and warps a q head above what the warps give a task's q heads are
    the most; REFUSED where the lowering refuses the value for this model (a q split that does not divide its
    GQA group). Two values with the same effective value must lower identically; two with different ones must
    not."""
    if value is None:
        value = (derived or {})[path]
    parts = path.split(".")
    if path == "attention.q_splits" and dims.group % value:
        return REFUSED  # the lowering's LoweringError names the knob
    if path == "attention.head_warps":  # at most the default's consumer warps over a task group's q heads
        group = dims.group // (derived or {}).get("attention.q_splits", 1)
        return min(value, max(1, ScheduleConfig().threads_per_block // 32 // group))
    if path == "matvec.qkv.heads_per_task":
        return min(value, dims.n_heads + 2 * dims.n_kv_heads)
    if path == "pipeline.inflight_kb":  # copies in flight of the base config's 12 pages of 8 KiB
        return 12 if value == 0 else max(1, min(12, value // 8))
    if len(parts) == 3 and parts[0] == "matvec" and parts[2] == "rows_per_task":
        return min(value, getattr(dims, _ROWS_OF[parts[1]]))
    return repr(value)


def value_id(value) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{'/'.join(map(str, v))}" for k, v in value.items()) + "}"
    return str(value).lower() if isinstance(value, bool) else str(value)


@functools.cache
def load(name: str, dtype: str = "fp32", weights: bool = True):
    """One load per call signature for the whole test run: the modules that load a model here share it (the
    SmolLM2 GGUF takes ~30 s to parse and dequantise on two cores). Callers must not modify what they get."""
    return amk.load_model(name, dtype=dtype, weights=weights)


def lower_builtin(name: str, config: dict, max_seq: int = 1024):
    """A built-in model's program from its shape alone (no weights), bf16 on an H200."""
    return amk.lower(load(name, "bf16", weights=False), "h200", config, max_seq=max_seq)


# ---- program edits -----------------------------------------------------------------------------------
def clone(prog):
    """A copy of `prog` that mutations may edit: every list and task is new; frozen parts (params, waits,
    regions, counters) are shared, which is safe because they are only ever replaced, never edited."""
    new = copy.copy(prog)
    new.tasks = [copy.copy(t) for t in prog.tasks]
    new.counters = list(prog.counters)
    new.buffers = list(prog.buffers)
    new.queues = [list(q) for q in prog.queues]
    new.build = dict(prog.build)
    new.meta = dict(prog.meta)
    return new


def renumber(prog) -> None:
    """Make every task's sm and queue_pos agree with the queues."""
    for sm, q in enumerate(prog.queues):
        for pos, tid in enumerate(q):
            prog.tasks[tid].sm, prog.tasks[tid].queue_pos = sm, pos


# ---- the VM ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """A KV prefix of `prefix` random positions, then `token` decoded at position `prefix`."""

    prefix: int
    token: int
    k: torch.Tensor
    v: torch.Tensor


def make_scenario(constants, prefix: int, token: int, seed: int) -> Scenario:
    c = constants
    g = torch.Generator().manual_seed(seed)
    shape = (c.n_layers, c.n_kv_heads, prefix, c.head_dim)
    return Scenario(prefix, token, torch.randn(shape, generator=g), torch.randn(shape, generator=g))


def vm_step(prog, weights, scenario: Scenario, seed: int, adversarial: bool = True):
    """(fp32 logits, next token) of one ReferenceVM step of `prog` in `scenario`."""
    from amk.vm.reference import ReferenceVM

    vm = ReferenceVM(prog, weights, adversarial=adversarial, seed=seed)
    vm.load_kv_prefix(scenario.k, scenario.v)
    return vm.step(scenario.token)


def plant_cycle(prog):
    """Make an O task and a gate/up task on another SM wait on each other through two new counters (built
    around the validator: each signals what the other waits for). Returns the two tasks."""
    from amk.schedule.program import Counter, Wait

    a = next(t for t in prog.tasks if t.kind == "o")
    b = next(t for t in prog.tasks if t.kind == "gate_up" and t.sm != a.sm)
    cx, cy = len(prog.counters), len(prog.counters) + 1
    prog.counters += [Counter(cx, "planted.x", 1), Counter(cy, "planted.y", 1)]
    a.signals += (cx,)
    b.waits += (Wait(cx, 1),)
    b.signals += (cy,)
    a.waits += (Wait(cy, 1),)
    return a, b


def waiting_behind(prog, root: int) -> set[int]:
    """The task `root` and every task that waits, directly or through others, on a counter it signals: the tasks a
    deadlock planted at `root` stops."""
    waiters: dict[int, list[int]] = {}
    for task in prog.tasks:
        for w in task.waits:
            waiters.setdefault(w.counter, []).append(task.id)
    seen, todo = {root}, [root]
    while todo:
        for c in prog.tasks[todo.pop()].signals:
            for n in waiters.get(c, []):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
    return seen


def assert_planted_deadlock_stops(prog, model, target, planted: int) -> str:
    """Run one step of `prog` (a deadlock planted at task `planted`, around the validator) on the GPU: it must raise
    a VmError within 2 s that names a time-out of a task the planted one stops, and a good program must verify
    after it. Returns the error's text."""
    import time

    import pytest

    from amk.eval.oracle import make_vm, verify
    from amk.schedule.errors import VmError

    vm = make_vm(prog, model, device="cuda", vm="cuda")
    start = time.perf_counter()
    with pytest.raises(VmError, match=r"task \d+ \(\w+\) timed out waiting on ") as e:
        vm.step(1)
    assert time.perf_counter() - start < 2.0
    # every task behind the planted one waits too; whichever times out first names itself, and it must be one of them
    named = int(str(e.value).split("task ", 1)[1].split(" ", 1)[0])
    assert named in waiting_behind(prog, planted), str(e.value)
    good = amk.lower(model, target, None, max_seq=prog.constants.max_seq)
    assert verify(good, model, device="cuda", vm="cuda", cases="reduced").ok
    return str(e.value) if named == planted else ""


def tasks_of(prog, kind: str) -> list:
    """The tasks of `prog` of one kind ("qkv", "down", ...), in program order."""
    return [t for t in prog.tasks if t.kind == kind]


def tagged_read_issues(prog) -> list[str]:
    """The messages of validate's tagged_read issues on `prog` (the h200 target)."""
    from amk.schedule.validate import validate

    return [i.message for i in validate(prog).issues if i.kind.value == "tagged_read"]
