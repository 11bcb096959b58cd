#!/usr/bin/env bash
# On a GPU machine: a timed search loop on llama-3.2-1b, then the default and the best kept config
# benchmarked in one run beside the peers (torch.compile + CUDA graph among them).
#   bash bench/loop_then_bench.sh MINUTES OUTDIR
set -euo pipefail
minutes=${1:-5}; out=${2:-bench/results}
mkdir -p "$out"
python3 -m amk.cli loop --model llama-3.2-1b --gpu auto --device cuda --minutes "$minutes" \
  --results "$out/results.tsv" --corpus "$out/corpus.jsonl" --json > "$out/loop.json" || true
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/corpus.jsonl")] if __import__("os").path.exists(f"{out}/corpus.jsonl") else []
best = min((r for r in rows if r.get("verdict", {}).get("latency_us")), key=lambda r: r["verdict"]["latency_us"], default=None)
configs = [{}] + ([best["config"]] if best else [])
json.dump(configs, open("/tmp/amk_best.json", "w"))
print("loop kept", len(rows), "best", best and best["verdict"]["latency_us"])
PY
python3 bench/megakernel.py --configs /tmp/amk_best.json --peers --out "$out"
