"""The loop's own errors, apart from the loop so that its parts (the resume, the distributed run) raise them without
importing the loop."""

from __future__ import annotations

from amk.schedule.errors import AmkError


class LoopError(AmkError, ValueError):
    """The loop cannot start as asked (results.tsv exists and resume was not asked for, a foreign results
    file, a seed config that does not lower). `argument` names the loop() argument to mend, when one is."""

    def __init__(self, message: str, argument: str | None = None):
        self.argument = argument
        super().__init__(message)


class ResultsNotResumed(LoopError):
    """A results file that already holds trials, given without resume. `results` (the path as given) and `trials`
    (its rows) let each front end spell how to resume in its own terms (message()); str() is the CLI's and
    Python's."""

    def __init__(self, results, trials: int):
        self.results, self.trials = str(results), trials
        super().__init__(self.message("resume it (--resume; resume=True in Python)"), argument="results")

    def message(self, how: str) -> str:
        """The refusal, with `how` to resume as the caller's front end spells it."""
        held = f"{self.trials} trial{'' if self.trials == 1 else 's'}"
        return f"{self.results} already holds {held}: {how}, or choose another results file"


class ResultsInUse(ResultsNotResumed):
    """A results file that another live loop started a run in (or claimed a trial of) and has not written a row to
    yet, given without resume: flywheel.claims.start_run. `holder` names that loop (host:pid), or "rows" where its
    trials landed meanwhile."""

    def __init__(self, results, holder: str):
        self.holder = holder
        super().__init__(results, 0)

    def message(self, how: str) -> str:
        if self.holder == "rows":
            return f"{self.results} got its first trials from another loop as this one started: {how}, or choose " \
                   "another results file"
        return (f"{self.results} is in use by another loop ({self.holder}) that started a run in it and has written "
                f"no row yet: {how}, or choose another results file")

