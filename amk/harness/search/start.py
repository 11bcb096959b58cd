"""A loop's start, before its first trial: the files it appends to checked, then the config it starts from (the
given one, else the incumbent of the corpus or of the results file it resumes, else the defaults) built and checked,
its kernel compiled while the weights load, and its first measurement settled: measured by this loop, or a measured
row of the results file standing for it.

Start is a part of the loop's run (amk/harness/loop.py), written apart to keep each file to one job, as Rounds,
Resume and Trials are: it reads the run's settings and sets its incumbent and start candidate.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from amk.flywheel.claims import snapshot
from amk.flywheel.results import ReadRows
from amk.schedule.config import ScheduleConfig
from amk.schedule.inert import inert_knobs

from ..arguments import append_refusal
from ..environment import Device
from ..propose import incumbent_config
from .builder import Built
from .errors import LoopError
from .keep import Incumbent
from .policy import Candidate, Source
from .signals import StopFlag

log = logging.getLogger("amk.harness")

CLAIM_POLL_S = 1.0


def _refuse_unreadable_rows(results: Path, read: ReadRows) -> None:
    """LoopError (argument results) where a results file holds whole data lines and none was a readable row (each
    warned of above): a spreadsheet's re-save (TRUE for true), say. Resumed or not, the run would start afresh
    beside rows no reader can count. Rows a write cut short (a last line without its newline, and a line the next
    append marked as cut) are trials that died, not such a file: a full disk may cut the first trial's row of every
    run until it is freed."""
    data_lines = read.skipped - read.cut
    if not read.rows and data_lines > 0:
        raise LoopError(f"{results}: none of its {data_lines} data lines is a readable row (each is named above); "
                        "fix or move the file, or choose another results file", argument="results")


def _check_writable(path: Path, argument: str) -> None:
    """Raises LoopError naming `argument` where the loop could not append to `path` (the file, or the nearest
    directory above it that exists, is not writable: a read-only mount, another user's file), before any trial:
    found only at the first row, it would end the run with a bare OSError."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not os.access(probe, os.W_OK):
        raise LoopError(f"{path}: {str(probe)!r} is not writable: the loop appends to it every trial",
                        argument=argument)
    try:  # the first append makes them anyway; one that cannot be made (under /proc, say) fails here, not after a trial
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LoopError(f"{path}: its directory {str(path.parent)!r} cannot be made ({e.strerror or e})",
                        argument=argument) from None
    why = append_refusal(path)
    if why is not None:
        raise LoopError(f"{path}: cannot be opened for appending ({why}): the loop appends to it every trial",
                        argument=argument)


class Start:
    """The start side of a loop's run (see the module docstring)."""

    def _prepare_start(self, given: ScheduleConfig | None, rows: list[dict]
                       ) -> tuple[Incumbent, tuple[Candidate, Built] | None]:
        origin = "given"
        if given is not None:
            cfg, source = given, Source.GIVEN
        else:
            cfg, origin, _ = incumbent_config(self.name, self.target.name, self.corpus, self.dtype, self.context)
            cfg, origin = self._resumed_incumbent(cfg, origin, rows)
            source = Source.BASELINE
        built = self.builder.build([self._job(cfg)])[0]
        if not built.valid and given is not None:
            raise LoopError(f"the given config {cfg.schedule_id} is rejected ({built.reason}): a loop starts from a "
                            "config that lowers and validates", argument="incumbent")
        if given is not None:
            self._check_given_on_resume(given, built.program_fingerprint, rows)
            self.given_inert = [k.note() for k in inert_knobs(given, self.target, built.derived)]
            for note in self.given_inert:  # evaluate's verdict notes these; a loop's start row would not
                log.warning("the given config's %s; the loop keeps it as given, and the search never moves it", note)
        if not built.valid and cfg != ScheduleConfig():
            log.warning("the corpus's best config %s no longer lowers (%s): starting from the defaults",
                        cfg.schedule_id, built.reason)
            cfg, built, origin = ScheduleConfig(), self.builder.build([self._job(ScheduleConfig())])[0], "default"
        if not built.valid:
            raise LoopError(f"the default config is rejected for {self.name} on {self.target.name}: {built.reason}")
        inc = Incumbent(cfg, program_fingerprint=built.program_fingerprint)
        self.start_description = f"baseline ({origin} config)"
        return inc, (Candidate(cfg, (), source), built)

    def _warm_start(self) -> None:
        """On a GPU, a builder compiles the start's kernel while this process loads the model's weights: on a
        fresh machine each takes tens of seconds, and the first trial waited for both in turn."""
        if self.dev != Device.CUDA:
            return
        self.builder.precompile(self._job(self.start[0].config), self.start[1].kernel_id)
        self._load_weights()

    def _settle_start(self, flag: StopFlag) -> Candidate | None:
        """The start candidate to measure, or None when a measured row stands for it (waiting for another
        loop that claimed it)."""
        cand = self.start[0]
        while True:
            taken = self._start_row()
            if taken is None:
                return cand
            if taken.by == "measured":
                self.duplicates += 1
                self.adopted = self._adopt(taken.row)
                if not self.adopted:
                    log.info("trial %s measured the incumbent's program without a %s latency at %s, max_seq %d: "
                             "measured again as a re-measurement", taken.trial, self.kind, self.dtype,
                             self.program_max_seq)
                    self.inc.trial = taken.trial
                    self._remeasure()
                return None
            if self._stop_reason(flag) is not None:
                return None
            time.sleep(CLAIM_POLL_S)  # another loop is measuring it now: its row is the incumbent's latency

    def _adopt_start_row(self) -> None:
        """A loop stopped before its start's trial: the start's measured row of the results, where one stands for it
        (a resumed run's incumbent), adopted as _settle_start would, with nothing measured and no claim waited for;
        so that the summary reports the incumbent resumed, not the start config as no result."""
        taken = self._start_row()
        if taken is not None and taken.by == "measured":
            self.duplicates += 1
            self.adopted = self._adopt(taken.row)

    def _start_row(self):
        """The results' row that measures or claims the start's program (None: none does), as the file stands now."""
        _, built = self.start
        return snapshot(self.results, self.name, self.target.name).taken(built.program_fingerprint,
                                                                         built.schedule_id, self.owner)
