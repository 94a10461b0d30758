"""`GET /metrics`: Prometheus text from the official client, labels of bounded values, behind the API key."""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..support.ors import Ors
from ..support.run import ADMIN


async def scrape(ors: Ors[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await ors.http.get("/metrics", headers=ADMIN)
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_need_an_operator_key(ors: Ors[Any]) -> None:
    assert (await ors.http.get("/metrics", headers={"X-API-Key": ""})).status == 401
    refused = await ors.http.get("/metrics")  # the client's key
    assert refused.status == 403 and "operator key" in (await refused.json())["detail"]
    bearer = await ors.http.get("/metrics", headers={"X-API-Key": "", "Authorization": f"Bearer {ADMIN['X-API-Key']}"})
    assert bearer.status == 200  # as a Prometheus scrape config sends it


async def test_without_authentication_metrics_are_open(server: Any) -> None:
    ors = await server(auth=False)
    assert (await ors.http.get("/metrics", headers={"X-API-Key": ""})).status == 200


async def test_sessions_calls_and_ends_are_counted_with_bounded_labels(ors: Ors[Any]) -> None:
    sid = await ors.new_session("echo")
    for _ in range(2):
        assert (await ors.call(sid, "echo", {"text": "x"}, env="echo")).text == "x"
    await ors.call(sid, "no-such-tool-" + "x" * 500, {}, env="echo")  # a client's name is not a label
    live = await scrape(ors)
    assert live[("orsbox_sessions", (("environment", "echo"), ("state", "ready")))] == 1
    assert live[("orsbox_sessions_created_total", (("environment", "echo"), ("kind", "ors")))] == 1
    assert live[("orsbox_call_seconds_count", (("environment", "echo"), ("tool", "echo")))] == 2
    assert live[("orsbox_call_seconds_count", (("environment", "echo"), ("tool", "other")))] == 1
    assert live[("orsbox_setup_seconds_count", (("environment", "echo"),))] == 1
    assert live[("orsbox_container_start_seconds_count", (("environment", "echo"),))] == 1
    assert not any("no-such-tool" in value for _, labels in live for _, value in labels)
    await ors.delete(sid)
    ended = await scrape(ors)
    assert ended[("orsbox_sessions_ended_total", (("environment", "echo"), ("reason", "deleted")))] == 1
    assert ended[("orsbox_container_remove_seconds_count", (("environment", "echo"),))] == 1
    assert ("orsbox_sessions", (("environment", "echo"), ("state", "ready"))) not in ended
    assert ended[("orsbox_engine_up", ())] == 1


async def test_admission_refusals_are_counted_by_limit(server: Any) -> None:
    ors = await server(max_sessions=1)
    await ors.new_session("echo")
    refused = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 0},
                                  headers={"X-Session-ID": str(uuid.uuid4())})
    assert refused.status == 429
    assert (await scrape(ors))[("orsbox_admission_refusals_total", (("limit", "server"),))] == 1
