"""The plots of `amk report` (matplotlib, Agg): search.png (each trial's latency, the best so far, and the cost
model's prediction against the measurement) and latency_vs_floor.png (each config's latency against its model's
spec floor), one series per group of comparable rows (cmd_report.RUN_KEYS). A plot is written whole or not at all,
and never over a file that is not a PNG image."""

from __future__ import annotations

import os
from pathlib import Path

from .cmd_report import BEST_STATUSES, RUN_KEYS, run_fields, run_label
from .commands import UsageError


def plot_search(df, out_dir: Path) -> str:
    """search.png: per (model, gpu, dtype, max_seq, kind), each trial's latency (dots by status), the best so far
    (a step), and the cost model's prediction against the measurement (with y = x and Spearman's rho)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from amk.schedule.cost import spearman

    timed = df[df["latency_us"].notna() & (df["correct"] == True)].sort_values("trial")  # noqa: E712
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = {"keep": "tab:green", "discard": "tab:gray", "remeasure": "tab:blue"}
    groups, labelled = timed.groupby([*RUN_KEYS, "kind"], dropna=False), set()
    for (model, gpu, dtype, max_seq, kind), g in groups:
        label = _plot_label(model, gpu, dtype, max_seq, kind)
        for status, s in g.groupby("status"):
            # a status is labelled once, whatever the groups: its colour is the same in each
            ax1.scatter(s["trial"].astype(int), s["latency_us"], s=12, color=colours.get(status, "tab:red"),
                        label=None if status in labelled else status)
            labelled.add(status)
        kept = g[g["status"] == "keep"]
        src = kept if len(kept) else g[g["status"].isin(BEST_STATUSES)]
        trials, best = src["trial"].astype(int).tolist(), src["latency_us"].cummin().tolist()
        last = int(g["trial"].max())
        if trials and trials[-1] < last:  # the best stands until the last trial
            trials.append(last)
            best.append(best[-1])
        ax1.step(trials, best, where="post", label=f"best so far: {label}")
        # a predicted latency against its own prediction says nothing: only measured rows are plotted
        pairs = g[g["predicted_us"].notna() & (g["status"] != "remeasure") & (g["kind"] != "predicted")]
        if len(pairs):
            rho = spearman(pairs["predicted_us"].tolist(), pairs["latency_us"].tolist())
            ax2.scatter(pairs["predicted_us"], pairs["latency_us"], s=12,
                        label=f"{label}, rho = {rho:.2f}" if rho is not None else label)
    measured = timed[timed["predicted_us"].notna() & (timed["kind"] != "predicted")]
    if len(measured):
        lo = float(min(measured["predicted_us"].min(), measured["latency_us"].min()))
        hi = float(max(measured["predicted_us"].max(), measured["latency_us"].max()))
        ax2.plot([lo, hi], [lo, hi], linestyle="--", color="gray", linewidth=1, label="y = x")
    else:
        why = ("no measured latency has a prediction" if (timed["kind"] != "predicted").any() else
               "no measured latencies:\nevery latency here is the cost model's prediction")
        ax2.text(0.5, 0.5, why, ha="center", va="center", transform=ax2.transAxes, fontsize=9, color="gray")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("trial")
    ax1.set_ylabel("latency (us)")
    ax1.set_title("latency per trial and the best kept so far")
    ax2.set_xlabel("cost model's prediction (us)")
    ax2.set_ylabel("latency (us)")
    ax2.set_title("predicted against measured")
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, out_dir / "search.png", plt)


def _plot_label(model: str, gpu: str, dtype: str, max_seq, kind: str) -> str:
    """A plotted group's legend: model, GPU, dtype and context, latency kind."""
    return f"{model} / {gpu} / {run_label(**run_fields(dtype, max_seq))} ({kind})"


def plot(df, out_dir: Path) -> list[str]:
    """search.png (plot_search) and latency_vs_floor.png: each group's latencies and, dashed in the colour of its
    model's first group, that model's spec floor in its dtype (the median of its rows' `floor_us`, the column
    report() adds: rows of no known floor draw none), labelled with the model, GPU and dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:  # both refused before either is drawn: no plot written beside a refusal
        try:
            check_target(out_dir / name)
        except OSError as e:
            raise UsageError(f"--out-dir {str(out_dir)!r}: {name} cannot be written there ({e.strerror or e}); "
                             f"{_HINT}") from None
    paths = [plot_search(df, out_dir)]
    timed = df[df["latency_us"].notna() & (df["correct"] == True)].sort_values("trial")  # noqa: E712
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn: set[tuple] = set()  # one floor a model, GPU and dtype: the context (max_seq) does not change it
    for (model, gpu, dtype, max_seq, kind), g in timed.groupby([*RUN_KEYS, "kind"], dropna=False):
        dots = ax.scatter(g["trial"].astype(int), g["latency_us"], s=12,
                          label=_plot_label(model, gpu, dtype, max_seq, kind))
        floor = g["floor_us"].dropna() if "floor_us" in g else ()
        if len(floor) and (model, gpu, dtype) not in drawn:
            drawn.add((model, gpu, dtype))
            ax.axhline(float(floor.median()), linestyle="--", linewidth=1, color=dots.get_facecolor()[0],
                       label=f"spec floor: {model} / {gpu} / {dtype or 'dtype not recorded'}")
    ax.set_xlabel("trial")
    ax.set_ylabel("latency (us); dashed: spec floor")
    ax.set_title("each config's latency against the floor")
    if len(timed):
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "latency_vs_floor.png", plt))
    return paths


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("search.png", "latency_vs_floor.png")  # the files plot() writes in --out-dir


def _save(fig, path: Path, plt) -> str:
    """Save `fig` to `path` as a PNG, whole or not at all (cmd_run.write_output), once plot() has checked that the
    plot may replace it (check_target). UsageError naming --out-dir when the file cannot be written there."""
    import io

    from .cmd_run import write_output

    try:
        fig.tight_layout()  # `path` was checked by plot(), with the other plot, before either was drawn
        image = io.BytesIO()
        fig.savefig(image, dpi=110, format="png")
    except OSError as e:
        raise UsageError(f"--out-dir {str(path.parent)!r}: {path.name} cannot be written there "
                         f"({e.strerror or e}); {_HINT}") from None
    finally:
        plt.close(fig)
    write_output("--out-dir", path, image.getvalue())
    return str(path)


_HINT = "name another directory, or pass --no-plots"


def check_target(path: Path) -> None:
    """UsageError naming --out-dir and the file when the plot may not replace `path`: a symbolic link loop, a
    directory or another file that is no regular one, a file (or the file a symbolic link there names) that is no
    PNG image (a results.tsv, a corpus or a user's own file), or one that is not writable (a read-only plot, as
    `verify --out` and `compile --out` refuse a read-only file, though a rename over it would succeed). OSError
    as the file system raises it."""
    try:
        target = path.resolve()
    except RuntimeError as e:  # a symbolic link loop (an OSError, caught by the caller, from Python 3.13)
        raise UsageError(f"--out-dir {str(path.parent)!r}: {path.name} names no file ({e}); {_HINT}") from None
    if target.is_file():
        shown = f"{path.name} (a link to {str(target)!r})" if path.is_symlink() else path.name
        with open(target, "rb") as f:
            head = f.read(len(PNG_SIGNATURE))
        if head != PNG_SIGNATURE:
            raise UsageError(f"--out-dir {str(path.parent)!r}: {shown} exists and is not a PNG image, which the "
                             f"plot would overwrite; {_HINT}")
        if not os.access(target, os.W_OK):
            raise UsageError(f"--out-dir {str(path.parent)!r}: {shown} is not writable (read-only), and the plot "
                             f"would replace it; make it writable, {_HINT}")
    elif target.exists():
        raise UsageError(f"--out-dir {str(path.parent)!r}: {path.name} cannot be written there (not a file); "
                         f"{_HINT}")
