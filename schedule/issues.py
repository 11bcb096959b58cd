"""What the validator reports: the kinds of issue, an issue, the result of validate(), and the report that
collects issues while the checks run (at most MAX_ISSUES_PER_KIND of a kind, the rest counted)."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from enum import Enum


class IssueKind(str, Enum):
    CYCLE = "cycle"
    QUEUE_ORDER = "queue_order"
    UNSATISFIABLE_WAIT = "unsatisfiable_wait"
    PARTIAL_WAIT = "partial_wait"
    RACE_NO_WRITER = "race_no_writer"
    KV_READ_BEFORE_APPEND = "kv_read_before_append"
    CLOBBER = "clobber"
    SM_OUT_OF_RANGE = "sm_out_of_range"
    ABI = "abi"
    OUT_OF_BOUNDS = "out_of_bounds"
    TAGGED_READ = "tagged_read"  # a read of a tagged stream that could see stale values, or a wait it cannot carry
    INTERNAL = "internal"
    NOT_CHECKED = "not_checked"  # a check that cannot run on this program (why is said): its issues are unknown


@dataclass(frozen=True)
class ValidationIssue:
    kind: IssueKind
    message: str
    tasks: tuple[int, ...] = ()
    buffers: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "message": self.message, "tasks": list(self.tasks),
                "buffers": list(self.buffers)}


@dataclass
class ValidationResult:
    ok: bool
    issues: list[ValidationIssue]
    seconds: float
    suppressed: dict[str, int] = field(default_factory=dict)  # issue kind -> how many were left out

    def to_dict(self) -> dict:
        return {"ok": self.ok, "seconds": self.seconds, "issues": [i.to_dict() for i in self.issues],
                "suppressed": dict(self.suppressed)}

    def __bool__(self) -> bool:
        """`ok`: `assert amk.validate(p)` holds only for a program with no issue."""
        return self.ok

    def first_message(self) -> str:
        return self.issues[0].message if self.issues else ""

    def kinds(self) -> set[IssueKind]:
        return {i.kind for i in self.issues}


MAX_ISSUES_PER_KIND = 20


class _Report:
    def __init__(self, program):
        self.issues: list[ValidationIssue] = []
        self.counts: dict[IssueKind, int] = {}
        self.program = program

    def add(self, kind, message: str, tasks=(), buffers=()) -> None:
        if not isinstance(kind, IssueKind):
            kind = IssueKind[kind]
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        if n < MAX_ISSUES_PER_KIND:
            self.issues.append(ValidationIssue(kind, message, tuple(self._task_of(t) for t in tasks
                                                                    if isinstance(t, int)),
                                               tuple(str(b) for b in buffers)))

    def _task_of(self, tid: int) -> int:
        """A task id; the hazard sweep numbers each join after the tasks: it is reported as its first task."""
        n = len(self.program.tasks)
        if tid >= n and tid - n < len(self.program.joins):
            return self.program.joins[tid - n].tasks[0]
        return tid

    def internal(self, where: str, exc: BaseException) -> None:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        self.add(IssueKind.INTERNAL, f"validator failed in {where}: {last}")

    def tname(self, tid) -> str:
        try:
            n = len(self.program.tasks)
            if tid >= n and tid - n < len(self.program.joins):
                j = self.program.joins[tid - n]
                return (f"the combine of counter {j.counter} ({self.program.counters[j.counter].name}) by the last "
                        f"of tasks {', '.join(map(str, j.tasks[:4]))}{', ...' if len(j.tasks) > 4 else ''}")
            return f"task {tid} ({self.program.tasks[tid].kind})" if tid >= 0 else f"task {tid}"
        except Exception:
            return f"task {tid}"

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _malformed(rep: _Report, tid: int, exc: BaseException) -> None:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    rep.add(IssueKind.ABI, f"{rep.tname(tid)} is malformed: {last}", tasks=(tid,))
