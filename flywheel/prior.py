"""A prior over knob moves, learned from the tuning records (corpus.jsonl): which `path=value` settings have
paid off before, on any model of this GPU.

Score of a knob value = the mean relative improvement over the incumbent of the trials it was part of, kept
or not (their `change` moves when the loop recorded them, else their non-default knob values; a trial with no
timed latency teaches nothing). The search draws mutation values and exploration picks in proportion to
1 + GAIN * score (floored, so nothing is ever ruled out), and with probability `epsilon` uniformly, so a prior
learned on another model cannot lock the search into its habits.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from amk.schedule.config import ScheduleConfig
from amk.schedule.space import Move, diff, move_key

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
        return self.key_weight(move.description)

    def key_weight(self, key: str) -> float:
        score = self.scores.get(key)
        return 1.0 if score is None else max(MIN_WEIGHT, 1.0 + GAIN * score)

    def move_weight(self, path: str, value) -> float:
        """Weight of setting knob `path` to `value` (JSON form), for mutations."""
        return self.key_weight(move_key(path, value))

    def config_weight(self, change) -> float:
        """Weight of a candidate made of several moves: the mean of theirs (1 for no move)."""
        keys = [c for c in change if "=" in c]
        return sum(self.key_weight(k) for k in keys) / len(keys) if keys else 1.0

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
