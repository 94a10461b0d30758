"""Fixtures: a real orsbox app on the real Docker engine, an ORS test client, and the leak check.

Every container and session network a test run starts carries `orsbox.node=<this run's node id>`;
after each test none may remain, nor any orsbox firewall rule whose network is gone (a leak is a test failure).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from aiohttp.test_utils import TestClient

from orsbox.api import create_app
from orsbox.config import Config

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = uuid.uuid4().hex[:8]
NODE_ID = f"test-{RUN_ID}"


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


def managed_containers(engine: docker.DockerClient) -> list[Any]:
    return engine.containers.list(all=True, filters={"label": ["orsbox.managed=1", f"orsbox.node={NODE_ID}"]})


def managed_networks(engine: docker.DockerClient) -> list[Any]:
    return engine.networks.list(filters={"label": ["orsbox.managed=1", f"orsbox.node={NODE_ID}"]})


def dangling_firewall_rules(engine: docker.DockerClient) -> list[str]:
    """orsbox's iptables rules (any node's) whose network is gone, as iptables-save prints them."""
    if shutil.which("iptables-save") is None or os.geteuid() != 0:
        return []
    out = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True).stdout
    rules = {line: match.group(1) for line in out.splitlines()
             if (match := re.search(r'--comment "?orsbox:([^"\s]+)', line))}
    networks = {network.name for network in engine.networks.list()} if rules else set()
    return [line for line, network in rules.items() if network not in networks]


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
def config(state_dir: Path, images: None) -> Config:
    return Config(state_dir=state_dir, node_id=NODE_ID, policies_dir=ROOT / "sandbox_policies",
                  shutdown_timeout=20)


@dataclass
class CallResult:
    """A parsed `/call` SSE answer."""

    status: int
    events: list[tuple[str, str]]
    raw: bytes

    @property
    def task_id(self) -> str | None:
        return next((data for event, data in self.events if event == "task_id"), None)

    @property
    def result(self) -> dict[str, Any]:
        """The reassembled result JSON (chunks + end)."""
        parts = [data for event, data in self.events if event in ("chunk", "end")]
        assert parts and self.events[-1][0] == "end", f"no end event: {self.events}"
        return dict(json.loads("".join(parts)))

    @property
    def output(self) -> dict[str, Any]:
        result = self.result
        assert result["ok"], result
        return dict(result["output"])

    @property
    def text(self) -> str:
        return "".join(block["text"] for block in self.output["blocks"] if block["type"] == "text")


def parse_sse(raw: bytes) -> list[tuple[str, str]]:
    """Events as (name, data); comments dropped; multiple data lines joined with \\n."""
    events = []
    for block in raw.decode().split("\r\n\r\n"):
        event, data = None, []
        for line in block.split("\r\n"):
            if line.startswith(":") or not line:
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        if event is not None:
            events.append((event, "\n".join(data)))
    return events


class Ors:
    """A thin ORS client over the aiohttp test client."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.http = client

    async def new_session(self, env: str = "bash", **body: Any) -> str:
        sid = str(uuid.uuid4())
        if "task_spec" not in body and "split" not in body:
            body.update(split="train", index=0)
        response = await self.http.post("/create", json={"env_name": env, **body}, headers={"X-Session-ID": sid})
        assert response.status == 200, await response.text()
        assert await response.json() == {"sid": sid}
        return sid

    async def call(self, sid: str, name: str, tool_input: dict[str, Any] | None = None,
                   env: str = "bash", **extra: Any) -> CallResult:
        body = {"name": name, "input": {} if tool_input is None else tool_input, **extra}
        response = await self.http.post(f"/{env}/call", json=body, headers={"X-Session-ID": sid})
        raw = await response.read()
        return CallResult(response.status, parse_sse(raw) if response.status == 200 else [], raw)

    async def bash(self, sid: str, command: str, **tool_input: Any) -> CallResult:
        return await self.call(sid, "bash", {"command": command, **tool_input})

    async def prompt(self, sid: str) -> Any:
        response = await self.http.get("/bash/prompt", headers={"X-Session-ID": sid})
        assert response.status == 200, await response.text()
        return await response.json()

    async def delete(self, sid: str) -> None:
        response = await self.http.post("/delete", headers={"X-Session-ID": sid})
        assert response.status == 200, await response.text()
        assert await response.json() == {"sid": sid}


@pytest.fixture
async def ors(aiohttp_client: Any, config: Config, engine: docker.DockerClient) -> AsyncIterator[Ors]:
    client = await aiohttp_client(create_app(config))
    yield Ors(client)
    await client.close()


def session_containers(engine: docker.DockerClient, sid: str) -> list[Any]:
    return engine.containers.list(all=True, filters={"label": [f"orsbox.session={sid}", f"orsbox.node={NODE_ID}"]})
