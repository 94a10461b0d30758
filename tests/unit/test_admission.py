"""Admission and lifecycle on the fake backend: limits (429), queued starts, storms, readiness (503),
setup failures, dead agents, reaping, sweeps, the engine watch and shutdown."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from orsbox.api.keys import KEYRING, SESSIONS

from ..support.fake_backend import FakeBackend
from ..support.ors import Ors
from ..support.run import API_KEY

Client = Ors[TestClient[Any, Any]]


async def create(ors: Client, env: str = "echo", **body: Any) -> tuple[str, Any]:
    sid = str(uuid.uuid4())
    body = body or {"split": "train", "index": 0}
    response = await ors.http.post("/create", json={"env_name": env, **body}, headers={"X-Session-ID": sid})
    return sid, response


async def test_past_max_sessions_create_is_429_with_retry_after(server: Any, backend: FakeBackend) -> None:
    ors = await server(max_sessions=2)
    sids = [await ors.new_session("echo") for _ in range(2)]
    _, refused = await create(ors)
    assert refused.status == 429 and refused.headers["Retry-After"]
    assert "limit of 2 live sessions" in (await refused.json())["detail"]
    await ors.delete(sids[0])
    sid, accepted = await create(ors)
    assert accepted.status == 200
    for live in (sids[1], sid):
        await ors.delete(live)
    assert not backend.sandboxes


async def test_an_environments_own_limit(server: Any, policies: Path) -> None:
    (policies / "echo.toml").write_text("max_sessions = 1\n")
    ors = await server()
    first = await ors.new_session("echo")
    _, refused = await create(ors)
    assert refused.status == 429 and "environment 'echo' is at its limit of 1" in (await refused.json())["detail"]
    other = await ors.new_session("slow", task_spec={"id": "s", "delay": 0})  # other environments are not limited
    for sid in (first, other):
        await ors.delete(sid)


async def test_a_create_storm_is_queued_and_every_session_serves(server: Any, backend: FakeBackend) -> None:
    backend.start_delay = 0.05
    ors = await server(max_starting=2, max_sessions=64)
    sids = await asyncio.gather(*(ors.new_session("echo") for _ in range(24)))
    results = await asyncio.gather(*(ors.call(sid, "echo", {"text": sid}, env="echo") for sid in sids))
    assert [result.text for result in results] == list(sids)
    assert backend.started == 24 and len(backend.sandboxes) == 24
    health = await ors.http.get("/health")
    assert health.status == 200
    await asyncio.gather(*(ors.delete(sid) for sid in sids))
    assert not backend.sandboxes


async def test_requests_wait_for_setup_then_answer_503(server: Any) -> None:
    ors = await server(ready_wait=0.3)
    sid, response = await create(ors, "slow", task_spec={"id": "s", "delay": 1.0})
    assert response.status == 200
    waiting = await ors.http.get("/slow/prompt", headers={"X-Session-ID": sid})
    assert waiting.status == 503 and waiting.headers["Retry-After"]
    result, retries = await ors.call_when_ready(sid, "echo", {"text": "up"}, env="slow")
    assert result.text == "up" and retries >= 1
    await ors.delete(sid)


async def test_a_failed_setup_is_a_500_with_the_reason_and_frees_the_sandbox(ors: Client,
                                                                              backend: FakeBackend) -> None:
    sid, _ = await create(ors, "broken")
    prompt = await ors.http.get("/broken/prompt", headers={"X-Session-ID": sid})
    assert prompt.status == 500 and "setup exploded" in (await prompt.json())["detail"]
    call = await ors.http.post("/broken/call", json={"name": "echo", "input": {"text": "x"}},
                               headers={"X-Session-ID": sid})
    assert call.status == 500
    for _ in range(50):
        if not backend.sandboxes:
            break
        await asyncio.sleep(0.05)
    assert not backend.sandboxes
    await ors.delete(sid)


async def test_a_broken_engine_fails_the_session_not_the_server(ors: Client, backend: FakeBackend) -> None:
    backend.fail_starts = "the engine said no"
    sid, response = await create(ors)
    assert response.status == 200
    prompt = await ors.http.get("/echo/prompt", headers={"X-Session-ID": sid})
    assert prompt.status == 500 and "the engine said no" in (await prompt.json())["detail"]
    backend.fail_starts = None
    assert (await ors.call(await ors.new_session("echo"), "echo", {"text": "fine"}, env="echo")).text == "fine"


async def test_a_dead_agent_ends_its_session_with_the_reason(ors: Client, backend: FakeBackend) -> None:
    sid = await ors.new_session("echo")
    assert (await ors.call(sid, "echo", {"text": "x"}, env="echo")).text == "x"
    backend.kill(sid)
    for _ in range(100):
        response = await ors.http.post("/ping", headers={"X-Session-ID": sid})
        if response.status == 410:
            break
        await asyncio.sleep(0.05)
    assert response.status == 410 and "agent exited" in (await response.json())["detail"]
    assert not backend.sandboxes


async def test_idle_sessions_are_reaped(server: Any, backend: FakeBackend) -> None:
    ors = await server(idle_timeout=0.5, reap_interval=0.1)
    sid = await ors.new_session("echo")
    ended = ors.http.app[SESSIONS].registry.ended
    for _ in range(100):  # no request meanwhile: each would count as activity
        if sid in ended:
            break
        await asyncio.sleep(0.1)
    response = await ors.http.post("/ping", headers={"X-Session-ID": sid})
    assert response.status == 410 and "idle for more than" in (await response.json())["detail"]
    for _ in range(100):
        if not backend.sandboxes:
            break
        await asyncio.sleep(0.05)
    assert not backend.sandboxes


async def test_the_idle_clock_starts_when_the_session_is_ready(server: Any, backend: FakeBackend) -> None:
    ors = await server(idle_timeout=0.5, reap_interval=0.1)
    sid = await ors.new_session("slow", task_spec={"id": "s", "delay": 1.5})  # setup outlasts the idle timeout
    assert (await ors.prompt(sid, env="slow"))[0]["text"]  # waited for readiness, then answered
    assert (await ors.call(sid, "echo", {"text": "still here"}, env="slow")).text == "still here"


async def test_a_sweep_removes_sandboxes_no_session_owns(ors: Client, backend: FakeBackend) -> None:
    sid = await ors.new_session("echo")
    await ors.prompt(sid, env="echo")
    manager = ors.http.app[SESSIONS]
    session = manager.get(sid, ors.http.app[KEYRING].authenticate(API_KEY).owner)
    manager.registry.release(session)  # as if a removal had failed: the sandbox outlives its session
    await manager.sweep()
    assert not backend.sandboxes


async def test_health_reports_the_engine_going_and_coming_back(ors: Client, backend: FakeBackend) -> None:
    backend.engine_up = False
    for _ in range(60):
        health = await ors.http.get("/health")
        if health.status == 503:
            break
        await asyncio.sleep(0.1)
    assert health.status == 503 and await health.json() == {
        "status": "engine_unreachable", "detail": "the Docker engine does not answer"}
    backend.engine_up = True
    for _ in range(60):
        if (await ors.http.get("/health")).status == 200:
            break
        await asyncio.sleep(0.1)
    assert (await ors.http.get("/health")).status == 200


async def test_shutdown_refuses_new_sessions_and_ends_the_live_ones(server: Any, backend: FakeBackend) -> None:
    ors = await server()
    sid = await ors.new_session("echo")
    await ors.prompt(sid, env="echo")
    ors.http.app[SESSIONS].drain()
    _, refused = await create(ors)
    assert refused.status == 503
    assert (await ors.call(sid, "echo", {"text": "still"}, env="echo")).text == "still"
    await ors.http.close()
    assert not backend.sandboxes
