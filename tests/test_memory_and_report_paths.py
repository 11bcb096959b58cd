"""Two refusals that name what the caller gave: generate's KV cache past the free memory (the process would
otherwise be killed unnamed), and a report whose plots cannot be written in --out-dir."""

from __future__ import annotations

import pytest
from _cli import cli_json

import amk
from amk.schedule.errors import ArgumentError


@pytest.fixture
def little_memory(monkeypatch):
    monkeypatch.setattr("amk.harness.run_checks._free_bytes", lambda dev: 1024)  # 1 KiB free


def test_generate_refuses_a_kv_cache_past_the_free_memory_naming_what_set_its_size(little_memory):
    with pytest.raises(ArgumentError, match="held by the VM") as e:
        amk.generate("toy", [1, 2, 3], max_new_tokens=200)
    assert e.value.argument == "max_new_tokens" and "a prompt of 3 tokens and 200 new tokens" in str(e.value)
    with pytest.raises(ArgumentError) as e:
        amk.generate("toy", [1, 2, 3], max_new_tokens=4, max_seq=256)
    assert e.value.argument == "max_seq"


def test_generate_runs_where_the_cache_fits():
    assert len(amk.generate("toy", [1, 2, 3], max_new_tokens=3).tokens) == 3


def test_a_plot_that_cannot_be_written_in_out_dir_is_a_usage_error_naming_it(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    amk.loop("toy", "cpu-sim", budget=2, device="cpu", results="results.tsv", corpus="corpus.jsonl")
    (tmp_path / "report" / "search.png").mkdir(parents=True)
    code, out = cli_json(capsys, "report")
    assert code == 2 and out["error"].startswith("--out-dir 'report': search.png cannot be written there")


def test_the_report_cuts_a_long_description_between_words():
    from amk.harness.cmd_report import _text

    desc = ("matvec.gate_up.rows_per_task=64 (was derived), attention.kv_partitions=16 (was 8), "
            "build.loads_in_flight=8 (was 4): -1.234567% against the incumbent at 812.345 us")
    out = {"trials": 1, "statuses": {"keep": 1}, "plots": [], "notes": [], "groups": [{
        "model": "toy", "gpu": "cpu-sim", "dtype": "fp32", "max_seq": 64, "trials": 1, "kept": 1, "best": {},
        "kept_trials": [{"trial": 1, "schedule_id": "abc123", "latency_us": 9.5, "description": desc}]}]}
    line = next(ln for ln in _text(out).splitlines() if ln.startswith("  kept trial"))
    shown = line.split(" 9.50 us ", 1)[1]
    assert shown.endswith(" ...") and len(shown) <= 100
    assert desc.startswith(shown[:-4]) and desc[len(shown) - 4] == " "  # a whole word before the cut


def test_the_report_cuts_a_description_of_one_long_word_inside_it():
    from amk.harness.cmd_report import _text

    desc = 'sm.explicit_map={"attention":[' + ",".join(map(str, range(40))) + "]}: -1.2% against the incumbent"
    out = {"trials": 1, "statuses": {"keep": 1}, "plots": [], "notes": [], "groups": [{
        "model": "toy", "gpu": "cpu-sim", "dtype": "fp32", "max_seq": 64, "trials": 1, "kept": 1, "best": {},
        "kept_trials": [{"trial": 1, "schedule_id": "abc123", "latency_us": 9.5, "description": desc}]}]}
    line = next(ln for ln in _text(out).splitlines() if ln.startswith("  kept trial"))
    shown = line.split(" 9.50 us ", 1)[1]
    assert shown == desc[:96] + " ..."
