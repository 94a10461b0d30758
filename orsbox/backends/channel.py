"""The server's side of the agent channel: newline-delimited JSON over a Unix socket.

`open_channel` connects as soon as the agent listens and checks its `hello`: every
backend hands sessions a channel opened this way. One reader task resolves an
`id -> Future` map. EOF (agent or container dead) fails every pending call with
`AgentGone` and runs the close callbacks. Agent error types become orsbox errors
through a fixed table, never by name lookup. The agent may be hostile: its `hello`
is type-checked field by field.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..agent import wire
from ..agent.wire import ErrorType
from ..errors import AgentGone, EnvironmentFailed, OrsboxError, SandboxError, SetupFailed, ToolFailed

log = structlog.get_logger()

ERROR_TABLE: dict[str, type[OrsboxError]] = {
    ErrorType.SETUP_FAILED: SetupFailed,
    ErrorType.NOT_SET_UP: SetupFailed,
    ErrorType.TOOL_FAILED: ToolFailed,
    ErrorType.ENVIRONMENT_ERROR: EnvironmentFailed,
}

CONNECT_POLL = 0.005  # s between attempts while the agent starts
LIVENESS_POLL = 0.5  # s between "is the container still running?" checks while connecting


@dataclass(frozen=True)
class Hello:
    """The agent's answer to `hello`, checked field by field."""

    protocol: int
    state: str  # "new", "ready", "failed", "torn_down"
    pid: int
    python: str
    environment: str

    @classmethod
    def parse(cls, answer: Any) -> Hello:
        """Raises SetupFailed unless `answer` is a hello of this protocol version."""
        if not isinstance(answer, dict):
            raise SetupFailed("the sandbox's agent answered hello with something that is not an object")
        protocol = answer.get("protocol")
        if type(protocol) is not int or protocol != wire.PROTOCOL_VERSION:
            raise SetupFailed(f"the agent speaks protocol {str(protocol)[:20]}, orsbox {wire.PROTOCOL_VERSION}")
        fields = {"state": str, "pid": int, "python": str, "environment": str}
        for name, kind in fields.items():
            if type(answer.get(name)) is not kind:
                raise SetupFailed(f"the sandbox's agent answered hello without a valid {name!r}")
        return cls(protocol, answer["state"][:32], answer["pid"], answer["python"][:32], answer["environment"][:200])


async def open_channel(
    socket_path: Path, *, timeout: float, is_alive: Callable[[], Awaitable[bool]]
) -> tuple[AgentChannel, Hello]:
    """Connect to the agent at `socket_path` once it listens, and check its hello; within `timeout` s."""
    channel = await AgentChannel.connect(socket_path, timeout=timeout, is_alive=is_alive)
    try:
        hello = Hello.parse(await channel.call(wire.Method.HELLO, timeout=timeout))
    except BaseException:
        await channel.close()
        raise
    return channel, hello


class AgentChannel:
    """A connection to one session's agent; many calls may be in flight."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._on_close: list[Callable[[], None]] = []
        self.closed = False
        self._read_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls, socket_path: Path, *, timeout: float, is_alive: Callable[[], Awaitable[bool]]
    ) -> AgentChannel:
        """Connect as soon as the agent listens; fail fast if its container dies first."""
        deadline = time.monotonic() + timeout
        next_liveness = time.monotonic() + LIVENESS_POLL
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=wire.MAX_FRAME_BYTES)
                return cls(reader, writer)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            now = time.monotonic()
            if now > deadline:
                raise SetupFailed(f"the sandbox's agent did not start listening within {timeout:.0f} s")
            if now > next_liveness:
                next_liveness = now + LIVENESS_POLL
                if not await is_alive():
                    raise SetupFailed("the sandbox's container exited before its agent started")
            await asyncio.sleep(CONNECT_POLL)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run `callback` once when the connection ends (agent exit, container death, close())."""
        self._on_close.append(callback)

    async def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Send one request and wait for its answer."""
        if self.closed:
            raise AgentGone("the sandbox's agent is gone")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(wire.encode({"id": request_id, "method": method, "params": params or {}}))
            await self._writer.drain()
            return await asyncio.wait_for(future, timeout)
        except (ConnectionError, OSError) as exc:
            raise AgentGone(f"the sandbox's agent is gone: {exc}") from exc
        except TimeoutError:
            raise SandboxError(f"the sandbox's agent did not answer {method} within {timeout:.0f} s") from None
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        self._read_task.cancel()
        try:
            await self._read_task
        except asyncio.CancelledError:
            pass

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                self._deliver(wire.decode(line))
        except asyncio.CancelledError:
            pass
        except (ConnectionError, ValueError, wire.WireError) as exc:  # ValueError: a line over the limit
            log.warning("agent_channel_broken", error=str(exc))
        finally:
            self._shut()

    def _deliver(self, frame: dict[str, Any]) -> None:
        future = self._pending.get(frame.get("id"))  # type: ignore[arg-type]
        if future is None or future.done():
            return
        error = frame.get("error")
        if isinstance(error, dict):
            error_class = ERROR_TABLE.get(str(error.get("type")), SandboxError)
            future.set_exception(error_class(str(error.get("message", "agent error"))))
        else:
            future.set_result(frame.get("result"))

    def _shut(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(AgentGone("the sandbox's agent exited (its container died or was killed)"))
        for callback in self._on_close:
            callback()
