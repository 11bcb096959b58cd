"""Checks of the arguments of the harness's verbs, made before any model work, so that a caller's mistake is an
ArgumentError naming the keyword (the CLI leads it with the flag) and never a crashed or rejected trial."""

from __future__ import annotations

import errno
import json
import math
import os
from enum import Enum
from pathlib import Path

from amk.schedule.errors import ArgumentError

CASE_SETS = ("full", "reduced")
SEED_LIMIT = 2**63  # seeds go to torch.manual_seed, a signed 64-bit integer
MAX_ROUND = 1 << 16  # candidates (and parents) a search round may ask for: the default asks 64


def check_seed(seed) -> None:
    """ArgumentError naming seed unless it is an integer in [0, 2**63) (a bool is not one)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ArgumentError("seed", f"expected an integer from 0 to 2**63 - 1, got {seed!r:.60}")


def check_cases(cases) -> None:
    """`cases`: None, "full", "reduced" or a non-empty list of VerifyCase (a list is checked against the context
    later)."""
    if isinstance(cases, list | tuple):
        from amk.eval.cases import check_case_list  # imports torch: only when a list is given

        check_case_list(cases)
    if cases is None or isinstance(cases, list | tuple):
        return
    if not isinstance(cases, str) or cases not in CASE_SETS:
        raise ArgumentError("cases", f"expected 'full', 'reduced' or a list of VerifyCase, got {cases!r}")


def check_dtype(dtype) -> None:
    """`dtype`: None (the device's default) or one of fp32, fp16, bf16 (or the torch dtype)."""
    if dtype is not None:
        from amk.models.registry import resolve_dtype

        resolve_dtype(dtype)  # ArgumentError naming dtype


def check_flag(name: str, value) -> None:
    """ArgumentError naming `name` unless `value` is True or False: a string such as "no" would count as true."""
    if not isinstance(value, bool):
        raise ArgumentError(name, f"expected True or False, got {value!r}")


def integral(value):
    """`value` as a Python int where it is an integer of another type (numpy's int64 from a sweep, a torch
    integer's item), so that the checks and the JSON written take it as the int it is; anything else (a bool
    included) unchanged, for the checks to refuse by name."""
    import numbers

    if isinstance(value, numbers.Integral) and not isinstance(value, bool | int):
        return int(value)
    return value


def real(value):
    """`value` as a Python float where it is a real number of another type (numpy's float32 or int64 from a
    sweep); a Python int or float, a bool and anything else unchanged, for the checks to take or refuse by name."""
    import numbers

    if isinstance(value, numbers.Real) and not isinstance(value, bool | int | float):
        return float(value)
    return value


def _whole(name: str, value, least: int, optional: bool, most: int | None = None) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least or most is not None and value > most:
        bound = "a positive integer" if least == 1 else f"an integer of at least {least}"
        bound += f" and at most {most}" if most is not None else ""
        raise ArgumentError(name, f"expected {bound}{' or None' if optional else ''}, got {value!r}")


def check_model_weights(model, needs: str = "verifying a config") -> None:
    """ArgumentError naming `model` when it is an amk Model loaded with weights=False: correctness compares the
    program's logits with eager transformers on the model's weights, which such a model does not hold, and a
    trial of it would read as an incorrect config. `needs`: what the caller does with them, for the message."""
    from amk.models import Model

    if isinstance(model, Model) and model.eager is None:
        raise ArgumentError("model", f"{model.name!r} was loaded with weights=False: {needs} needs its weights; "
                                     "load it with amk.load_model(name_or_path), or pass the name or path")


def check_max_seq(max_seq) -> None:
    """ArgumentError naming max_seq unless it is None (the model's context, at most 2048) or a positive int: one
    message for every command that takes it."""
    _whole("max_seq", max_seq, 1, optional=True)


def _name_limit(path: Path) -> int:
    """The longest file name, in bytes, of the file system holding `path`'s nearest existing folder (255 where
    that cannot be asked)."""
    whole = path if path.is_absolute() else Path.cwd() / path
    for folder in (whole, *whole.parents):
        try:
            if folder.is_dir():
                return int(os.pathconf(folder, "PC_NAME_MAX"))
        except (OSError, ValueError):  # a name too long to look up, or no such limit here
            continue
    return 255


def user_path(path):
    """`path` as a Path with a leading ~ or ~user expanded, as every path argument takes it (the shell expands
    only an unquoted one; a Python or MCP caller's string reaches us as written); None stays None. Run
    check_path_name on it first: a ~ of a user this machine does not know raises RuntimeError here."""
    return None if path is None else Path(os.fspath(path)).expanduser()


def unknown_home(text: str) -> str:
    """What is wrong with a path whose ~user pathlib cannot expand (a RuntimeError there)."""
    return f"its ~ names no user of this machine ({text.split('/', 1)[0][1:]!r})"


def check_path_name(argument: str, path) -> None:
    """ArgumentError naming `argument` for a path the file system takes as no name at all: one holding a NUL byte,
    one it refuses to look up (a component past its length limit, a directory on the way that cannot be
    searched), or one starting with ~ of a user this machine does not know, where a file check would raise a bare
    ValueError, OSError or RuntimeError."""
    text = os.fspath(path)
    shown = repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text)} characters)"
    if "\0" in text:
        raise ArgumentError(argument, f"{shown} holds a NUL byte, which no file name can; name a file")
    try:
        path = Path(text).expanduser()
    except RuntimeError as e:  # ~name of a user this machine does not know
        raise ArgumentError(argument, f"{shown}: {unknown_home(text)}; name a file") from e
    limit = _name_limit(path)
    for part in path.parts:  # also under a folder not made yet, where the lookup stops at that folder
        if len(os.fsencode(part)) > limit:
            raise ArgumentError(argument, f"{shown}: {os.strerror(errno.ENAMETOOLONG)} (a name of "
                                          f"{len(os.fsencode(part))} bytes, past the file system's {limit}); name a "
                                          "file")
    try:
        path.exists()
    except OSError as e:  # ENOENT and ENOTDIR are no error here: exists() says False for them
        raise ArgumentError(argument, f"{shown}: {e.strerror or e}; name a file") from e


def check_corpus(corpus) -> None:
    """`corpus`: None, or a tuning-record file that may not exist yet; ArgumentError when it names a directory or
    another file that is not a regular one (a FIFO, whose read would block), is no path at all, or is a non-empty
    file with no readable tuning record (foreign_corpus): read as a corpus of no records, it would start propose
    from the defaults and calibrate evaluate from nothing, with a warning a line."""
    if corpus is not None and (not isinstance(corpus, str | os.PathLike) or isinstance(corpus, bytes)):
        raise ArgumentError("corpus", f"expected a file path or None, got {type(corpus).__name__} ({corpus!r:.60})")
    if corpus is not None and not str(corpus).strip():  # Path("") is the working directory
        raise ArgumentError("corpus", "empty; name a file (default corpus.jsonl)")
    if corpus is None:
        return
    check_path_name("corpus", corpus)
    path = Path(corpus).expanduser()
    if path.is_dir():
        raise ArgumentError("corpus", f"{str(corpus)!r} is a directory; name a file (default corpus.jsonl)")
    if path.exists() and not path.is_file():
        # checked before any read: opening a FIFO blocks until a writer comes, which may be never
        raise ArgumentError("corpus", f"{str(corpus)!r} is not a regular file (a device, a FIFO or a socket); name a "
                            "file (default corpus.jsonl)")
    foreign = foreign_corpus(corpus)
    if foreign is not None:
        raise ArgumentError("corpus", f"{str(corpus)!r} holds no readable tuning record ({foreign}): not a corpus")


def append_refusal(path: Path) -> str | None:
    """Why `path` cannot be opened for appending (the OSError's words), or None; a file the probe made is removed,
    so that a command refused later leaves nothing behind. For what the access bits do not tell: /proc, a
    read-only bind mount as root, a symlink loop."""
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        return str(e.strerror or e)
    if not existed:  # through a dangling symbolic link the probe made the file it names: that goes, the link stays
        made = path.resolve() if path.is_symlink() else path
        made.unlink(missing_ok=True)
    return None


def same_file(a, b) -> bool:
    """Whether two paths name one file (after ~ and symlinks; a symlink loop, which names no file, compared as
    written: the command that opens it refuses it by name)."""
    def where(p) -> Path:
        try:
            p = Path(p).expanduser()
            return p.resolve()
        except (RuntimeError, OSError):  # a link loop, or ~ of an unknown user: as written
            return Path(p).absolute()
    return where(a) == where(b)


class LoopFile(str, Enum):
    """What an existing file holds, by its first line: the two files a loop appends to."""

    RESULTS = "a results.tsv"
    CORPUS = "a corpus of tuning records"


def loop_file_kind(path) -> LoopFile | None:
    """Whether the file at `path` is a results.tsv (its first line the results header) or a corpus (its first line
    a tuning record), read from its first line only; None for anything else, an empty or absent file included."""
    from amk.flywheel.results import starts_as_header

    try:
        with open(Path(path).expanduser(), "rb") as f:
            first = f.readline(1 << 20).decode("utf-8", errors="replace").rstrip("\r\n")
    except OSError:
        return None
    if starts_as_header(first):
        return LoopFile.RESULTS
    try:
        record = json.loads(first)
    except ValueError:
        return None
    return LoopFile.CORPUS if isinstance(record, dict) and "schedule_id" in record and "config" in record else None


def foreign_corpus(path, scan_bytes: int = 1 << 20) -> str | None:
    """What shows that the existing, non-empty file at `path` is not a corpus: none of its lines in the first
    `scan_bytes` is a tuning record (a corpus torn by a crash still holds whole records); None for a corpus, or an
    empty or absent file. A results.tsv is refused before this is asked, naming what it is."""
    from amk.flywheel.records import TuningRecord

    first, left = None, scan_bytes
    try:  # line by line: evaluate() asks this of a loop's corpus every trial, and its first line is a record
        with open(Path(path).expanduser(), "rb") as f:
            while left > 0 and (raw := f.readline(left)):
                text = raw.decode("utf-8-sig" if left == scan_bytes else "utf-8", errors="replace")
                left -= len(raw)
                line = text.rstrip("\r\n")
                if not line.strip():
                    continue
                first = line if first is None else first
                try:
                    TuningRecord.from_dict(json.loads(line))
                    return None
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        return None
    return None if first is None else f"its first line: {first[:60]!r}"


def check_output_file(argument: str, path) -> None:
    """`path` (the loop's results or corpus) must be a file to append to, or not exist yet in a directory:
    ArgumentError naming `argument` before any trial, since the first append would fail only after the first
    measurement."""
    check_path_name(argument, path)
    path = Path(path).expanduser()
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise ArgumentError(argument, f"{str(path)!r} is {kind}, not a file to append to; name a file")
    if path.parent.exists() and not path.parent.is_dir():
        raise ArgumentError(argument, f"{str(path)!r}: {path.parent} is not a directory")


def search_settings(settings):
    """`settings` as a SearchSettings whose fields are in range: None is the defaults, a dict names some of its
    fields (the others keep their defaults). ArgumentError naming `settings`, or the field, for anything else: a
    dict was once used as it was, read as the defaults when empty and failing after the first trial otherwise, and
    a round measuring no candidate would end the search after its first trial as if every candidate were
    exhausted."""
    import dataclasses

    from amk.harness.search.policy import SearchSettings

    if settings is None:
        return SearchSettings()
    if isinstance(settings, dict):
        known = [f.name for f in dataclasses.fields(SearchSettings)]
        for key in settings:
            if key not in known:
                raise ArgumentError(f"settings.{key}", f"unknown search setting; expected some of {', '.join(known)}")
        settings = SearchSettings(**settings)
    if not isinstance(settings, SearchSettings):
        raise ArgumentError("settings", f"expected a SearchSettings (amk.harness.search.policy), a dict of its "
                                        f"fields or None, got {type(settings).__name__} ({settings!r:.60})")
    settings = dataclasses.replace(settings, **{f: integral(getattr(settings, f)) for f in (
        "population", "measure_per_round", "parents", "remeasure_every")},  # a numpy integer is the int it holds
        epsilon=real(settings.epsilon))
    # a round's candidates are generated and ranked in memory: 2**64 of them would never end a round
    _whole("settings.population", settings.population, 0, optional=False, most=MAX_ROUND)
    _whole("settings.measure_per_round", settings.measure_per_round, 1, optional=False, most=MAX_ROUND)
    _whole("settings.parents", settings.parents, 0, optional=False, most=MAX_ROUND)
    _whole("settings.remeasure_every", settings.remeasure_every, 1, optional=False)
    eps = settings.epsilon
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 <= eps <= 1:  # NaN fails the range
        raise ArgumentError("settings.epsilon", f"expected a probability from 0 to 1, got {eps!r}")
    check_flag("settings.neighbours", settings.neighbours)
    return settings


def check_loop_arguments(budget, minutes, workers, builders, max_reverts, cases, dtype, results, corpus,
                         max_seq=None, progress=None, resume=False, evaluate=None, predictor=None,
                         should_stop=None, seed=0) -> None:
    """Every argument of loop() a caller can get wrong, checked before the results file is opened.
    Raises ArgumentError naming the first one wrong."""
    _whole("budget", budget, 1, optional=True)
    from amk.flywheel.results import COUNT_LIMIT

    if budget is not None and budget >= COUNT_LIMIT:  # its trials could not be numbered in results.tsv
        raise ArgumentError("budget", f"expected fewer than 2**63 trials, got {budget}: leave it unset for no bound")
    check_flag("resume", resume)
    check_max_seq(max_seq)
    if progress is not None and not callable(progress):
        raise ArgumentError("progress", f"expected a callable taking a dict, or None, got {progress!r}")
    for name, path in (("results", results), ("corpus", corpus)):
        if not isinstance(path, str | Path) or not str(path):
            raise ArgumentError(name, f"expected a file path, got {path!r}")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int | float)
                                or not math.isfinite(minutes) or minutes <= 0):
        raise ArgumentError("minutes", f"expected a positive finite number of minutes or None, got {minutes!r}")
    _whole("workers", workers, 1, optional=False)
    if isinstance(seed, int) and not isinstance(seed, bool) and seed + workers - 1 >= SEED_LIMIT > seed:
        # worker i searches with seed + i: refused here, before any worker starts and writes a trial
        raise ArgumentError("seed", f"{workers} workers take seeds {seed} to seed + {workers - 1}, past 2**63 - 1: "
                                    f"give a seed of at most {SEED_LIMIT - workers}")
    if budget is not None and workers > budget:  # a worker with a share of 0 trials would be refused mid-run
        raise ArgumentError("workers", f"{workers} workers share a budget of {budget} trials: give each at least one trial")
    _whole("builders", builders, 0, optional=True)
    cores = os.cpu_count() or 1
    if builders is not None and builders > 4 * cores:  # each one a process: more would only thrash
        raise ArgumentError("builders", f"{builders} builder processes on {cores} cores: give at most {4 * cores}")
    _whole("max_reverts", max_reverts, 1, optional=False)
    check_cases(cases)
    for name, fn in (("evaluate", evaluate), ("predictor", predictor), ("should_stop", should_stop)):
        if fn is not None and not callable(fn):
            raise ArgumentError(name, f"expected a callable or None, got {fn!r:.60}")
        if fn is not None and workers > 1:  # Ray workers each run the default: this one would go unused, unseen
            raise ArgumentError(name, f"is not passed to Ray workers: with workers={workers} each worker runs "
                                      "the default; give workers=1 to use it")
    check_dtype(dtype)
    check_output_file("results", results)
    check_output_file("corpus", corpus)
    check_output_file("results", Path(str(results) + ".claims"))  # flywheel/claims.py claims_path
    if same_file(results, corpus):  # a results row and a tuning record interleaved leave neither readable
        raise ArgumentError("corpus", f"names the same file as results ({str(results)!r}): give each its own")
    if same_file(Path(str(results) + ".claims"), corpus):  # claims and records interleaved: neither readable
        raise ArgumentError("corpus", f"names the claims file beside results ({str(results)!r}.claims), which the "
                                      "loop writes itself: give the corpus its own file")
    if loop_file_kind(corpus) == LoopFile.RESULTS:  # the two swapped: a record appended to a results file
        raise ArgumentError("corpus", f"{str(corpus)!r} is a results.tsv (its first line is the results header), not "
                                      "a corpus of tuning records: give it as results, and the corpus its own file")
    foreign = foreign_corpus(corpus)
    if foreign is not None:  # the first append would write records into someone's file, and nothing reads it after
        raise ArgumentError("corpus", f"{str(corpus)!r} holds no readable tuning record ({foreign}): not a corpus "
                                      "(or one whose every record was edited by hand), which this would append to; "
                                      "name another file")
