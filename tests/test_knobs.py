"""Every knob value is live, valid and correct.

- liveness: lowering with one knob changed gives a program whose fingerprint (tasks, buffers, counters,
  queues, build knobs, threads, shared memory) differs from the one of every other value of that knob.
  llama-3.2-1b dims prove it (slow: 71 distinct lowerings with fingerprint and validate(), ~110 s);
  toy-2L dims repeat the check quickly, where values that its small sizes make equivalent must lower
  identically instead;
- every value lowers to a program validate() accepts (llama dims, h100-sxm);
- every value's program verifies on the real toy and toy-2L models under the adversarial ReferenceVM.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import pytest
from _schedules import (
    CPU_SMS,
    CPU_TARGET,
    REFUSED,
    base_config,
    default_value,
    effective_value,
    knob_config,
    knob_values,
    load,
    value_id,
)

from amk.eval.oracle import eager_reference, verify
from amk.schedule import get_target, lower
from amk.schedule.config import ScheduleConfig, iter_knobs
from amk.schedule.errors import LoweringError
from amk.schedule.smem import max_dynamic_smem
from amk.schedule.validate import validate

LLAMA, LLAMA_TARGET, LLAMA_MAX_SEQ = "llama-3.2-1b", "h100-sxm", 2048
TOY_MAX_SEQ = 64
KNOB_VALUES = knob_values()
PATHS = list(dict.fromkeys(p for p, _ in KNOB_VALUES))
# knobs varied from a base config other than the default (see _schedules.base_config)
VARIED_FROM_ANOTHER_BASE = tuple(p for p in PATHS if base_config(p) != ScheduleConfig())


def _id(path, value) -> str:
    return f"{path}={value_id(value)}"


def _values(path: str) -> list:
    return [v for p, v in KNOB_VALUES if p == path]


@dataclass(frozen=True)
class Lowered:
    fingerprint: str
    tasks: int
    ok: bool
    first_message: str
    derived: str  # JSON of the derived (null) knobs' values


@functools.cache
def _lowered(model: str, dtype: str, target: str, max_seq: int, config_json: str) -> Lowered:
    """One lowering per distinct config (values equal to the default share the default program), kept as a
    small summary: ~75 distinct llama programs of 7k-24k tasks would take gigabytes together."""
    m = load(model, dtype, weights=False)
    try:
        prog = lower(m, target, ScheduleConfig.from_dict(json.loads(config_json)), max_seq)
    except LoweringError as e:  # a value this model refuses (REFUSED): one outcome whatever the value
        return Lowered(f"{REFUSED}: {e.knob}", 0, False, str(e), "{}")
    r = validate(prog, target)
    return Lowered(prog.fingerprint(), len(prog.tasks), r.ok, r.first_message(),
                   json.dumps(prog.meta.get("derived", {}), sort_keys=True))


def _llama(config: ScheduleConfig) -> Lowered:
    return _lowered(LLAMA, "bf16", LLAMA_TARGET, LLAMA_MAX_SEQ, config.canonical_json())


def _toy2l(config: ScheduleConfig) -> Lowered:
    return _lowered("toy-2L", "fp32", CPU_TARGET, TOY_MAX_SEQ, config.canonical_json())


def _toy2l_bf16(config: ScheduleConfig) -> Lowered:
    return _lowered("toy-2L", "bf16", CPU_TARGET, TOY_MAX_SEQ, config.canonical_json())


# knobs that act only on a dtype narrower than fp32 (an fp32 model gets the default's program: test_partials_dtype)
NARROW_DTYPE_KNOBS = ("attention.partials_dtype",)


# ---- the enumeration itself ----------------------------------------------------------------------------
def test_every_knob_is_enumerated_with_two_or_more_values():
    assert PATHS == [p for p, _, _ in iter_knobs()]
    for path in PATHS:
        vals = _values(path)
        assert len(vals) >= 2 and len({json.dumps(v, sort_keys=True) for v in vals}) == len(vals), path
        assert default_value(path) in vals, path  # the default is among them: it is compared like the rest
    maps = [v for v in _values("sm.explicit_map") if v]
    assert len(maps) >= 2 and all(0 <= s < CPU_SMS for m in maps for sms in m.values() for s in sms)
    assert len(KNOB_VALUES) > 60


# ---- liveness -------------------------------------------------------------------------------------------
def _check_live(path: str, lowered, dims) -> None:
    """Values with different effective values lower to different programs and equal ones to the same, so
    every value differs from the default (which is among them); the default value gives exactly the program
    of the knob's base config."""
    vals = _values(path)
    progs = {value_id(v): lowered(knob_config(path, v)) for v in vals}
    base = lowered(base_config(path))
    derived = json.loads(base.derived)
    key = {value_id(v): effective_value(dims, path, v, derived) for v in vals}
    assert len(set(key.values())) >= 2, f"{path}: every value is equivalent on this model"
    assert progs[value_id(default_value(path))] == base, f"{path}: setting the default changes the program"
    wrong = []
    for i, a in enumerate(vals):
        for b in vals[i + 1:]:
            ia, ib = value_id(a), value_id(b)
            same = progs[ia].fingerprint == progs[ib].fingerprint
            if same != (key[ia] == key[ib]):
                wrong.append(f"{path}={ia} and {path}={ib} lower to {'the same' if same else 'different'} "
                             f"program(s): {progs[ia].fingerprint} / {progs[ib].fingerprint} ({progs[ia].tasks} / "
                             f"{progs[ib].tasks} tasks)")
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_llama_every_knob_value_is_live(path):
    dims = load(LLAMA, "bf16", weights=False).dims
    # on llama's sizes no two tested values are equivalent: every value must give a program of its own
    derived = json.loads(_llama(base_config(path)).derived)
    effective = [effective_value(dims, path, v, derived) for v in _values(path) if v is not None]
    assert len(set(effective)) == len(effective)
    _check_live(path, _llama, dims)
    if path not in VARIED_FROM_ANOTHER_BASE:  # the others vary from the default program itself
        assert _llama(base_config(path)) == _llama(ScheduleConfig())


@pytest.mark.parametrize("path", PATHS)
def test_toy2l_every_knob_value_is_live(path):
    _check_live(path, _toy2l_bf16 if path in NARROW_DTYPE_KNOBS else _toy2l, load("toy-2L", weights=False).dims)


# ---- every value validates --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("path,value", KNOB_VALUES, ids=[_id(p, v) for p, v in KNOB_VALUES])
def test_llama_every_knob_value_validates(path, value):
    r = _llama(knob_config(path, value))
    assert r.ok, f"{_id(path, value)} on {LLAMA} ({LLAMA_TARGET}): {r.first_message}"


# ---- every value verifies on real toy models ---------------------------------------------------------
@functools.cache
def _reference(model_name: str, case):
    """Eager logits of one verify case, computed once per model and shared by every knob value."""
    return eager_reference(load(model_name), case, TOY_MAX_SEQ)


VERIFY_PARAMS = [(m, p, v) for m in ("toy", "toy-2L") for p, v in KNOB_VALUES]


@pytest.mark.parametrize("model_name,path,value", VERIFY_PARAMS,
                         ids=[f"{m}-{_id(p, v)}" for m, p, v in VERIFY_PARAMS])
def test_every_knob_value_verifies_on_toy_models(model_name, path, value):
    model = load(model_name)
    if value is not None and effective_value(model.dims, path, value) == REFUSED:  # e.g. a q split of a GQA group it does not divide
        with pytest.raises(LoweringError) as e:
            lower(model, CPU_TARGET, knob_config(path, value), TOY_MAX_SEQ)
        assert e.value.knob == path
        return
    prog = lower(model, CPU_TARGET, knob_config(path, value), TOY_MAX_SEQ)
    assert prog.num_sms == CPU_SMS
    # the hardware check is the cpu-sim target's, except for a shared-memory size it does not have
    fits = prog.smem_per_block <= max_dynamic_smem(get_target(CPU_TARGET).smem_per_block_max)
    r = validate(prog, CPU_TARGET) if fits else validate(prog, gpu_limits=False)
    assert r.ok, f"{model_name} {_id(path, value)}: {r.first_message()}"
    seed = VERIFY_PARAMS.index((model_name, path, value))
    res = verify(prog, model, cases="reduced", adversarial=True, seed=seed, validated=True,
                 reference=lambda case: _reference(model_name, case))
    d = res.to_dict()
    assert res.ok, f"{model_name} {_id(path, value)} (seed {seed}): {d['failures']}"
    assert d["total"] == d["cases_passed"] == 3 and d["passed"] is True


def test_knob_base_configs():
    # sm.explicit_map is varied under sm.assignment=explicit, every other knob from the default config
    assert base_config("sm.explicit_map").sm.assignment.value == "explicit"
    assert base_config("scratch") == ScheduleConfig()
