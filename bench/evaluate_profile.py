"""Where one warm `amk.evaluate` spends its time: each config is evaluated once to fill the caches (program,
kernel, references), then `--repeats` more times under cProfile. Prints the wall time of each warm evaluate and
the cumulative seconds of the evaluate's parts (lowering read-back, validation, cost model, references, VM
build, verify, timing), summed over the warm runs; writes the same as JSON plus the top functions to --out.

    python bench/evaluate_profile.py --model llama-3.2-1b --device cuda --repeats 3 --out DIR
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

# (label, file suffix, function name): the parts of one evaluate, as cProfile names them
PARTS = [
    ("build_program", "harness/evaluate.py", "build_program"),
    ("  program read-back", "harness/evaluate.py", "_lower_cached"),
    ("  validate", "harness/evaluate.py", "_validate"),
    ("floor", "harness/evaluate.py", "_floor"),
    ("cost model", "harness/evaluate.py", "_predict"),
    ("calibration", "harness/calibration.py", "calibrate_file"),
    ("cases", "harness/correctness.py", "resolve_cases"),
    ("CUDA VM build", "harness/correctness.py", "build_cuda_vm"),
    ("verify", "eval/oracle.py", "verify"),
    ("  references", "harness/correctness.py", "ref"),
    ("  case inputs", "eval/cases.py", "case_inputs"),
    ("  VM steps", "vm/loader.py", "step"),
    ("  compare", "eval/compare.py", "compare"),
    ("  KL", "eval/compare.py", "kl_divergence"),
    ("timing", "harness/correctness.py", "time_cuda_vm"),
    ("gates", "harness/gates.py", "gate_latency"),
]

CONFIGS = [{}, {"attention": {"softmax": "partition"}},
           {"matvec": {"o": {"rows_per_task": 16}}, "attention": {"softmax": "partition"}}]


def part_seconds(stats: pstats.Stats) -> dict[str, float]:
    out = {label: 0.0 for label, _, _ in PARTS}
    for (path, _line, fn), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        for label, suffix, name in PARTS:
            if fn == name and path.endswith(suffix):
                out[label] += ct
    return {k: round(v, 3) for k, v in out.items()}


def top(stats: pstats.Stats, key: int, n: int) -> list[dict]:
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][key], reverse=True)[:n]
    return [{"function": f"{Path(p).name}:{line}({fn})", "calls": nc, "tottime_s": round(tt, 4),
             "cumtime_s": round(ct, 4)} for (p, line, fn), (_cc, nc, tt, ct, _) in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import amk
    from amk.harness.environment import environment, resolve_device

    walls: dict[str, list[float]] = {}
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    for cfg in CONFIGS:
        amk.evaluate(a.model, "auto", cfg, device=a.device)
    cold_s = time.perf_counter() - t0
    for _ in range(a.repeats):
        for cfg in CONFIGS:
            t = time.perf_counter()
            prof.enable()
            v = amk.evaluate(a.model, "auto", cfg, device=a.device)
            prof.disable()
            walls.setdefault(v["schedule_id"], []).append(round(time.perf_counter() - t, 3))
    stats = pstats.Stats(prof)
    runs = sum(len(w) for w in walls.values())
    parts = part_seconds(stats)
    env = environment(resolve_device(a.device))
    record = {"what": "seconds of warm amk.evaluate calls, and of their parts summed over the runs",
              "model": a.model, "device": env.get("gpu") or a.device, "commit": env.get("git_commit"),
              "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "command": " ".join(sys.argv),
              "cold_seconds_first_pass": round(cold_s, 2), "warm_runs": runs, "wall_s": walls,
              "parts_s": parts, "parts_per_run_s": {k: round(x / runs, 3) for k, x in parts.items()},
              "top_cumulative": top(stats, 3, 40), "top_own_time": top(stats, 2, 25)}
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "evaluate_profile.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{a.model} on {record['device']}: {runs} warm evaluates, first pass {cold_s:.1f} s")
    for sid, w in walls.items():
        print(f"  {sid}: {w}")
    for label, s in record["parts_per_run_s"].items():
        print(f"  {label:<22} {s:7.3f} s a run")
    for row in record["top_own_time"][:12]:
        print(f"  own {row['tottime_s']:8.3f}  {row['function']}")


if __name__ == "__main__":
    main()
