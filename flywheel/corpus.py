"""corpus.jsonl: one JSON object per kept trial, shared by every loop that ever ran on this machine.

Each line: {"config", "verdict", "environment", "model", "gpu", "time"} plus what the prior learns from:
"change" (the knob moves that made it, e.g. ["matvec.qkv.k_splits=2"]) and "improvement" (relative gain
over the incumbent it replaced; null for a first, baseline keep). Appends are whole lines under a lock
(flywheel.appendlog), so concurrent loops share one corpus safely.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from .appendlog import append_lines, read_lines

log = logging.getLogger("amk.flywheel")


@dataclass(frozen=True)
class CorpusEntry:
    model: str
    gpu: str
    config: dict
    verdict: dict
    environment: dict
    time: str
    change: tuple[str, ...] = ()
    improvement: float | None = None

    @property
    def latency_us(self) -> float | None:
        v = self.verdict.get("latency_us")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    @property
    def kind(self) -> str | None:
        return self.verdict.get("latency_kind")

    def to_dict(self) -> dict:
        return {"model": self.model, "gpu": self.gpu, "time": self.time, "config": self.config,
                "verdict": self.verdict, "environment": self.environment, "change": list(self.change),
                "improvement": self.improvement}

    @classmethod
    def from_dict(cls, d: dict) -> CorpusEntry:
        return cls(model=str(d["model"]), gpu=str(d["gpu"]), config=dict(d["config"]), verdict=dict(d["verdict"]),
                   environment=dict(d.get("environment") or {}), time=str(d.get("time", "")),
                   change=tuple(d.get("change") or ()), improvement=d.get("improvement"))


def append_entry(path: str | Path, entry: CorpusEntry) -> None:
    line = json.dumps(entry.to_dict(), sort_keys=True, allow_nan=False, default=str) + "\n"
    append_lines(path, lambda _current: line.encode())


def make_entry(model: str, gpu: str, config: dict, verdict: dict, change=(), improvement=None) -> CorpusEntry:
    return CorpusEntry(model=model, gpu=gpu, config=config, verdict=verdict,
                       environment=dict(verdict.get("environment") or {}),
                       time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), change=tuple(change),
                       improvement=improvement)


def load_corpus(path: str | Path = "corpus.jsonl") -> list[CorpusEntry]:
    """Every parseable line; a malformed line is logged and skipped, never fatal (the corpus outlives code
    versions)."""
    out = []
    for i, line in enumerate(read_lines(path), 1):
        try:
            out.append(CorpusEntry.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("%s:%d: skipped a malformed corpus line (%s)", path, i, e)
    return out


def entries_for(entries: list[CorpusEntry], model: str, gpu: str) -> list[CorpusEntry]:
    return [e for e in entries if e.model == model and e.gpu == gpu]


def best_entry(entries: list[CorpusEntry]) -> CorpusEntry | None:
    """The fastest correct kept entry. Measured latencies outrank predicted ones: a prediction never beats a
    measurement."""
    timed = [e for e in entries if e.latency_us is not None and e.verdict.get("correct")]
    measured = [e for e in timed if e.kind == "measured-gpu"]
    pool = measured or timed
    return min(pool, key=lambda e: e.latency_us) if pool else None
