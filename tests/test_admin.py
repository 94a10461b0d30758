"""The admin API on the real engine: inspect reads the container's cgroup through the engine, logs its output,
and an operator's end removes the container."""

from __future__ import annotations

from typing import Any

import docker
import pytest

from .support.ors import Ors
from .support.run import ADMIN

pytestmark = pytest.mark.docker


async def test_inspect_logs_and_end_on_the_real_engine(ors: Ors[Any], engine: docker.DockerClient) -> None:
    sid = await ors.new_session("bash")
    answer, _ = await ors.call_when_ready(sid, "bash", {"command": "sleep 30 & sleep 30 & echo started"})
    assert answer.text.strip() == "started"
    details = await (await ors.http.get(f"/admin/sessions/{sid}", headers=ADMIN)).json()
    print(details)
    stats = details["stats"]
    container = engine.containers.get(details["container_id"])
    assert container.name == details["container"]
    host_config = container.attrs["HostConfig"]
    assert stats["memory_limit"] == host_config["Memory"] and stats["pids_limit"] == host_config["PidsLimit"]
    assert stats["pids"] >= 3 and stats["memory_bytes"] > 0 and stats["cpu_seconds"] > 0
    assert details["calls"] == 1 and details["env"] == "bash" and details["policy"]
    logs = await ors.http.get(f"/admin/sessions/{sid}/logs?tail=20", headers=ADMIN)
    text = await logs.text()
    print(text)
    assert logs.status == 200 and len(text.splitlines()) <= 20
    ended = await ors.http.post(f"/admin/sessions/{sid}/end", json={"reason": "test"}, headers=ADMIN)
    assert ended.status == 200
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(details["container_id"])
