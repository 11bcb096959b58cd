"""Greedy generation through the megakernel (or the ReferenceVM on a machine without a GPU)."""

from __future__ import annotations

import numbers
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from amk.harness.arguments import check_dtype, check_flag, check_max_seq, check_model_weights, integral
from amk.harness.run_checks import misspelt_field_notes
from amk.progress import bar, status
from amk.schedule.errors import ArgumentError, CheckpointError, ContextError, ProgramError, VmError


def _token_ids(prompt) -> list[int]:
    """`prompt` as a list of token ids: a list, tuple or range of integers, or a 1-D tensor or numpy array, or a
    batch of one such row ([1, n], what a tokenizer's return_tensors gives). ArgumentError naming `prompt` for
    anything else, a batch of several rows among them (AMK decodes one sequence)."""
    import numpy as np

    if isinstance(prompt, torch.Tensor | np.ndarray):
        if prompt.ndim == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.ndim != 1:
            raise ArgumentError("prompt", f"expected one sequence of token ids (shape [n] or [1, n]), got shape "
                                          f"{list(prompt.shape)}: batch-1 decode takes one sequence")
        ids = prompt.tolist()
    elif isinstance(prompt, list | tuple | range):
        ids = list(prompt)
    else:
        raise ArgumentError("prompt", f"expected text or a sequence of token ids, got {type(prompt).__name__}")
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, numbers.Integral)]
    if bad:
        raise ArgumentError("prompt", f"token ids must be integers, got {bad[:4]!r}")
    return [int(t) for t in ids]


def _check_ids(ids: list[int], vocab: int) -> None:
    """ArgumentError naming `prompt` for no ids, or ids outside a vocabulary of `vocab`: the VM would stop at the
    first with an error word; the ids are the caller's to mend."""
    if not ids:
        raise ArgumentError("prompt", "empty prompt")
    outside = [t for t in ids if not 0 <= t < vocab]
    if outside:
        raise ArgumentError("prompt", f"token ids {outside[:8]} outside the vocabulary of {vocab} "
                                      f"(ids 0..{vocab - 1})")


# GenerationConfig fields under which transformers' generate does not give the plain greedy tokens, each with the
# value that leaves greedy decoding as it is (a field unset, None, is neutral too)
_GREEDY_NEUTRAL = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                   "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
                   "forced_bos_token_id": None, "forced_eos_token_id": None, "min_length": 0, "min_new_tokens": 0,
                   "sequence_bias": None, "exponential_decay_length_penalty": None, "penalty_alpha": None,
                   "dola_layers": None, "guidance_scale": 1.0, "stop_strings": None, "watermarking_config": None,
                   "remove_invalid_values": False}


def stop_tokens(model) -> set[int]:
    """The token ids greedy decoding stops at: the eos_token_id (an int or a list) of the generation config
    transformers' generate reads, and only it, as generate does: the checkpoint's generation_config.json where there
    is one (Llama 3's list of end-of-turn ids among them; a file that gives no eos_token_id stops at none), else the
    one transformers makes from config.json. config.json's own eos_token_id only for a model with no generation
    config. Raises CheckpointError naming the file and eos_token_id where the id is no integer or list of integers
    (transformers keeps such a value as given)."""
    gen = getattr(model.eager, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else getattr(model.hf_config, "eos_token_id", None)
    if eos is None:
        return set()
    ids = list(eos) if isinstance(eos, list | tuple) else [eos]
    if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in ids):
        given = model.source == "path" and (Path(model.name) / "generation_config.json").is_file()
        where = Path(model.name) / ("generation_config.json" if given else "config.json") \
            if model.source == "path" else f"model {model.name!r}"
        raise CheckpointError(where, f"expected a token id (an integer) or a list of them, got {eos!r:.80}: greedy "
                                     "decoding could not tell where to stop", field="eos_token_id")
    return {int(t) for t in ids}


def generation_config_notes(model) -> list[str]:
    """What the model's generation config asks of transformers' generate beyond greedy decoding (sampling, beams,
    a repetition penalty, suppressed or forced tokens, a minimum length): amk.generate decodes greedily with none
    of it, as transformers' generate(do_sample=False) does only where these are neutral."""
    gen = getattr(model.eager, "generation_config", None)
    if gen is None:
        return []
    asked = {k: getattr(gen, k, None) for k in _GREEDY_NEUTRAL}
    asked = {k: v for k, v in asked.items() if v is not None and v != _GREEDY_NEUTRAL[k] and v != []}
    if not asked:
        return []
    if asked.get("do_sample"):
        for k in ("temperature", "top_k", "top_p", "min_p"):
            if getattr(gen, k, None) is not None:
                asked[k] = getattr(gen, k)
    shown = ", ".join(f"{k} {v!r}" for k, v in asked.items())
    return [f"the model's generation config asks transformers' generate for {shown}: amk.generate decodes plain "
            f"greedy (the argmax of each step's logits) without it, so its tokens can differ from generate()'s "
            f"defaults there"]


def _finite_note(logits, step: int, n_prompt: int) -> str | None:
    """A note where a step's logits hold NaN or infinity (activations past the dtype's range, say fp16's): the
    argmax of such logits is no prediction, and every later step reads the KV rows that step wrote."""
    if logits is None or bool(torch.isfinite(logits).all()):
        return None
    return (f"the logits are not finite (NaN or infinity) at step {step + 1} (steps 1-{n_prompt} read the prompt): "
            f"the tokens from there on are not predictions; amk.verify or amk evaluate compares the model with "
            f"transformers and a higher precision")


@dataclass
class Generation:
    text: str | None
    tokens: list[int]
    prompt_tokens: list[int]
    vm: str
    device: str
    dtype: str  # the weights' and activations': fp32, fp16 or bf16
    # timings: two generations of the same tokens compare equal whatever the clock said
    seconds: float = field(compare=False)
    decode_tokens_per_s: float | None = field(compare=False)  # None when no decode step ran (one new token)
    notes: list[str] = field(default_factory=list)  # what the caller should know about the tokens (context)

    def to_dict(self) -> dict:
        return asdict(self)


def _device(device: str) -> str:
    """"cpu" or "cuda" for `device` (auto, cpu, cuda). ArgumentError for another name; EnvironmentProblem for
    cuda where torch sees no CUDA device or cupy does not import."""
    from amk.harness.environment import resolve_device

    return resolve_device(device).value


def _target(gpu, dev: str):
    """The GpuTarget the program is lowered for: None or "auto" (any case, as evaluate takes it) is the live GPU's
    on cuda and the cpu-sim stand-in on the CPU; another name is looked up, UnknownTargetError for one not
    registered ("" too) and ArgumentError naming `gpu` for something that is no name. Checked before the model
    loads."""
    from amk.harness.environment import CPU_STAND_IN
    from amk.schedule import detect_target, get_target

    if gpu is None or (isinstance(gpu, str) and gpu.lower() == "auto"):
        return detect_target() if dev == "cuda" else get_target(CPU_STAND_IN)
    return get_target(gpu, argument="gpu")


def _checked_config(config):
    """`config` parsed as evaluate parses it (a dict, JSON text or its UTF-8 bytes, a ScheduleConfig; None: the
    defaults), before the model loads: a key given twice in JSON text is a ConfigError, not its last value, and
    a string naming a file is pointed out."""
    from amk.schedule.config_text import parse_config

    return None if config is None else parse_config(config)


def _checked_model(model):
    """`model` as generate takes it: a name or path, or an amk Model holding its weights; ArgumentError naming
    `model` otherwise, before any work. A path object stays one: it names a directory even where its text is a
    built-in's name (Path("toy") is ./toy), as evaluate and load_model take it."""
    import os

    from amk.models import Model

    if isinstance(model, str | os.PathLike):
        return model
    if not isinstance(model, Model):
        raise ArgumentError("model", f"expected a model name, a checkpoint directory or an amk Model, got "
                                     f"{type(model).__name__} ({model!r:.60})")
    check_model_weights(model, "generating")
    return model


def _check_positions(ids: list[int], max_new_tokens: int, max_seq: int | None, vocab: int) -> int:
    """The KV positions the ids and the new tokens take, after checking the ids against the vocabulary
    (ArgumentError naming prompt) and, where `max_seq` is given, the positions against it (ContextError; a
    derived max_seq holds them)."""
    _check_ids(ids, vocab)
    need = len(ids) + max_new_tokens - 1  # the last new token is not fed back: it takes no KV position
    if max_seq is not None and need > max_seq:
        raise ContextError(f"a prompt of {len(ids)} tokens and {max_new_tokens} new tokens need {need} positions, "
                           f"the program holds {max_seq} (max_seq)", needed=need, max_seq=max_seq)
    return need


def _plan(model, ids: list[int], max_new_tokens: int, max_seq: int | None, target, config, dev: str):
    """(program, notes) of a generation of `ids` and `max_new_tokens` on `model` (its config and dims: weights are
    not needed): the ids checked against the vocabulary, the positions against `max_seq` (ContextError), the
    program lowered, its context checked against the target (the kernel's offsets, the GPU's memory) and its KV
    cache against the device's free memory (ArgumentError naming max_seq where it was given, max_new_tokens where
    it was derived), and the program validated (ProgramError)."""
    import amk
    from amk.harness.environment import Device
    from amk.harness.run_checks import check_context, check_kv_memory
    from amk.schedule.lower import check_rope_context

    need = _check_positions(ids, max_new_tokens, max_seq, model.dims.vocab)
    # by default no more positions than the model's context, unless the tokens asked for need more (noted below)
    given_max_seq = max_seq
    max_seq = max_seq or min(max(model.dims.max_positions, need), max(256, 1 << (need - 1).bit_length()))
    notes = []
    if need > model.dims.max_positions:  # RoPE and the KV cache run on; the model was not trained that far
        notes.append(f"the prompt and new tokens take {need} positions, past the model's {model.dims.max_positions} "
                     "(max_position_embeddings): the tokens past them are computed as transformers would, but the "
                     "model was not trained on that context")
    if given_max_seq is None:  # a dynamic RoPE's limit on the tokens asked for (amk.lower's names max_seq)
        try:
            check_rope_context(model, need)
        except ArgumentError:
            limit, room = model.dims.max_positions, model.dims.max_positions - len(ids) + 1
            raise ArgumentError("max_new_tokens" if room >= 1 else "prompt",
                                f"a prompt of {len(ids)} tokens and {max_new_tokens} new tokens take {need} positions, "
                                f"past the {limit} of this model's dynamic (NTK) RoPE, which transformers rescales past "
                                f"max_position_embeddings: "
                                + (f"ask for at most {room} new tokens" if room >= 1
                                   else f"the prompt may hold at most {limit} tokens")) from None
    try:  # a max_seq the caller did not give is blamed on the tokens that set it
        with status(f"lowering {model.name} for {target.name}"):
            program = amk.lower(model, target, config, max_seq=max_seq)
        # a cache past the memory would end the process unnamed; before the validator, which would blame the config
        # for what max_seq or the model does
        check_context(program, target, lambda: amk.lower(model, target, None, max_seq=max_seq))
        check_kv_memory(program, Device(dev), copies=1)
    except ArgumentError as e:
        if given_max_seq is not None or e.argument != "max_seq":
            raise
        raise ArgumentError("max_new_tokens", f"a prompt of {len(ids)} tokens and {max_new_tokens} new tokens: "
                                              f"{str(e).removeprefix('max_seq: ')}") from None
    check = amk.validate(program, target)
    if not check.ok:
        raise ProgramError(f"the schedule does not validate: {check.first_message()}")
    return program, notes


def generate(model, prompt, max_new_tokens: int = 32, config=None, device: str = "auto", gpu=None,
             max_seq: int | None = None, stop_at_eos: bool = True, dtype=None) -> Generation:
    """Prefill `prompt` (text, or token ids: a list, tuple or range, a 1-D tensor or numpy array, or a tokenizer's
    [1, n] batch of one) one token per step through the VM, keeping the KV cache on the
    VM, then decode greedily. On the GPU the decode steps run back to back with the token and position
    advancing on the device; the VM's error word and task count are checked at the end.

    A prompt of P tokens and N new tokens take P + N - 1 KV positions (the last new token is not fed back).
    Past the model's max_position_embeddings they still run (as transformers would compute them); the
    Generation's `notes` then say so. They also name logits that are not finite (the first such step on the CPU; on the
    GPU, whose argmax of NaN logits is no token, decoding stops with a VmError naming them), and what the model's generation config asks of
    transformers' generate beyond greedy decoding (sampling, a repetition penalty ...), which is not applied. Decoding
    stops after the first of that config's eos ids (generation_config.json's alone where the checkpoint has one, else
    config.json's) when `stop_at_eos`.

    `dtype` (fp32, fp16 or bf16): the weights and activations; None: a loaded Model's own, else bf16 on CUDA and fp32
    on the CPU. A loaded Model of another dtype is cast to it (its weights copied).

    Raises ArgumentError naming the argument: `model` (not a name, a path or an amk Model loaded with its weights),
    `dtype` (not a dtype name),
    `prompt` (empty, not text or integer ids, ids outside the
    vocabulary, text for a model without a tokenizer), `max_new_tokens` or `max_seq` (not a positive integer),
    `stop_at_eos` (not a bool),
    `device` (not auto, cpu or cuda), `gpu` (not a target name, GpuTarget, None or "auto"); UnknownTargetError for a
    GPU target name not registered; EnvironmentProblem for device="cuda" without a usable GPU; ContextError
    when the prompt and new tokens need more positions than `max_seq`; ConfigError (before the model loads) or
    LoweringError for a `config` that does not parse or lower, ProgramError for one whose program does not validate.
    With token ids every one of these comes before the weights load, from the config and dims, but for the GGUF
    model, whose lowering and memory check wait for its one parse (the ids and max_seq are checked before it); a
    loaded Model cast to `dtype` has its ids and max_seq checked before the copy. With text, the tokenizer needs
    the model first."""
    import amk
    from amk.models import Model
    from amk.models.registry import dtype_name, has_tokenizer, model_shape, reads_config_only, resolve_dtype
    from amk.vm.weights import pack_weights

    max_new_tokens, max_seq = integral(max_new_tokens), integral(max_seq)  # a numpy integer is the int it holds
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ArgumentError("max_new_tokens", f"expected a positive integer, got {max_new_tokens!r}")
    check_max_seq(max_seq)
    check_flag("stop_at_eos", stop_at_eos)
    check_dtype(dtype)
    dev = _device(device)
    target = _target(gpu, dev)
    config = _checked_config(config)
    model = _checked_model(model)
    ids = None if isinstance(prompt, str) else _token_ids(prompt)
    plan = None
    if not isinstance(model, Model):  # a name or path
        # refused before the model loads (seconds to minutes of weights)
        load_dtype = dtype or ("bf16" if dev == "cuda" else "fp32")
        if isinstance(prompt, str) and not has_tokenizer(model):
            raise ArgumentError("prompt", f"model {str(model)!r} has no tokenizer: pass token ids")
        if ids is not None and reads_config_only(model):  # the lowering too, from the config alone
            plan = _plan(amk.load_model(model, dtype=load_dtype, device=dev, weights=False), ids, max_new_tokens,
                         max_seq, target, config, dev)
        elif ids is not None:  # the GGUF model: its stand-in config's shape, as its parse waits for the weights
            _check_positions(ids, max_new_tokens, max_seq, model_shape(model).vocab)
        with status(f"loading {model}"):
            model = amk.load_model(model, dtype=load_dtype, device=dev)
    elif dtype is not None and resolve_dtype(dtype) != model.dtype:
        if ids is not None:  # before the weights are copied
            _check_positions(ids, max_new_tokens, max_seq, model.dims.vocab)
        with status(f"casting {model.name} to {dtype_name(dtype)}"):
            model = model.cast(dtype)
    eos = stop_tokens(model)  # a malformed eos_token_id refused before any step runs
    if ids is not None and plan is None:
        plan = _plan(model, ids, max_new_tokens, max_seq, target, config, dev)
    if isinstance(prompt, str):
        if model.tokenizer is None and model.tokenizer_error is not None:
            raise model.tokenizer_error
        if model.tokenizer is None:
            raise ArgumentError("prompt", f"model {model.name!r} has no tokenizer: pass token ids")
        ids = model.tokenizer(prompt)["input_ids"]
        plan = _plan(model, ids, max_new_tokens, max_seq, target, config, dev)
    program, notes = plan
    with status("packing the weights"):
        weights = pack_weights(model.eager, program, device=dev)
    t0 = time.perf_counter()
    if dev == "cuda":
        from amk.vm.loader import MegakernelVM

        vm = MegakernelVM(program, weights)
        vm_name = "cuda"
    else:
        from amk.vm.reference import ReferenceVM

        vm = ReferenceVM(program, weights, device=dev)
        vm_name = "reference"
    vm.reset()
    nxt, bad = 0, None
    with bar(len(ids), "prefill (one token a step)", unit="token") as b:
        for i, tok in enumerate(ids):
            logits, nxt = vm.step(tok)
            bad = bad or _finite_note(logits, i, len(ids))
            b.advance()
    if dev == "cuda" and not 0 <= nxt < model.dims.vocab:
        # the kernel's argmax of NaN logits is no token: a one-token run would return it as one
        raise VmError(f"{bad or 'the logits are not finite'}; the GPU's greedy argmax of such logits is no token "
                      f"({nxt}), so decoding stopped")
    out = [nxt]
    t1 = time.perf_counter()
    if dev == "cuda" and max_new_tokens > 1:
        produced = torch.empty(max_new_tokens - 1, dtype=torch.int32, device=vm.device)
        for i in range(max_new_tokens - 1):
            vm.launch()  # reads the token the previous step's argmax wrote
            produced[i].copy_(vm.token[0])
        try:
            vm.check()
        except VmError as e:
            # the kernel's argmax of NaN logits is no token (the next step's embedding refuses it): say why
            why = bad or _finite_note(vm.logits, len(ids) + max_new_tokens - 2, len(ids))
            if why is None:
                raise
            raise VmError(f"{why}; the GPU's greedy argmax of such logits is no token, so decoding stopped ({e})",
                          task=e.task, code=e.code) from e
        out += produced.cpu().tolist()
        # a NaN that enters the KV cache stays in every later step's attention: the last step's logits show it
        bad = bad or _finite_note(vm.logits, len(ids) + max_new_tokens - 2, len(ids))
    else:
        with bar(max_new_tokens - 1, "decoding", unit="token") as b:
            for i in range(max_new_tokens - 1):
                logits, nxt = vm.step(nxt)
                bad = bad or _finite_note(logits, len(ids) + i, len(ids))
                out.append(nxt)
                b.advance()
    t2 = time.perf_counter()
    notes = [*notes, *([bad] if bad else []), *generation_config_notes(model), *misspelt_field_notes(model)]
    if stop_at_eos and eos:
        cut = next((i for i, t in enumerate(out) if t in eos), None)
        out = out[: cut + 1] if cut is not None else out
    text = model.tokenizer.decode(out, skip_special_tokens=True) if model.tokenizer is not None else None
    rate = (max_new_tokens - 1) / max(t2 - t1, 1e-9) if max_new_tokens > 1 else None
    return Generation(text, out, ids, vm_name, dev, dtype_name(model.dtype), t2 - t0, rate, notes)
