"""The environment authoring API: `Environment`, `@tool`, blocks and `ToolOutput`.

Runs inside environment images: stdlib only, Python 3.8+. It mirrors the
`openreward` authoring API (`list_splits`, `list_tasks`, `setup`, `get_prompt`,
`@tool`, `ToolOutput`), except that a tool's input schema is derived from its
parameters' type hints instead of a pydantic model:

    class Echo(Environment):
        @classmethod
        def list_splits(cls): return ["train"]
        @classmethod
        def list_tasks(cls, split): return [{"id": "t0", "word": "hi"}]
        def get_prompt(self): return [TextBlock("Say " + self.task["word"])]

        @tool
        async def say(self, word: str) -> ToolOutput:
            '''Say a word.'''
            ok = word == self.task["word"]
            return ToolOutput([TextBlock(word)], reward=float(ok), finished=True)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Union

from .commands import CommandResult, run_command

JSON = Any
JSONObject = Dict[str, Any]

SPLIT_TYPES = ("train", "validation", "test")


# ---------------------------------------------------------------- blocks and results


@dataclass
class TextBlock:
    text: str
    detail: Optional[JSONObject] = None

    def to_json(self) -> JSONObject:
        return {"text": self.text, "detail": self.detail, "type": "text"}


@dataclass
class ImageBlock:
    data: str  # base64
    mimeType: str  # noqa: N815 - the ORS field name
    detail: Optional[JSONObject] = None

    def to_json(self) -> JSONObject:
        return {"data": self.data, "mimeType": self.mimeType, "detail": self.detail, "type": "image"}


Block = Union[TextBlock, ImageBlock]


@dataclass
class ToolOutput:
    """What a tool returns: blocks for the model, and the RL signal."""

    blocks: Sequence[Block]
    metadata: Optional[JSONObject] = None
    reward: Optional[float] = None
    finished: bool = False

    def to_json(self) -> JSONObject:
        return {
            "blocks": blocks_to_json(self.blocks),
            "metadata": self.metadata,
            "reward": None if self.reward is None else float(self.reward),
            "finished": bool(self.finished),
        }


@dataclass
class Split:
    name: str
    type: str = "validation"

    def to_json(self) -> JSONObject:
        return {"name": self.name, "type": self.type}


def blocks_to_json(blocks: Sequence[Any]) -> List[JSONObject]:
    out = []
    for block in blocks:
        if not isinstance(block, (TextBlock, ImageBlock)):
            raise TypeError("expected TextBlock or ImageBlock, got %s" % type(block).__name__)
        out.append(block.to_json())
    return out


def split_to_json(split: Union[Split, str]) -> JSONObject:
    """A split as ORS lists it; a bare name gets its own name as type if it is one."""
    if isinstance(split, Split):
        return split.to_json()
    return {"name": split, "type": split if split in SPLIT_TYPES else "validation"}


# ---------------------------------------------------------------- @tool


@dataclass
class ToolInfo:
    """What `@tool` records on a method."""

    shared: bool = True
    concurrent: bool = False
    exclusive: bool = False
    input_schema: Optional[JSONObject] = None  # explicit schema; None = derive from type hints


_TOOL_ATTR = "_orsbox_tool"


def tool(
    fn: Optional[Callable[..., Any]] = None,
    *,
    shared: bool = True,
    concurrent: bool = False,
    exclusive: bool = False,
    input_schema: Optional[JSONObject] = None,
) -> Any:
    """Declare a method as a tool.

    Calls to one tool run one at a time per session; `concurrent=True` lets
    calls overlap (for tools that never grant reward); `exclusive=True` waits
    for every in-flight call and holds new ones until it returns (for `submit`).
    `shared=False` makes it a task tool, listed only inside a session.
    """

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
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
        hints = typing.get_type_hints(fn, include_extras=True) if _HAS_EXTRAS else typing.get_type_hints(fn)
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


_HAS_EXTRAS = "include_extras" in inspect.signature(typing.get_type_hints).parameters


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


# ---------------------------------------------------------------- concurrency gate


class ExclusiveGate:
    """Per-session readers-writer gate: tool calls share it, exclusive tools own it.

    Writer-preferring, so a queued exclusive call (`submit`) is not starved.
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._active = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._active += 1
        try:
            yield
        finally:
            async with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._writers_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._writing and self._active == 0)
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            async with self._cond:
                self._writing = False
                self._cond.notify_all()


# ---------------------------------------------------------------- Environment


@dataclass
class ToolSpec:
    name: str
    description: str
    input_schema: Optional[JSONObject]
    info: ToolInfo = field(repr=False, default_factory=ToolInfo)

    def to_json(self) -> JSONObject:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


class Environment:
    """Base class of an environment; one instance per session, inside its container.

    Class level (discovery, no session): `list_splits()`, `list_tasks(split)`.
    Instance level: `__init__(task, secrets)`, `setup()`, `get_prompt()`, tools,
    `teardown()`. Any of these may be `async`. `self.run(command)` runs a shell
    command as the unprivileged user with the session's time and output limits.
    """

    #: Where commands run by default; a size-capped tmpfs owned by the command user.
    workspace = "/workspace"

    def __init__(self, task: JSONObject, secrets: Optional[Dict[str, str]] = None) -> None:
        self.task = task
        self.task_spec = task  # the openreward name
        self.secrets = dict(secrets or {})
        self._finished = False
        self._gate = ExclusiveGate()
        self._tool_locks: Dict[str, asyncio.Lock] = {}

    # -- to override ---------------------------------------------------------

    @classmethod
    def list_splits(cls) -> Sequence[Union[Split, str]]:
        raise NotImplementedError("%s must implement list_splits()" % cls.__name__)

    @classmethod
    def list_tasks(cls, split: str) -> Sequence[JSONObject]:
        """Every task of `split`. A large task set may implement num_tasks and get_task instead."""
        raise NotImplementedError("%s must implement list_tasks(split), or num_tasks and get_task" % cls.__name__)

    @classmethod
    def num_tasks(cls, split: str) -> int:
        return len(cls.list_tasks(split))

    @classmethod
    def get_task(cls, split: str, index: int) -> JSONObject:
        return cls.list_tasks(split)[index]

    def setup(self) -> Any:
        """Prepare the sandbox for the task (runs once, before the first call)."""

    def teardown(self) -> Any:
        """Release what setup acquired (runs on delete)."""

    def get_prompt(self) -> Sequence[Block]:
        raise NotImplementedError("%s must implement get_prompt()" % type(self).__name__)

    def list_task_tools(self) -> Sequence[ToolSpec]:
        """Task-specific tools (methods marked `@tool(shared=False)`)."""
        return [spec for spec in self.tool_specs(shared=None) if not spec.info.shared]

    # -- helpers for authors -------------------------------------------------

    async def run(self, command: str, *, timeout: Optional[float] = None, cwd: Optional[str] = None) -> CommandResult:
        """Run `command` with bash as the unprivileged user, bounded in time and output."""
        return await run_command(command, timeout=timeout, cwd=cwd or self.workspace)

    # -- used by the agent ---------------------------------------------------

    @classmethod
    def tool_specs(cls, shared: Optional[bool] = True) -> List[ToolSpec]:
        """The class's tools, sorted by name; `shared=None` lists task tools too."""
        specs = []
        for name in sorted(dir(cls)):
            fn = getattr(cls, name, None)
            info = tool_info(fn)
            if fn is None or info is None or (shared is not None and info.shared != shared):
                continue
            description = inspect.cleandoc(fn.__doc__ or "")
            specs.append(ToolSpec(name, description, derive_input_schema(fn, name), info))
        return specs

    async def call_tool(self, name: str, tool_input: Any) -> JSONObject:
        """Run a tool by name; in-band errors (unknown tool, bad input, finished) as ORS has them."""
        spec = self._find_tool(name)
        if spec is None:
            return {"ok": False, "error": "%r is not a valid tool" % name, "reason": "not_found"}
        arguments = self._arguments(spec, tool_input)
        if isinstance(arguments, str):
            return {"ok": False, "error": arguments, "reason": "input_validation"}
        if spec.info.exclusive:
            async with self._gate.exclusive():
                return await self._run_tool(name, arguments)
        if spec.info.concurrent:
            async with self._gate.shared():
                return await self._run_tool(name, arguments)
        async with self._tool_locks.setdefault(name, asyncio.Lock()), self._gate.shared():
            return await self._run_tool(name, arguments)

    def _arguments(self, spec: ToolSpec, tool_input: Any) -> Any:
        """(args, kwargs) for the tool, or the validation error message."""
        model = input_model(getattr(type(self), spec.name))
        if model is not None:
            try:
                return (model.model_validate(tool_input),), {}
            except Exception as exc:
                if type(exc).__name__ != "ValidationError":
                    raise
                return "Tool input validation error: %s" % (exc.errors(),)  # type: ignore[attr-defined]
        errors = validate_input(tool_input, spec.input_schema)
        if errors:
            return "Tool input validation error: %d validation error%s for %s\n%s" % (
                len(errors), "" if len(errors) == 1 else "s", spec.name, "\n".join(errors))
        return (), dict(tool_input)

    def _find_tool(self, name: str) -> Optional[ToolSpec]:
        for spec in self.tool_specs(shared=None):
            if spec.name == name:
                return spec
        return None

    async def _run_tool(self, name: str, arguments: Any) -> JSONObject:
        if self._finished:
            return _finished_error(name)
        args, kwargs = arguments
        result = await call_maybe_async(getattr(self, name), *args, **kwargs)
        if not isinstance(result, ToolOutput):
            raise TypeError("%r returned %s; expected ToolOutput" % (name, type(result).__name__))
        if self._finished:  # a concurrent call ended the episode first
            return _finished_error(name)
        self._finished = bool(result.finished)
        return {"ok": True, "output": result.to_json()}


def _finished_error(name: str) -> JSONObject:
    return {
        "ok": False,
        "error": "%r was not run: the episode has finished (a tool returned finished=True), "
        "so no further tool calls are accepted." % name,
        "reason": "episode_finished",
    }


async def call_maybe_async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a sync or async author function; sync ones run in a thread, off the agent's loop."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))
    if inspect.isawaitable(result):
        result = await result
    return result
