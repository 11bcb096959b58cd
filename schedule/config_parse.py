"""The strict parser of a config dict: every key and value checked against its field's type and bounds, every
problem reported at once with its JSON path, a misspelt key or a knob's old name answered with the key most likely
meant, and values quoted in messages as the JSON they were written as.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import math
import numbers
import sys
import types
from enum import Enum
from typing import Any, Union, get_args, get_origin, get_type_hints

from .config_migrate import MOVED_KNOBS
from .errors import ConfigError, ConfigProblem, suggest


def optional_base(tp):
    """`int` (`bool`) for a knob declared `int | None` (`bool | None`; null accepted: derived at lowering), else
    None."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0]
    return None


def field_default(f: dataclasses.Field):
    """The default of one dataclass field, a fresh copy: the one definition every parser, schema and search
    space reads (a nested field's default may differ from its class's own: `RowTiling(256)`)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is not dataclasses.MISSING:
        return f.default
    raise TypeError(f"config field {f.name!r} has no default")  # every knob() has one


def parse_dataclass(cls, data, path: str = "$", base=None):
    """Instance of config dataclass `cls` from `data`, absent keys taken from `base` (default: each field's
    own default). Raises ConfigError with every problem found, in document order."""
    problems: list[ConfigProblem] = []
    out = _parse_object(cls, data, path, base, problems)
    if problems:
        raise ConfigError.of(problems)
    return out


@functools.cache
def _hints(cls) -> dict[str, Any]:
    # resolving the string annotations (from __future__) costs ~1 ms a class, and the search parses configs by
    # the thousand: about a fifth of a CPU loop's time before the resolved hints were kept
    return get_type_hints(cls)


@functools.cache
def _parse_plan(cls) -> dict[str, tuple[dataclasses.Field, Any, bool, bool]]:
    """name -> (field, type hint, declared `X | None`, a nested config object) for each field of `cls`, worked
    out once: the search parses configs by the thousand."""
    hints = _hints(cls)
    plan = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        base = optional_base(tp)
        leaf = tp if base is None else base
        plan[f.name] = (f, leaf, base is not None, dataclasses.is_dataclass(leaf))
    return plan


def _parse_object(cls, data, path, base, problems):
    if not isinstance(data, dict):
        problems.append(ConfigProblem(path, f"expected an object, got {json_kind(data)}"))
        return None
    plan = _parse_plan(cls)
    kwargs = {}
    for key, value in data.items():  # document order, so problems come back in the order they were written
        spec = plan.get(key)
        if spec is None:
            problems.append(ConfigProblem(f"{path}.{key}", _unknown_key(path, key, list(plan))))
            continue
        kwargs[key] = _parse_value(spec, value, f"{path}.{key}", base, problems)
    for name, (f, *_) in plan.items():
        if name not in kwargs:
            kwargs[name] = _default_of(f, base)
    return cls(**kwargs)


def _default_of(f: dataclasses.Field, base):
    return _copy_default(getattr(base, f.name)) if base is not None else field_default(f)


def _default_source(f: dataclasses.Field, base):
    """What `_default_of` copies, itself: a nested object's parse reads only the fields its data leaves out, and
    copies each it takes, so that copying the whole default first (a deep copy per level) is not needed."""
    return getattr(base, f.name) if base is not None else _own_default(f)


@functools.cache
def _own_default(f: dataclasses.Field):
    return field_default(f)  # never handed out: _default_of copies what is read from it


def _copy_default(value):
    # deep: a shallow replace() would share the nested tilings of one default among every config made from it
    if type(value) in _ATOMIC or isinstance(value, Enum):
        return value  # what deepcopy gives for these, without its dispatch (parsing copies every default taken)
    return copy.deepcopy(value)


_ATOMIC = frozenset({int, float, bool, str, type(None)})


def _unknown_key(path: str, key, allowed, what: str = "key") -> str:
    """An unknown key's message (`what`: "field" for an attribute assigned by hand, config_guard.py): a moved knob
    names its successor, as does a near miss of a moved knob's name; anything else gets the closest known key."""
    here = f"{path}.{key}".removeprefix("$.")
    moved = MOVED_KNOBS.get(here)
    if moved is not None:
        return f"unknown {what}; {moved.message()}"
    olds = {p: m for p, m in MOVED_KNOBS.items()
            if p.rpartition(".")[2] == key or (p.rpartition(".")[0] == here.rpartition(".")[0]
                                               and difflib.get_close_matches(str(key), [p.rpartition(".")[2]],
                                                                             cutoff=0.8))}
    known = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    if isinstance(key, str) and "." in key:
        from .config_paths import iter_knobs  # config_paths reads this module: read once both have loaded

        # propose, derived and results.tsv name knobs by dotted path; a config nests them
        full = f"{path.removeprefix('$').lstrip('.')}.{key}".lstrip(".")
        if full in {p for p, _, _ in iter_knobs()}:
            parts = key.split(".")
            nested = "".join(f'{{"{k}": ' for k in parts) + "VALUE" + "}" * len(parts)
            return f"unknown {what}; a dotted knob path is written nested in a config: {nested}"
    if olds and not known:
        old, m = next(iter(olds.items()))
        return f"unknown {what}; {old} {m.message().removeprefix('it ')}"
    return _unknown(key, allowed, what)


def _unknown(key, allowed, what: str) -> str:
    near = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"unknown {what}; {hint}allowed: {', '.join(sorted(map(str, allowed)))}"


def _parse_field(cls, name: str, data, path: str):
    """Nested config field `name` of config class `cls` from its dict, as parse_dataclass reads that key of a
    config: absent keys from the field's own default. `path` names it in messages. Raises ConfigError listing every
    problem."""
    f, tp, _, _ = _parse_plan(cls)[name]
    problems: list[ConfigProblem] = []
    out = _parse_object(tp, data, path, _own_default(f), problems)
    if problems:
        raise ConfigError.of(problems)
    return out


def _parse_value(spec, value, path, base, problems):
    """The parsed value of a field (`spec` as _parse_plan gives it), or its default (from `base`, else its own)
    after recording a problem (parsing goes on, so all are reported)."""
    f, tp, optional, nested = spec
    if optional and value is None:
        return None
    if nested:
        got = _parse_object(tp, value, path, _default_source(f, base), problems)
        return _default_of(f, base) if got is None else got
    try:
        return _parse_leaf(tp, f.metadata, value, path)
    except ConfigError as e:
        problems.extend(e.problems)
        return _default_of(f, base)


def _parse_leaf(tp, meta, value, path):
    if isinstance(tp, type) and issubclass(tp, Enum):
        if isinstance(value, tp):
            return value
        if not isinstance(value, str) or value not in _enum_values(tp):
            allowed = list(_enum_values(tp))
            near = (suggest(value, allowed) or [None])[0] if isinstance(value, str) else _old_value(path, value)
            hint = f"; did you mean {near!r}?" if near else ""
            raise ConfigError(path, f"expected one of {allowed}, got {json_value(value)}{hint}")
        return tp(value)
    # a notebook's dict may hold numpy scalars (a value read from a pandas frame): taken as the JSON value they are
    if tp is bool:
        if not _is_boolean(value):
            raise ConfigError(path, f"expected a boolean, got {json_kind(value)}")
        return bool(value)
    if tp is int:
        if _is_boolean(value) or not isinstance(value, numbers.Integral):
            raise ConfigError(path, f"expected an integer, got {json_kind(value)}")
        value = int(value)
        _check_bounds(meta, value, path)
        return value
    if tp is float:
        if _is_boolean(value) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        _check_bounds(meta, value, path)
        return float(value)
    if tp is dict or get_origin(tp) is dict:
        return _parse_explicit_map(value, path)
    raise TypeError(f"{path}: unsupported config field type {tp}")  # a programming error in this module


def _is_boolean(value) -> bool:
    """A Python or numpy boolean scalar: true and false are no numbers in a config, as in JSON. An array or a pandas
    column of booleans is none (as an array of integers is no integer), so that it is refused naming its field where
    bool() of it would raise."""
    np = sys.modules.get("numpy")  # a numpy value comes only from a process that imported numpy
    return isinstance(value, bool) or (np is not None and isinstance(value, np.bool_))


@functools.cache
def _enum_values(tp) -> tuple:
    return tuple(m.value for m in tp)


def _old_value(path: str, value) -> str | None:
    """What `value` means at `path` when it is a value of the knob that moved there (true -> 'o_input')."""
    for moved in MOVED_KNOBS.values():
        if moved.new_path == path.removeprefix("$.") and isinstance(value, bool):
            return dict(moved.values).get(value)
    return None


MESSAGE_VALUE_CHARS = 60  # a value quoted in a message is cut here, and says it was
_LONG_INT_BITS = 4000  # about 1204 digits: below the 4300 Python converts to a string, far past any knob's range


def _digits(n: int) -> int:
    """The decimal digits of n > 0, without converting it to a string."""
    d = int(n.bit_length() * 0.30102999566398120)  # log10(2): exact or one short
    return d + 1 if n >= 10 ** d else d


def json_value(value) -> str:
    """A parsed JSON value as the JSON it was written as (true, null, "x"), for messages: cut past
    MESSAGE_VALUE_CHARS characters, with the whole length given. An integer past Python's 4300-digit string
    conversion is given by its length (str() of it raises)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > _LONG_INT_BITS:
        return f"{'a negative' if value < 0 else 'an'} integer of {_digits(abs(value))} digits"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > MESSAGE_VALUE_CHARS:
        text = f"{text[:MESSAGE_VALUE_CHARS]}... ({len(text)} characters)"
    return text


def json_kind(value) -> str:
    """What a config value is, in JSON's words (a config is JSON, whatever language built it)."""
    if value is None:
        return "null"
    if _is_boolean(value):  # numpy's too: the JSON value a notebook's scalar holds
        return f"a boolean ({json_value(bool(value))})"
    if isinstance(value, numbers.Integral):
        shown = json_value(int(value))
        return shown if shown.endswith(" digits") else f"an integer ({shown})"
    if isinstance(value, numbers.Real):
        return f"a number ({json_value(float(value))})"
    if isinstance(value, str):
        return f"a string ({json_value(value)})"
    if isinstance(value, (list, tuple)):
        return "an array" if value else "an empty array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_bounds(meta, value, path):
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(path, f"expected one of {choices}, got {json_value(value)}")
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None and value < lo:
        raise ConfigError(path, f"must be >= {lo}, got {json_value(value)}")
    if hi is not None and value > hi:
        raise ConfigError(path, f"must be <= {hi}, got {json_value(value)}")


EXPLICIT_MAP_KINDS = ("embed", "norm", "qkv", "rope_kv", "attention", "attention_values", "attention_combine", "o", "add",
                      "gate_up", "silu_mul", "down", "reduce", "lm_head", "argmax")
MAX_SM_ID = 4096


def _parse_explicit_map(value, path):
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected an object of stage kind -> SM list, got {json_kind(value)}")
    out, problems = {}, []
    for kind, sms in value.items():
        p = f"{path}.{kind}"
        if kind not in EXPLICIT_MAP_KINDS:
            problems.append(ConfigProblem(p, _unknown(kind, EXPLICIT_MAP_KINDS, "stage kind")))
            continue
        np = sys.modules.get("numpy")
        if np is not None and isinstance(sms, np.ndarray) and sms.ndim == 1:
            sms = sms.tolist()  # a notebook's array of SM ids: the list it holds, as a numpy scalar is its value
        if not isinstance(sms, list | tuple) or not sms:
            problems.append(ConfigProblem(p, f"expected a non-empty list of SM ids, got {json_kind(sms)}"))
            continue
        bad = [ConfigProblem(f"{p}[{i}]", f"expected an SM id in [0, {MAX_SM_ID}), got {json_kind(sm)}")
               for i, sm in enumerate(sms)
               if _is_boolean(sm) or not isinstance(sm, numbers.Integral) or not 0 <= sm < MAX_SM_ID]
        problems += bad
        if not bad:
            out[kind] = [int(sm) for sm in sms]
    if problems:
        raise ConfigError.of(problems)
    return out

