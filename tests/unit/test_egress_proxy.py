"""The egress proxy against a hostile session, without Docker.

The proxy listens on loopback with a session's allowlist; its upstream is an echo server of the test's
own on 127.0.0.1 (it sends back every byte it gets, so a client sees exactly what the upstream received);
the session is raw sockets. Loopback is refused by the proxy whatever the list says, so these tests let
it through (and only it) by replacing `egress.refusal`, and `upstream.test` resolves to 127.0.0.1.
Limits are made small; a guard timeout only keeps a broken proxy from hanging the test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import resource
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from orsbox import cli
from orsbox.backends.network import egress
from orsbox.backends.network.limits import MAX_DENIAL_SUBJECTS, Budget, DenialLog, Limits
from orsbox.backends.network.modes import SESSION_SUBNET_POOL
from orsbox.errors import InstanceLocked
from orsbox.metrics import Metrics

GUARD = 10.0  # s: a test fails, rather than hangs, when the proxy never answers or never closes
NAME = "upstream.test"


@dataclass
class Upstream:
    """An echo server on 127.0.0.1: what each connection received, and how many are still open."""

    port: int = 0
    received: list[bytearray] = field(default_factory=list)
    open: int = 0


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = bytearray()
        state.received.append(received)
        state.open += 1
        try:
            while data := await reader.read(65536):
                received += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            state.open -= 1
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    state.port = int(server.sockets[0].getsockname()[1])
    yield state
    server.close()
    await server.wait_closed()


@pytest.fixture
async def mute_upstream() -> AsyncIterator[Upstream]:
    """An upstream that accepts and then neither reads, nor sends, nor closes: a half-closed tunnel's other end."""
    state = Upstream()
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.open += 1
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # returns when the proxy closes its side
        state.open -= 1

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    state.port = int(server.sockets[0].getsockname()[1])
    yield state
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
async def flooding_upstream() -> AsyncIterator[Upstream]:
    """An upstream that sends without end, for a client that never reads."""
    state = Upstream()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.open += 1
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            state.open -= 1
            writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    state.port = int(server.sockets[0].getsockname()[1])
    yield state
    server.close()
    await server.wait_closed()


Names = dict[str, "list[str] | Callable[[], Awaitable[list[str]]]"]


@pytest.fixture(autouse=True)
def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    """The proxy may reach loopback (the upstreams' address); names resolve as this table says (a list of
    addresses, or a coroutine function giving them): edit it to add some."""
    table: Names = {NAME: ["127.0.0.1"]}
    real_refusal = egress.refusal

    def refusal(address: egress.IPAddress, pool: ipaddress.IPv4Network) -> str | None:
        return None if address.is_loopback else real_refusal(address, pool)

    async def resolve(host: str, port: int, executor: Any = None) -> list[str]:
        found = table.get(host)
        if found is None:
            raise OSError(f"{host} does not resolve in this test")
        return found if isinstance(found, list) else await found()

    monkeypatch.setattr(egress, "refusal", refusal)
    monkeypatch.setattr(egress, "resolve", resolve)
    return table


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port of 127.0.0.1 where connecting hangs: its listener's accept queue is full and never served."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    queued = []
    for _ in range(3):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(("127.0.0.1", port))
        queued.append(client)
    yield port
    for client in queued:
        client.close()
    listener.close()


StartProxy = Callable[..., Awaitable[egress.EgressProxy]]


@pytest.fixture
async def proxies(upstream: Upstream) -> AsyncIterator[StartProxy]:
    """`await proxies(limits=Limits(...), allow=[...], session_id=..., budget=...)`: a started proxy (sharing
    one budget with the test's others unless given one), closed afterwards."""
    started: list[egress.EgressProxy] = []
    shared = Budget()

    async def start(*, limits: Limits | None = None, allow: list[str] | None = None, session_id: str = "s1",
                    budget: Budget | None = None, metrics: Metrics | None = None) -> egress.EgressProxy:
        proxy = egress.EgressProxy(session_id=session_id, network=f"net-{session_id}",
                                   allow=allow or [f"{NAME}:{upstream.port}", f"127.0.0.1:{upstream.port}"],
                                   host="127.0.0.1", port=0, pool=ipaddress.IPv4Network(SESSION_SUBNET_POOL),
                                   limits=limits or Limits(), budget=budget or shared, metrics=metrics)
        await proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.close()
    shared.close()


async def connect(proxy: egress.EgressProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy.host, proxy.port)


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy sends until it closes the connection (the guard fails the test otherwise)."""
    return await asyncio.wait_for(reader.read(), GUARD)


async def ask(proxy: egress.EgressProxy, head: bytes) -> bytes:
    """Send `head` on a new connection, half-close, and return all the proxy answers."""
    reader, writer = await connect(proxy)
    writer.write(head)
    writer.write_eof()
    try:
        return await until_closed(reader)
    finally:
        writer.close()


async def tunnel(proxy: egress.EgressProxy, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A CONNECT tunnel to the upstream, established."""
    reader, writer = await connect(proxy)
    writer.write(f"CONNECT {NAME}:{port} HTTP/1.1\r\nHost: {NAME}:{port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return reader, writer


async def until(condition: Callable[[], bool]) -> None:
    """Wait for `condition` (the guard fails the test if it never holds)."""
    async with asyncio.timeout(GUARD):
        while not condition():
            await asyncio.sleep(0.01)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in logs if event["event"] == name]


# ---------------------------------------------------------------- what works


async def test_a_tunnel_relays_both_ways_and_is_logged(proxies: StartProxy, upstream: Upstream) -> None:
    proxy = await proxies()
    with structlog.testing.capture_logs() as logs:
        reader, writer = await tunnel(proxy, upstream.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), GUARD) == b"ping"
        writer.write_eof()  # the half-close is passed on: the upstream ends, then the tunnel
        assert await until_closed(reader) == b""
        writer.close()
        await proxy.close()
    [done] = events(logs, "egress")
    assert (done["host"], done["port"], done["sent"], done["received"]) == (NAME, upstream.port, 4, 4)


async def test_relayed_bytes_and_denials_are_counted_in_the_metrics(proxies: StartProxy, upstream: Upstream) -> None:
    metrics = Metrics()
    proxy = await proxies(metrics=metrics)
    reader, writer = await tunnel(proxy, upstream.port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), GUARD) == b"ping"
    writer.write_eof()
    assert await until_closed(reader) == b""
    writer.close()
    assert status(await ask(proxy, b"CONNECT elsewhere.test:443 HTTP/1.1\r\n\r\n")) == 403
    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    await until(lambda: sample("orsbox_egress_bytes_total", direction="sent") == 4)
    assert sample("orsbox_egress_bytes_total", direction="received") == 4
    assert sample("orsbox_egress_denials_total", status="403") == 1


async def test_a_plain_request_goes_on_in_origin_form(proxies: StartProxy, upstream: Upstream) -> None:
    proxy = await proxies()
    answer = await ask(proxy, f"GET http://{NAME}:{upstream.port}/a?b=1 HTTP/1.1\r\nHost: {NAME}:{upstream.port}\r\n"
                              "Proxy-Connection: keep-alive\r\n\r\n".encode())
    assert answer == f"GET /a?b=1 HTTP/1.1\r\nHost: {NAME}:{upstream.port}\r\nConnection: close\r\n\r\n".encode()


async def test_a_replaced_allowlist_applies_at_once_and_cuts_what_the_old_one_let_through(
        proxies: StartProxy, upstream: Upstream) -> None:
    """`set_network` on a sandbox: the new rules hold for the next request, and open tunnels end."""
    proxy = await proxies()
    reader, writer = await tunnel(proxy, upstream.port)
    assert await proxy.replace_allowlist([f"other.test:{upstream.port}"]) == 1
    assert await until_closed(reader) == b""
    writer.close()
    answer = await ask(proxy, f"CONNECT {NAME}:{upstream.port} HTTP/1.1\r\n\r\n".encode())
    assert status(answer) == 403


async def test_a_host_not_listed_is_refused_and_logged(proxies: StartProxy, upstream: Upstream) -> None:
    proxy = await proxies()
    with structlog.testing.capture_logs() as logs:
        answer = await ask(proxy, b"CONNECT elsewhere.test:443 HTTP/1.1\r\n\r\n")
    assert status(answer) == 403 and b"not in this session's allowlist" in answer
    [denied] = events(logs, "egress_denied")
    assert (denied["session_id"], denied["host"], denied["status"]) == ("s1", "elsewhere.test", 403)
    assert upstream.received == []


# ---------------------------------------------------------------- time


async def test_a_client_that_never_completes_its_head_is_answered_408_and_dropped(proxies: StartProxy) -> None:
    proxy = await proxies(limits=Limits(head_timeout=0.2))
    reader, writer = await connect(proxy)
    with structlog.testing.capture_logs() as logs:
        writer.write(f"CONNECT {NAME}:443 HTTP/1.1\r\n".encode())  # and never the blank line
        answer = await until_closed(reader)
    writer.close()
    assert status(answer) == 408 and b"no complete request head in 0.2 s" in answer
    [denied] = events(logs, "egress_denied")
    assert denied["status"] == 408


async def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_same_deadline(proxies: StartProxy) -> None:
    proxy = await proxies(limits=Limits(head_timeout=0.3))
    reader, writer = await connect(proxy)

    async def drip() -> None:  # slowloris: always one more header byte, never the end of the head
        writer.write(b"GET http://upstream.test/ HTTP/1.1\r\n")
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.02)

    dripping = asyncio.ensure_future(drip())
    try:
        answer = await until_closed(reader)
    finally:
        dripping.cancel()
        writer.close()
    assert status(answer) == 408


async def test_an_idle_half_closed_tunnel_is_closed_both_ways(proxies: StartProxy, mute_upstream: Upstream) -> None:
    proxy = await proxies(limits=Limits(idle_timeout=0.2), allow=[f"{NAME}:{mute_upstream.port}"])
    with structlog.testing.capture_logs() as logs:
        reader, writer = await tunnel(proxy, mute_upstream.port)
        writer.write_eof()  # the client is done; the upstream never answers nor closes
        assert await until_closed(reader) == b""
        await until(lambda: mute_upstream.open == 0 and proxy.open_connections == 0)
    writer.close()
    [done] = events(logs, "egress")
    assert done["end"] == "idle"


async def test_a_tunnel_that_keeps_talking_is_closed_at_its_lifetime(proxies: StartProxy, upstream: Upstream) -> None:
    proxy = await proxies(limits=Limits(idle_timeout=5, lifetime=0.3))
    reader, writer = await tunnel(proxy, upstream.port)

    async def chatter() -> None:  # never idle
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.02)

    with structlog.testing.capture_logs() as logs:
        talking = asyncio.ensure_future(chatter())
        try:
            echoed = await until_closed(reader)
        finally:
            talking.cancel()
            writer.close()
        await until(lambda: upstream.open == 0 and proxy.open_connections == 0)
    assert echoed and set(echoed) == {ord("x")}
    [done] = events(logs, "egress")
    assert done["end"] == "lifetime"


async def test_a_client_that_never_reads_is_cut_when_nothing_moves(proxies: StartProxy,
                                                                   flooding_upstream: Upstream) -> None:
    proxy = await proxies(limits=Limits(idle_timeout=0.2), allow=[f"{NAME}:{flooding_upstream.port}"])
    _, writer = await tunnel(proxy, flooding_upstream.port)  # and never read again: the proxy's writes back up
    await until(lambda: flooding_upstream.open == 0 and proxy.open_connections == 0)
    writer.close()


async def test_reaching_an_upstream_has_one_deadline_for_all_its_addresses(proxies: StartProxy, names: Names,
                                                                           blackhole: int) -> None:
    names["many.test"] = ["127.0.0.1"] * 100  # each one hangs: 100 tries of the whole timeout each, before
    proxy = await proxies(limits=Limits(connect_timeout=0.2), allow=[f"many.test:{blackhole}"])
    answer = await ask(proxy, f"CONNECT many.test:{blackhole} HTTP/1.1\r\n\r\n".encode())
    assert status(answer) == 504 and b"cannot be reached in 0.2 s" in answer


async def test_a_name_that_does_not_resolve_in_time_is_a_504(proxies: StartProxy, names: Names) -> None:
    async def never() -> list[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    names["slow.test"] = never
    proxy = await proxies(limits=Limits(resolve_timeout=0.2), allow=["slow.test:443"])
    answer = await ask(proxy, b"CONNECT slow.test:443 HTTP/1.1\r\n\r\n")
    assert status(answer) == 504 and b"slow.test does not resolve in 0.2 s" in answer


async def test_a_session_resolves_a_few_names_at_once(proxies: StartProxy, names: Names) -> None:
    running, most, answered = 0, 0, asyncio.Event()

    async def slow() -> list[str]:  # a lookup that ends when the test says so
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await answered.wait()
        finally:
            running -= 1
        return ["127.0.0.1"]

    names.update({f"n{i}.wild.test": slow for i in range(6)})
    proxy = await proxies(limits=Limits(lookups=2), allow=["*.wild.test:9"])
    asking = [asyncio.ensure_future(ask(proxy, f"CONNECT n{i}.wild.test:9 HTTP/1.1\r\n\r\n".encode()))
              for i in range(6)]
    await until(lambda: running == 2)
    await asyncio.sleep(0.2)  # time for the other four to start theirs, if they could
    assert most == 2
    answered.set()
    assert [status(answer) for answer in await asyncio.gather(*asking)] == [502] * 6  # nothing listens on port 9


# ---------------------------------------------------------------- connections


async def test_a_session_past_its_connection_limit_is_answered_429(proxies: StartProxy, upstream: Upstream) -> None:
    proxy = await proxies(limits=Limits(connections=2))
    tunnels = [await tunnel(proxy, upstream.port) for _ in range(2)]
    with structlog.testing.capture_logs() as logs:
        answer = await ask(proxy, f"CONNECT {NAME}:{upstream.port} HTTP/1.1\r\n\r\n".encode())
    assert status(answer) == 429 and b"this session has 2 connections open already" in answer
    [denied] = events(logs, "egress_denied")
    assert (denied["session_id"], denied["status"]) == ("s1", 429)
    _, writer = tunnels.pop()
    writer.close()
    await until(lambda: proxy.open_connections == 1)
    tunnels.append(await tunnel(proxy, upstream.port))  # a place is free again
    for _, writer in tunnels:
        writer.close()


async def test_sessions_past_the_servers_connection_limit_are_answered_503(proxies: StartProxy,
                                                                          upstream: Upstream) -> None:
    budget = Budget(connections=3)
    first, second = [await proxies(session_id=sid, budget=budget) for sid in ("s1", "s2")]
    tunnels = [await tunnel(proxy, upstream.port) for proxy in (first, first, second)]
    with structlog.testing.capture_logs() as logs:
        answer = await ask(second, f"CONNECT {NAME}:{upstream.port} HTTP/1.1\r\n\r\n".encode())
    assert status(answer) == 503 and b"the proxy has 3 connections open" in answer
    [denied] = events(logs, "egress_denied")
    assert (denied["session_id"], denied["status"]) == ("s2", 503)
    _, writer = tunnels.pop(0)
    writer.close()
    await until(lambda: first.open_connections == 1)
    tunnels.append(await tunnel(second, upstream.port))  # the first session's place went back to all
    for _, writer in tunnels:
        writer.close()
    budget.close()


def test_serve_raises_its_open_file_limit_to_the_hard_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The proxies' budget is a share of the server's descriptors: `orsbox serve` takes all it may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, hard // 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))

    def locked(*args: Any, **kwargs: Any) -> Any:  # serve stops here, before it listens
        raise InstanceLocked("held in this test", pid=None, path=tmp_path)

    monkeypatch.setattr(cli.InstanceLock, "acquire", locked)
    options = dict.fromkeys(["host", "port", "policies_dir", "default_environment", "idle_timeout", "environments",
                             "max_sessions", "keep_sessions", "adopt", "keys_file", "auth", "image_patterns",
                             "label_policies", "config_file"])
    try:
        with pytest.raises(InstanceLocked):
            cli.serve_command(argparse.Namespace(state_dir=tmp_path, **options))
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------- requests


async def test_a_plain_request_whose_host_header_names_another_host_never_leaves(proxies: StartProxy,
                                                                                 upstream: Upstream) -> None:
    proxy = await proxies()
    with structlog.testing.capture_logs() as logs:
        answer = await ask(proxy, f"GET http://{NAME}:{upstream.port}/ HTTP/1.1\r\nHost: intranet.test\r\n\r\n"
                                  .encode())
    assert status(answer) == 400 and b"the Host header (intranet.test)" in answer
    assert upstream.received == []
    [denied] = events(logs, "egress_denied")
    assert (denied["status"], denied["host"]) == (400, NAME)


async def test_a_head_past_the_limit_is_a_431(proxies: StartProxy) -> None:
    proxy = await proxies()
    answer = await ask(proxy, b"GET http://upstream.test/ HTTP/1.1\r\nX: " + b"a" * egress.HEAD_LIMIT + b"\r\n\r\n")
    assert status(answer) == 431


async def test_a_failure_of_the_proxy_itself_is_logged_and_ends_the_connection(
        proxies: StartProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(head: bytes) -> egress.Request:
        raise RuntimeError("a bug")

    monkeypatch.setattr(egress, "parse_request", broken)
    proxy = await proxies()
    with structlog.testing.capture_logs() as logs:
        assert await ask(proxy, b"CONNECT upstream.test:443 HTTP/1.1\r\n\r\n") == b""
    [error] = events(logs, "egress_error")
    assert (error["session_id"], error["error"]) == ("s1", "RuntimeError: a bug")
    assert proxy.open_connections == 0


# ---------------------------------------------------------------- logs


async def test_what_the_session_wrote_is_logged_clipped_and_escaped(proxies: StartProxy, upstream: Upstream) -> None:
    proxy = await proxies()
    long_name = "a" * 20000 + ".test"
    with structlog.testing.capture_logs() as logs:
        await ask(proxy, f"CONNECT {long_name}:443 HTTP/1.1\r\n\r\n".encode())
        await ask(proxy, f"GET http://{NAME}:{upstream.port}/ HTTP/1.1\r\nHost: \x9b31mred\r\n\r\n".encode("latin-1"))
    long, escaped = events(logs, "egress_denied")
    assert len(long["host"]) < 1000 and long["host"].startswith("aaaa") and "+19" in long["host"]
    assert len(long["reason"]) < 1000
    assert "\x9b" not in escaped["reason"] and "\\x9b31mred" in escaped["reason"]


async def test_a_session_denied_again_and_again_is_logged_once_then_counted(proxies: StartProxy) -> None:
    proxy = await proxies(limits=Limits(denial_interval=3600))
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):
            assert status(await ask(proxy, b"CONNECT elsewhere.test:443 HTTP/1.1\r\n\r\n")) == 403
        assert [event["count"] for event in events(logs, "egress_denied")] == [1]
        await proxy.close()  # the end of an interval, early
    _, rest = events(logs, "egress_denied")
    assert (rest["host"], rest["status"], rest["count"]) == ("elsewhere.test", 403, 49)
    assert "not in this session's allowlist" in rest["reason"]


async def test_denials_of_many_hosts_are_counted_together_past_a_few(proxies: StartProxy) -> None:
    proxy = await proxies(limits=Limits(denial_interval=3600))
    with structlog.testing.capture_logs() as logs:
        for i in range(MAX_DENIAL_SUBJECTS + 30):
            await ask(proxy, f"CONNECT host-{i}.test:443 HTTP/1.1\r\n\r\n".encode())
        assert len(events(logs, "egress_denied")) == MAX_DENIAL_SUBJECTS
        await proxy.close()
    *_, others = events(logs, "egress_denied")
    assert (others["host"], others["count"]) == (None, 30) and "other hosts" in others["reason"]


def test_the_denial_log_says_once_per_interval_how_often_a_denial_went_on() -> None:
    denials = DenialLog("s1", interval=60)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            denials.denied(status=403, reason="no", method="CONNECT", host="a.test", port=443)
        denials.flush()  # an interval ends: one line for the two since
        denials.denied(status=403, reason="no", method="CONNECT", host="a.test", port=443)
        denials.flush()  # it went on: one more
        denials.flush()  # a quiet interval: forgotten, nothing logged
        denials.denied(status=403, reason="no", method="CONNECT", host="a.test", port=443)  # logged at once again
    assert [event["count"] for event in logs] == [1, 2, 1, 1]
