"""The keep rule and the incumbent: a config replaces the incumbent only on a gain beyond the noise.

A candidate is kept when it is correct and faster than the incumbent by more than
max(MIN_GAIN of the incumbent, SIGMAS x the combined noise), where the incumbent's noise is the larger of its
timed repeats' spread and the spread of its own re-measurements (drift between runs is noise too); within
that margin a config with fewer non-default knobs wins. A measured gain must show twice: the loop times the
incumbent again (a slow-by-chance incumbent makes every candidate look fast) and then the apparent winner,
and keeps it only if the second measurement clears the bar set by the fresh incumbent (two independent false
gains beyond 2 sigma are rarer than one in a thousand), so a kept config is never one lucky run.
Predicted latencies are deterministic and need no second look.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from amk.flywheel.results import Status
from amk.schedule.config import ScheduleConfig
from amk.schedule.space import non_default_knobs

MIN_GAIN = 0.01  # a keep must beat the incumbent by more than 1% ...
SIGMAS = 2.0  # ... and by more than 2 sigma of the measured noise
RACE_MIN_GAP = 0.03  # a candidate's first timed repeat this far above the incumbent ends its timing ...
RACE_MARGINS = 2.0  # ... and at least this many keep margins above it
MEASURED = "measured-gpu"


@dataclass
class Incumbent:
    config: ScheduleConfig
    latency_us: float | None = None  # its latest measurement (drift: the latest is what candidates face)
    spread_us: float | None = None  # stdev of the latest measurement's timed repeats
    kind: str | None = None
    program_fingerprint: str | None = None
    trial: int | None = None  # the results.tsv trial it was kept in (or adopted from)
    samples: list[float] = field(default_factory=list)  # every latency measured for it in this loop

    @property
    def simplicity(self) -> int:
        return len(non_default_knobs(self.config))

    @property
    def noise_us(self) -> float:
        """One sigma of the incumbent's latency: its repeats' spread, or the spread of its re-measurements
        when that is larger."""
        between = statistics.pstdev(self.samples[-5:]) if len(self.samples) >= 2 else 0.0
        return max(self.spread_us or 0.0, between)

    def observe(self, latency_us: float | None, spread_us: float | None, kind: str | None) -> None:
        if latency_us is None:
            return
        self.latency_us, self.spread_us, self.kind = latency_us, spread_us, kind
        self.samples.append(latency_us)


def margin_us(inc: Incumbent, spread_us: float | None) -> float:
    sigma = SIGMAS * math.hypot(spread_us or 0.0, inc.noise_us)
    return max(MIN_GAIN * (inc.latency_us or 0.0), sigma)


def race_bound_us(inc: Incumbent) -> float | None:
    """The latency above which a candidate's first timed repeat ends its timing (evaluate's stop_above_us), or
    None before the incumbent has a measured latency. The bound sits at least RACE_MARGINS keep margins and
    RACE_MIN_GAP above the incumbent, so a config stopped there could neither win nor tie: timing the other
    four repeats of a clearly slower config (most of a search's candidates) only costs GPU time."""
    if inc.latency_us is None or inc.kind != MEASURED:
        return None
    return inc.latency_us + max(RACE_MARGINS * margin_us(inc, None), RACE_MIN_GAP * inc.latency_us)


def gain_text(incumbent_us: float, latency_us: float) -> str:
    """A keep's gain as the description gives it: the latency reduction, and the speed ratio where the latency
    is positive (`3.10% lower latency (1.032x)`)."""
    text = f"{100 * (incumbent_us - latency_us) / incumbent_us:.2f}% lower latency"
    return text + (f" ({incumbent_us / latency_us:.3f}x)" if latency_us > 0 else "")


def change_text(incumbent_us: float, latency_us: float) -> str:
    """How a latency compares with the incumbent's, signless: `0.79% lower latency`, `2.10% higher latency`,
    `the same latency` (to the 0.01% shown)."""
    if not incumbent_us > 0 or not math.isfinite(incumbent_us):
        return f"{latency_us:.2f} us against the incumbent's {incumbent_us:.2f} us"
    gain = 100 * (incumbent_us - latency_us) / incumbent_us
    if f"{abs(gain):.2f}" == "0.00":
        return "the same latency"
    return f"{abs(gain):.2f}% {'lower' if gain > 0 else 'higher'} latency"


def decide(inc: Incumbent, verdict: dict, config: ScheduleConfig) -> tuple[Status, str]:
    """Keep or not, and why (the description column)."""
    if not verdict.get("valid"):
        return Status.REJECTED, str(verdict.get("rejected_reason"))
    if not verdict.get("correct"):
        why = "; ".join(f"{f['case']}: {f['message']}" for f in verdict.get("failures", [])[:2])
        return Status.FAIL, why or "; ".join(n for n in verdict.get("notes", []) if "failure" in n.lower())[:300]
    lat = verdict.get("latency_us")
    if lat is None or not math.isfinite(lat):
        return Status.DISCARD, f"correct, but no latency ({lat}): " + " ".join(verdict.get("notes", [])[-1:])
    if inc.latency_us is None:
        return Status.KEEP, "first correct config"
    margin = margin_us(inc, verdict.get("latency_spread_us"))
    if lat < inc.latency_us - margin:
        return Status.KEEP, gain_text(inc.latency_us, lat)
    simpler = len(non_default_knobs(config)) < inc.simplicity
    change = change_text(inc.latency_us, lat)
    if abs(lat - inc.latency_us) <= margin and simpler:
        return Status.KEEP, f"tie within {margin:.2f} us ({change}), simpler"
    need = f"{100 * margin / inc.latency_us:.2f}%" if inc.latency_us > 0 else f"{margin:.2f} us"
    if simpler:  # fewer non-default knobs: kept within the margin either way
        return Status.DISCARD, f"{change} (a simpler config is kept within {need})"
    return Status.DISCARD, f"{change} (a keep needs more than {need} lower)"


def needs_confirmation(inc: Incumbent, verdict: dict) -> bool:
    """A measured (noisy) apparent gain over a timed incumbent is measured again before it is kept."""
    return inc.latency_us is not None and verdict.get("latency_kind") == MEASURED


def pooled(first: dict, second: dict) -> tuple[float | None, float | None]:
    """(mean latency, spread) of two measurements of one program: the spread is the larger of their own
    spreads and half their difference."""
    a, b = first.get("latency_us"), second.get("latency_us")
    if a is None or b is None:
        return (a if b is None else b), first.get("latency_spread_us") or second.get("latency_spread_us")
    spread = max(first.get("latency_spread_us") or 0.0, second.get("latency_spread_us") or 0.0, abs(a - b) / 2)
    return (a + b) / 2, spread
