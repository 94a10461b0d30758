"""orsbox deployed as deploy/compose.yaml says: brought up with the machine's docker-compose, an episode run
through it, taken down.

The deployment has a node id, state dir, config dir (its keys file), port, compose project and image tag of its
own; the module removes all of them, and checks that no container of its node is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from orsbox.images.deploy import prepare

from .support.ors import Ors
from .support.run import ROOT, RUN_ID
from .support.server import free_port

pytestmark = [pytest.mark.docker,  # on one line: tests/support/fast_tier.py then does not import the module
              pytest.mark.skipif(shutil.which("docker-compose") is None, reason="no docker-compose on this machine")]

COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
NODE = f"deploy-{RUN_ID}"
PROJECT = f"orsboxdeploy{RUN_ID}"
IMAGE = f"orsbox-server:test-{RUN_ID}"
ADMIN_KEY = f"deploy-admin-{uuid.uuid4().hex}"  # through ORSBOX_ADMIN_KEYS, which compose passes on
STARTUP_TIMEOUT = 120.0


@dataclass(frozen=True)
class Deployment:
    url: str
    key: str  # a client key made with `docker-compose run orsbox keys add`, kept in the config dir's keys file
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The machine's docker-compose on this deployment; its output in the failure when it fails."""
        done = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"docker-compose {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60").stdout


def node_containers(engine: docker.DockerClient) -> list[docker.models.containers.Container]:
    """Every container of this deployment: its server (the compose project) and the sessions of its node."""
    found = {container.id: container for filters in ({"label": f"orsbox.node={NODE}"},
                                                     {"label": f"com.docker.compose.project={PROJECT}"})
             for container in engine.containers.list(all=True, ignore_removed=True, filters=filters)}
    return list(found.values())


@pytest.fixture(scope="module")
def deployment(engine: docker.DockerClient) -> Iterator[Deployment]:
    base = prepare(client=engine, progress=lambda line: None)  # deploy/build/: orsbox and its wheels (cached)
    root = Path(tempfile.mkdtemp(prefix="obd-", dir="/tmp"))  # short: agent socket paths are capped
    port = free_port()
    env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT, "ORSBOX_SERVER_IMAGE": IMAGE,
           "ORSBOX_BASE_IMAGE": base.tag, "ORSBOX_NODE_ID": NODE, "ORSBOX_PORT": str(port),
           "ORSBOX_STATE_DIR": str(root / "state"), "ORSBOX_CONFIG_DIR": str(root / "etc"),
           "ORSBOX_ADMIN_KEYS": ADMIN_KEY}
    started = Deployment(f"http://127.0.0.1:{port}", "", env)
    try:
        started.compose("build")
        made = started.compose("run", "--rm", "-T", "orsbox", "keys", "add", "--name", "deploy-test")
        deployment = Deployment(started.url, made.stdout.strip().splitlines()[-1], env)
        deployment.compose("up", "-d")
        wait_healthy(deployment)
        yield deployment
    finally:
        try:
            left = take_down(engine, env)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    assert left == [], f"containers left after docker-compose down: {left}"


def take_down(engine: docker.DockerClient, env: dict[str, str]) -> list[str]:
    """`docker-compose down`, then remove whatever of the deployment is left (named) and its image."""
    subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "down", "--timeout", "60"], env=env, cwd=ROOT,
                   capture_output=True, timeout=300, check=False)
    left = node_containers(engine)
    for container in left:
        container.remove(force=True)
    with contextlib.suppress(docker.errors.ImageNotFound):
        engine.images.remove(IMAGE)
    return [container.name for container in left]


def wait_healthy(deployment: Deployment) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{deployment.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the deployed orsbox did not answer /health within {STARTUP_TIMEOUT:.0f} s:\n"
                         f"{deployment.logs()}")


async def test_an_episode_runs_through_the_deployed_server(deployment: Deployment,
                                                           engine: docker.DockerClient) -> None:
    assert httpx.get(f"{deployment.url}/bash/tools").status_code == 401  # the keys file's key is needed
    async with Ors.at(deployment.url, headers={"X-API-Key": deployment.key}) as ors:
        sid = await ors.new_session(split="train", index=0)
        step, _ = await ors.call_when_ready(sid, "bash", {"command": "echo 'hello world' > hello.txt"})
        assert step.output["metadata"]["exit_code"] == 0, step.text
        sessions = engine.containers.list(filters={"label": [f"orsbox.node={NODE}", f"orsbox.session={sid}"]})
        assert len(sessions) == 1  # started by the orsbox in the container, on the host's engine
        listed = deployment.compose("exec", "-T", "-e", f"ORSBOX_ADMIN_KEY={ADMIN_KEY}", "orsbox", "orsbox", "ps")
        assert sid in listed.stdout and "bash" in listed.stdout, listed.stdout
        graded = await ors.call(sid, "submit")
        assert graded.output["reward"] == 1.0 and graded.output["finished"] is True, graded.text
        await ors.delete(sid)
    assert [c.name for c in node_containers(engine) if c.labels.get("orsbox.node") == NODE] == []


async def test_down_ends_live_sessions(deployment: Deployment, engine: docker.DockerClient) -> None:
    async with Ors.at(deployment.url, headers={"X-API-Key": deployment.key}) as ors:
        sid = await ors.new_session(split="train", index=1)
        await ors.call_when_ready(sid, "bash", {"command": "true"})
    deployment.compose("down", "--timeout", "60")  # SIGTERM: orsbox removes its session containers, then exits
    assert [c.name for c in node_containers(engine)] == []
