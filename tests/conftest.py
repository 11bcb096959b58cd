"""Parallel test runs (pytest-xdist, `-n auto --dist loadfile` in pyproject's addopts).

On a CPU-only machine of two or more cores (CI's has two) the test files are spread over up to four worker
processes, a file's tests kept together so that module fixtures load once; where CUDA is available the tests
run in one process, as before: the GPU tests time kernels and share the device. `-n 0` runs in one process
anywhere. Each worker computes with one torch thread (and so do the processes its tests start): two workers
whose thread pools both span the cores oversubscribe them, and the ReferenceVM's thousands of small ops per
step then slow down many times over."""

from __future__ import annotations

import logging
import os

import pytest

MAX_WORKERS = 4

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported here, and for every process a test starts
    import torch

    torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config):
    import torch

    if torch.cuda.is_available():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, MAX_WORKERS) if cores >= 2 else 0


# The longest test files on CI's 2-core machine (pytest --durations, 2026-12-07), longest first. With one file to a
# worker at a time, a long file collected last runs alone at the end while the other worker idles; handed out
# first, the short files fill in around them.
LONGEST_FILES = ("test_search.py", "test_kernel_compiles.py", "test_property_schedules.py", "test_harness_doc.py",
                 "test_reference_vm.py", "test_cli_contract.py", "test_ranking_model.py", "test_harness_loop.py",
                 "test_mcp_stop.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _amk_logger_restored():
    """The `amk` logger as it was before each test. An in-process command line (tests/_cli.py) gives it a stderr
    handler of its own and stops it propagating; without this a later test's caplog saw nothing of its warnings on
    pytest 9.0.3 (9.2.0 passed), depending on which tests ran before it in the process."""
    log = logging.getLogger("amk")
    handlers, level, propagate = log.handlers[:], log.level, log.propagate
    yield
    log.handlers[:], log.level, log.propagate = handlers, level, propagate
