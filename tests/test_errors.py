"""AMK's typed errors cross process boundaries (a process pool, a Ray worker) with their message and fields."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from amk.cache import CacheDirError, CacheFullError
from amk.harness.commands import UsageError
from amk.schedule import errors as E

ERRORS = [
    E.ArgumentError("dtype", "'bf17' is not one of fp32, fp16, bf16"),
    E.ConfigError.of([E.ConfigProblem("$.x", "unknown key"), E.ConfigProblem("$.y", "unknown key")]),
    E.CheckpointError("/m/config.json", "not JSON", field="hidden_size"),
    E.ContextError("need 9 positions", needed=9, max_seq=8),
    E.UnknownModelError("nosuch", ["toy"]),
    E.UnknownTargetError("nosuch", ["h200"]),
    E.UnsupportedModelError("sliding_window", "layer 3"),
    E.LoweringError("matvec.qkv.head_splits", "needs heads_per_task=1"),
    E.DeadlockError("no runnable task", tasks=(3, 4), buffers=("x",)),
    E.VmError("time-out", task=7, code=2),
    E.EnvironmentProblem("no CUDA"),
    CacheDirError(Path("/c"), "not writable"),
    CacheFullError(Path("/c"), Path("/c/program/ab.json"), "No space left on device"),
    UsageError("--out: is a directory"),
]


@pytest.mark.parametrize("err", ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_pickles_with_its_message_and_fields(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and back.args == err.args
    assert vars(back) == vars(err)


def _raise_argument_error():
    raise E.ArgumentError("dtype", "'bf17' is not one of fp32, fp16, bf16")


def test_an_error_raised_in_a_spawned_worker_reaches_the_caller():
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        with pytest.raises(E.ArgumentError, match="dtype: 'bf17'") as e:
            pool.submit(_raise_argument_error).result(timeout=120)
    assert e.value.argument == "dtype"
