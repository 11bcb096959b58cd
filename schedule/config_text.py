"""A ScheduleConfig from whatever a caller passes as one: a dict, JSON text (or its UTF-8 bytes) or a
ScheduleConfig. The one reader of a config's text, so that lower(), evaluate(), loop(), propose(), generate() and
the CLI refuse the same things with the same messages: JSON that does not parse, a key given twice in one object
(json keeps the last value silently), anything that is no object, and every schema problem of the dict."""

from __future__ import annotations

import json
import os

from .config import ScheduleConfig, json_kind, json_value
from .errors import ConfigError


class _Object(dict):
    """A JSON object that remembers the keys given twice in it (json keeps the last value silently)."""

    twice: list[tuple[str, object, object]]


def _json_int(text: str) -> int:
    """A JSON integer; one past Python's 4300-digit conversion limit (json.loads would raise, naming no field) as
    an integer of as many digits, so that the knob's range check refuses it by its path."""
    digits = text.lstrip("-")
    if len(digits) <= 4000:
        return int(text)
    return (-1 if text.startswith("-") else 1) * 10 ** (len(digits.lstrip("0") or "0") - 1)


def _object(pairs: list[tuple[str, object]]) -> _Object:
    out, twice = _Object(), []
    for k, v in pairs:
        if k in out:
            twice.append((k, out[k], v))
        out[k] = v
    out.twice = twice
    return out


def _key_given_twice(value, path: str = "$") -> tuple[str, object, object] | None:
    """(dotted path, first value, second value) of the first key given twice in a parsed JSON value."""
    if isinstance(value, _Object):
        if value.twice:
            k, first, second = value.twice[0]
            return f"{path}.{k}", first, second
        for k, v in value.items():
            found = _key_given_twice(v, f"{path}.{k}")
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _key_given_twice(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _path_hint(text: str) -> str:
    """Where a config string that is no JSON names a file: say that a string is read as JSON text (the CLI's
    --config takes a path; the Python API takes the text or a dict)."""
    name = text.strip()
    try:
        is_file = bool(name) and "\n" not in name and os.path.isfile(name)
    except (OSError, ValueError):  # a name too long, or with a NUL
        is_file = False
    if name.endswith(".json") or is_file:
        return (f"; a config string is JSON text, and {name!r} looks like a file name: pass "
                f"json.load(open({name!r})) or the file's text")
    return ""


def parse_config(config) -> ScheduleConfig:
    """A ScheduleConfig from a dict, a JSON string (or bytes) or a ScheduleConfig; ConfigError otherwise.
    A ScheduleConfig is re-parsed through its dict, since its fields can be assigned anything."""
    try:
        if isinstance(config, (bytes, bytearray)):
            config = bytes(config).decode("utf-8")
        if isinstance(config, str):
            try:
                # a UTF-8 byte-order mark (an editor's "UTF-8 with BOM" save) is no JSON, as the CLI's file read
                # drops it: the same text is the same config on every way in
                config = json.loads(config.removeprefix("\ufeff"), object_pairs_hook=_object, parse_int=_json_int)
            except ValueError as e:  # read from a file or stdin (commands.ConfigText): name it
                source = getattr(config, "source", None)
                raise ConfigError("$", f"not valid JSON{f' ({source})' if source else ''}: {e}"
                                       f"{'' if source else _path_hint(config)}") from None
            twice = _key_given_twice(config)
            if twice:
                raise ConfigError(twice[0], f"given twice in one JSON object (values {json_value(twice[1])} and "
                                            f"{json_value(twice[2])}): which one was meant is not known")
        if isinstance(config, ScheduleConfig):
            config = config.to_dict()
        if not isinstance(config, dict):
            raise ConfigError("$", f"expected a config object (a dict, a JSON object string or a ScheduleConfig), "
                                   f"got {json_kind(config)}")
        return ScheduleConfig.from_dict(config)
    except ConfigError:
        raise
    except (RecursionError, MemoryError) as e:
        raise ConfigError("$", f"config too deeply nested or too large ({type(e).__name__})") from None
    except Exception as e:  # anything else a strange value provokes is still a malformed config
        raise ConfigError("$", f"malformed config ({type(e).__name__}: {e})") from None
