"""Tests for amk.cache: integrity, concurrency, keys, memory layer, stats."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _cache_workers import creator, payload, writer

from amk import cache as cache_mod
from amk.cache import (
    Cache,
    CacheError,
    baseline_key,
    default_cache,
    kernel_key,
    last_run_stats,
    program_key,
    reference_key,
)

# torch is imported inside the tensor tests only; the spawned workers (_cache_workers.py) do not import this
# module, nor amk/__init__.py, which imports torch: each worker's start-up stays well under a second.

K = Cache.key("kernel", name="k")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("AMK_CACHE_DISABLE", raising=False)


# ---- integrity --------------------------------------------------------------------------------
def test_roundtrip_and_file_layout(tmp_path):
    c = Cache(tmp_path)
    c.put("kernel", K, b"hello")
    path = tmp_path / "kernel" / K[:2] / f"{K}.bin"
    assert c.path("kernel", K) == path and path.exists()
    assert Cache(tmp_path).get("kernel", K) == b"hello"  # fresh object: from the file layer
    assert c.get("kernel", Cache.key("kernel", name="other")) is None


def test_concurrent_writers_leave_one_whole_payload(tmp_path):
    ctx = mp.get_context("spawn")
    n = 6
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=writer, args=(str(tmp_path), K, i, barrier)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    got = Cache(tmp_path, memory_items=0).get("kernel", K)
    assert got in {payload(i) for i in range(n)}
    assert list(tmp_path.rglob("*.tmp")) == []


@pytest.mark.parametrize("damage", ["truncate", "bitflip_payload", "bitflip_header", "empty"])
def test_damaged_file_detected_removed_and_regenerated(tmp_path, damage, caplog):
    Cache(tmp_path).put("program", K, b"x" * 500)
    path = Cache(tmp_path).path("program", K)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "bitflip_payload":
        data[-10] ^= 0x04
    elif damage == "bitflip_header":
        data[0] ^= 0x01
    else:
        data = bytearray()
    path.write_bytes(bytes(data))

    c = Cache(tmp_path)
    calls = []
    with caplog.at_level(logging.WARNING, logger="amk.cache"):
        out = c.get_or_create("program", K, lambda: calls.append(1) or b"fresh")
    assert out == b"fresh" and calls == [1]
    assert Cache(tmp_path).get("program", K) == b"fresh"
    assert c.stats()["program"] == {"hits": 0, "misses": 1, "writes": 1, "corrupt": 1}
    assert any("corrupt" in r.message and K in r.message for r in caplog.records)


@pytest.mark.parametrize("moved", ["another key", "another kind"])
def test_an_intact_entry_under_another_keys_name_is_corrupt(tmp_path, moved, caplog):
    other = "b" * 64
    Cache(tmp_path).put("program", other, b"the other config's program")
    src = Cache(tmp_path).path("program", other)
    dst = Cache(tmp_path).path("program" if moved == "another key" else "kernel", K)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    kind = "program" if moved == "another key" else "kernel"
    c = Cache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="amk.cache"):
        assert c.get_or_create(kind, K, lambda: b"rebuilt") == b"rebuilt"
    assert c.stats()[kind]["corrupt"] == 1 and Cache(tmp_path).get(kind, K) == b"rebuilt"
    assert any("another key's entry" in r.message for r in caplog.records)
    assert Cache(tmp_path).get("program", other) == b"the other config's program"  # the source is untouched


_REBUILD = """
import logging, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a read of /dev/zero ends in MemoryError, not the machine
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
from amk.cache import Cache
c = Cache(sys.argv[1])
assert c.get_or_create("program", sys.argv[2], lambda: b"rebuilt") == b"rebuilt"
print("corrupt", c.stats()["program"]["corrupt"])
"""


@pytest.mark.parametrize("entry", ["fifo", "link to /dev/zero", "link to a fifo"])
def test_an_entry_that_is_no_regular_file_is_removed_and_rebuilt_without_reading_it(tmp_path, entry):
    # read, a link to /dev/zero filled the memory until the process was killed, and a FIFO blocked for a writer:
    # run in a process of its own with a time and memory limit, so that a regression fails instead of hanging
    c = Cache(tmp_path)
    c.put("program", K, b"built")
    path = c.path("program", K)
    path.unlink()
    if entry == "fifo":
        os.mkfifo(path)
    elif entry == "link to a fifo":
        os.mkfifo(tmp_path / "pipe")
        path.symlink_to(tmp_path / "pipe")
    else:
        path.symlink_to("/dev/zero")
    p = subprocess.run([sys.executable, "-c", _REBUILD, str(tmp_path), K], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    assert "corrupt 1" in p.stdout and "not a regular file" in p.stdout and str(path) in p.stdout, p.stdout
    assert path.is_file() and not path.is_symlink() and Cache(tmp_path).get("program", K) == b"rebuilt"


_LABEL_AND_STATS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from amk.cache import Cache, _read_label, last_run_stats
c = Cache(sys.argv[1])
print(_read_label(c.path("program", sys.argv[2])), last_run_stats(sys.argv[1]))
"""


def test_a_label_or_stats_file_that_is_no_regular_file_is_passed_over(tmp_path):
    # a FIFO label blocked `amk cache ls` for a writer, and stats linked to /dev/zero were read to the end
    c = Cache(tmp_path)
    c.put("program", K, b"built", label={"model": "toy"})
    label = c.label_path("program", K)
    label.unlink()
    os.mkfifo(label)
    (tmp_path / cache_mod._STATS_FILE).symlink_to("/dev/zero")
    p = subprocess.run([sys.executable, "-c", _LABEL_AND_STATS, str(tmp_path), K], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["None", "None"], (p.stdout, p.stderr[-2000:])


def test_a_directory_where_an_entry_belongs_is_named_and_left_alone(tmp_path):
    c = Cache(tmp_path)
    path = c.path("program", K)
    path.mkdir(parents=True)
    (path / "kept").write_text("a user's file")
    with pytest.raises(cache_mod.CacheDirError, match="Is a directory"):
        c.get_or_create("program", K, lambda: b"rebuilt")
    assert (path / "kept").read_text() == "a user's file"


def test_an_entry_of_the_older_format_is_rebuilt_and_logged_at_info(tmp_path, caplog):
    import hashlib

    path = Cache(tmp_path).path("kernel", K)
    path.parent.mkdir(parents=True)
    body = b"cubin of format 1"
    path.write_bytes(cache_mod._HEADER.pack(b"AMKC", 1, len(body), hashlib.sha256(body).digest()) + body)
    c = Cache(tmp_path)
    with caplog.at_level(logging.INFO, logger="amk.cache"):
        assert c.get_or_create("kernel", K, lambda: b"cubin") == b"cubin"
    removed = [r for r in caplog.records if "cache entry removed" in r.message]
    assert [r.levelno for r in removed] == [logging.INFO] and "stale" in removed[0].message


def test_a_discarded_entry_takes_its_label_and_clear_removes_labels_left_alone(tmp_path):
    c = Cache(tmp_path)
    c.put("baseline", K, b"{}", label={"model": "toy"})
    c.path("baseline", K).write_bytes(b"torn")
    assert Cache(tmp_path).get("baseline", K) is None
    assert not c.label_path("baseline", K).exists()
    orphan = c.label_path("program", "c" * 64)  # an older version's discard left it
    orphan.parent.mkdir(parents=True)
    orphan.write_text('{"model": "toy"}')
    c.put("program", K, b"kept", label={"model": "toy"})
    assert Cache(tmp_path).clear() == 1
    assert not orphan.exists() and not c.label_path("program", K).exists()


def test_validate_failure_is_corrupt(tmp_path):
    c = Cache(tmp_path)
    c.put("baseline", K, b"not-json")

    def must_be_json(p: bytes) -> None:
        json.loads(p)

    assert Cache(tmp_path).get("baseline", K, validate=must_be_json) is None
    assert not c.path("baseline", K).exists()


def test_create_returning_invalid_is_not_cached(tmp_path):
    c = Cache(tmp_path)
    with pytest.raises(CacheError, match="fails validation"):
        c.get_or_create_json("baseline", K, lambda: {"a": 1}, validate=lambda o: o["b"])
    assert not c.path("baseline", K).exists()


# ---- tensors ----------------------------------------------------------------------------------
def test_tensor_roundtrip_and_rejection(tmp_path):
    import torch

    c = Cache(tmp_path)
    good = {"logits": torch.arange(6, dtype=torch.float32).reshape(2, 3), "ids": torch.tensor([1, 2])}
    expect = {"logits": ((2, 3), torch.float32), "ids": ((2,), torch.int64)}
    c.put_tensors("reference", K, good)
    got = Cache(tmp_path).get_tensors("reference", K, expect)
    assert set(got) == {"logits", "ids"} and torch.equal(got["logits"], good["logits"])

    # Wrong shape expected: rejected, deleted, regenerated.
    wrong = {"logits": ((3, 2), torch.float32), "ids": ((2,), torch.int64)}
    assert Cache(tmp_path).get_tensors("reference", K, wrong) is None
    assert not c.path("reference", K).exists()
    regen = Cache(tmp_path).get_or_create_tensors(
        "reference", K, lambda: {"logits": torch.zeros(3, 2), "ids": torch.tensor([1, 2])}, wrong)
    assert regen["logits"].shape == (3, 2)

    # NaN: rejected and regenerated; a missing name likewise.
    bad = {"logits": torch.tensor([[0.0, float("nan"), 1.0], [0, 0, 0]]), "ids": torch.tensor([1, 2])}
    c2 = Cache(tmp_path / "b")
    c2.put_tensors("reference", K, bad)
    fresh = Cache(tmp_path / "b")
    assert fresh.get_tensors("reference", K, expect) is None
    assert fresh.stats()["reference"]["corrupt"] == 1
    out = fresh.get_or_create_tensors("reference", K, lambda: good, expect)
    assert torch.equal(out["logits"], good["logits"])
    assert Cache(tmp_path / "b").get_tensors("reference", K, {"logits": expect["logits"]}) is None


def test_tensor_memory_hit_returns_fresh_copy(tmp_path):
    import torch

    c = Cache(tmp_path)
    c.put_tensors("reference", K, {"x": torch.ones(4)[:2]})
    a = c.get_tensors("reference", K)
    a["x"].mul_(5)
    assert torch.equal(c.get_tensors("reference", K)["x"], torch.ones(2))


def test_tensor_memory_hits_decode_once(tmp_path, monkeypatch):
    # the search reads the same references every trial: the memory layer keeps them decoded, still checked
    # against what the caller expects, still a fresh copy each hit
    import torch

    c = Cache(tmp_path)
    c.put_tensors("reference", K, {"x": torch.arange(3.0)})
    first = c.get_tensors("reference", K)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("decoded again"))
    for _ in range(2):
        again = c.get_tensors("reference", K, {"x": ((3,), torch.float32)})
        assert torch.equal(again["x"], first["x"]) and again["x"].data_ptr() != first["x"].data_ptr()
        again["x"].zero_()
    assert c.get_tensors("reference", K, {"x": ((4,), torch.float32)}) is None  # still checked: a miss
    assert c.stats()["reference"]["hits"] == 3 and c.stats()["reference"]["corrupt"] == 1


# ---- keys -------------------------------------------------------------------------------------
HELPERS = {
    kernel_key: dict(source="__global__ void k(){}", header=b"#pragma once", knobs={"tile": 64, "warps": 4},
                     arch="sm_90a", compiler_version="12.8", kernel_name="k",
                     compile_options="-std=c++17 -I/usr/local/cuda/include"),
    program_key: dict(model_fingerprint="fp1", config_json='{"layers":2}', target="h100", dtype="bf16",
                      max_seq=2048, lowering="0123456789abcdef"),
    reference_key: dict(model_fingerprint="fp1", dtype="bf16", case_id="c0", shared_id=None),
    baseline_key: dict(gpu="H100", driver="575.1", torch_version="2.8", model_fingerprint="fp1", dtype="bf16",
                       timing_params={"iters": 100, "warmup": 10}),
}


def _changed(v):
    if isinstance(v, dict):
        return {**v, next(iter(v)): "changed"}
    if isinstance(v, bytes):
        return v + b"!"
    if isinstance(v, int):
        return v + 1
    if v is None:
        return "shared-x"
    return v + "!"


@pytest.mark.parametrize("helper", list(HELPERS), ids=lambda h: h.__name__)
def test_every_key_input_matters(helper):
    base = HELPERS[helper]
    k0 = helper(**base)
    assert k0 == helper(**base) and len(k0) == 64
    seen = {k0}
    for name in base:
        k = helper(**{**base, name: _changed(base[name])})
        assert k not in seen, name
        seen.add(k)


def test_reference_shared_id_replaces_fingerprint():
    a = reference_key("fp1", "bf16", "c0", shared_id="smollm")
    assert a == reference_key("fp2", "bf16", "c0", shared_id="smollm")
    assert a != reference_key("fp1", "bf16", "c0", shared_id="other")
    assert reference_key("smollm", "bf16", "c0") != a


def test_keys_stable_across_processes():
    here = {h.__name__: h(**kw) for h, kw in HELPERS.items()}
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_cache as t\n"
        "print(json.dumps({h.__name__: h(**kw) for h, kw in t.HELPERS.items()}))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == here


def test_key_rejects_bad_parts():
    with pytest.raises(TypeError, match="knobs"):
        Cache.key("kernel", knobs={"fn": object()})
    with pytest.raises(TypeError, match="x"):
        Cache.key("kernel", x=float("nan"))
    with pytest.raises(ValueError, match="unknown cache kind"):
        Cache.key("weights", a=1)
    assert Cache.key("kernel", a=b"\x01") == Cache.key("kernel", a="01")
    with pytest.raises(ValueError, match="hex digest"):
        Cache().path("kernel", "../../etc/passwd")


# ---- memory layer and concurrency ---------------------------------------------------------------
def test_memory_fifo_eviction(tmp_path):
    c = Cache(tmp_path, memory_items=3)
    keys = [Cache.key("kernel", i=i) for i in range(4)]
    for k in keys[:3]:
        c.put("kernel", k, k.encode())
    assert c.get("kernel", keys[0]) == keys[0].encode()  # a hit must not refresh its place
    c.put("kernel", keys[3], b"d")
    assert c.memory_keys() == [("kernel", k) for k in keys[1:]]
    c.put("kernel", keys[1], b"again")  # a re-put keeps its place too
    assert [k for _, k in c.memory_keys()] == keys[1:]


def test_threads_get_or_create_once(tmp_path):
    c = Cache(tmp_path)
    calls, lock = [], threading.Lock()

    def create() -> bytes:
        with lock:
            calls.append(1)
        time.sleep(0.05)
        return b"v"

    results = []
    threads = [threading.Thread(target=lambda: results.append(c.get_or_create("kernel", K, create)))
               for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and results == [b"v"] * 16


def test_processes_get_or_create_once(tmp_path):
    ctx = mp.get_context("spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    counter = tmp_path / "calls.txt"
    procs = [ctx.Process(target=creator, args=(str(tmp_path / "c"), K, str(counter), barrier, results))
             for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=30) for _ in range(n)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert got == [b"built-once"] * n
    assert counter.read_text().splitlines() == ["1"]


# ---- disabling, listing, stats, logging -----------------------------------------------------------
def test_disabled_kinds(tmp_path, monkeypatch):
    c = Cache(tmp_path, enabled={"kernel"})
    c.put("program", K, b"p")
    assert not c.path("program", K).exists() and c.get("program", K) is None
    calls = []
    assert c.get_or_create("program", K, lambda: calls.append(1) or b"p") == b"p"
    assert c.get_or_create("program", K, lambda: calls.append(1) or b"p") == b"p"
    assert calls == [1, 1]
    assert c.stats()["program"] == {"hits": 0, "misses": 3, "writes": 0, "corrupt": 0}

    monkeypatch.setenv("AMK_CACHE_DISABLE", "program, baseline")
    assert Cache(tmp_path).enabled == {"kernel", "reference"}
    monkeypatch.setenv("AMK_CACHE_DISABLE", "all")
    assert Cache(tmp_path).enabled == frozenset()
    monkeypatch.setenv("AMK_CACHE_DISABLE", "kernals")
    with pytest.raises(ValueError, match="kernals"):
        Cache(tmp_path)
    with pytest.raises(ValueError, match="unknown cache kind"):
        Cache(tmp_path, enabled={"nope"})


def test_ls_and_clear(tmp_path):
    c = Cache(tmp_path)
    ka, kb = Cache.key("kernel", i=1), Cache.key("kernel", i=2)
    c.put("kernel", ka, b"a" * 10)
    c.put("kernel", kb, b"b")
    c.put("program", K, b"p")
    rows = c.ls()
    assert {(r["kind"], r["key"]) for r in rows} == {("kernel", ka), ("kernel", kb), ("program", K)}
    row = next(r for r in rows if r["key"] == ka)
    assert row["size_bytes"] == 10 + cache_mod._HEADER.size and row["age_s"] >= 0
    assert Path(row["path"]).exists()
    assert len(c.ls("kernel")) == 2
    assert c.clear("kernel") == 2
    assert c.get("kernel", ka) is None  # the memory layer was cleared too
    assert [r["kind"] for r in c.ls()] == ["program"]
    assert c.clear() == 1 and c.ls() == []


def test_clear_counts_an_entry_whose_label_stays_once(tmp_path):
    from amk.schedule.errors import EnvironmentProblem

    c = Cache(tmp_path)
    c.put("kernel", K, b"k")
    entry = Path(c.ls("kernel")[0]["path"])
    label = entry.with_suffix(".label.json")
    (label / "held").mkdir(parents=True, exist_ok=True)  # a directory where its label file should be
    with pytest.raises(EnvironmentProblem) as e:
        c.clear()
    assert "removed 1 entry " in str(e.value) and "could not remove 1 file: " in str(e.value), str(e.value)
    assert str(label) in str(e.value) and not entry.exists() and c.ls() == []


def test_stats_and_last_run_stats(tmp_path):
    c = Cache(tmp_path)
    c.put("kernel", K, b"x")  # write
    c.get("kernel", K)  # memory hit
    Cache(tmp_path).get("kernel", K)  # other object: not counted here
    c.get("program", K)  # absent miss
    assert c.stats()["kernel"] == {"hits": 1, "misses": 0, "writes": 1, "corrupt": 0}
    assert c.stats()["program"]["misses"] == 1
    assert last_run_stats(tmp_path) is None
    c.save_stats()
    assert last_run_stats(tmp_path) == c.stats()


def test_debug_logging(tmp_path, caplog):
    c = Cache(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="amk.cache"):
        c.get("kernel", K)
        c.put("kernel", K, b"x")
        c.get("kernel", K)
        Cache(tmp_path).get("kernel", K)
    msgs = [r.message for r in caplog.records]
    path = str(c.path("kernel", K))
    for word in ("miss (absent)", "write", "hit (memory)", "hit (file)"):
        assert any(m.startswith(word) and K in m and path in m and "kernel" in m for m in msgs), word


def test_default_cache_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "a"))
    a = default_cache()
    assert a is default_cache() and a.root == tmp_path / "a"
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "b"))
    b = default_cache()
    assert b is not a and b.root == tmp_path / "b"
    b.put("kernel", K, b"x")
    b.save_stats()
    assert last_run_stats()["kernel"]["writes"] == 1


def test_a_cached_program_carries_its_fingerprint(tmp_path, monkeypatch):
    # the search reads every trial's program back from the cache: its fingerprint comes with it, hashed once
    from amk.harness.evaluate import build_program
    from amk.schedule.program import FINGERPRINT_META, MegakernelProgram

    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path))
    cache = Cache(tmp_path)
    cfg = {"attention": {"softmax": "partition"}}
    cold, program = build_program("toy", "cpu-sim", cfg, device="cpu", cache=cache)
    warm, again = build_program("toy", "cpu-sim", cfg, device="cpu", cache=cache)
    assert cache.stats()["program"]["hits"] >= 1
    assert again.meta[FINGERPRINT_META] == program.fingerprint() == cold.program_fingerprint
    assert warm.program_fingerprint == again.known_fingerprint() == program.fingerprint()
    assert MegakernelProgram.fingerprint_of(again.to_dict()) == again.fingerprint()
    again.tasks[0].sm += 1  # the fingerprint is of the content: an edited program hashes anew
    assert again.fingerprint() != program.fingerprint()


def test_a_cached_program_carries_the_validators_verdict(tmp_path, monkeypatch):
    # validated once, as it was lowered: a warm read-back does not validate again, and says what a fresh
    # validation says, for a valid program and for a rejected one
    import amk.schedule.validate as validate_mod
    from amk.harness.evaluate import build_program
    from amk.schedule.program import VALIDATION_META

    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path))
    cache = Cache(tmp_path)
    good, bad = {"attention": {"softmax": "partition"}}, {"smem_per_block": 160 * 1024}
    cold = {name: build_program("toy", "cpu-sim", cfg, device="cpu", cache=cache) for name, cfg in
            (("good", good), ("bad", bad))}
    assert cold["good"][1].meta[VALIDATION_META] == "" and cold["bad"][1] is None

    def refuse(*a, **k):
        raise AssertionError("validated again")

    monkeypatch.setattr(validate_mod, "validate", refuse)
    warm_good, program = build_program("toy", "cpu-sim", good, device="cpu", cache=cache)
    warm_bad, none = build_program("toy", "cpu-sim", bad, device="cpu", cache=cache)
    assert cache.stats()["program"]["hits"] == 2 and program is not None and none is None
    assert warm_good.valid and not warm_bad.valid
    assert warm_bad.rejected_reason == cold["bad"][0].rejected_reason
    assert warm_bad.rejected_reason.startswith("validator: ") and "smem_per_block" in warm_bad.rejected_reason


def test_a_program_lowered_by_other_code_is_not_read_back(tmp_path, monkeypatch):
    import amk.harness.evaluate as ev

    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path))
    cache = Cache(tmp_path)
    ev.build_program("toy", "cpu-sim", {}, device="cpu", cache=cache)
    monkeypatch.setattr(ev, "lowering_digest", lambda: "another-version")
    ev.build_program("toy", "cpu-sim", {}, device="cpu", cache=cache)
    assert cache.stats()["program"]["misses"] == 2 and cache.stats()["program"]["hits"] == 0
