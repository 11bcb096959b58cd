"""SIGINT during a loop: finish the trial in flight, then stop with the summary.

The first Ctrl-C sets a flag the loop reads between trials (the CLI then exits 130, HARNESS.md section 4);
a second one raises KeyboardInterrupt at once, for a trial that will not end. Outside the main thread (a
Ray worker, a notebook's executor) no handler is installed and the flag stays clear: the caller stops the
loop through `should_stop` instead.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("amk.harness")


class StopFlag:
    def __init__(self):
        self.set = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        log.warning("interrupted: finishing the trial in flight, then the summary (Ctrl-C again to abort now)")

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
