"""The summary a loop returns (HARNESS.md section 7): the incumbent, what the run measured and why it stopped, the
corpus's best for the run's model, dtype and context, the search's counters, and the notes a reader of its
latencies needs.

RunSummary is a part of the loop's run (amk/harness/loop.py), written apart to keep each file to one job.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from amk.flywheel.records import at_context, for_run, load_records
from amk.flywheel.results import Status
from amk.schedule.config import ScheduleConfig

from ..propose import best_readable

if TYPE_CHECKING:
    from ..loop import StopReason


class RunSummary:
    """The loop run's summary and notes."""

    def _summary(self, stop: StopReason | None) -> dict:
        best = None
        if self.corpus.exists():
            # this run's dtype and context only: a record of another dtype's program, or one timed at a shorter
            # context, is no rival of this run's incumbent
            # one whose config this version reads, as propose's incumbent is
            found = best_readable(at_context(for_run(load_records(self.corpus), self.name, self.target.name,
                                                     self.dtype), self.context))
            best = None if found is None else found[0]
        seconds = time.monotonic() - self.t0
        inc = self.inc
        return {"incumbent": {"schedule_id": inc.config.schedule_id, "program_fingerprint": inc.program_fingerprint,
                              "latency_us": inc.latency_us, "latency_spread_us": inc.spread_us,
                              "latency_kind": inc.kind, "trial": inc.trial, "config": inc.config.to_dict(),
                              "correct": inc.latency_us is not None},
                "model": self.name, "gpu": self.target.name, "device": self.dev.value, "dtype": self.dtype,
                "max_seq": self.program_max_seq, "context": self.context,
                "trials": self.trials, "statuses": dict(self.statuses), "kept": self.statuses.get(Status.KEEP.value, 0),
                "stopped": stop.value if stop else None,
                "best": None if best is None else {"schedule_id": best.schedule_id or
                                                   ScheduleConfig.from_dict(best.config).schedule_id,
                                                   "latency_us": best.latency_us, "latency_kind": best.kind,
                                                   "trial": best.trial, "config": best.config},
                "search": {"rounds": self.rounds, "rounds_built_ahead": self.prepared_used,
                           "rounds_dropped": self.prepared_dropped, "backlog": len(self.backlog),
                           "measured_while_kernels_compiled": self.promoted,
                           "seconds_measuring": round(self.measuring_s, 1),
                           "seconds_waiting_for_rounds": round(self.waited_rounds_s, 1),
                           "seconds_waiting_for_kernels": round(self.waited_kernels_s, 1),
                           "restarts": self.restarts, "remeasures": self.remeasures,
                           "confirmations": self.confirmations, "duplicates": self.duplicates,
                           "invalid": self.invalid, "measurements": self.measurements,
                           "builder_processes": self.builder.processes,
                           "build_seconds": round(self.builder.build_seconds, 2),
                           "ranking_model": self.ranking.to_dict()},
                "trials_per_minute": round(60 * self.trials / seconds, 2) if seconds > 0 else None,
                "seed": self.seed, "results": str(self.results), "corpus": str(self.corpus),
                "seconds": round(seconds, 2), "notes": self._notes()}

    def _notes(self) -> list[str]:
        """What a reader of the latencies should know that no row says: a KV context shorter than evaluate's."""
        from amk.schedule.cost import bench_context

        from ..gates import short_context_note

        given = [f"the given config's {n}" for n in self.given_inert]
        given += [self.resume_note] if self.resume_note else []
        if not self.trials and self.inc.latency_us is None:  # stopped before its first trial ended: nothing ran
            return ["no trial ran: the incumbent is the start config, neither verified nor timed, and no results row "
                    "was written for it; it is no result", *given]
        if not self.trials:  # stopped before its first trial, the start's row of the resumed file adopted
            return [f"no trial ran: the incumbent is trial {self.inc.trial}'s row of the results it resumed", *given]
        seq = self.program_max_seq
        note = short_context_note(bench_context(seq), seq, what="every latency is")
        none_correct = [] if self.inc.latency_us is not None else [
            "no config passed verify and was timed: the incumbent is the start config, which did not (results.tsv "
            "says why); it is no result"]
        return none_correct + ([note] if note else []) + given
