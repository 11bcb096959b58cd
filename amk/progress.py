"""Progress on stderr for the long steps (a model load, a GGUF conversion, a compile, verify cases, a loop's
trials), silenced by `amk -q`.

Two context managers, both safe to call from library code: `status(description)` around one step of unknown length
(a spinner with the elapsed time), and `bar(total, description, unit)` around a counted one (a bar; `total=None`
counts without an end). They draw with rich only where stderr is a terminal and the process is not quiet;
elsewhere (a log file, a pipe, an agent reading stderr) each finished step leaves one `amk:` log line
instead, and a counted step also one on the way at most every HEARTBEAT_S, which `-q` hides with every
other info line. Nothing is ever written to stdout, which carries
`--json`'s one object.

    from amk.progress import bar, status

    with status("loading llama-3.2-1b"):
        model = load_model(...)
    with bar(total=budget, description="trials", unit="trial") as b:
        for ...:
            b.advance(description=f"trial {n}: {status}")
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("amk.progress")

_state: dict = {"quiet": False, "tqdm_init": None}


def set_quiet(quiet: bool) -> None:
    """Silence (True) or allow again (False) progress output: ours, and the progress bars of the dependencies
    that draw their own (transformers' weight loading, the GGUF conversion, huggingface_hub). Those draw only
    where ours would, on a terminal: to a log or a pipe a bar is hundreds of carriage-return updates, where
    ours leave one line a step."""
    _state["quiet"] = bool(quiet)
    _dependency_bars(enabled=_live())


def is_quiet() -> bool:
    return _state["quiet"]


def _dependency_bars(enabled: bool) -> None:
    # transformers and huggingface_hub have a switch for their own bars; the GGUF conversion calls tqdm
    # directly, so tqdm's own default becomes disable=True while quiet (a caller may still pass disable=False).
    # transformers is not imported for this (about 1 s, which commands such as targets never need otherwise):
    # when it is imported later it takes its switch from huggingface_hub's, set below.
    tlog = sys.modules.get("transformers.utils.logging")
    if tlog is not None:
        (tlog.enable_progress_bar if enabled else tlog.disable_progress_bar)()
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if enabled else disable_progress_bars)()
    with contextlib.suppress(ImportError):
        import tqdm.std

        original = _state.get("tqdm_init")
        if not enabled and original is None:
            _state["tqdm_init"] = vars(tqdm.std.tqdm)["__init__"]  # the entry itself, as dependency_bars_off_... keeps it
            tqdm.std.tqdm.__init__ = functools.partialmethod(tqdm.std.tqdm.__init__, disable=True)
        elif enabled and original is not None:
            tqdm.std.tqdm.__init__ = original
            _state["tqdm_init"] = None


@contextlib.contextmanager
def dependency_bars_off_unless_drawing() -> Iterator[None]:
    """Within the block, the dependencies' own bars (transformers' weight loading, the GGUF conversion's tqdm) only
    where AMK's would draw; each switch turned off here is turned back on after, so that a caller's own use of
    transformers or tqdm (a notebook's) is left as it was. For the Python API, which never calls set_quiet."""
    if draws():
        yield
        return
    tlog = sys.modules.get("transformers.utils.logging")
    bars_off = tlog is not None and tlog.is_progress_bar_enabled()
    if bars_off:
        tlog.disable_progress_bar()
    tqdm_std = None
    if _state.get("tqdm_init") is None:
        with contextlib.suppress(ImportError):
            import tqdm.std as tqdm_std

            # the class's own entry (tqdm wraps __init__ in a partialmethod for its TQDM_* variables): put back as it was
            original = vars(tqdm_std.tqdm)["__init__"]
            tqdm_std.tqdm.__init__ = functools.partialmethod(tqdm_std.tqdm.__init__, disable=True)
    try:
        yield
    finally:
        if bars_off:
            tlog.enable_progress_bar()
        if tqdm_std is not None:
            tqdm_std.tqdm.__init__ = original


def draws() -> bool:
    """Whether progress is drawn now (not quiet, and stderr a terminal): for a dependency's own bars."""
    return _live()


@functools.lru_cache(maxsize=1)
def _console():
    from rich.console import Console

    return Console(file=sys.stderr)


def _live() -> bool:
    """Whether to draw: not quiet, and stderr is a terminal (rich's own test, which honours FORCE_COLOR/TERM)."""
    if _state["quiet"]:
        return False
    try:
        return _console().is_terminal and _console().file is sys.stderr
    except Exception:  # a closed or replaced stderr: no drawing
        return False


@contextlib.contextmanager
def status(description: str) -> Iterator[None]:
    """A spinner with `description` and the elapsed time while the block runs; then one info log line with
    the time it took (shown on stderr unless -q)."""
    t0 = time.perf_counter()
    if _live():
        with _console().status(f"{description} ..."):
            yield
    else:
        yield
    log.info("%s: %.1f s", description, time.perf_counter() - t0)


HEARTBEAT_S = 10.0  # without a drawn bar, a step advanced this long after the last line logs where it stands


class Bar:
    """Handle of a running bar: `advance(n, description)` moves it on (and may retitle it). Without a drawn
    bar (stderr not a terminal), an advance at least HEARTBEAT_S after the bar's start or its last line logs
    one info line (the description, units done of the total, the elapsed time), so that a slow step (verify
    cases of a large model on a CPU, minutes) shows it is moving to a log or an agent reading stderr."""

    def __init__(self, progress, task, description: str, total: int | None, unit: str = "step") -> None:
        self._progress, self._task = progress, task
        self.description, self.total, self.done, self.unit = description, total, 0, unit
        self._t0 = self._last = time.perf_counter()

    def advance(self, n: int = 1, description: str | None = None) -> None:
        self.done += n
        if description is not None:
            self.description = description
        if self._progress is not None:
            self._progress.update(self._task, advance=n, description=self.description)
            return
        now = time.perf_counter()
        if now - self._last >= HEARTBEAT_S:
            self._last = now
            of = f"/{self.total}" if self.total is not None else ""
            log.info("%s (%d%s %ss done, %.1f s)", self.description, self.done, of, self.unit, now - self._t0)


@contextlib.contextmanager
def bar(total: int | None, description: str, unit: str = "step") -> Iterator[Bar]:
    """A bar over `total` units (None: a count without an end) while the block runs; then one info log
    line: how many units in how long."""
    t0 = time.perf_counter()
    if not _live():
        b = Bar(None, None, description, total, unit)
        yield b
    else:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        else:
            columns += [TextColumn("{task.completed} " + unit + "s")]
        columns.append(TimeElapsedColumn())
        with Progress(*columns, console=_console(), transient=True) as progress:
            b = Bar(progress, progress.add_task(description, total=total), description, total, unit)
            yield b
    log.info("%s: %d %s%s in %.1f s", description, b.done, unit, "" if b.done == 1 else "s",
             time.perf_counter() - t0)


def progress_line(p: dict) -> str:
    """A loop trial's progress in words: status, id, its latency and the best so far in us, and whether they
    were measured or predicted (the latency's kind)."""
    lat = f"{p['latency_us']:.2f} us" if p.get("latency_us") is not None else "-"
    best = f"{p['best_latency_us']:.2f} us" if p.get("best_latency_us") is not None else "-"
    kind = f" ({p['kind']})" if p.get("kind") and p.get("latency_us") is not None else ""
    return f"trial {p['trial']:>4} {p['status']:<9} {p['schedule_id']} latency {lat}{kind} best {best}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def trial_description(p: dict, width: int = 140) -> str:
    """A loop trial's change and outcome for its one console line, at most `width` characters and on one line
    (a crash's message may span many): a long change (a mutation or crossover of several knobs) is cut first, to
    no less than 40 characters, then its outcome (p["outcome"], what the measurement decided); results.tsv holds
    the full text."""
    text, outcome = " ".join(p["description"].split()), " ".join((p.get("outcome") or "").split())
    if len(text) <= width:
        return text
    if outcome and text.endswith(": " + outcome):
        change = text[: -len(outcome) - 2]
        keep = min(len(outcome), width - 42)
        return _cut(change, width - keep - 2) + ": " + _cut(outcome, keep)
    return _cut(text, width)


def print_trial_line(p: dict) -> None:
    """A loop's `progress` callback that prints one line a trial on stderr (what `amk loop` prints; nothing under
    -q): `[  12.3s] trial 4 keep ...`, and `[  12.3s] [worker 1] trial 4 keep ...` for a trial of a loop of several
    workers (its dict carries `worker`; the seconds are that worker's)."""
    if is_quiet():  # -q: the summary only
        return
    worker = f"[worker {p['worker']}] " if p.get("worker") is not None else ""
    print(f"[{p['elapsed_s']:7.1f}s] {worker}{progress_line(p)}  {trial_description(p)}", file=sys.stderr,
          flush=True)
