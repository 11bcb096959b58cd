"""A max_seq the kernel cannot index, or whose buffers a target's device memory cannot hold, is refused by the
validator and named as max_seq by the commands: compile wrote such a program as valid."""

from __future__ import annotations

import json

import pytest
from _cli import cli_json as run

import amk
from amk.schedule.targets import TARGETS, get_target
from amk.schedule.validate import context_problems


@pytest.fixture(scope="module")
def toy():
    return amk.load_model("toy", weights=False)


def test_buffers_past_a_targets_memory_are_refused_on_it_and_run_on_a_larger_one(toy):
    seq = 2**28  # toy: about 102 GiB of buffers, 64 GiB of it the KV cache
    small = amk.validate(amk.lower(toy, "h100-sxm", max_seq=seq))
    assert not small and [i.kind.value for i in small.issues] == ["abi"], small.issues
    assert small.issues[0].message.startswith(f"max_seq: {seq} positions: the program's buffers need 102.0 GiB "
                                              "(64.0 GiB of it the KV cache), past h100-sxm's 79.6 GiB")
    assert amk.validate(amk.lower(toy, "h200", max_seq=seq))  # 140.4 GiB
    assert amk.validate(amk.lower(toy, "cpu-sim", max_seq=seq))  # no device memory to check


def test_a_max_seq_past_the_kernels_int_offsets_is_refused_whatever_the_memory(toy):
    prog = amk.lower(toy, "cpu-sim", max_seq=2**31 + 5)
    heads = prog.constants.n_heads
    assert context_problems(prog, get_target("cpu-sim")) == [
        f"{2**31 + 5} positions: {heads} q heads x max_seq = {heads * (2**31 + 5)} attention scores, past the int32 "
        f"offsets the kernel takes them at"]
    assert not amk.validate(prog)


def test_every_registered_gpu_has_its_memory_and_the_default_context_fits(toy):
    prog = amk.lower(toy, "h100-sxm")
    for t in TARGETS.values():
        assert t.name == "cpu-sim" or t.memory_bytes > 16 * 2**30, t
        assert context_problems(prog, t) == []


def test_compile_names_max_seq(capsys, tmp_path):
    # evaluate and propose refuse it too, by the memory free here (check_kv_memory) or by the target's
    argv = ["compile", "--model", "toy", "--gpu", "h100-sxm", "--dtype", "fp32", "--max-seq", str(2**28), "--out",
            str(tmp_path / "p.json")]
    code, s = run(capsys, *argv)
    assert code == 2 and s["error_type"] == "usage", s
    assert s["error"].startswith(f"--max-seq: {2**28} positions: the program's buffers need 102.0 GiB"), s
    assert not (tmp_path / "p.json").exists()


def test_a_context_that_fits_compiles(capsys, tmp_path):
    code, s = run(capsys, "compile", "--model", "toy", "--gpu", "h200", "--max-seq", "4096", "--out",
                  str(tmp_path / "p.json"))
    assert code == 0, s
    assert json.loads((tmp_path / "p.json").read_text())["constants"]["max_seq"] == 4096
