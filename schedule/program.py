"""MegakernelProgram: buffers, counters, tasks and per-SM queues, plus the packed instruction table."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import json
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import opcodes as oc
from .opcodes import DType, Opcode

FINGERPRINT_META = "fingerprint"  # meta key: the fingerprint, stored by whoever hashed the program
VALIDATION_META = "validation"  # meta key: the static validator's verdict, stored by whoever ran it


@functools.cache
def lowering_digest() -> str:
    """sha256 (hex, 16 digits) of the source of the schedule package (lowering, validation, cost model): a part
    of every cached program's key, so a program lowered or validated by other code is never read back."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


_GC_LOCK = threading.Lock()
_gc_pauses = 0  # blocks inside gc_paused(), in every thread
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector for the block (re-entrant, and safe across threads: the collector
    resumes when the last block open in any thread ends, if it ran before the first). Lowering, hashing or
    reading back a 10k-task program allocates about half a million containers; the collections they trigger,
    each walking every object alive, took two thirds of the time (llama-3.2-1b on a 2-core CPU: JSON decode and
    from_dict 1.0 s -> 0.35 s, fingerprint 1.05 s -> 0.43 s). The objects made are acyclic or long-lived."""
    global _gc_pauses, _gc_was_enabled
    with _GC_LOCK:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def is_task_id(x, n: int) -> bool:
    """Whether `x` names one of `n` tasks: an int in [0, n), never a bool (True is an int to Python, and would
    index task 1 unannounced)."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < n


class BufferKind(str, Enum):
    WEIGHT = "weight"  # read-only model parameters and tables
    SCRATCH = "scratch"  # activations; written before read inside one step
    KV = "kv"  # the KV cache: persistent prefix, one slot appended per step
    IO = "io"  # token in/out, logits out
    ARENA = "arena"  # the scratch arena that holds SCRATCH values under linear/liveness allocation


@dataclass(frozen=True)
class Buffer:
    id: int
    name: str
    kind: BufferKind
    dtype: DType
    numel: int
    cols: int = 1  # row length for 2-D weights (the VM indexes rows)
    arena: int = oc.NO_BUFFER  # SCRATCH value placed in an arena buffer
    arena_off: int = 0

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.nbytes


class Region(NamedTuple):
    """Elements [start, start + length) of a buffer, as a task reads or writes them. (A tuple: programs hold
    tens of thousands and lowering must stay well under a second.)"""

    buffer: int
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


class Wait(NamedTuple):
    counter: int
    count: int  # wait until the counter has been signalled this many times in this step


@dataclass(frozen=True)
class Counter:
    id: int
    name: str
    producers: int  # signals per step


class Prefetch(NamedTuple):
    buffer: int
    start: int
    length: int  # elements


_WAIT, _REGION, _PREFETCH = Wait._make, Region._make, Prefetch._make  # from a JSON list, ~2x Region(*r)


@dataclass
class Task:
    id: int
    opcode: Opcode
    params: object
    stage: int  # logical order of the op this task belongs to
    kind: str  # stage kind (qkv, attention, ...) for explicit SM maps and reports
    waits: tuple[Wait, ...] = ()
    signals: tuple[int, ...] = ()
    reads: tuple[Region, ...] = ()
    writes: tuple[Region, ...] = ()
    prefetch: tuple[Prefetch, ...] = ()
    weight_bytes: int = 0
    sm: int = -1
    queue_pos: int = -1
    # counters among `waits` whose producers' writes this task reads as tagged values (the tagged residual stream):
    # the kernel spins on the values' tags and never polls these counters (pack() leaves them out of the
    # instruction); the ReferenceVM and the hazard check see them as the waits they are
    carried: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {
            "id": self.id, "opcode": self.opcode.name, "kind": self.kind, "stage": self.stage,
            "params": _params_to_dict(self.params),
            "waits": [list(w) for w in self.waits], "signals": list(self.signals),
            "reads": [list(r) for r in self.reads], "writes": [list(r) for r in self.writes],
            "prefetch": [list(p) for p in self.prefetch],
            "weight_bytes": self.weight_bytes, "sm": self.sm, "queue_pos": self.queue_pos,
            "carried": list(self.carried),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        op = Opcode[d["opcode"]]
        return cls(
            id=d["id"], opcode=op, params=_params_from_dict(oc.PARAMS_OF[op], d["params"]), stage=d["stage"],
            kind=d["kind"], waits=tuple(map(_WAIT, d["waits"])), signals=tuple(d["signals"]),
            reads=tuple(map(_REGION, d["reads"])), writes=tuple(map(_REGION, d["writes"])),
            prefetch=tuple(map(_PREFETCH, d["prefetch"])), weight_bytes=d["weight_bytes"],
            sm=d["sm"], queue_pos=d["queue_pos"], carried=tuple(d.get("carried", ())),
        )


@dataclass(frozen=True)
class Join:
    """Work the last of `tasks` to finish its own part does before it signals: each task adds 1 to `counter`
    once its part is stored, and the one that brings it to len(tasks) this step reads `reads` (the others'
    parts) and writes `writes`. Only that task knows it is last, so the hazard check treats the join as a task
    of its own that every one of `tasks` happens before and that happens before whatever waits for all of them.
    """
    counter: int
    tasks: tuple[int, ...]
    reads: tuple[Region, ...]
    writes: tuple[Region, ...]

    def to_dict(self) -> dict:
        return {"counter": self.counter, "tasks": list(self.tasks), "reads": [list(r) for r in self.reads],
                "writes": [list(r) for r in self.writes]}

    @classmethod
    def from_dict(cls, d: dict) -> Join:
        return cls(d["counter"], tuple(d["tasks"]), tuple(map(_REGION, d["reads"])),
                   tuple(map(_REGION, d["writes"])))


@dataclass(frozen=True)
class ProgramConstants:
    """Model facts every VM needs; the same for all tasks of a program."""

    dtype: DType
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    max_seq: int
    rms_eps: float
    attn_scale: float
    qk_norm: bool
    rope_cos: int  # buffer ids of the [max_seq, head_dim] tables
    rope_sin: int
    pos: int  # I32 buffer holding the position being decoded
    token: int
    logits: int

    @property
    def q_rows(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_rows(self) -> int:
        return self.n_kv_heads * self.head_dim


@dataclass(repr=False)
class MegakernelProgram:
    constants: ProgramConstants
    buffers: list[Buffer]
    counters: list[Counter]
    tasks: list[Task]
    queues: list[list[int]]  # per SM: task ids in execution order
    threads_per_block: int
    smem_per_block: int
    build: dict = field(default_factory=dict)  # compile-time VM knobs (name -> int)
    meta: dict = field(default_factory=dict)  # model, target, schedule_id: informational
    joins: list[Join] = field(default_factory=list)  # work done by the last of a group of tasks to finish

    @property
    def num_sms(self) -> int:
        return len(self.queues)

    def __repr__(self) -> str:
        # a summary: the dataclass's field-by-field repr of a small model's program runs to tens of kilobytes, which
        # a notebook cell or a log line prints whole; to_dict() holds every field
        m = self.meta
        named = ", ".join(f"{k}={m[k]!r}" for k in ("model", "target", "dtype", "schedule_id") if k in m)
        return (f"MegakernelProgram({named}{', ' if named else ''}tasks={len(self.tasks)}, sms={self.num_sms}, "
                f"buffers={len(self.buffers)}, counters={len(self.counters)}, joins={len(self.joins)}, "
                f"threads_per_block={self.threads_per_block}, smem_per_block={self.smem_per_block})")

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the model's weight buffers (the RoPE tables aside): what the program holds on the GPU."""
        return sum(b.nbytes for b in self.buffers if b.kind == BufferKind.WEIGHT and not b.name.startswith("rope_"))

    @property
    def step_weight_bytes(self) -> int:
        """Weight bytes one decode step reads, the roofline floor's numerator: every weight buffer but the RoPE
        tables, with an embedding table that is not also the LM head (untied) counted as the one row a step reads
        (ModelDims.step_weight_params, which leaves that row out, plus the row). On the tinyllama-1.1b shape
        (vocab 32000, hidden 2048, bf16) the whole table would add 131 MB, 6% of the step's bytes."""
        by_name = {b.name: b for b in self.buffers}
        embed = by_name.get("embed")
        if embed is None or "lm_head" not in by_name:
            return self.weight_bytes
        return self.weight_bytes - embed.nbytes + self.constants.hidden * embed.dtype.nbytes

    # ---- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        c = dataclasses.asdict(self.constants)
        c["dtype"] = self.constants.dtype.name
        return {
            "constants": c,
            "buffers": [{**dataclasses.asdict(b), "kind": b.kind.value, "dtype": b.dtype.name} for b in self.buffers],
            "counters": [dataclasses.asdict(k) for k in self.counters],
            "tasks": [t.to_dict() for t in self.tasks],
            "queues": self.queues,
            "threads_per_block": self.threads_per_block,
            "smem_per_block": self.smem_per_block,
            "build": self.build,
            "meta": self.meta,
            "joins": [j.to_dict() for j in self.joins],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> MegakernelProgram:
        c = dict(d["constants"])
        c["dtype"] = DType[c["dtype"]]
        return cls(
            constants=ProgramConstants(**c),
            buffers=[Buffer(**{**b, "kind": BufferKind(b["kind"]), "dtype": DType[b["dtype"]]}) for b in d["buffers"]],
            counters=[Counter(**k) for k in d["counters"]],
            tasks=[Task.from_dict(t) for t in d["tasks"]],
            queues=[list(q) for q in d["queues"]],
            threads_per_block=d["threads_per_block"],
            smem_per_block=d["smem_per_block"],
            build=dict(d.get("build", {})),
            meta=dict(d.get("meta", {})),
            joins=[Join.from_dict(j) for j in d.get("joins", [])],
        )

    def fingerprint(self) -> str:
        """Content hash of what the VM executes (meta excluded)."""
        return self.fingerprint_of(self.to_dict())

    def known_fingerprint(self) -> str:
        """fingerprint(), read from meta when the program carries it (a program read back from the file cache was
        hashed once, when it was lowered: hashing a 12k-task program takes about half a second); hashed here
        otherwise. A program edited after it was read back must be hashed with fingerprint()."""
        return self.meta.get(FINGERPRINT_META) or self.fingerprint()

    @staticmethod
    def fingerprint_of(d: dict) -> str:
        """fingerprint() of a program's to_dict() form."""
        return hashlib.sha256(json.dumps({k: v for k, v in d.items() if k != "meta"}, sort_keys=True)
                              .encode()).hexdigest()[:16]

    # ---- packed table --------------------------------------------------------------------------
    def pack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(instructions [n_tasks, INSTR_WORDS] int32 in queue order, queue_starts [num_sms + 1] int32,
        counter_producers [n_counters] int32). Raises ProgramError when a task exceeds the ABI."""
        from .errors import ProgramError

        order = [tid for q in self.queues for tid in q]
        width, no_prefetch = oc.INSTR_WORDS, [oc.NO_BUFFER, 0, 0]
        rows = []
        for tid in order:  # one Python list a row and one numpy conversion: 12k rows in well under a second
            t = self.tasks[tid]
            if len(t.waits) > oc.MAX_WAITS or len(t.signals) > oc.MAX_SIGNALS or len(t.prefetch) > oc.MAX_PREFETCH:
                raise ProgramError(f"task {tid} exceeds the ABI (waits/signals/prefetch)", tasks=(tid,))
            # the kernel polls only the waits the tagged residual stream does not carry: a carried one is not packed
            polled = [w for w in t.waits if w.counter not in t.carried] if t.carried else t.waits
            row = [int(t.opcode), t.id, len(polled), len(t.signals)]
            for w in polled:
                row += w
            row += [0] * (oc.SIGNAL_BASE - len(row))
            row += t.signals
            row += [0] * (oc.PREFETCH_BASE - len(row))
            for p in t.prefetch:
                row += p
            for _ in range(len(t.prefetch), oc.MAX_PREFETCH):
                row += no_prefetch
            vals = oc.flat_values(t.params)
            if any(not -oc.INT32_MAX <= v <= oc.INT32_MAX for v in vals):
                raise ProgramError(f"task {tid}: a parameter does not fit in int32", tasks=(tid,))
            row += vals
            row += [0] * (width - len(row))
            rows.append(row)
        table = np.array(rows, dtype=np.int32).reshape(len(order), width)
        starts = np.zeros(len(self.queues) + 1, dtype=np.int32)
        starts[1:] = np.cumsum([len(q) for q in self.queues])
        producers = np.array([k.producers for k in self.counters], dtype=np.int32)
        return table, starts, producers


def _params_to_dict(params) -> dict:
    # dataclasses.fields() per task was most of a 12k-task program's to_dict (fingerprint, cache writes)
    return {name: (_params_to_dict(v) if type(v := getattr(params, name)) in oc.PARAMS_TYPES else v)
            for name in oc.field_names(type(params))}


def _params_from_dict(cls, d: dict):
    """`cls` from its to_dict form. A field the dict lacks takes its default (a program written before the field was
    added); ProgramError names a missing field that has none."""
    names = oc.field_names(cls)
    try:
        return cls(**{name: _params_from_dict(oc.nested_type(cls, name), v) if isinstance(v := d[name], dict) else v
                      for name in names})
    except KeyError:  # rare: only a program written by an earlier version lacks fields
        defaults = oc.field_defaults(cls)
        lacking = [name for name in names if name not in d and name not in defaults]
        if lacking:
            from .errors import ProgramError

            raise ProgramError(f"{cls.__name__} params lack field {lacking[0]!r}, which has no default") from None
        return _params_from_dict(cls, {**defaults, **d})
