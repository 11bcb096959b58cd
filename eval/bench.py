"""Time the megakernel: CUDA events around many autonomous decode steps, on fresh state, after verify."""

from __future__ import annotations

import statistics

import torch


def prefill_random_kv(vm, ctx: int, seed: int = 0) -> None:
    """Fill the first `ctx` KV slots with random values so attention reads real data at a real length."""
    c = vm.c
    g = torch.Generator(device=vm.device).manual_seed(seed)
    k = torch.randn((c.n_layers, c.n_kv_heads, ctx, c.head_dim), generator=g, device=vm.device)
    v = torch.randn((c.n_layers, c.n_kv_heads, ctx, c.head_dim), generator=g, device=vm.device)
    vm.load_kv_prefix(k, v)


WARM_SKIP_FACTOR = 2.0  # warm-up steps this many times slower than stop_above_us end the discarded first repeat


def time_vm(vm, steps: int = 200, context: int = 1024, repeats: int = 5, warmup: int = 10,
            stop_above_us: float | None = None) -> dict:
    """Per-step latency in microseconds. Each repeat starts from fresh state (KV prefix of `context`
    positions, token 1) and runs `steps` steps with the position and token advancing on the device; the
    whole step is timed, host launch included. The VM's error word and task count are checked after each
    repeat, so a number is only returned for runs that executed every task.

    `stop_above_us`: when the first timed repeat is slower than this, the others are not run (racing, as in
    irace or Hyperband: a config clearly slower than the best so far needs no spread to be discarded). The
    result then holds one sample, `spread_us` None and `stopped_early` True. When the first repeat's warm-up
    steps already run over WARM_SKIP_FACTOR times slower, that repeat ends there (warmed clocks and caches
    change such a config's figure by a few percent, and its 200 discarded steps cost seconds); the timing then
    stops after one repeat only if that repeat, run cold, is also over WARM_SKIP_FACTOR times slower (a host
    stall in the warm-up steps must not cost a good config its warm repeat and its chance)."""
    c = vm.c
    # every launched step needs a KV slot of its own (a step past the last one raises): a short context runs
    # fewer steps
    warmup = min(warmup, c.max_seq // 4)
    steps = max(1, min(steps, c.max_seq - warmup))
    context = max(0, min(context, c.max_seq - steps - warmup - 1))  # as schedule.cost.bench_context
    samples, stop_at = [], stop_above_us
    for r in range(repeats + 1):
        vm.reset()
        prefill_random_kv(vm, context, seed=r)
        vm.set_token(1)
        if r == 0 and stop_above_us is not None and warmup:
            if _steps_us(vm, warmup) > WARM_SKIP_FACTOR * stop_above_us:
                vm.check()  # the warm-up steps ran every task
                stop_at = WARM_SKIP_FACTOR * stop_above_us  # the next repeat runs cold
                continue
        else:
            for _ in range(warmup):
                vm.launch()
        per_step = _steps_us(vm, steps)
        vm.check()
        if r:  # the first repeat warms clocks and caches
            samples.append(per_step)
            if stop_at is not None and samples[0] > stop_at:
                break
    stopped = len(samples) < repeats
    return {
        "latency_us": statistics.median(samples),
        "spread_us": None if stopped else statistics.pstdev(samples),
        "samples_us": samples,
        "steps": steps,
        "context": context,
        "stopped_early": stopped,
    }


def _steps_us(vm, n: int) -> float:
    """Launch `n` steps; their mean time in microseconds by CUDA events, host launch included."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        vm.launch()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / n
