"""Discovery over HTTP, answered from the catalog (fast tier: the fake backend's environments)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ..support.ors import Ors

Client = Ors[TestClient[Any, Any]]


async def test_service_routes(ors: Client) -> None:
    health = await ors.http.get("/health")
    assert health.status == 200 and await health.text() == '{"status":"ok"}'
    assert set(await (await ors.http.get("/version")).json()) == {"version", "build_sha"}
    assert await (await ors.http.get("/list_environments")).json() == ["echo", "broken", "slow"]


async def test_tools_splits_and_tasks(ors: Client) -> None:
    tools = await (await ors.http.get("/echo/tools")).json()
    names = [tool["name"] for tool in tools["tools"]]
    assert names == ["answer", "big", "echo", "fail", "secret", "secret_is", "sleep"]
    echo = next(tool for tool in tools["tools"] if tool["name"] == "echo")
    assert echo["input_schema"]["required"] == ["text"] and echo["description"] == "Answer `text` unchanged."
    assert tools["terminal_tool"] is None and tools["supports_score_group"] is False
    assert await (await ors.http.get("/echo/splits")).json() == [
        {"name": "train", "type": "train"}, {"name": "test", "type": "test"}]
    tasks = await (await ors.http.post("/echo/tasks", json={"split": "train"})).json()
    assert tasks == {"tasks": [{"id": f"train-{i}", "word": f"word-{i}"} for i in range(5)], "env_name": "echo"}
    assert await (await ors.http.post("/echo/num_tasks", json={"split": "test"})).json() == {"num_tasks": 3}
    last = await (await ors.http.post("/echo/task", json={"split": "test", "index": -1})).json()
    assert last == {"task": {"id": "test-2", "word": "other-2"}, "env_name": "echo"}
    window = await (await ors.http.post("/echo/task_range", json={"split": "train", "start": -2})).json()
    assert [task["id"] for task in window["tasks"]] == ["train-3", "train-4"]
    empty = await (await ors.http.post("/echo/task_range", json={"split": "train", "start": 4, "stop": 2})).json()
    assert empty["tasks"] == []


async def test_names_are_case_insensitive_and_bare_paths_redirect(ors: Client) -> None:
    answer = await ors.http.post("/ECHO/tasks", json={"split": "test"})
    assert answer.status == 200 and (await answer.json())["env_name"] == "ECHO"
    redirect = await ors.http.get("/tools", allow_redirects=False)
    assert redirect.status == 308 and redirect.headers["Location"] == "/echo/tools"
    unknown = await ors.http.get("/nope/tools")
    assert unknown.status == 404 and await unknown.json() == {"detail": "Not Found"}


async def test_discovery_runs_no_sandbox(ors: Client, backend: Any) -> None:
    for _ in range(3):
        assert (await ors.http.post("/echo/tasks", json={"split": "train"})).status == 200
    assert backend.started == 0


@pytest.mark.parametrize("method,path,body,status,detail", [
    ("post", "/echo/tasks", {"split": "nope"}, 400, "Invalid split"),
    ("post", "/echo/task", {"split": "train", "index": 5}, 400, "Invalid index"),
    ("post", "/echo/task", {"split": "train", "index": -6}, 400, "Invalid index"),
    ("post", "/nope/tasks", {"split": "train"}, 404, "Not Found"),
])
async def test_discovery_errors(ors: Client, method: str, path: str, body: Any, status: int, detail: str) -> None:
    response = await getattr(ors.http, method)(path, json=body)
    assert response.status == status and response.headers["Content-Type"].startswith("application/json")
    assert await response.json() == {"detail": detail}


@pytest.mark.parametrize("body,content_type", [
    (b"{not json", "application/json"),
    (b"", "application/json"),
    (b'{"split": "train"}', "text/plain"),
    (b'{"split": 3}', "application/json"),
    (b'{"split": "train", "extra": 1}', "application/json"),
    (b"[1, 2]", "application/json"),
])
async def test_bad_bodies_are_422_with_a_list_detail(ors: Client, body: bytes, content_type: str) -> None:
    response = await ors.http.post("/echo/tasks", data=body, headers={"Content-Type": content_type})
    assert response.status == 422
    detail = (await response.json())["detail"]
    assert isinstance(detail, list) and detail and {"type", "loc", "msg"} <= set(detail[0])


async def test_openapi_lists_every_route(ors: Client) -> None:
    document = await (await ors.http.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert {"/health", "/create", "/{env}/call", "/{env}/tasks", "/delete"} <= set(document["paths"])
