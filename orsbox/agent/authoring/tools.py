"""`@tool`, and the input schemas of tools: derived from type hints, and checked against each call's input.

Stdlib only, Python 3.8+. A tool's input schema is derived from its parameters' type
hints (the subset pydantic would also produce) instead of a pydantic model, unless the
tool is written the openreward way, with one pydantic model parameter (the image's own
pydantic then validates).
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar, Union, overload

from .blocks import JSONObject

# ---------------------------------------------------------------- @tool


@dataclass
class ToolInfo:
    """What `@tool` records on a method."""

    shared: bool = True
    concurrent: bool = False
    exclusive: bool = False
    input_schema: Optional[JSONObject] = None  # explicit schema; None = derive from type hints


_TOOL_ATTR = "_orsbox_tool"

F = TypeVar("F", bound=Callable[..., Any])


@overload
def tool(fn: F) -> F: ...


@overload
def tool(
    fn: None = None,
    *,
    shared: bool = True,
    concurrent: bool = False,
    exclusive: bool = False,
    input_schema: Optional[JSONObject] = None,
) -> Callable[[F], F]: ...


def tool(
    fn: Optional[F] = None,
    *,
    shared: bool = True,
    concurrent: bool = False,
    exclusive: bool = False,
    input_schema: Optional[JSONObject] = None,
) -> Union[F, Callable[[F], F]]:
    """Declare a method as a tool.

    Calls to one tool run one at a time per session; `concurrent=True` lets
    calls overlap (for tools that never grant reward); `exclusive=True` waits
    for every in-flight call and holds new ones until it returns (for `submit`).
    `shared=False` makes it a task tool, listed only inside a session.
    """

    def mark(f: F) -> F:
        setattr(f, _TOOL_ATTR, ToolInfo(shared, concurrent and not exclusive, exclusive, input_schema))
        return f

    return mark if fn is None else mark(fn)


def tool_info(fn: Any) -> Optional[ToolInfo]:
    return getattr(fn, _TOOL_ATTR, None)


# ---------------------------------------------------------------- schemas from type hints


class AuthoringError(Exception):
    """An environment class that cannot be served, with what to fix."""


def _title(name: str) -> str:
    return " ".join(part.capitalize() for part in name.split("_") if part) or name


def _model_title(tool_name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_\W]+", tool_name) if part) + "Input"


_UNION_TYPE = getattr(types, "UnionType", None)  # `int | None`, Python 3.10+
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def type_schema(hint: Any, where: str) -> JSONObject:
    """The JSON Schema of one parameter's type hint (a subset pydantic would also produce)."""
    if hint is type(None):
        return {"type": "null"}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is Any:
        return {}
    origin = typing.get_origin(hint) if hasattr(typing, "get_origin") else getattr(hint, "__origin__", None)
    args = typing.get_args(hint) if hasattr(typing, "get_args") else getattr(hint, "__args__", ())
    if origin is Union or (_UNION_TYPE is not None and origin is _UNION_TYPE):
        return {"anyOf": [type_schema(arg, where) for arg in args]}
    if origin in (list, List, Sequence) or hint in (list, List):
        items = type_schema(args[0], where) if args else {}
        return {"type": "array", "items": items}
    if origin in (dict, Dict) or hint in (dict, Dict):
        return {"type": "object"}
    annotated = getattr(typing, "Annotated", None)
    if annotated is not None and origin is annotated:
        schema = type_schema(args[0], where)
        notes = [a for a in getattr(hint, "__metadata__", ()) if isinstance(a, str)]
        if notes:
            schema["description"] = notes[0]
        return schema
    if origin is getattr(typing, "Literal", None):
        return {"enum": list(args)}
    supported = "str, int, float, bool, list, dict, Optional, Literal"
    raise AuthoringError("%s: unsupported type hint %r (use %s)" % (where, hint, supported))


def derive_input_schema(fn: Callable[..., Any], tool_name: str) -> Optional[JSONObject]:
    """The input JSON Schema of a tool method, from its parameters' type hints."""
    info = tool_info(fn)
    if info is not None and info.input_schema is not None:
        if not isinstance(info.input_schema, dict) or info.input_schema.get("type") != "object":
            raise AuthoringError("tool %r: input_schema must be a JSON Schema object with type 'object'" % tool_name)
        return info.input_schema
    params = _tool_params(fn)
    try:
        hints = _type_hints(fn)
    except Exception as exc:
        raise AuthoringError("tool %r: cannot resolve type hints: %s" % (tool_name, exc)) from None
    model = input_model(fn)
    if model is not None:
        return dict(model.model_json_schema())
    properties: JSONObject = {}
    required: List[str] = []
    for param in params:
        where = "tool %r, parameter %r" % (tool_name, param.name)
        if param.name not in hints:
            raise AuthoringError("%s has no type hint: annotate it (e.g. `%s: str`)" % (where, param.name))
        prop = type_schema(hints[param.name], where)
        prop["title"] = _title(param.name)
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        else:
            prop["default"] = param.default
        properties[param.name] = prop
    schema: JSONObject = {"additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    schema.update({"title": _model_title(tool_name), "type": "object"})
    return schema


def _type_hints(fn: Callable[..., Any]) -> Dict[str, Any]:
    """`fn`'s resolved type hints, `Annotated` kept where Python has it (3.9+)."""
    if sys.version_info >= (3, 9):
        return typing.get_type_hints(fn, include_extras=True)
    return typing.get_type_hints(fn)


def input_model(fn: Callable[..., Any]) -> Any:
    """The pydantic model of a tool written the openreward way (`def tool(self, params: Model)`), else None.

    Duck-typed, so the agent needs no pydantic; the image's own pydantic validates.
    """
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    if len(params) != 1:
        return None
    try:
        hint = typing.get_type_hints(fn).get(params[0].name)
    except Exception:
        return None
    is_model = isinstance(hint, type) and hasattr(hint, "model_json_schema") and hasattr(hint, "model_validate")
    return hint if is_model else None


def _tool_params(fn: Callable[..., Any]) -> List[inspect.Parameter]:
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise AuthoringError("tool %r: parameter %r must be an ordinary named parameter" % (fn.__name__, p.name))
    return params


# ---------------------------------------------------------------- input validation


_JSON_TYPES: Dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _schema_errors(value: Any, schema: JSONObject, loc: str) -> List[str]:
    if "anyOf" in schema:
        results = [_schema_errors(value, option, loc) for option in schema["anyOf"]]
        if any(not errors for errors in results):
            return []
        for option, option_errors in zip(schema["anyOf"], results):  # noqa: B905 - no strict= on 3.8
            if option.get("type") == _json_type(value):  # right kind, wrong content: say what is wrong inside
                return option_errors
        kinds = " or ".join(option.get("type", "value") for option in schema["anyOf"])
        return ["%s: expected %s, got %s" % (loc, kinds, _json_type(value))]
    if "enum" in schema and value not in schema["enum"]:
        return ["%s: expected one of %s, got %r" % (loc, schema["enum"], value)]
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _JSON_TYPES and not _JSON_TYPES[kind](value):
        return ["%s: expected %s, got %s" % (loc, kind, _json_type(value))]
    if kind == "array" and isinstance(schema.get("items"), dict):
        errors: List[str] = []
        for i, item in enumerate(value):
            errors += _schema_errors(item, schema["items"], "%s[%d]" % (loc, i))
        return errors
    if kind == "object" and "properties" in schema:
        return _object_errors(value, schema, loc)
    return []


def _object_errors(value: JSONObject, schema: JSONObject, loc: str) -> List[str]:
    props = schema.get("properties", {})
    errors = ["%s: field required" % _join(loc, name) for name in schema.get("required", []) if name not in value]
    if schema.get("additionalProperties") is False:
        errors += ["%s: extra field not permitted" % _join(loc, name) for name in value if name not in props]
    for name, item in value.items():
        if name in props:
            errors += _schema_errors(item, props[name], _join(loc, name))
    return errors


def _join(loc: str, name: str) -> str:
    return "%s.%s" % (loc, name) if loc else name


def _json_type(value: Any) -> str:
    for name, check in _JSON_TYPES.items():
        if name != "number" and check(value):
            return name
    return "number" if _JSON_TYPES["number"](value) else type(value).__name__


def validate_input(value: Any, schema: Optional[JSONObject]) -> List[str]:
    """Errors of a tool input against its schema; empty when it is valid."""
    if not isinstance(value, dict):
        return ["input: expected object, got %s" % _json_type(value)]
    if schema is None:
        return ["%s: extra field not permitted" % name for name in value]
    return _schema_errors(value, schema, "")

