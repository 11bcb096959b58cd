"""What config.json says of RoPE that transformers does not run: a value it replaces, and a key it passes over.

transformers 5 keeps rope_theta and the scaling fields in one dict, `rope_parameters`. Parsing config.json it drops
a top-level `rope_theta` when `rope_parameters` names one, and lets a transformers 4 `rope_scaling` dict override
`rope_parameters`; a key of that dict it does not know it keeps and reads nowhere (it logs "Unrecognized keys").
AMK runs what transformers runs, so none of these is refused: each is named in the verdict's notes, so that an
edit to a value that does not run is seen not to run.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from .fields import FIELDS

_PREFIX = "rope_parameters."
# the keys transformers reads from rope_parameters (the field table classifies each), and transformers 4's `type`
KNOWN_KEYS = frozenset(name[len(_PREFIX):] for name in FIELDS if name.startswith(_PREFIX)) | {"type"}


@dataclass(frozen=True)
class ReplacedValue:
    """A RoPE value config.json gives (`written`, under `name`) that transformers replaced: it runs `used`, the
    value of rope_parameters[`key`] in its parsed config."""

    name: str
    written: Any
    key: str
    used: Any


def replaced_values(raw: dict, cfg) -> list[ReplacedValue]:
    """Each RoPE value of config.json (`raw`, the file as written) whose parsed value in `cfg.rope_parameters`
    differs: a top-level rope_theta, and the keys of rope_parameters and rope_scaling. A key the parsed dict does not
    hold, or a null, is not compared (transformers fills or renames those)."""
    used = getattr(cfg, "rope_parameters", None)
    if not isinstance(used, dict):
        return []
    written: list[tuple[str, str, Any]] = [("rope_theta", "rope_theta", raw.get("rope_theta"))]
    for section in ("rope_parameters", "rope_scaling"):
        if isinstance(raw.get(section), dict):
            written += [(f"{section}.{k}", k, v) for k, v in raw[section].items()]
    return [ReplacedValue(name, value, key, used[key]) for name, key, value in written
            if value is not None and key in used and used[key] is not None and used[key] != value]


def unknown_keys(cfg) -> list[tuple[str, str | None]]:
    """(key, the known key it is a near spelling of, or None) for each key of the parsed rope_parameters that
    transformers does not read."""
    params = getattr(cfg, "rope_parameters", None)
    if not isinstance(params, dict):
        return []
    out = []
    for key in params:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.8)
            out.append((key, close[0] if close else None))
    return out


def rope_notes(raw: dict, cfg) -> list[str]:
    """The verdict notes for `replaced_values` and `unknown_keys`, one a value or key."""
    notes = [f"config.json gives {r.name} = {r.written!r}, but transformers runs rope_parameters.{r.key} = "
             f"{r.used!r} (it replaced the value given), and so does AMK" for r in replaced_values(raw, cfg)]
    for key, meant in unknown_keys(cfg):
        hint = f": did you mean {meant!r}?" if meant else ""
        notes.append(f"rope_parameters key {key!r} is read by neither transformers nor AMK: passed over{hint}")
    return notes
