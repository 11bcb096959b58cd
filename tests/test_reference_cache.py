"""A warm reference cache means a trial does not run transformers again (issue: one cache)."""

import pytest

import amk
from amk.eval import oracle


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_warm_reference_cache_skips_the_eager_model(tmp_path, monkeypatch, dtype):
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path))
    first = amk.evaluate("toy-2L", "cpu-sim", {}, device="cpu", dtype=dtype)
    assert first["correct"], first
    assert first["cache"]["by_kind"]["reference"]["writes"] > 0

    def no_eager(*a, **k):
        raise AssertionError("the eager model ran although every case was cached")

    monkeypatch.setattr(oracle, "eager_decode", no_eager)
    # another config: a different program, the same model and cases
    # (the same tasks placed otherwise: the numerics, and so the cases each program needs, are the same)
    second = amk.evaluate("toy-2L", "cpu-sim", {"sm": {"assignment": "round_robin"}}, device="cpu", dtype=dtype)
    assert second["correct"], second
    assert second["cache"]["by_kind"]["reference"]["misses"] == 0
