"""The megakernel's stack (local memory) bytes under NVRTC 13.0, the GPU image's compiler, on a CPU: for the large
GQA groups' attention paths (tests/_checkpoints.py ATTENTION_WARP_SHAPES g16-hd16, g20-hd16 and g32-hd16, 256 positions),
with the kernel source of a git revision beside the working tree's. Local memory lives in L1, which the weight
stream sweeps, so a spilled line costs an L2 round trip.

    python bench/local_memory.py --before HEAD --out bench/results/DATE_local_memory.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {"q_splits 1": {"attention": {"q_splits": 1}}, "softmax global": {"attention": {"softmax": "global"}},
           "kv_partitions 1": {"attention": {"kv_partitions": 1}}, "default": {}}


def _source_at(rev: str) -> str:
    from amk.vm.loader import KERNEL_PARTS

    def part(name: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:vm/{name}"], capture_output=True, text=True, check=True).stdout

    return "\n".join(f"// ---- {name}\n" + part(name) for name in KERNEL_PARTS)


def _test_checkpoints():
    """tests/_checkpoints.py, loaded from its file (tests/ is no package): the bench builds the very shapes the
    local-memory tests build."""
    spec = importlib.util.spec_from_file_location("amk_test_checkpoints", ROOT / "tests" / "_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    attention_warp_shape = _test_checkpoints().attention_warp_shape

    import amk
    from amk.schedule import get_target, lower
    from amk.vm import nvrtc
    from amk.vm.abi import generate_header
    from amk.vm.loader import kernel_source

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="HEAD", help="git revision of the kernel source to compare against")
    ap.add_argument("--out", type=Path, help="JSON file to write")
    args = ap.parse_args()
    sources = {"before": _source_at(args.before), "after": kernel_source()}
    jobs = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ("g32-hd16", "g20-hd16", "g16-hd16"):
            path = attention_warp_shape(Path(tmp) / shape, shape)
            for dtype in ("bf16", "fp32"):
                model = amk.load_model(path, dtype=dtype, weights=False)
                for name, cfg in CONFIGS.items():
                    jobs.append((shape, dtype, name, generate_header(lower(model, get_target("h200"), cfg, max_seq=256))))

    def one(job):
        shape, dtype, name, header = job
        got = {k: nvrtc.kernel_resources(header + "\n" + src, "sm_90").stack_bytes for k, src in sources.items()}
        return {"shape": shape, "dtype": dtype, "config": name, "stack_bytes_before": got["before"],
                "stack_bytes_after": got["after"]}

    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(one, jobs))
    for r in rows:
        print(f"{r['shape']:9} {r['dtype']:5} {r['config']:16} {r['stack_bytes_before']:4} -> {r['stack_bytes_after']}")
    if args.out:
        rev = subprocess.run(["git", "rev-parse", args.before], capture_output=True, text=True).stdout.strip()
        args.out.write_text(json.dumps({
            "what": "stack bytes of the megakernel under NVRTC 13.0 (sm_90), kernel source at `before` and in the "
                    "working tree", "device": "none: a CPU build with the dev extras' NVRTC 13.0",
            "date": datetime.date.today().isoformat(), "before": rev, "nvrtc": list(nvrtc.version()),
            "command": " ".join(["python", "bench/local_memory.py", *sys.argv[1:]]), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
