"""The server's side of the agent channel: newline-delimited JSON over a Unix socket.

The agent dials in: the server listens in the sandbox's folder (`session_folder.AgentListener`),
and `open_channel` takes the agent's one connection, stops listening, and checks its `hello`:
every backend hands sessions a channel opened this way. One reader task resolves an
`id -> Future` map. EOF (agent or container dead) fails every pending call with
`AgentGone` and runs the close callbacks. Agent error types become orsbox errors
through a fixed table, never by name lookup. The agent may be hostile: its `hello`
is type-checked field by field.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from ..agent import wire
from ..agent.wire import ErrorType
from ..errors import (
    AgentGone,
    BadRequest,
    EnvironmentFailed,
    Forbidden,
    InsufficientStorage,
    NotFound,
    OrsboxError,
    RangeNotSatisfiable,
    SandboxError,
    SetupFailed,
    ToolFailed,
)
from .session_folder import AgentListener

log = structlog.get_logger()

ERROR_TABLE: dict[str, type[OrsboxError]] = {
    ErrorType.SETUP_FAILED: SetupFailed,
    ErrorType.NOT_SET_UP: SetupFailed,
    ErrorType.TOOL_FAILED: ToolFailed,
    ErrorType.ENVIRONMENT_ERROR: EnvironmentFailed,
    # an openreward sandbox's file operations
    ErrorType.BAD_REQUEST: BadRequest,
    ErrorType.NOT_FOUND: NotFound,
    ErrorType.FORBIDDEN: Forbidden,
    ErrorType.OUT_OF_RANGE: RangeNotSatisfiable,
    ErrorType.NO_SPACE: InsufficientStorage,
}

DECODE_OFF_LOOP = 256 * 1024  # bytes: frames longer than this are parsed in a thread
YIELD_EVERY = 64  # frames read in a row before the reader lets other tasks run
ABANDONED_IDS = 256  # request ids given up on (timed out) whose late answers are still accepted
MAX_ERROR_MESSAGE = 4000  # characters of an agent's error message kept


@dataclass(frozen=True)
class Hello:
    """The agent's answer to `hello`, checked field by field."""

    protocol: int
    state: str  # "new", "ready", "failed", "torn_down"
    pid: int
    python: str
    environment: str
    binding: object = None  # a pool container's binding to its session, as reported (untrusted: see Binding)

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
        return cls(protocol, answer["state"][:32], answer["pid"], answer["python"][:32], answer["environment"][:200],
                   answer.get("binding"))


async def open_channel(
    listener: AgentListener, *, timeout: float, is_alive: Callable[[], Awaitable[bool]], max_frame: int
) -> tuple[AgentChannel, Hello]:
    """Take the agent's connection to `listener` (then closed: no second one), and check its hello;
    each within `timeout` s. `is_alive` says whether the sandbox still runs (else the wait ends early).

    `max_frame` bounds every line the agent may send (`wire.frame_limit` of the session's output cap).
    """
    try:
        connection = await listener.accept(timeout=timeout, is_alive=is_alive)
    finally:
        listener.close()
    try:
        reader, writer = await asyncio.open_unix_connection(sock=connection, limit=max_frame)
    except BaseException:
        connection.close()
        raise
    channel = AgentChannel(reader, writer, max_frame)
    try:
        hello = Hello.parse(await channel.call(wire.Method.HELLO, timeout=timeout))
    except BaseException:
        await channel.close()
        raise
    return channel, hello


class ProtocolViolation(Exception):
    """The agent sent something no correct agent sends: the channel is dropped."""


class AgentChannel:
    """A connection to one session's agent; many calls may be in flight.

    The agent may be hostile: a line over `max_frame` bytes, a frame that is not a JSON object, an
    answer to a request never sent or malformed, ends the channel (`broken` says why) and never the server.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int) -> None:
        self._reader = reader
        self._writer = writer
        self.max_frame = max_frame
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._abandoned: deque[int] = deque(maxlen=ABANDONED_IDS)  # timed out here: a late answer is no violation
        self._on_close: list[Callable[[], None]] = []
        self.closed = False
        self.broken: str | None = None
        self.tunnels: Callable[[dict[str, Any]], None] | None = None  # takes tunnel frames (else refused)
        self._sending: set[asyncio.Future[None]] = set()
        self._read_task = asyncio.create_task(self._read_loop())

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run `callback` once when the connection ends (agent exit, container death, close())."""
        self._on_close.append(callback)

    async def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Send one request and wait for its answer."""
        if self.closed:
            raise AgentGone(self.gone_reason)
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
            if self._pending.pop(request_id, None) is not None and not future.done():
                self._abandoned.append(request_id)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send a frame that is no request (a tunnel's); AgentGone if the channel is closed."""
        if self.closed:
            raise AgentGone(self.gone_reason)
        try:
            self._writer.write(wire.encode(frame))
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise AgentGone(f"the sandbox's agent is gone: {exc}") from exc

    def send_soon(self, frame: dict[str, Any]) -> None:
        """`send` in the background (from the read loop, which must not wait); lost if the agent is gone."""
        task = asyncio.ensure_future(self._send_quietly(frame))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_quietly(self, frame: dict[str, Any]) -> None:
        try:
            await self.send(frame)
        except AgentGone:
            pass

    async def close(self) -> None:
        self._read_task.cancel()
        try:
            await self._read_task
        except asyncio.CancelledError:
            pass

    async def _read_loop(self) -> None:
        try:
            frames = 0
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                self._deliver(await self._decode(line))
                frames += 1
                if frames % YIELD_EVERY == 0:  # a fast agent must not keep the event loop to itself
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass
        except ValueError:  # asyncio's word for a line over the limit
            self._violation(f"it sent a frame over {self.max_frame} bytes")
        except (wire.WireError, ProtocolViolation) as exc:
            self._violation(str(exc))
        except ConnectionError as exc:
            log.warning("agent_channel_broken", error=str(exc)[:200])
        finally:
            self._shut()

    async def _decode(self, line: bytes) -> dict[str, Any]:
        """One frame; a large one is parsed off the event loop."""
        if len(line) > DECODE_OFF_LOOP:
            return await asyncio.get_running_loop().run_in_executor(None, wire.decode, line)
        return wire.decode(line)

    def _deliver(self, frame: dict[str, Any]) -> None:
        if "tunnel" in frame:
            if self.tunnels is not None:
                self.tunnels(frame)
            elif frame.get("open") is True and type(frame["tunnel"]) is int:  # none (yet: adoption links later)
                self.send_soon({"tunnel": frame["tunnel"], "close": True})
            return
        request_id = frame.get("id")
        if type(request_id) is not int:
            raise ProtocolViolation("it sent a frame without a request id")
        future = self._pending.get(request_id)
        if future is None:
            if request_id in self._abandoned:  # the answer to a call that timed out here
                self._abandoned.remove(request_id)
                return
            raise ProtocolViolation(f"it sent an answer to request {request_id}, which is not waiting for one")
        if future.done():
            return
        if "error" in frame:
            future.set_exception(_agent_error(frame["error"]))
        elif "result" in frame:
            future.set_result(frame["result"])
        else:
            raise ProtocolViolation("it sent a frame with neither a result nor an error")

    def _violation(self, reason: str) -> None:
        self.broken = reason[:300]
        log.warning("agent_protocol_violation", reason=self.broken)

    @property
    def gone_reason(self) -> str:
        """Why the channel ended: a protocol violation, or the agent's exit."""
        if self.broken is not None:
            return f"the sandbox's agent broke the channel protocol ({self.broken}) and was dropped"
        return "the sandbox's agent exited (its container died or was killed)"

    def _shut(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        reason = self.gone_reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(AgentGone(reason))
        for callback in self._on_close:
            callback()


def _agent_error(error: Any) -> OrsboxError:
    """An agent's `{"type", "message"}` as an orsbox error, through the fixed table."""
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        raise ProtocolViolation("it sent an error frame that is not {type, message}")
    error_class = ERROR_TABLE.get(str(error.get("type")), SandboxError)
    return error_class(error["message"][:MAX_ERROR_MESSAGE])
