#!/usr/bin/env bash
# The search's GPU acceptance on a two-GPU machine, in phases that outlive one device call: each phase starts
# its loops detached with setsid (they run on while the machine is held) and `wait` collects them.
#
#   bash bench/device_loops.sh install-ray WHEELDIR        # pip install --target /tmp/site (no package index)
#   bash bench/device_loops.sh llama ROOT MINUTES          # llama-3.2-1b, seeds 0 and 1, one GPU each
#   bash bench/device_loops.sh shapes ROOT MINUTES A B     # public shapes A and B (bench/shapes.py), one GPU
#                                                          #   each, then default, loop best and reference
#                                                          #   beside the peers (torch.compile + CUDA graph)
#   bash bench/device_loops.sh ray ROOT MINUTES            # llama-3.2-1b, --workers 2 through Ray, foreground
#   bash bench/device_loops.sh one ROOT MINUTES            # the same on GPU 0 alone, one worker (its builders
#                                                          #   as many as each Ray worker's): the 1-GPU rate
#   bash bench/device_loops.sh make-shapes A B             # save the shapes' random-weight checkpoints
#   bash bench/device_loops.sh wait ROOT SECONDS           # until every job under ROOT is done or SECONDS pass
#
# Every job writes ROOT/NAME/ (results.tsv, corpus.jsonl, summary.json), ROOT/NAME.log and, at the end,
# ROOT/NAME.done holding its exit status.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# llama-3.2-1b's fastest config known (bench/results/loop_20261130-0602_h200x2_llama_s0/summary.json)
best_known='{"matvec": {"o": {"rows_per_task": 16}}, "attention": {"softmax": "partition"}}'
shape_known='{"attention": {"softmax": "partition"}}'  # the fastest config of bench/sweeps/shapes_attention.json
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
cores=$(nproc)
builders=${AMK_BENCH_BUILDERS:-$(( cores > 5 ? (cores - 4) / 2 : 1 ))}  # two loops share the cores

# one site folder a job: devsite.sh rebuilds its folder, which must never pull one from under a running job
site_for() { bash "$repo/bench/devsite.sh" "/tmp/amk_site_$1" >/dev/null; echo "/tmp/amk_site_$1:$PYTHONPATH"; }

detach() {  # detach NAME GPU COMMAND...: run under setsid, ROOT/NAME.done gets the exit status
  local name=$1 gpu=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu setsid nohup bash -c 'cd /tmp && "$@"; echo $? > "'"$root/$name"'.done"' _ "$@" \
    > "$root/$name.log" 2>&1 < /dev/null &
}

cmd=$1; shift
case $cmd in
  install-ray)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$1"/*.whl
    python3 -c "import ray, jsonschema; print('ray', ray.__version__)" ;;
  make-shapes)
    site=$(site_for make_shapes)
    for name in "$@"; do (cd /tmp && PYTHONPATH=$site python3 "$repo/bench/shapes.py" --out /tmp/shapes "$name"); done ;;
  llama)
    root=$1 minutes=$2; mkdir -p "$root"
    for seed in 0 1; do
      site=$(site_for "llama_$seed")
      detach "llama_s$seed" "$seed" env PYTHONPATH="$site" python3 "$repo/bench/loop_gpu.py" --model llama-3.2-1b \
        --minutes "$minutes" --seed "$seed" --builders "$builders" --reference "$best_known" --out "$root/llama_s$seed"
    done ;;
  shapes)
    root=$1 minutes=$2; shift 2; mkdir -p "$root"; gpu=0
    for name in "$@"; do
      site=$(site_for "shape_$gpu")
      dir=$(cd /tmp && PYTHONPATH=$site python3 "$repo/bench/shapes.py" --out /tmp/shapes "$name" | tail -1)
      [ -d "$dir" ] || { echo "$name: bench/shapes.py saved nothing (its message is above)" >&2; continue; }
      detach "$name" "$gpu" bash -c "PYTHONPATH=$site python3 $repo/bench/loop_gpu.py --model $dir --minutes $minutes \
        --seed 0 --builders $builders --reference '$shape_known' --out $root/$name --configs-out $root/$name/configs.json \
        && PYTHONPATH=$site python3 $repo/bench/megakernel.py --model $dir --configs $root/$name/configs.json --peers \
        --out $root/$name"
      gpu=$((gpu + 1))
    done ;;
  ray)
    root=$1 minutes=$2; mkdir -p "$root"
    site=$(site_for ray)
    (cd /tmp && PYTHONPATH=$site python3 "$repo/bench/loop_gpu.py" --model llama-3.2-1b --minutes "$minutes" --seed 2 \
      --workers 2 --out "$root/llama_ray2" > "$root/llama_ray2.log" 2>&1; echo $? > "$root/llama_ray2.done")
    tail -5 "$root/llama_ray2.log" ;;
  one)
    root=$1 minutes=$2; mkdir -p "$root"
    site=$(site_for one)
    (cd /tmp && CUDA_VISIBLE_DEVICES=0 PYTHONPATH=$site python3 "$repo/bench/loop_gpu.py" --model llama-3.2-1b \
      --minutes "$minutes" --seed 2 --builders "$builders" --out "$root/llama_one" > "$root/llama_one.log" 2>&1
      echo $? > "$root/llama_one.done")
    tail -5 "$root/llama_one.log" ;;
  wait)
    root=$1 deadline=$(( $(date +%s) + $2 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
      running=0
      for log in "$root"/*.log; do [ -e "$log" ] && [ ! -e "${log%.log}.done" ] && running=$((running + 1)); done
      [ "$running" -eq 0 ] && break
      sleep 15
    done
    for log in "$root"/*.log; do
      [ -e "$log" ] || continue
      name=$(basename "${log%.log}")
      echo "== $name: $( [ -e "$root/$name.done" ] && echo "exit $(cat "$root/$name.done")" || echo running)"
      grep -E "^trial " "$log" | tail -2
      grep -vE "^trial |^\s*$|[Ww]arn" "$log" | tail -4
    done ;;
  *) echo "unknown phase $cmd" >&2; exit 2 ;;
esac
