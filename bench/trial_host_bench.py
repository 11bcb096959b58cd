"""The search's per-trial host work on the CPU, for one model's program: what the measuring process does
before the GPU runs a candidate (read the lowered program back from the file cache, fingerprint, validate,
pack the instruction table) and what a builder process does per candidate (lower, validate, fingerprint).
Median of several runs, seconds; JSON to stdout or --out.

    python bench/trial_host_bench.py --model llama-3.2-1b --out bench/results/X.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--gpu", default="h200")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    os.environ["AMK_CACHE_DIR"] = tempfile.mkdtemp(prefix="amk_host_bench_")  # a fresh, private file cache
    from cpu_bench import median_s  # bench/ is this script's folder

    from amk.harness.environment import Device, environment, get_model, resolve_target
    from amk.harness.evaluate import build_program
    from amk.schedule.config import ScheduleConfig
    from amk.schedule.lower import lower
    from amk.schedule.validate import validate

    target = resolve_target(a.gpu)
    model = get_model(a.model, "bf16", Device.CPU, weights=False)
    cfg = {"attention": {"softmax": "partition"}}
    _, program = build_program(a.model, target, cfg, device="cpu", dtype="bf16")  # fills the cache
    timed = {
        "runner_build_program_warm_s": lambda: build_program(a.model, target, cfg, device="cpu", dtype="bf16"),
        "pack_s": program.pack,
        "fingerprint_s": program.fingerprint,
        "validate_s": lambda: validate(program, target),
        "builder_lower_s": lambda: lower(model, target, ScheduleConfig.from_dict(cfg)),
    }
    fig = {name: round(median_s(fn, a.repeats), 4) for name, fn in timed.items()}
    env = environment(Device.CPU)
    out = {"what": "per-trial host work of the search (seconds, median)", "model": a.model, "gpu_target": a.gpu,
           "tasks": len(program.tasks), "figures": fig, "cpu": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "python": platform.python_version(), "commit": env.get("git_commit"),
           "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "command": " ".join(sys.argv)}
    text = json.dumps(out, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
