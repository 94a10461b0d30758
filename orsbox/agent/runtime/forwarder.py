"""The sandbox API, reached from inside an environment's container: a loopback port tunnelled to the server.

An environment whose tools drive openreward sandboxes (`AsyncOpenReward().sandbox(...)`) finds the
sandbox service at `OPENREWARD_SESSION_URL`. In orsbox that is `http://127.0.0.1:<port>`: this
forwarder listens there (loopback exists even with network none) and carries each connection's bytes
as tunnel frames over the agent's channel (see `wire`), where the server serves them as the sandbox
API of this session, and of this session only. The forwarder itself is a pipe: it understands no
HTTP; the server authenticates every request (the per-session key set in `OPENREWARD_API_KEY`,
which commands of the command user never see: their environment is clean). Only the environment,
in the agent's own process, is meant to connect: a connection from another uid (a command) is
closed before any byte of it is forwarded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import os
from typing import Any, Awaitable, Callable, Dict, Optional

from .. import wire

Send = Callable[[Dict[str, Any]], Awaitable[None]]

LOOPBACK = "127.0.0.1"
PROC_NET_TCP = "/proc/net/tcp"
MAX_BUFFERED = 64 * 1024 * 1024  # bytes for one client not yet written to it: past this it is cut


class Forwarder:
    """Listens on a loopback port; each connection is a tunnel over the current channel (none: refused)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: Optional[asyncio.AbstractServer] = None
        self._send: Optional[Send] = None
        self._clients: Dict[int, asyncio.StreamWriter] = {}
        self._ids = itertools.count(1)

    async def start(self, token: str) -> None:
        """Listen (once), and point this process's openreward client at the port with `token` as its key."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
            self.port = self._server.sockets[0].getsockname()[1]
        os.environ["OPENREWARD_SESSION_URL"] = "http://%s:%d" % (LOOPBACK, self.port)
        os.environ["OPENREWARD_API_KEY"] = token

    def attach(self, send: Send) -> None:
        """A channel to the server is up: new tunnels go over it."""
        self._send = send

    def detach(self) -> None:
        """The channel is gone: every tunnel over it ends (the client reconnects, and resumes by task id)."""
        self._send = None
        for writer in self._clients.values():
            writer.close()
        self._clients.clear()

    def receive(self, frame: Dict[str, Any]) -> None:
        """A tunnel frame from the server: bytes for a client, or its end. Unknown tunnels are ignored."""
        number = frame.get("tunnel")
        if type(number) is not int or number not in self._clients:
            return
        writer = self._clients[number]
        data = frame.get("data")
        if isinstance(data, str):
            try:
                writer.write(base64.b64decode(data, validate=True))
            except (binascii.Error, ValueError):
                self._end(number)
                return
            if writer.transport.get_write_buffer_size() <= MAX_BUFFERED:
                return
        self._end(number)

    def close(self) -> None:
        self.detach()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        send = self._send
        peer = writer.get_extra_info("peername")
        if send is None or len(self._clients) >= wire.MAX_TUNNELS or not _own_uid(peer[1], self.port):
            writer.close()
            return
        number = next(self._ids)
        self._clients[number] = writer
        try:
            await send({"tunnel": number, "open": True})
            while number in self._clients:
                data = await reader.read(wire.TUNNEL_PIECE)
                if not data:
                    break
                await send({"tunnel": number, "data": base64.b64encode(data).decode()})
        except (ConnectionError, OSError):
            pass
        finally:
            if self._clients.pop(number, None) is not None:
                writer.close()
                try:
                    await send({"tunnel": number, "close": True})
                except (ConnectionError, OSError):
                    pass

    def _end(self, number: int) -> None:
        writer = self._clients.pop(number, None)
        if writer is not None:
            writer.close()


def _own_uid(peer_port: int, port: int) -> bool:
    """Whether the loopback client at `peer_port` (connected to `port`) is a socket of this process's uid,
    as /proc/net/tcp tells; a client it does not list is refused, and a kernel without it lets all in."""
    local, remote = "0100007F:%04X" % peer_port, "0100007F:%04X" % port
    try:
        with open(PROC_NET_TCP) as table:
            lines = table.read().splitlines()[1:]
    except OSError:
        return True
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[1] == local and fields[2] == remote:
            return fields[7] == str(os.geteuid())
    return False
