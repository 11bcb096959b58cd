"""Trials per minute of bench/loop_gpu.py runs, compared over the same window: the whole run, the first M
minutes, and the steady state (from the first trial's row to the last, start-up left out).

    python bench/tools/loop_rates.py --window 3 ROOT/llama_s0 ROOT/llama_s1 ROOT/llama_ray2

Reads each directory's summary.json ("started", "workers") and results.tsv (one row a trial, UTC times);
re-measurements of the incumbent are rows too but are not trials. Prints a table and the JSON rows.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from amk.flywheel.results import read_rows


def _utc(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def rates(run: Path, window_min: float) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    t0 = _utc(summary["started"])
    times = sorted(_utc(r["time"]) for r in read_rows(run / "results.tsv") if r["status"] != "remeasure")
    if not times:
        raise ValueError(f"{run}: no trials in results.tsv")
    minutes = summary["loop"].get("seconds", (times[-1] - t0)) / 60
    in_window = sum(1 for t in times if t - t0 <= window_min * 60)
    steady = (len(times) - 1) / ((times[-1] - times[0]) / 60) if times[-1] > times[0] else None
    return {"run": run.name, "workers": summary["workers"], "minutes": round(minutes, 2), "trials": len(times),
            "per_minute": round(len(times) / minutes, 2), f"first_{window_min:g}_min": in_window,
            "per_minute_in_window": round(in_window / window_min, 2),
            "steady_per_minute": round(steady, 2) if steady else None,
            "first_trial_after_s": round(times[0] - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--window", type=float, default=3.0, help="minutes from each run's start")
    a = ap.parse_args()
    rows = [rates(r, a.window) for r in a.runs]
    keys = list(rows[0])
    print("  ".join(f"{k:>12}" for k in keys))
    for r in rows:
        print("  ".join(f"{str(r[k]):>12}" for k in keys))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
