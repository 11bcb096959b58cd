"""Reference-cache figures on a CPU for llama-3.2-1b: one loop-style trial (`amk.evaluate` of propose()'s
incumbent on cpu-sim, device cpu, the one-case smoke set) in a fresh cache folder, cold, then the same trial in
a new process (only the file cache carries over) with the transformers model's forward patched to raise, so a
correct warm verdict proves the eager model never ran. Writes JSON to bench/results/.

    python bench/reference_cache_bench.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

MODEL, TARGET = "llama-3.2-1b", "cpu-sim"

CHILD = r"""
import functools, json, logging, sys, time
mode, model_name, target = sys.argv[1:4]
t0 = time.perf_counter()
import amk, amk.cache
from amk.eval.cases import default_cases
from transformers import LlamaForCausalLM

calls = []
real_forward = LlamaForCausalLM.forward

@functools.wraps(real_forward)
def counted(self, *a, **k):  # class-level: covers the model and any higher-precision copy of it
    calls.append(str(next(self.parameters()).dtype))
    if mode == "warm":
        raise AssertionError("the eager model ran although every case was cached")
    return real_forward(self, *a, **k)

LlamaForCausalLM.forward = counted

log_lines = []
class Keep(logging.Handler):
    def emit(self, record):
        log_lines.append(record.getMessage())
cache_log = logging.getLogger("amk.cache")
cache_log.setLevel(logging.DEBUG)
cache_log.addHandler(Keep())

config = amk.propose(model_name, target)["config"]
t1 = time.perf_counter()
v = amk.evaluate(model_name, target, config, device="cpu", cases=default_cases(2048, reduced="smoke"))
t2 = time.perf_counter()
amk.cache.default_cache().save_stats()
keep = ("valid", "correct", "cases_passed", "cases_total", "worst_mere", "worst_mare", "top1_agreement",
        "failures", "case_results", "dtype", "schedule_id", "seconds", "cache")
print(json.dumps({"mode": mode, "import_and_propose_s": t1 - t0, "evaluate_s": t2 - t1,
                  "eager_forward_calls": len(calls), "eager_forward_dtypes": sorted(set(calls)),
                  "verdict": {f: v.get(f) for f in keep}, "cache_log": log_lines,
                  "last_run_stats": amk.cache.last_run_stats()}, default=str))
"""


def run(mode: str, env: dict) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, MODEL, TARGET], env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        sys.exit(f"{mode} child failed (rc {out.returncode}):\n{out.stderr[-4000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def machine() -> str:
    mem = ""
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    return f"{os.cpu_count()} cores{mem}, {platform.processor() or platform.machine()}, CPU only"


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        env = {**os.environ, "AMK_CACHE_DIR": root}
        cold = run("cold", env)
        warm = run("warm", env)
    ok = (cold["verdict"]["correct"] and warm["verdict"]["correct"] and warm["eager_forward_calls"] == 0
          and warm["verdict"]["cache"]["by_kind"].get("reference", {}).get("misses", 0) == 0)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "model": MODEL, "target": TARGET, "device": "cpu", "cases": "smoke (pos64, 1 step)",
        "cold_evaluate_s": cold["evaluate_s"], "warm_evaluate_s": warm["evaluate_s"],
        "cold_process_wall_s": cold["process_wall_s"], "warm_process_wall_s": warm["process_wall_s"],
        "warm_over_cold": warm["evaluate_s"] / cold["evaluate_s"],
        "cold_eager_forward_calls": cold["eager_forward_calls"], "warm_eager_forward_calls": warm["eager_forward_calls"],
        "cold_correct": cold["verdict"]["correct"], "warm_correct": warm["verdict"]["correct"],
        "warm_reference_cache_skips_eager": ok, "cold": cold, "warm": warm,
    }
    print(f"{'run':6} {'evaluate s':>11} {'process s':>10} {'eager fwd':>10} {'correct':>8}  cache hits/misses/writes")
    for r in (cold, warm):
        c = r["verdict"]["cache"]
        writes = sum(k.get("writes", 0) for k in c["by_kind"].values())
        print(f"{r['mode']:6} {r['evaluate_s']:11.1f} {r['process_wall_s']:10.1f} {r['eager_forward_calls']:10d} "
              f"{r['verdict']['correct']!s:>8}  {c['hits']}/{c['misses']}/{writes}")
    print(f"warm/cold evaluate: {result['warm_over_cold']:.3f}; warm trial skipped transformers: {ok}")
    os.makedirs("bench/results", exist_ok=True)
    path = f"bench/results/{time.strftime('%Y%m%d-%H%M%S')}_cpu_llama_reference_cache.json"
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(path)
    if not ok:
        sys.exit("the warm trial did not prove a skipped eager model")


if __name__ == "__main__":
    main()
