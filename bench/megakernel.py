"""One run on one GPU: read bandwidth, the megakernel's step latency (verified first), and the peers.

    python bench/megakernel.py --model llama-3.2-1b --dtype bf16 --context 1024 [--configs sweep.json] [--rounds 3]
        [--peers]

Prints a table (latency, percent of the measured and spec floors, speed-ups) and writes JSON with the
device name, date and command to --out (default bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

import amk
from amk.eval.bench import time_vm
from amk.eval.oracle import make_vm, verify
from amk.eval.roofline import Floor, measure_read_bandwidth
from amk.harness.environment import git_commit
from amk.schedule import ScheduleConfig, detect_target
from amk.vm.loader import nvrtc_version


def run_config(model, target, cfg: dict, max_seq: int, context: int, steps: int, cases: str) -> dict:
    row, vm = build_config(model, target, cfg, max_seq, cases)
    if vm is not None:
        try:
            row.update(time_vm(vm, steps=steps, context=context))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
            row["trace"] = traceback.format_exc()[-1500:]
    return row


def build_config(model, target, cfg: dict, max_seq: int, cases: str) -> tuple[dict, object | None]:
    """(row, vm): the config lowered, validated, built and verified on the GPU; vm is None where any step failed
    (the row's `error` says which)."""
    row = {"config": cfg}
    try:
        config = ScheduleConfig.from_dict(cfg)
        row["schedule_id"] = config.schedule_id
        prog = amk.lower(model, target, config, max_seq=max_seq)
        v = amk.validate(prog, target)
        if not v.ok:
            row["error"] = f"rejected: {v.first_message()}"
            return row
        vm = make_vm(prog, model, device="cuda", vm="cuda")
        ver = verify(prog, model, device="cuda", vm="cuda", cases=cases, runner=vm)
        d = ver.to_dict()  # "passed": the count of cases, as in the results of earlier commits
        row["verify"] = {"passed": d["cases_passed"], **{k: d[k] for k in ("total", "failures", "worst_mere", "worst_mare")}}
        row.update(tasks=len(prog.tasks), registers=vm.registers, local_bytes=vm.local_bytes, build=vm.build_origin, build_s=round(vm.build_seconds, 2))
        if not ver.ok:
            row["error"] = "verify failed"
            return row, None
        return row, vm
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"
        row["trace"] = traceback.format_exc()[-1500:]
    return row, None


def run_rounds(model, target, configs: list[dict], max_seq: int, context: int, steps: int, cases: str,
               rounds: int) -> list[dict]:
    """Every config built and verified first, then timed forward and backward through the list `rounds` times,
    so that a drift of the GPU's clocks falls on every config alike: each row's latency_us is the mean of its
    rounds' means, with `rounds_us` the means and `latency_min_us` their least."""
    built = [build_config(model, target, cfg, max_seq, cases) for cfg in configs]
    times: list[list[float]] = [[] for _ in configs]
    for r in range(rounds):
        order = range(len(configs)) if r % 2 == 0 else reversed(range(len(configs)))
        for i in order:
            row, vm = built[i]
            if vm is None:
                continue
            try:
                t = time_vm(vm, steps=steps, context=context)
                times[i].append(t["latency_us"])
                row.update({k: v for k, v in t.items() if k != "latency_us"})
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
                built[i] = (row, None)
    rows = []
    for (row, _), ts in zip(built, times):
        if ts and "error" not in row:
            row.update(latency_us=sum(ts) / len(ts), latency_min_us=min(ts), rounds_us=ts)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--max-seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--configs", default="", help="JSON file: a list of config dicts (default: the default config)")
    ap.add_argument("--cases", default="reduced")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time the configs forward and backward through the list this many times, each built and "
                         "verified once (default 1: each config built, verified and timed in turn)")
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    target = detect_target()
    env = {"device": torch.cuda.get_device_name(), "target": target.name, "torch": torch.__version__,
           "nvrtc": nvrtc_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
           "commit": git_commit()}
    bw = measure_read_bandwidth()
    model = amk.load_model(args.model, dtype=args.dtype, device="cuda")
    configs = json.load(open(args.configs)) if args.configs else [{}]
    rows = []
    if args.rounds > 1:
        rows = run_rounds(model, target, configs, args.max_seq, args.context, args.steps, args.cases, args.rounds)
    else:
        for cfg in configs:
            rows.append(run_config(model, target, cfg, args.max_seq, args.context, args.steps, args.cases))
    for r in rows:
        print(json.dumps({k: r.get(k) for k in ("schedule_id", "latency_us", "spread_us", "tasks", "registers", "error")}),
              flush=True)
    weight_bytes = amk.lower(model, target, None, max_seq=args.max_seq).step_weight_bytes
    floor = Floor(weight_bytes, target.spec_bandwidth_gbs, bw)
    peers = {}
    if args.peers:
        from amk.eval.peers import time_eager, time_static_graph

        for name, fn in [("torch_static_cuda_graph", lambda: time_static_graph(model, args.max_seq, args.context)),
                         ("transformers_eager", lambda: time_eager(model, args.context)),
                         ("torch_compile_cuda_graph", lambda: time_static_graph(model, args.max_seq, args.context,
                                                                                 compiled=True))]:
            if name == "torch_compile_cuda_graph" and args.no_compile:
                continue
            try:
                t0 = time.perf_counter()
                peers[name] = fn()
                peers[name]["wall_s"] = round(time.perf_counter() - t0, 1)
            except Exception as e:
                peers[name] = {"error": f"{type(e).__name__}: {e}"}
            print(name, json.dumps(peers[name])[:300], flush=True)
    best = min((r for r in rows if "latency_us" in r), key=lambda r: r["latency_us"], default=None)
    result = {"env": env, "model": args.model, "dtype": args.dtype, "context": args.context,
              "read_bandwidth_gbs": bw, "floor": floor.to_dict(), "megakernel": rows, "peers": peers}
    if best:
        result["best"] = {"schedule_id": best["schedule_id"], "latency_us": best["latency_us"],
                          **floor.percent_of(best["latency_us"]),
                          "speedups": {k: v["latency_us"] / best["latency_us"] for k, v in peers.items() if "latency_us" in v}}
    os.makedirs(args.out, exist_ok=True)
    label = os.path.basename(os.path.normpath(args.model))  # a checkpoint directory names the file by its last part
    path = os.path.join(args.out, f"{time.strftime('%Y%m%d-%H%M%S')}_{target.name}_{label}_{args.dtype}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nread bandwidth {bw:.0f} GB/s; floor {floor.measured_us:.1f} us measured, {floor.spec_us:.1f} us spec")
    print(f"{'config':<14}{'latency_us':>12}{'spread':>9}{'%meas':>8}{'%spec':>8}  error")
    for r in rows:
        lat = r.get("latency_us")
        pct = floor.percent_of(lat) if lat else {}
        print(f"{r.get('schedule_id', '?'):<14}{lat or float('nan'):>12.1f}{r.get('spread_us', float('nan')):>9.1f}"
              f"{pct.get('pct_of_measured_floor') or float('nan'):>8.1f}{pct.get('pct_of_spec_floor') or float('nan'):>8.1f}"
              f"  {r.get('error', '')[:60]}")
    for k, v in peers.items():
        sp = (v["latency_us"] / best["latency_us"]) if best and "latency_us" in v else float("nan")
        print(f"{k:<28}{v.get('latency_us', float('nan')):>10.1f} us   megakernel speed-up {sp:.2f}x  {v.get('error', '')}")
    print("wrote", path)


if __name__ == "__main__":
    main()
