"""One config's verify cases on the megakernel and on the ReferenceVM (in torch on the same GPU), side by side:
which of them departs from eager transformers, and whether the megakernel repeats itself. A failure that both
VMs give is the program's numerics (its definition); one the megakernel alone gives, or that changes from run
to run, is the kernel's.

    python bench/tools/kernel_vs_reference.py --model PATH_OR_NAME --config '{...}' [--runs 2] [--cases full]
"""

from __future__ import annotations

import argparse
import json

import amk
from amk.eval.oracle import verify
from amk.schedule import detect_target, get_target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--config", default="{}")
    ap.add_argument("--runs", type=int, default=2, help="megakernel verify runs (a race shows as runs that differ)")
    ap.add_argument("--cases", default="full")
    ap.add_argument("--device", default="cuda", help="cpu: the ReferenceVM alone, on the cpu-sim stand-in")
    args = ap.parse_args()
    model = amk.load_model(args.model, dtype=args.dtype, device=args.device)
    gpu = args.device == "cuda"
    prog = amk.lower(model, detect_target() if gpu else get_target("cpu-sim"), json.loads(args.config))
    rows = {"reference": verify(prog, model, device=args.device, vm="reference", cases=args.cases)}
    for r in range(args.runs if gpu else 0):
        rows[f"kernel {r}"] = verify(prog, model, device="cuda", vm="cuda", cases=args.cases)
    for name, res in rows.items():
        for c in res.cases:
            status = "pass" if c.passed else f"FAIL {c.message}"
            print(f"{name:10s} {c.case:20s} {c.tokens_matched:3d} tokens matched  {status}  {c.note or ''}"[:300])


if __name__ == "__main__":
    main()
