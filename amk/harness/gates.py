"""The honesty gates on a latency (HARNESS.md): none without a correctness pass on the same device; none
under the physical floor; a GPU run that was not timed is a failure, not a prediction; a prediction is
labelled "predicted" wherever it appears."""

from __future__ import annotations

from amk.cache import Cache
from amk.schedule.cost import BENCH_CONTEXT

from .environment import Device
from .verdict import LatencyKind, Verdict


def short_context_note(context: int | None, max_seq: int | None, what: str = "latency_us is") -> str | None:
    """The note that a latency is taken at a KV context shorter than BENCH_CONTEXT (a model of fewer positions
    than the timed steps need), or None. `max_seq`: the program's positions, where known."""
    if context is None or context >= BENCH_CONTEXT:
        return None
    holds = f"{max_seq} position{'' if max_seq == 1 else 's'}" if max_seq is not None else "fewer positions"
    return (f"{what} at a KV context of {context} position{'' if context == 1 else 's'}, not {BENCH_CONTEXT}: "
            f"the program holds {holds}, and its warm-up and timed steps follow the context")


def gate_latency(v: Verdict, timing: dict | None, floor, dev: Device, max_seq: int) -> None:
    """Set the verdict's latency from `timing` (GPU) or the prediction (CPU), or say in a note why there is none.
    `max_seq`: the program's positions, which bound the KV context the latency is taken at."""
    if not v.correct:
        v.notes.append("no latency: the program did not pass correctness on this device")
        return
    if dev == Device.CUDA:
        if timing is None:
            v.correct = False
            v.notes.append("no latency: the GPU run was not timed")
            return
        spread = timing.get("spread_us")
        latency, spread, kind = float(timing["latency_us"]), None if spread is None else float(spread), \
            LatencyKind.MEASURED_GPU
    else:
        if v.predicted_latency_us is None:
            v.notes.append("no latency: the cost model could not price this program")
            return
        latency, spread, kind = v.predicted_latency_us, None, LatencyKind.PREDICTED
        v.notes.append(f"latency_us is PREDICTED by the cost model for {v.gpu} (correctness ran on the CPU "
                       "ReferenceVM); it was not measured")
    reason = floor.below_floor(latency, "measurement" if kind == LatencyKind.MEASURED_GPU else "prediction")
    if reason:
        v.notes.append(f"latency withheld: {reason}")
        return
    v.latency_us, v.latency_spread_us, v.latency_kind = latency, spread, kind.value
    if kind == LatencyKind.MEASURED_GPU:
        v.timed_repeats = len(timing.get("samples_us") or [None])
        if timing.get("stopped_early"):
            v.notes.append(f"timing stopped after one repeat: {latency:.2f} us is above stop_above_us; the "
                           "latency is that repeat's and has no spread")
    context = timing.get("context") if kind == LatencyKind.MEASURED_GPU else (v.cost or {}).get("context")
    v.latency_context = None if context is None else int(context)
    note = short_context_note(context, max_seq)
    if note:
        v.notes.append(note)
    ref_floor = floor.measured_us or floor.spec_us
    v.pct_of_floor = 100.0 * ref_floor / latency if ref_floor and latency > 0 else None
    if ref_floor and not floor.measured_us:
        v.notes.append("pct_of_floor is against the spec bandwidth (no measured bandwidth on this device)")


def speedups(v: Verdict, model, program, cache: Cache, measure: bool) -> None:
    from amk.schedule.cost import bench_context

    from .baselines import peer_latencies

    got = peer_latencies(cache, model, program.constants.max_seq, bench_context(program.constants.max_seq), measure)
    v.speedups = {name: lat / v.latency_us for name, lat in got.items()}
    if not got:
        v.notes.append("no speedups: no peer has been timed on this GPU for this model (amk bench --peers)")
