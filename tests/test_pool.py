"""The warm pool on the real engine: pooled sessions are fresh, each container serves one session, a crash
and restart adopts both the bound containers and the waiting ones, and none is left behind."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from orsbox.api import create_app
from orsbox.config import Config

from .support.managed import managed_containers, session_containers
from .support.ors import Ors
from .support.run import ROOT

pytestmark = pytest.mark.docker


@pytest.fixture
def pooled_policies(tmp_path: Path) -> Path:
    """The shipped policies, with a warm pool of two for `bash`."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "default.toml").write_text((ROOT / "sandbox_policies" / "default.toml").read_text())
    (folder / "bash.toml").write_text("pool_min = 2\n")
    return folder


def pool_containers(engine: docker.DockerClient) -> list[Any]:
    """This run's pool containers, waiting or bound to a session (their labels never change: role=pool)."""
    return [c for c in managed_containers(engine) if c.labels.get("orsbox.role") == "pool"]


async def until_pool_holds(engine: docker.DockerClient, count: int, timeout: float = 60) -> list[Any]:
    async with asyncio.timeout(timeout):
        while len(found := pool_containers(engine)) < count:
            await asyncio.sleep(0.1)
    return found


async def test_pooled_sessions_are_fresh_and_each_container_serves_one_session(
    aiohttp_client: Any, config: Config, engine: docker.DockerClient, pooled_policies: Path
) -> None:
    ors = Ors(await aiohttp_client(create_app(config.model_copy(update={"policies_dir": pooled_policies}))))
    pool = {c.id for c in await until_pool_holds(engine, 2)}

    first = await ors.new_session()
    answer = await ors.bash(first, "echo secret > /workspace/left.txt; echo home > ~/left.txt; "
                                   "export LEFT=behind; (sleep 600 &) ; echo $LEFT")
    assert answer.text.strip() == "behind"
    [first_container] = [c for c in managed_containers(engine) if c.id in pool and _serves(c, engine, first)]

    second = await ors.new_session()
    seen = (await ors.bash(second, "ls /workspace ~; echo \"var=${LEFT:-}\"; pgrep -c sleep || true")).text
    assert "left.txt" not in seen and "var=\n" in seen and seen.strip().endswith("0"), seen
    await ors.delete(first)
    assert first_container.id not in {c.id for c in managed_containers(engine)}  # used once, then removed
    third = await ors.new_session()
    assert "left.txt" not in (await ors.bash(third, "ls -a /workspace")).text
    for sid in (second, third):
        await ors.delete(sid)
    await until_pool_holds(engine, 2)  # refilled with fresh containers


def _serves(container: Any, engine: docker.DockerClient, sid: str) -> bool:
    """Whether the pool container holds the session's file (a pool container's labels never name its session)."""
    container.reload()
    probe = container.exec_run(["cat", "/workspace/left.txt"], user="root")
    return probe.exit_code == 0 and b"secret" in probe.output


async def bash(http: aiohttp.ClientSession, sid: str, command: str) -> str:
    response = await http.post("/bash/call", json={"name": "bash", "input": {"command": command}},
                               headers={"X-Session-ID": sid})
    assert response.status == 200, await response.text()
    return await response.text()


async def test_a_crashed_server_adopts_bound_and_waiting_pool_containers(
    server_factory: Any, engine: docker.DockerClient, pooled_policies: Path
) -> None:
    first = server_factory("--policies", str(pooled_policies))
    await until_pool_holds(engine, 2)
    sid = str(uuid.uuid4())
    async with first.client() as http:
        created = await http.post("/create", json={"split": "train", "index": 0}, headers={"X-Session-ID": sid})
        assert created.status == 200
        assert "kept" in await bash(http, sid, "echo kept > mine.txt; cat mine.txt")
    await until_pool_holds(engine, 3)  # the session's, and two waiting
    before = {c.id for c in managed_containers(engine)}
    assert len(before) == 3 and session_containers(engine, sid) == []  # bound, but labelled for its pool slot
    first.signal(signal.SIGKILL)

    second = server_factory("--policies", str(pooled_policies))
    async with second.client() as http:
        assert "kept" in await bash(http, sid, "cat mine.txt")
        # The bound one serves its session again; after a crash nothing vouches that the waiting ones never
        # served a session, so they are replaced.
        await until_pool_holds(engine, 3)
        assert len({c.id for c in managed_containers(engine)} & before) == 1
        other = str(uuid.uuid4())
        created = await http.post("/create", json={"split": "train", "index": 0}, headers={"X-Session-ID": other})
        assert created.status == 200
        assert "mine.txt" not in await bash(http, other, "ls")
        for session in (sid, other):
            assert (await http.post("/delete", headers={"X-Session-ID": session})).status == 200
    assert '"session_adopted"' in second.log()
    second.stop()
    assert managed_containers(engine) == []  # the pool goes at shutdown too
