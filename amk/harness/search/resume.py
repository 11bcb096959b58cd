"""What a loop takes from the results file and the corpus it continues: the rows of its own run (model, GPU, dtype,
context), the incumbent a resume starts from, a row that stands for the start's measurement, and the checkpoint's
weights those rows were measured on.

Resume is a part of the loop's run (amk/harness/loop.py), written apart to keep each file to one job: it reads the
run's settings (results, corpus, model, target, dtype, context) and sets the incumbent's measurement.
"""

from __future__ import annotations

import logging
from pathlib import Path

from amk.flywheel.corpus import entries_for
from amk.flywheel.records import MODEL_FINGERPRINT, for_run, load_records
from amk.flywheel.results import Status
from amk.schedule.config import ScheduleConfig

from ..commands import counted
from .errors import LoopError

log = logging.getLogger("amk.harness")


class Resume:
    """The resume side of a loop's run (see the module docstring)."""

    def _keeps_latest_first(self, rows: list[dict]) -> list[dict]:
        """The kept trials of `rows` (of this run's latency kind, with a latency), the latest first: each keep
        replaced the incumbent before it, so the latest is the incumbent the loop left. Not the lowest latency: a
        config with fewer non-default knobs is kept within the noise of a faster one (search/keep.py decide), and
        a resume from the faster one would undo that keep. A keep row whose `correct` cell is not `true` (the loop
        writes it for no keep: a hand edit) is no incumbent, as _adopt and the report read it."""
        return [r for r in reversed(rows) if r.get("status") == Status.KEEP.value and r.get("kind") == self.kind
                and r.get("latency_us") and r.get("correct") == "true"]

    def _check_given_on_resume(self, given: ScheduleConfig, fingerprint: str | None, rows: list[dict]) -> None:
        """A given start config on a results file that already kept another program: the start is the incumbent
        until a candidate beats it, so a slower given config would be logged as a keep over the file's incumbent.
        Raises LoopError naming the kept trial. A config of the kept program (another spelling) is its incumbent.
        `rows`: the file's rows of this run (_rows_of_run)."""
        best = next(iter(self._keeps_latest_first(rows)), None)
        if (best is not None and best["schedule_id"] != given.schedule_id
                and best.get("program_fingerprint") != fingerprint):
            raise LoopError(f"{self.results}: trial {best['trial']} kept {best['schedule_id']} at "
                            f"{float(best['latency_us']):.2f} us, the incumbent a resumed loop continues from; a "
                            f"given config ({given.schedule_id}) would replace it whatever its latency: resume "
                            "without --config (incumbent= in Python), or start another results file from it",
                            argument="incumbent")

    def _resumed_incumbent(self, cfg: ScheduleConfig, origin: str, rows: list[dict]) -> tuple[ScheduleConfig, str]:
        """The start of a resume: the results file's latest kept trial of this run's dtype and context (the loop's
        incumbent when it stopped: _keeps_latest_first), whose config
        only the corpus holds, in place of the corpus's best (`cfg`, from `origin`): the corpus records no
        max_seq, so its best may be a program of another max_seq, and a start slower than the file's best would
        log slower configs as keeps. (cfg, origin) as given when the file has no such keep. Where the latest keep's
        record is missing but an earlier keep's is there (a record line torn, or a run killed between its row and its
        record), the latest keep the corpus holds, with a warning naming the trial passed over. Raises LoopError
        when the corpus holds no kept record of any kept trial (results.tsv moved without its corpus.jsonl) or the
        config no longer parses. `rows`: the file's rows of this run (_rows_of_run)."""
        kept = self._keeps_latest_first(rows)
        if not kept or kept[0]["schedule_id"] == cfg.schedule_id:
            return cfg, origin
        records = {e.schedule_id: e for e in (entries_for(load_records(self.corpus), self.name, self.target.name)
                                              if self.corpus.exists() else []) if e.kept}
        best = next((r for r in kept if r["schedule_id"] in records), None)
        where = (f"{self.results}: trial {kept[0]['trial']} kept {kept[0]['schedule_id']} at "
                 f"{float(kept[0]['latency_us']):.2f} us ({self.kind}) for {self.name} on {self.target.name}")
        if best is None:
            raise LoopError(f"{where}, but {self.corpus} holds no record of its config, the incumbent to continue "
                            "from: resume with the corpus that loop wrote (--corpus; corpus= in Python and MCP), or choose another "
                            "results file",
                            argument="corpus")
        if best is not kept[0]:
            log.warning("%s, but %s holds no record of its config (a record line torn, or a run stopped between "
                        "its row and its record): continuing from trial %s (%s, %.2f us), the latest keep it records",
                        where, self.corpus, best["trial"], best["schedule_id"], float(best["latency_us"]))
        if best["schedule_id"] == cfg.schedule_id:
            return cfg, origin
        try:
            return ScheduleConfig.from_dict(records[best["schedule_id"]].config), f"{self.results} trial {best['trial']}"
        except ValueError as e:  # a hand edit, or a knob since removed
            raise LoopError(f"{self.results}: trial {best['trial']} kept {best['schedule_id']}, but its config in "
                            f"{self.corpus} no longer parses ({e}): choose another results file",
                            argument="corpus") from None

    def _same_run(self, row: dict) -> bool:
        """Whether a results row was measured at this run's dtype and context (max_seq). An empty cell (a file
        written before those columns) cannot be told apart, and is taken for the run's."""
        return (row.get("dtype") or self.dtype) == self.dtype and \
            (row.get("max_seq") or str(self.program_max_seq)) == str(self.program_max_seq)

    def _impossible(self, row: dict) -> bool:
        """Whether a results row's latency is under the spec floor of this run's model on its GPU (its weight bytes
        at the datasheet bandwidth): no step runs that fast, so the cell is a hand edit or a fault, never an
        incumbent or a bar to beat (amk report and propose pass over such a record too). Warns naming the row."""
        try:
            lat = float(row.get("latency_us") or "nan")
        except ValueError:
            return False  # read_rows refuses such a cell before this
        if not lat < self.spec_floor_us:
            return False
        log.warning("%s: trial %s of %s records %.4f us, under the spec floor %.1f us of %s on %s (a hand edit or a "
                    "fault): passed over, neither an incumbent nor a bar to beat", self.results, row.get("trial"),
                    row.get("schedule_id"), lat, self.spec_floor_us, self.name, self.target.name)
        return True

    def _rows_of_run(self, rows: list[dict]) -> list[dict]:
        """The rows of this model and GPU that a resume may compare with and adopt: those of the run's dtype and
        context (_same_run). Logs once how many rows of another dtype or context were passed over, and warns
        once when the rows carry no dtype or context (an older file), since those are adopted unchecked."""
        mine = [r for r in rows if self.same_model(r.get("model") or "") and r.get("gpu") == self.target.name]
        if rows and not mine:  # a mistyped --model or --gpu would otherwise start a new baseline unremarked
            held = sorted({f"{r.get('model') or '?'} on {r.get('gpu') or '?'}" for r in rows})
            log.warning("%s: none of its %d rows are of %s on %s (it holds %s): this run starts from its own "
                        "baseline, as a new file would", self.results, len(rows), self.name, self.target.name,
                        "; ".join(held))
        run = [r for r in mine if self._same_run(r)]
        here = f"{self.dtype}, max_seq {self.program_max_seq}"
        if len(run) < len(mine):
            other = sorted({f"{r.get('dtype') or '?'}, max_seq {r.get('max_seq') or '?'}"
                            for r in mine if not self._same_run(r)})
            n = len(mine) - len(run)
            log.info("%s: %s of %s on %s %s of another dtype or context (%s) than this run (%s): passed over, "
                     "neither the incumbent's latency nor the bar to beat", self.results, counted(n, "row"),
                     self.name, self.target.name, "is" if n == 1 else "are", "; ".join(other), here)
        run = [r for r in run if not self._impossible(r)]
        blank = [r for r in run if not r.get("dtype") or not r.get("max_seq")]
        if blank:
            log.warning("%s: %d of its rows carry no dtype or context (max_seq: a file written before results.tsv "
                        "had those columns, or cells emptied by hand), so they are taken as measured at this run's "
                        "(%s): resume it only with the dtype and max_seq they were written with (rows appended to "
                        "an older file keep its columns and carry none either; another results file records them)",
                        self.results, len(blank), here)
        return run

    def _checkpoint_fingerprints(self, rows: list[dict]) -> tuple[str | None, dict[str, set[str | None]]]:
        """For a checkpoint directory: its fingerprint now (its weights hashed) and, on a resume, for each program
        the corpus records passing (kept or re-measured, correct) for this model and GPU, the fingerprints it
        passed on (None for records written before AMK recorded them). None and empty for a built-in model."""
        from amk.models import Model, builtin_names
        from amk.models.registry import checkpoint_fingerprint

        path = Path(self.name).expanduser()
        if isinstance(self.model, Model):  # in memory: its weights may differ from the directory it came from
            now = self.model.fingerprint if self.model.source == "path" else None
        elif self.name in builtin_names():  # the built-in, as load_model takes it, even beside a directory so named
            now = None
        else:
            now = checkpoint_fingerprint(path) if path.is_dir() else None
        passed: dict[str, set[str | None]] = {}
        if now is None or not rows or not self.corpus.exists():
            return now, passed
        for r in load_records(self.corpus):
            if (r.gpu == self.target.name and self.same_model(r.model) and r.correct and r.program_fingerprint
                    and r.status in (Status.KEEP.value, Status.REMEASURE.value)):
                passed.setdefault(r.program_fingerprint, set()).add(r.environment.get(MODEL_FINGERPRINT))
        return now, passed

    def _check_checkpoint_unchanged(self) -> None:
        """Raises LoopError when the checkpoint directory was saved again since the loop started: its trials from
        here would run on other weights than the ones its records name. A resume goes on from there (and checks
        the incumbent on the new weights first)."""
        from amk.models import Model
        from amk.models.registry import checkpoint_fingerprint

        if self.weights_now is None or isinstance(self.model, Model):
            return
        now = checkpoint_fingerprint(Path(self.name).expanduser())
        if now != self.weights_now:
            raise LoopError(f"{self.name} was saved again during the loop (fingerprint {self.weights_now[:16]}, now "
                            f"{now[:16]}): its later trials would run on other weights than its records name. "
                            "Resume to go on with the new weights (the incumbent is checked on them first)")

    def _start_needs_check(self) -> bool:
        """Whether the corpus does not record the adopted incumbent's program passing on the checkpoint's weights
        now: it records passes on other weights only, or none at all (a corpus lost, emptied or never written
        beside the results). Records from before the fingerprint existed name none: those are not checked."""
        fps = self.passed_on.get(self.inc.program_fingerprint, set())
        return self.weights_now not in fps and fps != {None}

    def _warn_checkpoint_changed(self) -> None:
        """A resume whose start no row stands for, on a checkpoint none of the corpus's passing records of this model
        name (saved again since, with another shape, say, so that the incumbent's config lowers to a new program and
        no re-check applies): warn that the file's earlier rows are of other weights, which `amk report` reads as
        this model's too."""
        recorded = {f for fps in self.passed_on.values() for f in fps if f}
        if self.weights_now is None or not recorded or self.weights_now in recorded:
            return
        log.warning("%s: the checkpoint there now (fingerprint %s) is none that this results file's trials passed on "
                    "(%s): it was saved again since, perhaps with another shape. Its earlier rows are latencies of "
                    "those weights, and `amk report` reads them as this model's: start another results file to keep "
                    "the two apart", self.name, self.weights_now[:16], ", ".join(sorted(f[:16] for f in recorded)))

    def _check_weights_of_start(self) -> None:
        """A resumed incumbent of a checkpoint directory stands on a row of the results file; when the corpus
        records it passing on other weights than the ones there now (the checkpoint was saved again since, or its
        check failed), it is verified and timed again on them first. Raises LoopError when it fails there, after
        its row is written: the search would go on from a config that is not correct on this checkpoint, and so
        would every later resume."""
        fps = self.passed_on.get(self.inc.program_fingerprint, set())
        if fps == {None}:  # recorded only in records older than the fingerprint
            log.info("%s: the corpus's records of the incumbent %s carry no weights fingerprint (written before AMK "
                     "recorded it): it is not checked against the checkpoint there now", self.name,
                     self.inc.config.schedule_id)
            return
        if not self._start_needs_check():  # it passed on these weights
            return
        if fps:
            on = ", ".join(sorted(f[:16] for f in fps if f))
            log.warning("%s: the incumbent %s has not passed on the checkpoint there now (its config.json and "
                        "weights, fingerprint %s; it passed on: %s): it is verified and timed again on it", self.name,
                        self.inc.config.schedule_id, self.weights_now[:16], on)
        else:  # its row stands on weights no record names
            log.warning("%s: %s holds no record of the incumbent %s passing on %s (the corpus of the results file's "
                        "trials is missing or emptied): it is verified and timed again on the checkpoint there now "
                        "(fingerprint %s)", self.name, self.corpus, self.inc.config.schedule_id, self.target.name,
                        self.weights_now[:16])
        if self._remeasure() == Status.FAIL:
            raise LoopError(f"{self.results}: the incumbent {self.inc.config.schedule_id} (trial {self.inc.trial}) "
                            f"fails on the checkpoint now in {self.name} (its row is written): check the checkpoint, "
                            "or start another results file for it")

    def _exact_measurement(self, row: dict, lat: float, spread: float | None) -> tuple[float, float | None]:
        """(latency, spread) of a results row as the corpus recorded them: a results.tsv cell holds four decimals,
        so a resume that took the file's figure reported its incumbent at another latency than the corpus's best
        of the same trial. The corpus record must be this run's, of the row's trial, program and latency kind, with
        a latency that the row's cell writes; any other leaves the row's own figures, with a warning where the corpus
        records the same trial, program and kind at another latency (a row edited by hand)."""
        if not Path(self.corpus).exists():
            return lat, spread
        cell = row["latency_us"]
        others = []
        for r in reversed(for_run(load_records(self.corpus), self.name, self.target.name, self.dtype)):
            if (r.trial == int(row["trial"]) and r.program_fingerprint == row.get("program_fingerprint")
                    and r.kind == row.get("kind") and r.latency_us is not None):
                if f"{r.latency_us:.4f}" == cell:
                    exact_spread = spread if r.latency_spread_us is None or spread is None else r.latency_spread_us
                    return r.latency_us, exact_spread
                others.append(r.latency_us)
        if others:
            # the row was edited by hand, or the corpus is shared with another results file whose trial numbers
            # collide: either way the bar every candidate must beat is a figure no record of this file confirms
            log.warning("%s: trial %s's row gives %s us, but %s records that trial of the same program at %s us: "
                        "the row's figure is the resumed incumbent's; if the row was edited, restore it or start "
                        "another results file", self.results, row["trial"], cell, self.corpus,
                        ", ".join(f"{x:.4f}" for x in others))
        return lat, spread

    def _adopt(self, row: dict) -> bool:
        """Take a measured row of the incumbent's program as its measurement (a resume, or another loop's)."""
        lat = float(row["latency_us"]) if row.get("latency_us") else None
        if row.get("correct") != "true" or row.get("kind") != self.kind or lat is None or not self._same_run(row) \
                or self._impossible(row):
            return False
        spread = float(row["spread_us"]) if row.get("spread_us") else None
        lat, spread = self._exact_measurement(row, lat, spread)
        self.inc.observe(lat, spread, row["kind"])
        self.inc.trial = int(row["trial"])
        # on a checkpoint saved again since, the row stands only until the check on the weights there now
        until = " until it is checked on the checkpoint there now" if (
            self.weights_now is not None and self._start_needs_check()) else ""
        log.info("incumbent %s: duplicate of trial %s (%.2f us), whose row stands for it%s",
                 self.inc.config.schedule_id, row["trial"], lat, until)
        return True
