"""Bad files and paths the user hands AMK: an unusable AMK_CACHE_DIR, a hand-edited results.tsv, a
verify_result.json that is not an object, a corrupt last_run_stats.json, output flags naming a directory or a
missing parent. Each is a clear error naming the file or flag (or a skipped line with a warning), never a
traceback and never a trial blamed on the config."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from _cli import cli_json
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

from amk.cli import main
from amk.flywheel.results import HEADER, read_rows

run = cli_json


# ---- AMK_CACHE_DIR -------------------------------------------------------------------------------------------


def test_a_cache_dir_that_is_a_file_is_a_usage_error_not_a_rejection(capsys, monkeypatch, tmp_path):
    bad = tmp_path / "cachefile"
    bad.touch()
    monkeypatch.setenv("AMK_CACHE_DIR", str(bad))
    code, v = run(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim")
    assert code == 2 and v["error_type"] == "usage", v
    assert "AMK_CACHE_DIR" in v["error"] and str(bad) in v["error"] and "not a directory" in v["error"]
    assert "rejected_reason" not in v


def test_a_cache_dir_under_the_home_of_an_unknown_user_is_a_usage_error(capsys, monkeypatch):
    # pathlib raises RuntimeError for ~user of no such user: an internal error (exit 3) before
    monkeypatch.setenv("AMK_CACHE_DIR", "~amk-no-such-user/cache")
    for argv in (["evaluate", "--model", "toy", "--gpu", "cpu-sim"], ["cache", "ls"]):
        code, v = run(capsys, *argv)
        assert code == 2 and v["error_type"] == "usage", v
        assert v["error"].startswith("AMK_CACHE_DIR: ~amk-no-such-user/cache") and "names no user" in v["error"], v


def test_a_loop_with_an_unusable_cache_dir_records_no_trial(capsys, monkeypatch, tmp_path):
    bad = tmp_path / "cachefile"
    bad.touch()
    monkeypatch.setenv("AMK_CACHE_DIR", str(bad))
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "2", "--results", str(res),
                  "--corpus", str(cor))
    assert code == 2 and s["error_type"] == "usage" and "AMK_CACHE_DIR" in s["error"], s
    assert not res.exists() and not cor.exists()


@pytest.mark.parametrize("kind", ["program", "reference"])
def test_a_full_disk_under_the_cache_is_an_environment_error_and_records_no_trial(capsys, monkeypatch, tmp_path,
                                                                                   kind):
    """ENOSPC while writing a cache entry (a lowered program, or eager reference logits in the middle of the
    verify cases): exit 3 naming AMK_CACHE_DIR and the file, from evaluate and from the loop, which records no
    trial for it (the disk, not the config, failed: never a rejected or incorrect verdict)."""
    import errno

    import amk.cache as cache_mod

    real = cache_mod._atomic_write

    def full(path, data):
        if f"{os.sep}{kind}{os.sep}" not in str(path):
            return real(path, data)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(cache_mod, "_atomic_write", full)
    code, v = run(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim")
    assert code == 3 and v["error_type"] == "environment", v
    assert "AMK_CACHE_DIR" in v["error"] and "No space left" in v["error"] and str(tmp_path / "c") in v["error"]
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "2", "--results", str(res),
                  "--corpus", str(cor))
    assert code == 3 and s["error_type"] == "environment" and "No space left" in s["error"], s
    assert not cor.exists() or not cor.read_text().strip()


def test_the_cache_dir_is_created_when_missing_and_refused_when_not_writable(monkeypatch, tmp_path):
    from amk.cache import CacheDirError, default_cache

    root = tmp_path / "new" / "cache"
    monkeypatch.setenv("AMK_CACHE_DIR", str(root))
    assert default_cache().root == root and root.is_dir()
    other = tmp_path / "read-only"
    other.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(other) else real_access(p, mode))
    monkeypatch.setenv("AMK_CACHE_DIR", str(other))
    with pytest.raises(CacheDirError, match="AMK_CACHE_DIR.*not writable") as e:
        default_cache()
    assert e.value.argument == "AMK_CACHE_DIR" and str(other) in str(e.value)


def test_a_cache_write_failing_mid_run_names_the_cache_dir(monkeypatch, tmp_path):
    from amk.cache import Cache, CacheDirError, default_cache

    root = tmp_path / "c"
    root.mkdir()
    (root / "program").write_text("a file where the kind's directory belongs")
    with pytest.raises(CacheDirError, match="AMK_CACHE_DIR") as e:
        Cache(root).get_or_create_json("program", "ab" * 32, lambda: {"x": 1})
    assert str(root / "program") in str(e.value)
    monkeypatch.setenv("AMK_CACHE_DIR", str(root))
    with pytest.raises(CacheDirError, match="program: not a directory"):  # refused up front, before lowering
        default_cache()


def test_a_cache_failing_inside_lowering_is_not_the_configs_rejection(capsys, monkeypatch, tmp_path):
    root = tmp_path / "c"
    (root / "program").mkdir(parents=True)
    for i in range(256):  # every entry's shard directory is a file: the root passes, the first entry fails
        (root / "program" / f"{i:02x}").write_text("")
    monkeypatch.setenv("AMK_CACHE_DIR", str(root))
    code, v = run(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim")
    assert code == 2 and v["error_type"] == "usage", v
    assert "AMK_CACHE_DIR" in v["error"] and "rejected_reason" not in v


# ---- results.tsv with a hand-edited number ------------------------------------------------------------------


def _results_with_bad_latency(path):
    row = ["1", "2026-01-01T00:00:00Z", "toy", "cpu-sim", "b4b855881ef6", "keep", "true", "abc", "predicted", "",
           "", "baseline", "0b1a245a7680c90b", "83.6681", "", "fp32", "64"]
    good = ["2", "2026-01-01T00:00:01Z", "toy", "cpu-sim", "62d6b5dd075d", "discard", "true", "90.5", "predicted",
            "", "", "a change", "e8c7a28e0e4f5408", "34.3", "", "fp32", "64"]
    path.write_text(HEADER + "\t".join(row) + "\n" + "\t".join(good) + "\n")
    return path.read_bytes()


def test_a_non_numeric_latency_is_skipped_with_a_warning_naming_file_line_and_column(tmp_path, caplog):
    res = tmp_path / "r.tsv"
    before = _results_with_bad_latency(res)
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        rows = read_rows(res)
    assert [r["trial"] for r in rows] == ["2"]
    assert f"{res}:2" in caplog.text and "latency_us" in caplog.text and "'abc'" in caplog.text
    assert res.read_bytes() == before


def test_report_and_resume_survive_a_non_numeric_latency(capsys, tmp_path):
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    before = _results_with_bad_latency(res)
    code, out = run(capsys, "report", "--results", str(res), "--corpus", str(cor), "--no-plots")
    assert code == 0 and out["trials"] == 1, out
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--resume",
                  "--results", str(res), "--corpus", str(cor))
    assert code == 0, s
    assert res.read_bytes().startswith(before)


# ---- inputs that are not what they should be ----------------------------------------------------------------


def test_bench_with_a_verify_result_that_is_not_an_object(capsys, tmp_path):
    vr = tmp_path / "verify_result.json"
    vr.write_text("[]")
    code, out = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--verify-result", str(vr))
    assert code == 2 and str(vr) in out["error"] and "JSON object" in out["error"], out


def test_report_out_dir_that_is_a_file(capsys, tmp_path):
    res = tmp_path / "r.tsv"
    _results_with_bad_latency(res)
    adir = tmp_path / "adir"
    adir.touch()
    code, out = run(capsys, "report", "--results", str(res), "--out-dir", str(adir))
    assert code == 2 and out["error_type"] == "usage" and "--out-dir" in out["error"] and str(adir) in out["error"]


def test_cache_stats_with_a_corrupt_stats_file(capsys, monkeypatch, tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    stats = root / "last_run_stats.json"
    stats.write_text('{"a": "\x01')
    monkeypatch.setenv("AMK_CACHE_DIR", str(root))
    code = main(["--json", "cache", "stats"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 0 and out["last_run"] is None and "files" in out, out
    assert str(stats) in captured.err and "unreadable" in captured.err  # the CLI's logger writes to stderr


# ---- output flags -------------------------------------------------------------------------------------------


def test_verify_out_that_is_a_directory_is_refused_before_verifying(capsys, monkeypatch, tmp_path):
    import amk.harness.evaluate as ev

    def never(*a, **kw):
        raise AssertionError("verified before checking --out")

    monkeypatch.setattr(ev, "evaluate", never)
    code, out = run(capsys, "verify", "--model", "toy", "--gpu", "cpu-sim", "--out", str(tmp_path))
    assert code == 2 and "--out" in out["error"] and str(tmp_path) in out["error"], out


@pytest.mark.parametrize("where", ["symlink loop", "/proc"])
def test_verify_out_that_cannot_be_opened_is_refused_before_verifying(capsys, monkeypatch, tmp_path, where):
    import amk.harness.evaluate as ev

    def never(*a, **kw):
        raise AssertionError("verified before checking --out")

    monkeypatch.setattr(ev, "evaluate", never)
    out_path = tmp_path / "v.json" if where == "symlink loop" else Path("/proc/amk_verify.json")
    if where == "symlink loop":
        out_path.symlink_to(out_path.name)
    code, out = run(capsys, "verify", "--model", "toy", "--gpu", "cpu-sim", "--out", str(out_path))
    assert code == 2 and out["error"].startswith("--out"), out


def test_running_out_of_memory_while_verifying_is_the_environment_not_a_wrong_config(capsys, monkeypatch, tmp_path):
    # an allocation the reference could not make said "correct: false" (exit 1), and a loop wrote the config as
    # a fail row
    import amk
    import amk.eval.oracle as oracle

    def starved(*a, **kw):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2303999232 bytes.")

    monkeypatch.setattr(oracle, "eager_reference", starved)
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "cache"))  # no cached reference stands in for it
    code, out = run(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim")
    assert code == 3 and out["error_type"] == "environment" and "out of memory" in out["error"], out
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    with pytest.raises(amk.EnvironmentProblem):
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor)
    assert not (res.exists() and res.read_text().count("\n") > 1)  # no trial row blames the config


def test_compile_out_in_a_missing_directory_names_the_flag(capsys, tmp_path):
    missing = tmp_path / "nonexistent" / "x.json"
    code, out = run(capsys, "compile", "--model", "toy", "--gpu", "cpu-sim", "--out", str(missing))
    assert code == 2 and "--out" in out["error"] and str(missing.parent) in out["error"], out


def test_loop_results_that_is_a_directory_names_the_flag(capsys, tmp_path):
    adir = tmp_path / "adir_r"
    adir.mkdir()
    code, out = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--results",
                    str(adir), "--corpus", str(tmp_path / "c.jsonl"))
    assert code == 2 and "--results" in out["error"] and str(adir) in out["error"], out
    cdir = tmp_path / "cdir"
    cdir.mkdir()
    code, out = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--results",
                    str(tmp_path / "r.tsv"), "--corpus", str(cdir))
    assert code == 2 and "--corpus" in out["error"] and str(cdir) in out["error"], out


# ---- arguments the Python API takes ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2**63, 10**23, 1.5, True])
def test_evaluate_and_loop_refuse_a_seed_out_of_range(seed, tmp_path):
    import amk
    from amk.schedule.errors import ArgumentError

    with pytest.raises(ArgumentError, match="seed"):
        amk.evaluate("toy", "cpu-sim", {}, seed=seed)
    with pytest.raises(ArgumentError, match="seed"):
        amk.loop("toy", "cpu-sim", budget=1, seed=seed, results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl")
    assert not (tmp_path / "r.tsv").exists()


def test_a_max_seq_whose_kv_cache_cannot_fit_is_refused_before_any_allocation(capsys, monkeypatch):
    code, v = run(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim", "--max-seq", str(10**12))
    # past the kernel's int32 score offsets, before the KV cache's size is weighed against the memory here
    assert code == 2 and v["error_type"] == "usage" and v["error"].startswith(f"--max-seq: {10**12} positions"), v
    assert "int32 offsets" in v["error"], v
    seq = 2**24  # within the offsets; 4 GiB of fp32 KV cache, held twice, against 4 GiB free
    monkeypatch.setattr("amk.harness.run_checks._free_bytes", lambda dev: 4 * 2**30)
    code, v = run(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim", "--max-seq", str(seq))
    assert code == 2 and v["error_type"] == "usage" and "--max-seq" in v["error"] and "KV cache" in v["error"], v


@pytest.mark.parametrize("flag", ["--results", "--corpus"])
def test_a_loop_file_that_cannot_be_opened_is_refused_before_any_trial(capsys, tmp_path, flag):
    # a symlink loop, and a path the access bits call writable but no file can be made at (/proc as root): the
    # loop used to run trial 1 and fail on its first append, or crash on resolving the path
    other = {"--results": "--corpus", "--corpus": "--results"}[flag]
    for bad in (tmp_path / "loop.x", Path("/proc/amk_corpus.jsonl")):
        if bad.name == "loop.x":
            bad.symlink_to(bad.name)
        code, v = run(capsys, "loop", "--model", "toy", "--budget", "1", flag, str(bad), other,
                      str(tmp_path / "other.file"))
        assert code == 2 and v["error_type"] == "usage" and v["error"].startswith(flag), v
        assert not (tmp_path / "other.file").exists()


# ---- corpus.jsonl with a hand-edited record -------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("latency_us", -3.0), ("latency_us", 0), ("latency_us", "abc"),
                                          ("kept", "yes"), ("predicted_latency_us", True),
                                          # keys the readers look records up by: unhashable, they crashed
                                          # `loop --resume` and `report`
                                          ("program_fingerprint", {"a": 1}), ("schedule_id", [1, 2]),
                                          ("model", 5), ("dtype", ["bf16"]), ("change", "abc"),
                                          ("verdict", {"correct": "false"})])
def test_a_record_with_a_value_no_trial_writes_is_skipped_with_a_warning(tmp_path, caplog, field, value):
    from amk.flywheel.records import load_records
    from amk.schedule.config import schedule_id_of

    good = {"record": 2, "model": "toy", "gpu": "cpu-sim", "config": {}, "verdict": {}, "kept": True,
            "latency_us": 33.1, "schedule_id": schedule_id_of({})}
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, field: value}) + "\n")
    with caplog.at_level(logging.WARNING, logger="amk"):
        recs = load_records(path)
    assert len(recs) == 1 and recs[0].latency_us == 33.1
    assert "corpus.jsonl:2: skipped" in caplog.text and field in caplog.text


def test_a_timed_record_whose_schedule_id_was_deleted_is_skipped(tmp_path, caplog):
    # the id is what ties the config to the trial that was timed: without it, an edited config would stand
    # beside that trial's latency. An untimed record (a crash) may lack it; one built by hand gets its config's.
    from amk.flywheel.records import TuningRecord, append_record, load_records
    from amk.schedule.config import schedule_id_of

    cfg = {"attention": {"kv_partitions": 4}}
    timed = {"record": 2, "model": "toy", "gpu": "cpu-sim", "config": cfg, "verdict": {"correct": True},
             "kept": True, "latency_us": 33.1, "schedule_id": schedule_id_of(cfg)}
    legacy = {"model": "toy", "gpu": "cpu-sim", "config": cfg,
              "verdict": {"correct": True, "latency_us": 20.0, "schedule_id": schedule_id_of(cfg)}}
    crash = {"record": 2, "model": "toy", "gpu": "cpu-sim", "config": cfg, "verdict": {"crash": "x"},
             "kept": False, "status": "crash"}
    lines = [timed, {k: v for k, v in timed.items() if k != "schedule_id"},
             legacy, {**legacy, "verdict": {k: v for k, v in legacy["verdict"].items() if k != "schedule_id"}},
             crash]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    with caplog.at_level(logging.WARNING, logger="amk"):
        recs = load_records(path)
    assert [r.latency_us for r in recs] == [33.1, 20.0, None]
    for line in (2, 4):
        assert f"corpus.jsonl:{line}: skipped" in caplog.text
    assert caplog.text.count("carries a latency but no schedule_id") == 2, caplog.text
    by_hand = tmp_path / "by_hand.jsonl"
    append_record(by_hand, TuningRecord(model="toy", gpu="cpu-sim", config=cfg, environment={}, time="t",
                                        verdict={"correct": True, "latency_us": 5.0}))
    (back,) = load_records(by_hand)
    assert back.schedule_id == schedule_id_of(cfg) and back.latency_us == 5.0


def test_a_bad_record_is_reported_once_a_process_under_any_spelling_of_its_path(tmp_path, caplog, monkeypatch):
    # a loop reads the corpus again at every trial, by an absolute and a relative path
    from amk.flywheel.records import load_records

    (tmp_path / "corpus.jsonl").write_text("{not json\n")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="amk"):
        for path in (tmp_path / "corpus.jsonl", "corpus.jsonl", "./corpus.jsonl"):
            assert load_records(path) == []
    assert caplog.text.count("skipped a line that is not a tuning record") == 1


def test_every_command_that_uses_the_cache_records_the_last_run(capsys, monkeypatch, tmp_path):
    """`cache stats` shows the last command that lowered: compile (a program miss, then a hit), not an older
    evaluate."""
    root = tmp_path / "c"
    monkeypatch.setenv("AMK_CACHE_DIR", str(root))
    import amk.cache as cache_mod

    monkeypatch.setattr(cache_mod, "_default", None, raising=False)
    for expect in ("misses", "hits"):
        code = main(["--json", "compile", "--model", "toy", "--out", str(tmp_path / "p.json")])
        capsys.readouterr()
        assert code == 0
        code = main(["--json", "cache", "stats"])
        last = json.loads(capsys.readouterr().out)["last_run"]
        assert code == 0 and last["program"][expect] == 1, last


def test_a_command_that_touches_no_cache_entry_keeps_the_last_record(capsys, monkeypatch, tmp_path):
    """generate on a CPU reads and writes no entry: `cache stats` still shows the evaluate before it."""
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "c"))
    import amk.cache as cache_mod

    monkeypatch.setattr(cache_mod, "_default", None, raising=False)
    assert main(["--json", "compile", "--model", "toy", "--out", str(tmp_path / "p.json")]) == 0
    capsys.readouterr()
    monkeypatch.setattr(cache_mod, "_default", None, raising=False)  # a new process: no counts yet
    assert main(["--json", "generate", "--model", "toy", "--prompt-ids", "1,2,3", "--max-new-tokens", "2"]) == 0
    capsys.readouterr()
    assert main(["--json", "cache", "stats"]) == 0
    last = json.loads(capsys.readouterr().out)["last_run"]
    assert last["program"]["misses"] == 1, last


@pytest.mark.parametrize("argv, lead", [
    (["--model", "no-such-model"], "--model: unknown model"),
    (["--model", "toy", "--gpu", "no-such-gpu"], "--gpu: unknown GPU target"),
])
def test_an_unusable_cache_dir_does_not_hide_a_misspelt_model_or_gpu(capsys, monkeypatch, tmp_path, argv, lead):
    bad = tmp_path / "a-file"
    bad.write_text("x")
    monkeypatch.setenv("AMK_CACHE_DIR", str(bad))
    code, v = run(capsys, "evaluate", *argv)
    assert code == 2 and v["error"].startswith(lead), v


def test_an_unusable_cache_dir_does_not_hide_a_malformed_config(capsys, monkeypatch, tmp_path):
    """A malformed config's verdict needs neither the model nor the cache (HARNESS section 2)."""
    bad = tmp_path / "a-file"
    bad.write_text("x")
    monkeypatch.setenv("AMK_CACHE_DIR", str(bad))
    code, v = run(capsys, "evaluate", "--model", "toy", "--config", '{"matvec": {"qkv": {"k_splits": 99}}}')
    assert code == 2 and v["valid"] is False and "$.matvec.qkv.k_splits" in v["rejected_reason"], v
    assert v["cache"] == {"hits": 0, "misses": 0, "by_kind": {}}
