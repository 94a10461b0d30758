"""The agent's methods, and its end of the channel: it dials in to the server.

One agent per container, one environment instance per agent. The server listens
on `/run/orsbox/agent.sock` (a read-only mount: the agent cannot write there, and
needs not) and sends wire frames (see `wire`). The agent connects, serves that one
connection, and whenever it has none (before the server listens, after a server
restart) dials again every `DIAL_INTERVAL` s: a new server adopts it that way.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
import traceback
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Type

from .. import wire
from ..authoring import openreward_adapter
from ..authoring.blocks import blocks_to_json, split_to_json
from ..authoring.environment import Environment, call_maybe_async
from ..authoring.toolsets import ShellTools
from ..wire import ErrorType, Method, WireError
from .forking import Forks
from .forwarder import Forwarder
from .processes import RUNNER
from .procfs import kill_processes
from .sandbox import Sandbox
from .transfer import Transfers


def load_environment_class(entrypoint: str) -> Type[Environment]:
    """Import `module:Class` and check that it is an Environment."""
    module_name, _, class_name = entrypoint.partition(":")
    if not module_name or not class_name:
        raise ValueError("entrypoint %r is not of the form module:Class" % entrypoint)
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if isinstance(cls, type) and issubclass(cls, Environment):
        return cls
    adapted = openreward_adapter.adapt(cls)  # an unmodified `openreward` Environment, where openreward is installed
    if adapted is not None:
        return adapted
    raise TypeError("%s is neither an orsbox.agent.Environment nor an openreward Environment" % entrypoint)


MAX_DESCRIBED_TASKS = 100000  # tasks per split read through get_task when an environment cannot list them


def describe(cls: Type[Environment]) -> Dict[str, Any]:
    """Everything discovery needs, read once per image: splits, shared tools, tasks.

    `listable` says per split whether the environment lists its tasks (else /tasks refuses, as the
    reference does, and the tasks come from num_tasks + get_task).
    """
    splits = [split_to_json(s) for s in cls.list_splits()]
    tasks, listable = {}, {}
    for split in (s["name"] for s in splits):
        try:
            tasks[split], listable[split] = [dict(t) for t in cls.list_tasks(split)], True
        except NotImplementedError:
            tasks[split], listable[split] = _tasks_by_index(cls, split), False
    return {
        "protocol": wire.PROTOCOL_VERSION,
        "splits": splits,
        "tools": [spec.to_json() for spec in cls.tool_specs(shared=True)],
        "tasks": tasks,
        "listable": listable,
    }


def _tasks_by_index(cls: Type[Environment], split: str) -> List[Dict[str, Any]]:
    count = cls.num_tasks(split)
    if count > MAX_DESCRIBED_TASKS:
        raise ValueError("split %r has %d tasks; orsbox serves at most %d" % (split, count, MAX_DESCRIBED_TASKS))
    return [dict(cls.get_task(split, index)) for index in range(count)]


Handler = Callable[[Dict[str, Any]], Awaitable[Any]]

DIAL_INTERVAL = 0.1  # s between dials while no server listens (a failed connect() is cheap)


async def serve(agent: Agent, path: str) -> None:
    """Serve `agent` to the server listening on the Unix socket `path`, dialing in whenever there is no
    connection, until SIGTERM or SIGINT; then tear down."""
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, request_stop)
    log("dialing", socket=path, pid=os.getpid())
    dialing = asyncio.ensure_future(dial_in(agent, path))
    await stop
    dialing.cancel()
    try:
        await dialing
    except asyncio.CancelledError:
        pass
    await agent.teardown({})


async def dial_in(agent: Agent, path: str) -> None:
    """Connect to the server at `path` and serve that connection; again, forever (one at a time)."""
    while True:
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=wire.MAX_REQUEST_BYTES)
        except OSError:  # no server listens yet (no socket, or a stale one): try again soon
            await asyncio.sleep(DIAL_INTERVAL)
            continue
        log("connected", socket=path)
        await agent.serve_connection(reader, writer)
        log("disconnected", socket=path)
        await asyncio.sleep(DIAL_INTERVAL)  # a server that drops every connection gets no busy loop


class Agent:
    """Serves one session's environment over the wire methods."""

    def __init__(self, entrypoint: str) -> None:
        self.entrypoint = entrypoint
        self.env: Optional[Environment] = None
        self.state = "new"  # new -> ready | failed -> torn_down
        self.setup_error: Optional[str] = None
        # A pool container's session, given with setup and signed by the server: reported in hello, for adoption.
        self.binding: Optional[Dict[str, Any]] = None
        self._environment_class: Optional[Type[Environment]] = None
        self.forks = Forks()
        self._setup_lock = asyncio.Lock()
        # `--entrypoint sandbox`: no Environment, the sandbox methods (runtime/sandbox.py)
        self.sandbox = Sandbox(RUNNER, enabled=entrypoint == wire.SANDBOX_ENTRYPOINT)
        self.forwarder = Forwarder()  # the sandbox API on a loopback port, when setup gives one
        self.transfers = Transfers(RUNNER)  # /workspace in and out, in both modes
        self.handlers: Dict[str, Handler] = {
            Method.HELLO: self.hello,
            Method.SETUP: self.setup,
            Method.PROMPT: self.prompt,
            Method.TASK_TOOLS: self.task_tools,
            Method.CALL_TOOL: self.call_tool,
            Method.TEARDOWN: self.teardown,
            Method.FORK_EXPORT: self.fork_export,
            Method.FORK_READ: lambda params: self._answer(self.forks.read(params.get("offset"))),
            Method.FORK_DONE: lambda params: self._answer(self.forks.done()),
            Method.FORK_GATHER: self.fork_gather,
            **self.sandbox.handlers(),
            **self.transfers.handlers(),
        }

    def preload(self) -> None:
        """Import the environment's code now, before any session (a pool container's setup then only runs
        it), and start its first shell if it has a shell tool; an import that fails is reported by setup."""
        if self.sandbox.enabled:
            return
        try:
            self._environment_class = cls = load_environment_class(self.entrypoint)
        except Exception as exc:
            log("preload_failed", error="%s: %s" % (type(exc).__name__, exc))
            return
        if issubclass(cls, ShellTools):  # its first bash call need not wait for bash to start
            RUNNER.prestart_shell(cls.workspace)

    async def dispatch(self, frame: Dict[str, Any]) -> Any:
        handler = self.handlers.get(frame.get("method"))  # type: ignore[arg-type]
        if handler is None:
            raise WireError(ErrorType.UNKNOWN_METHOD, "unknown method %r" % frame.get("method"))
        params = frame.get("params") or {}
        if not isinstance(params, dict):
            raise WireError(ErrorType.BAD_REQUEST, "params must be an object")
        return await handler(params)

    async def hello(self, params: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "protocol": wire.PROTOCOL_VERSION,
            "python": sys.version.split()[0],
            "pid": os.getpid(),
            "environment": self.entrypoint,
            "state": self.state,
            **({"binding": self.binding} if self.binding is not None else {}),
            **self.sandbox.hello(),
        }

    async def setup(self, params: Dict[str, Any]) -> Dict[str, Any]:
        async with self._setup_lock:
            if self.state == "ready":
                return {}
            if self.state != "new":
                raise WireError(ErrorType.SETUP_FAILED, self.setup_error or "setup already ran")
            binding = params.get("binding")
            if isinstance(binding, dict):
                self.binding = binding
            try:
                if self.sandbox.enabled:
                    self.sandbox.configure(params.get("sandbox"))
                    self.state = "ready"
                    return {}
                secrets = dict(params.get("secrets") or {})
                await self._session_api(params.get(wire.SESSION_API), secrets)
                cls = self._environment_class or load_environment_class(self.entrypoint)
                env = cls(params.get("task") or {}, secrets)
                fork = params.get("fork")
                if isinstance(fork, dict):  # a copy of another session: its files, then its state
                    await self.forks.unpack(fork.get("sha256"))
                    await call_maybe_async(env.restore_state, fork.get("state") or {})
                else:
                    await call_maybe_async(env.setup)
            except Exception as exc:
                self.state = "failed"
                self.setup_error = "%s: %s" % (type(exc).__name__, exc)
                log("setup_failed", error=self.setup_error, traceback=traceback.format_exc(limit=5))
                raise WireError(ErrorType.SETUP_FAILED, self.setup_error) from None
            self.env, self.state = env, "ready"
            return {}

    async def _session_api(self, given: Any, secrets: Dict[str, Any]) -> None:
        """Give the environment openreward's sandbox API (loopback, its own key), if the server offers it:
        in OPENREWARD_SESSION_URL and OPENREWARD_API_KEY, and as the `api_key` secret unless one was sent."""
        if given is None:
            return
        token = given.get("token") if isinstance(given, dict) else None
        if not isinstance(token, str) or not token:
            raise ValueError("session_api needs a token")
        await self.forwarder.start(token)
        for name in ("api_key", "OPENREWARD_API_KEY"):
            secrets.setdefault(name, token)

    async def fork_export(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """The environment's state (its `fork_state()`), its task, and its files packed for copies."""
        env = self._ready_env()
        if env.finished:
            raise WireError(ErrorType.BAD_REQUEST, "the episode has finished: there is nothing left to fork")
        try:
            state = await call_maybe_async(env.fork_state)
            json.dumps(state)
        except NotImplementedError as exc:
            raise WireError(ErrorType.BAD_REQUEST, str(exc) or "this environment cannot be forked") from None
        except Exception as exc:
            raise WireError(ErrorType.ENVIRONMENT_ERROR, "fork_state: %s: %s" % (type(exc).__name__, exc)) from None
        max_bytes = params.get("max_bytes")
        if type(max_bytes) is not int or max_bytes <= 0:
            raise WireError(ErrorType.BAD_REQUEST, "max_bytes must be a positive integer")
        files = await self.forks.export(max_bytes)
        return {"state": state, "task": env.task, **files}

    async def fork_gather(self, params: Dict[str, Any]) -> Dict[str, Any]:
        if self.state != "new":
            raise WireError(ErrorType.BAD_REQUEST, "files of a fork are taken before setup only")
        max_bytes = params.get("max_bytes")
        if type(max_bytes) is not int or max_bytes <= 0:
            raise WireError(ErrorType.BAD_REQUEST, "max_bytes must be a positive integer")
        return self.forks.gather(params.get("data"), max_bytes)

    @staticmethod
    async def _answer(result: Dict[str, Any]) -> Dict[str, Any]:
        return result

    def _ready_env(self) -> Environment:
        if self.env is None or self.state != "ready":
            message = self.setup_error if self.state == "failed" else "the environment is not set up"
            raise WireError(ErrorType.NOT_SET_UP, message or "the environment is not set up")
        return self.env

    async def prompt(self, params: Dict[str, Any]) -> Any:
        env = self._ready_env()
        try:
            return blocks_to_json(await call_maybe_async(env.get_prompt))
        except Exception as exc:
            raise WireError(ErrorType.ENVIRONMENT_ERROR, "%s: %s" % (type(exc).__name__, exc)) from None

    async def task_tools(self, params: Dict[str, Any]) -> Any:
        env = self._ready_env()
        try:
            specs = env.tool_specs(shared=True) + list(await call_maybe_async(env.list_task_tools))
        except Exception as exc:
            raise WireError(ErrorType.ENVIRONMENT_ERROR, "%s: %s" % (type(exc).__name__, exc)) from None
        return {"tools": [spec.to_json() for spec in specs]}

    async def call_tool(self, params: Dict[str, Any]) -> Any:
        env = self._ready_env()
        name = params.get("name")
        if not isinstance(name, str):
            raise WireError(ErrorType.BAD_REQUEST, "call_tool needs a string 'name'")
        try:
            if params.get("delivered") is not None:  # files the server sends only with this call (Harbor tests)
                env.deliver(name, params["delivered"])
            return await env.call_tool(name, params.get("input"))
        except Exception as exc:
            log("tool_failed", tool=name, error=repr(exc), traceback=traceback.format_exc(limit=5))
            raise WireError(ErrorType.TOOL_FAILED, str(exc) or type(exc).__name__) from None

    async def teardown(self, params: Dict[str, Any]) -> Dict[str, Any]:
        env, self.env, self.state = self.env, None, "torn_down"
        try:
            if env is not None:
                await call_maybe_async(env.teardown)
        except Exception as exc:
            raise WireError(ErrorType.ENVIRONMENT_ERROR, "%s: %s" % (type(exc).__name__, exc)) from None
        finally:
            self.sandbox.close()
            self.forwarder.close()
            self.transfers.close()
            kill_processes(RUNNER.limits.uid)  # the session's command user: its persistent shells too
        return {}

    # -- the connection --------------------------------------------------------

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        write_lock = asyncio.Lock()
        tasks: Set[asyncio.Task[None]] = set()

        async def send(frame: Dict[str, Any]) -> None:
            async with write_lock:
                writer.write(wire.encode(frame))
                await writer.drain()

        async def answer(frame: Dict[str, Any]) -> None:
            reply: Dict[str, Any] = {"id": frame.get("id")}
            try:
                reply["result"] = await self.dispatch(frame)
            except WireError as exc:
                reply["error"] = exc.to_json()
            except Exception as exc:  # a bug in the agent: report it, keep serving
                log("internal_error", error=repr(exc), traceback=traceback.format_exc(limit=5))
                reply["error"] = WireError(ErrorType.INTERNAL, "%s: %s" % (type(exc).__name__, exc)).to_json()
            data = _encode_reply(reply)
            async with write_lock:
                writer.write(data)
                await writer.drain()

        self.forwarder.attach(send)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    frame = wire.decode(line)
                except WireError as exc:
                    async with write_lock:
                        writer.write(wire.encode({"id": None, "error": exc.to_json()}))
                    continue
                if "tunnel" in frame:  # bytes for a forwarded connection: in order, at once
                    self.forwarder.receive(frame)
                    continue
                task = asyncio.ensure_future(answer(frame))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (ConnectionError, ValueError, asyncio.LimitOverrunError) as exc:
            log("connection_dropped", error=repr(exc))
        finally:
            self.forwarder.detach()
            writer.close()


def _encode_reply(reply: Dict[str, Any]) -> bytes:
    try:
        data = wire.encode(reply)
    except (TypeError, ValueError) as exc:
        error = WireError(ErrorType.TOOL_FAILED, "result is not JSON-serialisable: %s" % exc)
        return wire.encode({"id": reply["id"], "error": error.to_json()})
    limit = wire.frame_limit(RUNNER.limits.output_cap)
    if len(data) > limit:
        message = "result of %d bytes exceeds the %d byte limit" % (len(data), limit)
        error = WireError(ErrorType.TOOL_FAILED, message)
        return wire.encode({"id": reply["id"], "error": error.to_json()})
    return data


def log(event: str, **fields: Any) -> None:
    """One JSON line on stderr (the container's log); never given secrets."""
    sys.stderr.write(json.dumps(dict(event=event, component="agent", **fields), default=str) + "\n")
    sys.stderr.flush()
