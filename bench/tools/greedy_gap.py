"""The logits behind a greedy token where the megakernel and eager part: eager's, the higher-precision
reference's and the megakernel's logits for both tokens at that step, beside the tie tolerance verify allows.

    python bench/tools/greedy_gap.py --model PATH --config '{...}'
"""

from __future__ import annotations

import argparse
import json

import amk
from amk.eval.cases import case_inputs, default_cases
from amk.eval.compare import tolerance_for
from amk.eval.oracle import eager_reference, make_vm
from amk.schedule import detect_target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--config", default="{}")
    ap.add_argument("--max-seq", type=int, default=2048)
    args = ap.parse_args()
    model = amk.load_model(args.model, dtype=args.dtype, device="cuda")
    case = next(c for c in default_cases(args.max_seq) if c.name == "greedy32")
    golden, greedy, hi_fn = eager_reference(model, case, args.max_seq)
    prog = amk.lower(model, detect_target(), json.loads(args.config), max_seq=args.max_seq)
    vm = make_vm(prog, model, device="cuda", vm="cuda")
    inp = case_inputs(case, model.dims, model.dtype, args.max_seq)
    vm.load_kv_prefix(inp.prefix_k, inp.prefix_v)
    feed = list(inp.tokens)
    tol = tolerance_for(model.dtype)
    for step in range(len(inp.tokens) + case.generate - 1):
        logits, nxt = vm.step(feed[step])
        g = step + 1 - len(inp.tokens)
        if g < 0:
            continue
        want = greedy[g]
        if nxt != want:
            hi = hi_fn()[step]
            for name, lg in (("eager", golden[step]), ("higher precision", hi), ("megakernel", logits)):
                a, b = float(lg[want]), float(lg[nxt])
                print(f"{name:17s} logit[{want}] {a:.5f}  logit[{nxt}] {b:.5f}  gap {a - b:+.5f}")
            print(f"generated token {g}: tie allowance 2 x {tol:.3g} x max(|logit|, 1) = "
                  f"{2 * tol * max(abs(float(golden[step][want])), 1.0):.5f}")
            return
        feed.append(nxt)
    print("the megakernel's greedy tokens are eager's")


if __name__ == "__main__":
    main()
