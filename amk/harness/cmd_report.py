"""`amk report`: summarise results.tsv with pandas, name the best config itself (from the tuning records),
add what the records say about the cost model and the prior, and draw (matplotlib, Agg) the search
(search.png: latency per trial, best so far, predicted against measured) and each config's latency against
the floor (latency_vs_floor.png).

Rows are grouped by model, GPU, dtype and max_seq (RUN_KEYS), in the summary and in the plots: a latency is never
ranked against one of another dtype or context. Rows of a file written before the dtype and max_seq columns form
groups whose dtype and max_seq are unknown (null)."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

from .commands import CommandResult, ExitCode, UsageError, check_not_stdout, check_path_flag, counted
from .report_floor import floors_of, row_floors, under_floor  # noqa: F401 (under_floor: read here by callers)

log = logging.getLogger("amk.cli")

RUN_KEYS = ["model", "gpu", "dtype", "max_seq"]  # the rows of one group: latencies comparable with each other


def run_fields(dtype: str, max_seq) -> dict:
    """A group's dtype and max_seq as the report gives them (load_results()'s cells): None where the rows do
    not say (an older results file)."""
    import pandas as pd

    return {"dtype": dtype or None, "max_seq": None if pd.isna(max_seq) else int(max_seq)}


def run_label(dtype: str | None, max_seq: int | None) -> str:
    """A group's dtype and context in words: `fp32, max_seq 2048`; `?` for what the rows do not say, and
    `dtype and max_seq not recorded` for rows of an older file."""
    if dtype is None and max_seq is None:
        return "dtype and max_seq not recorded"
    return f"{dtype or '?'}, max_seq {'?' if max_seq is None else max_seq}"


BEST_STATUSES = ("keep", "discard")  # the rows of a correct, timed trial (search/keep.py decide)


def _best_pct(row, measured: dict[str, float]) -> tuple[float | None, str | None]:
    """(floor / latency in percent, which floor): the measured floor its program's tuning records name, as the
    verdict gives it (HARNESS section 2), else the spec floor computed for the row; (None, None) where neither is
    known."""
    lat = float(row["latency_us"])
    if row["program_fingerprint"] in measured:
        return 100.0 * measured[row["program_fingerprint"]] / lat, "measured"
    if row["floor_us"] == row["floor_us"]:
        return 100.0 * float(row["floor_us"]) / lat, "spec"
    return None, None


def summarise(df, configs: dict[str, dict] | None = None, floors=None,
              measured: dict[str, float] | None = None) -> dict:
    """Counts, the best latency per (model, gpu, dtype, max_seq, kind) with its config when the records hold
    it, and the kept trials, from load_results()'s frame. `configs`: schedule_id -> config (from the tuning
    records); `floors` (floors_of): a row under its spec floor (no step runs that fast: a hand edit) is never a
    best, and `withheld` counts such rows. A best's pct_of_floor is its run's spec floor over its latency, computed
    here, never from the row's cell, which an edit leaves as it was: against the measured floor its program's
    tuning records name (`measured`: program_fingerprint -> us), as the verdict gives it, else against its run's spec
    floor (`floor_kind` says which; None where neither is known, or the spec floor is only a lower bound)."""
    configs = configs or {}
    floor, exact = floors_of(df, floors)
    df = df.assign(impossible=df["latency_us"] < floor, floor_us=floor.where(exact))
    trials = df[df["status"] != "remeasure"]
    out: dict = {"trials": int(len(trials)), "statuses": {k: int(n) for k, n in df["status"].value_counts().items()}}
    groups = []
    # dropna=False: rows of an older file (no dtype or max_seq) are a group of their own, not dropped
    for (model, gpu, dtype, max_seq), g in df.groupby(RUN_KEYS, sort=True, dropna=False):
        # only a kept or discarded trial is a candidate best: a fail, crash or rejected row is none, whatever it holds
        timed = g[g["latency_us"].notna() & (g["correct"] == True) & g["status"].isin(BEST_STATUSES)  # noqa: E712
                  & ~g["impossible"]]
        entry = {"model": model, "gpu": gpu, **run_fields(dtype, max_seq),
                 "trials": int((g["status"] != "remeasure").sum()),
                 "kept": int((g["status"] == "keep").sum()), "best": {}}
        for kind, k in timed.groupby("kind"):
            kept = k[k["status"] == "keep"]
            row = (kept if len(kept) else k).loc[(kept if len(kept) else k)["latency_us"].idxmin()]
            first = k.sort_values("trial").iloc[0]
            entry["best"][kind] = {"trial": int(row["trial"]), "schedule_id": row["schedule_id"],
                                   "latency_us": float(row["latency_us"]), "kept": row["status"] == "keep",
                                   **dict(zip(("pct_of_floor", "floor_kind"), _best_pct(row, measured or {}))),
                                   "vs_first_correct": float(first["latency_us"] / row["latency_us"]),
                                   "config": configs.get(row["schedule_id"])}
        entry["kept_trials"] = [{"trial": int(r.trial), "schedule_id": r.schedule_id,
                                 "latency_us": None if r.latency_us != r.latency_us else float(r.latency_us),
                                 "kind": r.kind, "description": r.description, "withheld": bool(r.impossible)}
                                for r in g[g["status"] == "keep"].itertuples()]
        groups.append(entry)
    out["groups"] = groups
    out["withheld"] = int(df["impossible"].sum())
    return out


def corpus_summary(entries: list) -> dict:
    from amk.flywheel.prior import Prior

    from .calibration import calibrate

    gpus = sorted({e.gpu for e in entries})
    cost = {}
    for gpu in gpus:
        cal = calibrate(entries, gpu)
        if cal.measured_rows:
            cost[gpu] = {"measured_rows": cal.measured_rows, "spearman": cal.spearman,
                         "coefficients": cal.coefficients.to_dict()}
    prior = Prior.from_corpus(entries)
    return {"entries": len(entries), "kept": sum(1 for e in entries if e.kept), "gpus": gpus, "cost_model": cost,
            "prior_top": [{"move": k, "mean_improvement": s, "count": n} for k, s, n in prior.top(10)]}


def _readable(config: dict) -> bool:
    """Whether this version parses a record's config: one it cannot (a hand edit, a knob since removed) is never
    shown as a group's best config, as propose never starts from it."""
    from amk.schedule.config import ScheduleConfig

    try:
        ScheduleConfig.from_dict(config)
    except ValueError:
        return False
    return True


def short_context_notes(groups: list[dict], records: list, df=None) -> list[str]:
    """For each group of summarise() with a latency taken at a KV context shorter than the bench's (a program of
    fewer positions), the note the loop's summary gave, from the group's max_seq; a group with no latency gets
    none. A group of an older results file (max_seq null) takes the contexts the tuning records of its rows'
    programs name (those of its model and GPU, where `df`, load_results()'s frame, is not given or the rows name no
    program): the note names that context where they agree on one, and every one of them where they do not,
    since the file cannot say which row was timed at which."""
    from amk.schedule.cost import BENCH_CONTEXT, bench_context

    from .gates import short_context_note

    notes = []
    for g in groups:
        if g["max_seq"] is not None and g["best"]:
            note = short_context_note(bench_context(g["max_seq"]), g["max_seq"], what="latencies are")
            if note:
                notes.append(f"{g['model']} on {g['gpu']} ({run_label(g['dtype'], g['max_seq'])}): {note}")
    older = {(g["model"], g["gpu"]) for g in groups if g["max_seq"] is None and g["best"]}
    programs: dict[tuple[str, str], set[str]] = {}
    if df is not None and len(df) and "program_fingerprint" in df:
        rows = df[df["max_seq"].isna()]
        for (model, gpu), g in rows.groupby(["model", "gpu"]):
            fps = {f for f in g["program_fingerprint"] if isinstance(f, str) and f}
            if fps:
                programs[(model, gpu)] = fps
    contexts: dict[tuple[str, str], set[int]] = {}
    for r in records:
        c = r.verdict.get("latency_context")
        key = (r.model, r.gpu)
        if key in older and isinstance(c, int) and r.latency_us is not None and (
                key not in programs or r.program_fingerprint in programs[key]):
            contexts.setdefault(key, set()).add(c)
    for (model, gpu), cs in sorted(contexts.items()):
        head = f"{model} on {gpu} ({run_label(None, None)})"
        if len(cs) == 1:
            note = short_context_note(next(iter(cs)), None, what="latencies are")
            if note:
                notes.append(f"{head}: {note}")
        elif min(cs) < BENCH_CONTEXT:
            notes.append(f"{head}: latencies are at KV contexts of {', '.join(map(str, sorted(cs)))} positions (its "
                         f"tuning records name each), not all {BENCH_CONTEXT}: the file does not record which row "
                         "was timed at which, so they are ranked together")
    return notes


def checkpoint_notes(groups: list[dict], records: list) -> list[str]:
    """For each model and GPU of summarise()'s groups whose timed tuning records name more than one checkpoint
    fingerprint (a directory saved again between runs, perhaps with another shape), a note that its rows are of
    different weights: results.tsv names the model by its path only, so they are ranked together."""
    from amk.flywheel.records import MODEL_FINGERPRINT

    shown = {(g["model"], g["gpu"]) for g in groups}
    seen: dict[tuple[str, str], set[str]] = {}
    for r in records:
        fp = (r.environment or {}).get(MODEL_FINGERPRINT)
        if (r.model, r.gpu) in shown and isinstance(fp, str) and fp and r.latency_us is not None:
            seen.setdefault((r.model, r.gpu), set()).add(fp)
    return [f"{model} on {gpu}: its tuning records were timed on {len(fps)} checkpoints there ({', '.join(sorted(f[:16] for f in fps))}): "
            "the directory was saved again between runs, so its rows are latencies of different weights (another "
            "shape, perhaps), ranked together here"
            for (model, gpu), fps in sorted(seen.items()) if len(fps) > 1]


def report(args) -> CommandResult:
    from amk.flywheel.records import records_and_skipped
    from amk.flywheel.results import ResultsFormatError, load_results

    for flag, value in (("--results", args.results), ("--corpus", args.corpus)) + (
            () if args.no_plots else (("--out-dir", args.out_dir),)):
        check_path_flag(flag, value)
    results = Path(args.results).expanduser()  # checked above: a ~ of an unknown user was refused
    if results.is_dir():
        raise UsageError(f"--results {str(results)!r}: is a directory; name the results file of `amk loop`")
    if results.exists() and not results.is_file():  # checked before any read: opening a FIFO blocks
        raise UsageError(f"--results {str(results)!r}: is not a regular file (a device, a FIFO or a socket); name "
                         "the results file of `amk loop`")
    if not results.is_file() and results.is_symlink():
        raise UsageError(f"--results {str(results)!r}: a symbolic link that leads to no file (dangling, or a loop); "
                         "name the results file of `amk loop`")
    if not results.is_file():
        raise UsageError(f"--results {str(results)!r}: not found (run `amk loop` first, or pass --results)")
    try:
        df = load_results(results)
    except ResultsFormatError as e:  # led by the flag (HARNESS section 4), as the loop's refusal is
        raise UsageError(f"--results: {e}") from None
    corpus = Path(args.corpus).expanduser()
    if corpus.is_dir():  # as every other command refuses it: read as "no records", it would hide a wrong path
        raise UsageError(f"--corpus {str(corpus)!r}: is a directory; name the corpus file of `amk loop`")
    if corpus.exists() and not corpus.is_file():
        raise UsageError(f"--corpus {str(corpus)!r}: is not a regular file (a device, a FIFO or a socket); name the "
                         "corpus file of `amk loop`")
    records, corpus_skipped = records_and_skipped(corpus) if corpus.is_file() else ([], 0)
    configs = {r.schedule_id: r.config for r in records if r.schedule_id and _readable(r.config)}
    # a row's floor: its program's records', else its model's as `amk loop` computes it (no corpus needed)
    floors, floor_notes = row_floors(df, records)
    measured = {r.program_fingerprint: float(m) for r in records if r.program_fingerprint
                and isinstance(m := r.verdict.get("measured_floor_us"), int | float) and not isinstance(m, bool) and m > 0}
    out = summarise(df, configs, floors, measured)
    out["results"] = str(results)
    out["corpus"] = {**corpus_summary(records), "skipped_lines": corpus_skipped} if corpus.is_file() else None
    out["plots"], out["notes"] = [], []
    out["skipped_lines"] = int(df.attrs.get("skipped_lines", 0))
    if out["skipped_lines"]:  # an agent reading the JSON (or MCP) sees no stderr: say it here too
        out["notes"].append(f"{counted(out['skipped_lines'], 'line')} of {results} skipped as no readable row (each "
                            "named in a warning): their trials are not counted here")
    if corpus_skipped:
        out["notes"].append(f"{counted(corpus_skipped, 'line')} of {corpus} skipped as no tuning record (each named "
                            "in a warning): a kept trial whose record it was shows no config")
    if not configs and len(df):
        why = ("no such file: pass the corpus file of `amk loop` that wrote the results" if not corpus.exists()
               else "pass the corpus file of `amk loop` that wrote the results (--corpus; corpus in Python and MCP)")
        out["notes"].append(f"no tuning records in {corpus}: the best configs cannot be shown ({why})")
    out["notes"] += short_context_notes(out["groups"], records, df)
    out["notes"] += checkpoint_notes(out["groups"], records)
    out["notes"] += floor_notes
    if out["withheld"]:
        out["notes"].append(f"{counted(out['withheld'], 'row')} of {results} under the spec floor (its program's "
                            "tuning records', else its model's weight bytes at the GPU's spec bandwidth; no step runs "
                            "that fast: a hand edit?) ranked as no best")
    if not args.no_plots:
        out_dir = _out_dir(args.out_dir)
        floor, exact = floors_of(df, floors)
        from .report_plots import plot

        try:  # a withheld row is drawn as no best
            out["plots"] = plot(df.assign(floor_us=floor.where(exact))[~(df["latency_us"] < floor)], out_dir)
        except ImportError as e:
            out["notes"].append(f"no plots: {e} (pip install matplotlib)")
    return CommandResult(ExitCode.OK, out, _text(out))


def _out_dir(value: str) -> Path:
    """--out-dir, created if missing; a usage error naming the flag when it cannot be (a file of that name, a
    parent that is a file, no permission), before any plot is drawn."""
    if not value.strip():  # Path("") is the working directory: the plots would land among the user's files
        raise UsageError("--out-dir '': empty; name a directory for the plots (default report)")
    check_not_stdout("--out-dir", value, "directory")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out-dir {value!r}: exists and is not a directory; name a directory for the plots")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out-dir {value!r}: cannot be created ({e.strerror or e})") from e
    return path


def _text(out: dict) -> str:
    # a remeasure (the incumbent timed again) is no trial: named apart, so that the statuses add up to the trials
    statuses = ", ".join(f"{k} {n}" for k, n in out["statuses"].items() if k != "remeasure")
    again = out["statuses"].get("remeasure", 0)
    lines = [f"{counted(out['trials'], 'trial')}" + (f": {statuses}" if statuses else "")
             + (f"; and {counted(again, 'remeasure')} of the incumbent" if again else "")]
    for g in out["groups"]:
        lines.append(f"{g['model']} on {g['gpu']} ({run_label(g['dtype'], g['max_seq'])}): "
                     f"{counted(g['trials'], 'trial')}, {g['kept']} kept")
        for kind, b in g["best"].items():
            pct = f", {b['pct_of_floor']:.1f}% of the {b['floor_kind']} floor" if b["pct_of_floor"] is not None else ""
            lines.append(f"  best ({kind}): {b['latency_us']:.2f} us, trial {b['trial']} {b['schedule_id']}{pct}; "
                         f"{b['vs_first_correct']:.3f}x the first correct config")
            if b.get("config") is not None:
                lines.append("    config: " + json.dumps(b["config"], sort_keys=True))
        for k in g["kept_trials"]:
            lat = k["latency_us"]
            shown = f"{lat:.2f} us" if isinstance(lat, int | float) else "-"  # as the best line writes it
            # cut between words, never inside a number or a knob's name (the JSON form holds it whole)
            whole = " ".join((k["description"] or "").split())
            desc = textwrap.shorten(whole, 100, placeholder=" ...")
            if desc == "...":  # a first word past the width: cut it, as nothing else would show
                desc = whole[:96] + " ..."
            mark = " (under the spec floor: withheld)" if k.get("withheld") else ""
            lines.append(f"  kept trial {k['trial']:>4} {k['schedule_id']} {shown}{mark} {desc}")
    c = out.get("corpus")
    if c:
        lines.append(f"corpus: {c['entries']} tuning records ({c['kept']} kept) on {', '.join(c['gpus']) or '-'}")
        for gpu, m in c["cost_model"].items():
            rho = f"{m['spearman']:.3f}" if m["spearman"] is not None else "n/a"
            lines.append(f"  cost model on {gpu}: Spearman(predicted, measured) = {rho} over {m['measured_rows']} rows")
        for p in c["prior_top"][:5]:
            # a trial of several moves counts whole for each (flywheel/prior.py); a -0.001% gain prints as 0
            gain = round(100 * p["mean_improvement"], 2) + 0.0
            lines.append(f"  prior: {p['move']}: {gain:+.2f}% mean gain of the {counted(p['count'], 'trial')} "
                         "that moved it (with any other move)")
    lines += [f"plot: {p}" for p in out["plots"]] + [f"note: {n}" for n in out["notes"]]
    return "\n".join(lines)
