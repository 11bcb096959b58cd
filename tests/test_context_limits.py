"""A max_seq the kernel cannot index, or whose buffers a target's device memory cannot hold, is refused by the
validator and named as max_seq by the commands: compile wrote such a program as valid."""

from __future__ import annotations

import dataclasses
import json

import pytest
from _cli import cli_json as run

import amk
from amk.schedule.targets import TARGETS, get_target
from amk.schedule.validate import context_problems, memory_problem, resident_bytes


@pytest.fixture(scope="module")
def toy():
    return amk.load_model("toy", weights=False)


def test_buffers_past_a_targets_memory_are_refused_on_it_and_run_on_a_larger_one(toy):
    seq = 2**28  # toy: about 102 GiB of buffers, 64 GiB of it the KV cache
    small = amk.validate(amk.lower(toy, "h100-sxm", max_seq=seq))
    assert not small and [i.kind.value for i in small.issues] == ["abi"], small.issues
    assert small.issues[0].message.startswith("the program's buffers need 102.0 GiB (the weights 0.0, the KV cache "
                                              f"64.0 at max_seq {seq}), past h100-sxm's 79.6 GiB")
    assert amk.validate(amk.lower(toy, "h200", max_seq=seq))  # 140.4 GiB
    assert amk.validate(amk.lower(toy, "cpu-sim", max_seq=seq))  # no device memory to check


def test_a_max_seq_past_the_kernels_int_offsets_is_refused_whatever_the_memory(toy):
    prog = amk.lower(toy, "cpu-sim", max_seq=2**31 + 5)
    heads = prog.constants.n_heads
    assert context_problems(prog) == [
        f"{2**31 + 5} positions: {heads} q heads x max_seq = {heads * (2**31 + 5)} attention scores, past the int32 "
        f"offsets the kernel takes them at"]
    assert not amk.validate(prog)


def test_every_registered_gpu_has_its_memory_and_the_default_context_fits(toy):
    prog = amk.lower(toy, "h100-sxm")
    for t in TARGETS.values():
        assert t.name == "cpu-sim" or t.memory_bytes > 16 * 2**30, t
        assert memory_problem(prog, t) is None


def test_compile_names_max_seq(capsys, tmp_path):
    # evaluate and propose refuse it too, by the memory free here (check_kv_memory) or by the target's
    argv = ["compile", "--model", "toy", "--gpu", "h100-sxm", "--dtype", "fp32", "--max-seq", str(2**28), "--out",
            str(tmp_path / "p.json")]
    code, s = run(capsys, *argv)
    assert code == 2 and s["error_type"] == "usage", s
    assert s["error"].startswith(f"--max-seq: {2**28} positions: the program's buffers need 102.0 GiB"), s
    assert "the weights 0.0, the KV cache 64.0 at max_seq" in s["error"], s
    assert not (tmp_path / "p.json").exists()


def test_a_context_that_fits_compiles(capsys, tmp_path):
    code, s = run(capsys, "compile", "--model", "toy", "--gpu", "h200", "--max-seq", "4096", "--out",
                  str(tmp_path / "p.json"))
    assert code == 0, s
    assert json.loads((tmp_path / "p.json").read_text())["constants"]["max_seq"] == 4096


def _with_memory(name: str, memory: int):
    return dataclasses.replace(get_target(name), memory_bytes=memory)


def test_weights_past_the_memory_are_the_models_fault_not_max_seqs():
    from amk.harness.evaluate import build_program

    model = amk.load_model("smollm2-135m", dtype="fp32", weights=False)  # about 0.5 GiB of fp32 weights
    with pytest.raises(amk.ArgumentError) as e:
        build_program(model, _with_memory("h100-sxm", 2**28), {}, device="cpu")
    assert e.value.argument == "model" and "its weights need 0.5 GiB in fp32, past h100-sxm's 0.2 GiB" in str(e.value)


def test_a_config_whose_own_buffers_tip_the_memory_is_a_rejected_config():
    # the default config's program fits exactly; scratch "none" keeps every value in a buffer of its own
    from amk.harness.evaluate import build_program

    fits = resident_bytes(amk.lower(toy_model := amk.load_model("toy", dtype="bf16", weights=False), "h100-sxm"))
    target = _with_memory("h100-sxm", fits)
    v, program = build_program(toy_model, target, {}, device="cpu")
    assert v.valid and program is not None
    v, program = build_program(toy_model, target, {"scratch": "none"}, device="cpu")
    assert not v.valid and program is None
    assert "the program's buffers need" in v.rejected_reason and "max_seq:" not in v.rejected_reason
