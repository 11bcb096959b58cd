"""SIGINT or SIGTERM during a loop: finish the trial in flight, then stop with the summary.

The first Ctrl-C (or the SIGTERM that `timeout`, `docker stop` and job schedulers send) sets a flag the loop
reads between trials (the CLI then exits 130, HARNESS.md section 4); a second one raises KeyboardInterrupt at
once, for a trial that will not end. Outside the main thread (a
Ray worker, a notebook's executor) no handler is installed and the flag stays clear: the caller stops the
loop through `should_stop` instead.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("amk.harness")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    def __init__(self):
        self.set = False
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        log.warning("interrupted (%s): finishing the trial in flight, then the summary (a second Ctrl-C or "
                    "SIGTERM aborts now)", signal.Signals(signum).name)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}
