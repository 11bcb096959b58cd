"""`amk report`: summarise results.tsv with pandas, add what the corpus says about the cost model and the
prior, and plot (matplotlib, Agg) the best latency over trials and each config's latency against the floor."""

from __future__ import annotations

import logging
from pathlib import Path

from .commands import CommandResult, ExitCode, UsageError

log = logging.getLogger("amk.cli")


def summarise(df) -> dict:
    """Counts, the best latency per (model, gpu, kind), and the kept trials, from load_results()'s frame."""
    out: dict = {"trials": int(len(df)), "statuses": {k: int(n) for k, n in df["status"].value_counts().items()}}
    groups = []
    for (model, gpu), g in df.groupby(["model", "gpu"], sort=True):
        timed = g[g["latency_us"].notna() & (g["correct"] == True)]  # noqa: E712 (pandas nullable boolean)
        entry = {"model": model, "gpu": gpu, "trials": int(len(g)),
                 "kept": int((g["status"] == "keep").sum()), "best": {}}
        for kind, k in timed.groupby("kind"):
            row = k.loc[k["latency_us"].idxmin()]
            first = k.sort_values("trial").iloc[0]
            entry["best"][kind] = {"trial": int(row["trial"]), "schedule_id": row["schedule_id"],
                                   "latency_us": float(row["latency_us"]),
                                   "pct_of_floor": None if row["pct_of_floor"] != row["pct_of_floor"]
                                   else float(row["pct_of_floor"]),
                                   "vs_first_correct": float(first["latency_us"] / row["latency_us"])}
        entry["kept_trials"] = [{"trial": int(r.trial), "schedule_id": r.schedule_id,
                                 "latency_us": None if r.latency_us != r.latency_us else float(r.latency_us),
                                 "kind": r.kind, "description": r.description}
                                for r in g[g["status"] == "keep"].itertuples()]
        groups.append(entry)
    out["groups"] = groups
    return out


def corpus_summary(corpus: Path) -> dict:
    from amk.flywheel.corpus import load_corpus
    from amk.flywheel.prior import Prior

    from .calibration import calibrate

    entries = load_corpus(corpus)
    gpus = sorted({e.gpu for e in entries})
    cost = {}
    for gpu in gpus:
        cal = calibrate(entries, gpu)
        if cal.measured_rows:
            cost[gpu] = {"measured_rows": cal.measured_rows, "spearman": cal.spearman,
                         "coefficients": cal.coefficients.to_dict()}
    prior = Prior.from_corpus(entries)
    return {"entries": len(entries), "gpus": gpus, "cost_model": cost,
            "prior_top": [{"move": k, "mean_improvement": s, "count": n} for k, s, n in prior.top(10)]}


def plot(df, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    timed = df[df["latency_us"].notna() & (df["correct"] == True)].sort_values("trial")  # noqa: E712
    paths = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (model, gpu, kind), g in timed.groupby(["model", "gpu", "kind"]):
        ax.step(g["trial"].astype(int), g["latency_us"].cummin(), where="post", label=f"{model} / {gpu} ({kind})")
        kept = g[g["status"] == "keep"]
        ax.scatter(kept["trial"].astype(int), kept["latency_us"], s=14)
    ax.set_xlabel("trial")
    ax.set_ylabel("best latency so far (us)")
    ax.set_title("best latency over trials (dots: kept)")
    if len(timed):
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "best_latency.png", plt))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (model, gpu, kind), g in timed.groupby(["model", "gpu", "kind"]):
        ax.scatter(g["trial"].astype(int), g["latency_us"], s=12, label=f"{model} / {gpu} ({kind})")
        floor = (g["latency_us"] * g["pct_of_floor"] / 100.0).dropna()
        if len(floor):
            ax.axhline(float(floor.median()), linestyle="--", linewidth=1, color="gray")
    ax.set_xlabel("trial")
    ax.set_ylabel("latency (us); dashed: floor")
    ax.set_title("each config's latency against the floor")
    if len(timed):
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "latency_vs_floor.png", plt))
    return paths


def _save(fig, path: Path, plt) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def report(args) -> CommandResult:
    from amk.flywheel.results import load_results

    results = Path(args.results)
    if not results.is_file():
        raise UsageError(f"{results} not found (run `amk loop` first, or pass --results)")
    df = load_results(results)
    out = summarise(df)
    out["results"] = str(results)
    corpus = Path(args.corpus)
    out["corpus"] = corpus_summary(corpus) if corpus.is_file() else None
    out["plots"], out["notes"] = [], []
    if not args.no_plots:
        try:
            out["plots"] = plot(df, Path(args.out_dir))
        except ImportError as e:
            out["notes"].append(f"no plots: {e} (pip install matplotlib)")
    return CommandResult(ExitCode.OK, out, _text(out))


def _text(out: dict) -> str:
    lines = [f"{out['trials']} trials: " + ", ".join(f"{k} {n}" for k, n in out["statuses"].items())]
    for g in out["groups"]:
        lines.append(f"{g['model']} on {g['gpu']}: {g['trials']} trials, {g['kept']} kept")
        for kind, b in g["best"].items():
            pct = f", {b['pct_of_floor']:.1f}% of floor" if b["pct_of_floor"] is not None else ""
            lines.append(f"  best ({kind}): {b['latency_us']:.2f} us, trial {b['trial']} {b['schedule_id']}{pct}; "
                         f"{b['vs_first_correct']:.3f}x the first correct config")
        for k in g["kept_trials"]:
            lines.append(f"  kept trial {k['trial']:>4} {k['schedule_id']} {k['latency_us']} {k['description'][:90]}")
    c = out.get("corpus")
    if c:
        lines.append(f"corpus: {c['entries']} kept configs on {', '.join(c['gpus']) or '-'}")
        for gpu, m in c["cost_model"].items():
            rho = f"{m['spearman']:.3f}" if m["spearman"] is not None else "n/a"
            lines.append(f"  cost model on {gpu}: Spearman(predicted, measured) = {rho} over {m['measured_rows']} rows")
        for p in c["prior_top"][:5]:
            lines.append(f"  prior: {p['move']} mean gain {100 * p['mean_improvement']:+.2f}% ({p['count']})")
    lines += [f"plot: {p}" for p in out["plots"]] + [f"note: {n}" for n in out["notes"]]
    return "\n".join(lines)
