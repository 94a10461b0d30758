"""Containers come and go with their sessions: delete, idle reaping, shutdown, signals."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from orsbox.api import create_app
from orsbox.config import Config

from .support.managed import managed_containers, session_containers
from .support.ors import Ors
from .support.run import NODE_ID
from .support.server import OrsboxProcess

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
    assert folder.is_dir() and list(folder.iterdir()) == []  # the server's socket went once the agent dialed in
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    await ors.delete(sid)
    assert session_containers(engine, sid) == []
    assert not folder.exists()


def plant_orphan_folders(sessions: Path, victim: Path) -> list[Path]:
    """What a crash (or an older orsbox) could leave in `<state dir>/sessions`, named like session folders:
    an empty folder, one with a stale socket, and a symlink to a host folder (whose file must stay)."""
    sessions.mkdir(mode=0o700, exist_ok=True)
    empty, with_socket, link = (sessions / f"orsbox-{secrets.token_hex(6)}-{secrets.token_hex(3)}" for _ in range(3))
    empty.mkdir(mode=0o700)
    with_socket.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(with_socket / "agent.sock"))
    link.symlink_to(victim)
    return [empty, with_socket, link]


async def test_orphaned_session_folders_are_swept_at_start_and_by_the_sweep(
    aiohttp_client: Any, config: Config, engine: docker.DockerClient, state_dir: Path, tmp_path: Path
) -> None:
    sessions = state_dir / "sessions"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "agent.sock").write_text("a host file")
    not_ours = sessions / "notes"  # not named like a session folder: not the sweep's business
    orphans = plant_orphan_folders(sessions, victim)
    not_ours.mkdir(exist_ok=True)
    ors = Ors(await aiohttp_client(create_app(config.model_copy(update={"reap_interval": 0.05}))))
    assert [orphan for orphan in orphans if os.path.lexists(orphan)] == []
    assert not_ours.is_dir() and (victim / "agent.sock").read_text() == "a host file"

    sid = await ors.new_session()
    await ors.prompt(sid)
    [container] = session_containers(engine, sid)
    later = plant_orphan_folders(sessions, victim)
    deadline = time.monotonic() + 10
    while [orphan for orphan in later if os.path.lexists(orphan)] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert [orphan for orphan in later if os.path.lexists(orphan)] == []
    assert (sessions / container.name).is_dir()  # a live session's folder stays
    assert (await ors.bash(sid, "echo served")).text == "served\n"
    await ors.delete(sid)
    assert (victim / "agent.sock").read_text() == "a host file"
    not_ours.rmdir()


async def test_the_container_is_hardened(ors: Ors, engine: docker.DockerClient) -> None:
    sid = await ors.new_session()
    await ors.prompt(sid)
    [container] = session_containers(engine, sid)
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True and host["Init"] is True
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETPCAP", "SETUID"]
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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signals_stop_the_server_and_remove_its_containers(
    signum: int, state_dir: Path, engine: docker.DockerClient, images: None, tmp_path: Path
) -> None:
    server = OrsboxProcess(state_dir=state_dir, node_id=NODE_ID, log_path=tmp_path / "server.log").start()
    try:
        async with server.client() as http:
            sids = [str(uuid.uuid4()) for _ in range(2)]
            for sid in sids:
                created = await http.post("/create", json={"split": "train", "index": 0},
                                          headers={"X-Session-ID": sid})
                assert created.status == 200
            prompt = await http.get("/bash/prompt", headers={"X-Session-ID": sids[0]})
            assert prompt.status == 200
        assert len(managed_containers(engine)) >= 1
        assert server.signal(signum) == 0, server.log()[-2000:]
        assert managed_containers(engine) == []
        assert server.log().count('"session_ended"') == 2, server.log()[-2000:]
    finally:
        server.stop()


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
