"""An environment's own openreward sandboxes, through the loopback tunnel, on the fake backend (fast tier).

The environment (tests/support/fake_sandbox_env.py, pure openreward) reaches the sandbox API at the
OPENREWARD_SESSION_URL its agent gives it; the sandboxes it makes are its session's: out of reach of
the client's key, within `max_sandboxes`, ended with the session, and kept with it across a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..support.fake_backend import ENVIRONMENTS, HOSTILE, UNUSED_UID, FakeBackend

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ENV = "sbuser"


VIOLATIONS = {
    "tunnel_number": "without a valid tunnel number",
    "tunnel_kind": "neither open, data nor close",
    "tunnel_twice": "opened tunnel 1 twice",
    "tunnel_base64": "not base64",
    "tunnel_big": "more than 65536 bytes",
}
HOSTILE_ENVS = {f"hostile-{mode.replace('_', '-')}": HOSTILE + mode
                for mode in [*VIOLATIONS, "tunnel_many", "tunnel_http"]}


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend({**ENVIRONMENTS, ENV: "tests.support.fake_sandbox_env:SandboxUser", **HOSTILE_ENVS})


@pytest.fixture(autouse=True)
def sandboxes_allowed(policies: Path) -> None:
    for env in [ENV, *HOSTILE_ENVS]:
        (policies / f"{env}.toml").write_text("max_sandboxes = 1\n")


@pytest.fixture
def folder() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="obes-", dir="/tmp"))
    root.chmod(0o755)
    os.chown(root, UNUSED_UID, UNUSED_UID)
    yield str(root)
    shutil.rmtree(root, ignore_errors=True)


async def roundtrip(ors: Any, sid: str, folder: str) -> dict[str, Any]:
    answer, _ = await ors.call_when_ready(sid, "roundtrip", {"folder": folder}, env=ENV)
    assert answer.status == 200 and answer.events[-1][0] == "end", answer
    return json.loads(answer.text)


def sandbox_sessions(backend: FakeBackend) -> list[str]:
    return [s.spec.session_id for s in backend.sandboxes.values() if s.spec.environment.name == "sandbox"]


async def test_an_environment_drives_its_own_sandbox(server: Any, backend: FakeBackend, folder: str) -> None:
    ors = await server()
    sid = await ors.new_session(ENV)
    seen = await roundtrip(ors, sid, folder)
    assert seen["url"].startswith("http://127.0.0.1:") and seen["run"] == "42"
    assert seen["sent"] == seen["local"] == seen["back"]
    assert sandbox_sessions(backend) == [seen["sid"]]
    again = await roundtrip(ors, sid, folder)  # the same sandbox, a new file
    assert again["sid"] == seen["sid"] and again["back"] == again["local"] != seen["local"]
    # the client's own key does not reach it
    response = await ors.http.post("/run", json={"cmd": "true"}, headers={"X-Session-ID": seen["sid"]})
    assert response.status == 404
    await ors.http.post("/delete_session", headers={"X-Session-ID": seen["sid"]})
    assert sandbox_sessions(backend) == [seen["sid"]]
    # within max_sandboxes
    answer = await ors.call(sid, "another", {}, env=ENV)
    assert answer.text.startswith("refused:") and "max_sandboxes" in answer.text, answer.text
    await ors.delete(sid)
    assert sandbox_sessions(backend) == []


async def test_a_sandbox_ends_when_its_environment_dies(server: Any, backend: FakeBackend, folder: str) -> None:
    ors = await server()
    sid = await ors.new_session(ENV)
    box = (await roundtrip(ors, sid, folder))["sid"]
    backend.kill(sid)
    for _ in range(200):
        if box not in sandbox_sessions(backend):
            break
        await asyncio.sleep(0.05)
    assert sandbox_sessions(backend) == []


async def test_a_session_and_its_sandbox_are_adopted_together(server: Any, backend: FakeBackend,
                                                            folder: str) -> None:
    first = await server(keep_sessions=True)
    sid = await first.new_session(ENV)
    box = (await roundtrip(first, sid, folder))["sid"]
    await first.http.close()  # a rolling restart: both stay for the next run
    second = await server()
    seen = await roundtrip(second, sid, folder)  # a new tunnel, the same key: the same sandbox
    assert seen["sid"] == box and seen["back"] == seen["local"]
    await second.delete(sid)
    assert sandbox_sessions(backend) == []


# ---------------------------------------------------------------- a hostile agent's tunnel frames


async def ended_reason(ors: Any, sid: str) -> str:
    for _ in range(200):
        response = await ors.http.post("/ping", headers={"X-Session-ID": sid})
        if response.status == 410:
            return str((await response.json())["detail"])
        await asyncio.sleep(0.05)
    raise AssertionError("the session did not end")


@pytest.mark.parametrize("mode", list(VIOLATIONS))
async def test_a_bad_tunnel_frame_ends_only_that_session(server: Any, mode: str) -> None:
    ors = await server()
    env = f"hostile-{mode.replace('_', '-')}"
    sid = await ors.new_session(env)
    neighbour = await ors.new_session("echo")
    result = await ors.call(sid, "x", {}, env=env)
    assert result.status == 200 and result.events[-1][0] == "error"
    reason = await ended_reason(ors, sid)
    assert "broke the channel protocol" in reason and VIOLATIONS[mode] in reason
    assert (await ors.call(neighbour, "echo", {"text": "still here"}, env="echo")).text == "still here"
    await ors.delete(neighbour)


async def test_tunnels_past_the_limit_are_closed_at_once(server: Any) -> None:
    ors = await server()
    sid = await ors.new_session("hostile-tunnel-many")
    result = await ors.call(sid, "x", {}, env="hostile-tunnel-many")
    assert result.text == ",".join(str(n) for n in range(33, 41))  # 32 open at most
    assert (await ors.http.post("/ping", headers={"X-Session-ID": sid})).status == 200
    await ors.delete(sid)


async def test_a_hostile_environment_reaches_no_other_session(server: Any) -> None:
    ors = await server()
    env = "hostile-tunnel-http"
    sid = await ors.new_session(env)
    other = await ors.new_session("echo")

    async def status_line(path: str, target: str, key: str = "") -> str:
        return (await ors.call(sid, "x", {"path": path, "sid": target, "key": key}, env=env)).text

    assert await status_line("/ping", other) == "HTTP/1.1 404 Not Found"  # the client's session: not its own
    assert await status_line("/run", other) == "HTTP/1.1 404 Not Found"
    assert await status_line("/ping", other, key="guessed") == "HTTP/1.1 401 Unauthorized"
    assert await status_line("/delete", other) == "HTTP/1.1 404 Not Found"  # no ORS routes here
    assert (await ors.http.post("/ping", headers={"X-Session-ID": other})).status == 200
    await ors.delete(sid)
    await ors.delete(other)


async def test_an_environments_sandboxes_count_against_its_key(server: Any, folder: str) -> None:
    ors = await server(key_max_sessions=2)
    sid = await ors.new_session(ENV)
    await roundtrip(ors, sid, folder)  # the session and its sandbox: the key's two
    response = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 0},
                                   headers={"X-Session-ID": "one-too-many"})
    assert response.status == 429 and "limit of 2 live sessions" in (await response.json())["detail"]
    await ors.delete(sid)
    await ors.delete(await ors.new_session("echo"))  # both gone: room again


async def test_only_the_agents_uid_may_use_the_port(server: Any, folder: str) -> None:
    ors = await server()
    sid = await ors.new_session(ENV)
    url = (await roundtrip(ors, sid, folder))["url"]
    host, port = url.removeprefix("http://").split(":")
    ask = (f"import socket\ns = socket.create_connection(({host!r}, {port}))\n"
           "s.sendall(b'POST /ping HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\n\\r\\n')\n"
           "try:\n    print(repr(s.recv(100)))\nexcept ConnectionResetError:\n    print('reset')\n")
    process = await asyncio.create_subprocess_exec("/usr/bin/python3", "-c", ask, user=UNUSED_UID,
                                                   stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert out.strip() in (b"b''", b"reset")  # closed unread: not even a 401
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", ask, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert out.startswith(b"b'HTTP/1.1 401")  # the agent's uid gets through, to the key check
    await ors.delete(sid)
