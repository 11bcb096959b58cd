"""Typed errors shared by every layer. Each carries the context a user needs to act on it."""

from __future__ import annotations


class AmkError(Exception):
    """Base of every error AMK raises on purpose."""


class ConfigError(AmkError, ValueError):
    """A config dict is malformed. `path` is the JSON path of the bad field, e.g. `$.matvec.qkv.k_splits`."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}")


class UnsupportedModelError(AmkError, ValueError):
    """A model architecture or feature that AMK does not lower. `feature` names it."""

    def __init__(self, feature: str, detail: str = ""):
        self.feature = feature
        super().__init__(f"unsupported model feature: {feature}" + (f" ({detail})" if detail else ""))


class UnknownModelError(AmkError, KeyError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(f"unknown model {name!r}: not a built-in name ({', '.join(known)}) nor a local directory")

    def __str__(self) -> str:  # KeyError quotes its argument; keep the sentence readable
        return self.args[0]


class UnknownTargetError(AmkError, KeyError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown GPU target {name!r}; known: {', '.join(known)}")

    def __str__(self) -> str:
        return self.args[0]


class LoweringError(AmkError, ValueError):
    """A config cannot be lowered for this model and target (names the knob)."""

    def __init__(self, knob: str, message: str):
        self.knob = knob
        super().__init__(f"{knob}: {message}")


class ProgramError(AmkError, ValueError):
    """A program violates an invariant; `tasks` and `buffers` name what is involved."""

    def __init__(self, message: str, tasks: tuple[int, ...] = (), buffers: tuple[str, ...] = ()):
        self.tasks = tuple(tasks)
        self.buffers = tuple(buffers)
        super().__init__(message)


class DeadlockError(ProgramError):
    """The ReferenceVM found no runnable task while tasks remained."""


class CounterMismatchError(ProgramError):
    """A counter ended a step at a value other than the one the program declares."""


class VmError(AmkError, RuntimeError):
    """The CUDA VM reported a failure (time-out, bad instruction, missing tasks)."""

    def __init__(self, message: str, task: int | None = None, code: int | None = None):
        self.task = task
        self.code = code
        super().__init__(message)


class EnvironmentProblem(AmkError, RuntimeError):
    """Something the run needs is missing from this machine (CUDA, cupy, a package)."""
