"""A session that got root inside its own container (a kernel or image bug, a hostile image):
`docker exec -u 0` stands in for it. It attacks the agent, the socket and adoption; the host, the
server and a neighbour session are then checked from the outside, through the HTTP API."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from ..support.managed import managed_containers, session_containers
from ..support.ors import parse_sse
from ..support.run import NODE_ID
from ..support.server import OrsboxProcess

pytestmark = pytest.mark.docker

#: Python run as root in a container: send SIGNAL to every agent process (tini's child included), as root may.
SIGNAL_AGENT = """
import os, signal
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        args = open('/proc/%s/cmdline' % pid, 'rb').read()
    except OSError:
        continue
    if b'orsbox.agent' in args and int(pid) != os.getpid():
        os.kill(int(pid), signal.SIGNAL)
"""
KILL_AGENT = SIGNAL_AGENT.replace("SIGNAL)", "SIGKILL)")

#: Run as root in a container while its server is down: stop the real agent (it would redial), take the
#: next server's socket and answer it with `ANSWER`.
IMPOSTOR = SIGNAL_AGENT.replace("SIGNAL)", "SIGSTOP)") + """
import socket, time
open('/tmp/impostor-running', 'w').close()
deadline = time.time() + 120
while time.time() < deadline:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect('/run/orsbox/agent.sock')
    except OSError:
        time.sleep(0.001)
        continue
    s.recv(65536)
    s.sendall(ANSWER)
    time.sleep(5)
    break
"""

#: What the impostor answers, as Python source evaluated in the container (an argument is at most 128 KiB).
ANSWERS = {
    "garbage": "b'this is not json\\n'",
    "wrong types": "b'{\"id\": 1, \"result\": {\"protocol\": \"one\", \"pid\": [], \"state\": 7}}\\n'",
    "a flood": "b'{\"id\": 99, \"result\": 1}\\n' * 20000",
}


@pytest.fixture
def servers(state_dir: Path, images: None, engine: docker.DockerClient, tmp_path: Path) -> Iterator[Any]:
    started: list[OrsboxProcess] = []

    def start() -> OrsboxProcess:
        server = OrsboxProcess(state_dir=state_dir, node_id=NODE_ID, log_path=tmp_path / "server.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


async def open_session(http: aiohttp.ClientSession) -> str:
    sid = str(uuid.uuid4())
    created = await http.post("/create", json={"split": "train", "index": 0}, headers={"X-Session-ID": sid})
    assert created.status == 200
    assert await bash(http, sid, "echo up") == "up\n"
    return sid


async def bash(http: aiohttp.ClientSession, sid: str, command: str) -> str | int:
    """The command's output, or the HTTP status / SSE event that came instead."""
    response = await http.post("/bash/call", json={"name": "bash", "input": {"command": command}},
                               headers={"X-Session-ID": sid})
    if response.status != 200:
        return response.status
    event, data = parse_sse(await response.read())[-1]
    if event != "end":
        return f"{event}: {data}"
    return str(json.loads(data)["output"]["blocks"][0]["text"])


def as_root(engine: docker.DockerClient, sid: str, program: str, *, detach: bool = False) -> Any:
    [container] = session_containers(engine, sid)
    return container.exec_run(["python3", "-c", program], user="0", detach=detach)


async def test_root_killing_its_agent_ends_only_its_own_session(servers: Any, engine: docker.DockerClient) -> None:
    server = servers()
    async with server.client() as http:
        victim, neighbour = await open_session(http), await open_session(http)
        as_root(engine, victim, KILL_AGENT)
        deadline = time.monotonic() + 20
        while session_containers(engine, victim) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_containers(engine, victim) == []
        gone = await http.post("/ping", headers={"X-Session-ID": victim})
        assert gone.status == 410 and "agent" in (await gone.json())["detail"]
        assert await bash(http, neighbour, "echo fine") == "fine\n"
        assert (await http.get("/health")).status == 200


@pytest.mark.parametrize("answer", list(ANSWERS), ids=list(ANSWERS))
async def test_root_answering_for_its_agent_at_adoption_is_refused_and_the_rest_is_adopted(
        servers: Any, engine: docker.DockerClient, answer: str) -> None:
    first = servers()
    async with first.client() as http:
        victim, neighbour = await open_session(http), await open_session(http)
    first.signal(signal.SIGKILL)  # a crash: the sessions' containers stay for the next server
    as_root(engine, victim, IMPOSTOR.replace("ANSWER", ANSWERS[answer]), detach=True)
    [container] = session_containers(engine, victim)
    for _ in range(50):  # the impostor spins on the socket's path before the next server listens
        if container.exec_run(["test", "-e", "/tmp/impostor-running"]).exit_code == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the impostor did not start")
    second = servers()
    async with second.client() as http:
        assert (await http.get("/health")).status == 200
        assert await bash(http, neighbour, "echo adopted") == "adopted\n"
        assert await bash(http, victim, "echo hijacked") in (404, 410)
    deadline = time.monotonic() + 20
    while session_containers(engine, victim) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_containers(engine, victim) == []
    second.stop()
    assert managed_containers(engine) == []
