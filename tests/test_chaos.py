"""Chaos on the real engine: crashes, restarts, races, floods of creates, dying agents and engines.
Whatever happens, every live session has exactly one container and ended ones have none."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from orsbox.api import create_app
from orsbox.config import Config

from .support.engine import stop_engine, why_not_restartable
from .support.managed import managed_containers, session_containers
from .support.ors import Ors, parse_sse
from .support.run import ROOT

pytestmark = pytest.mark.docker


async def create(http: aiohttp.ClientSession, sid: str, **body: Any) -> aiohttp.ClientResponse:
    return await http.post("/create", json=body or {"split": "train", "index": 0}, headers={"X-Session-ID": sid})


async def bash(http: aiohttp.ClientSession, sid: str, command: str) -> tuple[int, list[tuple[str, str]]]:
    response = await http.post("/bash/call", json={"name": "bash", "input": {"command": command}},
                               headers={"X-Session-ID": sid})
    return response.status, parse_sse(await response.read()) if response.status == 200 else []


async def test_a_crashed_server_serves_its_sessions_again_after_restart(
    server_factory: Any, engine: docker.DockerClient
) -> None:
    first = server_factory()
    sids = [str(uuid.uuid4()) for _ in range(3)]
    async with first.client() as http:
        for sid in sids:
            assert (await create(http, sid)).status == 200
            status, events = await bash(http, sid, f"echo {sid} > mine.txt")
            assert status == 200 and events[-1][0] == "end"
    containers_before = {c.id for c in managed_containers(engine)}
    first.signal(signal.SIGKILL)
    assert {c.id for c in managed_containers(engine)} == containers_before  # a crash removes nothing

    second = server_factory()
    async with second.client() as http:
        for sid in sids:
            status, events = await bash(http, sid, "cat mine.txt")
            assert status == 200 and events[-1][0] == "end", events
            assert sid in events[-1][1]
        assert {c.id for c in managed_containers(engine)} == containers_before  # the same containers
        submitted = await http.post("/bash/call", json={"name": "submit", "input": {}},
                                    headers={"X-Session-ID": sids[0]})
        assert submitted.status == 200
        for sid in sids:
            assert (await http.post("/delete", headers={"X-Session-ID": sid})).status == 200
    assert '"session_adopted"' in second.log()
    assert managed_containers(engine) == []


async def test_a_restart_does_not_adopt_a_session_under_a_policy_ops_have_since_tightened(
    server_factory: Any, engine: docker.DockerClient, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.toml").write_text((ROOT / "sandbox_policies" / "default.toml").read_text())
    first = server_factory("--policies", str(policies))
    sid = str(uuid.uuid4())
    async with first.client() as http:
        assert (await create(http, sid)).status == 200
        assert (await bash(http, sid, "true"))[0] == 200
    first.signal(signal.SIGKILL)
    (policies / "bash.toml").write_text('pids = 128\n')  # ops tighten the policy meanwhile
    second = server_factory("--policies", str(policies))
    async with second.client() as http:
        status, _ = await bash(http, sid, "true")
        assert status == 404
    assert session_containers(engine, sid) == []
    assert "its policy changed since it started" in second.log()


async def test_a_crash_with_adoption_disabled_leaves_no_container(
    server_factory: Any, engine: docker.DockerClient
) -> None:
    first = server_factory()
    async with first.client() as http:
        for _ in range(2):
            sid = str(uuid.uuid4())
            assert (await create(http, sid)).status == 200
            assert (await bash(http, sid, "true"))[0] == 200
    first.signal(signal.SIGKILL)
    assert len(managed_containers(engine)) == 2
    server_factory("--no-adopt")
    assert managed_containers(engine) == []


async def test_a_rolling_restart_keeps_sessions(server_factory: Any, engine: docker.DockerClient) -> None:
    first = server_factory("--keep-sessions")
    sid = str(uuid.uuid4())
    async with first.client() as http:
        assert (await create(http, sid)).status == 200
        assert (await bash(http, sid, "echo before > state.txt"))[0] == 200
    assert first.signal(signal.SIGTERM) == 0
    assert len(session_containers(engine, sid)) == 1
    second = server_factory()
    async with second.client() as http:
        _, events = await bash(http, sid, "cat state.txt")
        assert events[-1][0] == "end" and "before" in events[-1][1]
    assert second.signal(signal.SIGTERM) == 0  # without --keep-sessions: everything goes
    assert managed_containers(engine) == []


async def test_racing_creates_and_deletes_leak_nothing(aiohttp_client: Any, config: Config,
                                                       engine: docker.DockerClient) -> None:
    client = await aiohttp_client(create_app(config.model_copy(update={"max_sessions": 500})))
    statuses: Counter[int] = Counter()

    async def round_trip(i: int) -> None:
        sid = f"race-{i % 40}"  # ids are reused, so creates race deletes of the same id
        statuses[(await client.post("/create", json={"split": "train", "index": 0},
                                    headers={"X-Session-ID": sid})).status] += 1
        if i % 3 == 0:
            statuses[(await client.get("/bash/prompt", headers={"X-Session-ID": sid})).status] += 1
        await asyncio.sleep((i % 7) * 0.01)
        statuses[(await client.post("/delete", headers={"X-Session-ID": sid})).status] += 1

    semaphore = asyncio.Semaphore(12)

    async def bounded(i: int) -> None:
        async with semaphore:
            await round_trip(i)

    await asyncio.gather(*(bounded(i) for i in range(200)))
    assert not [status for status in statuses if status >= 500], statuses
    deadline = time.monotonic() + 30
    while managed_containers(engine) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert managed_containers(engine) == [], statuses


async def test_a_killed_agent_is_a_clear_error_and_its_container_goes(ors: Ors, engine: docker.DockerClient) -> None:
    sid = await ors.new_session()
    await ors.prompt(sid)
    [container] = session_containers(engine, sid)
    container.exec_run(["sh", "-c", "kill -9 $(pgrep -f 'orsbox.agent serve')"], user="root")
    deadline = time.monotonic() + 15
    while session_containers(engine, sid) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert session_containers(engine, sid) == []
    gone = await ors.http.post("/bash/call", json={"name": "bash", "input": {"command": "true"}},
                               headers={"X-Session-ID": sid})
    assert gone.status == 410 and "agent exited" in (await gone.json())["detail"]


async def test_sessions_past_their_lifetime_are_ended(aiohttp_client: Any, config: Config, tmp_path: Path,
                                                     engine: docker.DockerClient) -> None:
    (tmp_path / "default.toml").write_text("max_lifetime = 2\n")
    app = create_app(config.model_copy(update={"policies_dir": tmp_path, "reap_interval": 0.2}))
    ors = Ors(await aiohttp_client(app))
    sid = await ors.new_session()
    for _ in range(12):  # busy the whole time: lifetime is not idleness
        await ors.bash(sid, "true")
        await asyncio.sleep(0.25)
    gone = await ors.http.get("/bash/prompt", headers={"X-Session-ID": sid})
    assert gone.status == 410 and "max lifetime of 2 s" in (await gone.json())["detail"]
    assert session_containers(engine, sid) == []


async def test_admission_control_answers_429_with_retry_after(aiohttp_client: Any, config: Config) -> None:
    ors = Ors(await aiohttp_client(create_app(config.model_copy(update={"max_sessions": 2}))))
    first, second = await ors.new_session(), await ors.new_session()
    refused = await ors.http.post("/create", json={"split": "train", "index": 0},
                                  headers={"X-Session-ID": str(uuid.uuid4())})
    assert refused.status == 429 and refused.headers["Retry-After"] == "5"
    assert "limit of 2 live sessions" in (await refused.json())["detail"]
    health = await ors.http.get("/health")
    assert health.status == 200
    await ors.delete(first)
    third = await ors.new_session()
    await ors.delete(second)
    await ors.delete(third)


async def test_a_create_storm_is_queued_not_dropped(aiohttp_client: Any, config: Config) -> None:
    ors = Ors(await aiohttp_client(create_app(config.model_copy(update={"max_starting": 2}))))
    sids = await asyncio.gather(*(ors.new_session() for _ in range(8)))
    busy = await ors.new_session()
    health = await asyncio.wait_for(ors.http.get("/health"), 5)  # the loop never waits on the engine
    assert health.status == 200
    answers = await asyncio.gather(*(ors.bash(sid, "echo up") for sid in [*sids, busy]))
    assert all(answer.text == "up\n" for answer in answers)
    await asyncio.gather(*(ors.delete(sid) for sid in [*sids, busy]))


async def test_shutdown_lets_running_calls_finish(server_factory: Any, engine: docker.DockerClient) -> None:
    server = server_factory()
    sid = str(uuid.uuid4())
    async with server.client() as http:
        assert (await create(http, sid)).status == 200
        assert (await bash(http, sid, "true"))[0] == 200
        running = asyncio.ensure_future(bash(http, sid, "sleep 2; echo finished"))
        await asyncio.sleep(0.5)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        status, events = await asyncio.wait_for(running, 30)
    assert status == 200 and events[-1][0] == "end" and "finished" in events[-1][1]
    assert server.proc.wait(timeout=30) == 0
    assert managed_containers(engine) == []


@pytest.mark.engine_restart
@pytest.mark.skipif(why_not_restartable() is not None, reason=f"cannot restart the engine: {why_not_restartable()}")
async def test_an_engine_restart_is_survived(server_factory: Any, engine: docker.DockerClient) -> None:
    server = server_factory()
    sid = str(uuid.uuid4())
    async with server.client() as http:
        assert (await create(http, sid)).status == 200
        assert (await bash(http, sid, "true"))[0] == 200
        start_engine = await asyncio.get_running_loop().run_in_executor(None, stop_engine)
        try:
            down = None
            for _ in range(50):
                down = await http.get("/health")
                if down.status == 503:
                    break
                await asyncio.sleep(0.2)
            assert down is not None and down.status == 503
            assert (await down.json())["status"] == "engine_unreachable"
        finally:
            await asyncio.get_running_loop().run_in_executor(None, start_engine)
        engine.ping()
        for _ in range(100):
            if (await http.get("/health")).status == 200:
                break
            await asyncio.sleep(0.2)
        gone = await http.get("/bash/prompt", headers={"X-Session-ID": sid})
        assert gone.status == 410  # its container died with the engine: the session says so
        fresh = str(uuid.uuid4())
        assert (await create(http, fresh)).status == 200
        _, events = await bash(http, fresh, "echo alive")
        assert events[-1][0] == "end" and "alive" in events[-1][1]
        assert (await http.post("/delete", headers={"X-Session-ID": fresh})).status == 200
    deadline = time.monotonic() + 60  # the dead session's container is swept once the engine is back
    while managed_containers(engine) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert managed_containers(engine) == []


async def test_submit_racing_other_calls_grades_once(ors: Ors) -> None:
    sid = await ors.new_session(split="train", index=0)
    await ors.bash(sid, "echo 'hello world' > hello.txt")
    calls = [ors.bash(sid, f"sleep 0.{i}; echo {i} >> log.txt") for i in range(4)]
    calls += [ors.call(sid, "submit"), ors.call(sid, "submit")]
    answers = await asyncio.gather(*calls)
    graded = [a.result for a in answers if a.result.get("ok") and a.result["output"]["finished"]]
    refused = [a.result for a in answers if not a.result.get("ok")]
    assert len(graded) == 1 and graded[0]["output"]["reward"] == 1.0
    assert all(r["reason"] == "episode_finished" for r in refused)
    await ors.delete(sid)


async def test_an_environment_limit_is_enforced(aiohttp_client: Any, config: Config, tmp_path: Path) -> None:
    (tmp_path / "bash.toml").write_text("max_sessions = 1\nmax_starting = 1\n")
    ors = Ors(await aiohttp_client(create_app(config.model_copy(update={"policies_dir": tmp_path}))))
    first = await ors.new_session()
    refused = await ors.http.post("/create", json={"split": "train", "index": 0},
                                  headers={"X-Session-ID": str(uuid.uuid4())})
    assert refused.status == 429 and "environment 'bash' is at its limit of 1" in (await refused.json())["detail"]
    await ors.delete(first)
