"""The CLI and API keep HARNESS.md's promises: usage errors are exit 2 without a traceback, a knob that cannot
act is named, a GPU target is predicted in the dtype it runs, the CLI is quiet and prints JSON only with
--json, and every flag says what it does and its default."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import pytest
from _cli import cli_json
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
from amk.cli import build_parser, main
from amk.harness.evaluate import build_program
from amk.schedule.errors import ArgumentError


def cli(capsys, *argv) -> tuple[int, str, str]:
    """main() in-process without --json: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- usage errors are exit 2, with no traceback ------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "--model", "toy", "--dtype", "bf17"], "invalid choice: 'bf17'"),
    (["loop", "--model", "toy", "--dtype", "bf17"], "invalid choice: 'bf17'"),
    (["generate", "--model", "toy", "--prompt-ids", "1,2,x"], "'x' is not a token id"),
    (["generate", "--model", "toy", "--prompt-ids", "1,5", "--max-new-tokens", "0"], "positive integer"),
    (["generate", "--model", "toy", "--prompt-ids", "1,2,392"], "[392] outside the vocabulary of 392"),
    (["evaluate", "--model", "toy", "--max-seq", "-4"], "positive integer"),
    (["evaluate", "--model", "toy", "--gpu", "h300"], "unknown GPU target 'h300'"),
    (["compile", "--model", "toy", "--out", "/nonexistent-dir/program.json"], "--out '/nonexistent-dir/program.json': the directory '/nonexistent-dir' does not exist"),
])
def test_bad_arguments_are_usage_errors_without_a_traceback(capsys, argv, needle):
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == "" and needle in err and "Traceback" not in err, err
    code, obj = cli_json(capsys, *argv)
    assert code == 2 and obj["error_type"] == "usage" and needle in obj["error"]


def test_generate_names_prompt_ids_outside_the_vocabulary():
    with pytest.raises(ArgumentError) as e:
        amk.generate("toy", [1, 391, 392, 1000], max_new_tokens=1, device="cpu")
    assert e.value.argument == "prompt" and "[392, 1000]" in str(e.value)


def test_a_results_file_with_a_foreign_header_is_a_usage_error(capsys, tmp_path):
    foreign = tmp_path / "results.tsv"
    foreign.write_text("run\tscore\n1\t0.5\n")
    for argv in (["loop", "--model", "toy", "--budget", "1", "--resume", "--results", str(foreign)],
                 ["report", "--results", str(foreign)]):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and "is not a results.tsv header" in err and "Traceback" not in err, err


# (a byte-order mark alone is an emptied results file: tests/test_results_and_config_edges.py)
@pytest.mark.parametrize("content", [b"step\tloss\tacc", b"\xef\xbb\xbfstep\tloss", b"\x00\x01\x02\xff"],
                         ids=["one-line", "bom-line", "binary"])
def test_a_results_file_of_another_tool_without_a_whole_line_is_refused_and_left_as_it_is(capsys, tmp_path, content):
    foreign = tmp_path / "results.tsv"
    foreign.write_bytes(content)
    for extra in ([], ["--resume"]):
        code, out, err = cli(capsys, "loop", "--model", "toy", "--budget", "1", "--results", str(foreign),
                             "--corpus", str(tmp_path / "c.jsonl"), *extra)
        assert code == 2 and "is not a results.tsv header" in err and "Traceback" not in err, err
        assert "amk: error: --results: " in err, err  # HARNESS section 4: the flag leads
    assert foreign.read_bytes() == content and not (tmp_path / "c.jsonl").exists()


def test_a_hand_edited_latency_of_zero_or_below_is_skipped_with_a_warning(tmp_path, caplog):
    import logging

    from amk.flywheel.results import HEADER, read_rows

    path = tmp_path / "results.tsv"
    row = ("1\t2026-12-02T00:00:00Z\ttoy\tcpu-sim\tabc\tkeep\ttrue\t{}\tpredicted\t\t\tdefault\t\t\t"
           "\tfp32\t64\n")
    path.write_text(HEADER + row.format("0") + row.format("-48.5").replace("1\t", "2\t", 1)
                    + row.format("45.5").replace("1\t", "3\t", 1))
    with caplog.at_level(logging.WARNING, logger="amk"):
        rows = read_rows(path)
    assert [r["latency_us"] for r in rows] == ["45.5"]
    assert caplog.text.count("not a positive number") == 2


def test_python_api_raises_typed_usage_errors_before_model_work():
    with pytest.raises(ArgumentError) as e:
        amk.evaluate("toy", "cpu-sim", {}, dtype="bf17")
    assert e.value.argument == "dtype" and "bf17" in str(e.value)
    for kw, name in (({"device": "gpu"}, "device"), ({"max_seq": 0}, "max_seq"), ({"cases": "most"}, "cases"),
                     ({"stop_above_us": 0}, "stop_above_us"), ({"stop_above_us": "fast"}, "stop_above_us"),
                     ({"stop_above_us": True}, "stop_above_us")):
        with pytest.raises(ArgumentError) as e:
            amk.evaluate("toy", "cpu-sim", {}, **kw)
        assert e.value.argument == name


def test_config_errors_come_all_at_once_with_the_closest_key(capsys):
    bad = '{"matvec": {"lm_head": {"rows_per_tsk": 64}}, "attention": {"softmax": "partiton", "kv_partitions": 0}}'
    code, v = cli_json(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim", "--config", bad)
    reason = v["rejected_reason"]
    assert code == 2 and not v["valid"] and reason.startswith("schema: $.matvec.lm_head.rows_per_tsk")
    for part in ("did you mean 'rows_per_task'?", "$.attention.softmax", "did you mean 'partition'?",
                 "$.attention.kv_partitions: must be >= 1"):
        assert part in reason, reason


def test_an_interrupt_is_its_own_exit_code(capsys, monkeypatch):
    import amk.harness.evaluate as ev

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate", interrupted)
    code, v = cli_json(capsys, "evaluate", "--model", "toy", "--gpu", "cpu-sim")
    assert code == 130 and v["error_type"] == "interrupted"


# ---- a knob that cannot act is named; a GPU target is predicted in bf16 ------------------------------------

@pytest.mark.parametrize("config, gpu, note", [
    ({"attention": {"kv_partitions": 1, "softmax": "global"}}, "cpu-sim",
     "attention.softmax=global has no effect: with attention.kv_partitions=1"),
    ({"attention": {"kv_partitions": 1, "combine": "stage"}}, "cpu-sim",
     "attention.combine=stage has no effect"),
    ({"build": {"l2_prefetch_kb": 64}}, "h100-sxm", "build.l2_prefetch_kb=64 has no effect: it caps the L2 prefetch"),
    ({"pipelining_depth": 1, "build": {"l2_prefetch_kb": 64}, "pipeline": {"pages": 2}}, "h100-sxm",
     "build.l2_prefetch_kb=64 has no effect: with pipeline.pages=2"),
    ({"pipeline": {"pages": 2}, "build": {"loads_in_flight": 8}}, "h100-sxm",
     "build.loads_in_flight=8 has no effect: with pipeline.pages=2"),
    ({"pipeline": {"page_kb": 32}}, "h100-sxm", "pipeline.page_kb=32 has no effect: with pipeline.pages=0"),
    ({"sm": {"explicit_map": {"qkv": [0, 1]}}}, "cpu-sim",
     'sm.explicit_map={"qkv":[0,1]} has no effect: only sm.assignment=explicit reads it'),
    ({"build": {"spin_backoff_ns": 32}}, "cpu-sim", "build.spin_backoff_ns=32 has no effect: cpu-sim is a CPU stand-in"),
    # the two a config alone cannot show: the model's dtype, and where the tasks land against the SM count
    ({"attention": {"kv_partitions": 2, "partials_dtype": "fp32"}}, "cpu-sim",
     "attention.partials_dtype=fp32 has no effect: the model's dtype is fp32"),
    ({"sm": {"assignment": "round_robin"}}, "h100-sxm",
     "sm.assignment=round_robin has no effect: it places each of the program's"),
    ({"pipeline": {"pages": 4, "page_kb": 8}}, "cpu-sim",
     "pipeline.page_kb=8 has no effect: cpu-sim is a CPU stand-in whose predicted latency is the same"),
    ({"pipelining_depth": 1, "build": {"l2_prefetch_kb": 64}}, "cpu-sim",
     "build.l2_prefetch_kb=64 has no effect: cpu-sim is a CPU stand-in whose predicted latency is the same"),
])
def test_the_lowering_names_a_knob_that_has_no_effect(config, gpu, note):
    v, program = build_program("toy", gpu, config, "cpu")
    assert program is not None and any(n.startswith(note) for n in v.notes), v.notes


def test_an_inert_knob_lowers_to_the_same_program_and_acting_knobs_get_no_note():
    a, _ = build_program("toy", "cpu-sim", {"attention": {"kv_partitions": 1, "softmax": "global"}}, "cpu")
    b, _ = build_program("toy", "cpu-sim", {"attention": {"kv_partitions": 1}}, "cpu")
    assert a.program_fingerprint == b.program_fingerprint and a.schedule_id != b.schedule_id
    for acting in ({}, {"attention": {"softmax": "global"}}, {"pipelining_depth": 1, "build": {"l2_prefetch_kb": 64}},
                   {"sm": {"assignment": "explicit", "explicit_map": {"qkv": [0, 1]}}},
                   {"sm": {"assignment": "bytes_balanced"}}, {"attention": {"partials_dtype": "fp32"}}):
        v, program = build_program("toy", "h100-sxm", acting, "cpu")
        assert program is not None and not [n for n in v.notes if "has no effect" in n], (acting, v.notes)
    v, _ = build_program("toy", "cpu-sim", {"sm": {"assignment": "round_robin"}}, "cpu")  # 8 SMs: it moves tasks
    assert not [n for n in v.notes if "has no effect" in n], v.notes
    v, program = build_program("toy", "a100-80gb", {"pipeline": {"pages": 2}}, "cpu")
    assert program is None and "pipeline.pages=2 needs bulk copies" in v.rejected_reason


def test_pages_on_the_stand_in_act_are_noted_as_priced_by_the_cost_model_alone_and_not_searched_there():
    from amk.schedule.space import search_space

    plain, paged = (amk.evaluate("toy", "cpu-sim", cfg, device="cpu") for cfg in ({}, {"pipeline": {"pages": 4}}))
    assert plain["program_fingerprint"] != paged["program_fingerprint"]  # the lowering changes with pages
    assert plain["predicted_latency_us"] != paged["predicted_latency_us"]  # and the cost model prices them
    # not as inert or unpriced, but as priced by an assumption a GPU contradicted
    (note,) = [n for n in paged["notes"] if "pipeline.pages" in n]
    assert note.startswith("pipeline.pages=4: on cpu-sim") and "no effect" not in note and "not priced" not in note
    for gpu, searched in (("cpu-sim", False), ("h200", True)):
        knobs = {k.path: k for k in search_space(gpu)}
        assert bool(knobs["pipeline.pages"].search) is searched and bool(knobs["pipeline.page_kb"].search) is searched
        assert ("unsearched" in knobs["pipeline.pages"].to_dict()) is not searched  # propose says why


@pytest.mark.parametrize("pages", [2, 4, 6])
def test_the_page_size_never_changes_the_stand_ins_prediction(pages):
    """What makes pipeline.page_kb unpriced on cpu-sim (schedule/inert.py): the cost model reads the page size only
    where the pages' bytes in flight cap an SM's stream, which they never do at the stand-in's bandwidth share."""
    from amk.schedule.cost import predict

    model = amk.load_model("smollm2-135m", dtype="fp32", weights=False)
    # the LM head's rows set: derived, they shrink where large pages leave its tasks too little shared memory
    # (schedule/autotile.lm_head_rows), which is another program, not another price
    us = {kb: predict(amk.lower(model, "cpu-sim", {"pipeline": {"pages": pages, "page_kb": kb},
                                                   "matvec": {"lm_head": {"rows_per_task": 1024}},
                                                   "smem_per_block": 227 * 1024}, max_seq=256), "cpu-sim").latency_us
          for kb in (8, 16, 32)}
    assert len(set(us.values())) == 1, us


def test_a_predicted_verdict_says_the_l2_prefetch_is_not_priced():
    def notes(cfg: dict) -> list[str]:
        return [n for n in amk.evaluate("toy", "h100-sxm", cfg, device="cpu")["notes"] if "L2 prefetch" in n]

    a, b = (amk.evaluate("toy", "h100-sxm", cfg, device="cpu") for cfg in ({}, {"pipelining_depth": 2}))
    assert a["predicted_latency_us"] == b["predicted_latency_us"] and a["program_fingerprint"] != b["program_fingerprint"]
    assert [n for n in b["notes"] if n.startswith("pipelining_depth=2: the cost model prices the L2 prefetch")]
    assert not [n for n in a["notes"] if "L2 prefetch" in n]
    assert not notes({"pipelining_depth": 2, "pipeline": {"pages": 2}})  # the pages' prefetch is priced


def test_a_gpu_target_is_predicted_in_the_dtype_it_runs():
    bf16 = amk.evaluate("toy", "h100-sxm", {}, device="cpu")
    fp32 = amk.evaluate("toy", "h100-sxm", {}, device="cpu", dtype="fp32")
    assert bf16["dtype"] == "bf16" and fp32["dtype"] == "fp32" and bf16["correct"] and fp32["correct"]
    assert bf16["weight_bytes"] * 2 == fp32["weight_bytes"]
    assert bf16["predicted_latency_us"] < fp32["predicted_latency_us"]
    assert any(n.startswith("dtype bf16: the default for h100-sxm") for n in bf16["notes"])
    assert not any(n.startswith("dtype") for n in fp32["notes"])
    sim, _ = build_program("toy", "cpu-sim", {}, "cpu")
    assert sim.dtype == "fp32" and any(n.startswith("dtype fp32: the default for cpu-sim") for n in sim.notes)


# ---- a quiet CLI; JSON only with --json --------------------------------------------------------------------

def test_quiet_evaluate_prints_nothing_on_stderr(tmp_path):
    # a fresh cache, so eager transformers runs (its deprecated past_key_values call warned on every bf16 run)
    env = {**os.environ, "AMK_CACHE_DIR": str(tmp_path / "cache")}
    amk_bin = os.path.join(os.path.dirname(sys.executable), "amk")
    p = subprocess.run([amk_bin, "-q", "evaluate", "--model", "toy", "--gpu", "h100-sxm"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and p.stderr == "", p.stderr[-3000:]
    assert "latency" in p.stdout and "PREDICTED" in p.stdout
    p = subprocess.run([amk_bin, "evaluate", "--model", "toy", "--gpu", "h100-sxm"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "amk: verifying on cpu: 6 cases" in p.stderr, p.stderr[-3000:]
    assert "Warning" not in p.stderr


def test_quiet_silences_our_progress_and_the_dependencies_bars(capsys, monkeypatch):
    from tqdm.auto import tqdm

    from amk import progress
    from amk.cli import _setup_logging

    monkeypatch.setattr(progress, "_live", lambda: not progress.is_quiet())  # stderr as a terminal
    try:
        _setup_logging(quiet=True)  # what -q does
        for _ in tqdm(range(3), desc="a dependency's bar"):
            pass
        with progress.status("a long step"), progress.bar(3, "a counted step", unit="case") as b:
            b.advance(3)
        assert capsys.readouterr().err == ""
    finally:
        _setup_logging(quiet=False)
    for _ in tqdm(range(3), desc="a dependency's bar"):
        pass
    assert "a dependency's bar" in capsys.readouterr().err


def test_a_dependencys_bar_stays_off_a_stderr_that_is_no_terminal(capsys, monkeypatch):
    # to a log or a pipe a tqdm bar is hundreds of carriage-return updates; ours leave one line a step there
    from tqdm.auto import tqdm

    from amk import progress
    from amk.cli import _setup_logging

    monkeypatch.setattr(progress, "_live", lambda: False)
    try:
        _setup_logging(quiet=False)
        for _ in tqdm(range(3), desc="a dependency's bar"):
            pass
        assert "a dependency's bar" not in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        _setup_logging(quiet=False)


def test_quiet_reaches_transformers_bars_without_importing_it():
    # a fresh interpreter: this one may have imported transformers already
    code = ("import sys\n"
            "from amk import progress\n"
            "progress.set_quiet(True)\n"
            "assert 'transformers' not in sys.modules\n"
            "import transformers.utils.logging as t\n"
            "assert not t.is_progress_bar_enabled()\n"
            "progress.set_quiet(False)\n"
            "assert t.is_progress_bar_enabled()\n")
    # FORCE_COLOR: rich takes the piped stderr for a terminal, where the dependencies' bars draw unless quiet
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "FORCE_COLOR": "1"})
    assert p.returncode == 0, p.stderr[-3000:]


def test_the_python_api_draws_no_weight_loading_bar_into_a_pipe(tmp_path):
    # the CLI silences transformers' bars off a terminal (set_quiet); a script or notebook calling amk.evaluate
    # on a checkpoint directory with stderr piped got "Loading weights" carriage-return updates. The caller's own
    # switch is restored after the load.
    from _checkpoints import llama

    path = llama(tmp_path / "m")
    code = ("import pathlib, amk\n"
            "import transformers.utils.logging as t\n"
            f"v = amk.evaluate(pathlib.Path({str(path)!r}), 'cpu-sim', {{}}, max_seq=16)\n"
            "assert v['correct'], v\n"
            "assert t.is_progress_bar_enabled()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "AMK_CACHE_DIR": str(tmp_path / "cache")})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Loading weights" not in p.stderr, p.stderr[-2000:]


def test_progress_draws_on_a_terminal_and_logs_a_line_elsewhere(monkeypatch, caplog):
    import io
    import logging

    from rich.console import Console

    from amk import progress

    with caplog.at_level(logging.INFO, logger="amk.progress"):
        with progress.bar(2, "verifying", unit="case") as b:
            b.advance(2)
    assert "verifying: 2 cases in" in caplog.text
    screen = io.StringIO()
    monkeypatch.setattr(progress, "_console", lambda: Console(file=screen, force_terminal=True, width=100))
    monkeypatch.setattr(progress, "_live", lambda: True)
    with progress.bar(None, "trials", unit="trial") as b:
        b.advance(description="trial 1: keep")
    assert "trial 1: keep" in screen.getvalue()


def test_a_slow_step_without_a_terminal_logs_where_it_stands(monkeypatch, caplog):
    import logging

    from amk import progress

    with caplog.at_level(logging.INFO, logger="amk.progress"):
        with progress.bar(3, "verifying on cpu", unit="case") as b:
            b.advance(description="verifying: pos0")  # quick: no line until HEARTBEAT_S has passed
        assert "done" not in caplog.text
        monkeypatch.setattr(progress, "HEARTBEAT_S", 0.0)
        with progress.bar(3, "verifying on cpu", unit="case") as b:
            b.advance(description="verifying: pos0")
            b.advance(description="verifying: pos1")
    assert "verifying: pos0 (1/3 cases done," in caplog.text
    assert "verifying: pos1 (2/3 cases done," in caplog.text


@pytest.mark.parametrize("argv", [
    ["propose", "--model", "toy", "--gpu", "cpu-sim", "--corpus", "{tmp}/c.jsonl"],
    ["cache", "stats"],
    ["cache", "ls"],
    ["compile", "--model", "toy", "--gpu", "cpu-sim", "--out", "{tmp}/program.json"],
    ["generate", "--model", "toy", "--prompt-ids", "1,5,9", "--max-new-tokens", "3"],
])
def test_json_only_with_json(capsys, tmp_path, argv):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    (tmp_path / "c.jsonl").write_text("")
    code, out, err = cli(capsys, *argv)
    assert code == 0 and out.strip(), err
    for text in (out, out.strip().splitlines()[0]):
        with pytest.raises(ValueError):
            json.loads(text)
    # no JSON dump and no Python reprs in the human text (a knob's object value is written as JSON)
    assert "{'" not in out and "': " not in out and not any(ln.lstrip().startswith(("{", "[")) for ln in out.splitlines())
    code, obj = cli_json(capsys, *argv)
    assert code == 0 and obj["ok"]


def test_compile_takes_max_seq_and_cache_ls_shows_model_and_config(capsys, tmp_path):
    code, r = cli_json(capsys, "compile", "--model", "toy", "--gpu", "cpu-sim", "--max-seq", "96",
                       "--config", '{"matvec": {"o": {"rows_per_task": 32}}}', "--out", str(tmp_path / "p.json"))
    assert code == 0 and r["max_seq"] == 96 and json.load(open(tmp_path / "p.json"))["constants"]["max_seq"] == 96
    # what the lowering derived, as the program's meta holds it; the knob the config sets is not among them
    assert r["derived"] == json.load(open(tmp_path / "p.json"))["meta"]["derived"] and r["derived"]
    assert "matvec.o.rows_per_task" not in r["derived"]
    code, out, _ = cli(capsys, "cache", "ls", "--kind", "program")
    line = next(ln for ln in out.splitlines() if "max_seq 96" in ln)
    assert "toy cpu-sim fp32 config" in line and "matvec.o.rows_per_task=32" in line
    code, obj = cli_json(capsys, "cache", "ls", "--kind", "program")
    labels = [e["label"] for e in obj["entries"] if e["label"] and e["label"].get("max_seq") == 96]
    assert labels and labels[0]["config"]["matvec"]["o"]["rows_per_task"] == 32


# ---- every flag says what it does and its default -----------------------------------------------------------

def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


# `amk loop` and `amk report` flags are documented where the search loop is built
OWN_FLAGS = [name for name in _subparsers(build_parser()) if name not in ("loop", "report")]


@pytest.mark.parametrize("command", OWN_FLAGS)
def test_every_flag_has_help_and_shows_its_default(command):
    sub = _subparsers(build_parser())[command]
    text = sub.format_help()
    required_choice = [a for g in sub._mutually_exclusive_groups if g.required for a in g._group_actions]
    for action in sub._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[-1]
        assert action.help, f"amk {command} {flag} has no help"
        if action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in " ".join(text.split()), (command, flag)
        elif action.default is None and not action.required and action not in required_choice:
            assert "default" in action.help, f"amk {command} {flag}: say what the default is"
    if any("--dtype" in a.option_strings for a in sub._actions):
        assert "{fp32,fp16,bf16}" in text


@pytest.mark.parametrize("command", list(_subparsers(build_parser())))
def test_no_flag_states_its_default_twice(command):
    text = " ".join(_subparsers(build_parser())[command].format_help().split())
    assert not re.search(r"\(default: [^()]*\) \(default: ", text), command


def test_a_knob_made_inert_by_a_derived_value_is_named_with_where_that_value_came_from():
    # toy at 32 positions derives one KV partition: the combine then has nothing to combine
    short, _ = build_program("toy", "cpu-sim", {"attention": {"combine": "stage"}}, device="cpu", max_seq=32)
    assert short.derived["attention.kv_partitions"] == 1
    assert any(n.startswith("attention.combine=stage has no effect") and "derived from the model's shape" in n
               for n in short.notes)
    long, _ = build_program("toy", "cpu-sim", {"attention": {"combine": "stage"}}, device="cpu", max_seq=256)
    assert long.derived["attention.kv_partitions"] > 1 and not any("has no effect" in n for n in long.notes)


def test_a_loop_progress_line_gives_units_and_the_latency_kind():
    from amk.progress import progress_line

    p = {"trial": 4, "status": "keep", "schedule_id": "b4b855881ef6", "latency_us": 83.994, "kind": "predicted",
         "best_latency_us": 80.5}
    assert progress_line(p) == "trial    4 keep      b4b855881ef6 latency 83.99 us (predicted) best 80.50 us"
    crashed = dict(p, latency_us=None, best_latency_us=None, status="crash")
    assert progress_line(crashed).endswith("latency - best -")  # no kind without a latency


def test_a_long_trial_description_keeps_its_outcome_whole():
    from amk.progress import trial_description

    outcome = "0.52% lower latency (a keep needs more than 1.00% lower)"
    change = "mutate: " + ", ".join(f"matvec.knob_{i}.rows_per_task=64" for i in range(6))
    line = trial_description({"description": change + ": " + outcome, "outcome": outcome})
    assert line.endswith("...: " + outcome) and line.startswith("mutate: matvec.knob_0") and len(line) <= 140
    short = "attention.sync=stage: " + outcome
    assert trial_description({"description": short, "outcome": outcome}) == short
    assert trial_description({"description": "x" * 300}) == "x" * 137 + "..."  # a callback's own text: cut
    # a crash's message over many lines: one line, the width held, the change's start and the outcome's kept
    crash = "NVRTCError: compile failed\n" + "error line\n" * 300
    line = trial_description({"description": change + ": " + crash, "outcome": crash})
    assert "\n" not in line and len(line) == 140 and line.startswith("mutate: ") and ": NVRTCError: compile" in line


def test_a_context_past_the_models_positions_is_noted():
    import amk

    v = amk.evaluate("toy", "cpu-sim", {}, device="cpu", max_seq=1024)  # toy holds 512 positions
    assert any(n.startswith("max_seq 1024 is past the model's 512 positions") for n in v["notes"]), v["notes"]
    within = amk.evaluate("toy", "cpu-sim", {}, device="cpu", max_seq=512)
    assert not any("past the model's" in n for n in within["notes"])


def test_the_python_api_draws_no_gguf_conversion_bar_into_a_pipe():
    # amk.generate / amk.load_model on the GGUF model, from a script with stderr piped, drew transformers'
    # "Converting and de-quantizing GGUF tensors" tqdm bar; tqdm and transformers are left as they were after
    code = ("import amk, tqdm.std\n"
            "import transformers.utils.logging as t\n"
            "init = vars(tqdm.std.tqdm)['__init__']\n"
            "m = amk.load_model('smollm2-135m-instruct')\n"
            "assert m.dims.n_layers == 30\n"
            "assert t.is_progress_bar_enabled() and vars(tqdm.std.tqdm)['__init__'] is init\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "GGUF" not in p.stderr and "Loading weights" not in p.stderr and "\r" not in p.stderr, p.stderr[-2000:]


def test_version_answers_as_any_command_does(capsys):
    import amk
    from amk.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"amk {amk.__version__}\n"
    for argv in (["--json", "--version"], ["--version", "--json"]):
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out) == {"ok": True, "exit_code": 0, "version": amk.__version__}
    for argv in (["--json", "--version", "--bogus"], ["--json", "--bogus", "--version"], ["--json", "--version", "doctor"]):
        assert main(argv) == 2, argv  # a flag or command beside it is not dropped unread
        out = json.loads(capsys.readouterr().out)
        assert out["error_type"] == "usage" and "not taken beside --version" in out["error"], out


def test_an_answer_that_cannot_be_written_is_an_environment_error_not_a_correctness_failure(tmp_path):
    env = {**os.environ, "AMK_CACHE_DIR": str(tmp_path / "cache")}
    cmd = f"exec {sys.executable} -m amk.cli --json -q models >&-"  # stdout closed, as `>&-` leaves it
    done = subprocess.run(["sh", "-c", cmd], capture_output=False, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 3 and "could not be written" in done.stderr and "Traceback" not in done.stderr


def test_more_kv_partitions_than_positions_is_noted():
    def notes(parts: int) -> list[str]:
        v = amk.evaluate("toy", "cpu-sim", {"attention": {"kv_partitions": parts}}, device="cpu", max_seq=32)
        assert v["correct"]  # empty partitions are wasted work, not wrong answers
        return [n for n in v["notes"] if n.startswith("attention.kv_partitions=")]

    assert notes(48) == ["attention.kv_partitions=48 is more than the program's 32 positions (max_seq): at least 16 "
                         "partitions of each KV head are empty at every step, and still run, signal and are combined; "
                         "kv_partitions=32 gives every position one"]
    assert notes(32) == []
