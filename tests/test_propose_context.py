"""propose ranks the corpus's kept records at the KV context of the run it proposes for (HARNESS.md section 7):
a record timed at a shorter context (a program of fewer positions) is no rival of one timed at the run's, so
propose offers the start `amk loop` takes at the same max_seq."""

from __future__ import annotations

import json

import pytest

import amk
from amk.cli import main
from amk.harness.propose import run_context
from amk.schedule.config import schedule_id_of
from amk.schedule.errors import ArgumentError


def _corpus(tmp_path, default_context: int):
    """Two kept toy records on cpu-sim, fp32: kv_partitions 2 at 9 us timed at a context of 0 (a 64-position
    program), kv_partitions 4 at 12.5 us timed at the default program's context."""
    corpus = tmp_path / "corpus.jsonl"
    base = {"record": 2, "model": "toy", "gpu": "cpu-sim", "dtype": "fp32", "kept": True, "status": "keep",
            "time": "t", "latency_kind": "predicted"}
    corpus.write_text("\n".join(json.dumps({**base, "schedule_id": schedule_id_of(kw["config"]), **kw}) for kw in [
        {"latency_us": 9.0, "config": {"attention": {"kv_partitions": 2}},
         "verdict": {"correct": True, "latency_us": 9.0, "latency_kind": "predicted", "latency_context": 0}},
        {"latency_us": 12.5, "config": {"attention": {"kv_partitions": 4}},
         "verdict": {"correct": True, "latency_us": 12.5, "latency_kind": "predicted",
                     "latency_context": default_context}}]) + "\n")
    return corpus


def test_propose_ranks_only_records_of_its_runs_context(tmp_path):
    seq, context = run_context("toy", "fp32", None)
    assert context > 0  # else the two records below would share a context
    corpus = _corpus(tmp_path, context)
    p = amk.propose("toy", "cpu-sim", corpus=corpus)
    assert (p["max_seq"], p["context"]) == (seq, context) and p["derived"]["max_seq"] == seq
    assert p["config"]["attention"]["kv_partitions"] == 4 and p["incumbent_latency_us"] == 12.5
    short = amk.propose("toy", "cpu-sim", corpus=corpus, max_seq=64)
    assert (short["max_seq"], short["context"]) == (64, 0) and short["derived"]["max_seq"] == 64
    assert short["config"]["attention"]["kv_partitions"] == 2 and short["incumbent_latency_us"] == 9.0


def test_propose_offers_the_start_the_loop_takes(tmp_path):
    corpus = _corpus(tmp_path, run_context("toy", "fp32", None)[1])
    for max_seq in (None, 64):
        p = amk.propose("toy", "cpu-sim", corpus=corpus, max_seq=max_seq)
        s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / f"r{max_seq}.tsv", corpus=corpus,
                     max_seq=max_seq, settings={"measure_per_round": 1})
        assert s["trials"] >= 1
        first = (tmp_path / f"r{max_seq}.tsv").read_text().splitlines()[1]
        assert p["schedule_id"] in first.split("\t")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "64", True])
def test_a_bad_max_seq_is_named_alike_by_every_call(tmp_path, bad):
    calls = {"propose": lambda: amk.propose("toy", "cpu-sim", corpus=None, max_seq=bad),
             "evaluate": lambda: amk.evaluate("toy", "cpu-sim", {}, max_seq=bad),
             "loop": lambda: amk.loop("toy", "cpu-sim", budget=1, results=tmp_path / "r.tsv",
                                      corpus=tmp_path / "c.jsonl", max_seq=bad),
             "generate": lambda: amk.generate("toy", [1, 2], max_new_tokens=1, max_seq=bad)}
    said = set()
    for name, call in calls.items():
        with pytest.raises(ArgumentError) as e:
            call()
        assert e.value.argument == "max_seq", name
        said.add(str(e.value))
    assert said == {f"max_seq: expected a positive integer or None, got {bad!r}"}


def test_the_cli_takes_max_seq_and_says_the_context(tmp_path, capsys):
    corpus = _corpus(tmp_path, run_context("toy", "fp32", None)[1])
    assert main(["propose", "--model", "toy", "--corpus", str(corpus), "--max-seq", "64"]) == 0
    assert "9.00 us (predicted at a KV context of 0)" in capsys.readouterr().out
    assert main(["propose", "--model", "toy", "--corpus", str(corpus), "--max-seq", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_seq"] == 64


@pytest.mark.parametrize("max_seq, says", [(2**24, "GiB of KV cache"),  # 4 GiB of fp32 cache, 3 GiB free
                                           # past the kernel's int32 score offsets, whatever the memory
                                           (2**40, "int32 offsets"), (2**64 - 1, "int32 offsets")])
def test_a_kv_cache_past_the_memory_stops_the_loop_before_any_trial(tmp_path, monkeypatch, max_seq, says):
    # as evaluate refuses it: every trial would otherwise be a crash row, and the loop would report ok
    monkeypatch.setattr("amk.harness.run_checks._free_bytes", lambda dev: 3 * 2**30)
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    with pytest.raises(ArgumentError) as e:
        amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=cor, max_seq=max_seq)
    assert e.value.argument == "max_seq" and says in str(e.value)
    assert not res.exists() and not cor.exists()
    # propose refuses the same start (it offered it as given), and evaluate and generate too, for the same reason
    for call in (lambda: amk.propose("toy", "cpu-sim", corpus=None, max_seq=max_seq),
                 lambda: amk.evaluate("toy", "cpu-sim", {}, max_seq=max_seq),
                 lambda: amk.generate("toy", [1, 2], device="cpu", gpu="cpu-sim", max_seq=max_seq)):
        with pytest.raises(ArgumentError) as e:
            call()
        assert e.value.argument == "max_seq" and says in str(e.value)


def test_a_given_incumbent_gets_the_notes_evaluate_would_give_it():
    given = {"pipeline": {"page_kb": 8}, "sm": {"explicit_map": {"attention": [0]}}}
    notes = amk.propose("toy", "cpu-sim", incumbent=given, corpus=None)["notes"]
    assert any(n.startswith("pipeline.page_kb=8 has no effect: with pipeline.pages=0") for n in notes), notes
    assert any(n.startswith('sm.explicit_map={"attention":[0]} has no effect') for n in notes), notes
    assert amk.propose("toy", "cpu-sim", incumbent={}, corpus=None)["notes"] == []
