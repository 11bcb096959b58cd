"""The MCP tools' argument checks beside the SDK's: unknown names, JSON true or false for a number, anything but
true or false for a flag, and JSON text that AMK parses itself (duplicate keys refused) all refused or kept as
sent. Applied once to the server's tools when it is built (mcp_server.build_server)."""

from __future__ import annotations

import json
import typing


def _number_fields(arg_model) -> frozenset[str]:
    """The arguments typed int or float (optional or not), where pydantic's lax mode reads true as 1."""
    out = set()
    for name, f in arg_model.model_fields.items():
        kinds = typing.get_args(f.annotation) or (f.annotation,)
        if any(k in (int, float) for k in kinds) and bool not in kinds:
            out.add(name)
    return frozenset(out)


def _bool_fields(arg_model) -> frozenset[str]:
    """The arguments typed bool, where pydantic's lax mode reads "yes", "off", 0 and 1 as true or false."""
    return frozenset(name for name, f in arg_model.model_fields.items() if f.annotation is bool)


def strict_arguments(server) -> None:
    """Make every tool refuse an argument name it does not have, a JSON true or false for a number, and anything
    but true or false for a flag. The SDK's argument models ignore unknown keys, so a misspelt `confg` evaluated
    the defaults and answered valid and correct; they read `max_seq: true` as 1 (a one-position program), where
    Python refuses a bool; and they read `resume: "no"` or `plots: 0` as a flag, where Python refuses anything but
    True or False (arguments.check_flag). The SDK keeps its tools on a private manager: a change there raises
    here, when the server starts, not silently at a call."""
    from pydantic import ConfigDict, model_validator

    for tool in server._tool_manager.list_tools():
        base = tool.fn_metadata.arg_model
        numbers, flags = _number_fields(base), _bool_fields(base)

        def no_bools(cls, data, numbers=numbers, flags=flags):
            if isinstance(data, dict):
                for name in sorted(numbers):
                    if isinstance(data.get(name), bool):
                        raise ValueError(f"{name}: expected a number, got {str(data[name]).lower()}")
                for name in sorted(flags):
                    if name in data and not isinstance(data[name], bool):
                        raise ValueError(f"{name}: expected true or false, got {json.dumps(data[name])}")
            return data

        tool.fn_metadata.arg_model = type(base.__name__, (base,), {
            "model_config": ConfigDict(**base.model_config, extra="forbid"),
            "_no_bools": model_validator(mode="before")(classmethod(no_bools))})
        tool.parameters["additionalProperties"] = False  # the listed input schema says so too


# Arguments whose JSON text AMK parses itself: the SDK parses any string given for a parameter not typed str with
# plain json.loads, which keeps the last of a key given twice, where AMK refuses it (which one was meant is unknown).
# Given as an object with a key twice, the transport hands such an argument on as its text (mcp_requests).
JSON_TEXT_ARGUMENTS = {"evaluate": frozenset({"config"}), "propose": frozenset({"incumbent"})}


def _text_fields(arg_model) -> frozenset[str]:
    """The arguments typed `str | None` (a path, a dtype, a case set): the SDK's pre-parse reads the string "null"
    given for one as null, and "[1]" or "true" as a list or a bool, where the client sent a string."""
    return frozenset(name for name, f in arg_model.model_fields.items()
                     if f.annotation is not str and str in typing.get_args(f.annotation))


def keep_json_text(server) -> None:
    """Leave the JSON text of JSON_TEXT_ARGUMENTS to AMK's own parser (duplicate keys refused, named), and every
    string given for an argument typed `str | None` as the string it is (_text_fields): each such tool's argument
    metadata becomes a subclass whose pre-parse hands those strings on as given."""
    for tool in server._tool_manager.list_tools():
        keep = JSON_TEXT_ARGUMENTS.get(tool.name, frozenset()) | _text_fields(tool.fn_metadata.arg_model)
        if not keep:
            continue
        meta = tool.fn_metadata
        base = type(meta)

        def pre_parse_json(self, data, base=base, keep=keep):
            out = base.pre_parse_json(self, data)
            out.update({k: v for k, v in data.items() if k in keep and isinstance(v, str)})
            return out

        sub = type(f"{base.__name__}KeepingJsonText", (base,), {"pre_parse_json": pre_parse_json})
        tool.fn_metadata = sub(**{name: getattr(meta, name) for name in base.model_fields})
