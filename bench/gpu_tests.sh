#!/usr/bin/env bash
# GPU test files on a machine without AMK installed (the device image): the repo as the site package of
# bench/devsite.sh, pytest run from tests/ so that the repo's own amk/ folder (no subpackages) does not shadow it.
#     OUT=/path bash bench/gpu_tests.sh gpu/test_attention_warps.py gpu/test_cli_gpu.py
# NPROC workers share the GPU: by default one per 10 GiB of its memory, at most 12 (14 on an 80 GB H100 ran out
# of memory building llama-3.2-1b's fp32 VMs: bench/results/20261205-1320_h100_gpu_suite.json).
# Writes $OUT/device.txt and $OUT/pytest.log; prints the counts and the failures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/amk_gpu_tests}
mkdir -p "$OUT"
site=$(bash bench/devsite.sh /tmp/amk_site)
export PYTHONPATH=$site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
workers=$(( mib / 10240 )); workers=$(( workers < 1 ? 1 : workers > 12 ? 12 : workers ))
cd tests
start=$(date +%s)
timeout "${LIMIT_S:-560}" python3 -m pytest -c ../pyproject.toml -rfEs -q -n "${NPROC:-$workers}" --dist load \
  -p no:cacheprovider "$@" > "$OUT/pytest.log" 2>&1
rc=$?
echo "pytest rc=$rc in $(( $(date +%s) - start )) s"
grep -E "passed|failed|error" "$OUT/pytest.log" | tail -5
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -30
exit $rc
