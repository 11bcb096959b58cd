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

from amk.schedule.config import EXPLICIT_MAP_KINDS, MAX_SM_ID, ScheduleConfig, optional_base, to_jsonable

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://amk.invalid/schemas/schedule_config.schema.json"


def schema_path() -> Path:
    """The schema file inside the installed package (amk.schemas)."""
    import amk.schemas

    return (Path(amk.schemas.__file__).parent / "schedule_config.schema.json").resolve()


def generate_schema(cls=ScheduleConfig) -> dict:
    """The JSON schema of config dataclass `cls` (ScheduleConfig by default). Every default in it is the
    field's own default, read from the dataclass definition (`matvec.lm_head.rows_per_task` is 256 because
    its field says `RowTiling(256)`), so the schema, the parser and `propose` cannot disagree."""
    root = _object_schema(cls, cls())
    return {"$schema": DRAFT, "$id": SCHEMA_ID, "title": cls.__name__,
            "description": ("The one object an agent edits: how AMK lowers a model into a megakernel program. "
                            "Every key is optional (absent keys take their default, also inside a partial "
                            "nested object); unknown keys are errors. Integers must be written without a "
                            "fraction (AMK rejects 4.0 where 4 is meant). null, where a knob allows it, means "
                            "derived from the model's shape and the GPU at lowering."),
            **root}


def _object_schema(cls, defaults) -> dict:
    hints = get_type_hints(cls)
    props = {f.name: _field_schema(hints[f.name], f.metadata, getattr(defaults, f.name))
             for f in dataclasses.fields(cls)}
    return {"type": "object", "properties": props, "additionalProperties": False}


def _field_schema(tp, meta, default) -> dict:
    desc = {"description": meta["help"]} if meta.get("help") else {}
    if dataclasses.is_dataclass(tp):
        return {**desc, **_object_schema(tp, default)}
    base = optional_base(tp)
    nullable = base is not None
    tp = base if nullable else tp
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
        out["enum"] = [to_jsonable(c) for c in choices]
    if nullable:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    for key in ("minimum", "maximum"):
        if meta.get(key) is not None:
            out[key] = meta[key]
    out["default"] = to_jsonable(default)
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


def strict_validator(schema: dict | None = None):
    """A jsonschema validator (of `schema`, default ScheduleConfig's) whose "integer" is a JSON integer
    literal (Python int, not bool, not 4.0): the one place JSON Schema is looser than ScheduleConfig.from_dict."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _c, v: isinstance(v, int) and not isinstance(v, bool))
    cls = jsonschema.validators.extend(base, type_checker=checker)
    return cls(schema if schema is not None else generate_schema())


if __name__ == "__main__":
    print(write_schema())
