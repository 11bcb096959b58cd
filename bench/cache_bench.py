"""Cache figures on a CPU: `evaluate` of the same toy config in a fresh cache folder, first cold, then a second
time in the same process, then in new processes (only the file cache carries over). Writes JSON to
bench/results/.

    python bench/cache_bench.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import amk
t1 = time.perf_counter()
v = amk.evaluate("toy", "cpu-sim", {}, device="cpu")
t2 = time.perf_counter()
again = amk.evaluate("toy", "cpu-sim", {}, device="cpu")
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "evaluate_s": t2 - t1, "second_evaluate_same_process_s": t3 - t2,
                  "correct": v.get("correct"), "cache": v.get("cache"), "second_cache": again.get("cache")}))
"""


def run(env) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        env = {**os.environ, "AMK_CACHE_DIR": root}
        cold = run(env)
        warm = [run(env) for _ in range(3)]
    best_warm = min(w["evaluate_s"] for w in warm)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, CPU only",
              "command": " ".join(sys.argv), "cold": cold, "warm": warm,
              "new_process_warm_over_cold": best_warm / cold["evaluate_s"],
              "same_process_second_over_first": cold["second_evaluate_same_process_s"] / cold["evaluate_s"]}
    os.makedirs("bench/results", exist_ok=True)
    with open(f"bench/results/{time.strftime('%Y%m%d')}_cpu_cache.json", "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
