"""The environment authoring API: `Environment`, and `TaskTable` for tasks kept in the code.

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
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Union

from ..layout import WORKSPACE
from ..runtime.processes import RUNNER, CommandResult
from .blocks import Block, JSONObject, Split, ToolOutput
from .tools import ToolInfo, derive_input_schema, input_model, tool_info, validate_input

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
    workspace = WORKSPACE

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

    @property
    def finished(self) -> bool:
        """Whether a tool call ended the episode."""
        return self._finished

    #: True for an environment whose whole state is in its files (and its task): `/fork` copies it without
    #: hooks. Others implement `fork_state()` and `restore_state()`, or cannot be forked.
    forkable: ClassVar[bool] = False

    def fork_state(self) -> Any:
        """What a copy made by `/fork` needs besides the session's files and task (JSON; sync or async):
        answers or generators kept in memory. The default refuses unless the class sets `forkable`."""
        if not self.forkable:
            raise NotImplementedError(
                "%s cannot be forked: it does not implement fork_state() and restore_state() (or set "
                "forkable = True if its whole state is in its files)" % type(self).__name__)
        return {}

    def restore_state(self, state: Any) -> Any:
        """A copy's stand-in for `setup()`: its files are the source's already; `state` is `fork_state()`'s."""

    def teardown(self) -> Any:
        """Release what setup acquired (runs on delete)."""

    def get_prompt(self) -> Union[Sequence[Block], Awaitable[Sequence[Block]]]:
        raise NotImplementedError("%s must implement get_prompt()" % type(self).__name__)

    def list_task_tools(self) -> Union[Sequence[ToolSpec], Awaitable[Sequence[ToolSpec]]]:
        """Task-specific tools (methods marked `@tool(shared=False)`)."""
        return [spec for spec in self.tool_specs(shared=None) if not spec.info.shared]

    # -- helpers for authors -------------------------------------------------

    async def run(self, command: str, *, timeout: Optional[float] = None, cwd: Optional[str] = None) -> CommandResult:
        """Run `command` with bash as the unprivileged user, bounded in time and output."""
        return await RUNNER.run_command(command, timeout=timeout, cwd=cwd or self.workspace)

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


class TaskTable(Environment):
    """An environment whose tasks are a table in its code: `list_splits`, `list_tasks` and the id check, done.

        class Quiz(TaskTable):
            task_table = {"train": [{"id": "add", "question": "2 + 2?"}], "test": [{"id": "mul", ...}]}

    The splits are the table's keys, in order; every task has an `id`, unique in the table.
    A session whose task's id is not in the table fails to start ("unknown task id ...").
    """

    #: {split: [task, ...]}
    task_table: ClassVar[Mapping[str, Sequence[JSONObject]]] = {}

    def __init__(self, task: JSONObject, secrets: Optional[Dict[str, str]] = None) -> None:
        super().__init__(task, secrets)
        ids = [listed["id"] for tasks in self.task_table.values() for listed in tasks]
        if task.get("id") not in ids:
            raise ValueError("unknown task id %r; expected one of %s" % (task.get("id"), sorted(ids)))

    @classmethod
    def list_splits(cls) -> List[str]:
        return list(cls.task_table)

    @classmethod
    def list_tasks(cls, split: str) -> List[JSONObject]:
        return list(cls.task_table[split])


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
