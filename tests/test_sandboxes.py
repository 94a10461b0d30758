"""openreward's sandbox API on the real engine, driven by openreward's own client: each sandbox a hardened container."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest
from openreward.api.sandboxes.client import AsyncSandboxesAPI
from openreward.api.sandboxes.types import SandboxSettings

from .support.managed import session_containers
from .support.ors import Ors, parse_sse
from .support.run import API_KEY, NODE_ID
from .support.server import OrsboxProcess

pytestmark = [pytest.mark.docker, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SETTINGS = {"environment": "tests", "image": "orsbox/bash:latest", "machine_size": "1:1"}


@pytest.fixture
def url(ors: Ors) -> str:
    return str(ors.http.make_url("")).rstrip("/")  # type: ignore[attr-defined]


@pytest.fixture
async def sandbox(url: str) -> AsyncIterator[AsyncSandboxesAPI]:
    async with AsyncSandboxesAPI(base_url=url, api_key=API_KEY,
                                 settings=SandboxSettings(**SETTINGS, env={"TASK": "t1"})) as box:
        yield box


async def test_a_sandbox_is_a_hardened_container_running_commands_as_the_command_user(
        sandbox: AsyncSandboxesAPI, engine: docker.DockerClient) -> None:
    assert sandbox.sid is not None
    [container] = session_containers(engine, sandbox.sid)
    assert container.labels["orsbox.managed"] == "1" and container.attrs["HostConfig"]["ReadonlyRootfs"]
    assert await sandbox.check_run("id -u; pwd; echo $TASK") == "1000\n/workspace\nt1"
    assert (await sandbox.run("touch /etc/x")).return_code != 0  # read-only root
    reach = await sandbox.run("python3 -c \"import socket; socket.create_connection(('10.73.0.1', 80), 2)\"")
    assert reach.return_code != 0  # no network under the default sandbox policy


async def test_big_files_round_trip_with_their_sha256(sandbox: AsyncSandboxesAPI, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(12 * 1024 * 1024 + 5))
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert (await sandbox.upload_from(local, "/workspace/data/big.bin")).sha256 == digest
    assert await sandbox.check_run("sha256sum /workspace/data/big.bin | cut -d' ' -f1; stat -c %u "
                                   "/workspace/data/big.bin") == f"{digest}\n1000"
    back = tmp_path / "back.bin"
    assert (await sandbox.download_to("/workspace/data/big.bin", back)).sha256 == digest
    assert back.read_bytes() == local.read_bytes()


async def test_an_upload_through_a_command_and_binary_output(sandbox: AsyncSandboxesAPI, tmp_path: Path) -> None:
    local = tmp_path / "blob"
    local.write_bytes(bytes(range(256)) * 20_000)  # 5 MB: sent as one 7 MB command
    await sandbox.upload(local, "/workspace/blob")
    assert await sandbox.download("/workspace/blob") == local.read_bytes()
    out = await sandbox.run("head -c 256 /workspace/blob", sanitise=False, max_bytes=1000)
    assert out.output.encode("utf-8", "surrogateescape") == bytes(range(256)).rstrip()


async def test_two_sandboxes_see_nothing_of_each_other(url: str, sandbox: AsyncSandboxesAPI) -> None:
    await sandbox.check_run("echo marker-9f1 > /workspace/secret; sleep 61 >/dev/null 2>&1 &")
    async with AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=SandboxSettings(**SETTINGS)) as other:
        seen = await other.run("cat /workspace/secret; ps -eo args | grep -c '^sleep 61'")
        assert "marker-9f1" not in seen.output and seen.output.splitlines()[-1] == "0"
    assert (await sandbox.run("ps -eo args | grep -c '^sleep 61'")).output == "1"  # it runs on in its own


async def test_stop_removes_the_container_and_later_runs_are_gone(url: str, engine: docker.DockerClient) -> None:
    box = AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=SandboxSettings(**SETTINGS))
    await box.start()
    sid = box.sid
    assert sid is not None and session_containers(engine, sid)
    await box.stop()
    assert session_containers(engine, sid) == []
    async with aiohttp.ClientSession(url) as http:
        late = await http.post("/run", json={"cmd": "true"}, headers={"X-API-Key": API_KEY, "X-Session-ID": sid})
        assert late.status == 410


async def test_a_missing_image_fails_fast_with_its_reason(url: str, ors: Any) -> None:
    box = AsyncSandboxesAPI(base_url=url, api_key=API_KEY,
                            settings=SandboxSettings(**{**SETTINGS, "image": "orsbox/never-built:latest"}))
    with pytest.raises(aiohttp.ClientResponseError) as refused:
        await asyncio.wait_for(box.start(), 600)
    assert refused.value.status == 404 and "not on this engine" in refused.value.message


async def test_a_rolling_restart_keeps_a_sandbox(state_dir: Path, engine: docker.DockerClient, tmp_path: Path) -> None:
    first = OrsboxProcess(state_dir=state_dir, node_id=NODE_ID, log_path=tmp_path / "server.log",
                          args=("--keep-sessions",)).start()
    second = None
    try:
        box = AsyncSandboxesAPI(base_url=first.url, api_key=API_KEY, settings=SandboxSettings(**SETTINGS))
        await box.start()
        await box.check_run("echo kept > /workspace/state")
        if box._ping_task is not None:
            box._ping_task.cancel()
        assert first.signal(signal.SIGTERM) == 0
        second = OrsboxProcess(state_dir=state_dir, node_id=NODE_ID, log_path=tmp_path / "server.log").start()
        async with second.client() as http:
            headers = {"X-Session-ID": box.sid or ""}
            response = await http.post("/run", json={"cmd": "cat /workspace/state"}, headers=headers)
            event, data = parse_sse(await response.read())[-1]
            assert event == "end" and base64.b64decode(json.loads(data)["output"]) == b"kept\n"
            assert (await http.post("/delete_session", headers=headers)).status == 200
        assert session_containers(engine, box.sid or "") == []
    finally:
        first.stop()
        if second is not None:
            second.stop()
