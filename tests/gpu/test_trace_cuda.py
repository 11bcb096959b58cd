"""The tracing build (bench/trace.py's kernel): its words per task as vm/loader.py TRACE_WORDS describes them, and
the same logits as the kernel without tracing."""

import pytest
import torch

import amk
from amk.vm.loader import TRACE_WORDS, MegakernelVM
from amk.vm.weights import pack_weights


@pytest.mark.parametrize("name", ["toy-2L", "smollm2-135m"])
def test_trace_words_and_logits(name, target):
    model = amk.load_model(name, dtype="bf16", device="cuda")
    prog = amk.lower(model, target, None, max_seq=64)
    weights = pack_weights(model.eager, prog, device="cuda")
    plain, traced = MegakernelVM(prog, weights), MegakernelVM(prog, weights, trace=True)
    assert plain.trace is None and traced.trace.shape == (len(prog.tasks), TRACE_WORDS)
    for token in (1, 7, 3):
        want, got = plain.step(token), traced.step(token)
        assert torch.equal(want[0], got[0]) and want[1] == got[1]  # tracing changes no result
        t = traced.trace.cpu()
        start, ready, done = t[:, 0], t[:, 1], t[:, 2]
        # thread 0 takes start and done, the polling thread ready: a poll may see a task's dependencies met before
        # thread 0, still releasing the task before, reaches it, so only each thread's own times are ordered
        assert bool((start > 0).all() and (start <= done).all() and (ready <= done).all())
        for queue in prog.queues:
            assert bool((done[queue[:-1]] <= start[queue[1:]]).all()), queue  # thread 0, task after task
            assert bool((ready[queue[:-1]] <= ready[queue[1:]]).all()), queue  # the polling thread likewise
        block, sm = t[:, 3] & 0xFFFFFFFF, t[:, 3] >> 32
        assert block.tolist() == [task.sm for task in prog.tasks]  # each task ran on its queue's block
        on = {b: set(sm[block == b].tolist()) for b in set(block.tolist())}
        assert all(len(s) == 1 for s in on.values())  # a block stays on one SM for the whole step
        assert len({next(iter(s)) for s in on.values()}) > 1  # the SM word is written, not a constant
        assert bool((t[:, 9] > t[:, 8]).all())  # clock64 at done after clock64 at start
