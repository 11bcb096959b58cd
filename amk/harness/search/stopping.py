"""When a loop stops: the reasons its summary names, and the rules the run checks between trials (a signal or
`should_stop`, the budget, the minutes, and `max_reverts` trials in a row without a keep, which move a bounded run to
another region instead of stopping it). A run with nothing new left to measure stops on its own (loop.py).

Stopping is a part of the loop's run (amk/harness/loop.py), written apart to keep each file to one job: it reads the
run's limits and counters, and resets the reverts for a restart.
"""

from __future__ import annotations

import logging
import time
from enum import Enum

from .signals import StopFlag

log = logging.getLogger("amk.harness")


class StopReason(str, Enum):
    BUDGET = "budget"
    MINUTES = "minutes"
    MAX_REVERTS = "max_reverts"
    EXHAUSTED = "exhausted"  # no candidate left that is valid and not yet measured
    INTERRUPTED = "interrupted"  # SIGINT (or the Ray driver's stop): the trial in flight finished


class Stopping:
    """The stop rules of a loop's run (see the module docstring)."""

    def _stop_asked(self, flag: StopFlag) -> bool:
        """A stop that may come while a round is built: a signal, `should_stop`, or the minutes spent (the budget
        and max_reverts move only at a trial). _stop_reason then says which."""
        return (flag.set or (self.should_stop is not None and bool(self.should_stop()))
                or (self.minutes is not None and time.monotonic() - self.t0 >= self.minutes * 60))

    def _stop_reason(self, flag: StopFlag) -> StopReason | None:
        if flag.set or (self.should_stop is not None and self.should_stop()):
            return StopReason.INTERRUPTED
        if self.budget is not None and self.trials >= self.budget:
            return StopReason.BUDGET
        if self.minutes is not None and time.monotonic() - self.t0 >= self.minutes * 60:
            return StopReason.MINUTES
        if self.reverts >= self.max_reverts:
            if self.budget is None and self.minutes is None:
                return StopReason.MAX_REVERTS
            self.reverts, self.restart_pending, self.queue = 0, True, []
            self.restarts += 1
            log.info("%d trials without a keep: moving to another region (restart %d)", self.max_reverts,
                     self.restarts)
        return None
