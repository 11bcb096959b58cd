"""Knobs that became other knobs: a stored config (a tuning record of the corpus) read in today's spelling, and
the words the parser has for a config written in the old one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MovedKnob:
    """A knob that became another one: `values` maps each old value to the new knob's."""
    new_path: str
    values: tuple[tuple[Any, Any], ...]

    def message(self) -> str:
        from .config_parse import json_value  # config_parse reads MOVED_KNOBS: read once both have loaded

        return f"it became {self.new_path}: " + ", ".join(f"{json_value(a)} is {b!r}" for a, b in self.values)


# A config an agent writes with an old knob is refused with the new spelling; a stored one (a tuning record of the
# corpus) is read in the new spelling (migrate_config), so that no record is lost to a rename.
MOVED_KNOBS = {
    "fusion.attention_combine_into_o": MovedKnob("attention.combine", ((True, "o_input"), (False, "stage"))),
}


def migrate_config(data: Any) -> Any:
    """A stored config dict in today's spelling: each moved knob (MOVED_KNOBS) set to one of its old values is
    replaced by its successor, unless the successor is set as well (then it wins). Anything else is returned as it
    is, for the parser to judge. `data` itself is not changed."""
    if not isinstance(data, dict) or not any(_holds(data, p) for p in MOVED_KNOBS):
        return data  # the common case, on every record of every corpus read: no copy
    out = copy.deepcopy(data)
    for old_path, moved in MOVED_KNOBS.items():
        *parents, leaf = old_path.split(".")
        holder = out
        for part in parents:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or leaf not in holder:
            continue
        new_value = dict(moved.values).get(holder[leaf]) if isinstance(holder[leaf], bool) else None
        if new_value is None:
            continue
        del holder[leaf]
        *new_parents, new_leaf = moved.new_path.split(".")
        target = out
        for part in new_parents:
            target = target.setdefault(part, {}) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target.setdefault(new_leaf, new_value)
    return out


def _holds(data: dict, dotted: str) -> bool:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.get(part) if isinstance(data, dict) else None
    return isinstance(data, dict) and leaf in data
