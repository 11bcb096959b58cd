"""The search's candidate rounds, as the loop runs them: generate around the incumbent and the best records, build
off the measuring path, take builds in as they finish, rank what waits, and pick the next few to measure.

Rounds is a part of the loop's run (amk/harness/loop.py), written apart to keep each file to one job: it reads
and writes the run's search state (incumbent, backlog, queue, builder, counters), and the run's `stop_asked()`
(true once a signal, `should_stop` or the minutes ask the loop to stop), which a round's builds answer.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from amk.flywheel.claims import snapshot
from amk.flywheel.corpus import best_of_other_models
from amk.flywheel.prior import Prior
from amk.flywheel.records import for_other_models, for_run, load_records
from amk.schedule.config import ScheduleConfig, get_path, with_value
from amk.schedule.errors import ConfigError
from amk.schedule.space import diff, settle_inert

from ..environment import Device
from .builder import Built, Pending
from .model import fit_model
from .policy import Candidate, generate, select

log = logging.getLogger("amk.harness")

BACKLOG_MAX = 256  # built candidates kept waiting for a measurement (each round re-ranks them all)


@dataclasses.dataclass
class PreparedRound:
    """A round generated and handed to the builder: its candidates, in the order submitted, and their builds."""

    restart: bool
    candidates: list[Candidate]
    pending: Pending
    waited: bool = False  # the loop blocked on its builds (the GPU idled)


class Rounds:
    """The rounds of a loop's run (see the module docstring)."""

    def _next_pick(self) -> int:
        """The queue's first pick whose kernel is not compiling. When every pick's kernel is compiling, the
        best-ranked candidate waiting in the backlog whose kernel is built joins the queue's front (the GPU
        measures it while NVRTC finishes the picks' kernels, instead of idling); else the first pick."""
        ready = next((i for i, (c, _) in enumerate(self.queue)
                      if not self.builder.kernel_pending(c.config.schedule_id)), None)
        if ready is not None:
            return ready
        for sid in self.backlog_order:
            if sid in self.backlog and self.builder.kernel_ready(self.backlog[sid][1].kernel_id):
                self.queue.insert(0, self.backlog.pop(sid))
                self.promoted += 1
                return 0
        return 0

    def _parents(self, run_records) -> list[ScheduleConfig]:
        timed = sorted((r for r in run_records if r.correct and r.latency_us is not None and r.kind == self.kind),
                       key=lambda r: r.latency_us)
        out, seen = [self.inc.config], {self.inc.config.schedule_id}
        for r in timed:
            try:
                cfg = ScheduleConfig.from_dict(r.config)
            except ConfigError:
                continue
            if cfg.schedule_id not in seen:
                out.append(cfg)
                seen.add(cfg.schedule_id)
            if len(out) >= self.settings.parents:
                break
        return out

    def _transferred(self, records) -> list[ScheduleConfig]:
        """Each other model's best kept config on this GPU and dtype, timed as this run times."""
        return [cfg for _, cfg in best_of_other_models(records, self.name, self.target.name, self.dtype, self.kind)]

    def _prepare_round(self, records=None) -> PreparedRound:
        """Generate a round's candidates around the incumbent and the best records, and start building them.
        `records`: the corpus as just read, with self.prior made from it (else both are read here)."""
        if records is None:
            records = load_records(self.corpus)
            self.prior = Prior.from_corpus(records, gpu=self.target.name)
        run_records = for_run(records, self.name, self.target.name, self.dtype)
        restart, self.restart_pending = self.restart_pending, False
        cands = generate(self.inc.config, self._parents(run_records), self.space, self.prior, self.rng,
                         self.settings, restart=restart, transferred=self._transferred(records))
        snap = snapshot(self.results, self.name, self.target.name, self.dtype, self.program_max_seq)
        cands = [c for c in cands if c.config.schedule_id not in snap.schedule_ids]
        pending = self.builder.submit([self._job(c.config) for c in cands])
        return PreparedRound(restart, cands, pending)

    def _round(self) -> bool:
        """Fill the queue: take in the round's builds finished so far (waiting for more only while fewer than
        measure_per_round candidates are built and unmeasured), rank every built and unmeasured candidate, queue
        the top few, and once the round is all in, start building the next around the incumbent of now. A keep
        changes the incumbent but drops nothing built: those configs are still candidates, ranked with the rest;
        a restart drops them (another region). False, with nothing ranked or queued, when a stop was asked while
        the round was taken in: its builds done stay memoised and taken in, the rest stay for a later call."""
        if self.restart_pending:
            self.backlog.clear()
            if self.prepared is not None and not self.prepared.restart:
                self.prepared.pending.cancel()
                self.prepared = None
                self.prepared_dropped += 1
        if self.builder.pool is None and self.prepared is None:
            # one round at a time, built when asked for (the CPU path stays deterministic); a round a stop left
            # half built keeps what it took in
            self.backlog.clear()
        if self.prepared is None:
            self.prepared = self._prepare_round()
        t0 = time.monotonic()
        taken = self._take_in(self.prepared, self.settings.measure_per_round)
        self.waited_rounds_s += time.monotonic() - t0
        if not taken:
            return False
        if self.prepared.pending.done():
            self.prepared_used += int(not self.prepared.waited)
            self.prepared = None
        records = load_records(self.corpus)  # the ranking sees every record up to now, the last round's too
        self.prior = Prior.from_corpus(records, gpu=self.target.name)
        self.ranking = fit_model(for_run(records, self.name, self.target.name, self.dtype),
                                 [r for r in records if r.gpu == self.target.name], self.space, self.kind,
                                 others=for_other_models(records, self.name, self.target.name, self.dtype))
        snap = snapshot(self.results, self.name, self.target.name)
        ranked, unranked = [], []
        for sid, (c, b) in list(self.backlog.items()):
            if b.program_fingerprint in self.mine or snap.taken(b.program_fingerprint, sid, self.owner) is not None:
                del self.backlog[sid]  # measured since it was built (here, or by another loop)
                self.duplicates += 1
                continue
            c = dataclasses.replace(c, change=tuple(diff(self.inc.config, c.config)))  # moves from today's incumbent
            self.backlog[sid] = (c, b)
            score = self.ranking.score(c.config, b.features, b.predicted_us)
            (ranked.append((c, score)) if score is not None else unranked.append(c))
        picked = select(ranked, unranked, self.settings.measure_per_round, self.settings.epsilon, self.prior,
                        self.rng)
        self.queue = [self.backlog.pop(c.config.schedule_id) for c in picked]
        self.backlog_order = [c.config.schedule_id for c, _ in sorted(ranked, key=lambda cs: cs[1])]
        self.rounds += 1
        if self.dev == Device.CUDA:
            # the picks' kernels, then those of the best-ranked left waiting (the likely next picks): NVRTC
            # runs while the GPU measures, not between trials
            ahead = [self.backlog[sid] for sid in self.backlog_order if sid in self.backlog]
            for c, b in self.queue + ahead[: self.settings.measure_per_round]:
                self.builder.precompile(self._job(c.config), b.kernel_id)
        if self.builder.pool is not None and self.prepared is None:
            # the next round builds in the build processes while the GPU measures (kernels have their own)
            self.prepared = self._prepare_round(records)
        log.info("round %d: %d built candidates waiting, %d invalid, %d duplicates so far; measuring %d (model "
                 "fitted on %d records)", self.rounds, len(self.backlog), self.invalid, self.duplicates,
                 len(self.queue), self.ranking.rows)
        return True

    def _take_in(self, prepared: PreparedRound, enough: int) -> bool:
        """Move a prepared round's finished builds into the backlog, and wait for more of them only while fewer
        than `enough` candidates wait there: the GPU measures the first built, not the last. False when a stop
        was asked before the round was all in (in-process builds stop between two builds, not after the round's
        last: Ctrl-C answered in one build's time, not minutes)."""
        while True:
            self._admit(prepared, prepared.pending.ready(self.stop_asked))
            if prepared.pending.done():
                return True
            if self.stop_asked():
                return False
            if len(self.backlog) >= enough:
                return True
            prepared.waited = True
            prepared.pending.wait_any()

    def _settle_derived_inert(self, cand: Candidate, built: Built) -> tuple[Candidate, Built]:
        """The candidate with each move of a knob that the lowering's derived values make inert set back to the
        incumbent's value (space.settle_inert), and each move between two values its program takes alike (a value
        the lowering derives for null, or two values above a cap: inert.value_caps), and a move past a cap set to the
        cap itself. The program is the same, so its build stands; a keep then carries no knob that does nothing,
        and its description claims no such move."""
        inc = self.inc.config
        cfg = settle_inert(cand.config, inc, self.space, self.target, derived=built.derived)
        for path in built.as_derived:  # a value the program takes as the derived one: null where the incumbent is
            if get_path(inc, path) is None and get_path(cfg, path) is not None:
                cfg = with_value(cfg, path, None)
        for cap in built.caps:  # two values from a bound up (rows_per_task 256 and 512 on 120 rows) lower alike
            now = get_path(cfg, cap.path)
            settled = cap.settle(get_path(inc, cap.path), now)
            if settled != now:
                cfg = with_value(cfg, cap.path, settled)
        if cfg.schedule_id == cand.config.schedule_id:
            return cand, built
        return (Candidate(cfg, tuple(diff(inc, cfg)), cand.source),
                dataclasses.replace(built, config=cfg.to_dict(), schedule_id=cfg.schedule_id))

    def _admit(self, prepared: PreparedRound, builds: list[tuple[int, Built]]) -> None:
        """Valid programs not measured, claimed or already waiting join the backlog."""
        if not builds:
            return
        snap = snapshot(self.results, self.name, self.target.name)
        waiting = {b.program_fingerprint for _, b in self.backlog.values()}
        for i, b in builds:
            if not b.valid:
                self.invalid += 1
                continue
            fp = b.program_fingerprint
            if fp in self.mine or fp in waiting or snap.taken(fp, b.schedule_id, self.owner) is not None:
                self.duplicates += 1  # another config of a program measured, claimed or already waiting
                continue
            waiting.add(fp)
            c, b = self._settle_derived_inert(prepared.candidates[i], b)
            self.backlog[c.config.schedule_id] = (c, b)
        if len(self.backlog) > BACKLOG_MAX:  # the oldest go first: rounds are built around newer incumbents
            for sid in list(self.backlog)[: len(self.backlog) - BACKLOG_MAX]:
                del self.backlog[sid]
