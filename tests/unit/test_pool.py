"""The warm pool on the fake backend: filled per policy, each container used once, within admission, adopted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from orsbox.sessions.binding import Binder, Binding

from ..support.fake_backend import FakeBackend
from ..support.ors import Ors
from ..support.run import ADMIN
from ..support.waiting import until
from .conftest import Server

POOLED = 'pool_min = {min}\n'


async def metric(ors: Ors[TestClient[Any, Any]], name: str, **labels: str) -> float:
    response = await ors.http.get("/metrics", headers=ADMIN)
    assert response.status == 200
    total = 0.0
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def pooled(backend: FakeBackend) -> set[str]:
    """The ids of the fake's sandboxes started for the pool."""
    return {ref for ref, sandbox in backend.sandboxes.items() if sandbox.spec.pooled}


async def ready_in_pool(ors: Ors[TestClient[Any, Any]], count: int) -> None:
    await until(lambda: _ready_is(ors, count))


async def _ready_is(ors: Ors[TestClient[Any, Any]], count: int) -> bool:
    return await metric(ors, "orsbox_pool_containers", environment="echo", state="ready") == count and await metric(
        ors, "orsbox_pool_containers", environment="echo", state="starting") == 0


async def test_a_pooled_environment_keeps_pool_min_containers_waiting(server: Server, backend: FakeBackend,
                                                                     policies: Path) -> None:
    (policies / "echo.toml").write_text(POOLED.format(min=2))
    ors = await server()
    await ready_in_pool(ors, 2)
    assert len(pooled(backend)) == 2 and backend.started == 2
    assert all(s.spec.owner == "" for s in backend.sandboxes.values())  # waiting for nobody yet


async def test_a_create_takes_a_waiting_container_once_and_the_pool_refills(server: Server, backend: FakeBackend,
                                                                           policies: Path) -> None:
    (policies / "echo.toml").write_text(POOLED.format(min=1))
    ors = await server()
    await ready_in_pool(ors, 1)
    [waiting] = pooled(backend)
    sid = await ors.new_session("echo")
    assert (await ors.call_when_ready(sid, "echo", {"text": "warm"}, env="echo"))[0].text == "warm"
    await ready_in_pool(ors, 1)  # refilled with a new container
    assert waiting in backend.sandboxes and len(pooled(backend)) == 2
    assert await metric(ors, "orsbox_pool_takes_total", environment="echo", outcome="hit") == 1
    await ors.delete(sid)
    assert waiting not in backend.sandboxes  # used once: removed with its session, never returned
    second = await ors.new_session("echo")
    assert (await ors.call_when_ready(second, "echo", {"text": "again"}, env="echo"))[0].text == "again"
    assert waiting not in backend.sandboxes
    await ors.delete(second)


async def test_an_empty_pool_falls_back_to_a_cold_start_and_grows(server: Server, backend: FakeBackend,
                                                                 policies: Path) -> None:
    (policies / "echo.toml").write_text("pool_min = 1\npool_max = 3\n")
    ors = await server()
    await ready_in_pool(ors, 1)
    sids = [await ors.new_session("echo") for _ in range(3)]  # the first takes the pool's one; the others start cold
    for sid in sids:
        assert (await ors.call_when_ready(sid, "echo", {"text": sid}, env="echo"))[0].text == sid
    assert await metric(ors, "orsbox_pool_takes_total", environment="echo", outcome="miss") >= 1
    await ready_in_pool(ors, 3)  # demand raised the target to pool_max
    for sid in sids:
        await ors.delete(sid)


async def test_the_pool_and_live_sessions_stay_within_max_sessions(server: Server, backend: FakeBackend,
                                                                  policies: Path) -> None:
    (policies / "echo.toml").write_text(POOLED.format(min=3))
    ors = await server(max_sessions=2)
    await ready_in_pool(ors, 2)
    first = await ors.new_session("echo")
    second = await ors.new_session("echo")
    for sid in (first, second):
        assert (await ors.call_when_ready(sid, "echo", {"text": "x"}, env="echo"))[0].text == "x"
    assert len(backend.sandboxes) == 2  # both were the pool's; no refill past the limit
    response = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 0},
                                   headers={"X-Session-ID": "third"})
    assert response.status == 429
    await ors.delete(first)
    await ready_in_pool(ors, 1)  # the room a session leaves is the pool's again
    await ors.delete(second)


async def test_the_pool_stays_within_its_memory_budget(server: Server, backend: FakeBackend,
                                                       policies: Path) -> None:
    (policies / "echo.toml").write_text('pool_min = 4\nmemory = "2g"\n')
    ors = await server(pool_memory=3 * 2 * 1024**3)
    await ready_in_pool(ors, 3)
    await asyncio.sleep(0.3)
    assert len(pooled(backend)) == 3


async def test_an_unused_container_is_replaced_after_pool_idle(server: Server, backend: FakeBackend,
                                                               policies: Path) -> None:
    (policies / "echo.toml").write_text("pool_min = 1\npool_idle = 0.5\n")
    ors = await server(reap_interval=0.1)
    await ready_in_pool(ors, 1)
    [first] = pooled(backend)
    await until(lambda: first not in backend.sandboxes and len(pooled(backend)) == 1)
    await ready_in_pool(ors, 1)


async def test_a_restart_adopts_bound_and_waiting_pool_containers(server: Server, backend: FakeBackend,
                                                                  policies: Path) -> None:
    (policies / "echo.toml").write_text(POOLED.format(min=1))
    first = await server(keep_sessions=True)
    await ready_in_pool(first, 1)
    sid = await first.new_session("echo")
    assert (await first.call_when_ready(sid, "echo", {"text": "before"}, env="echo"))[0].text == "before"
    await ready_in_pool(first, 1)
    kept = set(backend.sandboxes)
    await first.http.close()  # a rolling restart: the bound container and the waiting one both stay
    assert set(backend.sandboxes) == kept

    second = await server()
    await ready_in_pool(second, 1)
    assert set(backend.sandboxes) == kept  # nothing new started: the waiting one is the pool's again
    assert (await second.call(sid, "echo", {"text": "after"}, env="echo")).text == "after"
    other = await second.new_session("echo")  # takes the adopted waiting container
    assert (await second.call_when_ready(other, "echo", {"text": "next"}, env="echo"))[0].text == "next"
    await second.delete(sid)
    await second.delete(other)


async def test_after_a_crash_waiting_containers_are_not_trusted_back_into_the_pool(
        server: Server, backend: FakeBackend, policies: Path, state_dir: Path) -> None:
    (policies / "echo.toml").write_text(POOLED.format(min=1))
    first = await server(keep_sessions=True)
    await ready_in_pool(first, 1)
    [bound] = pooled(backend)
    sid = await first.new_session("echo")
    assert (await first.call_when_ready(sid, "echo", {"text": "before"}, env="echo"))[0].text == "before"
    await ready_in_pool(first, 1)
    [waiting] = pooled(backend) - {bound}
    await first.http.close()
    (state_dir / "pool-kept.json").unlink()  # as after kill -9: nothing says which containers never served a session

    second = await server()
    assert (await second.call(sid, "echo", {"text": "after"}, env="echo")).text == "after"  # bound: adopted
    await ready_in_pool(second, 1)
    assert bound in backend.sandboxes and waiting not in backend.sandboxes  # replaced by a fresh one
    assert len(pooled(backend)) == 2
    await second.delete(sid)


async def test_a_restart_without_a_pool_removes_waiting_containers(server: Server, backend: FakeBackend,
                                                                   policies: Path) -> None:
    (policies / "echo.toml").write_text(POOLED.format(min=2))
    first = await server(keep_sessions=True)
    await ready_in_pool(first, 2)
    await first.http.close()
    (policies / "echo.toml").write_text(POOLED.format(min=0))  # ops turned the pool off meanwhile
    await server()
    assert not backend.sandboxes


def test_a_binding_verifies_only_for_its_own_container_session_and_owner() -> None:
    binder = Binder(b"k" * 32)
    binding = binder.bind("orsbox-aaaaaaaaaaaa-000000", "session-1", "owner-a")
    parsed = Binding.parse(binding.to_json())
    assert parsed == binding and binder.verify("orsbox-aaaaaaaaaaaa-000000", parsed)
    assert not binder.verify("orsbox-bbbbbbbbbbbb-000000", parsed)  # replayed in another container
    for forged in ({**binding.to_json(), "owner": "owner-b"}, {**binding.to_json(), "session_id": "session-2"},
                   {**binding.to_json(), "bound_at": binding.bound_at + 3600}):
        candidate = Binding.parse(forged)
        assert candidate is not None and not binder.verify("orsbox-aaaaaaaaaaaa-000000", candidate)
    assert not Binder(b"other" * 8).verify("orsbox-aaaaaaaaaaaa-000000", parsed)
    for junk in (None, "x", [], {"session_id": "s"}, {**binding.to_json(), "bound_at": True},
                 {**binding.to_json(), "owner": "o" * 10_000}, {**binding.to_json(), "token": 5}):
        assert Binding.parse(junk) is None
