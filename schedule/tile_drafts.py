"""TaskDraft and JoinDraft: a stage's tasks and joins as tiling makes them, before lowering places them, numbers
them and gives them counters."""

from __future__ import annotations

from dataclasses import dataclass

from .opcodes import Opcode
from .program import Prefetch, Region


@dataclass
class TaskDraft:
    opcode: Opcode
    params: object
    reads: list[Region]
    writes: list[Region]
    prefetch: list[Prefetch]
    weight_bytes: int
    groups: tuple[int, ...] = ()
    join: JoinDraft | None = None  # the combine the last of its group's partition tasks does


@dataclass(frozen=True)
class JoinDraft:
    """A KV head's combine, done by the last of the head's partition tasks to finish, or a row block's k-split
    reduce and epilogue, done by its last split task to finish (a Join of the program: lowering gives each
    (stage, key) its arrival counter)."""
    key: int  # the KV head, or the row tile of a k-split matvec
    reads: tuple[Region, ...]
    writes: tuple[Region, ...]
    what: str = "g"  # what the key counts, in the arrival counter's name: g(roup) or rows (a row tile)
