"""The `amk` CLI: --json prints exactly one JSON object, exit codes 0/1/2/3, verify -> bench gating, loop."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

from amk.cli import main
from amk.harness.cmd_bench import geomean_speedups


def run(capsys, *argv, stdin: str | None = None, monkeypatch=None):
    """main() in-process with --json; returns (exit code, the one JSON object on stdout)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["--json", *argv])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out[-2000:]
    obj = json.loads(lines[0])
    assert obj["exit_code"] == code and obj["ok"] == (code == 0)
    return code, obj


def test_info_commands(capsys, tmp_path):
    code, obj = run(capsys, "models")
    assert code == 0 and "toy" in {m["name"] for m in obj["models"]}
    code, obj = run(capsys, "targets")
    assert code == 0 and "cpu-sim" in {t["name"] for t in obj["targets"]}
    code, obj = run(capsys, "doctor")
    assert code == 0 and {"python", "torch", "transformers", "cupy", "nvrtc", "cache_dir", "detected_target"} <= set(obj)
    (tmp_path / "c.jsonl").write_text("")
    code, obj = run(capsys, "propose", "--model", "toy", "--gpu", "cpu-sim", "--corpus", str(tmp_path / "c.jsonl"))
    assert code == 0 and obj["source"] == "default" and obj["search_space"]
    assert obj["schema_path"].endswith("schedule_config.schema.json")


def test_doctor_names_a_cache_directory_no_verb_could_use(capsys, monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("")
    for root, why in ((tmp_path / "a_file", "not a directory"),
                      (tmp_path / "a_file" / "cache", f"cannot be created: {tmp_path / 'a_file'} is not a directory")):
        monkeypatch.setenv("AMK_CACHE_DIR", str(root))
        code, obj = run(capsys, "doctor")
        assert code == 3 and obj["problems"] == [f"AMK_CACHE_DIR: {root}: {why} (set by AMK_CACHE_DIR); point "
                                                 "AMK_CACHE_DIR at a writable directory"], obj["problems"]
    if Path("/proc/self").is_dir():  # the access bits pass root there; only a probe file tells
        monkeypatch.setenv("AMK_CACHE_DIR", "/proc/amk-cache")
        code, obj = run(capsys, "doctor")
        assert code == 3 and obj["problems"][0].startswith("AMK_CACHE_DIR: /proc/amk-cache: cannot be created: /proc")
    # ~ of an unknown user, and a name past the file system's limit: doctor stopped with a bare error, no report
    for root, why in (("~amk-no-such-user/cache", "its ~ names no user of this machine"),
                      (str(tmp_path / ("z" * 300)), "cannot be looked up (File name too long)")):
        monkeypatch.setenv("AMK_CACHE_DIR", root)
        code, obj = run(capsys, "doctor")
        assert code == 3 and len(obj["problems"]) == 1 and obj["problems"][0].startswith(f"AMK_CACHE_DIR: {root}: {why}")
        assert obj["python"], obj
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "new" / "cache"))
    code, obj = run(capsys, "doctor")
    assert code == 0 and not obj["problems"] and not (tmp_path / "new").exists()  # a report: nothing is created


def test_evaluate_exit_codes(capsys, monkeypatch, tmp_path):
    code, v = run(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim", "--config", "{}")
    assert code == 0 and v["correct"] and v["latency_kind"] == "predicted"
    code, v = run(capsys, "evaluate", "--model", "toy", "--config", '{"matvec": {"qkv": {"k_splits": 0}}}')
    assert code == 2 and v["rejected_reason"].startswith("schema: $.matvec.qkv.k_splits")
    code, v = run(capsys, "evaluate", "--model", "toy", "--config", "-", stdin="[1, 2]", monkeypatch=monkeypatch)
    assert code == 2 and "got an array" in v["rejected_reason"]
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"matvec": {"lm_head": {"rows_per_task": 64}}}')
    code, v = run(capsys, "evaluate", "--model", "toy", "--config", str(cfg))
    assert code == 0 and v["valid"]
    code, v = run(capsys, "evaluate", "--model", "toy", "--config", str(tmp_path / "missing.json"))
    assert code == 2 and v["error_type"] == "usage"
    code, v = run(capsys, "evaluate", "--model", "nope")
    assert code == 2 and "unknown model" in v["error"]
    code, v = run(capsys, "evaluate", "--model", "toy", "--no-such-flag")
    assert code == 2 and v["error_type"] == "usage"
    code, v = run(capsys, "evaluate", "--model", "toy", "--device", "cuda")
    assert code == 3 and v["error_type"] == "environment"


def test_evaluate_correctness_failure_is_exit_1(capsys, monkeypatch):
    from amk.vm.reference import ReferenceVM

    real = ReferenceVM.step
    monkeypatch.setattr(ReferenceVM, "step", lambda self, tok: (lambda r: (r[0] * 2.0, r[1]))(real(self, tok)))
    code, v = run(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim")
    assert code == 1 and not v["correct"] and v["latency_us"] is None


def test_verify_then_bench(capsys, monkeypatch, tmp_path):
    vr = str(tmp_path / "verify_result.json")
    code, rec = run(capsys, "verify", "--model", "toy", "--gpu", "cpu-sim", "--out", vr, "--seed", "3")
    assert code == 0 and rec["passed"] and rec["program_fingerprint"]
    assert json.load(open(vr))["seed"] == 3  # the verify cases' random tokens: what was verified
    assert json.load(open(vr))["program_fingerprint"] == rec["program_fingerprint"]
    assert len(rec["cases"]) == rec["cases_total"] and all(c["passed"] for c in rec["cases"])

    code, b = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--verify-result", vr, "--contexts", "1,64")
    assert code == 0 and b["verified"] and [c["case"] for c in b["cases"]] == ["ctx1", "ctx64"]
    assert all(c["kind"] == "predicted" and c["peak_memory_bytes"] is None for c in b["cases"])
    assert b["geomean_speedup"] is None and [e["reason"] for e in b["excluded"]] == ["missing", "missing"]
    assert any("PREDICTED" in n for n in b["notes"])

    other = '{"matvec": {"lm_head": {"rows_per_task": 64}}}'
    code, b = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--config", other, "--verify-result", vr)
    assert code == 2 and b["error_type"] == "unverified" and "verify this program" in b["error"]
    code, b = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--config", other, "--verify-result", vr,
                  "--verify-not-required")
    assert code == 0 and b["verified"] is False and any("UNVERIFIED" in n for n in b["notes"])
    code, b = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--verify-result", str(tmp_path / "none"))
    assert code == 2
    edited = json.load(open(vr))
    edited["passed"] = "yes"  # a hand edit: neither a pass nor the failure its 6/6 cases would contradict
    Path(vr).write_text(json.dumps(edited))
    code, b = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--verify-result", vr)
    assert code == 2 and "its `passed` is 'yes'" in b["error"] and "FAILED" not in b["error"], b
    Path(vr).unlink()

    from amk.vm.reference import ReferenceVM

    real = ReferenceVM.step
    monkeypatch.setattr(ReferenceVM, "step", lambda self, tok: (lambda r: (r[0] + 1.0, r[1]))(real(self, tok)))
    code, rec = run(capsys, "verify", "--model", "toy", "--gpu", "cpu-sim", "--out", vr)
    assert code == 1 and not rec["passed"] and rec["failures"]
    code, b = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--verify-result", vr)
    assert code == 2 and "FAILED" in b["error"]


def test_bench_on_a_cpu_predicts_with_the_corpus_evaluate_would_read(capsys, monkeypatch, tmp_path):
    import amk.harness.calibration as calibration
    from amk.harness.calibration import Calibration
    from amk.schedule.cost import CostCoefficients

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("")
    fitted = Calibration(CostCoefficients(mem_scale=3.0, task_overhead_us=2.0), 7, None, corpus=str(corpus))
    seen = []
    monkeypatch.setattr(calibration, "calibrate_file", lambda c, gpu: seen.append(c) or fitted)
    monkeypatch.setattr("amk.harness.evaluate.calibrate_file", calibration.calibrate_file)
    code, b = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--verify-not-required", "--contexts", "301",
                  "--corpus", str(corpus))
    code_e, v = run(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim", "--corpus", str(corpus))
    assert code == code_e == 0 and seen == [str(corpus)] * 2
    assert b["cases"][0]["latency_us"] == v["predicted_latency_us"]  # evaluate predicts at a context of 301
    assert fitted.note("cpu-sim") in b["notes"]
    code, b = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--verify-not-required",
                  "--corpus", str(tmp_path / "none.jsonl"))
    assert code == 2 and "--corpus" in b["error"]


def test_bench_takes_a_verify_of_the_same_model_and_weights_only(capsys, tmp_path):
    """The program fingerprint leaves the weights out: a verify of one checkpoint does not verify another of its
    shape, the same checkpoint saved again with other weights, another dtype, or a built-in of the same name."""
    from _checkpoints import SMALL, save_checkpoint
    from transformers import LlamaConfig

    cfg = LlamaConfig(**{**SMALL, "num_hidden_layers": 1, "max_position_embeddings": 64})
    a, b = save_checkpoint(cfg, tmp_path / "a", seed=1), save_checkpoint(cfg, tmp_path / "b", seed=2)
    vr = str(tmp_path / "vr.json")
    code, rec = run(capsys, "verify", "--model", str(a), "--gpu", "cpu-sim", "--out", vr, "--cases", "reduced")
    assert code == 0 and rec["model_fingerprint"]
    bench = ["bench", "--gpu", "cpu-sim", "--verify-result", vr, "--contexts", "1"]
    code, out = run(capsys, *bench, "--model", str(a))
    assert code == 0 and out["verified"] is True
    code, out = run(capsys, *bench, "--model", str(b))  # the same program, other weights
    assert code == 2 and out["error_type"] == "unverified" and "verify this model" in out["error"], out
    code, out = run(capsys, *bench, "--model", str(a), "--dtype", "bf16")
    assert code == 2 and out["error_type"] == "unverified", out
    save_checkpoint(cfg, a, seed=3)  # saved again: the same directory, other weights
    code, out = run(capsys, *bench, "--model", str(a))
    assert code == 2 and "verified other weights" in out["error"], out


def test_geomean_excludes_bad_speedups():
    cases = [{"case": "a", "speedup": 2.0}, {"case": "b", "speedup": 8.0}, {"case": "c", "speedup": float("nan")},
             {"case": "d", "speedup": float("inf")}, {"case": "e", "speedup": 0.0}, {"case": "f", "speedup": -1.0},
             {"case": "g"}, {"case": "h", "speedup": "3"}]
    geo, excluded = geomean_speedups(cases)
    assert geo == pytest.approx(4.0)
    assert {e["case"]: e["reason"] for e in excluded} == {
        "c": "NaN", "d": "infinite", "e": "zero", "f": "negative", "g": "missing", "h": "not a number (str)"}
    assert geomean_speedups([{"case": "x", "speedup": None}])[0] is None


def test_compile_cache_generate_and_report(capsys, tmp_path):
    cache_root = os.environ["AMK_CACHE_DIR"]  # the module's fresh cache (_isolated_cache)
    out = str(tmp_path / "program.json")
    code, r = run(capsys, "compile", "--model", "toy", "--gpu", "cpu-sim", "--out", out)
    assert code == 0 and r["tasks"] == sum(r["tasks_per_opcode"].values()) and r["sms_used"] >= 1
    assert len(json.load(open(out))["tasks"]) == r["tasks"]
    # counts a stage, whole where every stage of the kind has the same (toy: one stage a kind)
    assert all(type(f["tasks"]) is int and type(f["sms_busy"]) is int for f in r["stage_fill"].values())
    code, r = run(capsys, "compile", "--model", "toy", "--config", '{"bogus": 1}', "--out", out)
    assert code == 2 and r["error_type"] == "usage" and r["error"].startswith("--config: schema: $.bogus")
    # a config that parses but does not lower is a usage error too (HARNESS section 4), its verdict beside it
    code, r = run(capsys, "compile", "--model", "toy", "--config", '{"matvec": {"qkv": {"head_splits": 3}}}',
                  "--out", out)
    assert code == 2 and r["error_type"] == "usage" and r["error"].startswith("--config: lowering: matvec.qkv")
    assert r["valid"] is False
    code, r = run(capsys, "cache", "stats")
    assert code == 0 and r["root"] == cache_root
    code, r = run(capsys, "cache", "ls", "--kind", "program")
    assert code == 0 and all(e["kind"] == "program" for e in r["entries"])
    code, r = run(capsys, "generate", "--model", "toy")
    assert code in (2, 3)  # no prompt (usage), or no amk.generate yet (environment)
    code, r = run(capsys, "generate", "--model", "toy", "--prompt-ids", "1,5,9", "--max-new-tokens", "3")
    if code == 3:
        assert "amk.generate" in r["error"]
    else:
        assert code == 0 and len(r["tokens"]) <= 3 and r["device"] == "cpu"
    code, r = run(capsys, "report", "--results", str(tmp_path / "none.tsv"))
    assert code == 2
    (tmp_path / "r.tsv").write_text("")
    code, r = run(capsys, "report", "--results", str(tmp_path / "r.tsv"), "--corpus", str(tmp_path), "--no-plots")
    assert code == 2 and r["error"].startswith("--corpus") and "is a directory" in r["error"]


def test_console_script_loop_budget_3_and_report(tmp_path):
    cache_root = os.environ["AMK_CACHE_DIR"]  # the module's fresh cache (_isolated_cache)
    # three trials, the baseline and two of the search's: nothing below depends on the count, and each more trial
    # costs seconds of candidate lowering; HARNESS.md's CLI example (test_harness_doc.py) adds a --resume run
    env = {**os.environ, "AMK_CACHE_DIR": cache_root}
    amk_bin = os.path.join(os.path.dirname(sys.executable), "amk")
    p = subprocess.run([amk_bin, "loop", "--model", "toy", "--budget", "3", "--json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)  # exactly one JSON object
    assert summary["trials"] == 3 and summary["gpu"] == "cpu-sim" and summary["device"] == "cpu"
    assert "trial" in p.stderr  # progress goes to stderr
    from amk.flywheel import load_corpus, load_results

    df = load_results(tmp_path / "results.tsv")
    assert len(df) == 3 and df["trial"].tolist() == list(range(1, 4))
    kept = df[df["status"] == "keep"]
    assert len(kept) >= 1 and kept["correct"].all()
    assert len(load_corpus(tmp_path / "corpus.jsonl")) == len(df)  # a tuning record per trial
    p = subprocess.run([amk_bin, "--json", "loop", "--model", "toy", "--budget", "1"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    err = json.loads(p.stdout)["error"]
    assert p.returncode == 2 and err.startswith("--results: results.tsv already holds 3 trials") and "--resume" in err
    p = subprocess.run([amk_bin, "report", "--json", "--out-dir", "plots"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads(p.stdout)
    assert rep["groups"][0]["best"]["predicted"]["config"] is not None  # the best config itself
    # the toy's program holds fewer positions than the bench's context: the report repeats the loop's note
    context = re.search(r"at a KV context of (\d+) positions", " ".join(summary["notes"])).group(1)
    assert any(n.startswith(f"toy on cpu-sim (fp32, max_seq 512): latencies are at a KV context of {context} "
                            "positions, not 1024")
               for n in rep["notes"]), rep["notes"]
    assert rep["trials"] == 3 and len(rep["plots"]) == 2 and all(os.path.getsize(f) > 1000 for f in
                                                                 [os.path.join(tmp_path, x) for x in rep["plots"]])


def _report_rows(path, dtype, max_seq, latencies, first_trial=1):
    from amk.flywheel import ResultRow, Status, append_result

    for i, lat in enumerate(latencies, start=first_trial):
        append_result(path, ResultRow(model="toy", gpu="cpu-sim", schedule_id=f"{i:012x}", status=Status.KEEP,
                                      correct=True, latency_us=lat, kind="predicted", dtype=dtype, max_seq=max_seq,
                                      description=f"row {i}"))


def test_report_never_ranks_rows_of_another_dtype_or_context_together(capsys, tmp_path):
    from argparse import Namespace

    from amk.harness.cmd_report import report

    res = tmp_path / "r.tsv"
    _report_rows(res, "fp32", 512, [50.0, 40.0])
    _report_rows(res, "bf16", 512, [30.0], first_trial=3)  # faster, but another dtype
    _report_rows(res, "fp32", 64, [20.0], first_trial=4)  # faster, but another context
    code, out = run(capsys, "report", "--results", str(res), "--corpus", str(tmp_path / "none.jsonl"), "--no-plots")
    assert code == 0, out
    best = {(g["dtype"], g["max_seq"]): (g["trials"], g["best"]["predicted"]["trial"],
                                         g["best"]["predicted"]["latency_us"]) for g in out["groups"]}
    assert best == {("fp32", 512): (2, 2, 40.0), ("bf16", 512): (1, 3, 30.0), ("fp32", 64): (1, 4, 20.0)}
    fp32 = next(g for g in out["groups"] if (g["dtype"], g["max_seq"]) == ("fp32", 512))
    assert fp32["best"]["predicted"]["vs_first_correct"] == pytest.approx(50.0 / 40.0)
    assert [k["trial"] for k in fp32["kept_trials"]] == [1, 2]
    # each group's context from its own max_seq: 512 leaves 301 positions after the timed steps, 64 none
    assert [n.split(": latencies")[0] + " " + re.search(r"context of (\d+)", n).group(1) for n in out["notes"]
            if "KV context" in n] == ["toy on cpu-sim (bf16, max_seq 512) 301", "toy on cpu-sim (fp32, max_seq 64) 0",
                                      "toy on cpu-sim (fp32, max_seq 512) 301"]
    text = report(Namespace(results=str(res), corpus=str(tmp_path / "none.jsonl"), no_plots=False,
                            out_dir=str(tmp_path / "plots"))).text
    heads = [ln for ln in text.splitlines() if ln.startswith("toy on cpu-sim")]
    assert heads == ["toy on cpu-sim (bf16, max_seq 512): 1 trial, 1 kept",
                     "toy on cpu-sim (fp32, max_seq 64): 1 trial, 1 kept",
                     "toy on cpu-sim (fp32, max_seq 512): 2 trials, 2 kept"], text
    assert "best (predicted): 40.00 us, trial 2" in text and "1.250x the first correct config" in text
    kept = [ln.split()[4:6] for ln in text.splitlines() if ln.startswith("  kept trial")]
    assert ["40.00", "us"] in kept and all(k[1] == "us" for k in kept), text  # as the best line writes it


def test_report_of_a_15_column_file_says_its_dtype_and_context_are_unknown(capsys, tmp_path):
    from amk.flywheel.results import PRE_CONTEXT_COLUMNS

    res = tmp_path / "r.tsv"
    res.write_text("\t".join(PRE_CONTEXT_COLUMNS) + "\n")
    _report_rows(res, "fp32", 512, [50.0, 40.0])  # the file's 15 columns: no dtype nor max_seq written
    code, out = run(capsys, "report", "--results", str(res), "--corpus", str(tmp_path / "none.jsonl"),
                    "--out-dir", str(tmp_path / "plots"))
    assert code == 0, out
    (group,) = out["groups"]
    assert (group["dtype"], group["max_seq"], group["trials"]) == (None, None, 2)
    assert group["best"]["predicted"]["latency_us"] == 40.0 and len(out["plots"]) == 2
    main(["report", "--results", str(res), "--corpus", str(tmp_path / "none.jsonl"), "--no-plots"])
    assert "toy on cpu-sim (dtype and max_seq not recorded): 2 trials, 2 kept" in capsys.readouterr().out


def _records_at(path, contexts):
    """Kept toy tuning records on cpu-sim, one a KV context its latency was taken at."""
    from amk.schedule.config import schedule_id_of as written_schedule_id

    base = {"record": 2, "model": "toy", "gpu": "cpu-sim", "dtype": "fp32", "kept": True, "status": "keep",
            "time": "t", "latency_kind": "predicted"}
    configs = [{"matvec": {"lm_head": {"rows_per_task": 8 << i}}} for i in range(len(contexts))]  # one id each
    path.write_text("".join(json.dumps({**base, "latency_us": 10.0 + c, "config": cfg,
                                        "schedule_id": written_schedule_id(cfg),
                                        "verdict": {"correct": True, "latency_us": 10.0 + c, "latency_context": c}})
                            + "\n" for c, cfg in zip(contexts, configs)))


@pytest.mark.parametrize("contexts, says", [
    ([301], ["latencies are at a KV context of 301 positions, not 1024"]),
    ([0, 301], ["latencies are at KV contexts of 0, 301 positions (its tuning records name each), not all 1024"]),
    ([1024], [])])
def test_report_of_a_15_column_file_names_the_contexts_its_records_give(capsys, tmp_path, contexts, says):
    # the file cannot say which row was timed at which context: one the records agree on is named, several are
    # all named, none is guessed
    from amk.flywheel.results import PRE_CONTEXT_COLUMNS

    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    res.write_text("\t".join(PRE_CONTEXT_COLUMNS) + "\n")
    _report_rows(res, "fp32", 512, [50.0, 40.0])
    _records_at(cor, contexts)
    code, out = run(capsys, "report", "--results", str(res), "--corpus", str(cor), "--no-plots")
    assert code == 0, out
    got = [n.split(": ", 1)[1] for n in out["notes"] if "KV context" in n]
    assert len(got) == len(says) and all(g.startswith(w) for g, w in zip(got, says)), out["notes"]


def test_report_shows_no_config_this_version_cannot_parse_as_the_best(capsys, tmp_path):
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    _report_rows(res, "fp32", 512, [50.0, 40.0])
    base = {"record": 2, "model": "toy", "gpu": "cpu-sim", "dtype": "fp32", "kept": True, "status": "keep",
            "time": "t", "verdict": {"correct": True}}
    cor.write_text("".join(json.dumps({**base, **kw}) + "\n" for kw in [
        {"schedule_id": f"{1:012x}", "config": {"attention": {"kv_partitions": 2}}},
        {"schedule_id": f"{2:012x}", "config": {"foo": 1, "matvec": 5}}]))
    code, out = run(capsys, "report", "--results", str(res), "--corpus", str(cor), "--no-plots")
    assert code == 0, out
    (group,) = out["groups"]
    assert group["best"]["predicted"]["trial"] == 2 and group["best"]["predicted"]["config"] is None


def test_report_of_a_15_column_file_takes_the_contexts_of_its_own_rows_programs(capsys, tmp_path):
    # a corpus shared by runs of other contexts: only the records of the file's programs say its rows' context
    from amk.flywheel import ResultRow, Status, append_result
    from amk.flywheel.results import PRE_CONTEXT_COLUMNS
    from amk.schedule.config import schedule_id_of

    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    res.write_text("\t".join(PRE_CONTEXT_COLUMNS) + "\n")
    append_result(res, ResultRow(model="toy", gpu="cpu-sim", schedule_id="0" * 12, status=Status.KEEP, correct=True,
                                 latency_us=40.0, kind="predicted", program_fingerprint="fa" * 8, description="x"))
    base = {"record": 2, "model": "toy", "gpu": "cpu-sim", "dtype": "fp32", "kept": True, "status": "keep",
            "time": "t", "latency_kind": "predicted", "config": {}, "schedule_id": schedule_id_of({})}
    cor.write_text("".join(json.dumps({**base, "latency_us": 40.0, "program_fingerprint": fp,
                                       "verdict": {"correct": True, "latency_us": 40.0, "latency_context": c}}) + "\n"
                           for fp, c in [("fa" * 8, 45), ("fb" * 8, 301), ("fc" * 8, 1024)]))
    code, out = run(capsys, "report", "--results", str(res), "--corpus", str(cor), "--no-plots")
    assert code == 0, out
    got = [n.split(": ", 1)[1] for n in out["notes"] if "KV context" in n]
    assert len(got) == 1 and got[0].startswith("latencies are at a KV context of 45 positions"), out["notes"]


def test_a_latency_under_the_spec_floor_is_never_a_best(capsys, tmp_path):
    # a row copied by hand with 0.0001 us ranked first in report, and a record of 1e-9 us was the loop's best
    from amk.flywheel import ResultRow, Status, append_result
    from amk.flywheel.corpus import best_entry
    from amk.flywheel.records import load_records
    from amk.schedule.config import schedule_id_of as written_schedule_id

    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    configs = [{"matvec": {"lm_head": {"rows_per_task": rows}}} for rows in (8, 16)]
    for trial, lat in ((1, 40.0), (2, 0.0001)):
        append_result(res, ResultRow(model="toy", gpu="cpu-sim", schedule_id=written_schedule_id(configs[0]),
                                     status=Status.KEEP, correct=True, latency_us=lat, kind="predicted", dtype="fp32",
                                     max_seq=512, program_fingerprint="fa" * 8, description=f"row {trial}"))
    base = {"record": 2, "model": "toy", "gpu": "cpu-sim", "dtype": "fp32", "kept": True, "status": "keep",
            "time": "t", "latency_kind": "predicted", "program_fingerprint": "fa" * 8}
    cor.write_text("".join(json.dumps({**base, "latency_us": lat, "config": cfg, "schedule_id": written_schedule_id(cfg),
                                       "verdict": {"correct": True, "latency_us": lat, "spec_floor_us": 8.5}}) + "\n"
                           for lat, cfg in zip((40.0, 1e-9), configs)))
    code, out = run(capsys, "report", "--results", str(res), "--corpus", str(cor), "--no-plots")
    assert code == 0, out
    (group,) = out["groups"]
    assert group["best"]["predicted"]["latency_us"] == 40.0 and out["withheld"] == 1
    assert any("under the spec floor" in n for n in out["notes"])
    assert best_entry(load_records(cor)).latency_us == 40.0


def test_report_names_no_context_for_a_group_without_latencies(capsys, tmp_path):
    from amk.flywheel import ResultRow, Status, append_result

    res = tmp_path / "r.tsv"
    append_result(res, ResultRow(model="toy", gpu="cpu-sim", schedule_id="0" * 12, status=Status.FAIL, correct=False,
                                 latency_us=None, kind="predicted", dtype="fp32", max_seq=64, description="failed"))
    _report_rows(res, "fp32", 512, [40.0], first_trial=2)
    code, out = run(capsys, "report", "--results", str(res), "--corpus", str(tmp_path / "none.jsonl"), "--no-plots")
    assert code == 0, out
    assert [n.split(":")[0] for n in out["notes"] if "KV context" in n] == ["toy on cpu-sim (fp32, max_seq 512)"]


def test_max_seq_reaches_evaluate_verify_and_bench(capsys, tmp_path):
    code, v = run(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim", "--max-seq", "16")
    assert code == 0 and "greedy13" in [c["case"] for c in v["case_results"]]
    assert any("context of 16 positions" in n for n in v["notes"])
    code, short = run(capsys, "verify", "--model", "toy", "--gpu", "cpu-sim", "--max-seq", "64", "--out",
                      str(tmp_path / "vr.json"))
    code_full, full = run(capsys, "verify", "--model", "toy", "--gpu", "cpu-sim", "--out", str(tmp_path / "full.json"))
    assert code == 0 and code_full == 0 and short["program_fingerprint"] != full["program_fingerprint"]
    code, b = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--max-seq", "64", "--verify-result",
                  str(tmp_path / "vr.json"), "--contexts", "1,1024")
    assert code == 0 and b["verified"] and [(c["case"], c["context"]) for c in b["cases"]] == [("ctx1", 1), ("ctx63", 63)]
    code, b = run(capsys, "bench", "--model", "toy", "--gpu", "cpu-sim", "--max-seq", "64", "--verify-result",
                  str(tmp_path / "vr.json"), "--contexts", "1,256,1024")
    assert code == 0 and [c["case"] for c in b["cases"]] == ["ctx1", "ctx63"]  # 256 and 1024: one case
    assert any("context 1024 is the same case as context 63" in n for n in b["notes"])


def test_evaluate_text_shows_what_the_lowering_derived():
    import amk
    from amk.harness.cmd_run import verdict_text

    v = amk.evaluate("toy", "cpu-sim", {"matvec": {"o": {"rows_per_task": 8}}})
    line = next(ln for ln in verdict_text(v).splitlines() if ln.startswith("derived: "))
    assert f"matvec.gate_up.rows_per_task={v['derived']['matvec.gate_up.rows_per_task']}" in line
    assert "matvec.o.rows_per_task" not in line  # set by the config, not derived
    assert "fusion.rope_kv_into_qkv=true" in line  # a derived boolean as the JSON the config would hold


def test_propose_shows_the_values_evaluate_derives():
    """propose's derived values are the ones the lowering of the same config gives, at evaluate's defaults;
    a knob the incumbent sets is not derived."""
    import amk
    from amk.harness.cmd_run import proposal_text

    for model, gpu in (("toy", "cpu-sim"), ("llama-3.2-1b", "h200")):
        p = amk.propose(model, gpu, incumbent={"matvec": {"o": {"rows_per_task": 8}}})
        d = p["derived"]
        prog = amk.lower(amk.load_model(model, dtype=d["dtype"], weights=False), gpu, p["config"], max_seq=d["max_seq"])
        assert d["values"] == prog.meta["derived"] and "matvec.o.rows_per_task" not in d["values"]
        lines = {ln.split()[0].lstrip("*"): ln for ln in proposal_text(p).splitlines()[3:] if ln.strip()}
        rows = d["values"]["matvec.gate_up.rows_per_task"]
        assert f"derived ({rows})" in lines["matvec.gate_up.rows_per_task"]
        assert "derived (" not in lines["matvec.o.rows_per_task"]
        assert "derived (true)" in lines["fusion.rope_kv_into_qkv"]  # no q/k norm: fused


def test_loop_takes_max_seq_and_records_it(capsys, tmp_path):
    from amk.flywheel import read_rows

    res = tmp_path / "r.tsv"
    code, r = run(capsys, "loop", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--max-seq", "64",
                  "--results", str(res), "--corpus", str(tmp_path / "c.jsonl"))
    assert code == 0 and r["trials"] == 1
    assert [(row["dtype"], row["max_seq"]) for row in read_rows(res)] == [("fp32", "64")]


def test_report_prints_a_gain_that_rounds_to_zero_as_zero_and_says_what_a_prior_averages():
    from amk.harness.cmd_report import _text

    out = {"trials": 2, "statuses": {"keep": 2}, "groups": [], "plots": [], "notes": [],
           "corpus": {"entries": 2, "kept": 2, "gpus": ["cpu-sim"], "cost_model": {},
                      "prior_top": [{"move": "sm.assignment=round_robin", "mean_improvement": -1e-6, "count": 1},
                                    {"move": "threads_per_block=256", "mean_improvement": 0.0129, "count": 2}]}}
    text = _text(out)
    assert "sm.assignment=round_robin: +0.00% mean gain of the 1 trial that moved it" in text and "-0.00" not in text
    assert "threads_per_block=256: +1.29% mean gain of the 2 trials that moved it (with any other move)" in text
