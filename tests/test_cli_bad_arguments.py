"""Flags, files and signals a careless caller gets wrong: each refused with an error naming what is wrong."""

from __future__ import annotations

import io
import json
import os
import signal

import pytest
import torch
from _cli import cli_json

from amk.harness.commands import UsageError, read_config_arg
from amk.harness.search.signals import StopFlag
from amk.harness.verdict import parse_config
from amk.schedule.errors import ConfigError

run = cli_json


@pytest.mark.parametrize("argv, flag", [
    (["evaluate", "--model", "toy", "--seed", "9" * 23], "--seed"),
    (["evaluate", "--model", "toy", "--seed", "-1"], "--seed"),
    (["loop", "--model", "toy", "--seed", str(2**63)], "--seed"),
    (["loop", "--model", "toy", "--budget", "0"], "--budget"),
    (["loop", "--model", "toy", "--budget", "-1"], "--budget"),
    (["loop", "--model", "toy", "--minutes", "nan"], "--minutes"),
    (["loop", "--model", "toy", "--minutes", "-1"], "--minutes"),
    (["loop", "--model", "toy", "--minutes", "inf"], "--minutes"),
    (["loop", "--model", "toy", "--workers", "0"], "--workers"),
    (["loop", "--model", "toy", "--builders", "-1"], "--builders"),
    (["loop", "--model", "toy", "--max-reverts", "0"], "--max-reverts"),
])
def test_out_of_range_flags_are_usage_errors_naming_the_flag(capsys, tmp_path, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, *argv)
    assert code == 2 and out["error_type"] == "usage" and flag in out["error"]
    assert not (tmp_path / "results.tsv").exists()


def test_results_and_corpus_in_one_file_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "loop", "--model", "toy", "--budget", "1", "--results", "same.txt",
                    "--corpus", "./same.txt")
    assert code == 2 and "--results and --corpus" in out["error"]
    assert not (tmp_path / "same.txt").exists()


def test_a_corpus_naming_the_results_files_claims_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "loop", "--model", "toy", "--budget", "1", "--results", "x.tsv",
                    "--corpus", "x.tsv.claims")
    assert code == 2 and "--corpus" in out["error"] and "claims file" in out["error"]
    assert not (tmp_path / "x.tsv").exists() and not (tmp_path / "x.tsv.claims").exists()


def test_config_argument_reads_an_existing_file_before_trying_inline_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2024-cfg.json").write_text('{"pipelining_depth": 1}')
    assert json.loads(read_config_arg("2024-cfg.json")) == {"pipelining_depth": 1}
    assert read_config_arg('{"pipelining_depth": 2}') == '{"pipelining_depth": 2}'
    (tmp_path / "adir").mkdir()
    with pytest.raises(UsageError, match="--config 'adir' is a directory"):
        read_config_arg("adir")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(UsageError, match="not a UTF-8 text file"):
        read_config_arg("bin.json")
    with pytest.raises(UsageError, match="no such file"):
        read_config_arg("missing.json")
    assert read_config_arg("") == "" and read_config_arg("  ") == "  "  # not the working directory: text, no JSON
    r, w = os.pipe()  # a pipe, as `--config <(...)` or /dev/stdin give: a file that is no regular file
    os.write(w, b'{"pipelining_depth": 3}')
    os.close(w)
    try:
        assert json.loads(read_config_arg(f"/dev/fd/{r}")) == {"pipelining_depth": 3}
    finally:
        os.close(r)


@pytest.mark.parametrize("name", ["2024-cfg.json", "0001.json", "-cfg.json", "1e", "cfgs/2024.json"])
def test_a_missing_config_file_whose_name_starts_like_json_is_no_such_file(tmp_path, monkeypatch, capsys, name):
    """A name that starts with a digit or '-' and does not parse as JSON is a file not found (a usage error),
    where it read as malformed inline JSON: a rejected config whose hint was Python code."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="no such file"):
        read_config_arg(name)
    code, out = run(capsys, "evaluate", "--model", "toy", f"--config={name}")  # '=': argparse takes -x for a flag
    assert code == 2 and out.get("error_type") == "usage" and "no such file" in out["error"], out


@pytest.mark.parametrize("text", ["-5", "[1, 2]", '"x"', "null", "[1,2", "[1, 2", "1 2"])
def test_json_text_that_is_no_object_stays_a_rejected_config(tmp_path, monkeypatch, capsys, text):
    monkeypatch.chdir(tmp_path)
    assert read_config_arg(text) == text
    code, out = run(capsys, "evaluate", "--model", "toy", f"--config={text}")
    assert code == 2 and out["valid"] is False and "error_type" not in out, out


def test_an_inline_json_object_is_read_as_itself_beside_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "{}").write_text('{"pipelining_depth": 1}')
    (tmp_path / ' {"pipelining_depth": 2}').write_text("not json")
    assert read_config_arg("{}") == "{}"
    assert read_config_arg(' {"pipelining_depth": 2}') == ' {"pipelining_depth": 2}'
    assert json.loads(read_config_arg("./{}")) == {"pipelining_depth": 1}  # the file, named as a path


def test_config_argument_reads_at_most_4_mib_and_drops_a_byte_order_mark(tmp_path, monkeypatch):
    import io

    with pytest.raises(UsageError, match="--config '/dev/zero': more than 4 MiB"):
        read_config_arg("/dev/zero")  # a stream that never ends: refused, not read until memory runs out
    monkeypatch.setattr("sys.stdin", io.StringIO("{" * ((4 << 20) + 1)))
    with pytest.raises(UsageError, match="stdin holds more than 4 MiB"):
        read_config_arg("-")
    (tmp_path / "bom.json").write_bytes(b'\xef\xbb\xbf{"pipelining_depth": 1}')
    assert json.loads(read_config_arg(str(tmp_path / "bom.json"))) == {"pipelining_depth": 1}


@pytest.mark.parametrize("text", ["", '{"attention": '], ids=["empty", "truncated"])
def test_a_config_file_that_is_not_json_is_named_in_its_rejected_verdict(capsys, tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.json").write_text(text)
    code, out = run(capsys, "evaluate", "--model", "toy", "--config", "cfg.json")
    assert code == 2 and not out["valid"], out
    assert out["rejected_reason"].startswith("schema: $: not valid JSON (--config 'cfg.json'): "), out
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code, out = run(capsys, "evaluate", "--model", "toy", "--config", "-")
    assert code == 2 and "not valid JSON (--config -: stdin)" in out["rejected_reason"], out


def test_an_empty_config_is_a_rejected_verdict_not_a_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "evaluate", "--model", "toy", "--config", "")
    assert code == 2 and not out["valid"] and out["rejected_reason"].startswith("schema: $: not valid JSON"), out


def test_a_file_name_given_to_the_api_as_a_config_is_pointed_out(tmp_path, monkeypatch):
    """The CLI's --config takes a path, the Python API's config a JSON text: a file name there says so."""
    import amk

    monkeypatch.chdir(tmp_path)
    (tmp_path / "incumbent").write_text("{}")
    for name in ("incumbent.json", "incumbent"):
        reason = amk.evaluate("toy", "cpu-sim", name, device="cpu")["rejected_reason"]
        assert f"{name!r} looks like a file name" in reason and "json.load" in reason, reason
    assert "file name" not in amk.evaluate("toy", "cpu-sim", "{bad", device="cpu")["rejected_reason"]
    assert "file name" not in amk.evaluate("toy", "cpu-sim", "x" * 5000, device="cpu")["rejected_reason"]


def test_a_key_given_twice_in_a_config_is_an_error_naming_it():
    with pytest.raises(ConfigError) as e:
        parse_config('{"pipelining_depth": 99, "pipelining_depth": 1}')
    assert e.value.path == "$.pipelining_depth" and "given twice" in str(e.value)
    with pytest.raises(ConfigError, match=r"\$\.attention\.sync"):
        parse_config('{"attention": {"sync": "head", "sync": "stage"}}')


def test_sigterm_stops_a_loop_like_sigint():
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.set
        with pytest.raises(KeyboardInterrupt):  # a second one aborts at once
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("text", ["1,,2", "1,", ",1", ""])
def test_prompt_ids_with_an_empty_part_are_refused(capsys, text):
    code, out = run(capsys, "generate", "--model", "toy", "--prompt-ids", text)
    assert code == 2 and "--prompt-ids" in out["error"] and "'' is not a token id" in out["error"]


def test_bench_contexts_with_an_empty_part_are_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "bench", "--model", "toy", "--verify-not-required", "--contexts", "1,,2")
    assert code == 2 and "--contexts '1,,2'" in out["error"]


def test_an_explicit_map_entry_for_a_kind_the_program_lacks_is_named():
    import amk

    v = amk.evaluate("toy", "cpu-sim", {"sm": {"assignment": "explicit",
                                               "explicit_map": {"attention_values": [1], "qkv": [0, 1]}}},
                     cases="reduced")
    notes = [n for n in v["notes"] if n.startswith("sm.explicit_map.")]
    assert len(notes) == 1 and "attention_values has no effect" in notes[0]  # qkv tasks exist: no note


def test_a_malformed_start_config_names_its_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "loop", "--model", "toy", "--budget", "1", "--config", '{"bogus": 1}')
    assert code == 2 and out["error"].startswith("--config: $.bogus: unknown key")
    assert not (tmp_path / "results.tsv").exists()
    code, out = run(capsys, "propose", "--model", "toy", "--incumbent", '{"attention": {"sync": "x"}}')
    assert code == 2 and out["error"].startswith("--incumbent: $.attention.sync")
    code, out = run(capsys, "propose", "--model", "toy", "--incumbent", "missing.json")
    assert code == 2 and "--incumbent 'missing.json': no such file" in out["error"]


def test_more_heads_per_qkv_task_than_the_model_has_is_named():
    import amk

    v = amk.evaluate("toy", "cpu-sim", {"matvec": {"qkv": {"heads_per_task": 1024}}}, cases="reduced")
    named = [n for n in v["notes"] if n.startswith("matvec.qkv.heads_per_task")]
    assert v["valid"] and len(named) == 1, named  # once, as the knob past its cap that has no effect
    assert named[0].startswith("matvec.qkv.heads_per_task=1024 has no effect: beyond 10")
    v = amk.evaluate("toy", "cpu-sim", {"matvec": {"qkv": {"heads_per_task": 2}}}, cases="reduced")
    assert not any(n.startswith("matvec.qkv.heads_per_task") for n in v["notes"])


def test_sigterm_ends_any_command_with_exit_130_and_its_json(capsys, monkeypatch):
    from amk.harness import commands

    def terminated(args):  # a command that receives SIGTERM while it works
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setitem(commands.COMMANDS, "evaluate", terminated)
    code, out = run(capsys, "evaluate", "--model", "toy")
    assert code == 130 and out == {"ok": False, "exit_code": 130, "error": "interrupted", "error_type": "interrupted"}
    assert signal.getsignal(signal.SIGTERM) == before  # restored after the command


def test_an_interrupted_loop_answers_with_its_summary_and_the_interrupted_error(capsys, tmp_path, monkeypatch):
    from amk.harness import cmd_run, commands
    from amk.harness.loop import StopReason

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("amk.harness.loop.loop", lambda *a, **k: {
        "stopped": StopReason.INTERRUPTED.value, "trials": 1, "statuses": {}, "incumbent": {}})
    monkeypatch.setattr(cmd_run, "loop_text", lambda s: "summary")
    monkeypatch.setattr(commands, "_save_cache_stats", lambda: None)
    code, out = run(capsys, "loop", "--model", "toy", "--budget", "1")
    assert code == 130 and out["stopped"] == "interrupted" and out["error_type"] == "interrupted"


@pytest.mark.parametrize("argv, lead", [
    (["evaluate", "--model", "no-such-model"], "--model: unknown model 'no-such-model'"),
    (["evaluate", "--model", "toy", "--gpu", "no-such-gpu"], "--gpu: unknown GPU target 'no-such-gpu'"),
    (["generate", "--model", "toy", "--prompt-ids", "1,2,392"], "--prompt-ids: token ids [392] outside"),
    (["generate", "--model", "toy", "--prompt", "hello"], "--prompt: model 'toy' has no tokenizer"),
    (["propose", "--model", "toy", "--incumbent", '{"matvec": {"qkv": {"head_splits": 3}}}'],
     "--incumbent: does not lower for toy on cpu-sim: lowering: matvec.qkv.head_splits"),
    (["generate", "--model", "toy", "--prompt-ids", "1,2", "--max-new-tokens", "600", "--max-seq", "512"],
     "--max-new-tokens, --max-seq: a prompt of 2 tokens and 600 new tokens need 601 positions"),
    (["generate", "--model", "toy", "--prompt-ids", "1,2,3", "--max-new-tokens", "3", "--max-seq", "4"],
     "--max-new-tokens, --max-seq: a prompt of 3 tokens and 3 new tokens need 5 positions, the program holds 4"),
])
def test_errors_from_below_the_cli_lead_with_the_flag_to_mend(capsys, argv, lead):
    """The library's errors name API arguments (prompt=, max_seq=); the CLI says which flag they came from."""
    code, out = run(capsys, *argv)
    assert code == 2 and out["error_type"] == "usage" and out["error"].startswith(lead), out["error"]


@pytest.mark.parametrize("argv, code, kind, lead", [
    (["generate", "--model", "toy", "--prompt-ids", "1,2", "--config",
      '{"matvec": {"qkv": {"head_splits": 2, "heads_per_task": 2}}}'], 2, "usage", "--config: matvec.qkv.head_splits"),
    (["generate", "--model", "toy", "--prompt-ids", "1", "--config", '{"x": 1}'], 2, "usage", "--config: $.x: unknown key"),
    (["loop", "--model", "toy", "--budget", "1", "--config",
      '{"matvec": {"qkv": {"head_splits": 2, "heads_per_task": 2}}}'], 2, "usage", "--config: the given config"),
    (["evaluate", "--model", "toy", "--corpus", "."], 2, "usage", "--corpus: '.' is a directory"),
    (["propose", "--model", "toy", "--corpus", "."], 2, "usage", "--corpus: '.' is a directory"),
    # named but not there: a misspelt corpus would start propose from the defaults with no word of why
    (["evaluate", "--model", "toy", "--corpus", "runs/c.jsonl"], 2, "usage", "--corpus 'runs/c.jsonl': no such file"),
    (["propose", "--model", "toy", "--corpus", "runs/c.jsonl"], 2, "usage", "--corpus 'runs/c.jsonl': no such file"),
    (["report", "--results", "."], 2, "usage", "--results '.': is a directory"),
])
def test_a_config_or_file_the_command_cannot_use_names_its_flag(capsys, tmp_path, monkeypatch, argv, code, kind, lead):
    monkeypatch.chdir(tmp_path)
    got, out = run(capsys, *argv)
    assert got == code and out["error_type"] == kind and out["error"].startswith(lead), out
    assert not (tmp_path / "results.tsv").exists()


@pytest.mark.parametrize("argv, lead", [
    (["evaluate", "--model", "toy", "--dtype", "bf17"], "--dtype: invalid choice: 'bf17'"),
    (["loop", "--model", "toy", "--budget", "0"], "--budget: expected a positive integer"),
    (["generate", "--model", "toy", "--prompt-ids", "1,2,x"], "--prompt-ids: expected comma-separated token ids"),
    (["evaluate"], "--model: required (amk evaluate)"),
    (["generate", "--model", "toy"], "--prompt | --prompt-ids: one of them is required (amk generate)"),
    (["cache", "stats", "--x"], "--x: unrecognized argument (amk cache stats)"),
    (["loop", "--m", "toy"], "--m: ambiguous, could be --model, --minutes, --max-reverts, --max-seq (amk loop)"),
    (["loop", "--m=a b"], "--m: ambiguous, could be --model, --minutes, --max-reverts, --max-seq (amk loop)"),
    (["evaluate", "--model", "toy", "--bogus", "1"], "--bogus 1: unrecognized arguments (amk evaluate)"),
    (["evaluate", "--model", "lama-3.2-1b"], "--model: unknown model 'lama-3.2-1b'"),
    (["evaluate", "--model", "toy", "--gpu", "h100"], "--gpu: unknown GPU target 'h100'"),
])
def test_a_flag_argparse_refuses_leads_its_message(capsys, argv, lead):
    code, out = run(capsys, *argv)
    assert code == 2 and out["error"].startswith(lead), out["error"]
    assert "amk: " not in out["error"]  # printed after "amk: error: ", the program's name once
    if "unknown" in lead:  # a near miss of a known name is suggested
        assert "did you mean 'llama-3.2-1b'?" in out["error"] or "did you mean 'h100-pcie' or 'h100-sxm'?" in out["error"]


def test_a_model_name_too_long_for_a_path_is_an_unknown_model(capsys):
    code, out = run(capsys, "evaluate", "--model", "x" * 300)
    assert code == 2 and out["error"].startswith("--model: unknown model 'xxx"), out["error"]


def test_an_abbreviated_json_flag_beside_a_bad_argument_still_answers_in_json(capsys):
    from amk.cli import main

    code = main(["models", "--jso", "--bogus"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 2 and out["exit_code"] == 2 and out["error"] == "--bogus: unrecognized argument (amk models)"


def test_a_model_field_amk_does_not_lower_names_the_model_flag(capsys, tmp_path):
    from _checkpoints import llama

    path = llama(tmp_path / "gelu", hidden_act="gelu")
    code, out = run(capsys, "evaluate", "--model", str(path), "--config", "{}")
    assert code == 2 and out["error_type"] == "usage"
    assert out["error"].startswith("--model: unsupported model feature: hidden_act='gelu'"), out["error"]


def test_swish_is_silu_under_its_other_name(capsys, tmp_path):
    # transformers builds the same SiLU for either spelling; a checkpoint that says swish verifies as silu does
    from _checkpoints import llama
    from transformers.activations import ACT2FN

    x = torch.linspace(-4, 4, 9)
    assert torch.equal(ACT2FN["swish"](x), torch.nn.functional.silu(x))
    path = llama(tmp_path / "swish", hidden_act="swish")
    code, out = run(capsys, "evaluate", "--model", str(path), "--config", "{}", "--dtype", "fp32", "--max-seq", "32")
    assert code == 0 and out["correct"] is True, out


def test_inline_json_and_paths_longer_than_a_file_name_are_no_crash(capsys, tmp_path, monkeypatch):
    # an inline config was tried as a file name first, and the system refused a name over 255 bytes
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "evaluate", "--model", "toy", "--config", '{"description": "' + "a" * 300 + '"}')
    assert code == 2 and out["rejected_reason"].startswith("schema: $.description: unknown key"), out
    code, out = run(capsys, "evaluate", "--model", "toy", "--config", '{"matvec": {"o": {"rows_per_task": 16}}, '
                    + '"pipelining_depth": 0' + " " * 300 + "}")
    assert code == 0 and out["correct"], out
    code, out = run(capsys, "report", "--results", "r" * 300 + ".tsv")
    assert code == 2 and out["error_type"] == "usage" and out["error"].startswith("--results: "), out
    assert "File name too long" in out["error"]


@pytest.mark.parametrize("where", ["builtin", "directory"])
def test_a_text_prompt_for_a_model_without_a_tokenizer_is_refused_before_the_model_loads(capsys, tmp_path,
                                                                                       monkeypatch, where):
    from _checkpoints import llama

    model = "toy" if where == "builtin" else str(llama(tmp_path / "m"))  # a checkpoint without tokenizer files

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before its prompt was refused")

    monkeypatch.setattr("amk.load_model", no_load)
    code, out = run(capsys, "generate", "--model", model, "--prompt", "hello")
    assert code == 2 and out["error"].startswith(f"--prompt: model {model!r} has no tokenizer"), out["error"]


def test_has_tokenizer_reads_the_directory_not_the_weights(tmp_path):
    from _checkpoints import llama

    from amk.models.registry import has_tokenizer
    from amk.schedule.errors import UnknownModelError

    path = llama(tmp_path / "m")
    assert not has_tokenizer(path) and not has_tokenizer("toy")
    (path / "tokenizer.json").write_text("{}")
    assert has_tokenizer(path)
    with pytest.raises(UnknownModelError):
        has_tokenizer(tmp_path / "nothing-here")


@pytest.mark.parametrize("json_flag", [True, False])
def test_a_ctrl_c_while_the_command_imports_is_answered(monkeypatch, capsys, json_flag):
    # Python raises KeyboardInterrupt wherever the import of the CLI is: the console script still answers
    import sys

    from amk import console

    class _Interrupted:
        def find_spec(self, name, path=None, target=None):
            if name == "amk.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "amk.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Interrupted(), *sys.meta_path])
    monkeypatch.setattr(sys, "argv", ["amk", *(["--json"] if json_flag else []), "loop", "--model", "toy"])
    assert console.main() == 130
    out, err = capsys.readouterr()
    if json_flag:
        assert json.loads(out) == {"ok": False, "exit_code": 130, "error": "interrupted", "error_type": "interrupted"}
    else:
        assert out == "" and err == "amk: error: interrupted\n"


# ---- a loop's two files given where another file belongs --------------------------------------------------------


def _loop_files(capsys, tmp_path) -> tuple[bytes, bytes]:
    """Run one loop trial in tmp_path; the bytes of its results.tsv and corpus.jsonl."""
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--cases", "reduced",
                  "--results", str(tmp_path / "results.tsv"), "--corpus", str(tmp_path / "corpus.jsonl"))
    assert code == 0, s
    return (tmp_path / "results.tsv").read_bytes(), (tmp_path / "corpus.jsonl").read_bytes()


def test_a_results_file_given_as_the_corpus_is_refused_and_left_as_it_is(capsys, tmp_path):
    before, _ = _loop_files(capsys, tmp_path)
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--cases", "reduced",
                  "--results", str(tmp_path / "new.tsv"), "--corpus", str(tmp_path / "results.tsv"))
    assert code == 2 and s["error"].startswith("--corpus:") and "is a results.tsv" in s["error"], s
    assert (tmp_path / "results.tsv").read_bytes() == before and not (tmp_path / "new.tsv").exists()


@pytest.mark.parametrize("name", ["results.tsv", "corpus.jsonl"])
@pytest.mark.parametrize("verb", ["compile", "verify"])
def test_an_out_file_holding_a_loops_record_is_not_overwritten(capsys, tmp_path, name, verb):
    files = dict(zip(("results.tsv", "corpus.jsonl"), _loop_files(capsys, tmp_path)))
    code, s = run(capsys, verb, "-q", "--model", "toy", "--gpu", "cpu-sim", "--out", str(tmp_path / name),
                  *(["--cases", "reduced"] if verb == "verify" else []))
    assert code == 2 and s["error"].startswith("--out") and "would overwrite" in s["error"], s
    assert (tmp_path / name).read_bytes() == files[name]


@pytest.mark.parametrize("verb", ["compile", "verify"])
def test_an_out_file_of_another_kind_is_not_overwritten_and_the_same_kind_is_replaced(capsys, tmp_path, verb):
    extra = ["--cases", "reduced"] if verb == "verify" else []
    out = tmp_path / "out.json"
    out.write_text('{"notes": "a file the user keeps"}\n')
    code, s = run(capsys, verb, "-q", "--model", "toy", "--gpu", "cpu-sim", "--out", str(out), *extra)
    assert code == 2 and s["error"].startswith(f"--out {str(out)!r}: exists and does not hold"), s
    assert out.read_text() == '{"notes": "a file the user keeps"}\n'
    out.write_text("")
    for _ in range(2):  # an empty file, then the command's own earlier output, are replaced
        code, s = run(capsys, verb, "-q", "--model", "toy", "--gpu", "cpu-sim", "--out", str(out), *extra)
        assert code == 0, s
        first = json.loads(out.read_text())
        assert ("tasks" in first) if verb == "compile" else (first["passed"] is True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left beside it
    other = tmp_path / "other.json"  # one command's output is not the other's
    other.write_text(out.read_text())
    code, s = run(capsys, "verify" if verb == "compile" else "compile", "-q", "--model", "toy", "--gpu", "cpu-sim",
                  "--out", str(other), *(["--cases", "reduced"] if verb == "compile" else []))
    assert code == 2 and "does not hold" in s["error"], s


def test_an_output_written_through_a_link_keeps_the_link_and_the_files_mode(capsys, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("")
    target.chmod(0o640)
    link = tmp_path / "program.json"
    link.symlink_to(target)
    code, s = run(capsys, "compile", "-q", "--model", "toy", "--gpu", "cpu-sim", "--out", str(link))
    assert code == 0, s
    assert link.is_symlink() and json.loads(target.read_text())["tasks"]
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_loop_file_whose_directory_cannot_be_made_is_refused_before_any_trial(capsys, tmp_path):
    (tmp_path / "plain").write_text("a file where a directory would go\n")
    for flag in ("--results", "--corpus"):
        paths = {"--results": str(tmp_path / "r.tsv"), "--corpus": str(tmp_path / "c.jsonl"),
                 flag: str(tmp_path / "plain" / "sub" / "x")}
        code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1",
                      *[a for kv in paths.items() for a in kv])
        assert code == 2 and s["error"].startswith(flag), s
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def test_peers_off_a_gpu_and_a_ray_address_for_one_worker_are_named_as_having_no_effect(capsys, tmp_path, caplog):
    import logging

    import amk

    v = amk.evaluate("toy", "cpu-sim", {}, cases="reduced", peers=True)
    assert any(n.startswith("peers=True (--peers) has no effect") for n in v["notes"]), v["notes"]
    with caplog.at_level(logging.WARNING, logger="amk.harness"):
        amk.loop("toy", "cpu-sim", budget=1, cases="reduced", ray_address="10.0.0.1:6379",
                 results=str(tmp_path / "r.tsv"), corpus=str(tmp_path / "c.jsonl"))
    assert "ray_address '10.0.0.1:6379' (--ray-address) has no effect" in caplog.text
    for bad in ("", 5):
        with pytest.raises(amk.ArgumentError) as e:
            amk.loop("toy", "cpu-sim", budget=1, ray_address=bad, results=str(tmp_path / "x.tsv"))
        assert e.value.argument == "ray_address"


def test_a_misspelt_required_flag_is_named_beside_the_missing_one(capsys):
    code, s = run(capsys, "evaluate", "--modl", "toy", "--gpu", "cpu-sim")
    assert code == 2 and s["error"].startswith("--model: required; --modl: unrecognized"), s
    code, s = run(capsys, "evaluate", "--gpu", "cpu-sim")  # nothing misspelt: nothing more said
    assert code == 2 and s["error"] == "--model: required (amk evaluate)", s


def test_an_empty_out_dir_or_corpus_is_refused_and_cpu_bench_steps_are_named_as_idle(capsys, tmp_path, monkeypatch):
    from amk.flywheel.results import HEADER

    (tmp_path / "r.tsv").write_text(HEADER)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # an empty path is the working directory: nothing may land in it
    for argv, flag in ((["report", "--results", str(tmp_path / "r.tsv"), "--out-dir", ""], "--out-dir"),
                       (["evaluate", "--model", "toy", "--gpu", "cpu-sim", "--corpus", ""], "--corpus")):
        code, s = run(capsys, *argv)
        assert code == 2 and s["error"].startswith(flag) and "empty" in s["error"], s
    assert not list((tmp_path / "cwd").iterdir())
    code, s = run(capsys, "bench", "-q", "--model", "toy", "--gpu", "cpu-sim", "--steps", "5", "--verify-not-required")
    assert code == 0 and "--steps 5 has no effect: a predicted latency times no steps" in s["notes"], s
    code, s = run(capsys, "bench", "-q", "--model", "toy", "--gpu", "cpu-sim", "--verify-not-required")
    assert code == 0 and not [n for n in s["notes"] if "--steps" in n], s


def test_a_corpus_that_holds_no_tuning_record_is_refused_and_left_as_it_is(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nline two\n")
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--cases", "reduced",
                  "--results", str(tmp_path / "r.tsv"), "--corpus", str(notes))
    assert code == 2 and s["error"].startswith("--corpus") and "holds no readable tuning record" in s["error"], s
    assert notes.read_text() == "my notes\nline two\n" and not (tmp_path / "r.tsv").exists()
    _, corpus = _loop_files(capsys, tmp_path)  # a corpus whose first line was torn still appends
    (tmp_path / "corpus.jsonl").write_bytes(b'{"record": 2, "mod\n' + corpus)
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--cases", "reduced",
                  "--results", str(tmp_path / "results.tsv"), "--corpus", str(tmp_path / "corpus.jsonl"), "--resume")
    assert code == 0, s
    # read only, by evaluate and propose (CLI and API alike): refused too, where it read as a corpus of no records
    import amk

    for argv in (["evaluate", "--model", "toy", "--cases", "reduced"], ["propose", "--model", "toy"]):
        code, s = run(capsys, *argv, "--corpus", str(notes))
        assert code == 2 and s["error"].startswith("--corpus") and "holds no readable tuning record" in s["error"], s
    with pytest.raises(amk.ArgumentError, match="holds no readable tuning record") as e:
        amk.propose("toy", "cpu-sim", corpus=notes)
    assert e.value.argument == "corpus" and notes.read_text() == "my notes\nline two\n"


def test_an_out_that_is_no_regular_file_or_names_a_directory_is_refused_before_the_work(capsys, tmp_path):
    # a rename over a device would replace it; opening a FIFO to read it blocks for ever
    fifo = tmp_path / "f.json"
    os.mkfifo(fifo)
    for out, says in ((str(fifo), "is not a regular file"), (str(tmp_path / "newdir") + "/", "names a directory")):
        code, s = run(capsys, "compile", "-q", "--model", "toy", "--gpu", "cpu-sim", "--out", out)
        assert code == 2 and s["error"].startswith("--out") and says in s["error"], s
    assert fifo.is_fifo() and not (tmp_path / "newdir").exists()


def test_a_corpus_or_results_that_is_no_regular_file_is_refused_before_any_read(capsys, tmp_path):
    # opening a FIFO to read it blocks until a writer comes: evaluate and propose waited for ever
    import amk

    fifo = tmp_path / "f.jsonl"
    os.mkfifo(fifo)
    (tmp_path / "r.tsv").write_text("")
    for argv, flag in ((["evaluate", "--model", "toy", "--cases", "reduced", "--corpus", str(fifo)], "--corpus"),
                       (["propose", "--model", "toy", "--corpus", str(fifo)], "--corpus"),
                       (["report", "--results", str(fifo)], "--results"),
                       (["report", "--results", str(tmp_path / "r.tsv"), "--corpus", str(fifo)], "--corpus")):
        code, s = run(capsys, *argv)
        assert code == 2 and s["error"].startswith(flag) and "is not a regular file" in s["error"], (argv, s)
    with pytest.raises(amk.ArgumentError, match="is not a regular file") as e:
        amk.propose("toy", "cpu-sim", corpus=fifo)
    assert e.value.argument == "corpus" and fifo.is_fifo()


def test_an_out_through_a_dangling_link_writes_the_file_it_names_and_keeps_the_link(capsys, tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "target.json")
    code, s = run(capsys, "compile", "-q", "--model", "toy", "--gpu", "cpu-sim", "--out", str(link))
    assert code == 0, s
    assert link.is_symlink() and json.loads((tmp_path / "target.json").read_text())["tasks"]


def test_an_out_of_a_long_name_is_written(capsys, tmp_path):
    out = tmp_path / ("a" * 240 + ".json")  # a temporary name built from it would pass the file system's 255
    code, s = run(capsys, "compile", "-q", "--model", "toy", "--gpu", "cpu-sim", "--out", str(out))
    assert code == 0 and json.loads(out.read_text())["tasks"], s
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize("name, says", [("a\0b.jsonl", "holds a NUL byte"), ("n" * 300 + ".jsonl", "past the file system's 255"),
                                        ("~amk-no-such-user/c.jsonl", "names no user"),
                                        # under a folder not made yet, where the lookup stops at the folder
                                        ("new/" + "n" * 300 + ".jsonl", "past the file system's 255")])
def test_a_path_the_file_system_takes_as_no_name_is_named_as_the_argument(capsys, tmp_path, name, says):
    # the Python API and the MCP tools pass such a string on (a command line cannot hold a NUL byte): each file
    # check raised a bare ValueError or OSError from deep inside
    import argparse

    import amk
    from amk.harness.cmd_report import report

    bad = name if name.startswith("~") else str(tmp_path / name)
    for call, argument in ((lambda: amk.propose("toy", "cpu-sim", corpus=bad), "corpus"),
                           (lambda: amk.evaluate("toy", "cpu-sim", {}, cases="reduced", corpus=bad), "corpus"),
                           (lambda: amk.loop("toy", "cpu-sim", budget=1, results=bad), "results"),
                           (lambda: amk.loop("toy", "cpu-sim", budget=1, results=str(tmp_path / "r.tsv"), corpus=bad),
                            "corpus")):
        with pytest.raises(amk.ArgumentError, match=says) as e:
            call()
        assert e.value.argument == argument
    ok = tmp_path / "r.tsv"
    ok.write_text("")
    for kw, flag in (({"results": bad}, "--results"), ({"corpus": bad}, "--corpus"),
                     ({"out_dir": bad, "no_plots": False}, "--out-dir")):
        args = {"results": str(ok), "corpus": str(tmp_path / "c.jsonl"), "out_dir": str(tmp_path / "o"),
                "no_plots": True} | kw
        with pytest.raises(UsageError, match=says) as e:
            report(argparse.Namespace(**args))
        assert str(e.value).startswith(flag)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tsv"]  # nothing written


def test_a_path_flag_starting_with_the_home_of_an_unknown_user_is_a_usage_error_naming_it(capsys, tmp_path):
    # pathlib raises RuntimeError for ~user of no such user: each of these ended as an internal error (exit 3)
    bad = "~amk-no-such-user/f"
    (tmp_path / "r.tsv").write_text("")
    for argv, flag in ((["compile", "-q", "--model", "toy", "--gpu", "cpu-sim", "--out", bad + ".json"], "--out"),
                       (["verify", "--model", "toy", "--out", bad + ".json"], "--out"),
                       (["report", "--results", bad + ".tsv"], "--results"),
                       (["loop", "--model", "toy", "--budget", "1", "--results", bad + ".tsv"], "--results"),
                       (["propose", "--model", "toy", "--corpus", bad + ".jsonl"], "--corpus"),
                       (["evaluate", "--model", "toy", "--config", bad + ".json"], "--config"),
                       (["bench", "--model", "toy", "--verify-result", bad + ".json"], "--verify-result")):
        code, s = run(capsys, *argv)
        assert code == 2 and s["error"].startswith(flag) and s["error_type"] == "usage", (argv, s)
        assert "names no user of this machine ('amk-no-such-user')" in s["error"], (argv, s)
    # every command that takes --model (compile ended as an internal error: its model key expanded the ~ first)
    for command in ("evaluate", "compile", "propose", "verify", "bench", "generate"):
        argv = [command, "--model", bad] + {"compile": ["--gpu", "cpu-sim"], "generate": ["--prompt-ids", "1"]}.get(
            command, [])
        code, s = run(capsys, *argv)
        assert code == 2 and s["error"].startswith("--model") and "unknown model" in s["error"], (command, s)


def test_a_path_argument_starting_with_tilde_is_under_the_home_directory_for_every_command(capsys, tmp_path,
                                                                                          monkeypatch):
    # the shell expands only an unquoted ~: a quoted one, or a Python or MCP caller's, reached the loop as written,
    # and it wrote ./~/r.tsv where its checks had looked at $HOME/r.tsv
    import amk

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    code, s = run(capsys, "loop", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--results", "~/r.tsv",
                  "--corpus", "~/c.jsonl")
    assert code == 0, s
    assert {"r.tsv", "c.jsonl"} <= {p.name for p in home.iterdir()} and list(work.iterdir()) == []
    code, s = run(capsys, "report", "--results", "~/r.tsv", "--corpus", "~/c.jsonl", "--no-plots")
    assert code == 0 and s["corpus"] is not None, s
    assert amk.propose("toy", "cpu-sim", corpus="~/c.jsonl", dtype="fp32")["source"].startswith("corpus:")
    code, s = run(capsys, "verify", "--model", "toy", "--cases", "reduced", "--out", "~/v.json")
    assert code == 0 and (home / "v.json").is_file(), s
    code, s = run(capsys, "bench", "--model", "toy", "--verify-result", "~/v.json")
    assert code == 0 and s.get("error_type") != "unverified", s
    assert list(work.iterdir()) == []


def test_a_symbolic_link_to_no_file_is_named_as_such_not_as_missing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("b", "a")
    os.symlink("a", "b")  # a loop
    os.symlink("gone", "dangling")
    for name in ("a", "dangling"):
        code, s = run(capsys, "report", "--results", name)
        assert code == 2 and "a symbolic link that leads to no file" in s["error"], s
        code, s = run(capsys, "bench", "--model", "toy", "--verify-result", name)
        assert code == 2 and "a symbolic link that leads to no file" in s["error"], s


def test_a_model_named_by_its_config_file_points_at_the_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    code, out = run(capsys, "evaluate", "--model", "ckpt/config.json")
    assert code == 2 and out["error_type"] == "usage"
    assert "is a file: a checkpoint is named by its directory, 'ckpt'" in out["error"], out["error"]


def test_a_gguf_file_is_pointed_at_the_built_in_that_loads_one(tmp_path, monkeypatch, capsys):
    # its directory holds no config.json: pointing there only failed again
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model.Q4_1.gguf").write_bytes(b"GGUF")
    code, out = run(capsys, "evaluate", "--model", "w/model.Q4_1.gguf")
    assert code == 2 and out["error_type"] == "usage"
    assert "is a GGUF file, which AMK does not load by path" in out["error"], out["error"]
    assert "'smollm2-135m-instruct'" in out["error"] and "named by its directory" not in out["error"]


def test_a_config_json_that_is_a_directory_is_named_as_such(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt" / "config.json").mkdir(parents=True)
    code, out = run(capsys, "evaluate", "--model", "ckpt")
    assert code == 2 and "config.json: is not a regular file (a directory?)" in out["error"], out["error"]
    assert "holds no config.json" not in out["error"]
