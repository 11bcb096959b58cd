"""SIGINT or SIGTERM during a loop: finish the trial in flight, then stop with the summary.

The first Ctrl-C (or the SIGTERM that `timeout`, `docker stop` and job schedulers send) sets a flag the loop
reads between trials and between two builds of a round built in its own process (the CLI then exits 130, HARNESS.md section 4); a second one raises KeyboardInterrupt at
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
        log.warning("interrupted (%s): finishing any trial in flight, then the summary (a second Ctrl-C or "
                    "SIGTERM aborts now)", signal.Signals(signum).name)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}


class ChildrenIgnoreStops:
    """Within it, processes started from this thread begin with SIGINT and SIGTERM blocked (a signal mask is
    inherited through fork and exec), while this process still receives them once the block is left.

    For starting a local Ray instance: Ray blocks SIGINT in its GCS, raylet and workers, so a terminal's Ctrl-C
    reaches only the driver, but not SIGTERM, which `timeout`, `kill -- -PGID`, job schedulers and
    `docker stop` send to every process of the group, cgroup or container. Ray's processes then die with the
    driver's StopFlag set, the driver loses its workers' summaries and, after a minute without its GCS, exits 1.
    With the block, the driver alone decides: its workers finish their trials in flight and report, and
    ray.shutdown() ends Ray's processes itself (SIGTERM, then SIGKILL a second later). A no-op off the main
    thread or where pthread_sigmask is missing."""

    def __enter__(self) -> ChildrenIgnoreStops:
        self._previous = None
        if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
            self._previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._previous)
