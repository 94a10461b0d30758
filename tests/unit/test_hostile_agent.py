"""A compromised agent (root in its container, the agent process replaced) attacks the server over the
channel: whatever it sends, its own session ends with a clear reason and the server and other sessions
go on. Fast tier: the fake backend starts `tests/support/hostile_agent.py` in the agent's place."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from ..support.fake_backend import ENVIRONMENTS, HOSTILE, FakeBackend
from ..support.ors import Ors

Client = Ors[TestClient[Any, Any]]

VIOLATIONS = {
    "garbage": "frame is not JSON",
    "unsolicited": "not waiting for one",
    "oversized": "over 2162688 bytes",  # wire.frame_limit of the default 256 KiB output cap
    "flood": "over 2162688 bytes",
    "deep": "nested too deeply",
    "bad_error": "not {type, message}",
    "no_id": "without a request id",
}


@pytest.fixture
def backend() -> FakeBackend:
    hostile = {f"hostile-{mode.replace('_', '-')}": HOSTILE + mode for mode in [*VIOLATIONS, "wrong_types"]}
    workspace = {"hostile-endless": HOSTILE + "workspace_endless", "hostile-wsgarbage": HOSTILE + "workspace_garbage"}
    return FakeBackend({**ENVIRONMENTS, **hostile, **workspace})


async def ended_reason(ors: Client, sid: str) -> str:
    for _ in range(200):
        response = await ors.http.post("/ping", headers={"X-Session-ID": sid})
        if response.status == 410:
            return str((await response.json())["detail"])
        await asyncio.sleep(0.05)
    raise AssertionError("the session did not end")


@pytest.mark.parametrize("mode", list(VIOLATIONS))
async def test_a_protocol_violation_ends_only_that_session(ors: Client, backend: FakeBackend, mode: str) -> None:
    env = f"hostile-{mode.replace('_', '-')}"
    neighbour = await ors.new_session("echo")
    sid = await ors.new_session(env)
    result = await ors.call(sid, "echo", {"text": "hi"}, env=env)
    assert result.status == 200 and result.events[-1][0] == "error"
    assert "broke the channel protocol" in result.events[-1][1] and VIOLATIONS[mode] in result.events[-1][1]
    reason = await ended_reason(ors, sid)
    assert "broke the channel protocol" in reason and VIOLATIONS[mode] in reason
    assert (await ors.http.get("/health")).status == 200
    assert (await ors.call(neighbour, "echo", {"text": "still here"}, env="echo")).text == "still here"
    await ors.delete(neighbour)
    for _ in range(100):  # the hostile agent's sandbox is removed with its session
        if not backend.sandboxes:
            break
        await asyncio.sleep(0.05)
    assert not backend.sandboxes


async def test_health_answers_while_an_agent_floods_its_socket(ors: Client) -> None:
    sid = await ors.new_session("hostile-flood")
    call = asyncio.ensure_future(ors.call(sid, "echo", {"text": "hi"}, env="hostile-flood"))
    statuses = []
    for _ in range(5000):  # bounded: a flood that were never cut would fail here, not hang
        if call.done():
            break
        statuses.append((await ors.http.get("/health")).status)
    assert call.done() and set(statuses) <= {200}
    assert "broke the channel protocol" in call.result().events[-1][1]


async def test_well_formed_but_wrong_answers_are_errors_not_crashes(ors: Client) -> None:
    sid = await ors.new_session("hostile-wrong-types")
    prompt = await ors.http.get("/hostile-wrong-types/prompt", headers={"X-Session-ID": sid})
    assert prompt.status == 500 and "not a list of blocks" in (await prompt.json())["detail"]
    result = await ors.call(sid, "echo", {"text": "hi"}, env="hostile-wrong-types")
    assert result.events[-1] == ("error", "the sandbox's agent answered 'echo' with something that is not an object")
    await ors.delete(sid)


async def test_a_workspace_download_that_never_ends_is_cut_at_the_policys_size(server: Any, policies: Any) -> None:
    (policies / "hostile-endless.toml").write_text('workspace_size = "1m"\n')
    ors = await server()
    sid = await ors.new_session("hostile-endless")
    await ors.http.post("/ping", headers={"X-Session-ID": sid})
    for query, most in (("?path=a&file=1", 1024**2), ("", 2 * 1024**2)):
        received = 0
        with pytest.raises(aiohttp.ClientPayloadError):  # cut: never a download that looks whole
            async with ors.http.get(f"/workspace{query}", headers={"X-Session-ID": sid}) as answer:
                assert answer.status == 200
                async for chunk in answer.content.iter_chunked(65536):
                    received += len(chunk)
        assert received <= most
    neighbour = await ors.new_session("echo")
    assert (await ors.call(neighbour, "echo", {"text": "fine"}, env="echo")).text == "fine"
    await ors.delete(neighbour)
    await ors.delete(sid)


async def test_malformed_workspace_answers_are_errors_not_data(server: Any) -> None:
    ors = await server()
    sid = await ors.new_session("hostile-wsgarbage")
    no_handle = await ors.http.get("/workspace?path=a&file=1", headers={"X-Session-ID": sid})
    assert no_handle.status == 500 and "handle" in (await no_handle.json())["detail"]
    not_base64 = await ors.http.get("/workspace", headers={"X-Session-ID": sid})
    assert not_base64.status == 500 and "base64" in (await not_base64.json())["detail"]
    await ors.delete(sid)
