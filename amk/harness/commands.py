"""What every CLI command shares: its result type, exit codes, how a config argument is read, and the
table of commands (implemented in cmd_run, cmd_bench, cmd_info and cmd_report)."""

from __future__ import annotations

import errno
import json
import re
import sys
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from amk.schedule.errors import (
    AmkError,
    ArgumentError,
    CheckpointError,
    ConfigError,
    ContextError,
    EagerReferenceError,
    EnvironmentProblem,
    LoweringError,
    UnknownModelError,
    UnknownTargetError,
    UnsupportedModelError,
)


class UsageError(ArgumentError):
    """The command line is wrong (a bad flag, a missing file)."""

    def __init__(self, message: str):
        AmkError.__init__(self, message)
        self.argument = None


def check_path_flag(flag: str, value: str) -> None:
    """UsageError naming `flag` for a path the file system takes as no name (arguments.check_path_name: a NUL
    byte, a name past its length limit, ~ of an unknown user)."""
    from amk.harness.arguments import check_path_name

    try:
        check_path_name(flag, value)
    except ArgumentError as e:
        raise UsageError(str(e)) from None


def check_not_stdout(flag: str, value: str, what: str = "file") -> None:
    """UsageError naming `flag` for the value '-': an output flag names a file (or a directory) to write, never
    stdout, which the command's own answer holds (--config - reads stdin, but no output is written there). A file
    of that name is ./-."""
    if value == "-":
        raise UsageError(f"{flag} '-': names no {what} (this command's output is not written to stdout); name a "
                         f"{what}, ./- for one of that name")


class ExitCode(IntEnum):
    """The process exit codes of every subcommand; HARNESS.md section 4 is their contract."""

    OK = 0
    INCORRECT = 1  # a correctness failure
    USAGE = 2  # a rejected config, or a usage error
    ENVIRONMENT = 3  # missing CUDA / cupy / a package, or an internal error (error_type says which)
    INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + the signal number, as shells report it

    @classmethod
    def of_exception(cls, e: BaseException) -> tuple[ExitCode, str]:
        """The exit code and error_type for an exception that reached the top."""
        from amk.flywheel.results import ResultsFormatError
        from amk.harness.loop import LoopError

        if isinstance(e, (ConfigError, UsageError, ArgumentError, UnknownModelError, UnknownTargetError,
                          UnsupportedModelError, CheckpointError, ContextError, LoopError, ResultsFormatError,
                          LoweringError, EagerReferenceError)):
            return cls.USAGE, "usage"
        # a path the user named that is missing, a directory, not writable, or a name longer than the system takes
        if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)) or \
                (isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG):
            return cls.USAGE, "usage"
        if isinstance(e, (EnvironmentProblem, ImportError)):
            return cls.ENVIRONMENT, "environment"
        return cls.ENVIRONMENT, "internal"


@dataclass
class CommandResult:
    code: ExitCode
    payload: dict = field(default_factory=dict)
    text: str | None = None  # the human form; None prints the payload as indented JSON


class ConfigText(str):
    """A config's JSON text as read from `source` (a file, or stdin), so that a verdict rejecting it as malformed
    JSON names where it came from."""
    source: str

    def __new__(cls, text: str, source: str) -> ConfigText:
        obj = super().__new__(cls, text)
        obj.source = source
        return obj


# what a config file's name is made of (a path of such names): no JSON text but a number is, and json.loads is
# asked first
_FILE_NAME = re.compile(r"[\w.~+@%=/-]+")
MAX_CONFIG_CHARS = 4 << 20  # a schedule config is a few KiB; an explicit SM map of every task kind stays far below


def read_config_arg(value: str | None, flag: str = "--config"):
    """--config: '-' reads stdin; a value starting with '{' is inline JSON; an existing file is read (a file named
    like '2024-cfg.json' too); else text that looks like JSON is parsed inline. Returns the raw value (string; a
    ConfigText naming the file or stdin) so that malformed JSON becomes a rejected verdict, not a crash. A leading UTF-8 byte-order mark is dropped.
    UsageError (naming `flag`) for a directory, an unreadable or non-UTF-8 file or stdin, a closed stdin, a file or
    stdin of more than MAX_CONFIG_CHARS (4 MiB), or a value that is neither a file nor JSON."""
    if value is None:
        return {}
    if value == "-":
        if sys.stdin is None:  # started with stdin closed (`<&-`): there is nothing to read
            raise UsageError(f"{flag} -: stdin is closed (give a JSON file, or inline JSON)")
        # bytes, decoded here, so that stdin and a file holding the same bytes get the same answer
        stream = getattr(sys.stdin, "buffer", None)
        try:
            data = (stream or sys.stdin).read(MAX_CONFIG_CHARS + 1)
        except OSError as e:
            raise UsageError(f"{flag} -: stdin cannot be read ({e.strerror or e})") from None
        if len(data) > MAX_CONFIG_CHARS:
            raise UsageError(f"{flag} -: stdin holds more than {MAX_CONFIG_CHARS >> 20} MiB, no schedule config")
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError as e:
            raise UsageError(f"{flag} -: stdin is not UTF-8 text ({e.reason} at byte {e.start})") from None
        return ConfigText(text.removeprefix("\ufeff"), f"{flag} -: stdin")
    if not value.strip():  # Path("") is the working directory: an empty value is inline text (no JSON), not a path
        return value
    # a JSON object is what a config is: `--config '{}'` is that object even where the working directory holds a
    # file named `{}` (a file whose name starts with a brace is still read as ./{name})
    if value.lstrip().startswith("{"):
        return value
    try:
        path = Path(value).expanduser()
        # a file is anything that exists and is no directory: a pipe (`--config <(...)`, /dev/stdin) as well
        is_dir = path.is_dir()
        is_file = not is_dir and path.exists()
    except RuntimeError:  # ~ of a user this machine does not know: meant as a file (no JSON starts with ~)
        from amk.harness.arguments import unknown_home

        raise UsageError(f"{flag} {value!r}: {unknown_home(value.strip())} (give a JSON file, '-' for stdin, or "
                         "inline JSON)") from None
    except OSError:  # inline JSON longer than a file name may be (ENAMETOOLONG) is no path
        is_dir = is_file = False
    if is_dir:
        raise UsageError(f"{flag} {value!r} is a directory (give a JSON file, '-' for stdin, or inline JSON)")
    if is_file:
        try:
            with path.open("rb") as f:  # bounded: /dev/zero, or a stream that never ends, is a path too
                data = f.read(MAX_CONFIG_CHARS + 1)
            if len(data) > MAX_CONFIG_CHARS:
                raise UsageError(f"{flag} {value!r}: more than {MAX_CONFIG_CHARS >> 20} MiB, no schedule config")
            return ConfigText(data.decode("utf-8-sig"), f"{flag} {value!r}")  # a BOM, as some editors write, is no JSON
        except UnicodeDecodeError as e:
            raise UsageError(f"{flag} {value!r}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise UsageError(f"{flag} {value!r}: cannot be read ({e.strerror})") from None
    stripped = value.strip()
    if not stripped:
        return value
    if stripped[0] in "[\"-0123456789" or stripped in ("true", "false", "null"):
        try:  # JSON text that is no object: the config's parse refuses it as a rejected config, naming "$"
            json.loads(stripped)
            return value
        except ValueError:
            pass
        # neither JSON nor an existing file: a name such as 2024-cfg.json is a file not found, while text with
        # what no file name of a config holds (spaces, brackets, quotes, commas) is malformed inline JSON
        if not _FILE_NAME.fullmatch(stripped):
            return value
    raise UsageError(f"{flag} {value!r}: no such file (give a JSON file, '-' for stdin, or inline JSON)")


def verdict_exit(verdict: dict) -> ExitCode:
    if not verdict.get("valid"):
        return ExitCode.USAGE
    if not verdict.get("correct"):
        return ExitCode.INCORRECT
    return ExitCode.OK


def counted(n: int, noun: str) -> str:
    """'1 trial', '3 trials'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, default=str)


def _save_cache_stats() -> None:
    """Record this process's cache hits and misses as the last run's (what `amk cache stats` shows), when it
    touched the cache at all: a command that read and wrote no entry (generate on a CPU) leaves the record of the
    last one that did."""
    import logging

    from amk.cache import CacheDirError, default_cache

    log = logging.getLogger("amk.cli")
    try:
        cache = default_cache()
        if any(n for counts in cache.stats().values() for n in counts.values()):
            cache.save_stats()
    except CacheDirError as e:
        # the cache directory itself cannot be used (root_problem, raised by default_cache): the command that used
        # the cache refused it in these words already, and one that did not touch it has nothing to record; a
        # second line on stderr would break HARNESS section 4's one line of a usage error
        log.debug("cache stats not saved: %s", e)
    except Exception as e:  # noqa: BLE001 - a convenience record: it must not replace the command's own answer
        log.warning("cache stats not saved: %s", e)


def _lazy(module: str, name: str, uses_cache: bool = False):
    """The command `name` of amk.harness.`module`, imported when it runs. `uses_cache`: the command lowers,
    verifies or compiles, so its cache hits and misses become the last run's (saved however it ends)."""
    def run(args):
        import importlib

        try:
            return getattr(importlib.import_module(f"amk.harness.{module}"), name)(args)
        finally:
            if uses_cache:
                _save_cache_stats()
    return run


COMMANDS = {
    "doctor": _lazy("cmd_info", "doctor"),
    "models": _lazy("cmd_info", "models"),
    "targets": _lazy("cmd_info", "targets"),
    "cache": _lazy("cmd_info", "cache"),
    "generate": _lazy("cmd_info", "generate", uses_cache=True),
    "compile": _lazy("cmd_info", "compile_cmd", uses_cache=True),
    "propose": _lazy("cmd_run", "propose", uses_cache=True),
    "evaluate": _lazy("cmd_run", "evaluate", uses_cache=True),
    "loop": _lazy("cmd_run", "loop", uses_cache=True),
    "verify": _lazy("cmd_run", "verify", uses_cache=True),
    "bench": _lazy("cmd_bench", "bench", uses_cache=True),
    "report": _lazy("cmd_report", "report"),
    "mcp": _lazy("mcp_server", "serve_command"),
}
