"""What config.json says of RoPE that transformers does not run: a value it replaces or drops, and a key it passes
over.

transformers 5 keeps rope_theta and the scaling fields in one dict, `rope_parameters`. Parsing config.json it drops
a top-level `rope_theta` when `rope_parameters` names one, and takes a transformers 4 `rope_scaling` dict in place of
`rope_parameters`; a key its RoPE type does not read it keeps, reads nowhere and logs as "Unrecognized keys" (a
`factor` beside rope_type default, say). AMK runs what transformers runs, so none of these is refused: each is
named in the verdict's notes, so that an edit to a value that does not run is seen not to run.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from .fields import rope_kind

_EVERY_TYPE = {"rope_type", "rope_theta", "partial_rotary_factor"}
_LLAMA3 = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
# the keys each RoPE type AMK lowers reads (transformers 5's modeling_rope_utils: the keys its check of each type
# takes, and the ones its tables compute from); `type` is transformers 4's spelling of rope_type
READ_KEYS: dict[str, frozenset[str]] = {
    "default": frozenset(_EVERY_TYPE | {"type"}),
    "linear": frozenset(_EVERY_TYPE | {"type", "factor"}),
    "dynamic": frozenset(_EVERY_TYPE | {"type", "factor"}),
    "llama3": frozenset(_EVERY_TYPE | {"type"} | _LLAMA3),
}
_ANY_TYPE = frozenset().union(*READ_KEYS.values())


@dataclass(frozen=True)
class ReplacedValue:
    """A RoPE value config.json gives (`written`, under `name`) that transformers does not run: it runs `used`, the
    value of rope_parameters[`key`] in its parsed config, or, where `used` is None, no value of that key at all."""

    name: str
    written: Any
    key: str
    used: Any


def replaced_values(raw: dict, cfg) -> list[ReplacedValue]:
    """Each RoPE value of config.json (`raw`, the file as written) that `cfg.rope_parameters` (transformers' parsed
    config) does not hold as written: a top-level rope_theta, and the keys of rope_parameters and rope_scaling.
    A null is not compared, nor `type` (transformers renames it rope_type), nor a dict of per-layer-type
    parameters."""
    used = getattr(cfg, "rope_parameters", None)
    if not isinstance(used, dict) or any(isinstance(v, dict) for v in used.values()):
        return []
    written: list[tuple[str, str, Any]] = [("rope_theta", "rope_theta", raw.get("rope_theta"))]
    for section in ("rope_parameters", "rope_scaling"):
        if isinstance(raw.get(section), dict):
            written += [(f"{section}.{k}", k, v) for k, v in raw[section].items() if k != "type"]
    out = []
    for name, key, value in written:
        if value is None or isinstance(value, dict):
            continue
        if key not in used:
            out.append(ReplacedValue(name, value, key, None))
        elif used[key] is not None and not _same(used[key], value):
            out.append(ReplacedValue(name, value, key, used[key]))
    return out


def _same(a, b) -> bool:
    # json.loads reads NaN, which is unequal to itself: a NaN kept as written is no replaced value
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def unknown_keys(cfg) -> list[tuple[str, str | None]]:
    """(key, the key of that RoPE type it is a near spelling of, or None) for each key of the parsed
    rope_parameters that its RoPE type does not read. A type AMK refuses (yarn, longrope) is named by the
    refusal, and a dict of per-layer-type parameters by the layers: neither is looked at here."""
    params = getattr(cfg, "rope_parameters", None)
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        return []
    read = READ_KEYS.get(rope_kind(params))
    if read is None:
        return []
    out = []
    for key in params:
        if key not in read:
            close = difflib.get_close_matches(key, read, n=1, cutoff=0.8)
            out.append((key, close[0] if close else None))
    return out


def rope_notes(raw: dict, cfg) -> list[str]:
    """The verdict notes for `replaced_values` and `unknown_keys`, one a value or key."""
    notes = []
    for r in replaced_values(raw, cfg):
        if r.used is None:
            why = (" (rope_scaling took rope_parameters' place)" if r.name.startswith("rope_parameters.")
                   and isinstance(raw.get("rope_scaling"), dict) else "")
            notes.append(f"config.json gives {r.name} = {r.written!r}, but transformers runs no rope_parameters.{r.key}"
                         f"{why}, and neither does AMK")
        else:
            notes.append(f"config.json gives {r.name} = {r.written!r}, but transformers runs rope_parameters.{r.key} "
                         f"= {r.used!r} (it replaced the value given), and so does AMK")
    kind = rope_kind(getattr(cfg, "rope_parameters", None))
    for key, meant in unknown_keys(cfg):
        if meant:
            why = f": did you mean {meant!r}?"
        elif key in _ANY_TYPE:
            why = f" (rope_type {kind} does not read it)"
        else:
            why = ""
        notes.append(f"rope_parameters key {key!r} is read by neither transformers nor AMK: passed over{why}")
    return notes
