"""The raw per-task trace that `bench/trace.py --raw STEPS` saves: one layer's stage windows, and whether some
SMs are steadily slower.

    python bench/tools/trace_raw.py OUT/trace_raw.npz [--layer 8] [--bandwidth GBS] [--json OUT/trace_raw.json]

A layer's windows (the last step): per stage, in us from the previous layer's last task done, the range of its
tasks' start, ready, input staged (ready plus phase 0), dot done (plus phase 1) and done times, with the phases
of its last task to finish, the stage's bytes and its time above them; they show which parts of a layer run
with the weight stream idle. Per kind, a task's execution less its phases: its closing barrier and the release
of its counters. Per matvec kind, the balance gain: how much earlier a stage's dot would end were its bytes
split at run time over its SMs at each SM's own rate (an upper bound on tasks that claim rows as they go).

SM speed, per kind (tasks with bytes: the matvecs and the attention): the tasks' mean execution time and the
mean of each stage's slowest over its mean (the tail a stage boundary waits for); the split-half consistency of
the SMs' rates (bytes over the time a task streamed them, GB/s: a matvec's dot, the attention's execution): each SM's mean over the even layers against its mean over the
odd ones, Pearson r over the SMs, and the first half of the steps against the second, since the hardware may
place the blocks on other SMs each launch. Near 1 means a steady per-SM speed a placement could give fewer
bytes; near 0, a tail on a different SM each time. Also how often a stage's last task to finish ran on one of
the tenth of SMs slowest for that kind, and its lateness split into a late ready time (after the stage's mean)
and a long execution (over the stage's mean).
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import defaultdict

import numpy as np


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


# the matvec roles (schedule/tile.py): their phase 1 is the dot, the weight stream alone; their execution also
# holds the input staging, which under tagged reads includes waiting for the input
MATVEC_KINDS = frozenset({"qkv", "o", "gate_up", "down", "lm_head"})


def ready_after_start(trace: np.ndarray) -> np.ndarray:
    """A copy of `trace` ([..., tasks, words]) whose ready time (column 1) is no earlier than the start (column 0):
    the polling thread takes ready and thread 0 start, and a poll can see a task's dependencies met while thread 0
    still releases the task before; the task's work begins when thread 0 starts it."""
    out = trace.copy()
    out[..., 1] = np.maximum(out[..., 0], out[..., 1])
    return out


def clock_ghz(trace: np.ndarray) -> float:
    """The SMs' mean clock over one traced step (columns 8 and 9 cycle counts beside the ns of columns 0 and 2)."""
    return float((trace[:, 9] - trace[:, 8]).sum() / max(1, (trace[:, 2] - trace[:, 0]).sum()))


def streaming_ns(words: np.ndarray, kind: str, ghz: float) -> float:
    """The time a task streamed its bytes: a matvec's dot (phase 1), any other task's execution."""
    return float(words[5] / ghz) if kind in MATVEC_KINDS else float(words[2] - words[1])


def sm_speed(raw: dict) -> dict:
    """`raw` as np.load gives it: trace [steps, tasks, words] (columns 0-2: start, ready, done in ns; column 3 the
    block in its low 32 bits and the SM that ran it in its high 32), and per task stage, layer, kind, bytes.
    Returns per kind the figures the module docstring names, by physical SM."""
    trace, stage, layer, kind, nbytes = ready_after_start(raw["trace"]), raw["stage"], raw["layer"], raw["kind"], raw["bytes"]
    block = trace[:, :, 3] & 0xFFFFFFFF
    trace[:, :, 3] >>= 32
    steps, _, _ = trace.shape
    ghz = [clock_ghz(trace[s]) for s in range(steps)]
    num_sms = int(trace[:, :, 3].max()) + 1
    # does the hardware give a block the same SM every launch? (it need not)
    same_sm = float(np.mean([np.all(trace[s, :, 3] == trace[0, :, 3]) for s in range(steps)]))
    out = {}
    for k in sorted(set(kind.tolist())):
        ids = np.nonzero((kind == k) & (nbytes > 0) & (layer >= 0))[0]
        if len(ids) < 2 * num_sms // 4:
            continue
        layers = sorted(set(layer[ids].tolist()))
        rates = {parity: defaultdict(list) for parity in (0, 1)}
        halves = {h: defaultdict(list) for h in (0, 1)}  # steps in two halves: is an SM's speed a property of it?
        tails, late_start, long_exec, last_slow, stages_seen = [], [], [], [], 0
        per_stage = defaultdict(list)
        for tid in ids:
            per_stage[int(stage[tid])].append(tid)
        for s in range(steps):
            t = trace[s]
            for tid in ids:
                ns = streaming_ns(t[tid], k, ghz[s])
                if ns > 0:
                    rates[int(layer[tid]) % 2][int(t[tid, 3])].append(nbytes[tid] / ns)
                    halves[int(2 * s >= steps)][int(t[tid, 3])].append(nbytes[tid] / ns)
        sm_mean, step_mean = np.full((2, num_sms), np.nan), np.full((2, num_sms), np.nan)
        for h in (0, 1):
            for sm, v in rates[h].items():
                sm_mean[h, sm] = float(np.mean(v))
            for sm, v in halves[h].items():
                step_mean[h, sm] = float(np.mean(v))
        with np.errstate(all="ignore"), warnings.catch_warnings():  # an SM that ran no task of this kind: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            overall = np.nanmean(sm_mean, axis=0)
        ranked = np.argsort(np.where(np.isnan(overall), np.inf, overall))
        slowest = set(ranked[: max(1, num_sms // 10)].tolist())
        for s in range(steps):
            t = trace[s]
            for members in per_stage.values():
                m = np.array(members)
                ex = (t[m, 2] - t[m, 1]) / 1e3
                ready = t[m, 1] / 1e3
                last = int(np.argmax(t[m, 2]))
                tails.append(ex.max() / ex.mean() if ex.mean() > 0 else float("nan"))
                late_start.append(ready[last] - ready.mean())
                long_exec.append(ex[last] - ex.mean())
                last_slow.append(int(t[m[last], 3]) in slowest)
                stages_seen += 1
        out[k] = {"tasks_a_step": int(len(ids)), "layers": len(layers), "stages": stages_seen,
                  "exec_mean_us": float(np.mean((trace[:, ids, 2] - trace[:, ids, 1]) / 1e3)),
                  "tail_max_over_mean": float(np.nanmean(tails)),
                  "sm_rate_split_half_r": pearson(sm_mean[0], sm_mean[1]),
                  "sm_rate_across_steps_r": pearson(step_mean[0], step_mean[1]) if steps > 1 else float("nan"),
                  "sm_rate_gbs": [None if np.isnan(x) else round(float(x), 3) for x in overall],
                  "sm_rate_spread": float(np.nanstd(overall) / np.nanmean(overall)),
                  "last_on_slowest_tenth": float(np.mean(last_slow)),
                  "last_task_late_start_us": float(np.mean(late_start)),
                  "last_task_long_exec_us": float(np.mean(long_exec))}
    return {"steps": int(steps), "sms": num_sms, "blocks": int(block.max()) + 1, "same_sm_every_step": same_sm,
            "kinds": out}


def closing_times(raw: dict) -> dict:
    """Per kind (decoder layers only, the last traced step): the median and 90th percentile, in us, of a task's
    execution less its phases (thread 0's input staging, dot or attention body, and epilogue; O's phase 3 lies
    inside its staging): the time from the end of its epilogue to its done mark, which holds the block's closing
    barrier and the release of its counters (vm/megakernel.cu), and before its first phase the barrier after its
    wait."""
    trace, kind, layer = ready_after_start(raw["trace"][-1]), raw["kind"], raw["layer"]
    ghz = clock_ghz(trace)
    out = {}
    for k in sorted(set(kind[layer >= 0].tolist())):
        ids = np.nonzero((kind == k) & (layer >= 0))[0]
        phases = trace[ids, 4:8] / ghz / 1e3
        body = phases[:, :3].sum(axis=1) if k in MATVEC_KINDS else phases.sum(axis=1)
        rest = (trace[ids, 2] - trace[ids, 1]) / 1e3 - body
        out[k] = {"median_us": round(float(np.median(rest)), 3), "p90_us": round(float(np.percentile(rest, 90)), 3)}
    return out


def balanced_end(starts: np.ndarray, rates: np.ndarray, total: float) -> float:
    """The earliest time E at which SMs that start streaming at `starts` (ns) and keep streaming at `rates` (bytes a
    ns) until E have streamed `total` bytes between them: sum_i rates_i * max(0, E - starts_i) = total (bisection)."""
    lo, hi = float(starts.min()), float(starts.max()) + total / max(float(rates.sum()), 1e-12)
    for _ in range(64):
        mid = (lo + hi) / 2
        if float((rates * np.clip(mid - starts, 0, None)).sum()) >= total:
            hi = mid
        else:
            lo = mid
    return hi


def balance_gain(raw: dict) -> dict:
    """Per matvec kind, the mean over its stages and the traced steps (us) of its latest dot end less the end a
    split of the stage's bytes at run time could reach: each task's SM streaming at the rate its own dot ran
    (its bytes over its dot, phase 1) from its input staged, the stage's bytes shared so that all end together
    (balanced_end). An upper bound on what tasks that claim a stage's rows as they go could save a stage: no claim
    costs anything, and the SMs keep their rates. Also the mean of the latest dot end less the median one."""
    trace, stage, kind, nbytes = ready_after_start(raw["trace"]), raw["stage"], raw["kind"], raw["bytes"]
    streamed = [(str(kind[ids[0]]), ids) for ids in (np.nonzero(stage == st)[0] for st in sorted(set(stage.tolist())))
                if str(kind[ids[0]]) in MATVEC_KINDS and nbytes[ids].sum() > 0]
    gains: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in range(trace.shape[0]):
        t = trace[s]
        ghz = clock_ghz(t)
        for k, ids in streamed:
            staged = t[ids, 1] + t[ids, 4] / ghz
            dot_ns = np.maximum(t[ids, 5] / ghz, 1.0)
            ends = staged + dot_ns
            e = balanced_end(staged, nbytes[ids] / dot_ns, float(nbytes[ids].sum()))
            gains[k].append(((ends.max() - e) / 1e3, (ends.max() - np.median(ends)) / 1e3))
    return {k: {"stages": len(v), "saved_us": round(float(np.mean([g for g, _ in v])), 3),
                "last_over_median_us": round(float(np.mean([m for _, m in v])), 3)} for k, v in gains.items()}


def layer_windows(raw: dict, layer: int, bandwidth_gbs: float | None = None) -> list[dict]:
    """Per stage of decoder layer `layer` in the last traced step (program order), its windows in us from the
    previous layer's last task done (the step's first task start for layer 0). With a read bandwidth (GB/s; the
    raw file's own when None and it holds one), each stage also gets `span_us`, from the stage before's last
    task done (or the layer's start) to its own, and `above_bytes_us`, that span less its bytes at the bandwidth:
    the stages' shares of the layer's time above its bytes. Raises ValueError when the trace holds no such layer."""
    trace, stage, layers, kind, nbytes = (ready_after_start(raw["trace"][-1]), raw["stage"], raw["layer"], raw["kind"],
                                          raw["bytes"])
    if not np.any(layers == layer):
        raise ValueError(f"layer {layer} is not in the trace (layers {layers.min()}..{layers.max()})")
    before = np.nonzero(layers == layer - 1)[0]
    origin = trace[before, 2].max() if len(before) else trace[:, 0].min()
    ghz = clock_ghz(trace)
    if bandwidth_gbs is None and "read_bandwidth_gbs" in raw:
        bandwidth_gbs = float(raw["read_bandwidth_gbs"])
    rows, prev_done = [], 0.0
    for s in sorted(set(stage[layers == layer].tolist())):
        ids = np.nonzero(stage == s)[0]
        t0, t1, t2 = ((trace[ids, k] - origin) / 1e3 for k in (0, 1, 2))
        phases = trace[ids, 4:8] / ghz / 1e3
        staged = t1 + phases[:, 0]
        dot = staged + phases[:, 1]
        last = int(np.argmax(t2))

        def span(x):
            return [round(float(x.min()), 2), round(float(x.max()), 2)]

        rows.append({"stage": int(s), "kind": str(kind[ids[0]]), "tasks": len(ids), "mb": float(nbytes[ids].sum() / 1e6),
                     "start": span(t0), "ready": span(t1), "staged": span(staged), "dot_done": span(dot),
                     "done": span(t2), "last_phases_us": [round(float(x), 2) for x in phases[last]]})
        if bandwidth_gbs:
            rows[-1]["span_us"] = round(float(t2.max()) - prev_done, 2)
            rows[-1]["above_bytes_us"] = round(rows[-1]["span_us"] - rows[-1]["mb"] * 1e3 / bandwidth_gbs, 2)
        prev_done = float(t2.max())
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--layer", type=int, default=None, help="the layer whose windows to print (default: the middle)")
    ap.add_argument("--bandwidth", type=float, default=None, metavar="GBS",
                    help="read bandwidth for each stage's time above its bytes (default: the one the file holds)")
    ap.add_argument("--json")
    args = ap.parse_args()
    with np.load(args.raw) as f:
        missing = sorted({"trace", "stage", "layer", "kind", "bytes"} - set(f.files))
        if missing:
            ap.error(f"{args.raw} holds no {', '.join(missing)}: not a file of bench/trace.py --raw")
        raw = {k: f[k] for k in f.files}
    layer = args.layer if args.layer is not None else int(raw["layer"].max()) // 2
    try:
        windows = layer_windows(raw, layer, args.bandwidth)
    except ValueError as e:
        ap.error(f"--layer: {e}")
    print(f"layer {layer}, last step, us from the previous layer's last task done (min..max over the stage's tasks)")
    print(f"{'kind':<12}{'tasks':>6}{'MB':>7}{'ready':>15}{'staged':>15}{'dot done':>15}{'done':>15}{'above':>7}"
          "  last task's phases")
    for w in windows:
        cols = "".join(f"{w[k][0]:>7.2f}..{w[k][1]:<6.2f}" for k in ("ready", "staged", "dot_done", "done"))
        above = f"{w['above_bytes_us']:>7.2f}" if "above_bytes_us" in w else f"{'-':>7}"
        print(f"{w['kind']:<12}{w['tasks']:>6}{w['mb']:>7.1f}{cols}{above}  {w['last_phases_us']}")
    if windows and "above_bytes_us" in windows[0]:
        print(f"the layer: {windows[-1]['done'][1]:.2f} us, {sum(w['above_bytes_us'] for w in windows):.2f} above its bytes")
    closing = closing_times(raw)
    print("a task's execution less its phases (its closing barrier and counter release), median / p90 us:",
          "  ".join(f"{k} {v['median_us']:.2f}/{v['p90_us']:.2f}" for k, v in closing.items()))
    balance = balance_gain(raw)
    print("a stage's latest dot end less the end its bytes split at run time by each SM's own rate could reach "
          "(an upper bound), mean us:", "  ".join(f"{k} {v['saved_us']:.2f}" for k, v in balance.items()))
    result = sm_speed(raw)
    print(f"{result['steps']} steps, {result['sms']} SMs, {result['blocks']} blocks; a block on the SM it had in "
          f"step 0: {100 * result['same_sm_every_step']:.0f}% of steps")
    print(f"{'kind':<16}{'tasks':>6}{'exec_us':>9}{'max/mean':>9}{'split-half r':>13}{'steps r':>8}{'cv':>6}{'last slow':>10}"
          f"{'late start':>11}{'long exec':>10}")
    for k, v in result["kinds"].items():
        print(f"{k:<16}{v['tasks_a_step']:>6}{v['exec_mean_us']:>9.2f}{v['tail_max_over_mean']:>9.2f}"
              f"{v['sm_rate_split_half_r']:>13.2f}{v['sm_rate_across_steps_r']:>8.2f}{v['sm_rate_spread']:>6.2f}{v['last_on_slowest_tenth']:>10.2f}"
              f"{v['last_task_late_start_us']:>11.2f}{v['last_task_long_exec_us']:>10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"layer": layer, "windows": windows, "closing": closing, "balance": balance, "sm_speed": result}, f, indent=1)


if __name__ == "__main__":
    main()
