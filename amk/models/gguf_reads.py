"""One parse of a GGUF file for the three transformers calls that load it (config, weights, tokenizer).

transformers' load_gguf_checkpoint builds a gguf.GGUFReader for each call, and each reader parses the whole
metadata again (SmolLM2's vocabulary and merges: seconds a time); its weights map builds gguf's tensor name map
afresh for every module of the model (hundreds of times, one map). Within `parsed_once()` each reader and each
map is made once and handed out again: transformers only reads them. Loads in threads share one patch (a count
of the blocks open), so that none restores the module while another still loads.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_state: dict = {"open": 0}


@contextlib.contextmanager
def parsed_once() -> Iterator[None]:
    try:
        import gguf
    except ImportError:  # no GGUF support installed: transformers says so itself
        yield
        return
    with _lock:
        if _state["open"] == 0:
            _patch(gguf)
        _state["open"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["open"] -= 1
            if _state["open"] == 0:
                gguf.GGUFReader, gguf.get_tensor_name_map = _state.pop("originals")
                _state.pop("made", None)


def _patch(gguf) -> None:
    reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    made: dict = {}
    _state["originals"], _state["made"] = (reader_cls, name_map), made

    def reader(path, mode="r"):
        key = ("reader", os.fspath(path), mode)
        with _lock:
            if key not in made:
                made[key] = reader_cls(path, mode)
            return made[key]

    def tensor_name_map(arch, n_blocks):
        key = ("names", arch, n_blocks)
        with _lock:
            if key not in made:
                made[key] = name_map(arch, n_blocks)
            return made[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, tensor_name_map
