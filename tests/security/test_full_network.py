"""Network "full": a network of its own with egress, but not to the host, link-local addresses, other sessions.

Docker already keeps its bridge networks apart, so to show what orsbox's own rules do the tests play an
operator who lets orsbox's sessions reach the test networks (ACCEPT rules in DOCKER-USER, added before
the sessions): the other test server is then reached (egress works), while the metadata server, the
host's addresses (also through a published port) and another session stay unreachable, because
orsbox's rules come first.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import docker
import pytest

from orsbox.backends.network.modes import SESSION_SUBNET_POOL

from ..support.managed import session_containers
from ..support.ors import Ors
from ..support.run import RUN_ID
from .conftest import TEST_LABELS, NetServer, gateway_of, reaches_from_the_host
from .probe import parse, probe_command

pytestmark = pytest.mark.docker


@pytest.fixture
def operator_accepts(firewall: None, other_server: NetServer, metadata_server: NetServer) -> Iterator[None]:
    """DOCKER-USER rules that let orsbox's sessions reach both test networks and each other (and answers
    come back): without orsbox's own rules, all of it would then be reached."""
    mark = ["-m", "comment", "--comment", f"orsbox-test:{RUN_ID}"]
    rules = [["-s", SESSION_SUBNET_POOL, "-d", other_server.subnet, *mark, "-j", "ACCEPT"],
             ["-s", SESSION_SUBNET_POOL, "-d", metadata_server.subnet, *mark, "-j", "ACCEPT"],
             ["-s", SESSION_SUBNET_POOL, "-d", SESSION_SUBNET_POOL, *mark, "-j", "ACCEPT"],
             ["-d", SESSION_SUBNET_POOL, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", *mark, "-j", "ACCEPT"]]
    for rule in rules:
        subprocess.run(["iptables", "-w", "-I", "DOCKER-USER", "1", *rule], check=True)
    yield
    for rule in rules:
        subprocess.run(["iptables", "-w", "-D", "DOCKER-USER", *rule], check=True)


@pytest.fixture
def published_server(engine: docker.DockerClient, other_server: NetServer) -> Iterator[tuple[str, int]]:
    """A server on the other test network, published on the host's address there: (address, port)."""
    container = engine.containers.run("orsbox/base", ["python3", "-m", "http.server", "80"], labels=TEST_LABELS,
                                      name=f"orsbox-test-{uuid.uuid4().hex[:8]}", network=other_server.network,
                                      ports={"80/tcp": (other_server.gateway, None)}, detach=True)
    try:
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
        yield other_server.gateway, port
    finally:
        container.remove(force=True, v=True)


def address_of(engine: docker.DockerClient, sid: str) -> str:
    [container] = session_containers(engine, sid)
    [network] = container.attrs["NetworkSettings"]["Networks"].values()
    return str(network["IPAddress"])


async def test_full_egress_reaches_out_but_not_the_host_metadata_or_other_sessions(
    network_app: Callable[[str], Awaitable[Ors]], engine: docker.DockerClient, operator_accepts: None,
    other_server: NetServer, metadata_server: NetServer, published_server: tuple[str, int],
    host_listener: Callable[[str], Awaitable[int]],
) -> None:
    ors = await network_app('network = "full"')
    first, second = await ors.new_session(), await ors.new_session(index=1)
    await ors.prompt(first)
    await ors.prompt(second)
    server = await ors.bash(second, "python3 -m http.server 8000 >/dev/null 2>&1 &")  # the persistent shell keeps it
    assert server.output["metadata"]["exit_code"] == 0
    neighbour, gateway = address_of(engine, second), gateway_of(engine, first)
    on_gateway, on_other_gateway = await host_listener(gateway), await host_listener(other_server.gateway)
    assert await reaches_from_the_host(gateway, on_gateway)
    assert await reaches_from_the_host(other_server.gateway, on_other_gateway)
    steps: list[list[Any]] = [
        ["get", f"http://{other_server.ip}/"],  # 0: egress, where the operator lets it go
        ["direct", metadata_server.ip, 80],  # 1: the metadata address, though the operator lets it through
        ["direct", gateway, on_gateway],  # 2: the host, on the session's own network
        ["direct", other_server.gateway, on_other_gateway],  # 3: the host, by its address on another network
        ["direct", *published_server],  # 4: a port the host publishes (DNAT to a container)
        ["direct", neighbour, 8000],  # 5: another session
    ]
    results = parse((await ors.bash(first, probe_command(steps), timeout=60)).text)
    assert results[0] == 200
    assert results[1:] == ["timed out"] * 5
    control = await ors.bash(second, probe_command([["get", "http://127.0.0.1:8000/"]]))
    assert parse(control.text) == [200]  # the neighbour's server is up: the session just cannot reach it
    routes = await ors.bash(first, "python3 -c 'import socket; print(*sorted(n for _, n in socket.if_nameindex()))'; "
                                   "tail -n +2 /proc/net/route | awk '$2 == \"00000000\"' | wc -l")
    assert routes.text == "eth0 lo\n1\n"  # an interface and a default route, unlike "none"
    for sid in (first, second):
        await ors.delete(sid)
