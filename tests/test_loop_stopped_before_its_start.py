"""A resumed loop stopped before its first trial (its minutes spent in the set-up, a stop asked at once) reports the
incumbent its results file holds, as correct and timed, not the start config as no result."""

from __future__ import annotations

import amk


def test_a_resume_stopped_before_its_first_trial_reports_the_kept_incumbent(tmp_path, monkeypatch):
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "cache"))
    results, corpus = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    first = amk.loop("toy", "cpu-sim", budget=3, results=results, corpus=corpus, device="cpu", cases="reduced")
    before = results.read_bytes()
    s = amk.loop("toy", "cpu-sim", results=results, corpus=corpus, device="cpu", cases="reduced", resume=True,
                 should_stop=lambda: True)
    assert s["trials"] == 0 and s["stopped"] == "interrupted"
    inc = s["incumbent"]
    assert inc["correct"] and inc["latency_us"] == first["incumbent"]["latency_us"]
    assert inc["trial"] == first["incumbent"]["trial"] and inc["schedule_id"] == first["incumbent"]["schedule_id"]
    assert not any("it is no result" in n for n in s["notes"]), s["notes"]
    assert any(f"trial {inc['trial']}'s row of the results it resumed" in n for n in s["notes"]), s["notes"]
    assert results.read_bytes() == before  # nothing written


def test_a_fresh_loop_stopped_before_its_first_trial_is_still_no_result(tmp_path, monkeypatch):
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "cache"))
    s = amk.loop("toy", "cpu-sim", results=tmp_path / "results.tsv", corpus=tmp_path / "corpus.jsonl", device="cpu",
                 cases="reduced", should_stop=lambda: True)
    assert s["trials"] == 0 and not s["incumbent"]["correct"] and s["incumbent"]["latency_us"] is None
    assert any("it is no result" in n for n in s["notes"]), s["notes"]
