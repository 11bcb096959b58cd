"""`amk mcp`, driven as a coding agent's MCP client drives it: the mcp package's client launches the server over
stdio, lists the tools, and runs a propose -> edit one knob -> evaluate round trip on the toy model."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys

import pytest

import amk

pytest.importorskip("mcp")

from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402


def _structured(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def _round_trip(cwd, cache_dir) -> dict:
    params = StdioServerParameters(command=sys.executable, args=["-m", "amk.cli", "-q", "mcp"], cwd=str(cwd),
                                   env={"AMK_CACHE_DIR": str(cache_dir)})
    out: dict = {}
    async with Client(params, read_timeout_seconds=600) as client:
        tools = (await client.list_tools()).tools
        out["tools"] = sorted(t.name for t in tools)
        out["loop_args"] = sorted(next(t for t in tools if t.name == "loop").input_schema["properties"])
        proposal = _structured(await client.call_tool("propose", {"model": "toy", "gpu": "cpu-sim"}))
        config = proposal["config"]
        config["matvec"]["lm_head"]["rows_per_task"] = 64
        out["proposal"] = proposal
        out["verdict"] = _structured(await client.call_tool("evaluate", {"model": "toy", "gpu": "cpu-sim",
                                                                         "config": config}))
        out["rejected"] = _structured(await client.call_tool(
            "evaluate", {"model": "toy", "gpu": "cpu-sim", "config": {"matvec": {"lm_head": {"rows_per_tsk": 64}}}}))
        out["unknown_model"] = await client.call_tool("evaluate", {"model": "no-such-model", "gpu": "cpu-sim"})
        out["omitted"] = _structured(await client.call_tool("evaluate", {"model": "toy", "gpu": "cpu-sim"}))
        out["not_objects"] = [_structured(await client.call_tool("evaluate", {"model": "toy", "gpu": "cpu-sim",
                                                                             "config": c}))
                              for c in ([1, 2], 5, "[1, 2]", None, "null")]
        out["report_missing"] = await client.call_tool("report", {"results": "no-such.tsv"})
        out["misspelt"] = await client.call_tool("evaluate", {"model": "toy", "gpu": "cpu-sim",
                                                              "confg": {"scratch": "bogus"}})
        out["report_dashes"] = await client.call_tool("report", {"results": "a--out-dir.tsv"})
        out["bad_incumbent"] = await client.call_tool("propose", {"model": "toy", "gpu": "cpu-sim",
                                                                  "incumbent": {"matvec": {"qkv": {"k_splits": 99}}}})
        twice = '{"threads_per_block": 256, "threads_per_block": 512}'  # AMK refuses it; plain json.loads keeps 512
        out["twice"] = _structured(await client.call_tool("evaluate", {"model": "toy", "gpu": "cpu-sim",
                                                                       "config": twice}))
        out["twice_incumbent"] = await client.call_tool("propose", {"model": "toy", "gpu": "cpu-sim",
                                                                    "incumbent": twice})
        out["text_config"] = _structured(await client.call_tool("evaluate", {"model": "toy", "gpu": "cpu-sim",
                                                                             "config": json.dumps(config)}))
        out["text_incumbent"] = _structured(await client.call_tool("propose", {"model": "toy", "gpu": "cpu-sim",
                                                                               "incumbent": json.dumps(config)}))
        out["bools"] = [await client.call_tool("evaluate", {"model": "toy", "gpu": "cpu-sim", name: True})
                        for name in ("max_seq", "seed")]
        # a flag takes only true or false: the SDK would read "no" as false, and 1 or "yes" as true
        out["flags"] = [await client.call_tool(tool, {name: value})
                        for tool, name, value in (("loop", "resume", "yes"), ("loop", "resume", 0),
                                                  ("report", "plots", "no"), ("report", "plots", 1))]
        out["evaluate_schema"] = next(t for t in tools if t.name == "evaluate").input_schema
        # a string is a string: the SDK read "null" as null (the default dtype) and "[1]" as a list
        out["text_null"] = [await client.call_tool("evaluate", {"model": "toy", "gpu": "cpu-sim", name: value})
                            for name, value in (("dtype", "null"), ("cases", "[1]"), ("corpus", "null"))]
        # no corpus, as Python's propose(corpus=None) takes it: was refused as not a string
        out["no_corpus"] = _structured(await client.call_tool("propose", {"model": "toy", "gpu": "cpu-sim",
                                                                          "corpus": None}))
    return out


def test_mcp_server_answers_a_propose_evaluate_round_trip(tmp_path):
    got = asyncio.run(_round_trip(tmp_path, tmp_path / "cache"))
    assert got["tools"] == ["evaluate", "loop", "propose", "report"]
    loop_keywords = set(inspect.signature(amk.loop).parameters)
    assert {"dtype", "max_seq"} <= set(got["loop_args"]) <= loop_keywords  # as amk.loop names them
    p = got["proposal"]
    assert p["model"] == "toy" and p["gpu"] == "cpu-sim" and p["source"] == "default"
    assert os.path.isfile(p["schema_path"]) and any(k["path"] == "matvec.lm_head.rows_per_task"
                                                    for k in p["search_space"])
    v = got["verdict"]
    assert v["valid"] and v["correct"] and v["latency_kind"] == "predicted" and v["latency_us"] > 0
    assert v["schedule_id"] != p["schedule_id"] and v["model"] == "toy" and v["dtype"] == "fp32"
    r = got["rejected"]
    assert not r["valid"] and "did you mean 'rows_per_task'" in r["rejected_reason"]
    bad = got["unknown_model"]
    assert bad.is_error and "usage: unknown model 'no-such-model'" in bad.content[0].text
    # HARNESS §6: a malformed config of any JSON type is a verdict, as in Python
    assert all(not v["valid"] and v["rejected_reason"].startswith("schema:") for v in got["not_objects"])
    assert got["omitted"]["valid"] and got["omitted"]["schedule_id"] == p["schedule_id"]  # the defaults
    missing = got["report_missing"]  # named by the tool's argument, not the CLI's flag
    assert missing.is_error and "usage: results 'no-such.tsv': not found" in missing.content[0].text
    assert "--results" not in missing.content[0].text
    # an argument name the tool does not have is refused, not dropped (the defaults' verdict came back valid)
    misspelt = got["misspelt"]
    assert misspelt.is_error and "confg" in misspelt.content[0].text, misspelt.content
    assert got["evaluate_schema"].get("additionalProperties") is False
    dashes = got["report_dashes"]  # a path is quoted as given, even where it holds a flag's spelling
    assert dashes.is_error and "'a--out-dir.tsv': not found" in dashes.content[0].text, dashes.content
    # JSON text is parsed by AMK, as the CLI and Python parse it: a key given twice is refused, named
    assert not got["twice"]["valid"] and "$.threads_per_block: given twice" in got["twice"]["rejected_reason"]
    twice = got["twice_incumbent"]
    assert twice.is_error and "usage: incumbent: $.threads_per_block: given twice" in twice.content[0].text, twice
    assert got["text_config"]["schedule_id"] == v["schedule_id"]
    assert got["text_incumbent"]["schedule_id"] == v["schedule_id"]
    for name, r in zip(("max_seq", "seed"), got["bools"]):  # not read as 1, as Python refuses a bool for an int
        assert r.is_error and f"{name}: expected a number, got true" in r.content[0].text, r.content
    for r, shown in zip(got["flags"], ('resume: expected true or false, got "yes"', "resume: expected true or false, got 0",
                                       'plots: expected true or false, got "no"', "plots: expected true or false, got 1")):
        assert r.is_error and shown in r.content[0].text, r.content
    dtype, cases, corpus = got["text_null"]
    assert dtype.is_error and "dtype" in dtype.content[0].text and "'null'" in dtype.content[0].text, dtype.content
    assert cases.is_error and "cases" in cases.content[0].text and "'[1]'" in cases.content[0].text, cases.content
    assert any("no corpus at 'null'" in n for n in _structured(corpus)["notes"])  # a path, not "no corpus"
    assert got["no_corpus"]["source"] == "default" and got["no_corpus"]["schedule_id"] == p["schedule_id"]
    bad = got["bad_incumbent"]  # named by its argument, as the CLI names --incumbent
    assert bad.is_error and "usage: incumbent: $.matvec.qkv.k_splits" in bad.content[0].text, bad.content


def test_the_report_tool_names_its_arguments_not_the_cli_flags():
    from amk.harness.mcp_server import _keywords

    assert _keywords("usage: --results 'x': not found (run `amk loop` first, or pass --results)") == \
        "usage: results 'x': not found (run `amk loop` first, or pass results)"
    assert _keywords("--out-dir '/f': is a file") == "out_dir '/f': is a file"
    assert _keywords("--results 'a--out-dir.tsv': not found") == "results 'a--out-dir.tsv': not found"
    assert _keywords("pass --no-plots") == "pass plots=false"
