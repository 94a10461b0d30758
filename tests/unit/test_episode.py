"""An episode over HTTP on the fake backend: create, prompt, calls as SSE, rewards, delete, and the error rules."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ..support.fake_backend import FakeBackend
from ..support.ors import Ors, parse_sse
from ..support.run import API_KEY

Client = Ors[TestClient[Any, Any]]


async def test_a_whole_episode(ors: Client, backend: FakeBackend) -> None:
    sid = await ors.new_session("echo", split="train", index=2)
    assert await ors.prompt(sid, env="echo") == [
        {"type": "text", "text": "Answer with the word word-2.", "detail": None}]
    echoed = await ors.call(sid, "echo", {"text": "héllo\nworld"}, env="echo")
    assert echoed.status == 200 and echoed.text == "héllo\nworld"
    assert echoed.output["metadata"] == {"calls": 1} and echoed.output["reward"] is None
    wrong = await ors.call(sid, "answer", {"word": "nope"}, env="echo")
    assert wrong.output["reward"] == 0.0 and wrong.output["finished"] is True
    await ors.delete(sid)
    assert not backend.sandboxes
    gone = await ors.http.get("/echo/prompt", headers={"X-Session-ID": sid})
    assert gone.status == 410 and (await gone.json())["detail"] == "Session ended: deleted by the client"


async def test_the_right_answer_earns_the_reward(ors: Client) -> None:
    sid = await ors.new_session("echo", task_spec={"id": "custom", "word": "banana"})
    result = await ors.call(sid, "answer", {"word": "banana"}, env="echo")
    assert result.output["reward"] == 1.0 and result.output["finished"] is True
    await ors.delete(sid)


async def test_sse_framing_chunks_and_reassembles_a_large_result(ors: Client) -> None:
    sid = await ors.new_session("echo")
    result = await ors.call(sid, "big", {"size": 100_000}, env="echo")
    names = [event for event, _ in result.events]
    assert names[0] == "task_id" and names[-1] == "end" and set(names[1:-1]) == {"chunk"}
    assert all(len(data) <= 4096 for event, data in result.events if event == "chunk")
    assert result.text == "x" * 100_000
    assert result.raw.startswith(b"event: task_id\r\ndata: ")
    await ors.delete(sid)


async def test_a_dropped_call_is_replayed_by_task_id(ors: Client) -> None:
    sid = await ors.new_session("echo")
    headers = {"X-Session-ID": sid}
    response = await ors.http.post("/echo/call", json={"name": "sleep", "input": {"seconds": 0.5}}, headers=headers)
    first = await response.content.readuntil(b"\r\n\r\n")
    task_id = parse_sse(first)[0][1]
    response.close()  # the client goes away; the call runs on
    again = await ors.call(sid, "sleep", {}, env="echo", task_id=task_id)
    assert again.task_id == task_id and again.text == "slept 0.5"
    unknown = await ors.call(sid, "sleep", {}, env="echo", task_id="nope")
    assert unknown.events == [("error", "unknown task_id")]
    await ors.delete(sid)


async def test_keepalive_comments_while_a_call_runs(server: Any) -> None:
    ors = await server(keepalive=0.1)
    sid = await ors.new_session("echo")
    result = await ors.call(sid, "sleep", {"seconds": 0.5}, env="echo")
    assert b": ping" in result.raw and result.text == "slept 0.5"
    await ors.delete(sid)


async def test_tool_errors_are_in_band(ors: Client) -> None:
    sid = await ors.new_session("echo")
    failed = await ors.call(sid, "fail", {}, env="echo")
    assert failed.status == 200 and failed.events[-1][0] == "error" and "the tool broke" in failed.events[-1][1]
    unknown = await ors.call(sid, "nope", {}, env="echo")
    assert unknown.result["ok"] is False
    bad_input = await ors.call(sid, "echo", {"text": 3}, env="echo")
    assert bad_input.result["ok"] is False
    await ors.delete(sid)


async def test_secrets_reach_the_environment(ors: Client) -> None:
    sid = str(uuid.uuid4())
    secrets = base64.b64encode(json.dumps({"TOKEN": {"value": "s3cret"}}).encode()).decode()
    response = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 0},
                                   headers={"X-Session-ID": sid, "X-Secrets": secrets})
    assert response.status == 200
    assert (await ors.call(sid, "secret", {"name": "TOKEN"}, env="echo")).text == "True"
    await ors.delete(sid)


@pytest.mark.parametrize("method,path,body,headers,status,detail", [
    ("post", "/create", {"env_name": "echo", "split": "train", "index": 0}, {}, 400,
     "X-Session-ID header is required"),
    ("post", "/create", {"env_name": "nope", "split": "train", "index": 0}, {"X-Session-ID": "s"}, 404,
     "unknown environment 'nope'"),
    ("post", "/create", {"split": "validation", "index": 0}, {"X-Session-ID": "s"}, 400, "Invalid split"),
    ("post", "/create", {"split": "train", "index": 99}, {"X-Session-ID": "s"}, 400, "Invalid index"),
    ("post", "/create", {"env_name": "echo", "split": "train", "index": 0}, {"X-Session-ID": "s", "X-Secrets": "["},
     400, None),
    ("post", "/ping", None, {"X-Session-ID": "unknown"}, 404, "Active environment not found"),
    ("get", "/echo/prompt", None, {"X-Session-ID": "unknown"}, 404, "Active environment not found"),
    ("post", "/echo/call", {"name": "echo", "input": {}}, {"X-Session-ID": "unknown"}, 404,
     "Active environment not found"),
    ("post", "/delete", None, {}, 400, "X-Session-ID header is required"),
])
async def test_session_errors(ors: Client, method: str, path: str, body: Any, headers: dict[str, str],
                              status: int, detail: str | None) -> None:
    response = await getattr(ors.http, method)(path, json=body, headers=headers)
    assert response.status == status and response.headers["Content-Type"].startswith("application/json")
    answer = await response.json()
    assert "detail" in answer and (detail is None or answer == {"detail": detail})


async def test_an_id_is_taken_once_and_belongs_to_its_key(server: Any) -> None:
    ors = await server(api_keys=[API_KEY, "a-second-key"])
    sid = await ors.new_session("echo")
    again = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 0},
                                headers={"X-Session-ID": sid})
    assert again.status == 400 and await again.json() == {"detail": "Session already exists"}
    other = {"X-Session-ID": sid, "X-API-Key": "a-second-key"}
    assert (await ors.http.get("/echo/prompt", headers=other)).status == 404
    assert (await ors.http.post("/delete", headers=other)).status == 200  # not theirs: nothing happens
    assert (await ors.http.post("/ping", headers={"X-Session-ID": sid})).status == 200
    await ors.delete(sid)
    await ors.delete(sid)  # idempotent


async def test_calls_run_concurrently_where_the_tool_allows(ors: Client) -> None:
    sid = await ors.new_session("echo")
    results = await asyncio.gather(*(ors.call(sid, "sleep", {"seconds": 1.0}, env="echo") for _ in range(4)))
    assert all(result.text == "slept 1.0" for result in results)
    assert max(result.output["metadata"]["most_at_once"] for result in results) > 1  # they overlapped
    await ors.delete(sid)



@pytest.mark.parametrize("path", ["/create", "/echo/call", "/echo/tasks"])
async def test_json_nested_too_deeply_is_a_400(ors: Client, path: str) -> None:
    sid = await ors.new_session("echo")
    body = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    response = await ors.http.post(path, data=body, headers={"X-Session-ID": sid, "Content-Type": "application/json"})
    assert response.status == 400
    assert await response.json() == {"detail": "the request body's JSON is nested too deeply"}
    await ors.delete(sid)


async def test_a_body_past_the_limit_is_a_413(server: Any) -> None:
    ors = await server(max_body_bytes=64 * 1024)
    sid = await ors.new_session("echo")
    response = await ors.http.post("/echo/call", json={"name": "echo", "input": {"text": "x" * 100_000}},
                                   headers={"X-Session-ID": sid})
    assert response.status == 413 and "larger than 65536 bytes" in (await response.json())["detail"]
    assert (await ors.call(sid, "echo", {"text": "small"}, env="echo")).text == "small"
    await ors.delete(sid)


async def test_a_task_spec_past_the_limit_is_a_400(server: Any, backend: FakeBackend) -> None:
    ors = await server(max_task_spec_bytes=1024)
    response = await ors.http.post("/create", json={"env_name": "echo", "task_spec": {"word": "x" * 2000}},
                                   headers={"X-Session-ID": "big"})
    assert response.status == 400 and "at most 1024" in (await response.json())["detail"]
    assert backend.started == 0


async def test_results_kept_for_reconnects_are_bounded_per_session(ors: Client) -> None:
    from orsbox.sessions.calls import KEPT_RESULTS

    sid = await ors.new_session("echo")
    task_ids = [(await ors.call(sid, "echo", {"text": str(i)}, env="echo")).task_id
                for i in range(KEPT_RESULTS + 8)]
    oldest = await ors.call(sid, "echo", {}, env="echo", task_id=task_ids[0])
    assert oldest.events == [("error", "unknown task_id")]
    newest = await ors.call(sid, "echo", {}, env="echo", task_id=task_ids[-1])
    assert newest.text == str(KEPT_RESULTS + 7)
    await ors.delete(sid)


async def test_a_client_that_stops_reading_is_dropped_and_the_server_goes_on(server: Any, policies: Path) -> None:
    (policies / "echo.toml").write_text('output_cap = "8m"\nmemory = "2g"\n')
    ors = await server(sse_write_timeout=0.5)
    sid = await ors.new_session("echo")
    host, port = ors.http.server.host, ors.http.server.port
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"name": "big", "input": {"size": 40_000_000}}).encode()
    writer.write(b"POST /echo/call HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"X-API-Key: " + API_KEY.encode() + b"\r\n"
                 b"X-Session-ID: " + sid.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    await asyncio.sleep(4)  # read nothing: the server's writes stall, then it gives up on this client
    received = 0
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
            received += len(chunk)
    except ConnectionResetError:
        pass
    writer.close()
    assert received < 40_000_000  # dropped before the whole result went out
    assert (await ors.http.get("/health")).status == 200
    assert (await ors.call(sid, "echo", {"text": "after"}, env="echo")).text == "after"
    await ors.delete(sid)
