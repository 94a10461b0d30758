"""Fixtures: a real orsbox app on the real Docker engine, an ORS test client over it, and the leak check.

Every container and session network a test run starts carries `orsbox.node=<this run's node id>`;
after each test none may remain, nor any orsbox firewall rule whose network is gone (a leak is a test failure).
The helpers they use are in tests/support/: `ors` (the ORS client), `managed` (what a run left), `run` (its ids).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orsbox.api import create_app
from orsbox.config import Config

from .support.managed import dangling_firewall_rules, managed_containers, managed_networks
from .support.ors import Ors
from .support.run import ADMIN_KEY, API_KEY, AUTH, NODE_ID, ROOT
from .support.server import OrsboxProcess


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # any failure means: no engine
        pytest.exit(f"the Docker engine does not answer: {exc}", returncode=2)
    yield client
    client.close()


# orwdemo vendors openreward's wheels with the host's pip (PyPI) when built
TEST_IMAGES = ["bash", "orwdemo", "python", "coding"]


@pytest.fixture(scope="session")
def images(engine: docker.DockerClient) -> None:
    """The example images, built if missing (skipped in well under a second when current)."""
    from orsbox.images import build_images

    build_images(ROOT / "images", TEST_IMAGES, client=engine, progress=lambda line: None)


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    """Short (agent socket paths are capped at 108 bytes) and shared, so the catalog cache is reused."""
    path = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_leaked_containers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test if any container or session network of this run outlives it, or any orsbox firewall
    rule its network (and removes them)."""
    yield
    if "engine" not in request.fixturenames:
        return
    engine: docker.DockerClient = request.getfixturevalue("engine")
    leaked = managed_containers(engine)
    for container in leaked:
        container.remove(force=True, v=True)
    networks = managed_networks(engine)
    for network in networks:
        network.remove()
    rules = dangling_firewall_rules(engine)
    if rules:  # another run's network may be between its removal and its rules': look again
        time.sleep(1)
        rules = [rule for rule in dangling_firewall_rules(engine) if rule in rules]
    for rule in rules:
        subprocess.run(["sh", "-c", f"iptables -w {rule.replace('-A', '-D', 1)}"], check=False)
    assert not leaked, f"leaked containers: {[c.name for c in leaked]}"
    assert not networks, f"leaked networks: {[n.name for n in networks]}"
    assert not rules, f"leaked firewall rules: {rules}"


@pytest.fixture
def aiohttp_client(aiohttp_client: Any) -> Any:
    """pytest-aiohttp's client, sending the run's API key unless a test passes `headers` of its own."""
    async def client(app: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", AUTH)
        return await aiohttp_client(app, **kwargs)
    return client


@pytest.fixture
def config(state_dir: Path, images: None) -> Config:
    return Config(state_dir=state_dir, node_id=NODE_ID, policies_dir=ROOT / "sandbox_policies",
                  shutdown_timeout=20, api_keys=[API_KEY], admin_keys=[ADMIN_KEY], pull_images=False)


@pytest.fixture
async def ors(aiohttp_client: Any, config: Config, engine: docker.DockerClient) -> AsyncIterator[Ors]:
    client = await aiohttp_client(create_app(config))
    yield Ors(client)
    await client.close()



@pytest.fixture
def server_factory(state_dir: Path, images: None, engine: docker.DockerClient,
                   tmp_path: Path) -> Iterator[Any]:
    """`orsbox serve ARGS` as processes of their own (each logging to a file of its own); all stopped after."""
    started: list[OrsboxProcess] = []

    def make(*args: str) -> OrsboxProcess:
        server = OrsboxProcess(state_dir=state_dir, node_id=NODE_ID, log_path=tmp_path / f"server{len(started)}.log",
                               args=args)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()
