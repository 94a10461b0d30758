"""Serving an unmodified `openreward` Environment through the orsbox agent.

`adapt(cls)` returns an orsbox `Environment` subclass that delegates to `cls` when `cls` is an
`openreward.environments.Environment` subclass, else None. The image installs openreward
(a `requirements.txt` that `orsbox build` vendors). This module is stdlib only: it never imports
openreward itself, it only recognises the class an environment module already imported it for,
and handles openreward's pydantic objects by their `model_dump`.

How each piece maps (left: what the agent calls; right: what openreward's own Server calls):

    list_splits()            cls.list_splits()      Split models or names -> orsbox splits
    list_tasks(split)        cls.list_tasks(split)  NotImplementedError kept: index-only task sets
    num_tasks / get_task     cls.num_tasks / cls.get_task (async in openreward: run to completion)
    tool_specs()             cls.list_tools().tools (name, description, input_schema as openreward made them)
    __init__ + setup()       cls(task_spec=..., secrets=...) in a thread, then its setup() (sync or async)
    get_prompt()             its get_prompt() (or the flattened get_messages()), pydantic blocks -> blocks
    list_task_tools()        its list_task_tools().tools, without the @terminal tool (as openreward hides it)
    call_tool(name, input)   its _call_tool(name, input) -> RunToolOutput.model_dump(mode="json")
    teardown()               its teardown() (sync or async)

So input validation, per-tool locks, the exclusive gate, the finished latch and the in-band errors
(`not_found`, `input_validation`, `episode_finished`) are openreward's own; a tool that raises
propagates, and the agent reports it as `tool_failed` as for native environments.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Type, Union

from .blocks import Block, ImageBlock, JSONObject, Split, TextBlock
from .environment import Environment, ToolSpec, call_maybe_async
from .tools import AuthoringError

OPENREWARD_MODULE = "openreward.environments"


def adapt(cls: Any) -> Optional[Type[Environment]]:
    """An orsbox Environment serving openreward Environment subclass `cls`, or None if it is not one."""
    base = _openreward_base()
    if base is None or not isinstance(cls, type) or not issubclass(cls, base) or cls is base:
        return None
    check_servable(cls, base)
    namespace = {"wrapped": cls, "__module__": cls.__module__, "__doc__": cls.__doc__}
    return type(cls.__name__, (OpenRewardEnvironment,), namespace)


def _openreward_base() -> Optional[type]:
    """openreward's Environment class, if something in this process imported it.

    A subclass of it can only exist once its module has been imported, so a class
    from a module that never imported openreward is not one: nothing is imported here.
    """
    module = sys.modules.get(OPENREWARD_MODULE)
    base = getattr(module, "Environment", None)
    return base if isinstance(base, type) else None


def check_servable(cls: Any, base: type) -> None:
    """What openreward's Server checks when it starts, with its words: tools, splits, a prompt."""
    name = cls.name().lower()
    listed = cls.list_tools()
    if not listed.tools and listed.terminal_tool is None:
        raise AuthoringError("Environment '%s' has no tools defined. Add at least one @tool method." % name)
    if not cls.list_splits():
        raise AuthoringError(
            "Environment '%s' has no splits defined. Implement list_splits() to return at least one split." % name)
    if cls.get_prompt is base.get_prompt and cls.get_messages is base.get_messages:  # type: ignore[attr-defined]
        raise AuthoringError(
            "Environment '%s' implements neither get_prompt() nor get_messages(). Implement get_prompt() "
            "(or get_messages() for a conversation-shaped environment)." % name)


class OpenRewardEnvironment(Environment):
    """Delegates every agent-facing method to an instance of the openreward class `wrapped`.

    The openreward instance is made in `setup` (off the event loop, as openreward's Server makes it
    off its loop), so a slow constructor does not hold up the agent's socket.
    """

    wrapped: ClassVar[Any] = None

    def __init__(self, task: JSONObject, secrets: Optional[Dict[str, str]] = None) -> None:
        super().__init__(task, secrets)
        self.inner: Any = None

    # -- discovery (class level) ---------------------------------------------------

    @classmethod
    def list_splits(cls) -> Sequence[Union[Split, str]]:
        return [_split(split) for split in cls.wrapped.list_splits()]

    @classmethod
    def list_tasks(cls, split: str) -> Sequence[JSONObject]:
        return [_plain(task) for task in run_to_completion(cls.wrapped.list_tasks, split)]

    @classmethod
    def num_tasks(cls, split: str) -> int:
        return int(run_to_completion(cls.wrapped.num_tasks, split))

    @classmethod
    def get_task(cls, split: str, index: int) -> JSONObject:
        task: JSONObject = _plain(run_to_completion(cls.wrapped.get_task, split, index))
        return task

    @classmethod
    def tool_specs(cls, shared: Optional[bool] = True) -> List[ToolSpec]:
        """The shared tools openreward lists; task tools come from `list_task_tools` of a session."""
        if shared is False:
            return []
        return [_tool_spec(spec) for spec in cls.wrapped.list_tools().tools]

    # -- a session -----------------------------------------------------------------

    async def setup(self) -> None:
        wrapped, task, secrets = self.wrapped, self.task, self.secrets
        self.inner = await call_maybe_async(lambda: wrapped(task_spec=task, secrets=secrets))
        await call_maybe_async(self.inner.setup)

    async def teardown(self) -> None:
        if self.inner is not None:
            await call_maybe_async(self.inner.teardown)

    async def get_prompt(self) -> List[Block]:
        return [_block(block) for block in await call_maybe_async(self._session().get_prompt)]

    async def list_task_tools(self) -> List[ToolSpec]:
        listed = await call_maybe_async(self._session().list_task_tools)
        terminal = self.wrapped.list_tools().terminal_tool
        hidden = terminal.name if terminal is not None else None
        return [_tool_spec(spec) for spec in listed.tools if spec.name != hidden]

    async def call_tool(self, name: str, tool_input: Any) -> JSONObject:
        result = await self._session()._call_tool(name, tool_input)
        return dict(result.model_dump(mode="json"))

    def _session(self) -> Any:
        if self.inner is None:
            raise RuntimeError("the openreward environment is not set up")
        return self.inner


# ---------------------------------------------------------------- conversions


def _plain(value: Any) -> Any:
    """A pydantic model as JSON-ready data (as openreward serialises it); anything else unchanged."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return dict(value) if isinstance(value, dict) else value


def _split(split: Any) -> Union[Split, str]:
    if isinstance(split, str):
        return split
    data = _plain(split)
    return Split(str(data["name"]), str(data["type"]))


def _tool_spec(spec: Any) -> ToolSpec:
    data = _plain(spec)
    return ToolSpec(str(data["name"]), str(data["description"]), data.get("input_schema"))


def _block(block: Any) -> Block:
    data = _plain(block)
    if data.get("type") == "image":
        return ImageBlock(data["data"], data["mimeType"], data.get("detail"))
    if data.get("type", "text") == "text":
        return TextBlock(data["text"], data.get("detail"))
    raise TypeError("a prompt block must be text or image, got %r" % data.get("type"))


def run_to_completion(fn: Callable[..., Any], *args: Any) -> Any:
    """Call `fn`; if it is async (openreward's num_tasks and get_task are), run it to its result.

    Discovery runs without an event loop; inside one (never in the agent's own paths) the
    coroutine runs on a loop of its own in a helper thread rather than blocking the caller's.
    """
    result = fn(*args)
    if not inspect.isawaitable(result):
        return result
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(result))
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = asyncio.run(_awaited(result))
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="openreward-discovery")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
