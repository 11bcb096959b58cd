"""propose(model, gpu): the incumbent config, where the schema lives, and the search space for this GPU."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from amk.flywheel.corpus import best_entry, best_of_other_models, load_corpus
from amk.flywheel.records import at_context, for_run, model_key
from amk.schedule.config import ScheduleConfig
from amk.schedule.errors import ArgumentError, ConfigError
from amk.schedule.space import space_dicts

from .arguments import check_corpus, check_max_seq, integral, user_path
from .environment import Device, cuda_usable, get_model, resolve_target
from .schema import schema_path
from .verdict import parse_config

log = logging.getLogger(__name__)


def model_label(model) -> str:
    """The one name of a model in verdicts, results.tsv and the corpus: a built-in name as it is (even where a
    directory of that name sits in the working directory: load_model takes the built-in), a checkpoint
    directory by its absolute path, however it was spelt. Checks nothing."""
    from amk.models import Model
    from amk.models.registry import builtin_key

    if isinstance(model, Model):
        return model_key(model.name) if model.source == "path" else model.name
    key = builtin_key(model)
    return key if key is not None else model_key(os.fspath(model))


def model_name(model) -> str:
    """model_label, after UnknownModelError for a name that is neither built in nor a directory."""
    from amk.models import Model
    from amk.models.registry import check_model_name

    if not isinstance(model, Model):
        check_model_name(model)
    return model_label(model)


def incumbent_config(model: str, gpu: str, corpus: str | Path | None, dtype: str | None = None,
                     context: int | None = None) -> tuple[ScheduleConfig, str, dict | None]:
    """(config, where it came from, its corpus verdict): the best kept config for this model and GPU (and
    `dtype`, fp32, fp16 or bf16, when given: a bf16 latency is no bar for an fp32 run; and the KV `context` its
    latency was taken at, when given: records.at_context) in the corpus whose config parses (each one passed over
    is warned of), else the defaults."""
    if corpus is not None and Path(corpus).exists():
        found = best_readable(at_context(for_run(load_corpus(corpus), model, gpu, dtype), context),
                              f"{corpus}: for {model} on {gpu}")
        if found is not None:
            return found[1], f"corpus:{corpus}", found[0].verdict
    return ScheduleConfig(), "default", None


def best_readable(entries: list, where: str | None = None):
    """(record, config): the best of `entries` (flywheel.corpus.best_entry) whose config this version parses, or
    None. A record passed over (a hand edit, a knob since removed) is warned of, naming `where`, when given."""
    while (best := best_entry(entries)) is not None:
        try:
            return best, ScheduleConfig.from_dict(best.config)
        except ValueError as e:
            entries = [r for r in entries if r is not best]
            if where:
                then = "the next best is tried" if best_entry(entries) is not None else "the defaults are the incumbent"
                log.warning("%s, a kept record (schedule %s) has a config that does not parse, so %s: %s", where,
                            best.schedule_id, then, e)
    return None


def propose(model, gpu, incumbent=None, corpus: str | Path | None = "corpus.jsonl", dtype: str | None = None,
            max_seq: int | None = None) -> dict:
    """Where a search starts: the incumbent config for `model` on `gpu` (the corpus's best measured config
    there of the run's dtype and KV context, else the default), its JSON schema's path and the search space, as
    {"config", "schedule_id", "schema_path", "search_space", "derived", "source", "gpu", "model", "dtype",
    "max_seq", "context", "notes"} (HARNESS.md section 1). Where the defaults stand in, a note says why: no corpus
    given, none at that path yet, or none of its kept records for this run.

    `dtype` (fp32, fp16, bf16): that of the run to start; a loaded Model's own dtype; else the default a loop
    takes (bf16 for a GPU target, fp32 for cpu-sim). `max_seq`: the KV positions the run's programs hold, as
    `loop --max-seq` takes it (default: the model's context, at most 2048); `context` is the KV length its
    latencies are taken at (schedule.cost.bench_context), and only records timed there (or not saying) rank,
    so that propose offers the start `loop` takes. ArgumentError (naming `max_seq`) for one that is not a
    positive int, past a dynamic RoPE's positions, or whose KV cache the free memory here cannot hold twice.
    `incumbent` (dict, JSON string or ScheduleConfig) wins when given; a malformed one raises ConfigError, since
    the caller asked for it by name, and one that does not lower and validate for the model on `gpu`
    ArgumentError naming `incumbent`. ArgumentError (naming `dtype`) for a
    dtype AMK does not run, or one other than a loaded Model's."""
    from amk.models import Model
    from amk.models.registry import dtype_name

    from .run_checks import check_model_dtype, resolve_dtype_name

    check_corpus(corpus)
    corpus = None if corpus is None else str(user_path(corpus))
    target = resolve_target(gpu)
    name = model_name(model)
    run_dtype = resolve_dtype_name(dtype, Device.CPU, target)[0]
    check_model_dtype(model, dtype)
    if isinstance(model, Model):
        run_dtype = dtype_name(model.dtype)
    seq, context = run_context(model, run_dtype, max_seq)
    check_kv_fits(model, target, run_dtype, seq)
    verdict = None
    if incumbent is not None:
        try:
            cfg, source = parse_config(incumbent), "given"
        except ConfigError as e:
            raise e.named("incumbent") from None
        # a start no other command takes is no proposal (loop --config refuses it, evaluate rejects it)
        from .evaluate import build_program

        # on this machine's device: with no GPU a GPU target's latencies are predictions, and the notes say so
        v, program = build_program(model, target, cfg.to_dict(), "auto", None if isinstance(model, Model)
                                   else run_dtype, seq)
        if program is None:
            raise ArgumentError("incumbent", f"does not lower for {name} on {target.name}: {v.rejected_reason}")
    else:
        cfg, source, verdict = incumbent_config(name, target.name, corpus, run_dtype, context)
    notes = [] if source != "default" else [_why_default(name, target.name, corpus, run_dtype, context)]
    shape = _shape(model, run_dtype)
    if source == "given":  # what evaluate would say of it: knobs that cannot act, or that a prediction does not price
        notes += v.notes
    else:  # config.json's names that no one reads, which evaluate notes too (a given incumbent's verdict has them)
        from .run_checks import misspelt_field_notes

        notes += misspelt_field_notes(shape)
    out = {"model": name, "gpu": target.name, "dtype": run_dtype, "max_seq": seq, "context": context,
           "config": cfg.to_dict(), "schedule_id": cfg.schedule_id, "source": source,
           "schema_path": str(schema_path()), "search_space": space_dicts(target, run_dtype, shape.dims.group,
                                                              predicted=not cuda_usable()),
           "derived": derived_tiling(model, target, cfg, run_dtype, seq), "notes": notes}
    if verdict is not None:
        out["incumbent_latency_us"] = verdict.get("latency_us")
        out["incumbent_latency_kind"] = verdict.get("latency_kind")
    out["others_best"] = others_best(name, target.name, corpus, run_dtype)
    if out["others_best"] and source == "default":
        notes.append(f"{len(out['others_best'])} other model(s) have a best config on {target.name} in {run_dtype} "
                     "(others_best): loop tries each as a transfer candidate; evaluate one to try it here")
    return out


def others_best(model: str, gpu: str, corpus, dtype: str) -> list[dict]:
    """Each other model's best kept config on `gpu` in `dtype` in the corpus (flywheel.corpus.best_of_other_models),
    fastest first, as {"model", "schedule_id", "config", "latency_us", "latency_kind", "pct_of_floor"}; [] without
    a corpus."""
    if corpus is None or not Path(corpus).exists():
        return []
    return [{"model": r.model, "schedule_id": cfg.schedule_id, "config": cfg.to_dict(), "latency_us": r.latency_us,
             "latency_kind": r.kind, "pct_of_floor": r.verdict.get("pct_of_floor")}
            for r, cfg in best_of_other_models(load_corpus(corpus), model, gpu, dtype)]


def _why_default(model: str, gpu: str, corpus, dtype: str, context: int) -> str:
    """Why propose's incumbent is the default config: the corpus it was (not) given, by path."""
    if corpus is None:
        return "the defaults are the incumbent: no corpus given"
    if not Path(corpus).exists():
        return f"the defaults are the incumbent: no corpus at {str(corpus)!r} yet"
    return (f"the defaults are the incumbent: {str(corpus)!r} holds no kept record of {model} on {gpu} in {dtype} "
            f"at a KV context of {context} whose config this version reads")


def _shape(model, dtype: str):
    """The model as a loaded Model (its weights not loaded for a name or path): its dims (the GQA group, which fits
    attention.q_splits' search values) and its config's notes."""
    from amk.models import Model

    return model if isinstance(model, Model) else get_model(model_label(model), dtype, Device.CPU, weights=False)


def run_context(model, dtype: str, max_seq: int | None) -> tuple[int, int]:
    """(max_seq, context): the KV positions a run's programs hold (`max_seq`, else the model's positions, at most
    lower.DEFAULT_MAX_SEQ, as loop and evaluate take them) and the KV length its latencies are taken at
    (schedule.cost.bench_context). ArgumentError naming max_seq for a value that is not a positive int, or one
    past a dynamic RoPE's positions (lower.check_rope_context)."""
    from amk.models import Model
    from amk.schedule.cost import bench_context
    from amk.schedule.lower import DEFAULT_MAX_SEQ, check_rope_context

    max_seq = integral(max_seq)  # a numpy integer is the int it holds
    check_max_seq(max_seq)
    shape = model if isinstance(model, Model) else get_model(model_label(model), dtype, Device.CPU, weights=False)
    check_rope_context(shape, max_seq)
    seq = int(max_seq or min(shape.dims.max_positions, DEFAULT_MAX_SEQ))
    return seq, bench_context(seq)


def check_kv_fits(model, target, dtype: str, max_seq: int) -> None:
    """ArgumentError naming max_seq where the KV cache of `max_seq` positions does not fit the memory free on the
    device a loop here would run on (evaluate.check_kv_memory on the default config's program, as loop checks it
    before its first trial): a start that loop and evaluate refuse is not offered."""
    from amk.models import Model
    from amk.schedule.lower import lower

    from .environment import resolve_device
    from .run_checks import check_context, check_kv_memory

    shape = model if isinstance(model, Model) else get_model(model_label(model), dtype, Device.CPU, weights=False)
    program = lower(shape, target, ScheduleConfig(), max_seq=max_seq)
    check_context(program, target)
    check_kv_memory(program, resolve_device("auto"))


def derived_tiling(model, target, cfg: ScheduleConfig, dtype: str | None = None, max_seq: int | None = None) -> dict:
    """{"dtype", "max_seq", "values"}: the values the lowering gives `cfg`'s derived (null) tiling knobs for
    `model` (a name, a checkpoint directory or an amk Model) on `target`, at `dtype` and `max_seq` (by default
    those `evaluate` takes: bf16 for a GPU target, fp32 for cpu-sim; the model's positions, at most 2048).
    `values` maps each derived knob's dotted path to its value. Raises what loading the model's config raises."""
    from amk.models import Model
    from amk.models.registry import model_shape, resolve_dtype
    from amk.schedule.autotile import resolve
    from amk.schedule.lower import DEFAULT_MAX_SEQ

    from .run_checks import default_dtype

    dtype = dtype or default_dtype(Device.CPU, target)
    dims = model.dims if isinstance(model, Model) else model_shape(model)
    seq = max_seq or min(dims.max_positions, DEFAULT_MAX_SEQ)
    _, values = resolve(cfg, dims, resolve_dtype(dtype).itemsize, target, seq)
    return {"dtype": dtype, "max_seq": seq, "values": values}
