"""Odd arguments to generate (`amk.generate`, `amk generate`) and evaluate other than the config's knobs: a GPU
target of "auto", empty or not a name; a config given as JSON text, bytes or a file's name; prompt ids that are no
integers or lie outside the vocabulary; a model given as a path object beside a built-in's name. Each is taken as
evaluate takes it, or refused with a typed error naming the argument, before the model's weights load."""

from __future__ import annotations

import pytest
import torch
from _cli import cli_json

import amk
from amk.schedule.errors import LoweringError

run = cli_json


@pytest.fixture
def no_model_load(monkeypatch):
    """amk.load_model with the weights fails the test: an argument refused after it was refused too late (a real
    model's weights take seconds to minutes to load); its config and dims alone (weights=False) are read."""
    load_model = amk.load_model

    def load(*args, **kwargs):
        if kwargs.get("weights", True):
            raise AssertionError("the model's weights loaded before the argument was checked")
        return load_model(*args, **kwargs)
    monkeypatch.setattr(amk, "load_model", load)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_generate_takes_gpu_auto_as_evaluate_does(capsys):
    """`--gpu auto` is evaluate's default: the live GPU, or cpu-sim without CUDA (it was exit 3, "no CUDA
    device")."""
    default = amk.generate("toy", [1, 2], max_new_tokens=3, device="cpu", stop_at_eos=False)
    for gpu in ("auto", "AUTO"):
        assert amk.generate("toy", [1, 2], max_new_tokens=3, device="cpu", gpu=gpu, stop_at_eos=False) == default
    code, out = run(capsys, "generate", "--model", "toy", "--prompt-ids", "1,2", "--max-new-tokens", "3",
                    "--gpu", "auto")
    assert code == 0, out
    assert out["tokens"][:3] == default.tokens


def test_generate_names_a_gpu_that_is_empty_or_no_name_before_the_model_loads(capsys, no_model_load):
    with pytest.raises(amk.UnknownTargetError, match="unknown GPU target ''"):  # was the default target, silently
        amk.generate("toy", [1, 2], device="cpu", gpu="")
    with pytest.raises(amk.ArgumentError) as e:
        amk.generate("toy", [1, 2], device="cpu", gpu=5)
    assert e.value.argument == "gpu"  # was `target`, an argument generate does not have
    with pytest.raises(amk.UnknownTargetError, match="'h100'"):
        amk.generate("toy", [1, 2], device="cpu", gpu="h100")
    code, out = run(capsys, "generate", "--model", "toy", "--prompt-ids", "1,2", "--gpu", "")
    assert code == 2 and out["error"].startswith("--gpu: unknown GPU target ''"), out


def test_generate_reads_a_config_as_evaluate_does_before_the_model_loads(no_model_load):
    """A key given twice in JSON text is refused (generate ran the last value, where evaluate refuses it); a file's
    name is pointed out; each before the weights load."""
    with pytest.raises(amk.ConfigError, match=r"\$.pipelining_depth: given twice"):
        amk.generate("toy", [1, 2], device="cpu", config='{"pipelining_depth": 1, "pipelining_depth": 2}')
    with pytest.raises(amk.ConfigError, match="looks like a file name"):
        amk.generate("toy", [1, 2], device="cpu", config="cfg.json")
    with pytest.raises(amk.ConfigError, match=r"\$.x: unknown key"):
        amk.generate("toy", [1, 2], device="cpu", config={"x": 1})


def test_generate_takes_a_config_as_utf8_bytes_as_evaluate_does():
    kw = {"max_new_tokens": 2, "device": "cpu", "stop_at_eos": False}
    config = '{"pipelining_depth": 1}'
    assert amk.generate("toy", [1, 2], config=config.encode(), **kw) == amk.generate("toy", [1, 2], config=config, **kw)


@pytest.mark.parametrize("prompt", [[1, 2, 392], [-1], [], [1.5], 5])
def test_generate_refuses_bad_prompt_ids_before_the_weights_load(prompt, no_model_load):
    """A typo in an id was refused only after the weights loaded (17 s for llama-3.2-1b on a CPU); the vocabulary
    is the config's."""
    with pytest.raises(amk.ArgumentError) as e:
        amk.generate("toy", prompt, device="cpu")
    assert e.value.argument == "prompt"


def test_generate_plans_token_ids_whole_before_the_weights_load(no_model_load):
    """With token ids, a max_seq too small, a config that does not lower and a KV cache past the memory are refused
    from the config alone (each came after the weights loaded)."""
    with pytest.raises(amk.ContextError, match="need 11 positions, the program holds 8"):
        amk.generate("toy", [1, 2], max_new_tokens=10, max_seq=8, device="cpu")
    with pytest.raises(LoweringError, match="matvec.qkv.head_splits"):
        amk.generate("toy", [1, 2], device="cpu", config={"matvec": {"qkv": {"head_splits": 3}}})
    with pytest.raises(amk.ArgumentError) as e:
        amk.generate("toy", [1, 2], device="cpu", max_seq=1 << 40)
    assert e.value.argument == "max_seq"


def test_generate_names_prompt_ids_outside_the_vocabulary_on_the_cli_before_the_weights_load(capsys, no_model_load):
    code, out = run(capsys, "generate", "--model", "toy", "--prompt-ids", "1,2,392")
    assert code == 2 and out["error"].startswith("--prompt-ids: token ids [392] outside the vocabulary of 392"), out


def test_generate_takes_a_path_object_as_the_directory_as_evaluate_does(tmp_path, monkeypatch):
    """Path("toy") names the checkpoint directory ./toy, not the built-in toy (HARNESS section 2): generate ran the
    built-in's random weights and answered with their tokens."""
    from pathlib import Path

    from _checkpoints import SMALL, save_checkpoint
    from transformers import LlamaConfig

    monkeypatch.chdir(tmp_path)
    save_checkpoint(LlamaConfig(**SMALL, num_hidden_layers=1), tmp_path / "toy")
    kw = {"max_new_tokens": 4, "device": "cpu", "stop_at_eos": False}
    directory = amk.generate(str(tmp_path / "toy"), [1, 2, 3], **kw)
    assert directory != amk.generate("toy", [1, 2, 3], **kw)  # the two models differ
    assert amk.generate(Path("toy"), [1, 2, 3], **kw) == directory
    assert amk.evaluate(Path("toy"), "cpu-sim", {}, device="cpu", cases="reduced")["model"] == str(tmp_path / "toy")
    with pytest.raises(amk.ArgumentError, match="has no tokenizer") as e:  # the directory's, not the built-in's
        amk.generate(Path("toy"), "hello", **kw)
    assert e.value.argument == "prompt"


def test_prompt_ids_as_a_notebook_holds_them():
    """A range, a numpy row and a tokenizer's [1, n] tensor or array (return_tensors) are the same prompt as the
    list; a batch of several rows, or a float array, is refused naming `prompt`."""
    import numpy as np

    want = amk.generate("toy", [1, 2, 3], max_new_tokens=3, device="cpu", stop_at_eos=False).tokens
    for prompt in (range(1, 4), np.array([1, 2, 3]), np.array([[1, 2, 3]], dtype=np.int64),
                   torch.tensor([[1, 2, 3]]), torch.tensor([1, 2, 3], dtype=torch.int32)):
        assert amk.generate("toy", prompt, max_new_tokens=3, device="cpu", stop_at_eos=False).tokens == want, prompt
    for bad, match in ((torch.tensor([[1, 2], [3, 4]]), "one sequence"), (np.array([1.0, 2.0]), "integers"),
                       (torch.zeros(1, 1, 2, dtype=torch.long), "one sequence")):
        with pytest.raises(amk.ArgumentError, match=match) as e:
            amk.generate("toy", bad, max_new_tokens=3, device="cpu")
        assert e.value.argument == "prompt"


def test_numpy_integers_are_taken_as_the_ints_they_hold(tmp_path):
    """A sweep's numpy integers (seed, max_seq, max_new_tokens, budget) were refused as no integers; they are
    taken as ints, and the verdict written with them is JSON. A numpy bool is still no integer."""
    import json

    import numpy as np

    kw = {"device": "cpu", "measure": False, "corpus": str(tmp_path / "c.jsonl")}
    v = amk.evaluate("toy", "cpu-sim", {}, seed=np.int64(1), max_seq=np.int32(64), **kw)
    want = amk.evaluate("toy", "cpu-sim", {}, seed=1, max_seq=64, **kw)
    assert v["correct"] is True and json.loads(json.dumps(v))["program_fingerprint"] == want["program_fingerprint"]
    assert v["program_fingerprint"] != amk.evaluate("toy", "cpu-sim", {}, seed=1, max_seq=32, **kw)["program_fingerprint"]
    a, b = amk.load_model("toy", seed=np.uint8(3)), amk.load_model("toy", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.eager.state_dict().values(), b.eager.state_dict().values()))
    kw = {"device": "cpu", "stop_at_eos": False}
    assert (amk.generate("toy", [1, 2], max_new_tokens=np.int64(3), max_seq=np.int64(16), **kw).tokens
            == amk.generate("toy", [1, 2], max_new_tokens=3, max_seq=16, **kw).tokens)
    assert amk.propose("toy", "cpu-sim", corpus=None, max_seq=np.int64(64))["max_seq"] == 64
    summary = amk.loop("toy", "cpu-sim", budget=np.int64(1), workers=np.int64(1), max_reverts=np.int64(3),
                       seed=np.int64(2), minutes=np.float32(5), device="cpu", results=str(tmp_path / "r.tsv"), corpus=str(tmp_path / "l.jsonl"))
    assert summary["trials"] == 1
    from amk.harness.arguments import search_settings

    settings = search_settings({"population": np.int64(8), "measure_per_round": np.int16(2),
                                "epsilon": np.float32(0.25)})
    assert (settings.population, settings.measure_per_round, settings.epsilon) == (8, 2, 0.25)
    assert type(settings.population) is int and type(settings.epsilon) is float
    with pytest.raises(amk.ArgumentError) as e:  # a round of 2**64 candidates never ended, SIGTERM unheard
        search_settings({"population": np.uint64(2**64 - 1)})
    assert e.value.argument == "settings.population"
    model = amk.load_model("toy")
    program = amk.lower(model, "cpu-sim", None, max_seq=64)
    assert amk.lower(model, "cpu-sim", None, max_seq=np.int64(64)).fingerprint() == program.fingerprint()
    assert amk.evaluate("toy", "cpu-sim", {}, device="cpu", measure=False, corpus=None,
                        stop_above_us=np.int64(10**6))["correct"] is True
    assert amk.verify(program, model, cases="smoke", seed=np.int64(0))  # the VM it seeds takes it too
    with pytest.raises(amk.ArgumentError) as e:
        amk.evaluate("toy", "cpu-sim", {}, device="cpu", seed=np.bool_(True), measure=False)
    assert e.value.argument == "seed"


def test_generate_checks_ids_before_a_cast_and_parses_the_gguf_once(monkeypatch):
    """A loaded Model cast to another dtype had its ids and max_seq checked only after its weights were copied;
    the GGUF model was parsed (and hashed) for the lowering and again for the weights."""
    from amk.models import Model

    model = amk.load_model("toy")

    def cast(self, dtype):
        raise AssertionError("cast before the ids and max_seq were checked")
    monkeypatch.setattr(Model, "cast", cast)
    with pytest.raises(amk.ContextError):
        amk.generate(model, [1, 2], max_new_tokens=4, max_seq=2, device="cpu", dtype="bf16")
    with pytest.raises(amk.ArgumentError) as e:
        amk.generate(model, [1, 392], device="cpu", dtype="bf16")
    assert e.value.argument == "prompt"
    calls = []

    class Loaded(Exception):
        pass

    def load(name, **kwargs):
        calls.append(kwargs.get("weights", True))
        raise Loaded
    monkeypatch.setattr(amk, "load_model", load)
    with pytest.raises(Loaded):
        amk.generate("smollm2-135m-instruct", [1, 2], max_new_tokens=1, device="cpu")
    assert calls == [True]  # the weights load alone: the ids were checked against the stand-in config's vocabulary
