"""The egress proxy of `network = "allowlist"` sessions: HTTP CONNECT and plain HTTP, to allowed host:ports only.

One listener per session, bound to its network's gateway address on the host: the only address the
session's container can reach, and the firewall lets it reach only this port. So the listener *is*
the session (no source-address bookkeeping), and no other session or container can use it. It runs
in the server's event loop: streams copied by asyncio, names resolved on threads of the proxies' own.

Every request goes through the same checks, in order:

1. it is read strictly (a complete head within `head_timeout`, `HEAD_LIMIT` bytes and `MAX_HEADERS`
   lines at most, no folded lines or control characters, and for plain HTTP a Host header, if any,
   naming the URL's host:port), so that the upstream cannot read it otherwise than the proxy did;
2. it names a host:port of the session's `allow` list: names match exactly or by `*.suffix`; an
   address matches only if it is listed as that address;
3. the name resolves, here on the host (never in the container, whose DNS goes nowhere), to an address
   that is not loopback, link-local (169.254.0.0/16: the metadata address), unspecified, multicast or
   reserved, in orsbox's session networks, or one of this host's own: checked on the very address the
   proxy then connects to, so DNS rebinding gains nothing;
4. the proxy connects to that address and relays bytes both ways, until both sides are done, nothing
   moves for `idle_timeout`, or `lifetime` has passed.

The container is hostile, so what the proxy spends on it is bounded (`limits.py`): time at each step,
connections per session and for all sessions, lookups at once, and log lines. A refusal is answered
with the reason: `403` (not allowed), `400`/`431` (not a proxy request, or one read strictly refused),
`408` (no head in time), `429`/`503` (the session's or the server's connections all open), `502`/`504`
(the upstream cannot be resolved or reached, or not in time); it is logged as `egress_denied` with the
session id, repeated ones aggregated (`DenialLog`). A finished connection is logged as `egress` with the
bytes each way and how it ended. Logged values that came from the session are clipped (`clip`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import re
import socket
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

import structlog

from ...metrics import Metrics
from ...policy import parse_allow_entry
from .limits import Budget, DenialLog, Limits, clip

log = structlog.get_logger()

HEAD_LIMIT = 64 * 1024  # bytes: request line and headers at most
CHUNK = 64 * 1024  # bytes per read when relaying
LINGER = 1.0  # s a refused client's further bytes are read (and dropped) before its connection closes
MAX_HEADERS = 100  # header lines in a request head, at most (then 431)
MAX_ADDRESSES = 16  # addresses of a name the proxy checks and tries, at most (in the resolver's order)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
               "upgrade"}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class Refused(Exception):
    """A request the proxy does not forward: the status it answers and why."""

    def __init__(self, status: int, reason: str, *, host: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.host = status, reason, host  # host: the one asked for, if known


# ---------------------------------------------------------------- what may be reached


class Allowlist:
    """A session's `allow` entries: exact host:port pairs and `*.suffix` wildcards."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.exact: set[tuple[str, int]] = set()
        self.suffixes: set[tuple[str, int]] = set()  # (".example.com", 443) for "*.example.com:443"
        for entry in entries:
            host, port = parse_allow_entry(entry)
            if host.startswith("*."):
                self.suffixes.add((host[1:], port))
            else:
                self.exact.add((host, port))

    def allows(self, host: str, port: int) -> bool:
        """Whether `host:port`, as a client asked for it, is on the list."""
        if "*" in host:
            return False
        try:
            host, port = parse_allow_entry(f"{host}:{port}")  # the same normal form as the entries
        except ValueError:
            return False
        return (host, port) in self.exact or any(host.endswith(suffix) and port == allowed
                                                 for suffix, allowed in self.suffixes)


def refusal(address: IPAddress, pool: ipaddress.IPv4Network) -> str | None:
    """Why the proxy never connects to `address`, whatever the allowlist says; None if it may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal(embedded, pool)
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is link-local (169.254.0.0/16 holds the cloud metadata address)"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return f"{address} is not a unicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in pool:
        return f"{address} is in orsbox's session networks ({pool})"
    if is_host_address(address):
        return f"{address} is an address of this host"
    return None


def is_host_address(address: IPAddress) -> bool:
    """Whether `address` is one of this host's own (any interface, up or down): only those can be bound.

    Where non-local binds are allowed (`ip_nonlocal_bind`), every address looks local: refused (fail closed).
    """
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


async def resolve(host: str, port: int, executor: Executor | None = None) -> list[str]:
    """The addresses of `host`, resolved on the host, on `executor`'s threads (an address stands for itself).
    Tests may replace it."""
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]
    lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    infos = await asyncio.get_running_loop().run_in_executor(executor, lookup)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """A proxy request: where it goes and, for plain HTTP, the head to send upstream."""

    method: str
    host: str
    port: int
    upstream_head: bytes  # b"" for CONNECT


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a method or a header name (RFC 9110)
_TARGET = re.compile(r"[\x21-\x7e]+")  # printable ASCII: no space, no control character
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in a header value (a tab is allowed)
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]@:/?#\s]+)(?::([0-9]{0,5}))?")  # "host:" = default port


def parse_request(head: bytes) -> Request:
    """`CONNECT host:port` or an absolute-URI `GET http://host[:port]/path`, read strictly: anything an upstream
    might read otherwise than the proxy (a Host header naming another host, folded or malformed header lines,
    control characters) is refused. Raises Refused."""
    lines = head.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
    method, target, version = _request_line(lines[0])
    if len(lines) - 1 > MAX_HEADERS:
        raise Refused(431, f"the request has more than {MAX_HEADERS} header lines")
    headers = [_header(line) for line in lines[1:]]
    if method == "CONNECT":
        host, port = _authority(target, None, what="the CONNECT target")
        return Request(method, host, port, b"")
    try:
        url = urlsplit(target)
    except ValueError:  # e.g. an unclosed [
        raise Refused(400, "the request's URI is not a URI") from None
    if url.scheme.lower() != "http":
        raise Refused(400, "a proxy request names an absolute http:// URI (https:// goes through CONNECT)")
    authority = url.netloc.rpartition("@")[2]
    host, port = _authority(authority, 80, what="the URL's host")
    host_headers = [value for name, value in headers if name.lower() == "host"]
    if len(host_headers) > 1:
        raise Refused(400, "the request has more than one Host header", host=host)
    if host_headers and _host_header(host_headers[0]) != (host, port):
        raise Refused(400, f"the Host header ({host_headers[0]}) names another host than the URL ({authority})",
                      host=host)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    kept = [f"{name}: {value}" for name, value in headers if name.lower() not in _HOP_BY_HOP]
    if not host_headers:
        kept.insert(0, f"Host: {authority}")
    upstream = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
    return Request(method, host, port, upstream.encode("latin-1"))


def _request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused(400, "not an HTTP/1.x request")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1") or not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise Refused(400, "the request line is not METHOD target HTTP/1.x in printable ASCII")
    return method, target, version


def _header(line: str) -> tuple[str, str]:
    """A header line as (name, value); a folded line, a space before the colon or a control character: 400."""
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN.fullmatch(name):
        raise Refused(400, "a header line is not name: value (folded lines are not accepted)")
    value = value.strip(" \t")
    if _CONTROL.search(value):
        raise Refused(400, "a header value holds a control character")
    return name, value


def _authority(text: str, default_port: int | None, *, what: str) -> tuple[str, int]:
    """`host[:port]` (no user, no path) as the allowlist compares it: lower case, no trailing dot."""
    match = _AUTHORITY.fullmatch(text)
    port_text = match.group(2) if match else None
    port = int(port_text) if port_text else default_port
    if match is None or port is None or not 0 < port <= 65535:
        raise Refused(400, f"{what} is not host:port with a port from 1 to 65535")
    return match.group(1).strip("[]").lower().removesuffix("."), port


def _host_header(value: str) -> tuple[str, int] | None:
    try:
        return _authority(value, 80, what="the Host header")
    except Refused:
        return None


def answer(status: int, reason: str) -> bytes:
    """A complete response that ends the connection."""
    body = f"orsbox egress proxy: {reason}\n".encode()
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


# ---------------------------------------------------------------- the proxy


class EgressProxy:
    """One allowlist session's proxy, listening on `host:port` (its network's gateway)."""

    def __init__(self, *, session_id: str, network: str, allow: Sequence[str], host: str, port: int,
                 pool: ipaddress.IPv4Network, limits: Limits, budget: Budget, metrics: Metrics | None = None) -> None:
        self.session_id, self.network = session_id, network
        self.metrics = metrics
        self.allowlist = Allowlist(allow)
        self.host, self.port, self.pool = host, port, pool
        self.limits, self.budget = limits, budget
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lookup_slots = asyncio.Semaphore(limits.lookups)
        self._denials = DenialLog(session_id, interval=limits.denial_interval)
        self._flusher: asyncio.Task[None] | None = None
        self._lookups: set[asyncio.Future[list[str]]] = set()  # running, timed out or not

    @property
    def open_connections(self) -> int:
        """Connections of the session the proxy holds now (refused ones until their answer is sent)."""
        return len(self._tasks)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, host=self.host, port=self.port, limit=HEAD_LIMIT,
                                                  reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])  # the one bound, if port 0 was asked
        self._flusher = asyncio.ensure_future(self._flush_denials())
        log.info("egress_proxy_started", session_id=self.session_id, network=self.network,
                 address=f"{self.host}:{self.port}")

    async def replace_allowlist(self, allow: Sequence[str]) -> int:
        """From now on allow `allow`; connections opened under the old list are cut (their number)."""
        self.allowlist = Allowlist(allow)
        opened = list(self._tasks)
        for task in opened:
            task.cancel()
        await asyncio.gather(*opened, return_exceptions=True)
        log.info("egress_allowlist_replaced", session_id=self.session_id, network=self.network,
                 entries=len(allow), cut=len(opened))
        return len(opened)

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for lookup in self._lookups:
            lookup.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()  # after the cuts: from Python 3.12 on it waits for every connection
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        self._denials.flush()

    async def _flush_denials(self) -> None:
        while True:
            await asyncio.sleep(self.limits.denial_interval)
            self._denials.flush()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        counted = False  # in the proxies' budget
        try:
            if len(self._tasks) > self.limits.connections:
                await self._deny(reader, writer, Refused(
                    429, f"this session has {self.limits.connections} connections open already"), None,
                    linger=len(self._tasks) <= 2 * self.limits.connections)  # past that, closed at once
                return
            counted = self.budget.take_connection()
            if not counted:
                await self._deny(reader, writer, Refused(
                    503, f"the proxy has {self.budget.connections} connections open, all sessions together; "
                         "try again later"), None)
                return
            await self._proxy(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the proxy closes; ending here keeps asyncio's stream callback (3.11) from logging it as an error
        except Exception as exc:  # a bug here: this connection ends, the proxy goes on, the log says (bounded)
            log.error("egress_error", session_id=self.session_id, error=clip(f"{type(exc).__name__}: {exc}"))
        finally:
            if counted:
                self.budget.give_connection()
            self._tasks.discard(task)
            close_now(writer)

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request: Request | None = None
        try:
            head = await self._read_head(reader)
            request = parse_request(head)
            upstream_reader, upstream_writer, address = await self._open(request)
        except Refused as exc:
            await self._deny(reader, writer, exc, request)
            return
        started = time.monotonic()
        try:
            if request.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream_writer.write(request.upstream_head)
            traffic, end = await relay(reader, writer, upstream_reader, upstream_writer,
                                       idle=self.limits.idle_timeout, lifetime=self.limits.lifetime)
        finally:
            close_now(upstream_writer)
        if self.metrics is not None:
            self.metrics.egress(traffic.sent, traffic.received)
        log.info("egress", session_id=self.session_id, method=clip(request.method, 32), host=clip(request.host),
                 port=request.port, address=address, sent=traffic.sent, received=traffic.received, end=end,
                 seconds=round(time.monotonic() - started, 3))

    async def _deny(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refused: Refused,
                    request: Request | None, *, linger: bool = True) -> None:
        """Log a refusal and answer it; then, if `linger`, take what the client still sends for `LINGER` s at
        most (closing with unread input resets the connection, and the client may lose the answer)."""
        if self.metrics is not None:
            self.metrics.egress_denials.labels(str(refused.status)).inc()
        self._denials.denied(status=refused.status, reason=refused.reason,
                             method=request.method if request else None,
                             host=request.host if request else refused.host, port=request.port if request else None)
        writer.write(answer(refused.status, clip(refused.reason) or ""))
        await writer.drain()  # the answer is small: this never waits for the client
        if linger:
            writer.write_eof()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER):
                    while await reader.read(CHUNK):
                        pass

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        """The request line and headers, sent within `head_timeout` s in all (slowly sent ones too); raises Refused
        (and IncompleteReadError when the client leaves first)."""
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.limits.head_timeout)
        except asyncio.LimitOverrunError:
            raise Refused(431, f"the request head is larger than {HEAD_LIMIT} bytes") from None
        except TimeoutError:
            raise Refused(408, f"no complete request head in {self.limits.head_timeout:g} s") from None

    async def _open(self, request: Request) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """Connect to the first allowed address of the request's host; raises Refused."""
        where = f"{request.host}:{request.port}"
        if not self.allowlist.allows(request.host, request.port):
            raise Refused(403, f"{where} is not in this session's allowlist")
        addresses = [ipaddress.ip_address(a) for a in await self._resolve(request.host, request.port)]
        verdicts = [(address, refusal(address, self.pool)) for address in addresses]
        allowed = [address for address, reason in verdicts if reason is None]
        if not allowed:
            reasons = "; ".join(reason for _, reason in verdicts if reason) or "it has no address"
            raise Refused(403, f"{where} refused: {reasons}")
        failures, timeout = [], self.limits.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                for address in allowed:
                    try:
                        upstream_reader, upstream_writer = await asyncio.open_connection(
                            str(address), request.port, limit=CHUNK)
                        return upstream_reader, upstream_writer, str(address)
                    except OSError as exc:
                        failures.append(f"{address}: {exc.strerror or exc}")
        except TimeoutError:
            raise Refused(504, f"{where} cannot be reached in {timeout:g} s ({'; '.join(failures) or 'no answer'})"
                          ) from None
        raise Refused(502, f"{where} cannot be reached ({'; '.join(failures)})")

    async def _resolve(self, host: str, port: int) -> list[str]:
        """`resolve` on the proxies' lookup threads within `resolve_timeout` s, this session's lookups
        `limits.lookups` at most at once (one that timed out keeps its place until it ends); raises Refused."""
        timeout = self.limits.resolve_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._lookup_slots.acquire()
                lookup = asyncio.ensure_future(resolve(host, port, self.budget.lookup_threads))
                self._lookups.add(lookup)
                lookup.add_done_callback(self._lookup_ended)
                addresses = await asyncio.shield(lookup)
            return [str(ipaddress.ip_address(address)) for address in addresses[:MAX_ADDRESSES]]
        except TimeoutError:
            raise Refused(504, f"{host} does not resolve in {timeout:g} s") from None
        except (OSError, ValueError) as exc:
            raise Refused(502, f"{host} does not resolve: {exc}") from None

    def _lookup_ended(self, lookup: asyncio.Future[list[str]]) -> None:
        self._lookups.discard(lookup)
        self._lookup_slots.release()
        if not lookup.cancelled():
            lookup.exception()  # retrieved: a late failure is no warning


@dataclass
class Traffic:
    """What a relay moved: bytes each way, and when the last of them moved (the loop's clock)."""

    sent: int = 0
    received: int = 0
    last: float = 0.0


async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                upstream_reader: asyncio.StreamReader, upstream_writer: asyncio.StreamWriter, *,
                idle: float, lifetime: float) -> tuple[Traffic, str]:
    """Copy bytes both ways (half-closes passed on) and say how it ended: "closed" (both sides done), "reset"
    (one side failed), "idle" (no byte moved either way for `idle` s) or "lifetime" (`lifetime` s passed)."""
    loop = asyncio.get_running_loop()
    traffic = Traffic(last=loop.time())
    deadline = traffic.last + lifetime
    pipes = [asyncio.ensure_future(_pipe(client_reader, upstream_writer, traffic, upstream=True)),
             asyncio.ensure_future(_pipe(upstream_reader, client_writer, traffic, upstream=False))]
    pending = set(pipes)
    try:
        while pending:
            now = loop.time()
            if now >= deadline:
                return traffic, "lifetime"
            if now >= traffic.last + idle:
                return traffic, "idle"
            done, pending = await asyncio.wait(pending, timeout=min(deadline, traffic.last + idle) - now)
            if any(task.exception() is not None for task in done):
                return traffic, "reset"
        return traffic, "closed"
    finally:
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, traffic: Traffic, *,
                upstream: bool) -> None:
    """Copy `reader` to `writer` until EOF, then pass the EOF on. A write waits for the peer to take what came
    before (so a side that does not read stops this pipe, and the relay's idle clock runs)."""
    loop = asyncio.get_running_loop()
    while data := await reader.read(CHUNK):
        traffic.last = loop.time()
        if upstream:
            traffic.sent += len(data)
        else:
            traffic.received += len(data)
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


def close_now(writer: asyncio.StreamWriter) -> None:
    """Close a connection at once: what the peer has not taken yet is dropped (`close()` alone would keep the
    socket until a peer that may never read does)."""
    if writer.transport.get_write_buffer_size():
        writer.transport.abort()
    else:
        writer.close()
