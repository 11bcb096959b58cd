"""A prior over knob moves, learned from corpus.jsonl: which `path=value` settings have paid off before.

Score of a knob value = the mean relative improvement of the kept configs it was part of (its `change`
moves when the loop recorded them, else its non-default knob values). The loop samples neighbours in
proportion to 1 + GAIN * score (floored, so nothing is ever ruled out), and with probability `epsilon`
uniformly, so a prior learned on another model cannot lock the search into its habits.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from amk.schedule.config import ScheduleConfig
from amk.schedule.space import Move, diff

from .corpus import CorpusEntry

GAIN = 20.0  # a knob value that averaged a 5% gain is drawn twice as often as an unknown one
MIN_WEIGHT = 0.2  # a value that hurt is drawn less, never never
DEFAULT_EPSILON = 0.2


@dataclass
class Prior:
    scores: dict[str, float] = field(default_factory=dict)  # "path=value" -> mean relative improvement
    counts: dict[str, int] = field(default_factory=dict)
    epsilon: float = DEFAULT_EPSILON

    @classmethod
    def from_corpus(cls, entries: Sequence[CorpusEntry], gpu: str | None = None,
                    epsilon: float = DEFAULT_EPSILON) -> Prior:
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for e in entries:
            if gpu is not None and e.gpu != gpu:
                continue
            gain = e.improvement
            if not isinstance(gain, (int, float)) or gain != gain:
                continue  # a baseline keep has no parent to improve on
            for key in _keys(e):
                sums[key] += float(gain)
                counts[key] += 1
        return cls({k: sums[k] / counts[k] for k in sums}, dict(counts), epsilon)

    def weight(self, move: Move) -> float:
        score = self.scores.get(move.description)
        return 1.0 if score is None else max(MIN_WEIGHT, 1.0 + GAIN * score)

    def choose(self, moves: Sequence[Move], rng: random.Random) -> Move:
        if not moves:
            raise ValueError("no moves to choose from")
        if rng.random() < self.epsilon:
            return rng.choice(list(moves))
        return rng.choices(list(moves), weights=[self.weight(m) for m in moves], k=1)[0]

    def top(self, n: int = 10) -> list[tuple[str, float, int]]:
        """The best-scoring knob values, for `amk report`."""
        ranked = sorted(self.scores.items(), key=lambda kv: -kv[1])[:n]
        return [(k, v, self.counts[k]) for k, v in ranked]


def _keys(e: CorpusEntry) -> list[str]:
    if e.change:
        return [c for c in e.change if "=" in c]
    try:
        return diff(ScheduleConfig(), ScheduleConfig.from_dict(e.config))
    except ValueError:
        return []  # a config from an older schema: it teaches nothing now
