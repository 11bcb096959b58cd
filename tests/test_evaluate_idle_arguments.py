"""evaluate() arguments that cannot act on this run are named in the notes, never dropped without a word:
stop_above_us off a GPU or with measure=False, peers with measure=False; and a verify result shows its verdict."""

from __future__ import annotations

import amk


def _idle(v: dict, name: str) -> list[str]:
    return [n for n in v["notes"] if n.startswith(name) and "has no effect" in n]


def test_stop_above_us_on_a_cpu_is_named_as_idle():
    v = amk.evaluate("toy", "cpu-sim", {}, stop_above_us=1.0, cases="reduced")
    assert v["correct"] and v["latency_us"] > 1.0  # a bound far below the latency: nothing stopped
    assert _idle(v, "stop_above_us=1 ") and "predicted latency" in _idle(v, "stop_above_us=1 ")[0]
    assert not _idle(amk.evaluate("toy", "cpu-sim", {}, cases="reduced"), "stop_above_us")


def test_peers_and_stop_above_us_with_measure_false_are_named_as_idle():
    v = amk.evaluate("toy", "cpu-sim", {}, measure=False, peers=True, stop_above_us=5.0, cases="reduced")
    assert v["latency_us"] is None
    assert _idle(v, "peers=True") and "measure=False" in _idle(v, "peers=True")[0]
    assert _idle(v, "stop_above_us=5 ") and "no latency is measured" in _idle(v, "stop_above_us=5 ")[0]


def test_a_verify_results_repr_leads_with_its_verdict():
    # a notebook cell shows the repr: it was about 7 KB of per-step figures without `passed` or `cases_passed`
    from amk.eval.oracle import CaseResult, VerifyResult

    ok = VerifyResult([CaseResult("pos0", True, steps=[{"mere": 0.0}] * 50)], "cpu", "reference", "ab12", 1.25)
    assert repr(ok) == ("VerifyResult(passed=True, cases_passed=1/1, device='cpu', vm='reference', program='ab12', "
                        "seconds=1.2)")
    bad = VerifyResult([CaseResult(f"c{i}", i == 0, "Mismatch" if i else "") for i in range(5)], "cpu", "reference",
                       "ab12", 2.0)
    assert "passed=False, cases_passed=1/5" in repr(bad) and "failed=[c1: Mismatch, c2: Mismatch, c3: Mismatch, ...]" \
        in repr(bad) and len(repr(bad)) < 300


def test_a_lone_surrogate_in_a_config_key_is_named_in_an_answer_any_utf8_writer_takes():
    # "\udfff" is plain ASCII JSON text; the key it decodes to went into the verdict as it was, which no UTF-8
    # writer takes: MCP answered "Error executing tool evaluate", the CLI exited 3
    import json

    v = amk.evaluate("toy", "cpu-sim", '{"sc\\udfffratch": 1}')
    assert v["valid"] is False and "$.sc\\udfffratch: unknown key" in v["rejected_reason"]
    assert "did you mean 'scratch'" in v["rejected_reason"]
    json.dumps(v, ensure_ascii=False).encode("utf-8")
