"""One GPU machine, one run: build, verify and time the megakernel on several models; print a table, write JSON.

    python bench/gpu_check.py --models toy,toy-2L --dtypes fp32,bf16 --time llama-3.2-1b --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import traceback

import torch

import amk
from amk.eval.bench import time_vm
from amk.eval.oracle import verify
from amk.schedule import detect_target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="toy,toy-2L")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--cases", default="full")
    ap.add_argument("--time", default="")
    ap.add_argument("--max-seq", type=int, default=2048)
    ap.add_argument("--config", default="")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    target = detect_target()
    env = {"device": torch.cuda.get_device_name(), "target": target.to_dict(), "torch": torch.__version__,
           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(env))
    config = json.loads(args.config) if args.config else None
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        for dt in args.dtypes.split(","):
            row = {"model": name, "dtype": dt}
            try:
                t0 = time.perf_counter()
                model = amk.load_model(name, dtype=dt, device="cuda")
                prog = amk.lower(model, target, config, max_seq=min(args.max_seq, model.dims.max_positions))
                res = verify(prog, model, device="cuda", vm="cuda", cases=args.cases)
                d = res.to_dict()
                row.update(passed=d["cases_passed"], total=d["total"], worst_mere=d["worst_mere"], worst_mare=d["worst_mare"],
                           failures=d["failures"], tasks=len(prog.tasks), seconds=round(time.perf_counter() - t0, 1))
                row["case_detail"] = d["cases"]
            except Exception as e:
                row.update(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-2000:])
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "case_detail"})[:1500], flush=True)
            torch.cuda.empty_cache()
    timings = []
    for name in [m for m in args.time.split(",") if m]:
        try:
            model = amk.load_model(name, dtype="bf16", device="cuda")
            prog = amk.lower(model, target, config, max_seq=args.max_seq)
            from amk.eval.oracle import make_vm

            vm = make_vm(prog, model, device="cuda", vm="cuda")
            t = time_vm(vm, steps=200, context=1024)
            floor_ms = prog.step_weight_bytes / (target.spec_bandwidth_gbs * 1e9) * 1e3
            t.update(model=name, tasks=len(prog.tasks), weight_bytes=prog.weight_bytes, spec_floor_ms=floor_ms,
                     ms_per_step=t["latency_us"] / 1e3,
                     build=vm.build_origin, build_s=vm.build_seconds)
            timings.append(t)
            print(json.dumps(t), flush=True)
        except Exception as e:
            timings.append({"model": name, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]})
            print(json.dumps(timings[-1])[:3000], flush=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({"env": env, "verify": rows, "timings": timings}, f, indent=1)
    print("\nmodel        dtype  passed  worst_mere  worst_mare  error")
    for r in rows:
        print(f"{r['model']:<12} {r['dtype']:<5}  {r.get('passed', '-')}/{r.get('total', '-')}  "
              f"{r.get('worst_mere')!s:<10.10}  {r.get('worst_mare')!s:<10.10}  {r.get('error', '')[:80]}")
    for t in timings:
        print(t.get("model"), t.get("ms_per_step"), t.get("spec_floor_ms"), t.get("error", ""))


if __name__ == "__main__":
    main()
