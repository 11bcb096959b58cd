"""The attribute guard of the config dataclasses: a hand edit in Python is held to what the dict parser holds a key
to. A plain dataclass keeps `config.matvec.lm_head.k_split = 2` (a misspelt field) as a new attribute that nothing
reads, so the config runs as if unedited; here such an assignment raises UnknownFieldError, naming its dotted path
in the config and the field most likely meant. A dict assigned to a nested config field (`ScheduleConfig(matvec={...})`
too) is parsed into its dataclass as the parser parses that key, onto the field's own default. Any other value of a
field is kept as it is, to be judged where the config is read (to_dict, schedule_id, the parse of lower and
evaluate), so that dataclasses.replace, copy.deepcopy and pickle work as on any dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import get_type_hints

from .config_parse import _parse_field, _unknown_key
from .errors import ConfigError

# In a nested config object's __dict__ (no field, so neither compared, printed nor in to_dict): the name of the field
# that holds it, which tells the four matvec tilings (one class) apart in a message
_HELD_AS = "_config_field"


class UnknownFieldError(ConfigError, AttributeError):
    """An assignment to a name that is no field of a config dataclass. `path` is the dotted JSON path the name
    would have in the config (`$.matvec.lm_head.k_split`); the message names the field most likely meant. An
    AttributeError too, as such an assignment to a frozen or slotted object is."""


class FieldGuard:
    """Base of a config dataclass whose instances take no attribute but their fields (each a plain instance
    attribute: no slots, no descriptors)."""

    __slots__ = ()

    def __setattr__(self, name, value):
        # the first assignment to an instance of a class installs that class's own guard, which knows its fields
        _install(type(self))(self, name, value)


def _install(cls):
    """Give config class `cls` a __setattr__ that lets its fields through and refuses every other name."""
    table = _table(cls)
    leaves = frozenset(n for n, t in table.items() if t is None)

    def __setattr__(self, name, value):
        # every dataclass __init__ assigns through this (the search builds configs by the thousand): a set lookup
        # and a dict write for a leaf cost 0.1 us, under half of what a guard looking up the class's fields did
        if name in leaves:
            self.__dict__[name] = value
        elif name in table:
            self.__dict__[name] = _nested_value(self, name, table[name], value)
        elif type(self) is not cls:  # a subclass that declares fields of its own: its own guard, from now on
            _install(type(self))(self, name, value)
        else:
            raise unknown_field(self, name)

    __setattr__.__qualname__ = f"{cls.__qualname__}.__setattr__"
    cls.__setattr__ = __setattr__
    return __setattr__


@functools.cache
def _table(cls) -> dict[str, type | None]:
    """field name -> its config class where the field is a nested config object, else None."""
    hints = get_type_hints(cls)  # resolves the string annotations; the classes nested are defined by now
    return {f.name: hints[f.name] if _is_config_class(hints[f.name]) else None for f in dataclasses.fields(cls)}


def _is_config_class(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _nested_value(owner, name: str, cls, value):
    """What nested config field `name` (of config class `cls`) of `owner` holds when assigned `value`."""
    if isinstance(value, dict):
        return _parse_field(type(owner), name, value, "$." + field_path(owner, name))
    if type(value) is cls:
        value.__dict__[_HELD_AS] = name  # one dict write: the path itself is worked out only for a message
    return value


def field_path(obj, name: str) -> str:
    """The dotted path (without `$.`) that field `name` of config object `obj` has in the config that holds it."""
    prefix = _place(obj)
    return f"{prefix}.{name}" if prefix else name


def _place(obj) -> str:
    """Where config object `obj` sits in a config ('' for the root): its class's place in the tree of config
    classes, told apart by the field that holds it where the class sits in several places (the matvec tilings; a
    tiling that no config object holds is named from itself: '')."""
    places = _places().get(type(obj), ("",))
    if len(places) > 1:
        held = obj.__dict__.get(_HELD_AS)
        places = tuple(p for p in places if p.rpartition(".")[2] == held) or places
    return places[0] if len(places) == 1 else ""


@functools.cache
def _places() -> dict[type, tuple[str, ...]]:
    """Each config class -> the dotted paths at which it sits under a root config class (one that no other nests:
    ScheduleConfig). Worked out at the first message, when every config class is defined."""
    classes = [c for c in FieldGuard.__subclasses__() if dataclasses.is_dataclass(c)]
    nested = {c: {n: t for n, t in _table(c).items() if t is not None} for c in classes}
    inner = {t for fields in nested.values() for t in fields.values()}
    places: dict[type, list[str]] = {}
    todo = [(c, "") for c in classes if c not in inner]
    while todo:
        cls, at = todo.pop(0)
        places.setdefault(cls, []).append(at)
        todo += [(t, f"{at}.{n}" if at else n) for n, t in nested.get(cls, {}).items()]
    return {c: tuple(p) for c, p in places.items()}


def unknown_field(obj, name: str) -> UnknownFieldError:
    """The error for an assignment to `name`, no field of config object `obj`: its dotted path and the field it
    most likely meant, in the words the parser has for a misspelt key (a moved knob names its successor)."""
    prefix = _place(obj)
    parent = f"$.{prefix}" if prefix else "$"
    names = [f.name for f in dataclasses.fields(obj)]
    return UnknownFieldError(f"{parent}.{name}", _unknown_key(parent, name, names, what="field"))
