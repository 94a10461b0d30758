"""Session networks, their firewall rules and proxies never outlive their session: delete, shutdown, crash
and restart (an adopted allowlist session gets its proxy back), and whatever a crash left behind."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import docker
import pytest

from orsbox.api import create_app
from orsbox.api.keys import SESSIONS
from orsbox.backends.network.modes import PROXY_PORT
from orsbox.config import Config

from ..support.managed import managed_containers, managed_networks, session_containers
from ..support.ors import CallResult, Ors, parse_sse
from ..support.run import NODE_ID
from ..support.server import OrsboxProcess
from .conftest import NetServer, gateway_of, listening, orsbox_rules
from .probe import parse, probe_command

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("firewall")]


def session_networks(engine: docker.DockerClient, sid: str) -> list[Any]:
    return engine.networks.list(filters={"label": [f"orsbox.session={sid}", f"orsbox.node={NODE_ID}"]})


@pytest.mark.parametrize("runtime", ["runc"])
@pytest.mark.parametrize("mode", ["allowlist", "full"])
async def test_delete_removes_the_network_its_rules_and_its_proxy(
    mode: str, network_app: Callable[[str], Awaitable[Ors]], engine: docker.DockerClient, web_server: NetServer,
) -> None:
    allow = f'\nallow = ["{web_server.ip}:80"]' if mode == "allowlist" else ""
    ors = await network_app(f'network = "{mode}"{allow}')
    sid = await ors.new_session()
    await ors.prompt(sid)
    [container] = session_containers(engine, sid)
    [network] = session_networks(engine, sid)
    assert network.name == container.name
    labels = network.attrs["Labels"]
    assert labels["orsbox.managed"] == "1" and labels["orsbox.role"] == "network" and labels["orsbox.network"] == mode
    assert network.attrs["Internal"] is (mode == "allowlist")
    assert network.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert len(orsbox_rules(network.name)) == (5 if mode == "allowlist" else 4)
    gateway = gateway_of(engine, sid)
    assert listening(gateway, PROXY_PORT) is (mode == "allowlist")
    await ors.delete(sid)
    assert session_networks(engine, sid) == [] and orsbox_rules(network.name) == []
    assert not listening(gateway, PROXY_PORT)


@pytest.mark.parametrize("runtime", ["runc"])
async def test_shutdown_removes_every_network_and_rule(
    runtime: str, aiohttp_client: Any, policies: Callable[..., Config], engine: docker.DockerClient,
    web_server: NetServer,
) -> None:
    config = policies(bash=f'network = "allowlist"\nallow = ["{web_server.ip}:80"]\n')
    client = await aiohttp_client(create_app(config))
    ors = Ors(client)
    sids = [await ors.new_session(), await ors.new_session(index=1)]
    await asyncio.gather(*(ors.prompt(sid) for sid in sids))
    names = [network.name for network in managed_networks(engine)]
    assert len(names) == 2 and all(orsbox_rules(name) for name in names)
    await client.close()
    assert managed_networks(engine) == [] and managed_containers(engine) == []
    assert [rule for name in names for rule in orsbox_rules(name)] == []


@pytest.fixture
def server_factory(server_factory: Callable[..., OrsboxProcess], policies: Callable[..., Config],
                   web_server: NetServer) -> Callable[..., OrsboxProcess]:
    """orsbox as a process of its own, its bash environment on an allowlist naming `web_server`."""
    folder = policies(bash=f'network = "allowlist"\nallow = ["{web_server.ip}:80"]\n').policies_dir
    return lambda *args: server_factory("--policies", str(folder), *args)


async def fetch_through_the_proxy(http: aiohttp.ClientSession, sid: str, url: str) -> Any:
    response = await http.post("/bash/call", json={"name": "bash", "input": {"command": probe_command([["get", url]])}},
                               headers={"X-Session-ID": sid})
    raw = await response.read()
    return parse(CallResult(response.status, parse_sse(raw), raw).text)


async def test_an_adopted_allowlist_session_gets_its_proxy_back_after_a_crash(
    server_factory: Callable[..., OrsboxProcess], engine: docker.DockerClient, web_server: NetServer,
) -> None:
    first = server_factory()
    sid = str(uuid.uuid4())
    async with first.client() as http:
        created = await http.post("/create", json={"env_name": "bash", "split": "train", "index": 0},
                                  headers={"X-Session-ID": sid})
        assert created.status == 200
        assert await fetch_through_the_proxy(http, sid, f"http://{web_server.ip}/") == [200]
    [network] = session_networks(engine, sid)
    rules = orsbox_rules(network.name)
    gateway = gateway_of(engine, sid)
    assert listening(gateway, PROXY_PORT)
    first.signal(signal.SIGKILL)
    assert not listening(gateway, PROXY_PORT)  # the proxy died with its process...
    assert orsbox_rules(network.name) == rules  # ...the network and its rules did not

    second = server_factory()
    assert '"session_adopted"' in second.log()
    async with second.client() as http:
        assert await fetch_through_the_proxy(http, sid, f"http://{web_server.ip}/") == [200]
    second.signal(signal.SIGKILL)

    server_factory("--no-adopt")  # a start that adopts nothing removes the container, its network and rules
    assert session_containers(engine, sid) == [] and session_networks(engine, sid) == []
    assert orsbox_rules(network.name) == []


async def test_networks_and_rules_a_crash_left_are_swept_at_start(
    aiohttp_client: Any, config: Config, engine: docker.DockerClient,
) -> None:
    """A crash between making a network and its container, and rules whose network is gone."""
    orphan = engine.networks.create(f"orsbox-{uuid.uuid4().hex[:12]}", driver="bridge", internal=True, labels={
        "orsbox.managed": "1", "orsbox.node": NODE_ID, "orsbox.session": "ghost", "orsbox.role": "network"})
    gone = f"orsbox-{uuid.uuid4().hex[:12]}-gone"
    for name in (orphan.name, gone):
        subprocess.run(["iptables", "-w", "-I", "DOCKER-USER", "1", "-i", "ob-nonexistent", "-m", "comment",
                        "--comment", f"orsbox:{name}", "-j", "DROP"], check=True)
    client = await aiohttp_client(create_app(config))
    try:
        assert managed_networks(engine) == []
        assert orsbox_rules(orphan.name) == [] and orsbox_rules(gone) == []
    finally:
        await client.close()


@pytest.mark.parametrize("runtime", ["runc"])
async def test_the_sweep_puts_back_rules_someone_removed(
    network_app: Callable[[str], Awaitable[Ors]], engine: docker.DockerClient,
) -> None:
    """A firewall reload (or an operator) flushed the rules of a live session: the next sweep restores them."""
    ors = await network_app('network = "full"')
    sid = await ors.new_session()
    await ors.prompt(sid)
    [network] = session_networks(engine, sid)
    rules = orsbox_rules(network.name)
    for rule in rules:
        subprocess.run(["sh", "-c", f"iptables -w {rule.replace('-A', '-D', 1)}"], check=True)
    assert orsbox_rules(network.name) == []
    await ors.http.app[SESSIONS].sweep()
    assert orsbox_rules(network.name) == rules
    await ors.delete(sid)
    assert orsbox_rules(network.name) == []
