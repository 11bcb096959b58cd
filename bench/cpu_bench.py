"""CPU figures for the foundation: lower + validate of llama-3.2-1b (default config), one ReferenceVM
decode step of `toy`. Median of several runs; writes JSON to bench/results/.

    python bench/cpu_bench.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

import amk
from amk.vm.reference import ReferenceVM
from amk.vm.weights import pack_weights


def median_s(fn, n: int) -> float:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    llama = amk.load_model("llama-3.2-1b", dtype="bf16", weights=False)
    target = amk.get_target("h100-sxm")
    amk.lower(llama, target)
    lower_s = median_s(lambda: amk.lower(llama, target), 5)
    prog = amk.lower(llama, target)
    validate_s = median_s(lambda: amk.validate(prog, target), 5)
    both_s = median_s(lambda: amk.validate(amk.lower(llama, target), target), 5)
    toy = amk.load_model("toy", dtype="fp32")
    tprog = amk.lower(toy, "cpu-sim", max_seq=256)
    vm = ReferenceVM(tprog, pack_weights(toy.eager, tprog))
    vm.step(1)

    def one_step():
        vm.set_position(10)
        vm.step(3)

    step_s = median_s(one_step, 50)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv), "python": platform.python_version(),
        "llama_3_2_1b_tasks": len(prog.tasks), "lower_s": lower_s, "validate_s": validate_s,
        "lower_plus_validate_s": both_s, "toy_reference_vm_step_ms": step_s * 1e3, "toy_tasks": len(tprog.tasks),
    }
    os.makedirs("bench/results", exist_ok=True)
    path = f"bench/results/{time.strftime('%Y%m%d')}_cpu_foundation.json"
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
