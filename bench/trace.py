"""Where does a step's time go? Run the tracing build and account for it per stage kind and per layer.

    python bench/trace.py --model llama-3.2-1b --configs '[{}, {"pipeline": {"pages": 10}}]' --out $OUT
    python bench/trace.py --define AMK_NEW_PATH=1 ...   (a kernel-source variant, as bench/variants.py)

Per layer: the time from the previous layer's last task to this layer's last task, against the layer's bytes
(weights plus the KV cache it reads) over the measured read bandwidth, each stage's share of the time above the
bytes (from the stage before's last task done to its own, less its bytes); and per stage of the layer, the mean
and worst dependency wait of its tasks (time an SM spent between starting a task and its dependencies being
met) and their execution time. The stall at each stage boundary: from the previous stage's last task done to
the last of this stage's tasks ready, split into the signal (to the first task ready) and the spread of the
ready times (first to last); a stage's end follows its last ready task, so the stall lies on the step's path. A
task is ready when its poll saw the dependencies met, or when thread 0 started it if that came later. With
pipeline pages, `page_wait` is the mean time thread 0 of a task spent waiting for its weight pages (the weight
stream behind the consumers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import defaultdict

import amk
from amk.eval.bench import prefill_random_kv
from amk.eval.roofline import measure_read_bandwidth
from amk.schedule import detect_target
from amk.schedule.assign import stage_fill
from amk.schedule.cost import kv_bytes
from amk.schedule.opcodes import Opcode
from amk.vm.loader import MegakernelVM
from amk.vm.weights import pack_weights


def stage_layers(program) -> dict[int, int]:
    """stage -> decoder layer (-1 before the first layer and for the final norm, LM head and argmax). A stage
    names its layer through a task's `layer` parameter or its weight buffer (layers.N.*); a stage naming
    neither (an unfused norm, add or silu_mul) belongs with its neighbours."""
    names = {b.id: b.name for b in program.buffers}
    known: dict[int, int] = {}
    for t in program.tasks:
        layer = -1 if t.kind == "embed" else getattr(t.params, "layer", None)
        if layer is None and hasattr(t.params, "weight"):
            m = re.match(r"layers\.(\d+)\.", names.get(t.params.weight, ""))
            layer = int(m.group(1)) if m else -1
        if layer is not None and t.stage not in known:
            known[t.stage] = int(layer)
    stages = sorted({t.stage for t in program.tasks})
    out, prev = {}, -1
    for i, s in enumerate(stages):
        if s in known:
            prev = known[s]
        elif prev == -1:  # a norm before the first layer's QKV: the next stage that knows
            prev = next((known[n] for n in stages[i:] if n in known), -1)
        out[s] = known.get(s, prev)
    return out


def clock_ghz(t) -> float:
    """The SMs' mean clock over the traced step (GHz): clock64 cycles over globaltimer ns, summed over tasks, from a
    trace of vm/loader.TRACE_WORDS words a task (columns 0 and 2 the start and done in ns, 8 and 9 the cycle counts
    at the same points). Raises ValueError when the trace holds no elapsed cycles."""
    ns, cycles = int((t[:, 2] - t[:, 0]).sum()), int((t[:, 9] - t[:, 8]).sum())
    if ns <= 0 or cycles <= 0:
        raise ValueError(f"the trace holds {cycles} cycles over {ns} ns: no clock to convert phase cycles with")
    return cycles / ns


def summarise(program, trace, bandwidth_gbs: float, context: int) -> dict:
    t = trace.cpu().numpy().astype("int64")
    origin = t[:, 0].min()
    ghz = clock_ghz(t)
    layer_of = stage_layers(program)
    kinds: dict[str, list] = defaultdict(list)
    stages: dict[int, list] = defaultdict(list)
    for task in program.tasks:
        t0, t1, t2, _, p0, p1, p2, p3 = t[task.id, :8]
        # the polling thread takes ready, thread 0 start: a poll can see the dependencies met before thread 0, still
        # releasing the task before, starts this one, and then the task waited for nothing
        t1 = max(t0, t1)
        kinds[task.kind].append(((t1 - t0) / 1e3, (t2 - t1) / 1e3))
        stages[task.stage].append({"t0": (t0 - origin) / 1e3, "t1": (t1 - origin) / 1e3, "t2": (t2 - origin) / 1e3,
                                   "bytes": task.weight_bytes + kv_bytes(task, program, context),
                                   "page_wait_us": p3 / ghz / 1e3 if task.opcode == Opcode.MATVEC else 0.0, "kind": task.kind,
                                   "phases_us": [p / ghz / 1e3 for p in (p0, p1, p2, p3)]})
    per_kind = {k: {"tasks": len(v), "wait_us": sum(a for a, _ in v) / len(v), "exec_us": sum(b for _, b in v) / len(v),
                    "exec_max_us": max(b for _, b in v)} for k, v in kinds.items()}
    timeline, layers = [], defaultdict(list)
    for s in sorted(stages):
        st = stages[s]
        waits = [x["t1"] - x["t0"] for x in st]
        row = {"stage": s, "kind": st[0]["kind"], "layer": layer_of[s], "tasks": len(st),
               "first_ready_us": min(x["t1"] for x in st), "last_ready_us": max(x["t1"] for x in st),
               "last_done_us": max(x["t2"] for x in st), "wait_mean_us": sum(waits) / len(st),
               "wait_max_us": max(waits), "exec_mean_us": sum(x["t2"] - x["t1"] for x in st) / len(st),
               "page_wait_us": sum(x["page_wait_us"] for x in st) / len(st), "bytes": sum(x["bytes"] for x in st),
               "phases_us": [sum(x["phases_us"][k] for x in st) / len(st) for k in range(4)]}
        timeline.append(row)
        layers[row["layer"]].append(row)
    boundary_stalls(timeline)
    per_layer, prev_done = [], 0.0
    for layer in sorted(k for k in layers if k >= 0):
        rows = layers[layer]
        done = max(r["last_done_us"] for r in rows)
        nbytes = sum(r["bytes"] for r in rows)
        ideal = nbytes / (bandwidth_gbs * 1e3)
        stage_rows, stage_prev = [], prev_done
        for r in rows:  # each stage's share of the layer's time: from the stage before's last task done to its own
            span = r["last_done_us"] - stage_prev
            stage_rows.append({k: r[k] for k in ("kind", "tasks", "wait_mean_us", "wait_max_us", "exec_mean_us",
                                                 "page_wait_us", "phases_us", "signal_us", "ready_spread_us",
                                                 "boundary_us")}
                              | {"span_us": span, "above_bytes_us": span - r["bytes"] / (bandwidth_gbs * 1e3)})
            stage_prev = r["last_done_us"]
        per_layer.append({"layer": layer, "time_us": done - prev_done, "bytes": nbytes, "ideal_us": ideal,
                          "boundary_us": sum(r["boundary_us"] for r in rows), "stages": stage_rows})
        prev_done = done
    return {"step_us": (t[:, 2].max() - origin) / 1e3, "clock_ghz": ghz, "per_kind": per_kind, "per_layer": per_layer,
            "timeline": timeline,
            "stage_fill": {f.kind: f.fill for f in stage_fill(program.tasks, program.constants, program.num_sms)}}


def boundary_stalls(timeline: list[dict]) -> None:
    """Adds to each stage row of `timeline` (program order, times in us) the stall at its boundary with the stage
    before it: `signal_us` from that stage's last task done to this stage's first task ready (negative when a
    task of this stage waits only for some of that stage's tasks), `ready_spread_us` from the first to the last
    task ready, and `boundary_us` = last ready - previous last done (0 for the first stage)."""
    prev_done = None
    for row in timeline:
        if prev_done is None:
            row.update(signal_us=0.0, ready_spread_us=row["last_ready_us"] - row["first_ready_us"], boundary_us=0.0)
        else:
            row.update(signal_us=row["first_ready_us"] - prev_done,
                       ready_spread_us=row["last_ready_us"] - row["first_ready_us"],
                       boundary_us=row["last_ready_us"] - prev_done)
        prev_done = row["last_done_us"]


def print_summary(s: dict) -> None:
    print(f"{'kind':<20}{'tasks':>7}{'wait_us':>10}{'exec_us':>10}{'exec_max':>10}")
    for k, v in sorted(s["per_kind"].items(), key=lambda kv: -kv[1]["exec_us"] * kv[1]["tasks"]):
        print(f"{k:<20}{v['tasks']:>7}{v['wait_us']:>10.2f}{v['exec_us']:>10.2f}{v['exec_max_us']:>10.2f}")
    layers = s["per_layer"]
    if not layers:
        return
    print(f"{'layer':>5}{'time_us':>9}{'ideal_us':>9}{'ideal%':>8}{'bound_us':>9}  stages: kind "
          "wait_mean/wait_max/exec_mean(/page_wait)")
    for r in layers:
        st = "  ".join(f"{x['kind']} {x['wait_mean_us']:.1f}/{x['wait_max_us']:.1f}/{x['exec_mean_us']:.1f}"
                       + (f"/{x['page_wait_us']:.1f}" if x["page_wait_us"] else "") for x in r["stages"])
        print(f"{r['layer']:>5}{r['time_us']:>9.1f}{r['ideal_us']:>9.1f}{100 * r['ideal_us'] / r['time_us']:>7.0f}%"
              f"{r['boundary_us']:>9.1f}  {st}")
    mid = layers[1:-1] or layers
    print("phases of a middle layer (us; matvec: stage input / dot / fold+epilogue / page wait, or for an O task "
          "combining attention partitions the part of its staging until their (max, sum) are in; attention "
          "partial: stage q / scores / softmax statistics / values+store, or when warps take q heads on the "
          "shared-memory path: stage q / scores and softmax / values (with their stores at one warp a q head) / "
          "the warps' merge and stores):",
          "  ".join(f"{x['kind']} " + "/".join(f"{v:.1f}" for v in x["phases_us"]) for x in mid[len(mid) // 2]["stages"]))
    print("stage boundaries of a middle layer (us; signal / spread of ready times / stall, from the previous stage's "
          "last task done to this stage's last task ready):",
          "  ".join(f"{x['kind']} {x['signal_us']:.2f}/{x['ready_spread_us']:.2f}/{x['boundary_us']:.2f}"
                    for x in mid[len(mid) // 2]["stages"]))
    print("time above its bytes a stage of a middle layer (us; from the stage before's last task done to its own, "
          "less its bytes at the measured bandwidth):",
          "  ".join(f"{x['kind']} {x['above_bytes_us']:.2f}" for x in mid[len(mid) // 2]["stages"]))
    print("SM fill a stage (the mean SM's bytes over the busiest SM's under the placement):",
          "  ".join(f"{k} {v:.2f}" for k, v in s["stage_fill"].items()))
    print(f"mean over layers 1..{len(layers) - 2}: {sum(r['time_us'] for r in mid) / len(mid):.1f} us a layer against "
          f"{sum(r['ideal_us'] for r in mid) / len(mid):.1f} us of bytes, {sum(r['boundary_us'] for r in mid) / len(mid):.1f} us "
          "of it stalled at stage boundaries")


def save_raw(program, vm, steps: int, context: int, bandwidth_gbs: float, path: str) -> None:
    """Launch `steps` more traced steps (each one position on, one more cached row to read) and save every task's
    trace words: `trace` int64 [steps, tasks, TRACE_WORDS] (vm/loader.py names the words; column 3 the block and
    the SM), and per task its `stage`, `layer` (stage_layers), `kind` (unicode) and `bytes` (weights plus the KV
    cache it reads at `context`), and the measured read bandwidth, for bench/tools/trace_raw.py."""
    import numpy as np

    layer_of = stage_layers(program)
    traces = []
    for _ in range(steps):
        vm.launch()
        vm.check()
        traces.append(vm.trace.cpu().numpy().astype("int64"))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez_compressed(path, trace=np.stack(traces), stage=np.array([t.stage for t in program.tasks]),
                        layer=np.array([layer_of[t.stage] for t in program.tasks]),
                        kind=np.array([t.kind for t in program.tasks]),
                        bytes=np.array([t.weight_bytes + kv_bytes(t, program, context) for t in program.tasks]),
                        read_bandwidth_gbs=np.float64(bandwidth_gbs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--configs", default="[{}]", help="JSON list of config dicts")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--raw", type=int, default=0, metavar="STEPS",
                    help="also save STEPS more traced steps of the first config, every task's times, to trace_raw.npz")
    ap.add_argument("--define", action="append", default=[], metavar="NAME=VALUE",
                    help="a preprocessor define put before the kernel source (repeatable; as bench/variants.py)")
    args = ap.parse_args()
    from variants import (  # a sibling script, importable when this one runs
        Variant,
        kernel_defines,
        parse_defines,
    )

    try:
        variant = Variant("defines", parse_defines(args.define, "--define"))
    except ValueError as e:
        ap.error(str(e))
    with kernel_defines(variant.prefix):
        run(args)


def run(args) -> None:
    target = detect_target()
    bandwidth = measure_read_bandwidth()
    model = amk.load_model(args.model, dtype=args.dtype, device="cuda")
    results = []
    for cfg in json.loads(args.configs):
        prog = amk.lower(model, target, cfg, max_seq=2048)
        vm = MegakernelVM(prog, pack_weights(model.eager, prog, device="cuda"), trace=True)
        prefill_random_kv(vm, args.context)
        vm.set_token(1)
        for _ in range(5):
            vm.launch()
        vm.check()
        s = summarise(prog, vm.trace, bandwidth, args.context)
        s.update(config=cfg, read_bandwidth_gbs=bandwidth, defines=args.define)
        results.append(s)
        if args.raw and len(results) == 1:
            save_raw(prog, vm, args.raw, args.context, bandwidth, os.path.join(args.out, "trace_raw.npz"))
        print(f"config {cfg}: traced step {s['step_us']:.1f} us (read bandwidth {bandwidth:.0f} GB/s, "
              f"SM clock {s['clock_ghz']:.2f} GHz)")
        print_summary(s)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "trace.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()
