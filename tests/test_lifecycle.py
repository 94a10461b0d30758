"""Containers come and go with their sessions: delete, idle reaping, shutdown, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from orsbox.config import Config
from orsbox.server import create_app

from .conftest import NODE_ID, ROOT, Ors, managed_containers, session_containers

pytestmark = pytest.mark.docker


async def test_delete_removes_the_container_and_its_folder(ors: Ors, engine: docker.DockerClient,
                                                           state_dir: Path) -> None:
    sid = await ors.new_session()
    await ors.prompt(sid)
    [container] = session_containers(engine, sid)
    labels = container.labels
    assert labels["orsbox.managed"] == "1" and labels["orsbox.environment"] == "bash"
    assert labels["orsbox.session"] == sid
    folder = state_dir / "sessions" / container.name
    assert folder.is_dir() and (folder / "agent.sock").is_socket()
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    await ors.delete(sid)
    assert session_containers(engine, sid) == []
    assert not folder.exists()


async def test_the_container_is_hardened(ors: Ors, engine: docker.DockerClient) -> None:
    sid = await ors.new_session()
    await ors.prompt(sid)
    [container] = session_containers(engine, sid)
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True and host["Init"] is True
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETUID"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 256 and host["Memory"] == host["MemorySwap"] == 1024**3
    assert container.attrs["NetworkSettings"]["Ports"] in ({}, None)
    probe = await ors.bash(sid, "cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)'; touch /etc/x; "
                                "ip addr 2>/dev/null || cat /proc/net/dev")
    assert "CapEff:\t0000000000000000" in probe.text and "NoNewPrivs:\t1" in probe.text
    assert "Read-only file system" in probe.text
    assert "eth0" not in probe.text
    await ors.delete(sid)


async def test_idle_sessions_are_reaped(aiohttp_client: Any, config: Config, engine: docker.DockerClient) -> None:
    client = await aiohttp_client(create_app(config.model_copy(update={"idle_timeout": 1.0, "reap_interval": 0.2})))
    ors = Ors(client)
    sid = await ors.new_session()
    await ors.prompt(sid)
    assert len(session_containers(engine, sid)) == 1
    deadline = time.monotonic() + 15
    while session_containers(engine, sid) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert session_containers(engine, sid) == []
    gone = await client.get("/bash/prompt", headers={"X-Session-ID": sid})
    assert gone.status == 410 and "idle" in (await gone.json())["detail"]


async def test_pings_keep_a_session_alive(aiohttp_client: Any, config: Config, engine: docker.DockerClient) -> None:
    client = await aiohttp_client(create_app(config.model_copy(update={"idle_timeout": 1.0, "reap_interval": 0.2})))
    ors = Ors(client)
    sid = await ors.new_session()
    for _ in range(8):
        assert (await client.post("/ping", headers={"X-Session-ID": sid})).status == 200
        await asyncio.sleep(0.4)
    assert (await ors.bash(sid, "echo alive")).text == "alive\n"
    await ors.delete(sid)


async def test_app_shutdown_removes_every_container(aiohttp_client: Any, config: Config,
                                                    engine: docker.DockerClient) -> None:
    client = await aiohttp_client(create_app(config))
    ors = Ors(client)
    ready = await ors.new_session()
    await ors.prompt(ready)
    await ors.new_session()  # still starting when the server stops
    await client.close()
    assert managed_containers(engine) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signals_stop_the_server_and_remove_its_containers(
    signum: int, state_dir: Path, engine: docker.DockerClient, images: None, tmp_path: Path
) -> None:
    port = _free_port()
    env = {**os.environ, "ORSBOX_STATE_DIR": str(state_dir), "ORSBOX_NODE_ID": NODE_ID}
    log_path = tmp_path / "server.log"
    log_file = log_path.open("wb")
    server = subprocess.Popen([sys.executable, "-m", "orsbox.cli", "serve", "--port", str(port)],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            await _wait_healthy(http, server)
            sids = [str(uuid.uuid4()) for _ in range(2)]
            for sid in sids:
                created = await http.post("/create", json={"split": "train", "index": 0},
                                          headers={"X-Session-ID": sid})
                assert created.status == 200
            prompt = await http.get("/bash/prompt", headers={"X-Session-ID": sids[0]})
            assert prompt.status == 200
        assert len(managed_containers(engine)) >= 1
        server.send_signal(signum)
        server.wait(timeout=60)
        log = log_path.read_text()
        assert server.returncode == 0, log[-2000:]
        assert managed_containers(engine) == []
        assert log.count('"session_ended"') == 2, log[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
        log_file.close()


async def _wait_healthy(http: aiohttp.ClientSession, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited"
        try:
            if (await http.get("/health")).status == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("server did not become healthy")


async def test_a_dead_container_ends_the_session_with_a_clear_error(ors: Ors, engine: docker.DockerClient) -> None:
    sid = await ors.new_session()
    await ors.prompt(sid)
    [container] = session_containers(engine, sid)
    running = asyncio.ensure_future(ors.bash(sid, "sleep 30"))
    await asyncio.sleep(0.5)
    container.kill()
    answer = await asyncio.wait_for(running, 20)
    assert answer.status == 200 and answer.events[-1][0] == "error"
    assert "agent" in answer.events[-1][1]
    deadline = time.monotonic() + 10
    while session_containers(engine, sid) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert session_containers(engine, sid) == []
    gone = await ors.http.get("/bash/prompt", headers={"X-Session-ID": sid})
    assert gone.status == 410 and "agent exited" in (await gone.json())["detail"]


async def test_a_call_cut_short_by_delete_says_so(ors: Ors) -> None:
    sid = await ors.new_session()
    await ors.prompt(sid)
    running = asyncio.ensure_future(ors.bash(sid, "sleep 30"))
    await asyncio.sleep(0.5)
    await ors.delete(sid)
    answer = await asyncio.wait_for(running, 20)
    assert answer.events[-1] == ("error", "Session ended: deleted by the client")


async def test_a_client_leaving_mid_call_does_not_stop_the_call(ors: Ors) -> None:
    sid = await ors.new_session()
    await ors.prompt(sid)
    response = await ors.http.post("/bash/call", json={"name": "bash", "input": {"command": "sleep 1; echo done"}},
                                   headers={"X-Session-ID": sid})
    first_line = await response.content.readline()
    assert first_line == b"event: task_id\r\n"
    task_id = (await response.content.readline()).decode().split(": ", 1)[1].strip()
    response.close()  # the client goes away
    replay = await ors.call(sid, "bash", {"command": "ignored"}, task_id=task_id)
    assert replay.text == "done\n"
    await ors.delete(sid)
