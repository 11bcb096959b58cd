"""Where does a step's time go? Run the tracing build and summarise per stage kind and along one layer.

    python bench/trace.py --model llama-3.2-1b --config '{"pipelining_depth": 1}' --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import amk
from amk.eval.bench import prefill_random_kv
from amk.schedule import detect_target
from amk.vm.loader import MegakernelVM
from amk.vm.weights import pack_weights

PHASES = ("weight ring: wait compute pump issue; matvec: stage dot epilogue; attention scores: q pass stats; "
          "attention values: stats pass reduce")


def summarise(program, trace) -> dict:
    t = trace.cpu().numpy().astype("int64")
    origin = t[:, 0].min()
    kinds: dict[str, list] = defaultdict(list)
    stages: dict[int, list] = defaultdict(list)
    ring: dict[str, list] = defaultdict(list)
    for task in program.tasks:
        t0, t1, t2, _, wait_c, comp_c, pump_c, issue_c = t[task.id]
        kinds[task.kind].append(((t1 - t0) / 1e3, (t2 - t1) / 1e3))
        if wait_c or comp_c:
            ring[task.kind].append((wait_c, comp_c, pump_c, issue_c))
        stages[task.stage].append((t0 - origin, t1 - origin, t2 - origin))
    per_kind = {k: {"tasks": len(v), "wait_us": sum(a for a, _ in v) / len(v), "exec_us": sum(b for _, b in v) / len(v),
                    "exec_max_us": max(b for _, b in v)} for k, v in kinds.items()}
    for k, v in ring.items():  # thread 0's cycles per task in each phase (PHASES names them per kind)
        per_kind[k].update({f"phase{i}_cycles": sum(x[i] for x in v) / len(v) for i in range(4)})
    kind_of = {task.stage: task.kind for task in program.tasks}
    timeline = []
    for s in sorted(stages):
        st = stages[s]
        timeline.append({"stage": s, "kind": kind_of[s], "first_ready_us": min(x[1] for x in st) / 1e3,
                         "last_ready_us": max(x[1] for x in st) / 1e3, "last_done_us": max(x[2] for x in st) / 1e3})
    return {"step_us": (t[:, 2].max() - origin) / 1e3, "per_kind": per_kind, "timeline": timeline}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--configs", default="[{}]", help="JSON list of config dicts")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    target = detect_target()
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
        s = summarise(prog, vm.trace)
        s["config"] = cfg
        results.append(s)
        print(f"config {cfg}: traced step {s['step_us']:.1f} us")
        print(f"{'kind':<20}{'tasks':>7}{'wait_us':>10}{'exec_us':>10}{'exec_max':>10}  phase cycles: {PHASES}")
        for k, v in sorted(s["per_kind"].items(), key=lambda kv: -kv[1]["exec_us"] * kv[1]["tasks"]):
            ring = "".join(f"{v[f'phase{n}_cycles']:>10.0f}" for n in range(4) if f"phase{n}_cycles" in v)
            print(f"{k:<20}{v['tasks']:>7}{v['wait_us']:>10.2f}{v['exec_us']:>10.2f}{v['exec_max_us']:>10.2f}{ring}")
        layer = [r for r in s["timeline"]][10:22]
        print("stage  kind                first_ready  last_ready  last_done (us)")
        for r in layer:
            print(f"{r['stage']:>5}  {r['kind']:<18}{r['first_ready_us']:>12.1f}{r['last_ready_us']:>12.1f}{r['last_done_us']:>11.1f}")
    with open(os.path.join(args.out, "trace.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()
