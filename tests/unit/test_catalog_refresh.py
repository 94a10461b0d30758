"""New images are served without a restart: the catalog is read again when the engine's environment images
change (checked every `catalog_interval` s). Live sessions keep what they run; pools follow their images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ..support.fake_backend import ENVIRONMENTS, FakeBackend
from ..support.ors import Ors
from ..support.waiting import until
from .conftest import Server


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(dict(ENVIRONMENTS))  # its own table: the tests add and remove environments


async def served(ors: Ors[TestClient[Any, Any]]) -> list[str]:
    return list(await (await ors.http.get("/list_environments")).json())


async def test_a_new_image_is_served_and_a_removed_one_goes_while_its_sessions_keep_working(
        server: Server, backend: FakeBackend) -> None:
    ors = await server(catalog_interval=0.1)
    assert "later" not in await served(ors)
    staying = await ors.new_session("slow")
    assert (await ors.call_when_ready(staying, "echo", {"text": "up"}, env="slow"))[0].text == "up"

    backend.environments["later"] = ENVIRONMENTS["echo"]  # an image built while the server runs
    del backend.environments["slow"]  # and one removed
    await until(lambda: _served_is(ors, lambda names: "later" in names and "slow" not in names))
    sid = await ors.new_session("later")
    assert (await ors.call_when_ready(sid, "echo", {"text": "new"}, env="later"))[0].text == "new"
    assert (await ors.call(staying, "echo", {"text": "still"}, env="slow")).text == "still"
    refused = await ors.http.post("/create", json={"env_name": "slow", "split": "train", "index": 0},
                                  headers={"X-Session-ID": "after-removal"})
    assert refused.status == 404
    for session in (sid, staying):
        await ors.delete(session)


async def _served_is(ors: Ors[TestClient[Any, Any]], check: Callable[[list[str]], bool]) -> bool:
    return check(await served(ors))


async def test_a_rebuilt_image_replaces_the_pools_waiting_containers(server: Server, backend: FakeBackend,
                                                                    policies: Path) -> None:
    (policies / "echo.toml").write_text("pool_min = 1\n")
    ors = await server(catalog_interval=0.1)

    def waiting_images() -> set[str]:
        return {s.spec.environment.image_id for s in backend.sandboxes.values() if s.spec.pooled}

    await until(lambda: waiting_images() == {"fake:echo"})
    backend.image_versions["echo"] = "-v2"
    await until(lambda: waiting_images() == {"fake:echo-v2"})  # the old one removed, a new one started
    sid = await ors.new_session("echo")
    assert (await ors.call_when_ready(sid, "echo", {"text": "v2"}, env="echo"))[0].text == "v2"
    await ors.delete(sid)
