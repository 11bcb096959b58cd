"""A loop trial, as the loop's run measures it: claim the program in the results file, evaluate it (timed against
the incumbent's race bound), decide keep or discard (a gain confirmed by a second measurement), write its results
row and tuning record, and tell the `progress` callable; and the incumbent's re-measurement (the drift check).

Trials is a part of the loop's run (amk/harness/loop.py), written apart to keep each file to one job, as Rounds
and Resume are: it reads and writes the run's state (incumbent, counters, queue and backlog, builder, files).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

from amk.cache import CacheStorageError
from amk.flywheel.claims import Claim, Taken, claim, claims_path, release, start_run
from amk.flywheel.records import MODEL_FINGERPRINT, append_record, record_from_verdict
from amk.flywheel.results import ResultRow, Status, append_result
from amk.schedule.config import ScheduleConfig
from amk.schedule.errors import EagerReferenceError, EnvironmentProblem

from ..verdict import LatencyKind
from .builder import Built
from .errors import ResultsInUse
from .keep import Incumbent, decide, gain_text, needs_confirmation, pooled, race_bound_us
from .policy import Candidate, Source

log = logging.getLogger("amk.harness")


class Trials:
    """The loop run's trials: _trial (claim, measure, decide, write), _remeasure, and the files they write."""

    def _evaluate(self, cfg: ScheduleConfig, stop_above_us: float | None = None) -> dict:
        t0 = time.monotonic()
        self.builder.wait_precompiled(cfg.schedule_id)
        t1 = time.monotonic()
        self.waited_kernels_s += t1 - t0
        self.measurements += 1
        try:
            extra = {} if stop_above_us is None else {"stop_above_us": stop_above_us}
            return self.evaluate_fn(self.model, self.target, cfg, device=self.dev.value, cases=self.cases,
                                    seed=self.seed, dtype=self.dtype, corpus=str(self.corpus), max_seq=self.max_seq,
                                    **extra)
        except (CacheStorageError, EnvironmentProblem, EagerReferenceError):
            raise  # the environment or the model, not this config: every later trial would fail the same way
        except Exception as e:  # the loop outlives one bad trial; the row says crash and why
            log.exception("evaluate crashed")
            return {"crash": f"{type(e).__name__}: {e}"}
        finally:
            self.measuring_s += time.monotonic() - t1

    def _trial(self, cand: Candidate, built: Built, description: str) -> bool:
        """Claim, measure, decide, write. False when the program was taken (measured or claimed elsewhere)."""
        self._check_checkpoint_unchanged()  # before the claim: a trial that cannot run leaves no gap
        self._take_file()
        cfg = cand.config
        c = claim(self.results, self.name, self.target.name, built.program_fingerprint, built.schedule_id,
                  owner=self.owner)
        if isinstance(c, Taken):
            self.duplicates += 1
            log.info("%s: program %s already %s (trial %s), not measured", cfg.schedule_id,
                     built.program_fingerprint, c.by, c.trial)
            return False
        self.mine.add(built.program_fingerprint)
        inc = self.inc
        with self._released_on_error(c):
            verdict = self._evaluate(cfg, race_bound_us(inc))
        if verdict.get("cases_passed"):
            self.builder.mark_kernel_ready(built.kernel_id)  # the VM was built (into the kernel cache) and ran
        if verdict.get("latency_kind") and not self.timed:
            self.kind = verdict["latency_kind"]  # an injected evaluator may say what it produces
        self.timed = self.timed or verdict.get("latency_us") is not None
        status, why = (Status.CRASH, verdict["crash"]) if "crash" in verdict else decide(inc, verdict, cfg)
        samples = [verdict.get("latency_us")]
        if status == Status.KEEP and needs_confirmation(inc, verdict):
            status, why, verdict, samples = self._confirm(cfg, verdict)
        lat = verdict.get("latency_us")
        comparable = lat is not None and inc.latency_us is not None and verdict.get("latency_kind") == inc.kind
        improvement = (inc.latency_us - lat) / inc.latency_us if comparable else None
        self._write(c, cand, built, verdict, status, f"{description}: {why}", improvement)
        self.trials += 1
        self.since_remeasure += 1
        self.statuses[status.value] += 1
        if status == Status.KEEP:
            self.inc = Incumbent(cfg, program_fingerprint=built.program_fingerprint, trial=c.trial)
            for s in samples:
                self.inc.observe(s, verdict.get("latency_spread_us"), verdict.get("latency_kind"))
            self.inc.latency_us = lat  # the pooled figure when a gain was confirmed
            self.reverts = self.since_remeasure = 0
            for pick in self.queue:  # the next picks are ranked around the new incumbent, with the backlog
                self.backlog[pick[0].config.schedule_id] = pick
            returned = len(self.queue)
            self.queue = []
        else:
            returned = 0
            self.reverts += 1
        self._progress(c.trial, status, built, verdict, description + ": " + why, cand.source, outcome=why)
        if returned:  # said, since the round's line named more picks than it then measures
            log.info("the round's %d other picks go back to the backlog, to be ranked around the new incumbent",
                     returned)
        return True

    def _confirm(self, cfg, first: dict):
        """An apparent winner: time the incumbent again (it may have been measured slow by chance, or the GPU
        drifted), then the candidate again; keep only if the second run clears the bar set by the fresh
        incumbent."""
        self.confirmations += 1
        self._remeasure()
        second = self._evaluate(cfg)
        l1 = first["latency_us"]
        if "crash" in second or not second.get("correct"):
            reason = second.get("crash") or decide(self.inc, second, cfg)[1]
            return Status.FAIL, f"{l1:.2f} us, then failed on the confirming run: {reason}", second, []
        status2, why2 = decide(self.inc, second, cfg)
        lat, spread = pooled(first, second)
        l2 = second.get("latency_us")
        merged = {**first, "latency_us": lat, "latency_spread_us": spread,
                  "notes": list(first.get("notes", [])) + [f"measured twice: {l1:.2f} and {l2:.2f} us (mean kept)"]}
        if status2 == Status.KEEP:
            # the row holds the pooled figure against the incumbent timed again: the description says the same
            status_p, why_p = decide(self.inc, merged, cfg)
            why = why_p if status_p == Status.KEEP else gain_text(self.inc.latency_us, lat)
            return Status.KEEP, f"{why}; confirmed ({l1:.2f}, {l2:.2f} us)", merged, [l1, l2]
        return Status.DISCARD, f"not confirmed: {l1:.2f} us, then {l2:.2f} us ({why2})", merged, [l1, l2]

    def _remeasure_due(self) -> bool:
        return (self.kind == LatencyKind.MEASURED_GPU.value and self.inc.latency_us is not None
                and self.since_remeasure >= self.settings.remeasure_every)

    def _remeasure(self) -> Status:
        """Time the incumbent again (drift check): a `remeasure` row and record (`fail` when it no longer passes);
        its latency becomes the incumbent's, and the spread between its measurements joins the keep rule's noise.
        Returns the row's status."""
        self._check_checkpoint_unchanged()
        self.since_remeasure = 0
        cfg, fp = self.inc.config, self.inc.program_fingerprint
        c = claim(self.results, self.name, self.target.name, fp, cfg.schedule_id, check=False, owner=self.owner)
        before = self.inc.latency_us
        with self._released_on_error(c):
            verdict = self._evaluate(cfg)
        self.remeasures += 1
        lat = verdict.get("latency_us")
        if "crash" in verdict or not verdict.get("correct") or lat is None:
            why = verdict.get("crash") or decide(self.inc, verdict, cfg)[1]
            status, text = Status.FAIL, f"incumbent re-measured: failed ({why})"
        else:
            status = Status.REMEASURE
            text = f"incumbent re-measured: {lat:.2f} us" + (f" (was {before:.2f} us)" if before else "")
            self.inc.observe(lat, verdict.get("latency_spread_us"), verdict.get("latency_kind"))
        built = Built(cfg.to_dict(), cfg.schedule_id, True, program_fingerprint=fp)
        self._write(c, Candidate(cfg, (), Source.REMEASURE), built, verdict, status, text, None)
        self.statuses[status.value] += 1
        self._progress(c.trial, status, built, verdict, text, Source.REMEASURE)
        return status

    def _take_file(self) -> None:
        """A run started without resume takes its results file before its first claim (flywheel.claims.start_run):
        not earlier, so that a loop stopped before any trial (weights that fail their checks) creates no file.
        ResultsInUse where another live loop took it first, or its rows landed meanwhile."""
        if self.fresh and not self.leased:
            holder = start_run(self.results, self.owner)
            if holder is not None:
                self.fresh = False  # the file is the other loop's
                raise ResultsInUse(self.results, holder)
            self.leased = True

    @contextlib.contextmanager
    def _released_on_error(self, c: Claim):
        """Around a trial's measurement: an error that stops the loop there (a cache that cannot be written,
        memory that ran out, a second Ctrl-C) withdraws the trial's claim, since no row will carry its number;
        the next trial takes it, and no gap is left where no trial ran."""
        try:
            yield
        except BaseException:
            try:
                release(self.results, c)
            except OSError as e:  # the error that stopped the trial is the one to report
                log.warning("%s: trial %d's claim could not be withdrawn (%s): the next trial skips its number",
                            claims_path(self.results), c.trial, e)
            raise

    def _write(self, c: Claim, cand: Candidate, built: Built, verdict: dict, status: Status, description: str,
               improvement: float | None) -> None:
        lat = verdict.get("latency_us")
        speedup = self.inc.latency_us / lat if (lat and self.inc.latency_us) else None
        crashed = "crash" in verdict
        append_result(self.results, ResultRow(
            model=self.name, gpu=self.target.name, schedule_id=cand.config.schedule_id, status=status,
            correct=None if crashed else verdict.get("correct"), latency_us=lat, kind=verdict.get("latency_kind"),
            pct_of_floor=verdict.get("pct_of_floor"), speedup=speedup, description=description,
            program_fingerprint=built.program_fingerprint,
            predicted_us=verdict.get("predicted_latency_us") or built.predicted_us,
            spread_us=verdict.get("latency_spread_us"), dtype=self.dtype, max_seq=self.program_max_seq,
            trial=c.trial))
        rec = record_from_verdict(self.name, self.target.name, cand.config.to_dict(), verdict, status=status.value,
                                  kept=status == Status.KEEP, change=cand.change, improvement=improvement,
                                  source=cand.source.value, trial=c.trial)
        if self.weights_now is not None:
            rec = dataclasses.replace(rec, environment={**rec.environment, MODEL_FINGERPRINT: self.weights_now})
        rec = dataclasses.replace(
            rec, dtype=rec.dtype or self.dtype, device=rec.device or self.dev.value,
            schedule_id=cand.config.schedule_id, program_fingerprint=built.program_fingerprint,
            features=rec.features or built.features,
            predicted_latency_us=rec.predicted_latency_us or built.predicted_us)
        append_record(self.corpus, rec)

    def _progress(self, trial: int, status: Status, built: Built, verdict: dict, description: str,
                  source: Source, outcome: str = "") -> None:
        """`description`: the trial's change and outcome in words; `outcome`: its closing part (what the
        measurement decided), which a console line keeps whole when it shortens the change."""
        if self.progress is None:
            return
        self.progress({"trial": trial, "status": status.value, "schedule_id": built.schedule_id,
                       "program_fingerprint": built.program_fingerprint, "latency_us": verdict.get("latency_us"),
                       "kind": verdict.get("latency_kind"), "predicted_us": built.predicted_us,
                       "best_latency_us": self.inc.latency_us, "description": description, "outcome": outcome,
                       "source": source.value,
                       "elapsed_s": round(time.monotonic() - self.t0, 1)})
