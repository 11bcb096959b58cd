"""How well the ranking model orders a model's measured trials from other models' records (transfer) against
without them, replayed over the loop corpora in bench/results: each model in turn is the target, the others'
records its `others`. Cold: none of the target's own records; warm: its first WARM records (file order) fitted,
the rest ranked. Per case: Spearman of the model's figure and the measured latency, and of the TOP trials it
ranks first, their mean latency over the target's default config's and how many ran 1.3x that or slower.

    python bench/ranking_transfer.py --out bench/results/DATE_ranking_transfer.json
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import logging
import subprocess
from pathlib import Path

import numpy as np

from amk.flywheel.records import MEASURED, for_other_models, for_run, load_records
from amk.harness.search.model import fit_model, knob_keys
from amk.schedule.config import ScheduleConfig
from amk.schedule.cost import spearman
from amk.schedule.space import search_space

ROOT = Path(__file__).resolve().parents[1]
WARM = 20
TOP = 20
SLOW = 1.3


def _readable(records):
    out = []
    for r in records:
        if r.correct and r.latency_us and r.latency_kind == MEASURED:
            try:
                ScheduleConfig.from_dict(r.config)
            except ValueError:
                continue
            out.append(r)
    return out


def _rank(model, held, default_us: float) -> dict:
    figures = [model.predict(r.config, r.features, r.predicted_latency_us) for r in held]
    pairs = [(f, r.latency_us) for f, r in zip(figures, held) if f]
    lat = np.array([m for _, m in sorted(pairs)[:TOP]]) / default_us
    return {"spearman": round(spearman([np.log(f) for f, _ in pairs], [m for _, m in pairs]), 3),
            f"top{TOP}_mean_over_default": round(float(lat.mean()), 3), f"top{TOP}_at_{SLOW}x_or_slower": int((lat >= SLOW).sum()),
            "ranked": len(pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", default="h200")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # old lines of the corpora are skipped with a warning each
    files = sorted(glob.glob(str(ROOT / "bench/results/loop_*/corpus.jsonl")))
    records = [r for f in files for r in load_records(f) if r.gpu == args.gpu]
    space = search_space(args.gpu, dtype=args.dtype)
    rows = []
    for target in sorted({r.model for r in _readable(records)}):
        mine = _readable(for_run(records, target, args.gpu, args.dtype))
        others = for_other_models(records, target, args.gpu, args.dtype)
        defaults = [r.latency_us for r in mine if not knob_keys(r.config, frozenset(k.path for k in space if k.search))]
        default_us = float(np.median(defaults)) if defaults else float(np.median([r.latency_us for r in mine]))
        for phase, fitted, held in (("cold", [], mine), ("warm", mine[:WARM], mine[WARM:])):
            for transfer in (False, True):
                # the coefficients' pool holds what a loop at this point would have: no held-out record
                m = fit_model(fitted, others + fitted, space, MEASURED, others=others if transfer else [])
                row = {"model": target, "phase": phase, "transfer": transfer, "own_records": len(fitted),
                       "transfer_records": m.transfer_rows, "transfer_models": m.transfer_models,
                       "default_us": round(default_us, 1), **_rank(m, held, default_us)}
                rows.append(row)
                print(json.dumps(row))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    out = {"what": "the ranking model's order of measured trials with and without other models' records",
           "device": "CPU (replays GPU records)", "gpu_of_records": args.gpu, "dtype": args.dtype,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
           "command": f"python bench/ranking_transfer.py --gpu {args.gpu} --dtype {args.dtype}",
           "corpora": [str(Path(f).relative_to(ROOT)) for f in files], "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
