"""Candidate rounds: what to generate around the best records, and which few to measure.

Each round (TVM Ansor's evolutionary search, measured through a cost model):
- every single-knob neighbour of the incumbent (so no one-knob gain stays untried for long),
- multi-knob mutations (2-3 knobs) of the best few records, values drawn with the prior's weights,
- uniform crossovers of two of the best records,
- random points of the whole space;
after a streak of trials without a keep, a restart round draws its parents at random instead (another
region). The loop drops invalid and already measured programs (the builder, the results file), ranks the
rest by the ranking model, and measures the top `measure_per_round`, each slot with probability `epsilon`
given instead to an exploration draw from the rest (weighted by the prior), so a wrong model cannot hide a
region for ever.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from amk.flywheel.prior import Prior
from amk.schedule.config import ScheduleConfig
from amk.schedule.space import Knob, crossover, diff, mutate, neighbours, random_config, settle_inert


class Source(str, Enum):
    """Where a measured config came from (the records' and progress lines' `source`)."""

    BASELINE = "baseline"  # the incumbent at the start (propose()'s, or the corpus's best on resume)
    GIVEN = "given"  # the config the caller seeded the loop with
    NEIGHBOUR = "neighbour"  # one knob of the incumbent moved
    MUTATE = "mutate"  # several knobs of a good record moved
    CROSSOVER = "crossover"  # two good records mixed
    RANDOM = "random"  # a random point of the space
    RESTART = "restart"  # generated around a random region after a streak without a keep
    TRANSFER = "transfer"  # another model's best kept config on this GPU and dtype
    REMEASURE = "remeasure"  # the incumbent timed again


@dataclass(frozen=True)
class Candidate:
    config: ScheduleConfig
    change: tuple[str, ...]  # "path=value" moves from the incumbent
    source: Source

    @property
    def description(self) -> str:
        moves = ", ".join(self.change) if self.change else "no change"
        return moves if self.source == Source.NEIGHBOUR else f"{self.source.value}: {moves}"


@dataclass(frozen=True)
class SearchSettings:
    """The search's knobs. Defaults: a round of ~64 generated candidates plus the incumbent's neighbours,
    of which 4 are measured; 20% exploration."""

    population: int = 64  # candidates generated per round besides the incumbent's neighbours
    measure_per_round: int = 4
    epsilon: float = 0.2
    parents: int = 5  # best records the mutations and crossovers start from
    remeasure_every: int = 10  # measured trials between re-measurements of the incumbent (GPU runs)
    neighbours: bool = True  # include every single-knob neighbour of the incumbent in each round


def generate(incumbent: ScheduleConfig, parents: list[ScheduleConfig], space: list[Knob], prior: Prior,
             rng: random.Random, settings: SearchSettings, restart: bool = False,
             transferred: list[ScheduleConfig] = ()) -> list[Candidate]:
    """One round's candidates, unique by schedule_id, the incumbent itself left out. `transferred`: other models'
    best configs on this GPU (the way Ansor seeds a search with states measured before), offered as they are to
    every round that is not a restart until measured; the ranking model decides whether they are worth it here."""
    out: dict[str, Candidate] = {}

    def add(cfg: ScheduleConfig, source: Source) -> None:
        cfg = settle_inert(cfg, incumbent, space)  # a knob the candidate makes inert is no move of it
        if cfg.schedule_id != incumbent.schedule_id and cfg.schedule_id not in out:
            out[cfg.schedule_id] = Candidate(cfg, tuple(diff(incumbent, cfg)), source)

    weight = prior.move_weight
    n = settings.population
    if restart:
        anchors = [random_config(space, rng, base=incumbent) for _ in range(max(2, settings.parents))]
        for a in anchors:
            add(a, Source.RESTART)
        for _ in range(n):
            a = rng.choice(anchors)
            if rng.random() < 0.5:
                m = mutate(a, space, rng, n_knobs=rng.choice((1, 2, 3)), weight=weight)
                if m:
                    add(m[0], Source.RESTART)
            else:
                c = crossover(a, incumbent, space, rng)
                if c:
                    add(c, Source.RESTART)
        return list(out.values())
    for cfg in transferred:
        add(cfg, Source.TRANSFER)
    if settings.neighbours:
        for m in neighbours(incumbent, space):
            add(m.config, Source.NEIGHBOUR)
    pool = parents or [incumbent]
    n_mut, n_cross = n // 2, n // 4
    for _ in range(n_mut):
        m = mutate(rng.choice(pool), space, rng, n_knobs=rng.choice((2, 2, 3)), weight=weight)
        if m:
            add(m[0], Source.MUTATE)
    for _ in range(n_cross if len(pool) > 1 else 0):
        a, b = rng.sample(pool, 2)
        c = crossover(a, b, space, rng)
        if c:
            add(c, Source.CROSSOVER)
    for _ in range(n - n_mut - n_cross):
        add(random_config(space, rng, base=incumbent), Source.RANDOM)
    return list(out.values())


def select(ranked: list[tuple[Candidate, float]], unranked: list[Candidate], k: int, epsilon: float,
           prior: Prior, rng: random.Random) -> list[Candidate]:
    """`k` candidates to measure: the best-ranked (lowest model latency first), each slot with probability
    `epsilon` an exploration draw instead (prior-weighted, from everything not picked, unpriced included)."""
    order = [c for c, _ in sorted(ranked, key=lambda cs: cs[1])] + list(unranked)
    picked: list[Candidate] = []
    ids: set[str] = set()
    for _ in range(min(k, len(order))):
        rest = [c for c in order if c.config.schedule_id not in ids]
        if len(rest) > 1 and rng.random() < epsilon:
            weights = [prior.config_weight(c.change) for c in rest[1:]]
            pick = rng.choices(rest[1:], weights=weights, k=1)[0]
        else:
            pick = rest[0]
        picked.append(pick)
        ids.add(pick.config.schedule_id)
    return picked
