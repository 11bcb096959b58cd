"""ReferenceVM: runs a program task by task on torch (CPU or CUDA), honouring the counters.

Each SM is a cursor over its queue; a task runs once every counter it waits on has been signalled
enough times in this step. In adversarial mode the next SM to run is drawn at random among the
ready ones, scratch and unused KV slots are poisoned with NaN before each step, and counter values
are checked; a state where no SM can run while tasks remain raises DeadlockError instead of hanging.
"""

from __future__ import annotations

import random

import torch

from amk.schedule.errors import CounterMismatchError, DeadlockError, context_full
from amk.schedule.program import BufferKind, MegakernelProgram

from .semantics import Memory, Semantics
from .tag_words import TagWords


class ReferenceVM:
    def __init__(self, program: MegakernelProgram, weights: dict[int, torch.Tensor], device: str | torch.device = "cpu",
                 adversarial: bool = False, seed: int = 0, poison: bool = True):
        self.program = program
        self.c = program.constants
        self.device = torch.device(device)
        self.adversarial = adversarial
        self.poison = poison or adversarial
        self.rng = random.Random(seed)
        words = TagWords(program.build)
        self.words = words if words.on("X") or words.on("H") else None
        self.sem = Semantics(self.c, partials_rounded=bool(int(program.build.get("PARTIALS_MODEL_DTYPE", 0))),
                             words=self.words)
        tensors: dict[int, torch.Tensor] = {}
        for b in program.buffers:
            if b.kind == BufferKind.WEIGHT:
                tensors[b.id] = weights[b.id].to(self.device)
            elif b.kind == BufferKind.SCRATCH and b.arena >= 0:
                continue  # addressed through the arena
            else:
                dt = b.dtype.torch
                tensors[b.id] = torch.zeros(b.numel, dtype=dt, device=self.device)
        self.mem = Memory(tensors, {b.id: b.cols for b in program.buffers})
        self._kv = [b.id for b in program.buffers if b.kind == BufferKind.KV]
        # poisoned with NaN before each step: the float activations (the tagged streams' int32 words carry tags,
        # which a read checks)
        self._scratch = [b.id for b in program.buffers if b.kind in (BufferKind.SCRATCH, BufferKind.ARENA)
                         and b.id in tensors and tensors[b.id].is_floating_point()]
        self.tasks_run = 0
        self.reset()

    # ---- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty KV cache (poisoned), position 0, and the tagged streams' words cleared (their epochs restart)."""
        for bid in self._kv:
            self.mem[bid].fill_(float("nan") if self.poison else 0.0)
        if self.words is not None:
            for bid in self.words.buffer.values():
                if bid >= 0:
                    self.mem[bid].zero_()
            self.words.epoch = 0
        self.set_position(0)

    def set_position(self, pos: int) -> None:
        if not 0 <= pos < self.c.max_seq:
            raise ValueError(f"position {pos} outside the program's context of {self.c.max_seq}")
        self.mem[self.c.pos][0] = pos
        self._pos = pos

    @property
    def position(self) -> int:
        """The position the next step decodes at; max_seq once the last slot has been decoded."""
        return self._pos

    def load_kv_prefix(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [n_layers, n_kv_heads, P, head_dim]; slots P.. stay poisoned. Sets the position to P."""
        c = self.c
        P = k.shape[2]
        for bid, src in zip(self._kv, (k, v)):
            cache = self.mem[bid].view(c.n_layers, c.n_kv_heads, c.max_seq, c.head_dim)
            cache[:, :, :P] = src.to(cache.dtype).to(self.device)
        self.set_position(P)

    def kv_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.c
        return tuple(self.mem[b].view(c.n_layers, c.n_kv_heads, c.max_seq, c.head_dim) for b in self._kv)

    # ---- one decode step -----------------------------------------------------------------------
    def step(self, token: int) -> tuple[torch.Tensor, int]:
        """Decode `token` at the current position; returns (fp32 logits on the CPU, greedy next token) and
        advances the position. Raises ContextError for a step past the last position: it has no KV slot."""
        pos = self.position
        if pos >= self.c.max_seq:
            raise context_full(pos, self.c.max_seq)
        self.mem[self.c.token][0] = int(token)
        if self.words is not None:
            self.words.epoch += 1
        if self.poison:
            for bid in self._scratch:
                self.mem[bid].fill_(float("nan"))
            for bid in self._kv:
                cache = self.mem[bid].view(self.c.n_layers, self.c.n_kv_heads, self.c.max_seq, self.c.head_dim)
                cache[:, :, pos:] = float("nan")
            self.mem[self.c.logits].fill_(float("nan"))
        self._run_tasks()
        logits = self.mem[self.c.logits].detach().float().cpu().clone()
        nxt = int(self.mem[self.c.token][0])
        if pos + 1 < self.c.max_seq:
            self.set_position(pos + 1)
        else:
            self._pos = pos + 1  # the buffer keeps the last slot: no task may address one past it
        return logits, nxt

    def _run_tasks(self) -> None:
        prog = self.program
        counts = [0] * len(prog.counters)
        self.mem.arrivals = counts  # a join's tasks count their arrivals on the step's counters
        cursor = [0] * len(prog.queues)
        ready = [sm for sm, q in enumerate(prog.queues) if q]
        blocked: dict[int, list[int]] = {}  # counter -> SMs whose head task waits on it
        remaining = len(prog.tasks)
        run = 0
        while ready:
            i = self.rng.randrange(len(ready)) if self.adversarial else 0
            sm = ready[i]
            ready[i] = ready[-1]
            ready.pop()
            task = prog.tasks[prog.queues[sm][cursor[sm]]]
            unmet = next((w for w in task.waits if counts[w.counter] < w.count), None)
            if unmet is not None:
                blocked.setdefault(unmet.counter, []).append(sm)
                continue
            if self.words is not None:
                self.words.task = task.id
            self.sem.run(self.mem, task.opcode, task.params)
            run += 1
            for s in task.signals:
                counts[s] += 1
                if self.adversarial and counts[s] > prog.counters[s].producers:
                    raise CounterMismatchError(
                        f"counter {s} ({prog.counters[s].name}) signalled {counts[s]} times, declares "
                        f"{prog.counters[s].producers} producers (task {task.id})", tasks=(task.id,))
                ready.extend(blocked.pop(s, ()))
            cursor[sm] += 1
            if cursor[sm] < len(prog.queues[sm]):
                ready.append(sm)
        remaining -= run
        self.tasks_run = run
        if remaining:
            stuck = []
            for sm, q in enumerate(prog.queues):
                if cursor[sm] < len(q):
                    t = prog.tasks[q[cursor[sm]]]
                    w = next(w for w in t.waits if counts[w.counter] < w.count)
                    stuck.append((t.id, t.kind, sm, w.counter, counts[w.counter], w.count))
            desc = "; ".join(f"task {tid} ({kind}) on SM {sm} waits for counter {cid} at {have}/{need}"
                             for tid, kind, sm, cid, have, need in stuck[:6])
            raise DeadlockError(f"deadlock: {remaining} tasks never ran; {desc}", tasks=tuple(s[0] for s in stuck))
        if self.adversarial:
            bad = [(k.id, counts[k.id], k.producers) for k in prog.counters if counts[k.id] != k.producers]
            if bad:
                raise CounterMismatchError(f"counters off after the step (id, value, declared): {bad[:6]}")
