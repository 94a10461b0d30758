"""The admin API on the real engine: inspect reads the container's cgroup through the engine, logs its output,
and an operator's end removes the container."""

from __future__ import annotations

import json
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


MEMORY_BOMB = "python3 -c 'x = []\nwhile True: x.append(bytearray(64 * 2**20))'"


async def test_memory_kills_and_timeouts_are_session_events(ors: Ors[Any]) -> None:
    sid = await ors.new_session("bash")
    killed, _ = await ors.call_when_ready(sid, "bash", {"command": MEMORY_BOMB})
    assert killed.output["metadata"]["oom_killed"] is True
    slow = await ors.bash(sid, "sleep 10", timeout=1)
    assert slow.output["metadata"]["timed_out"] is True
    await ors.delete(sid)
    answer = await ors.http.get(f"/admin/sessions/{sid}/events?follow=0", headers=ADMIN)
    events = [json.loads(line[6:]) for line in (await answer.text()).splitlines() if line.startswith("data: ")]
    kinds = [e["event"] for e in events]
    assert kinds == ["created", "ready", "call_started", "call_finished", "memory_kill", "call_started",
                     "call_finished", "timeout", "ended"]
    assert events[4]["data"]["tool"] == "bash" and events[4]["data"]["task_id"] == events[3]["data"]["task_id"]
