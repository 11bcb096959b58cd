"""Bisect a config whose megakernel's greedy tokens leave eager's: for the config and for each variant with one
knob put back to its default, decode the greedy32 verify case's prompt and 32 greedy tokens on the megakernel and
report the first step where the kernel's token is not the argmax of its own logits (or where the two sequences
part), so a wrong token can be told from wrong logits.

    python bench/tools/argmax_check.py --model PATH --config '{...}'
"""

from __future__ import annotations

import argparse
import json

import amk
from amk.eval.cases import case_inputs, default_cases
from amk.eval.oracle import make_vm
from amk.schedule import detect_target


def leave_one_out(cfg: dict):
    yield "as given", cfg
    for top, val in cfg.items():
        if isinstance(val, dict):
            for k in val:
                if isinstance(val[k], dict):
                    for kk in val[k]:
                        c = json.loads(json.dumps(cfg))
                        del c[top][k][kk]
                        yield f"{top}.{k}.{kk} default", c
                else:
                    c = json.loads(json.dumps(cfg))
                    del c[top][k]
                    yield f"{top}.{k} default", c
        else:
            c = dict(cfg)
            del c[top]
            yield f"{top} default", c


def run(model, cfg: dict, max_seq: int) -> str:
    case = next(c for c in default_cases(max_seq) if c.name == "greedy32")
    prog = amk.lower(model, detect_target(), cfg, max_seq=max_seq)
    vm = make_vm(prog, model, device="cuda", vm="cuda")
    inp = case_inputs(case, model.dims, model.dtype, max_seq)
    vm.reset()
    vm.load_kv_prefix(inp.prefix_k, inp.prefix_v)
    feed, toks = list(inp.tokens), []
    for step in range(len(inp.tokens) + case.generate - 1):
        logits, nxt = vm.step(feed[step])
        top = int(logits.argmax())
        if nxt != top and float(logits[nxt]) != float(logits[top]):
            return (f"step {step}: token {nxt} (logit {float(logits[nxt]):.4f}) is not its logits' argmax {top} "
                    f"({float(logits[top]):.4f})")
        if step + 1 >= len(inp.tokens):
            toks.append(nxt)
            feed.append(nxt)
    return "tokens are the argmax of their logits: " + " ".join(map(str, toks[:8]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--config", required=True)
    ap.add_argument("--max-seq", type=int, default=2048)
    ap.add_argument("--only-given", action="store_true")
    args = ap.parse_args()
    model = amk.load_model(args.model, dtype=args.dtype, device="cuda")
    for name, cfg in leave_one_out(json.loads(args.config)):
        try:
            print(f"{name:40s} {run(model, cfg, args.max_seq)}", flush=True)
        except Exception as e:  # a variant the lowering refuses (a knob that needs another) is skipped
            print(f"{name:40s} not run: {type(e).__name__}: {str(e)[:120]}", flush=True)
        if args.only_given:
            break


if __name__ == "__main__":
    main()
