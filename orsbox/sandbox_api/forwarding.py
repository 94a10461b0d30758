"""The sandbox API for environments: served to an ORS session's own container, over its agent channel.

An environment whose policy gives it sandboxes (`max_sandboxes`) gets, in its setup, a key of its own
(an HMAC of its session id under the server's secret: the same after a restart, so adopted sessions
keep it). Its agent listens on a loopback port and tunnels each connection there over the channel
(`agent/runtime/forwarder.py`); here each tunnel is one end of a socketpair whose other end an
in-process aiohttp server reads: the same sandbox API routes, behind a middleware that decides who is
asking from the tunnel alone. The container says nothing about that: the principal is the session's
(owner: a digest of the session's owner and id, so no API key and no other session reaches these
sandboxes; quota: the policy's `max_sandboxes`, on top of the key's own), and a request without the
session's key is refused. Tunnel frames are hostile input: numbers, sizes and base64 are checked,
the bytes of a session's tunnels not yet read are bounded, and a session has at most `wire.MAX_TUNNELS` open.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import socket
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from ..agent import wire
from ..api import routes as ors_routes
from ..api.keys import BACKEND, CATALOG, CONFIG, METRICS, POLICIES, PRINCIPAL, SESSIONS
from ..api.middleware import errors_to_http, request_context
from ..api.openapi import Api
from ..auth import Principal, Quota
from ..backends.channel import AgentChannel, ProtocolViolation
from ..errors import AgentGone, Unauthorized
from ..protocol import SidAnswer, StatusAnswer
from ..sessions import Session
from ..sessions.session import sandbox_owner
from .routes import MAX_RUN_BODY, sandbox_api

log = structlog.get_logger()

MAX_UNWRITTEN = 32 * 1024 * 1024  # bytes of a session's tunnels not yet taken by the server: past this one is cut
MAX_DATA_CHARS = (wire.TUNNEL_PIECE + 2) // 3 * 4  # base64 of one piece

# What the sandbox client calls besides the sandbox API's own routes: the main app's handlers, as they are.
session_routes = Api()
session_routes.post("/ping", answer=StatusAnswer, session=True, errors=(404, 410))(ors_routes.ping)
session_routes.post("/delete_session", answer=SidAnswer, session=True)(ors_routes.delete_session)


@dataclass
class _Link:
    """One ORS session's access to the sandbox API: its principal, key, and open tunnels."""

    session: Session
    principal: Principal
    token: str
    channel: AgentChannel
    tunnels: dict[int, _Tunnel] = field(default_factory=dict)
    unwritten: int = 0  # bytes its agent sent that the in-process server has not taken yet, all tunnels


class SessionApi:
    """Serves the sandbox API to sessions' environments through tunnels over their agent channels."""

    def __init__(self, main: web.Application, secret: bytes) -> None:
        self._secret = secret
        self.app = web.Application(middlewares=[request_context, errors_to_http, self._authenticate],
                                   client_max_size=MAX_RUN_BODY)
        self.app[CONFIG], self.app[BACKEND], self.app[CATALOG] = main[CONFIG], main[BACKEND], main[CATALOG]
        self.app[POLICIES], self.app[SESSIONS], self.app[METRICS] = main[POLICIES], main[SESSIONS], main[METRICS]
        self.app.add_routes(sandbox_api.routes)
        self.app.add_routes(session_routes.routes)
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        self._by_transport: dict[asyncio.BaseTransport, _Link] = {}  # the in-process server's end -> whose tunnel

    async def start(self) -> None:
        await self._runner.setup()

    async def close(self) -> None:
        await self._runner.cleanup()

    def token(self, sid: str) -> str:
        """The session's key for the sandbox API (derived: the same for the session after a restart)."""
        return hmac.new(self._secret, f"session-api:{sid}".encode(), hashlib.sha256).hexdigest()

    def link(self, session: Session, channel: AgentChannel) -> str:
        """Serve tunnels from `session`'s agent over `channel` from now on; the key its setup gets."""
        principal = Principal(f"session-{session.id[:8]}", sandbox_owner(session.owner, session.id),
                              Quota(max_sessions=session.env.policy.max_sandboxes),
                              on_behalf_of=Principal("", session.owner, session.key_quota or Quota()),
                              parent_session=session.id)
        link = _Link(session, principal, self.token(session.id), channel)
        channel.tunnels = lambda frame: self._frame(link, frame)
        channel.on_close(lambda: self._unlink(link))
        return link.token

    # -- requests -------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        link = self._by_transport.get(request.transport) if request.transport is not None else None
        if link is None:
            raise Unauthorized("this connection is no session's")
        if not hmac.compare_digest(request.headers.get("X-API-Key", "").encode(), link.token.encode()):
            raise Unauthorized("invalid API key: an environment's sandbox client uses the key in OPENREWARD_API_KEY")
        request[PRINCIPAL] = link.principal
        structlog.contextvars.bind_contextvars(parent_session=link.session.id[:36])
        return await handler(request)

    # -- tunnels --------------------------------------------------------------------

    def _frame(self, link: _Link, frame: dict[str, Any]) -> None:
        number = frame.get("tunnel")
        if type(number) is not int or not 0 < number < 2**53:
            raise ProtocolViolation("it sent a tunnel frame without a valid tunnel number")
        if frame.get("open") is True:
            self._open(link, number)
        elif isinstance(frame.get("data"), str):
            tunnel = link.tunnels.get(number)
            if tunnel is not None:
                tunnel.put(_decode(frame["data"]))
        elif frame.get("close") is True:
            tunnel = link.tunnels.get(number)
            if tunnel is not None:
                tunnel.end(tell_agent=False)
        else:
            raise ProtocolViolation("it sent a tunnel frame that is neither open, data nor close")

    def _open(self, link: _Link, number: int) -> None:
        if number in link.tunnels:
            raise ProtocolViolation(f"it opened tunnel {number} twice")
        if len(link.tunnels) >= wire.MAX_TUNNELS:
            link.channel.send_soon({"tunnel": number, "close": True})
            return
        served, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        tunnel = _Tunnel(number, link, ours, self._by_transport)
        link.tunnels[number] = tunnel
        tunnel.start(self._runner, served)

    def _unlink(self, link: _Link) -> None:
        for tunnel in list(link.tunnels.values()):
            tunnel.end(tell_agent=False)


class _Tunnel:
    """One forwarded connection: bytes from the agent into the in-process server, and its answers back."""

    def __init__(self, number: int, link: _Link, ours: socket.socket,
                 by_transport: dict[asyncio.BaseTransport, _Link]) -> None:
        self.number = number
        self.link = link
        self._ours = ours
        self._by_transport = by_transport
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task: asyncio.Future[None] | None = None
        self.ended = False

    def start(self, runner: web.AppRunner, served: socket.socket) -> None:
        self._task = asyncio.ensure_future(self._run(runner, served))

    def put(self, data: bytes) -> None:
        if self.ended:
            return
        if self.link.unwritten + len(data) > MAX_UNWRITTEN:
            log.warning("tunnel_overflow", tunnel=self.number, unwritten=self.link.unwritten)
            self.end(tell_agent=True)
            return
        self.link.unwritten += len(data)
        self._inbox.put_nowait(data)

    def end(self, *, tell_agent: bool) -> None:
        if self.ended:
            return
        self.ended = True
        self.link.tunnels.pop(self.number, None)
        self._inbox.put_nowait(None)
        if tell_agent and not self.link.channel.closed:
            self.link.channel.send_soon({"tunnel": self.number, "close": True})

    async def _run(self, runner: web.AppRunner, served: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = runner.server
        assert server is not None
        transport = None
        try:
            transport, _ = await loop.connect_accepted_socket(server, served)
            self._by_transport[transport] = self.link  # before any byte reaches it: nothing asks unknown
            try:
                reader, writer = await asyncio.open_unix_connection(sock=self._ours)
            except BaseException:
                self._ours.close()
                raise
            pump = asyncio.ensure_future(self._to_agent(reader))
            try:
                while (data := await self._inbox.get()) is not None:
                    writer.write(data)
                    await writer.drain()
                    self.link.unwritten -= len(data)
                if not writer.is_closing():
                    writer.write_eof()
                await pump
            finally:
                pump.cancel()
                writer.close()
        except (ConnectionError, OSError, AgentGone):
            pass
        finally:
            if transport is not None:
                self._by_transport.pop(transport, None)
                transport.close()
            else:
                served.close()
            while not self._inbox.empty():  # what was never written no longer counts
                self.link.unwritten -= len(self._inbox.get_nowait() or b"")
            self.end(tell_agent=True)

    async def _to_agent(self, reader: asyncio.StreamReader) -> None:
        """The server's bytes back to the agent, until the server closes the connection."""
        while data := await reader.read(wire.TUNNEL_PIECE):
            await self.link.channel.send({"tunnel": self.number, "data": base64.b64encode(data).decode()})
        self.end(tell_agent=True)


def _decode(data: str) -> bytes:
    if len(data) > MAX_DATA_CHARS:
        raise ProtocolViolation(f"it sent a tunnel frame of more than {wire.TUNNEL_PIECE} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolViolation("it sent a tunnel frame whose data is not base64") from None
