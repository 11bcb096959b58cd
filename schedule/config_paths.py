"""A knob by its dotted path (`matvec.lm_head.k_splits`), as propose, the search space and results.tsv name it:
every leaf knob listed, one read, and a config copied with some set and parsed again.
"""

from __future__ import annotations

import dataclasses

from .config import ScheduleConfig, to_jsonable
from .config_parse import _hints, _unknown, json_kind, parse_dataclass
from .errors import ConfigError


def iter_knobs(cls=ScheduleConfig, prefix: str = ""):
    """Yield (dotted path, dataclass field, type) for every leaf knob."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from iter_knobs(tp, path + ".")
        else:
            yield path, f, tp


def get_path(config: ScheduleConfig, path: str):
    obj = config
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def with_value(config, path: str, value):
    """A copy of `config` (a ScheduleConfig or any config dataclass; a config dict is parsed as a ScheduleConfig
    first, and a ScheduleConfig comes back) with the knob at dotted `path` set; `value` in its JSON form (None:
    null, for a knob declared `int | None`). Raises ConfigError for a bad path or value, and one whose `argument`
    is "config" for a config dict the parser refuses or a `config` of any other type (None included)."""
    config = _config_argument(config)
    data = to_jsonable(config)  # not to_dict, which refuses a bad value by hand that `path` may be replacing
    _set_path(data, path, value)
    return parse_dataclass(type(config), data)


def _config_argument(config):
    """with_value's `config` as a config dataclass: a dict parsed (the paths it is given are a ScheduleConfig's:
    a partial dict read alone would know only its own keys). Raises ConfigError naming the argument `config`."""
    if isinstance(config, dict):
        try:
            return ScheduleConfig.from_dict(config)
        except ConfigError as e:
            raise e.named("config") from None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return config
    got = f"the class {config.__name__}" if isinstance(config, type) else json_kind(config)
    raise ConfigError("$", f"expected a ScheduleConfig (or another config dataclass) or a config dict, got {got}",
                      argument="config")


def with_values(config, values: dict):
    """with_value of each (path, value) of `values` in turn, parsed once where no path lies inside another (each
    with_value parses the whole config). Raises what the first failing with_value would."""
    config = _config_argument(config)
    paths = list(values)
    if any(q.startswith(p + ".") for p in paths for q in paths):  # a later set could hide an earlier bad one
        for path, value in values.items():
            config = with_value(config, path, value)
        return config
    data = to_jsonable(config)
    try:
        for path, value in values.items():
            _set_path(data, path, value)
        return parse_dataclass(type(config), data)
    except ConfigError:  # the error of the first step that fails, as the steps one by one give it
        for path, value in values.items():
            config = with_value(config, path, value)
        raise


def _set_path(data: dict, path: str, value) -> None:
    node = data
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ConfigError("$." + ".".join(parts[:i + 1]), "no such config object")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError("$." + path, _unknown(parts[-1], list(node), "knob"))
    node[parts[-1]] = to_jsonable(value)
