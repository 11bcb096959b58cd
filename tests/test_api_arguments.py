"""The Python API refuses a caller's mistake before any model work, with an ArgumentError naming the keyword:
never a crashed or rejected trial in results.tsv, never a plain TypeError from deep inside."""

from __future__ import annotations

import pytest
import torch

import amk


@pytest.mark.parametrize("kw, argument", [
    ({"cases": "x"}, "cases"),
    ({"cases": []}, "cases"),
    ({"dtype": "bf17"}, "dtype"),
    ({"budget": 0}, "budget"),
    ({"budget": -3}, "budget"),
    ({"budget": 1.5}, "budget"),
    ({"budget": 2**63}, "budget"),  # its trials could not be numbered: it ran as if unbounded
    ({"minutes": -1}, "minutes"),
    ({"minutes": float("nan")}, "minutes"),
    ({"workers": 0}, "workers"),
    ({"builders": -1}, "builders"),
    ({"max_reverts": 0}, "max_reverts"),
    ({"results": "same.tsv", "corpus": "same.tsv"}, "corpus"),
    ({"results": "."}, "results"),
    ({"corpus": "."}, "corpus"),
    ({"max_seq": 0}, "max_seq"),
    ({"max_seq": "64"}, "max_seq"),
    ({"max_seq": 2.5}, "max_seq"),
    ({"workers": 2}, "workers"),  # 2 workers for a budget of 1 trial
    ({"results": None}, "results"),
    ({"corpus": 5}, "corpus"),
    ({"progress": 5}, "progress"),
    ({"builders": 10**6}, "builders"),
    ({"resume": "false"}, "resume"),  # a string would count as true and resume the file
])
def test_loop_refuses_a_bad_argument_before_opening_its_files(tmp_path, monkeypatch, kw, argument):
    monkeypatch.chdir(tmp_path)
    args = {"budget": 1, "results": "r.tsv", "corpus": "c.jsonl", **kw}
    with pytest.raises(amk.ArgumentError) as e:
        amk.loop("toy", "cpu-sim", **args)
    assert e.value.argument == argument
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no results file, no corpus, no claims


@pytest.mark.parametrize("kw, argument", [
    ({"cases": 5}, "cases"),
    ({"cases": []}, "cases"),
    ({"cases": ()}, "cases"),
    ({"measure": "no"}, "measure"),
    ({"peers": 1}, "peers"),
    ({"corpus": "."}, "corpus"),
    ({"corpus": 5}, "corpus"),
    ({"cases": [1]}, "cases"),
    ({"dtype": "bf17"}, "dtype"),
])
def test_evaluate_refuses_a_bad_argument(tmp_path, monkeypatch, kw, argument):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(amk.ArgumentError) as e:
        amk.evaluate("toy", "cpu-sim", {}, **kw)
    assert e.value.argument == argument


def test_load_model_names_a_bad_dtype():
    with pytest.raises(amk.ArgumentError, match="dtype: 'bf17'"):
        amk.load_model("toy", dtype="bf17")


@pytest.mark.parametrize("prompt, kw, argument", [
    ([1, 2], {"max_new_tokens": 0}, "max_new_tokens"),
    ([1, 2], {"max_new_tokens": True}, "max_new_tokens"),
    ([1, 2], {"max_seq": -5}, "max_seq"),
    (5, {}, "prompt"),
    (["a"], {}, "prompt"),
    ([1.5], {}, "prompt"),
    ([], {}, "prompt"),
    ([1, 2], {"device": "gpu"}, "device"),
    ([1, 2], {"stop_at_eos": "no"}, "stop_at_eos"),
    ([1, 2], {"dtype": "bf17"}, "dtype"),
])
def test_generate_refuses_a_bad_argument(prompt, kw, argument):
    with pytest.raises(amk.ArgumentError) as e:
        amk.generate("toy", prompt, **kw)
    assert e.value.argument == argument


def test_generate_takes_prompt_plus_new_tokens_less_one_positions():
    """The last new token is not fed back: a 3-token prompt and 2 new tokens fit 4 positions, not 5."""
    ids = torch.tensor([1, 5, 9])
    out = amk.generate("toy", ids, max_new_tokens=2, device="cpu", max_seq=4, stop_at_eos=False)
    assert out.prompt_tokens == [1, 5, 9] and len(out.tokens) == 2
    assert out.decode_tokens_per_s > 0
    one = amk.generate("toy", ids, max_new_tokens=1, device="cpu", max_seq=4, stop_at_eos=False)
    assert one.tokens == out.tokens[:1] and one.decode_tokens_per_s is None  # no decode step ran: no rate
    with pytest.raises(amk.ContextError, match="need 5 positions, the program holds 4"):
        amk.generate("toy", [1, 5, 9], max_new_tokens=3, device="cpu", max_seq=4)


def test_generate_runs_in_the_dtype_asked_for_and_equal_generations_compare_equal():
    """dtype= picks the weights' and activations' dtype (a loaded Model is cast); the tokens are eager's greedy ones
    in that dtype; two generations of the same tokens are equal whatever their timings."""
    ids = [1, 5, 9]
    kw = {"max_new_tokens": 4, "device": "cpu", "max_seq": 8, "stop_at_eos": False}
    bf16 = amk.generate("toy", ids, dtype="bf16", **kw)
    assert bf16.dtype == "bf16" and bf16.to_dict()["dtype"] == "bf16"
    model = amk.load_model("toy")  # fp32
    assert amk.generate(model, ids, dtype="bf16", **kw) == bf16
    eager = amk.load_model("toy", dtype="bf16").eager
    want = eager.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, min_new_tokens=4)[0, 3:].tolist()
    assert bf16.tokens == want
    assert amk.generate(model, ids, **kw) == amk.generate("toy", ids, dtype="fp32", **kw)


def test_generate_past_the_models_context_runs_with_a_note(tmp_path):
    from _checkpoints import SMALL, save_checkpoint
    from transformers import LlamaConfig

    model = amk.load_model(save_checkpoint(LlamaConfig(**SMALL, num_hidden_layers=1, max_position_embeddings=8),
                                           tmp_path))
    inside = amk.generate(model, [1, 5, 9], max_new_tokens=6, device="cpu", max_seq=16, stop_at_eos=False)
    assert inside.notes == [] and len(inside.tokens) == 6  # 8 positions: the model's whole context
    past = amk.generate(model, [1, 5, 9], max_new_tokens=7, device="cpu", max_seq=16, stop_at_eos=False)
    assert len(past.tokens) == 7 and past.tokens[:6] == inside.tokens
    assert len(past.notes) == 1 and "take 9 positions, past the model's 8" in past.notes[0]
    # max_seq left out: the positions the tokens need, past the model's context too (it was capped at the
    # context, and the run refused with a ContextError blaming a max_seq the caller never gave)
    default = amk.generate(model, [1, 5, 9], max_new_tokens=7, device="cpu", stop_at_eos=False)
    assert default.tokens == past.tokens and default.notes == past.notes


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_generate_on_cuda_without_a_gpu_is_an_environment_problem():
    with pytest.raises(amk.EnvironmentProblem, match="cuda"):
        amk.generate("toy", [1, 2], device="cuda")


def test_lower_names_a_bad_model_max_seq_or_config():
    from amk.schedule import ScheduleConfig

    model = amk.load_model("toy", weights=False)
    with pytest.raises(amk.ArgumentError) as e:
        amk.lower("toy", "cpu-sim")  # a name, not a loaded model
    assert e.value.argument == "model"
    for bad in (0, 2.5, "8", True):
        with pytest.raises(amk.ArgumentError) as e:
            amk.lower(model, "cpu-sim", max_seq=bad)
        assert e.value.argument == "max_seq"
    edited = ScheduleConfig()
    edited.threads_per_block = "512"  # a dataclass field takes anything: lower re-parses it
    for cfg, path in (([1], "$"), ("{not json", "$"), (edited, "$.threads_per_block")):
        with pytest.raises(amk.ConfigError) as e:
            amk.lower(model, "cpu-sim", cfg)
        assert e.value.path == path
    as_text = amk.lower(model, "cpu-sim", '{"attention": {"kv_partitions": 2}}')
    assert as_text.fingerprint() == amk.lower(model, "cpu-sim", {"attention": {"kv_partitions": 2}}).fingerprint()


def test_verify_names_a_bad_program_model_or_cases():
    model = amk.load_model("toy")
    prog = amk.lower(model, "cpu-sim")
    for args, kw, argument in (((prog, None), {}, "model"), ((prog, "toy"), {}, "model"),
                               ((None, model), {}, "program"), ((prog, model), {"cases": "x"}, "cases"),
                               ((prog, model), {"cases": [1]}, "cases"), ((prog, model), {"cases": 5}, "cases"),
                               ((prog, amk.load_model("toy", weights=False)), {}, "model")):
        with pytest.raises(amk.ArgumentError) as e:
            amk.verify(*args, **kw)
        assert e.value.argument == argument


def test_verify_names_a_bad_device_vm_or_seed_and_a_missing_gpu():
    model = amk.load_model("toy")
    prog = amk.lower(model, "cpu-sim", max_seq=64)
    for kw, argument in (({"device": "bogus"}, "device"), ({"vm": "bogus"}, "vm"), ({"seed": 1.5}, "seed"),
                         ({"seed": -1}, "seed")):
        with pytest.raises(amk.ArgumentError) as e:
            amk.verify(prog, model, cases="smoke", **kw)
        assert e.value.argument == argument
    if not torch.cuda.is_available():
        with pytest.raises(amk.EnvironmentProblem):
            amk.verify(prog, model, cases="smoke", device="cuda")


def test_evaluate_and_loop_refuse_a_model_loaded_without_weights(tmp_path):
    lean = amk.load_model("toy", weights=False)
    for run in (lambda: amk.evaluate(lean, "cpu-sim", {}, cases="reduced"),
                lambda: amk.loop(lean, "cpu-sim", budget=1, results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl")):
        with pytest.raises(amk.ArgumentError) as e:
            run()
        assert e.value.argument == "model" and "weights=False" in str(e.value)
    assert not list(tmp_path.iterdir())  # refused before a results row or a record was written


def test_validate_and_generate_name_a_model_or_program_argument_that_is_none():
    lean = amk.load_model("toy", weights=False)
    for bad in (None, {}, lean):
        with pytest.raises(amk.ArgumentError) as e:
            amk.validate(bad)
        assert e.value.argument == "program"
    for bad in (None, 5, b"toy", lean):
        with pytest.raises(amk.ArgumentError) as e:
            amk.generate(bad, [1, 2], 2)
        assert e.value.argument == "model"


def test_verify_refuses_a_program_lowered_for_another_model_or_dtype():
    model = amk.load_model("toy")
    other_shape = amk.lower(amk.load_model("toy-2L", weights=False), "cpu-sim")
    other_dtype = amk.lower(amk.load_model("toy", dtype="bf16", weights=False), "cpu-sim")
    for prog, fields in ((other_shape, ("n_layers", "n_heads")), (other_dtype, ("dtype: program BF16",))):
        with pytest.raises(amk.ArgumentError) as e:
            amk.verify(prog, model, cases="smoke")
        assert e.value.argument == "program" and all(f in str(e.value) for f in fields), str(e.value)
    assert amk.verify(amk.lower(model, "cpu-sim", max_seq=64), model, cases="smoke").passed


@pytest.mark.parametrize("bad", [123, ["h100-sxm"], b"h200"])
def test_a_target_that_is_no_name_nor_gpu_target_is_named_as_the_argument(bad):
    model = amk.load_model("toy", weights=False)
    prog = amk.lower(model, "cpu-sim", max_seq=64)
    for call, argument in ((lambda: amk.lower(model, bad), "target"), (lambda: amk.validate(prog, bad), "target"),
                           (lambda: amk.evaluate("toy", bad, {}, device="cpu"), "gpu"),
                           (lambda: amk.propose("toy", bad), "gpu")):
        with pytest.raises(amk.ArgumentError) as e:
            call()
        assert e.value.argument == argument and "expected a GPU target name" in str(e.value), str(e.value)


def test_verify_refuses_a_program_the_validator_rejects():
    """A program past its target's limits runs on the ReferenceVM all the same: verify must not call it passed."""
    model = amk.load_model("toy")
    for target, config, words in (("cpu-sim", {"smem_per_block": 200000}, "smem_per_block=200000"),
                                  ("l4", {"pipeline": {"pages": 4}}, "pages")):
        prog = amk.lower(model, target, config, max_seq=64)
        assert not amk.validate(prog).ok
        with pytest.raises(amk.ProgramError) as e:
            amk.verify(prog, model, cases="smoke")
        assert "does not validate" in str(e.value) and words in str(e.value), str(e.value)
    # the harness validates once and says so: the VM then runs what it is given
    assert amk.verify(prog, model, cases="smoke", validated=True).passed
    with pytest.raises(amk.ArgumentError) as e:
        amk.verify(prog, model, cases="smoke", validated="yes")
    assert e.value.argument == "validated"


@pytest.mark.parametrize("bad", [None, 5, ["toy"], b"toy"])
def test_a_model_that_is_no_name_nor_path_is_named_as_the_argument(bad):
    with pytest.raises(amk.ArgumentError) as e:
        amk.load_model(bad)
    assert e.value.argument == "name_or_path"
    for fn in (lambda: amk.evaluate(bad, "cpu-sim", {}), lambda: amk.propose(bad, "cpu-sim")):
        with pytest.raises(amk.ArgumentError) as e:
            fn()
        assert e.value.argument == "model" and type(bad).__name__ in str(e.value)


def test_an_empty_model_name_is_unknown_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(amk.UnknownModelError):
        amk.load_model("")


def test_loop_refuses_a_claims_path_that_is_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.tsv.claims").mkdir()
    with pytest.raises(amk.ArgumentError) as e:
        amk.loop("toy", "cpu-sim", budget=1, results="r.tsv", corpus="c.jsonl")
    assert e.value.argument == "results" and "r.tsv.claims" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tsv.claims"]


def test_loop_refuses_files_it_could_not_append_to_before_any_trial(tmp_path, monkeypatch):
    # a read-only mount or another user's directory: found at the first row, the run would end in a bare OSError
    import os

    from amk.harness.loop import LoopError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if "ro" in str(p) and mode & os.W_OK
                        else real(p, mode, **kw))
    for kw, argument in (({"results": "ro/r.tsv"}, "results"), ({"corpus": "ro/sub/c.jsonl"}, "corpus")):
        with pytest.raises(LoopError, match="is not writable") as e:
            amk.loop("toy", "cpu-sim", budget=1, device="cpu", **{"results": "r.tsv", "corpus": "c.jsonl", **kw})
        assert e.value.argument == argument
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"] and not list((tmp_path / "ro").iterdir())
    # the claims file beside a results file still to be made: refused naming results, before any trial
    (tmp_path / "ro.tsv.claims").write_text("")
    with pytest.raises(LoopError, match="ro.tsv.claims' is not writable") as e:
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results="ro.tsv", corpus="c.jsonl")
    assert e.value.argument == "results" and not (tmp_path / "ro.tsv").exists()


def test_a_loaded_fp32_model_evaluated_for_a_gpu_says_which_dtype_it_ran():
    m = amk.load_model("toy")  # fp32, load_model's default
    v = amk.evaluate(m, "h100-sxm", {}, device="cpu")
    assert v["dtype"] == "fp32"
    assert any(n.startswith("dtype fp32: the loaded model's own") and "dtype='bf16'" in n for n in v["notes"])
    assert not any(n.startswith("dtype") for n in amk.evaluate(m, "cpu-sim", {}, device="cpu")["notes"])


@pytest.mark.parametrize("verb", ["evaluate", "loop", "propose"])
def test_a_dtype_other_than_a_loaded_models_is_refused_by_every_verb(verb, tmp_path):
    """evaluate and loop ran a loaded bf16 Model as bf16 when asked for fp32 (and took dtype='bogus'), reporting
    the model's dtype with no word; propose refused. Each names `dtype` now, before any work."""
    model = amk.load_model("toy", dtype="bf16")
    call = {"evaluate": lambda **kw: amk.evaluate(model, "cpu-sim", {}, **kw),
            "loop": lambda **kw: amk.loop(model, "cpu-sim", budget=1, results=str(tmp_path / "r.tsv"),
                                          corpus=str(tmp_path / "c.jsonl"), **kw),
            "propose": lambda **kw: amk.propose(model, "cpu-sim", **kw)}[verb]
    for dtype in ("fp32", "bogus"):
        with pytest.raises(amk.ArgumentError) as e:
            call(dtype=dtype)
        assert e.value.argument == "dtype", e.value
    assert not (tmp_path / "r.tsv").exists()
    call(dtype="bf16")  # the model's own dtype, spelt out, is taken


@pytest.mark.parametrize("bad", ["no", 0, None, "False"])
def test_a_flag_that_is_not_true_or_false_is_named_as_the_argument(bad):
    # a string such as "no" is truthy: it would load the weights, draw SMs at random or check a GPU's limits
    model = amk.load_model("toy")
    prog = amk.lower(model, "cpu-sim", max_seq=64)
    for call, argument in ((lambda: amk.load_model("toy", weights=bad), "weights"),
                           (lambda: amk.verify(prog, model, cases="smoke", adversarial=bad), "adversarial"),
                           (lambda: amk.validate(prog, gpu_limits=bad), "gpu_limits")):
        with pytest.raises(amk.ArgumentError) as e:
            call()
        assert e.value.argument == argument and "expected True or False" in str(e.value), str(e.value)
    assert amk.validate(prog, gpu_limits=False).ok


@pytest.mark.parametrize("bad", [True, "0", 1.5, -3])
def test_detect_target_names_a_device_index_that_is_no_index(bad):
    # it went to torch unchecked
    with pytest.raises(amk.ArgumentError) as e:
        amk.detect_target(bad)
    assert e.value.argument == "device_index"


def test_a_dtype_refusal_lists_the_other_names_the_api_takes():
    from amk.schedule.errors import ArgumentError

    with pytest.raises(ArgumentError, match=r"'fp64' is not one of fp32, fp16, bf16 \(or their other names: "
                                            r"float32, .*half.*bfloat16") as e:
        amk.propose("toy", "cpu-sim", dtype="fp64")
    assert e.value.argument == "dtype"
    assert amk.propose("toy", "cpu-sim", dtype="Half")["dtype"] == "fp16"  # one of those names, any case


def test_a_seed_the_last_worker_would_pass_2_63_is_refused_before_any_worker_starts(tmp_path):
    from amk.schedule.errors import ArgumentError

    res = tmp_path / "results.tsv"
    with pytest.raises(ArgumentError, match=r"2 workers take seeds .* give a seed of at most 9223372036854775806") as e:
        amk.loop("toy", "cpu-sim", budget=2, workers=2, seed=2**63 - 1, device="cpu", results=res,
                 corpus=tmp_path / "corpus.jsonl")
    assert e.value.argument == "seed" and not res.exists()
