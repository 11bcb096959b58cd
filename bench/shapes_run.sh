#!/usr/bin/env bash
# Public Llama-family shapes on one GPU, as a user with a local checkpoint would run them: save each shape with
# seeded random weights (bench/shapes.py), then bench/megakernel.py on the directory (verify first, the configs
# of CONFIGS, the peers with torch.compile + CUDA graph), one result JSON a shape under OUT.
#     bash bench/shapes_run.sh OUT CONFIGS tinyllama-1.1b qwen2.5-0.5b ...     (GPU chosen by CUDA_VISIBLE_DEVICES)
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$1 configs=$2
shift 2
site=$(bash "$repo/bench/devsite.sh" "/tmp/amk_site_${CUDA_VISIBLE_DEVICES:-0}")
mkdir -p "$out"
cd /tmp  # the repo root's amk/ folder would hide the site's package
for name in "$@"; do
  dir=$(PYTHONPATH=$site python3 "$repo/bench/shapes.py" --out /tmp/shapes "$name" | tail -1)
  [ -d "$dir" ] || { echo "$name: bench/shapes.py saved nothing (its message is above)" >&2; continue; }
  PYTHONPATH=$site timeout 330 python3 "$repo/bench/megakernel.py" --model "$dir" --configs "$configs" --peers \
    --out "$out" 2>&1 | grep -vE "^\s*$|Warning|warn" | tail -8
done
