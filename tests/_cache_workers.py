"""The processes test_cache.py spawns. A spawned worker imports the module that defines its target, and
`import amk.cache` runs amk/__init__.py, which imports torch (about 2 s of start-up per worker on two cores,
the whole cost of the concurrency tests). amk/cache.py imports only the standard library at module level, so
the workers load that file by itself and keep torch out of their import path."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

_NAME = "_amk_cache_standalone"


def cache_module():
    """amk/cache.py, loaded from the installed package's folder without running amk/__init__.py."""
    if _NAME not in sys.modules:
        root = importlib.util.find_spec("amk").submodule_search_locations[0]  # finds amk without importing it
        spec = importlib.util.spec_from_file_location(_NAME, Path(root) / "cache.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = mod
        spec.loader.exec_module(mod)
    return sys.modules[_NAME]


def payload(i: int) -> bytes:
    return bytes([i % 256]) * (1000 * (i + 1) + 7)


def writer(root: str, key: str, i: int, barrier) -> None:
    c = cache_module().Cache(root, memory_items=0)
    barrier.wait()
    for _ in range(25):
        c.put("kernel", key, payload(i))


def creator(root: str, key: str, counter: str, barrier, results) -> None:
    def create() -> bytes:
        with open(counter, "a") as f:
            f.write("1\n")
        time.sleep(0.3)
        return b"built-once"

    c = cache_module().Cache(root)
    barrier.wait()
    results.put(c.get_or_create("program", key, create))
