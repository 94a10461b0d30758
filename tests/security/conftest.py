"""Helpers for the attack suite: the agent's pid as a shell expression, custom policy folders, runsc,
and test servers on Docker networks of the tests' own (the only network targets the suite ever uses)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from orsbox.api import create_app
from orsbox.backends.docker.settings import RUNSC_RUNTIMES
from orsbox.backends.network.networks import Firewall
from orsbox.config import Config

from ..support.managed import session_containers
from ..support.ors import Ors
from ..support.run import ROOT

#: The agent's pid, from inside the container (root's python3; pid 1 is docker-init, commands are never root).
AGENT_PID = "$(pgrep -o -u root -f '^python3 .*orsbox[.]agent')"


@pytest.fixture
def policies(tmp_path: Path, config: Config) -> Callable[..., Config]:
    """`policies(bash='runtime = "runsc"')`: the config with a copy of the shipped policies plus these files."""

    def make(**files: str) -> Config:
        folder = tmp_path / "policies"
        shutil.copytree(ROOT / "sandbox_policies", folder, dirs_exist_ok=True)
        for name, text in files.items():
            (folder / f"{name}.toml").write_text(text)
        return config.model_copy(update={"policies_dir": folder})

    return make


@pytest.fixture(scope="session")
def runsc(engine: docker.DockerClient) -> None:
    """Skips (saying why) where the engine has no orsbox runsc runtime; ./scripts/test registers it."""
    runtimes = engine.info().get("Runtimes") or {}
    if RUNSC_RUNTIMES["none"] not in runtimes:
        pytest.skip(f"gVisor is not available: the Docker engine has no {RUNSC_RUNTIMES['none']!r} runtime "
                    f"(it has {sorted(runtimes)}); ./scripts/test installs runsc and registers it when run as root")


@pytest.fixture(scope="session")
def runsc_on_networks(engine: docker.DockerClient, runsc: None) -> None:
    """Skips where the engine lacks the runsc runtime for containers on a Docker network."""
    name = RUNSC_RUNTIMES["full"]
    if name not in (engine.info().get("Runtimes") or {}):
        pytest.skip(f"gVisor on a Docker network needs the runtime {name!r} (runsc --network=host); "
                    "./scripts/test registers it when run as root")


@pytest.fixture(params=["runc", "runsc"])
def runtime(request: pytest.FixtureRequest) -> str:
    """Every attack is tried on runc and on gVisor (runsc, skipped where the engine lacks it)."""
    if request.param == "runsc":
        request.getfixturevalue("runsc")
    return str(request.param)


@pytest.fixture
async def ors(runtime: str, aiohttp_client: Any, config: Config, engine: docker.DockerClient,
              policies: Callable[..., Config]) -> AsyncIterator[Ors]:
    """The ORS client of tests/conftest.py, with the bash environment on `runtime`."""
    if runtime == "runsc":
        config = policies(bash='runtime = "runsc"\n')
    client = await aiohttp_client(create_app(config))
    yield Ors(client)
    await client.close()


# ---------------------------------------------------------------- network modes

TEST_LABELS = {"orsbox.test": "1"}
METADATA_IP = "169.254.169.254"
METADATA_GATEWAY = "169.254.169.1"


@dataclass(frozen=True)
class NetServer:
    """`python3 -m http.server 80` in a container of its own on a Docker network the tests made."""

    network: str
    subnet: str
    gateway: str  # the host's address on that network
    ip: str  # the server's


def start_test_server(engine: docker.DockerClient, *, internal: bool = False, subnet: str | None = None,
                      gateway: str | None = None, ip: str | None = None) -> NetServer:
    """A labelled network (a subnet Docker picks, unless given) and a server on it, answering before this returns."""
    name = f"orsbox-test-{uuid.uuid4().hex[:8]}"
    ipam = None
    if subnet:
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=gateway)])
    network = engine.networks.create(name, driver="bridge", internal=internal, labels=TEST_LABELS, ipam=ipam)
    try:
        server = engine.containers.create("orsbox/base", ["python3", "-m", "http.server", "80"], name=name,
                                          labels=TEST_LABELS, network=name, detach=True)
        if ip:
            network.disconnect(server)
            network.connect(server, ipv4_address=ip)
        server.start()
        network.reload()
        config = network.attrs["IPAM"]["Config"][0]
        server.reload()
        address = server.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
        _wait_until_it_answers(engine, name, address)
    except BaseException:
        stop_test_server(engine, name)
        raise
    return NetServer(name, config["Subnet"], config["Gateway"], address)


def _subnet_taken(engine: docker.DockerClient, subnet: str) -> bool:
    return any(config.get("Subnet") == subnet for network in engine.api.networks()
               for config in (network.get("IPAM") or {}).get("Config") or [])


def stop_test_server(engine: docker.DockerClient, name: str) -> None:
    try:
        engine.containers.get(name).remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    try:
        engine.networks.get(name).remove()
    except docker.errors.NotFound:
        pass


def _wait_until_it_answers(engine: docker.DockerClient, network: str, address: str) -> None:
    """The control: a container on that network reaches the server (so a session's failure means something)."""
    probe = f"import urllib.request; print(urllib.request.urlopen('http://{address}/', timeout=2).status)"
    deadline = time.monotonic() + 20
    while True:
        try:
            out = engine.containers.run("orsbox/base", ["python3", "-c", probe], labels=TEST_LABELS,
                                        network=network, remove=True)
            assert out.decode().strip() == "200"
            return
        except docker.errors.ContainerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


METADATA_SUBNET = "169.254.169.0/24"
SUBNET_WAIT = 300.0  # s to wait for another test run (sharing the engine) to give the metadata subnet back


@pytest.fixture(scope="module")
def metadata_server(engine: docker.DockerClient, images: None) -> Iterator[NetServer]:
    """An HTTP server at 169.254.169.254:80 (the cloud metadata address) on an internal network of its own."""
    deadline = time.monotonic() + SUBNET_WAIT
    while _subnet_taken(engine, METADATA_SUBNET):
        if time.monotonic() > deadline:
            pytest.fail(f"another network holds {METADATA_SUBNET} (a concurrent test run?) after {SUBNET_WAIT:.0f} s")
        time.sleep(1)
    server = start_test_server(engine, internal=True, subnet=METADATA_SUBNET, gateway=METADATA_GATEWAY,
                               ip=METADATA_IP)
    yield server
    stop_test_server(engine, server.network)


@pytest.fixture(scope="module")  # not session: an engine restart (tests/test_chaos.py) stops containers
def web_server(engine: docker.DockerClient, images: None) -> Iterator[NetServer]:
    """An HTTP server on a (non-internal) test network: the host the allowlist tests let sessions reach."""
    server = start_test_server(engine)
    yield server
    stop_test_server(engine, server.network)


@pytest.fixture(scope="module")
def other_server(engine: docker.DockerClient, images: None) -> Iterator[NetServer]:
    """Another HTTP server on another test network: the host no allowlist names."""
    server = start_test_server(engine)
    yield server
    stop_test_server(engine, server.network)


@pytest.fixture(scope="session")
def firewall() -> None:
    """Skips where orsbox cannot set iptables rules (network modes other than none need them)."""
    problem = Firewall.problem()
    if problem:
        pytest.skip(problem)


def orsbox_rules(network: str | None = None) -> list[str]:
    """orsbox's iptables rules (of `network`, or all), as iptables-save prints them."""
    out = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True).stdout
    mark = f'"orsbox:{network}"' if network else '"orsbox:'
    return [line for line in out.splitlines() if mark in line]


@pytest.fixture
def network_app(request: pytest.FixtureRequest, runtime: str, aiohttp_client: Any, policies: Callable[..., Config],
                firewall: None) -> Callable[[str], Awaitable[Ors]]:
    """`await network_app('network = "full"')`: an app whose bash environment has that policy, on `runtime`."""
    if runtime == "runsc":
        request.getfixturevalue("runsc_on_networks")

    async def make(policy: str) -> Ors:
        text = policy + ('\nruntime = "runsc"\n' if runtime == "runsc" else "\n")
        return Ors(await aiohttp_client(create_app(policies(bash=text))))

    return make


@pytest.fixture
async def host_listener() -> AsyncIterator[Callable[[str], Awaitable[int]]]:
    """`port = await host_listener(address)`: a TCP server of the host on `address` (accepts, then closes)."""
    servers: list[asyncio.Server] = []

    async def listen(address: str) -> int:
        async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(close, host=address, port=0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield listen
    for server in servers:
        server.close()
        await server.wait_closed()


async def reaches_from_the_host(address: str, port: int) -> bool:
    """The control for a listener: the host itself does reach it."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 3)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def gateway_of(engine: docker.DockerClient, sid: str) -> str:
    """The host's address on the session's own network (its gateway, where the proxy listens); once set up."""
    [container] = session_containers(engine, sid)
    [network] = container.attrs["NetworkSettings"]["Networks"].values()
    return str(network["Gateway"])


def listening(address: str, port: int) -> bool:
    """Whether a TCP socket of this host listens on address:port (read from /proc: no packet sent)."""
    wanted = f"{int.from_bytes(socket.inet_aton(address), 'little'):08X}:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in lines)  # 0A: LISTEN
