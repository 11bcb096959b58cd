"""The JSON schema of ScheduleConfig, generated from the dataclasses and their field metadata.

schemas/schedule_config.schema.json is this function's output, committed; tests/test_schema.py proves the
two agree. Regenerate with `python -m amk.harness.schema`.
"""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from pathlib import Path
from typing import get_type_hints

from amk.schedule.config import EXPLICIT_MAP_KINDS, MAX_SM_ID, ScheduleConfig

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://amk.invalid/schemas/schedule_config.schema.json"


def schema_path() -> Path:
    """The schema file inside the installed package (amk.schemas)."""
    import amk.schemas

    return (Path(amk.schemas.__file__).parent / "schedule_config.schema.json").resolve()


def generate_schema() -> dict:
    root = _object_schema(ScheduleConfig)
    return {"$schema": DRAFT, "$id": SCHEMA_ID, "title": "ScheduleConfig",
            "description": ("The one object an agent edits: how AMK lowers a model into a megakernel program. "
                            "Every key is optional (absent keys take their default); unknown keys are errors. "
                            "Integers must be written without a fraction (AMK rejects 4.0 where 4 is meant)."),
            **root}


def _object_schema(cls) -> dict:
    hints = get_type_hints(cls)
    props = {}
    defaults = cls()
    for f in dataclasses.fields(cls):
        props[f.name] = _field_schema(hints[f.name], f.metadata, getattr(defaults, f.name))
    return {"type": "object", "properties": props, "additionalProperties": False}


def _json_default(v):
    if dataclasses.is_dataclass(v):
        return {f.name: _json_default(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, dict):
        return {k: _json_default(x) for k, x in v.items()}
    return v


def _field_schema(tp, meta, default) -> dict:
    desc = {"description": meta["help"]} if meta.get("help") else {}
    if dataclasses.is_dataclass(tp):
        return {**desc, **_object_schema(tp)}
    out: dict = dict(desc)
    if isinstance(tp, type) and issubclass(tp, Enum):
        out.update(type="string", enum=[m.value for m in tp])
    elif tp is bool:
        out["type"] = "boolean"
    elif tp is int:
        out["type"] = "integer"
    elif tp is float:
        out["type"] = "number"
    elif tp is dict:
        return {**desc, **_explicit_map_schema()}
    else:
        raise TypeError(f"no JSON schema for field type {tp!r}")
    choices = meta.get("choices")
    if choices is not None and "enum" not in out:
        out["enum"] = [_json_default(c) for c in choices]
    for key in ("minimum", "maximum"):
        if meta.get(key) is not None:
            out[key] = meta[key]
    out["default"] = _json_default(default)
    return out


def _explicit_map_schema() -> dict:
    sms = {"type": "array", "minItems": 1,
           "items": {"type": "integer", "minimum": 0, "maximum": MAX_SM_ID - 1}}
    return {"type": "object", "properties": {k: sms for k in EXPLICIT_MAP_KINDS}, "additionalProperties": False,
            "default": {}}


def schema_text() -> str:
    return json.dumps(generate_schema(), indent=2, sort_keys=False) + "\n"


def write_schema(path: str | Path | None = None) -> Path:
    p = Path(path) if path is not None else schema_path()
    p.write_text(schema_text())
    return p


def strict_validator():
    """A jsonschema validator whose "integer" is a JSON integer literal (Python int, not bool, not 4.0):
    the one place JSON Schema is looser than ScheduleConfig.from_dict."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _c, v: isinstance(v, int) and not isinstance(v, bool))
    cls = jsonschema.validators.extend(base, type_checker=checker)
    return cls(generate_schema())


if __name__ == "__main__":
    print(write_schema())
