"""GPU acceptance of the search: `amk loop` from the default config for M minutes, then the loop's best and a
reference config re-measured in this same process (same GPU, same run), optionally beside the peers.

    python bench/loop_gpu.py --model llama-3.2-1b --minutes 10 --seed 0 --out bench/results/loop_X \\
        [--reference '{"matvec": {"qkv": {"head_splits": 2}}, "attention": {"softmax": "partition", "kv_partitions": 16}}'] \\
        [--workers 2] [--builders 14] [--peers] [--configs-out FILE]

Writes OUT/results.tsv and OUT/corpus.jsonl (the loop's), OUT/summary.json (device, date, commit, command,
trials per minute, the loop's summary and the re-measured table) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import amk
from amk.harness.environment import environment, resolve_device


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reference", default=None, help="a config (inline JSON or a file) to re-measure beside the best")
    ap.add_argument("--builders", type=int, default=None, help="builder processes a worker (default: the loop's)")
    ap.add_argument("--peers", action="store_true", help="time the peers (static-cache graph, eager) too")
    ap.add_argument("--configs-out", default=None,
                    help="write [default, loop best, reference] here for bench/megakernel.py --configs")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device("cuda")
    t0 = time.time()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))
    summary = amk.loop(a.model, "auto", minutes=a.minutes, seed=a.seed, device="cuda", results=out / "results.tsv",
                       corpus=out / "corpus.jsonl", workers=a.workers, builders=a.builders,
                       progress=lambda p: print(f"trial {p['trial']} {p['status']} {p['latency_us']} "
                                                f"{p['description'][:90]}", file=sys.stderr, flush=True))
    loop_s = time.time() - t0
    ref = None
    if a.reference:
        ref = json.loads(Path(a.reference).read_text() if Path(a.reference).is_file() else a.reference)
    configs = {"default": {}, "loop_best": summary["incumbent"]["config"]}
    if ref is not None:
        configs["reference"] = ref
    if a.configs_out:
        Path(a.configs_out).write_text(json.dumps(list(configs.values())) + "\n")
    table = {}
    for name, cfg in configs.items():
        v = amk.evaluate(a.model, "auto", cfg, device="cuda", peers=a.peers)
        table[name] = {"schedule_id": v["schedule_id"], "correct": v["correct"], "latency_us": v["latency_us"],
                       "spread_us": v["latency_spread_us"], "pct_of_floor": v["pct_of_floor"],
                       "speedups": v["speedups"], "config": cfg}
    new_trials = summary["trials"]
    record = {"device": environment(dev).get("gpu"), "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "commit": environment(dev).get("git_commit"), "command": " ".join(sys.argv),
              "started": started, "model": a.model, "minutes": a.minutes, "builders": a.builders, "seed": a.seed, "workers": a.workers,
              "trials": new_trials, "trials_per_minute": round(60 * new_trials / loop_s, 2),
              "loop_best_at_or_below_reference": (None if ref is None or table["reference"]["latency_us"] is None
                                                  or table["loop_best"]["latency_us"] is None else
                                                  table["loop_best"]["latency_us"] <= table["reference"]["latency_us"]),
              "table": table, "loop": summary}
    (out / "summary.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"{a.model} on {record['device']}: {new_trials} trials in {loop_s / 60:.1f} min "
          f"({record['trials_per_minute']} trials/minute, {a.workers} worker(s))")
    for name, r in table.items():
        lat = f"{r['latency_us']:.1f}" if r["latency_us"] is not None else "-"
        peers = ", ".join(f"{k} {x:.2f}x" for k, x in (r["speedups"] or {}).items())
        print(f"  {name:<10} {r['schedule_id']} {lat:>8} us  correct {r['correct']}  {peers}")


if __name__ == "__main__":
    main()
