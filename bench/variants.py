"""Kernel-source variants of one program, timed against each other in one process on one GPU.

A variant is a set of preprocessor defines put before the kernel source (after the generated ABI header), so a
change to vm/*.cuh guarded by `#ifndef NAME / #define NAME 0` can be measured before it is made a knob or the
only path. Every variant is built and verified first (eager transformers, `--cases`), then all are timed
forward and backward through the list `--rounds` times, so that a drift of the GPU's clocks over the run
falls on every variant alike.

    python bench/variants.py --model llama-3.2-1b --variant base= --variant new=AMK_NEW_PATH=1 \\
        [--variant both=A=1,B=2] [--config '{"attention": {"kv_partitions": 16}}'] --out bench/results

A define's value is a number or a name. Prints a table (mean and min latency in us, ratio of means to the first
variant) and writes JSON with the device, date, commit and command. A variant that fails to build or verify is
reported and not timed, unless `--bound` names it: a probe that skips work the output needs (a wait, a round
trip) gives a bound on what removing that work could gain, and is timed with its failed verification recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VALUE = re.compile(r"[A-Za-z0-9_.+-]+\Z")  # a number or a name: nothing that could end a line or open a comment


@dataclass(frozen=True)
class Variant:
    name: str
    defines: tuple[tuple[str, str], ...]

    @property
    def prefix(self) -> str:
        return "".join(f"#define {k} {v}\n" for k, v in self.defines)


def parse_defines(items: list[str], flag: str) -> tuple[tuple[str, str], ...]:
    """`DEFINE=VALUE` items as (name, value) pairs. Raises ValueError naming `flag` and the bad item."""
    defines = []
    for item in items:
        key, eq, value = item.partition("=")
        if not _NAME.match(key) or not eq or not _VALUE.match(value.strip()):
            raise ValueError(f"{flag}: {item!r} is not DEFINE=VALUE (a value is a number or a name)")
        if key in dict(defines):
            raise ValueError(f"{flag}: {key} is defined twice")
        defines.append((key, value.strip()))
    return tuple(defines)


def parse_variant(text: str) -> Variant:
    """`name=` (no defines) or `name=A=1,B=2`. Raises ValueError naming the bad part."""
    name, sep, rest = text.partition("=")
    if not sep or not _NAME.match(name):
        raise ValueError(f"--variant {text!r}: expected NAME= or NAME=DEFINE=VALUE[,DEFINE=VALUE...]")
    items = rest.split(",") if rest else []
    return Variant(name, parse_defines(items, f"--variant {text!r}"))


@contextlib.contextmanager
def kernel_defines(prefix: str):
    """While open, the megakernel's source starts with `prefix` (the build cache keys on the source, so a
    variant never reuses another's cubin)."""
    import amk.vm.loader as loader

    original = loader.kernel_source
    loader.kernel_source = lambda: prefix + original()
    try:
        yield
    finally:
        loader.kernel_source = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-3.2-1b", help="built-in model name or checkpoint directory")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--variant", action="append", required=True, help="NAME= or NAME=DEFINE=VALUE[,...]; "
                    "repeat it; the first is the one the others are compared with")
    ap.add_argument("--config", default="{}", help="schedule config (JSON) every variant runs")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--max-seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1, help="forward-and-backward passes over the variants")
    ap.add_argument("--cases", default="reduced")
    ap.add_argument("--bound", action="append", default=[], metavar="NAME",
                    help="a variant timed even when its verification fails (a probe whose output is wrong: a bound)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as e:
        ap.error(str(e))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        ap.error(f"--variant: {next(n for n in names if names.count(n) > 1)!r} names two variants")
    unknown = list(dict.fromkeys(b for b in args.bound if b not in names))
    if unknown:
        ap.error(f"--bound: {', '.join(map(repr, unknown))} {'names' if len(unknown) == 1 else 'name'} no --variant")
    if names[0] in args.bound:  # every ratio is to the first: a wrong output cannot be the measure
        ap.error(f"--bound: {names[0]!r} is the first --variant, the one the others are compared with")
    try:
        config = json.loads(args.config)
    except json.JSONDecodeError as e:
        ap.error(f"--config: not JSON ({e})")
    if args.rounds < 1 or args.steps < 1:
        ap.error("--rounds and --steps: at least 1")
    os.makedirs(args.out, exist_ok=True)  # before the GPU work: a path that cannot be made loses nothing

    import torch

    import amk
    from amk.eval.bench import time_vm
    from amk.eval.oracle import make_vm, verify
    from amk.harness.environment import git_commit
    from amk.schedule import detect_target

    target = detect_target()
    model = amk.load_model(args.model, dtype=args.dtype, device="cuda")
    prog = amk.lower(model, target, config, max_seq=args.max_seq)
    built, rows = {}, {v.name: {"defines": dict(v.defines), "samples_us": []} for v in variants}
    for v in variants:
        # a bound's wrong logits may pick any word: the kernel folds its token into the vocabulary
        prefix = v.prefix + ("#define AMK_BOUND_ANY_TOKEN 1\n" if v.name in args.bound else "")
        try:
            with kernel_defines(prefix):
                vm = make_vm(prog, model, device="cuda", vm="cuda")
                ver = verify(prog, model, device="cuda", vm="cuda", cases=args.cases, runner=vm)
            checked = ver.to_dict()
            rows[v.name].update(verify=f"{checked['cases_passed']}/{checked['total']}", registers=vm.registers,
                                local_bytes=vm.local_bytes)
            if ver.ok:
                built[v.name] = vm
            elif v.name in args.bound:
                built[v.name] = vm
                rows[v.name]["bound"] = "verify failed: timed as a bound (its output is wrong)"
            else:
                rows[v.name]["error"] = "verify failed"
        except Exception as e:
            rows[v.name]["error"] = f"{type(e).__name__}: {e}"
            rows[v.name]["trace"] = traceback.format_exc()[-1500:]
        print(v.name, json.dumps({k: rows[v.name].get(k) for k in ("verify", "registers", "local_bytes", "error")}),
              flush=True)
    order = [v.name for v in variants if v.name in built]
    for _ in range(args.rounds):
        for name in order + order[::-1]:
            r = time_vm(built[name], steps=args.steps, context=args.context)
            rows[name]["samples_us"].append(round(r["latency_us"], 2))
    for row in rows.values():
        if row["samples_us"]:
            row["mean_us"] = sum(row["samples_us"]) / len(row["samples_us"])
            row["min_us"] = min(row["samples_us"])
    result = {"env": {"device": torch.cuda.get_device_name(), "target": target.name,
                      "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv), "commit": git_commit()},
              "model": args.model, "dtype": args.dtype, "context": args.context, "config": config,
              "variants": rows}
    label = os.path.basename(os.path.normpath(args.model))
    path = os.path.join(args.out, f"{time.strftime('%Y%m%d-%H%M%S')}_{target.name}_{label}_variants.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    base = rows[variants[0].name].get("mean_us")
    print(f"\n{'variant':<16}{'mean_us':>10}{'min_us':>10}{'ratio':>8}  defines / error")
    for name, row in rows.items():
        mean = row.get("mean_us", float("nan"))
        ratio = mean / base if base else float("nan")
        note = " (bound: output wrong)" if row.get("bound") else ""
        print(f"{name:<16}{mean:>10.1f}{row.get('min_us', float('nan')):>10.1f}{ratio:>8.4f}  "
              f"{row.get('error') or ' '.join(f'{k}={v}' for k, v in row['defines'].items())}{note}")
    print("wrote", path)


if __name__ == "__main__":
    main()
